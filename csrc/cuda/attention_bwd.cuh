// Fused causal attention, backward (FlashAttention-2): P is recomputed from lse, never stored.
//
//   delta_i = rowsum(dO ∘ O)_i                                        attn_delta_kernel
//   dS_ij   = P_ij (dO_i · v_j - delta_i),  P_ij = exp(scale q_i·k_j - lse_i)
//   dV_j = Σ_i P_ij dO_i,  dK_j = scale Σ_i dS_ij q_i                  attn_dkdv_kernel: a CTA per key
//        block, looping over the query blocks *and over the query heads of the GQA group*, so each
//        dK/dV element has one writer: no atomics.
//   dQ_i = scale Σ_j dS_ij k_j                                         attn_dq_kernel: a separate CTA per
//        query block (it recomputes S and dP once more, instead of fp32 atomics on dQ: deterministic).
#pragma once

#include <type_traits>

#include "attention_common.cuh"

namespace babygpt::cuda {

template <class T>
__global__ void __launch_bounds__(128) attn_delta_kernel(AttnParams p) {
  const int64_t rows = (int64_t)p.B * p.H * p.Tq;
  const int64_t row = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  const T* o = static_cast<const T*>(p.o) + row * p.D;
  const T* d = static_cast<const T*>(p.dout) + row * p.D;
  float s = 0.f;
  for (int c = 0; c < p.D; ++c) s += to_float(o[c]) * to_float(d[c]);
  p.delta[row] = s;
}

// dQ for BM query rows of one (batch, head); the structure of the forward, with dP = dO Vᵀ next to S.
template <class T, int DMAX>
__global__ void __launch_bounds__(128) attn_dq_kernel(AttnParams p) {
  using Cfg = AttnTiles<T, DMAX>;
  constexpr int BM = Cfg::BM, BN = Cfg::BN, NT = Cfg::kThreads, NO = DMAX / 8;
  CUDAEMU_DYNAMIC_SHARED(T, smem);
  const int dp = round_up(p.D, 16), ld = Cfg::ld(p.D), ldp = Cfg::ldp();
  T* sQ = smem;
  T* sdO = sQ + BM * ld;
  T* sK = sdO + BM * ld;
  T* sV = sK + BN * ld;
  T* sS = sV + BN * ld;
  const int m0 = blockIdx.x * BM, h = blockIdx.y, b = blockIdx.z, hk = h / (p.H / p.Hkv);
  const int warp = threadIdx.x / 32, shift = p.Tk - p.Tq;
  const T* k = head_ptr<T>(p.k, b, hk, p.Hkv, p.Tk, p.D);
  const T* v = head_ptr<T>(p.v, b, hk, p.Hkv, p.Tk, p.D);
  load_rows<T, NT>(sQ, ld, head_ptr<T>(p.q, b, h, p.H, p.Tq, p.D), p.D, m0, BM, p.Tq, dp, p.D);
  load_rows<T, NT>(sdO, ld, head_ptr<T>(p.dout, b, h, p.H, p.Tq, p.D), p.D, m0, BM, p.Tq, dp, p.D);
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

  const int last_row = min(m0 + BM, p.Tq) - 1;
  const int n_end = p.causal ? min(p.Tk, last_row + shift + 1) : p.Tk;
  for (int n0 = 0; n0 < n_end; n0 += BN) {
    __syncthreads();
    load_rows<T, NT>(sK, ld, k, p.D, n0, BN, p.Tk, dp, p.D);
    load_rows<T, NT>(sV, ld, v, p.D, n0, BN, p.Tk, dp, p.D);
    __syncthreads();
    float s[BN / 8][4], dpv[BN / 8][4];
#pragma unroll
    for (int n = 0; n < BN / 8; ++n)
#pragma unroll
      for (int i = 0; i < 4; ++i) s[n][i] = dpv[n][i] = 0.f;
    for (int kk = 0; kk < dp; kk += 16) {
#pragma unroll
      for (int n = 0; n < BN / 8; ++n) {
        warp_mma(s[n], sQw + kk, ld, 1, sK + n * 8 * ld + kk, 1, ld);
        warp_mma(dpv[n], sdOw + kk, ld, 1, sV + n * 8 * ld + kk, 1, ld);
      }
    }
#pragma unroll
    for (int n = 0; n < BN / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const bool vis = visible(p, m0 + warp * 16 + acc_row(i), n0 + n * 8 + acc_col(i));
        const float pr = vis ? expf(s[n][i] * p.scale - lse[i >> 1]) : 0.f;
        sSw[acc_row(i) * ldp + n * 8 + acc_col(i)] = from_float<T>(pr * (dpv[n][i] - delta[i >> 1]));
      }
    }
    __syncwarp();
#pragma unroll
    for (int kk = 0; kk < BN; kk += 16) {
#pragma unroll
      for (int n = 0; n < NO; ++n)
        if (n * 8 < dp) warp_mma(dq[n], sSw + kk, ldp, 1, sK + kk * ld + n * 8, ld, 1);
    }
    __syncwarp();
  }

  T* out = static_cast<T*>(p.dq) + ((int64_t)b * p.H + h) * p.Tq * p.D;
#pragma unroll
  for (int n = 0; n < NO; ++n) {
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int row = m0 + warp * 16 + acc_row(i), col = n * 8 + acc_col(i);
      if (row < p.Tq && col < p.D) out[(int64_t)row * p.D + col] = from_float<T>(dq[n][i] * p.scale);
    }
  }
}

// Tiles of the dK/dV kernel: BNK keys per CTA (16 per warp) against BMQ-query tiles. dK and dV
// accumulate in registers, DCH columns at a time (two passes over the queries when D > 128, so
// the two accumulators stay at <= 128 registers per thread instead of spilling).
template <class T, int DMAX>
struct DkDvTiles {
  static constexpr int BNK = (sizeof(T) == 4 && DMAX > 128) ? 32 : 64, kWarps = BNK / 16, kThreads = 32 * kWarps;
  static constexpr int BMQ = 32, DCH = DMAX < 128 ? DMAX : 128;
  static constexpr int kPad = 16 / int(sizeof(T));
  __host__ __device__ static int ld(int D) { return round_up(D, 16) + kPad; }
  __host__ __device__ static int ldq() { return BMQ + kPad; }
  // floats: lse + delta of the query tile; then T: sK, sV, sQ, sdO, sPᵀ, sdSᵀ
  __host__ __device__ static size_t smem_bytes(int D) {
    return 2 * BMQ * sizeof(float) + sizeof(T) * ((2 * BNK + 2 * BMQ) * ld(D) + 2 * BNK * ldq());
  }
};

template <class T, int DMAX>
__global__ void __launch_bounds__(DkDvTiles<T, DMAX>::kThreads) attn_dkdv_kernel(AttnParams p) {
  using Cfg = DkDvTiles<T, DMAX>;
  constexpr int BNK = Cfg::BNK, BMQ = Cfg::BMQ, NT = Cfg::kThreads, DCH = Cfg::DCH;
  CUDAEMU_DYNAMIC_SHARED(float, sLse);
  float* sDelta = sLse + BMQ;
  const int dp = round_up(p.D, 16), ld = Cfg::ld(p.D), ldq = Cfg::ldq();
  T* sK = reinterpret_cast<T*>(sDelta + BMQ);
  T* sV = sK + BNK * ld;
  T* sQ = sV + BNK * ld;
  T* sdO = sQ + BMQ * ld;
  T* sP = sdO + BMQ * ld;
  T* sdS = sP + BNK * ldq;
  const int n0 = blockIdx.x * BNK, hk = blockIdx.y, b = blockIdx.z, group = p.H / p.Hkv;
  const int warp = threadIdx.x / 32, shift = p.Tk - p.Tq;
  load_rows<T, NT>(sK, ld, head_ptr<T>(p.k, b, hk, p.Hkv, p.Tk, p.D), p.D, n0, BNK, p.Tk, dp, p.D);
  load_rows<T, NT>(sV, ld, head_ptr<T>(p.v, b, hk, p.Hkv, p.Tk, p.D), p.D, n0, BNK, p.Tk, dp, p.D);
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
        load_rows<T, NT>(sQ, ld, head_ptr<T>(p.q, b, h, p.H, p.Tq, p.D), p.D, m0, BMQ, p.Tq, dp, p.D);
        load_rows<T, NT>(sdO, ld, head_ptr<T>(p.dout, b, h, p.H, p.Tq, p.D), p.D, m0, BMQ, p.Tq, dp, p.D);
        for (int i = threadIdx.x; i < BMQ; i += NT) {
          sLse[i] = m0 + i < p.Tq ? p.lse[stat0 + m0 + i] : 0.f;
          sDelta[i] = m0 + i < p.Tq ? p.delta[stat0 + m0 + i] : 0.f;
        }
        __syncthreads();
        // Sᵀ = K Qᵀ and dPᵀ = V dOᵀ for this warp's 16 keys x BMQ queries.
        float st[BMQ / 8][4], dpt[BMQ / 8][4];
#pragma unroll
        for (int n = 0; n < BMQ / 8; ++n)
#pragma unroll
          for (int i = 0; i < 4; ++i) st[n][i] = dpt[n][i] = 0.f;
        for (int kk = 0; kk < dp; kk += 16) {
#pragma unroll
          for (int n = 0; n < BMQ / 8; ++n) {
            warp_mma(st[n], sKw + kk, ld, 1, sQ + n * 8 * ld + kk, 1, ld);
            warp_mma(dpt[n], sVw + kk, ld, 1, sdO + n * 8 * ld + kk, 1, ld);
          }
        }
#pragma unroll
        for (int n = 0; n < BMQ / 8; ++n) {
#pragma unroll
          for (int i = 0; i < 4; ++i) {
            const int qi = n * 8 + acc_col(i), kj = acc_row(i);
            const bool vis = visible(p, m0 + qi, n0 + warp * 16 + kj);
            const float pr = vis ? expf(st[n][i] * p.scale - sLse[qi]) : 0.f;
            sPw[kj * ldq + qi] = from_float<T>(pr);
            sdSw[kj * ldq + qi] = from_float<T>(pr * (dpt[n][i] - sDelta[qi]));
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
              warp_mma(dk[n], sdSw + kk, ldq, 1, sQ + kk * ld + d0 + n * 8, ld, 1);
            }
          }
        }
        __syncwarp();
      }
    }

    const int64_t kv0 = ((int64_t)b * p.Hkv + hk) * p.Tk;
    T* dkp = static_cast<T*>(p.dk) + kv0 * p.D;
    T* dvp = static_cast<T*>(p.dv) + kv0 * p.D;
#pragma unroll
    for (int n = 0; n < DCH / 8; ++n) {
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int row = n0 + warp * 16 + acc_row(i), col = d0 + n * 8 + acc_col(i);
        if (row < p.Tk && col < p.D) {
          dkp[(int64_t)row * p.D + col] = from_float<T>(dk[n][i] * p.scale);
          dvp[(int64_t)row * p.D + col] = from_float<T>(dv[n][i]);
        }
      }
    }
  }
}

}  // namespace babygpt::cuda
