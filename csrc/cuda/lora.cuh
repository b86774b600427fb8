// Fused LoRA matmuls: one tiled GEMM with a second, fused operand pair, plus a column sum.
//
//   C = alpha1 · A1 B1 + alpha2 · A2 B2 + bias      (GemmParams, params.h)
//
// The LoRA forward y = x Wᵀ + b + s·(x Aᵀ) Bᵀ is two calls: xa = x Aᵀ (N x r, fp32, kept for the
// backward), then y with (x, Wᵀ) as the main K loop and (xa, Bᵀ) as a second, r-long K loop into
// the *same* fp32 accumulator tile, then + bias: y is written once, never read back. The
// backward's products (dy B, dy W + s·(dy B) A, s·dyᵀ xa, s·(dy B)ᵀ x, dyᵀ x) are the same kernel
// with transposed strides. Operands stream through shared memory BK columns at a time and go
// through warp_mma (tensor cores for 16-bit types).
#pragma once

#include "mma.cuh"

namespace babygpt::cuda {

template <class T>
__global__ void __launch_bounds__(128) gemm_kernel(GemmParams p) {
  using G = GemmTiles;
  constexpr int BM = G::BM, BN = G::BN, BK = G::BK;
  constexpr GemmSmem<sizeof(T)> L;
  constexpr int lda = L.a.ld, ldb = L.b.ld;
  BABYGPT_DYNAMIC_SHARED(smem);
  T* sA = region<T>(smem, L.a);  // BM x BK, row-major
  T* sB = region<T>(smem, L.b);  // BK x BN, row-major (k, n)
  const int m0 = blockIdx.x * BM, n0 = blockIdx.y * BN, warp = threadIdx.x / 32;
  float acc[BN / 8][4];
#pragma unroll
  for (int n = 0; n < BN / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;

  auto k_loop = [&](const Mat& a, const Mat& b, int K, float alpha) {
    for (int k0 = 0; k0 < K; k0 += BK) {
      __syncthreads();  // the previous slab is no longer read
      // alpha scales A while it is staged (exact for fp32; one rounding for 16-bit types, as
      // eager PyTorch does when it multiplies in that precision).
      load_tile<T, G::kThreads>(sA, L.a, a, make_int2(m0, k0), make_int2(p.M, K), alpha);
      load_tile<T, G::kThreads>(sB, L.b, b, make_int2(k0, n0), make_int2(K, p.N));
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; kk += 16) {
#pragma unroll
        for (int n = 0; n < BN / 8; ++n) warp_mma(acc[n], sA + warp * 16 * lda + kk, lda, 1, sB + kk * ldb + n * 8, ldb, 1);
      }
    }
  };
  k_loop(p.a1, p.b1, p.K1, p.alpha1);
  k_loop(p.a2, p.b2, p.K2, p.alpha2);  // the fused low-rank term (K2 = 0: nothing)

#pragma unroll
  for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + warp * 16 + acc_row(i), col = n0 + n * 8 + acc_col(i);
      if (row >= p.M || col >= p.N) continue;
      float v = acc[n][i];
      if (p.bias) v += to_float(static_cast<const T*>(p.bias)[col]);
      if (p.c_f32) static_cast<float*>(p.c)[row * p.ldc + col] = v;
      else static_cast<T*>(p.c)[row * p.ldc + col] = from_float<T>(v);
    }
  }
}

// out[j] = Σ_i x[i, j] in fp32, one thread per column (the bias gradient: rows = tokens).
template <class T>
__global__ void __launch_bounds__(128) colsum_kernel(ColsumParams p) {
  const int j = blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= p.cols) return;
  const T* x = static_cast<const T*>(p.x);
  float s = 0.f;
  for (int i = 0; i < p.rows; ++i) s += to_float(x[(int64_t)i * p.cols + j]);
  static_cast<T*>(p.out)[j] = from_float<T>(s);
}

}  // namespace babygpt::cuda
