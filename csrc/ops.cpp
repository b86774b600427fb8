// The op contract (docs/design.md §2, schemas in schemas.h) in namespace `babygpt`, implemented per
// device in csrc/cpu (CPU) and csrc/cuda (CUDA). Fake kernels and autograd are registered from
// Python (babygpt_ext/ops/library.py), which is also where inputs are validated before any kernel runs.
#include <torch/extension.h>

#include <string>

#include "schemas.h"

namespace babygpt::cpu {
const char* attention_isa();  // csrc/cpu/attention.cpp
}
#ifdef BABYGPT_WITH_CUDA
namespace babygpt::cuda {
int runtime_version();  // csrc/cuda/ops_cuda.cu
}
#endif

TORCH_LIBRARY(babygpt, m) { BABYGPT_DEFINE_CONTRACT(m); }

namespace {

// What this binary was built with, so `babygpt info` reports facts rather than guesses.
py::dict build_info() {
  py::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["compiler"] = std::string("gcc ") + __VERSION__;
  d["cplusplus"] = static_cast<long>(__cplusplus);
  d["parallel_threads"] = at::get_num_threads();
  d["parallel_backend"] = at::get_parallel_info();
  d["cpu_attention_isa"] = std::string(babygpt::cpu::attention_isa());
#ifdef BABYGPT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(BABYGPT_CUDA_ARCHS);
  d["nvcc_version"] = std::string(BABYGPT_NVCC_VERSION);
  d["cuda_runtime_version"] = babygpt::cuda::runtime_version();
#else
  d["cuda"] = false;
#endif
  return d;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "babygpt_ext compiled ops (registered as torch.ops.babygpt.*)";
  m.def("build_info", &build_info, "What this extension was compiled with");
}
