// tests/emu/torch_include.cpp -- proves cudaemu.h coexists with <torch/extension.h> in one
// translation unit (what the _C_emu glue will do): torch first, then cudaemu.h and kernels.
// Compiled (not run) by test_cudaemu.py.
#include <torch/extension.h>

#include "cudaemu.h"
#include "kernels.cuh"

#include <stdexcept>

// Sum of squares of a float32 CPU tensor through the emulated block_reduce_kernel.
float emu_sum_squares(const torch::Tensor& x) {
  TORCH_CHECK(x.dtype() == torch::kFloat32 && x.device().is_cpu(), "x must be a float32 CPU tensor");
  auto xc = x.contiguous();
  const int n = (int)xc.numel(), threads = 128, blocks = 8;
  auto partial = torch::empty({blocks}, xc.options());
  auto total = torch::zeros({1}, xc.options());
  CUDAEMU_LAUNCH(block_reduce_kernel, blocks, threads, 0, nullptr, xc.data_ptr<float>(), partial.data_ptr<float>(),
                 total.data_ptr<float>(), n);
  if (cudaGetLastError() != cudaSuccess) throw std::runtime_error(cudaemu::last_error_message());
  return total.item<float>();
}
