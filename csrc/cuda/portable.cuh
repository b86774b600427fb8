// What the kernels need from the CUDA toolchain, from one of two places:
//   nvcc          the CUDA headers; launches are kernel<<<...>>>;
//   any other     the CPU emulator cudaemu.h (csrc/emu, on the include path of the _C_emu build),
//   compiler      which provides the same headers' types and runs every launch on the CPU.
// Kernels launch with BABYGPT_LAUNCH and name their dynamic shared memory with
// BABYGPT_DYNAMIC_SHARED; everything else is plain CUDA C++.
#pragma once

#if defined(__CUDACC__)
#include <cuda_runtime.h>
#define BABYGPT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  kernel<<<(grid), (block), (smem), (stream)>>>(__VA_ARGS__)
// One raw byte array for every kernel (nvcc rejects the same extern __shared__ name with
// different element types in one file); kernels carve it with the layouts of layout.h.
#define BABYGPT_DYNAMIC_SHARED(name) extern __shared__ __align__(16) unsigned char name[]
#else
#include <cudaemu.h>
#define BABYGPT_LAUNCH(kernel, grid, block, smem, stream, ...) \
  CUDAEMU_LAUNCH(kernel, grid, block, smem, stream, __VA_ARGS__)
#define BABYGPT_DYNAMIC_SHARED(name) CUDAEMU_DYNAMIC_SHARED(unsigned char, name)
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
