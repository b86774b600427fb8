// Fused causal attention, forward: FlashAttention-2 tiling with an online softmax.
//
// A CTA owns BM = 64 query rows of one (batch, head) -- 16 rows per warp -- and streams the key /
// value tiles of the kv head h / (H / Hkv) (GQA) through shared memory. Per key tile each warp
//   S = Q Kᵀ (16 x BN, fp32 in registers) -> scale, mask -> new running row max m
//   P = exp(S - m), l = l·exp(m_old - m) + rowsum(P), O = O·exp(m_old - m) + P V
// and at the end writes O / l and lse = m + log l. P goes through a warp-private shared tile
// (rounded to T, as FlashAttention does) so P V uses the same shared-memory mma as Q Kᵀ.
// Key tiles that every row of the CTA sees completely run without any mask arithmetic; only the
// tiles crossing the causal diagonal or the end of the sequence pay for it.
#pragma once

#include <type_traits>

#include "attention_common.cuh"

namespace babygpt::cuda {

template <class T, int DMAX>
__global__ void __launch_bounds__(128) attn_fwd_kernel(AttnParams p) {
  using Cfg = AttnTiles<T, DMAX>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::kThreads, NO = DMAX / 8;
  CUDAEMU_DYNAMIC_SHARED(T, smem);
  const int dp = round_up(p.D, 16), ld = Cfg::ld(p.D), ldp = Cfg::ldp();
  T* sQ = smem;
  T* sK = sQ + BM * ld;
  T* sV = sK + BN * ld;
  T* sP = sV + BN * ld;
  const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / (p.H / p.Hkv);
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, shift = p.Tk - p.Tq;
  const T* q = head_ptr<T>(p.q, b, h, p.H, p.Tq, p.D);
  const T* k = head_ptr<T>(p.k, b, hk, p.Hkv, p.Tk, p.D);
  const T* v = head_ptr<T>(p.v, b, hk, p.Hkv, p.Tk, p.D);
  T* sPw = sP + warp * 16 * ldp;        // this warp's P rows
  const T* sQw = sQ + warp * 16 * ld;   // this warp's Q rows

  load_rows<T, NT>(sQ, ld, q, p.D, m0, BM, p.Tq, dp, p.D);

  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  auto tile = [&](int n0, auto masked) {
    __syncthreads();  // every warp is done with the previous K/V tile (and sQ is loaded)
    load_rows<T, NT>(sK, ld, k, p.D, n0, BN, p.Tk, dp, p.D);
    load_rows<T, NT>(sV, ld, v, p.D, n0, BN, p.Tk, dp, p.D);
    __syncthreads();

    float s[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
    for (int kk = 0; kk < dp; kk += 16) {
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) warp_mma(s[n], sQw + kk, ld, 1, sK + n * 8 * ld + kk, 1, ld);
    }

    float mx[2] = {m_run[0], m_run[1]};
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        float x = s[n][i] * p.scale;
        if constexpr (decltype(masked)::value) {
          if (!visible(p, m0 + warp * 16 + acc_row(i), n0 + n * 8 + acc_col(i))) x = -INFINITY;
        }
        s[n][i] = x;
        mx[i >> 1] = fmaxf(mx[i >> 1], x);  // fmaxf skips NaN; a NaN score still poisons l and O below
      }
    }
    float base[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      mx[r] = quad_max(mx[r]);
      // A row that has seen only masked keys so far has max -inf; exp(x - 0) then gives 0 for
      // its (-inf) scores instead of exp(-inf + inf) = NaN.
      base[r] = mx[r] == -INFINITY ? 0.f : mx[r];
      const float alpha = expf(m_run[r] - base[r]);
      m_run[r] = mx[r];
      l_run[r] *= alpha;
#pragma unroll
      for (int n = 0; n < NO; ++n) o[n][2 * r] *= alpha, o[n][2 * r + 1] *= alpha;
    }
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const float pv = expf(s[n][i] - base[i >> 1]);
        l_run[i >> 1] += pv;
        sPw[acc_row(i) * ldp + n * 8 + acc_col(i)] = from_float<T>(pv);
      }
    }
    __syncwarp();  // P is written by all lanes of the warp and read as fragments by all
#pragma unroll
    for (int kk = 0; kk < BN; kk += 16) {
#pragma unroll
      for (int n = 0; n < NO; ++n)
        if (n * 8 < dp) warp_mma(o[n], sPw + kk, ldp, 1, sV + kk * ld + n * 8, ld, 1);
    }
    __syncwarp();  // reads of sPw finish before the next tile overwrites it
  };

  // Keys [0, n_end) are visible to some row of this CTA; tiles below n_full to all of them.
  const int last_row = min(m0 + BM, p.Tq) - 1;
  const int n_end = p.causal ? min(p.Tk, last_row + shift + 1) : p.Tk;
  const int n_full = (min(n_end, p.causal ? m0 + shift + 1 : p.Tk) / BN) * BN;
  int n0 = 0;
  for (; n0 < n_full; n0 += BN) tile(n0, std::false_type{});
  for (; n0 < n_end; n0 += BN) tile(n0, std::true_type{});

  T* out = static_cast<T*>(p.out) + ((int64_t)b * p.H + h) * p.Tq * p.D;
#pragma unroll
  for (int r = 0; r < 2; ++r) l_run[r] = quad_sum(l_run[r]);
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + warp * 16 + acc_row(i), col = n * 8 + acc_col(i);
      if (row < p.Tq && col < p.D) out[(int64_t)row * p.D + col] = from_float<T>(o[n][i] / l_run[i >> 1]);
    }
  }
  if ((lane & 3) == 0) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = m0 + warp * 16 + acc_row(2 * r);
      if (row < p.Tq) p.lse_out[((int64_t)b * p.H + h) * p.Tq + row] = m_run[r] + logf(l_run[r]);
    }
  }
}

}  // namespace babygpt::cuda
