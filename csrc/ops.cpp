// The op contract (docs/design.md §2, schemas in schemas.h) in namespace `babygpt`, implemented per
// device in csrc/cpu (CPU) and csrc/cuda (CUDA). Fake kernels and autograd are registered from
// Python (babygpt_ext/ops/library.py), which is also where inputs are validated before any kernel runs.
#include <torch/extension.h>

#include <string>
#include <vector>

#include "cuda/layout.h"
#include "schemas.h"

namespace babygpt::cpu {
const char* attention_isa();  // csrc/cpu/attention.cpp
long attention_gemm_min_head_dim();  // csrc/cpu/attention.cpp
const char* attention_bf16_path();  // csrc/cpu/attention.cpp
long attention_bf16_min_head_dim();  // csrc/cpu/attention.cpp
const char* lora_isa();       // csrc/cpu/lora.cpp
const char* gelu_isa();       // csrc/cpu/bias_gelu.cpp
const char* layer_norm_isa();  // csrc/cpu/layer_norm.cpp
}
#ifdef BABYGPT_WITH_CUDA
namespace babygpt::cuda {
int runtime_version();  // csrc/cuda/ops_cuda.cu
}
#endif

TORCH_LIBRARY(babygpt, m) {
  BABYGPT_DEFINE_CONTRACT(m);
  BABYGPT_DEFINE_CPU_FUSED(m);
}

namespace {

// Dynamic shared memory of each CUDA kernel instance (csrc/cuda/layout.h) at the largest D of its
// head-dim bucket: {kernel: {dtype: {bucket (0: none): bytes}}}, for `babygpt gpu-report`. Exported
// by every build: the layouts are facts of the source, whether or not nvcc compiled it here.
py::dict cuda_smem_bytes() {
  py::dict d;
  babygpt::cuda::visit_smem([&](const char* kernel, int elem_size, int dmax, size_t bytes) {
    if (!d.contains(kernel)) d[kernel] = py::dict();
    py::dict per_dtype = d[kernel];
    static const std::vector<const char*> four_bytes{"fp32"}, two_bytes{"fp16", "bf16"};
    for (const char* dtype : elem_size == 4 ? four_bytes : two_bytes) {
      if (!per_dtype.contains(dtype)) per_dtype[dtype] = py::dict();
      py::dict per_d = per_dtype[dtype];
      per_d[py::int_(dmax)] = bytes;
    }
  });
  return d;
}

// What this binary was built with, so `babygpt info` reports facts rather than guesses.
py::dict build_info() {
  py::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["compiler"] = std::string("gcc ") + __VERSION__;
  d["cplusplus"] = static_cast<long>(__cplusplus);
  d["parallel_threads"] = at::get_num_threads();
  d["parallel_backend"] = at::get_parallel_info();
  d["cpu_attention_isa"] = std::string(babygpt::cpu::attention_isa());
  d["cpu_attention_gemm_min_head_dim"] = babygpt::cpu::attention_gemm_min_head_dim();
  d["cpu_attention_bf16"] = std::string(babygpt::cpu::attention_bf16_path());
  d["cpu_attention_bf16_min_head_dim"] = babygpt::cpu::attention_bf16_min_head_dim();
  d["max_head_dim"] = babygpt::kMaxHeadDim;
  d["cuda_smem_bytes"] = cuda_smem_bytes();
  d["cpu_lora_isa"] = std::string(babygpt::cpu::lora_isa());
  d["cpu_gelu_isa"] = std::string(babygpt::cpu::gelu_isa());
  d["cpu_layer_norm_isa"] = std::string(babygpt::cpu::layer_norm_isa());
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
