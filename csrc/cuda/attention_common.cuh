// The causal rule and the warp reductions shared by the attention kernels (their tile shapes and
// shared-memory layouts are in layout.h).
#pragma once

#include "mma.cuh"

namespace babygpt::cuda {

// Query i sees key j iff j <= i + (Tk - Tq) (bottom-right causal, docs/design.md §2.3). Rows and columns
// past the ends are never visible, which is how ragged edge tiles are masked.
__device__ __forceinline__ bool visible(const AttnParams& p, int i, int j) {
  return i < p.Tq && j < p.Tk && (!p.causal || j <= i + (p.Tk - p.Tq));
}

// Attention dropout (csrc/dropout_rng.h) for one thread's accumulator elements of a warp tile of
// 16 rows x 8·N8 columns: bit 4n + i says whether element (n, i) -- row row0 + acc_row(i), column
// col0 + 8n + acc_col(i); rows are keys and columns queries when `transposed` -- is kept. Drawn
// before the tile's products, so the generator's registers are free again while the scores are
// live (drawn inline, the dK/dV kernel spilled on sm_80).
template <int N8>
__device__ __forceinline__ uint32_t kept_bits(const AttnParams& p, int b, int h, int row0, int col0, bool transposed) {
  static_assert(N8 * 4 <= 32, "one bit per accumulator element");
  uint32_t bits = 0;
#pragma unroll 1
  for (int n = 0; n < N8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = row0 + acc_row(i), col = col0 + n * 8 + acc_col(i);
      bits |= uint32_t(transposed ? dropout::keep(p.rng, b, h, col, row) : dropout::keep(p.rng, b, h, row, col))
              << (4 * n + i);
    }
  return bits;
}

// The dropout scale Z of element (n, i) of kept_bits: 1 / (1 - p) if kept, else 0.
__device__ __forceinline__ float dropout_scale(const AttnParams& p, uint32_t bits, int n, int i) {
  return (bits >> (4 * n + i)) & 1u ? p.rng.keep_scale : 0.f;
}

// The keys [0, end) some query row of [m0, m0 + rows) sees.
__device__ __forceinline__ int visible_key_end(const AttnParams& p, int m0, int rows) {
  const int last_row = min(m0 + rows, p.Tq) - 1;
  return p.causal ? min(p.Tk, last_row + (p.Tk - p.Tq) + 1) : p.Tk;
}

// What attn_fwd_kernel and attn_dq_kernel share: the CTA's query tile (blockIdx.x: which BM rows,
// .y: the query head, .z: the batch), its kv head (GQA), its keys and values in global memory, and
// its shared tiles (AttnSmem; dout only in the dQ kernel).
template <class T, int DMAX>
struct QueryTileCta {
  AttnSmem<sizeof(T), DMAX> L;
  T *sQ, *sdO, *sK, *sV, *sP;
  int m0, h, b, hk;
  HeadRows<const T> k, v;
  __device__ QueryTileCta(unsigned char* smem, const AttnParams& p, bool with_dout)
      : L(p.D, with_dout),
        sQ(region<T>(smem, L.q)), sdO(region<T>(smem, L.dout)), sK(region<T>(smem, L.k)),
        sV(region<T>(smem, L.v)), sP(region<T>(smem, L.p)),
        m0(blockIdx.x * AttnTiles<sizeof(T), DMAX>::BM), h(blockIdx.y), b(blockIdx.z), hk(h / (p.H / p.Hkv)),
        k(head_rows<const T>(p.k, b, hk, p.Tk, p.D)), v(head_rows<const T>(p.v, b, hk, p.Tk, p.D)) {}
};

// The backward's two score tiles of one warp, zeroed then accumulated over the first dp columns:
// s = A Bᵀ and s2 = A2 B2ᵀ, with A, A2 16 rows and B, B2 8 * N8 rows, all rows ld apart in shared
// memory (S and dP of the dQ kernel; Sᵀ and dPᵀ of the dK/dV kernel).
template <int N8, class T>
__device__ __forceinline__ void warp_scores2(float (&s)[N8][4], float (&s2)[N8][4], const T* a, const T* b,
                                             const T* a2, const T* b2, int ld, int dp) {
#pragma unroll
  for (int n = 0; n < N8; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) s[n][i] = s2[n][i] = 0.f;
  for (int kk = 0; kk < dp; kk += 16) {
#pragma unroll
    for (int n = 0; n < N8; ++n) {
      warp_mma(s[n], a + kk, ld, 1, b + n * 8 * ld + kk, 1, ld);
      warp_mma(s2[n], a2 + kk, ld, 1, b2 + n * 8 * ld + kk, 1, ld);
    }
  }
}

// Whether a shared tile holds a NaN or an Inf. A barrier: every thread of the block calls it.
template <class T, int NTHREADS>
__device__ __forceinline__ bool tile_has_nonfinite(const T* tile, const Region& r) {
  int bad = 0;
  for (int idx = threadIdx.x; idx < r.rows * r.cols; idx += NTHREADS)
    bad |= !(fabsf(to_float(tile[idx / r.cols * r.ld + idx % r.cols])) < INFINITY);
  return __syncthreads_or(bad);
}

// acc += A B over j < k, in warp_mma's accumulator layout (rows acc_row, columns c0 + 8n + acc_col,
// chunks at or past `cols` skipped as the mma loops skip them), summing only the pairs (row, j) that
// `seen` admits, one scalar product each. A masked tile whose B holds a NaN or Inf needs this exact
// product: inside an mma the exact 0 of A at an unseen pair times NaN is NaN (docs/design.md §2.7).
template <int N8, class T, class Seen>
__device__ __forceinline__ void warp_seen_product(float (&acc)[N8][4], const T* a, int lda, const T* b, int ldb,
                                                  int k, int c0, int cols, Seen seen) {
#pragma unroll
  for (int n = 0; n < N8; ++n) {
    if (c0 + n * 8 >= cols) continue;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = acc_row(i), c = c0 + n * 8 + acc_col(i);
      float sum = 0.f;
      for (int j = 0; j < k; ++j)
        if (seen(r, j)) sum += to_float(a[r * lda + j]) * to_float(b[j * ldb + c]);
      acc[n][i] += sum;
    }
  }
}

// acc += A B for a warp: A its 16 x K tile (row-major, lda), B a K x cols tile (row-major, ldb), on
// the tensor cores; with `exact` (a masked tile whose B holds a NaN or Inf) one scalar product per
// pair `seen` admits instead.
template <int K, int N8, class T, class Seen>
__device__ __forceinline__ void warp_tile_product(float (&acc)[N8][4], const T* a, int lda, const T* b, int ldb,
                                                  int cols, bool exact, Seen seen) {
  if (exact) {
    warp_seen_product(acc, a, lda, b, ldb, K, 0, cols, seen);
    return;
  }
#pragma unroll
  for (int kk = 0; kk < K; kk += 16) {
#pragma unroll
    for (int n = 0; n < N8; ++n)
      if (n * 8 < cols) warp_mma(acc[n], a + kk, lda, 1, b + kk * ldb + n * 8, ldb, 1);
  }
}

// Sum over the 4 lanes that share an accumulator row (lanes 4g..4g+3).
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffffu, x, 1);
  return x + __shfl_xor_sync(0xffffffffu, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffffu, x, 2));
}

}  // namespace babygpt::cuda
