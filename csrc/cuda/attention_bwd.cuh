// Fused causal attention, backward (FlashAttention-2): P is recomputed from lse, never stored.
//
//   delta_i = rowsum(dO ∘ O)_i, O = o + o_lo (the forward's fp32 O)     attn_delta_kernel
//   dS_ij   = P_ij (dO_i · v_j - delta_i),  P_ij = exp(scale q_i·k_j - lse_i)
//   dV_j = Σ_i P_ij dO_i,  dK_j = scale Σ_i dS_ij q_i                  attn_dkdv_kernel: a CTA per key
//        block, looping over the query blocks *and over the query heads of the GQA group*, so each
//        dK/dV element has one writer: no atomics.
//   dQ_i = scale Σ_j dS_ij k_j                                         attn_dq_kernel: a separate CTA per
//        query block (it recomputes S and dP once more, instead of fp32 atomics on dQ: deterministic).
// With dropout (O = (P ∘ Z) V, Z regenerated from dropout_rng.h): dV_j = Σ_i P_ij Z_ij dO_i and
// dS_ij = P_ij (Z_ij dO_i · v_j - delta_i); delta = rowsum(dO ∘ O) is unchanged.
#pragma once

#include <type_traits>

#include "attention_common.cuh"

namespace babygpt::cuda {

template <class T>
__global__ void __launch_bounds__(128) attn_delta_kernel(AttnParams p) {
  const int64_t rows = (int64_t)p.B * p.H * p.Tq;
  const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const int t = (int)(row % p.Tq), h = (int)(row / p.Tq % p.H), b = (int)(row / p.Tq / p.H);
  const auto o = head_rows<const T>(p.o, b, h, p.Tq, p.D), d = head_rows<const T>(p.dout, b, h, p.Tq, p.D);
  // The residual o_lo restores the forward's fp32 O (its P V before rounding to T): delta is then not
  // off by up to half an ulp of O in T, an error every dS_ij of the row would carry.
  const auto lo = head_rows<const T>(p.o_lo, b, h, p.Tq, p.D);
  const bool with_lo = !std::is_same_v<T, float> && p.o_lo.p != nullptr;
  float s = 0.f;
  for (int c = 0; c < p.D; ++c) s += (to_float(o(t, c)) + (with_lo ? to_float(lo(t, c)) : 0.f)) * to_float(d(t, c));
  p.delta[row] = s;
}

// dQ for BM query rows of one (batch, head); the structure of the forward, with dP = dO Vᵀ next to S.
template <class T, int DMAX>
__global__ void __launch_bounds__(128) attn_dq_kernel(AttnParams p) {
  using Tiles = AttnTiles<sizeof(T), DMAX>;
  constexpr int BM = Tiles::BM, BN = Tiles::BN, NT = Tiles::kThreads, NO = DMAX / 8;
  BABYGPT_DYNAMIC_SHARED(smem);
  const QueryTileCta<T, DMAX> cta(smem, p, /*with_dout=*/true);
  const auto& L = cta.L;
  const int dp = L.dp, ld = L.q.ld, ldp = L.p.ld, m0 = cta.m0, h = cta.h, b = cta.b;
  T *sQ = cta.sQ, *sdO = cta.sdO, *sK = cta.sK, *sV = cta.sV, *sS = cta.sP;
  const int warp = threadIdx.x / 32;
  const bool dropping = p.rng.threshold != 0;
  load_rows<T, NT>(sQ, L.q, head_rows<const T>(p.q, b, h, p.Tq, p.D), m0);
  load_rows<T, NT>(sdO, L.dout, head_rows<const T>(p.dout, b, h, p.Tq, p.D), m0);
  const T *sQw = sQ + warp * 16 * ld, *sdOw = sdO + warp * 16 * ld;
  T* sSw = sS + warp * 16 * ldp;

  float lse[2], delta[2];
  const int64_t stat0 = ((int64_t)b * p.H + h) * p.Tq;
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int row = m0 + warp * 16 + acc_row(2 * r);
    lse[r] = row < p.Tq ? p.lse[stat0 + row] : 0.f;
    delta[r] = row < p.Tq ? p.delta[stat0 + row] : 0.f;
  }
  float dq[NO][4];
#pragma unroll
  for (int n = 0; n < NO; ++n) dq[n][0] = dq[n][1] = dq[n][2] = dq[n][3] = 0.f;

  const int n_end = visible_key_end(p, m0, BM);
  const int n_full = (min(n_end, p.causal ? m0 + (p.Tk - p.Tq) + 1 : p.Tk) / BN) * BN;  // as in the forward
  for (int n0 = 0; n0 < n_end; n0 += BN) {
    __syncthreads();
    load_rows<T, NT>(sK, L.k, cta.k, n0);
    load_rows<T, NT>(sV, L.v, cta.v, n0);
    __syncthreads();
    // dS is an exact 0 where a row does not see a key; a NaN/Inf key there needs the exact dS K.
    const bool exact_dsk = n0 >= n_full && tile_has_nonfinite<T, NT>(sK, L.k);
    const uint32_t kept = dropping ? kept_bits<BN / 8>(p, b, h, m0 + warp * 16, n0, false) : 0u;
    float s[BN / 8][4], dpv[BN / 8][4];
    warp_scores2(s, dpv, sQw, sK, sdOw, sV, ld, dp);  // S = Q Kᵀ, dP = dO Vᵀ
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool vis = visible(p, m0 + warp * 16 + acc_row(i), n0 + n * 8 + acc_col(i));
        const float z = dropping ? dropout_scale(p, kept, n, i) : 1.f;
        // The select, not P = 0 alone: dP or delta may be NaN at an unseen pair (0 · NaN).
        const float ds = vis ? expf(s[n][i] * p.scale - lse[i >> 1]) * (z * dpv[n][i] - delta[i >> 1]) : 0.f;
        sSw[acc_row(i) * ldp + n * 8 + acc_col(i)] = from_float<T>(ds);
      }
    }
    __syncwarp();
    warp_tile_product<BN>(dq, sSw, ldp, sK, ld, dp, exact_dsk,
                          [&](int r, int j) { return visible(p, m0 + warp * 16 + r, n0 + j); });
    __syncwarp();
  }

  const auto out = head_rows<T>(p.dq, b, h, p.Tq, p.D);
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + warp * 16 + acc_row(i), col = n * 8 + acc_col(i);
      if (row < p.Tq && col < p.D) out(row, col) = from_float<T>(dq[n][i] * p.scale);
    }
  }
}

template <class T, int DMAX>
__global__ void __launch_bounds__(DkDvTiles<sizeof(T), DMAX>::kThreads) attn_dkdv_kernel(AttnParams p) {
  using Tiles = DkDvTiles<sizeof(T), DMAX>;
  constexpr int BNK = Tiles::BNK, BMQ = Tiles::BMQ, NT = Tiles::kThreads, DCH = Tiles::DCH;
  BABYGPT_DYNAMIC_SHARED(smem);
  const DkDvSmem<sizeof(T), DMAX> L(p.D);
  const int dp = L.dp, ld = L.k.ld, ldq = L.pt.ld;
  float* sLse = region<float>(smem, L.lse);
  float* sDelta = region<float>(smem, L.delta);
  T* sK = region<T>(smem, L.k);
  T* sV = region<T>(smem, L.v);
  T* sQ = region<T>(smem, L.q);
  T* sdO = region<T>(smem, L.dout);
  T* sP = region<T>(smem, L.pt);
  T* sdS = region<T>(smem, L.dst);
  const int n0 = blockIdx.x * BNK, hk = blockIdx.y, b = blockIdx.z, group = p.H / p.Hkv;
  const int warp = threadIdx.x / 32, shift = p.Tk - p.Tq;
  const bool dropping = p.rng.threshold != 0;
  load_rows<T, NT>(sK, L.k, head_rows<const T>(p.k, b, hk, p.Tk, p.D), n0);
  load_rows<T, NT>(sV, L.v, head_rows<const T>(p.v, b, hk, p.Tk, p.D), n0);
  const T *sKw = sK + warp * 16 * ld, *sVw = sV + warp * 16 * ld;
  T *sPw = sP + warp * 16 * ldq, *sdSw = sdS + warp * 16 * ldq;
  // The first query that sees key n0, rounded down to a query tile.
  const int m_begin = p.causal ? (max(0, n0 - shift) / BMQ) * BMQ : 0;

  for (int d0 = 0; d0 < dp; d0 += DCH) {
    float dk[DCH / 8][4], dv[DCH / 8][4];
#pragma unroll
    for (int n = 0; n < DCH / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) dk[n][i] = dv[n][i] = 0.f;

    for (int h = hk * group; h < (hk + 1) * group; ++h) {
      const int64_t stat0 = ((int64_t)b * p.H + h) * p.Tq;
      for (int m0 = m_begin; m0 < p.Tq; m0 += BMQ) {
        __syncthreads();  // the previous query tile is no longer read
        load_rows<T, NT>(sQ, L.q, head_rows<const T>(p.q, b, h, p.Tq, p.D), m0);
        load_rows<T, NT>(sdO, L.dout, head_rows<const T>(p.dout, b, h, p.Tq, p.D), m0);
        for (int i = threadIdx.x; i < BMQ; i += NT) {
          sLse[i] = m0 + i < p.Tq ? p.lse[stat0 + m0 + i] : 0.f;
          sDelta[i] = m0 + i < p.Tq ? p.delta[stat0 + m0 + i] : 0.f;
        }
        __syncthreads();
        // dSᵀ is an exact 0 where a query does not see a key; a NaN/Inf query there needs the exact dSᵀ Q.
        const bool exact_dsq = p.causal && m0 + shift < n0 + BNK - 1 && tile_has_nonfinite<T, NT>(sQ, L.q);
        const uint32_t kept = dropping ? kept_bits<BMQ / 8>(p, b, h, n0 + warp * 16, m0, true) : 0u;
        // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for this warp's 16 keys x BMQ queries.
        float st[BMQ / 8][4], dpt[BMQ / 8][4];
        warp_scores2(st, dpt, sKw, sQ, sVw, sdO, ld, dp);
#pragma unroll
        for (int n = 0; n < BMQ / 8; ++n) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int qi = n * 8 + acc_col(i), kj = acc_row(i);
            const bool vis = visible(p, m0 + qi, n0 + warp * 16 + kj);
            const float pr = vis ? expf(st[n][i] * p.scale - sLse[qi]) : 0.f;
            const float z = dropping ? dropout_scale(p, kept, n, i) : 1.f;
            sPw[kj * ldq + qi] = from_float<T>(pr * z);
            sdSw[kj * ldq + qi] = from_float<T>(vis ? pr * (z * dpt[n][i] - sDelta[qi]) : 0.f);  // 0 · NaN
          }
        }
        __syncwarp();
        // dV += Pᵀ dO, dK += dSᵀ Q over this column chunk.
#pragma unroll
        for (int kk = 0; kk < BMQ; kk += 16) {
#pragma unroll
          for (int n = 0; n < DCH / 8; ++n) {
            if (d0 + n * 8 < dp) {
              warp_mma(dv[n], sPw + kk, ldq, 1, sdO + kk * ld + d0 + n * 8, ld, 1);
              if (!exact_dsq) warp_mma(dk[n], sdSw + kk, ldq, 1, sQ + kk * ld + d0 + n * 8, ld, 1);
            }
          }
        }
        if (exact_dsq)
          warp_seen_product(dk, sdSw, ldq, sQ, ld, BMQ, d0, dp,
                            [&](int kj, int qi) { return visible(p, m0 + qi, n0 + warp * 16 + kj); });
        __syncwarp();
      }
    }

    const auto dk_out = head_rows<T>(p.dk, b, hk, p.Tk, p.D), dv_out = head_rows<T>(p.dv, b, hk, p.Tk, p.D);
#pragma unroll
    for (int n = 0; n < DCH / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + warp * 16 + acc_row(i), col = d0 + n * 8 + acc_col(i);
        if (row < p.Tk && col < p.D) {
          dk_out(row, col) = from_float<T>(dk[n][i] * p.scale);
          dv_out(row, col) = from_float<T>(dv[n][i]);
        }
      }
    }
  }
}

}  // namespace babygpt::cuda
