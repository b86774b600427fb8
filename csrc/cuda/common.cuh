// Small device helpers shared by the attention and LoRA kernels: element conversions, 16-bit
// packing for tensor-core fragments, shared-memory regions, and cooperative global->shared tile
// loads with zero padding.
//
// No torch headers here (docs/design.md §6.1): raw pointers only, so nvcc compiles this quickly and the
// CPU emulator (through portable.cuh) can run the very same code.
#pragma once

#include "portable.cuh"

#include "layout.h"
#include "params.h"

#include <cstdint>
#include <cstring>
#include <type_traits>

namespace babygpt::cuda {

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

// The array of a layout.h Region inside the block's dynamic shared memory.
template <class T>
__device__ __forceinline__ T* region(unsigned char* smem, const Region& r) {
  return reinterpret_cast<T*>(smem + r.offset);
}

// Copies rows [at.x, at.x + tile.rows) x cols [at.y, at.y + tile.cols) of `src` into the shared
// tile `dst`, multiplied by `alpha`, as T. Everything outside [0, extent.x) x [0, extent.y)
// becomes 0, so tiles at the edges need no masks in the math (0 contributes nothing to a dot
// product) -- and the padding is written on purpose, never left as whatever the shared memory held.
template <class T, int NTHREADS>
__device__ __forceinline__ void load_tile(T* dst, const Region& tile, const Mat& src, int2 at, int2 extent,
                                          float alpha = 1.f) {
  for (int idx = threadIdx.x; idx < tile.rows * tile.cols; idx += NTHREADS) {
    const int r = idx / tile.cols, c = idx % tile.cols;
    const int gr = at.x + r, gc = at.y + c;
    float v = 0.f;
    if (gr < extent.x && gc < extent.y) {
      const int64_t off = gr * src.rs + gc * src.cs;
      v = src.f32 ? static_cast<const float*>(src.p)[off] : to_float(static_cast<const T*>(src.p)[off]);
      v *= alpha;
    }
    dst[r * tile.ld + c] = from_float<T>(v);
  }
}

// The rows of one (batch, head) of a Heads tensor: n rows of d elements, `st` elements apart.
template <class T>
struct HeadRows {
  T* p;
  int64_t st;
  int n, d;
  __device__ T& operator()(int row, int col) const { return p[row * st + col]; }
};
template <class T>
__device__ __forceinline__ HeadRows<T> head_rows(const Heads& t, int b, int h, int n, int d) {
  return {t.template at<T>(b, h), t.st, n, d};
}

// Rows [r0, r0 + tile.rows) of `src` into the shared tile `dst` (tile.cols >= src.d columns), zero
// past the last row and column: the attention case, copied without a round trip through float.
template <class T, int NTHREADS>
__device__ __forceinline__ void load_rows(T* dst, const Region& tile, const HeadRows<const T>& src, int r0) {
  for (int idx = threadIdx.x; idx < tile.rows * tile.cols; idx += NTHREADS) {
    const int r = idx / tile.cols, c = idx % tile.cols;
    dst[r * tile.ld + c] = (r0 + r < src.n && c < src.d) ? src(r0 + r, c) : from_float<T>(0.f);
  }
}

}  // namespace babygpt::cuda
