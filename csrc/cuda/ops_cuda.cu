// CUDA side of the extension: the op contract on CUDA tensors (TORCH_LIBRARY_IMPL(babygpt, CUDA))
// on top of the launchers in launchers.cu, plus build facts for `babygpt info`.
//
// Every op runs on the current CUDA stream of the inputs' device (CUDAGuard makes it current)
// and checks every launch: the launchers return the status they captured right after their
// launches, which BABYGPT_GLUE_CHECK turns into an exception naming the op, then
// C10_CUDA_KERNEL_LAUNCH_CHECK checks that no error is pending.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAStream.h>  // not ATen/cuda/CUDAContext.h: it needs cusparse.h, absent from this toolkit
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime_api.h>
#include <torch/library.h>

#define BABYGPT_GLUE_STREAM() (c10::cuda::getCurrentCUDAStream().stream())  // at::cuda::getCurrentCUDAStream is this function
#define BABYGPT_GLUE_GUARD(t) const c10::cuda::CUDAGuard device_guard_((t).device())
#define BABYGPT_GLUE_DEVICE_CHECK(t) \
  TORCH_CHECK((t).is_cuda(), "babygpt CUDA kernels: expected a CUDA tensor, got one on ", (t).device())
#define BABYGPT_GLUE_CHECK(call, op)                                                         \
  do {                                                                                       \
    const cudaError_t err_ = (call);                                                         \
    TORCH_CHECK(err_ == cudaSuccess, op, ": CUDA launch failed: ", cudaGetErrorString(err_)); \
    C10_CUDA_KERNEL_LAUNCH_CHECK();                                                          \
  } while (0)
#include "torch_glue.h"

namespace babygpt::cuda {

// The CUDA runtime this translation unit was compiled against (e.g. 13000 for 13.0): proves to
// `babygpt info` that the CUDA part was really compiled and linked, with or without a GPU.
int runtime_version() { return CUDART_VERSION; }

}  // namespace babygpt::cuda

TORCH_LIBRARY_IMPL(babygpt, CUDA, m) { BABYGPT_GLUE_IMPL(m); }
