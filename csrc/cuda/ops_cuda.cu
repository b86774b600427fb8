// CUDA side of the extension: build facts now; the kernel launches and
// TORCH_LIBRARY_IMPL(babygpt, CUDA, m) join this file with the CUDA kernels (csrc/cuda/*.cuh).
#include <cuda_runtime_api.h>

namespace babygpt::cuda {

// The CUDA runtime this translation unit was compiled against (e.g. 13000 for 13.0): proves to
// `babygpt info` that the CUDA part was really compiled and linked, with or without a GPU.
int runtime_version() { return CUDART_VERSION; }

}  // namespace babygpt::cuda
