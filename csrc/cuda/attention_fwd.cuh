// Fused causal attention, forward: FlashAttention-2 tiling with an online softmax.
//
// A CTA owns BM query rows of one (batch, head) -- 16 rows per warp (layout.h) -- and streams the key /
// value tiles of the kv head h / (H / Hkv) (GQA) through shared memory. Per key tile each warp
//   S = Q Kᵀ (16 x BN, fp32 in registers) -> scale, mask -> new running row max m
//   P = exp(S - m), l = l·exp(m_old - m) + rowsum(P), O = O·exp(m_old - m) + P V
// and at the end writes O / l and lse = m + log l. With dropout the P that meets V is P ∘ Z (Z: the
// mask of dropout_rng.h over 1 - p) while l sums the undropped P. P goes through a warp-private shared tile
// (rounded to T, as FlashAttention does) so P V uses the same shared-memory mma as Q Kᵀ.
// Key tiles that every row of the CTA sees completely run without any mask arithmetic; only the
// tiles crossing the causal diagonal or the end of the sequence pay for it.
#pragma once

#include <type_traits>

#include "attention_common.cuh"

namespace babygpt::cuda {

template <class T, int DMAX>
__global__ void __launch_bounds__(128) attn_fwd_kernel(AttnParams p) {
  using Tiles = AttnTiles<sizeof(T), DMAX>;
  constexpr int BM = Tiles::BM, BN = Tiles::BN, NT = Tiles::kThreads, NO = DMAX / 8;
  BABYGPT_DYNAMIC_SHARED(smem);
  const QueryTileCta<T, DMAX> cta(smem, p, /*with_dout=*/false);
  const auto& L = cta.L;
  const int dp = L.dp, ld = L.q.ld, ldp = L.p.ld, m0 = cta.m0, h = cta.h, b = cta.b;
  T *sQ = cta.sQ, *sK = cta.sK, *sV = cta.sV, *sP = cta.sP;
  const int warp = threadIdx.x / 32, lane = threadIdx.x & 31, shift = p.Tk - p.Tq;
  T* sPw = sP + warp * 16 * ldp;        // this warp's P rows
  const bool dropping = p.rng.threshold != 0;
  const T* sQw = sQ + warp * 16 * ld;   // this warp's Q rows

  load_rows<T, NT>(sQ, L.q, head_rows<const T>(p.q, b, h, p.Tq, p.D), m0);

  float o[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.f, 0.f};

  auto tile = [&](int n0, auto masked) {
    __syncthreads();  // every warp is done with the previous K/V tile (and sQ is loaded)
    load_rows<T, NT>(sK, L.k, cta.k, n0);
    load_rows<T, NT>(sV, L.v, cta.v, n0);
    __syncthreads();
    // P is an exact 0 where a row does not see a key; a NaN/Inf value of such a key needs the exact
    // product all the same (0 · NaN in an mma is NaN).
    bool exact_pv = false;
    if constexpr (decltype(masked)::value) exact_pv = tile_has_nonfinite<T, NT>(sV, L.v);

    const uint32_t kept = dropping ? kept_bits<BN / 8>(p, b, h, m0 + warp * 16, n0, false) : 0u;
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
        const float z = dropping ? dropout_scale(p, kept, n, i) : 1.f;
        sPw[acc_row(i) * ldp + n * 8 + acc_col(i)] = from_float<T>(pv * z);
      }
    }
    __syncwarp();  // P is written by all lanes of the warp and read as fragments by all
    warp_tile_product<BN>(o, sPw, ldp, sV, ld, dp, exact_pv,
                          [&](int r, int j) { return visible(p, m0 + warp * 16 + r, n0 + j); });
    __syncwarp();  // reads of sPw finish before the next tile overwrites it
  };

  // Keys [0, n_end) are visible to some row of this CTA; tiles below n_full to all of them.
  const int n_end = visible_key_end(p, m0, BM);
  const int n_full = (min(n_end, p.causal ? m0 + shift + 1 : p.Tk) / BN) * BN;
  int n0 = 0;
  for (; n0 < n_full; n0 += BN) tile(n0, std::false_type{});
  for (; n0 < n_end; n0 += BN) tile(n0, std::true_type{});

  const auto out = head_rows<T>(p.out, b, h, p.Tq, p.D);
  // fp16/bf16: o_lo = T(o32 - T(o32)) keeps the fp32 output for the backward's delta (schemas.h).
  const auto out_lo = head_rows<T>(p.out_lo, b, h, p.Tq, p.D);
  const bool with_lo = !std::is_same_v<T, float> && p.out_lo.p != nullptr;
#pragma unroll
  for (int r = 0; r < 2; ++r) l_run[r] = quad_sum(l_run[r]);
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + warp * 16 + acc_row(i), col = n * 8 + acc_col(i);
      if (row < p.Tq && col < p.D) {
        const float x = o[n][i] / l_run[i >> 1];
        const T hi = from_float<T>(x);
        out(row, col) = hi;
        if (with_lo) out_lo(row, col) = from_float<T>(x - to_float(hi));
      }
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
