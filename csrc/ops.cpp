// The op contract (DESIGN.md §2): one schema per op in namespace `babygpt`, implemented per device
// in csrc/cpu (CPU) and csrc/cuda (CUDA). Fake kernels and autograd are registered from Python
// (babygpt_ext/ops/library.py), which is also where inputs are validated before any kernel runs.
//
// Layouts: q (B, H, Tq, D); k, v (B, Hkv, Tk, D); o like q; lse (B, H, Tq) in float32 (float64
// when the inputs are float64). LoRA: x (N, in), weight (out, in), lora_a (r, in), lora_b (out, r);
// xa = x lora_aᵀ (N, r) is kept for the backward, in float32 (float64 for float64 inputs).
#include <torch/extension.h>

#include <string>

#ifdef BABYGPT_WITH_CUDA
namespace babygpt::cuda {
int runtime_version();  // csrc/cuda/ops_cuda.cu
}
#endif

TORCH_LIBRARY(babygpt, m) {
  m.def("attn_fwd(Tensor q, Tensor k, Tensor v, float scale, bool causal) -> (Tensor o, Tensor lse)");
  m.def(
      "attn_bwd(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, bool causal)"
      " -> (Tensor dq, Tensor dk, Tensor dv)");
  m.def(
      "lora_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, float scale)"
      " -> (Tensor y, Tensor xa)");
  // dweight/dbias are only computed when the frozen base needs them; otherwise they come back as
  // empty (numel 0) tensors, which the Python autograd turns into None.
  m.def(
      "lora_bwd(Tensor dy, Tensor x, Tensor weight, Tensor lora_a, Tensor lora_b, Tensor xa, float scale,"
      " bool need_dweight, bool need_dbias) -> (Tensor dx, Tensor dweight, Tensor dbias, Tensor dlora_a,"
      " Tensor dlora_b)");
}

namespace {

// What this binary was built with, so `babygpt info` reports facts rather than guesses.
py::dict build_info() {
  py::dict d;
  d["torch_version"] = TORCH_VERSION;
  d["compiler"] = std::string("gcc ") + __VERSION__;
  d["cplusplus"] = static_cast<long>(__cplusplus);
  d["parallel_threads"] = at::get_num_threads();
  d["parallel_backend"] = at::get_parallel_info();
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
