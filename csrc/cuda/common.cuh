// Small device helpers shared by the attention and LoRA kernels: element conversions, 16-bit
// packing for tensor-core fragments, and cooperative global->shared tile loads with zero padding.
//
// No torch headers here (docs/design.md §6.1): raw pointers only, so nvcc compiles this quickly and
// csrc/emu/cudaemu.h can run the very same code on the CPU.
#pragma once

#include "../emu/cudaemu.h"  // CUDAEMU_LAUNCH / CUDAEMU_DYNAMIC_SHARED (plain CUDA under nvcc)
#include "params.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace babygpt::cuda {

__host__ __device__ constexpr int ceil_div(int a, int b) { return (a + b - 1) / b; }
__host__ __device__ constexpr int round_up(int a, int b) { return ceil_div(a, b) * b; }

// fp32 is the accumulation type of every kernel; these convert to and from the element type.
__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <class T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Two 16-bit elements in one 32-bit register, the lower column/row index in the low half: the
// layout of every .f16/.bf16 operand register of mma.sync (PTX ISA, "Matrix fragments").
template <class T>
__device__ __forceinline__ uint32_t pack2(T lo, T hi) {
  static_assert(sizeof(T) == 2, "pack2 packs 16-bit elements");
  uint16_t l, h;
  memcpy(&l, &lo, 2);
  memcpy(&h, &hi, 2);
  return uint32_t(l) | (uint32_t(h) << 16);
}
template <class T>
__device__ __forceinline__ float2 unpack2(uint32_t r) {
  T lo, hi;
  const uint16_t l = uint16_t(r & 0xFFFFu), h = uint16_t(r >> 16);
  memcpy(&lo, &l, 2);
  memcpy(&hi, &h, 2);
  return make_float2(to_float(lo), to_float(hi));
}


// Copies rows [r0, r0 + rows) x cols [c0, c0 + cols) of `src` into shared memory (row stride
// `ld`), multiplied by `alpha`, as T. Everything outside [0, nrows) x [0, ncols) becomes 0, so
// tiles at the edges need no masks in the math (0 contributes nothing to a dot product) -- and
// the padding is written on purpose, never left as whatever the shared memory held.
template <class T, int NTHREADS>
__device__ __forceinline__ void load_tile(T* dst, int ld, Mat src, int r0, int c0, int rows, int cols, int nrows,
                                          int ncols, float alpha = 1.f) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += NTHREADS) {
    const int r = idx / cols, c = idx % cols;
    const int gr = r0 + r, gc = c0 + c;
    float v = 0.f;
    if (gr < nrows && gc < ncols) {
      const int64_t off = gr * src.rs + gc * src.cs;
      v = src.f32 ? static_cast<const float*>(src.p)[off] : to_float(static_cast<const T*>(src.p)[off]);
      v *= alpha;
    }
    dst[r * ld + c] = from_float<T>(v);
  }
}

// Same for a contiguous (rows, ncols) slab of T with row stride `g_ld`, the attention case:
// copies without a round trip through float.
template <class T, int NTHREADS>
__device__ __forceinline__ void load_rows(T* dst, int ld, const T* src, int64_t g_ld, int r0, int rows, int nrows,
                                          int cols, int ncols) {
  for (int idx = threadIdx.x; idx < rows * cols; idx += NTHREADS) {
    const int r = idx / cols, c = idx % cols;
    dst[r * ld + c] = (r0 + r < nrows && c < ncols) ? src[(int64_t)(r0 + r) * g_ld + c] : from_float<T>(0.f);
  }
}

}  // namespace babygpt::cuda
