// The vector loops of one decoding step (decode.cpp): matrix-vector products against nn.Linear
// weights as they are stored, one query's attention over a KV cache, and LayerNorm rows.
//
// Included once per instruction set by decode.cpp, inside a namespace and under a `#pragma GCC
// target`, as attention_simd.h is by attention.cpp: GCC vector extensions of W floats (simd_vec.h),
// no includes but simd_vec.h and simd_exp.h, memory through memcpy.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4; decode.cpp compiles 8 and 4).

#include "simd_vec.h"  // W, vf, vi, ld, st, splat, BG_INLINE
#include "simd_exp.h"  // vexp()

BG_INLINE float hsum(vf v) {
  float s = 0.0f;
  for (int i = 0; i < W; ++i) s += v[i];
  return s;
}

// The matrix-vector products keep W accumulators, one per weight row, each summing W lanes; the
// W sums come out as one vector through a tree of shuffles (a transpose-and-add), log2(W) levels.
// Summing each accumulator's lanes on its own measured 10x slower on Zen 3 for gpt-mini's K = 192
// (7 vs 69 GB/s with the weights in L2): the lane-by-lane adds, not the FMAs, were the loop.
// pair_sum(a, b): lanes 2i and 2i+1 of a, then of b, added, per 128-bit half (as vhaddps).
#if BABYGPT_VEC_FLOATS == 8
BG_INLINE vf pair_sum(vf a, vf b) {
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}
// {Σ a[0], Σ a[1], ..., Σ a[7]} as one vector.
BG_INLINE vf sums_of(const vf (&a)[W]) {
  const vf c0 = pair_sum(pair_sum(a[0], a[1]), pair_sum(a[2], a[3]));  // rows 0-3, low and high halves
  const vf c1 = pair_sum(pair_sum(a[4], a[5]), pair_sum(a[6], a[7]));  // rows 4-7
  return __builtin_shufflevector(c0, c1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(c0, c1, 4, 5, 6, 7, 12, 13, 14, 15);
}
#elif BABYGPT_VEC_FLOATS == 4
BG_INLINE vf pair_sum(vf a, vf b) {
  return __builtin_shufflevector(a, b, 0, 2, 4, 6) + __builtin_shufflevector(a, b, 1, 3, 5, 7);
}
BG_INLINE vf sums_of(const vf (&a)[W]) { return pair_sum(pair_sum(a[0], a[1]), pair_sum(a[2], a[3])); }
#else
#error "decode_simd.h: the products are written for 8 or 4 floats per vector"
#endif

// y[n0 + j] (= or +=) b[n0 + j] + Σ_k x[k] w[(n0 + j) K + k] for j < W: W weight rows against one
// row of x. accumulate is the residual add, in the model's order x + (h wᵀ + b).
BG_INLINE void linear_block(const float* x, const float* w, long K, const float* b, float* y, long n0,
                            bool accumulate) {
  vf acc[W] = {};
  const float* wn = w + n0 * K;
  long k = 0;
  for (; k + W <= K; k += W) {
    const vf xv = ld(x + k);
#pragma GCC unroll 8
    for (int j = 0; j < W; ++j) acc[j] += xv * ld(wn + j * K + k);
  }
  vf s = sums_of(acc);
  for (long kk = k; kk < K; ++kk) {  // K beyond the last full vector
    for (int j = 0; j < W; ++j) s[j] += x[kk] * wn[j * K + kk];
  }
  if (b) s += ld(b + n0);
  st(y + n0, accumulate ? ld(y + n0) + s : s);
}

// Columns [n0, n1) of y (rows x ldy) from x (rows x K) and w (N x K, nn.Linear's layout). A block
// of W weight rows (W K floats: 6 KB at K = 192, 24 KB at 768) is read from memory once and from L1
// by every further row of x.
static void linear_cols(const float* x, long rows, long K, const float* w, const float* b, float* y, long ldy,
                        long n0, long n1, bool accumulate) {
  long n = n0;
  for (; n + W <= n1; n += W) {
    for (long r = 0; r < rows; ++r) linear_block(x + r * K, w, K, b, y + r * ldy, n, accumulate);
  }
  for (; n < n1; ++n) {  // the last N % W columns, one dot product each
    for (long r = 0; r < rows; ++r) {
      const float* xr = x + r * K;
      const float* wn = w + n * K;
      vf acc = {};
      long k = 0;
      for (; k + W <= K; k += W) acc += ld(xr + k) * ld(wn + k);
      float s = hsum(acc);
      for (; k < K; ++k) s += xr[k] * wn[k];
      s += b ? b[n] : 0.0f;
      float& out = y[r * ldy + n];
      out = accumulate ? out + s : s;
    }
  }
}

// y = LayerNorm(x) over C features: (x - mean) / sqrt(var + eps) · g + b, the biased variance as in
// torch. g may be null (no affine gain); b may be null.
static void layer_norm_row(const float* x, const float* g, const float* b, float eps, long C, float* y) {
  vf acc = {};
  long i = 0;
  for (; i + W <= C; i += W) acc += ld(x + i);
  float sum = hsum(acc);
  for (; i < C; ++i) sum += x[i];
  const float mean = sum / C;
  vf acc2 = {};
  for (i = 0; i + W <= C; i += W) {
    const vf d = ld(x + i) - mean;
    acc2 += d * d;
  }
  float var = hsum(acc2);
  for (; i < C; ++i) var += (x[i] - mean) * (x[i] - mean);
  const float rstd = 1.0f / __builtin_sqrtf(var / C + eps);
  for (i = 0; i < C; ++i) {
    const float v = (x[i] - mean) * rstd;
    y[i] = (g ? v * g[i] : v) + (b ? b[i] : 0.0f);
  }
}

// One query row against the first L cached keys and values of its kv head (rows D apart):
// out = softmax(scale q kᵀ) v. A decoding query is the newest position, so it sees every cached
// key: nothing is masked. p: L floats of scratch. Non-finite values propagate as in the eager
// composition (a NaN score makes the row NaN; all scores -inf give NaN).
static void attend_one(const float* q, const float* k, const float* v, long L, long D, float scale, float* p,
                       float* out) {
  const long Dv = D - D % W;  // the head dim's full vectors; the rest is summed lane by lane
  long t = 0;
  for (; t + W <= L; t += W) {  // W keys at a time: their W scores come out as one vector
    const float* kt = k + t * D;
    vf acc[W] = {};
    for (long d = 0; d < Dv; d += W) {
      const vf qv = ld(q + d);
#pragma GCC unroll 8
      for (int j = 0; j < W; ++j) acc[j] += qv * ld(kt + j * D + d);
    }
    vf sc = sums_of(acc);
    for (long d = Dv; d < D; ++d) {
      for (int j = 0; j < W; ++j) sc[j] += q[d] * kt[j * D + d];
    }
    st(p + t, sc * scale);
  }
  for (; t < L; ++t) {
    const float* kt = k + t * D;
    vf acc = {};
    for (long d = 0; d < Dv; d += W) acc += ld(q + d) * ld(kt + d);
    float sc = hsum(acc);
    for (long d = Dv; d < D; ++d) sc += q[d] * kt[d];
    p[t] = sc * scale;
  }
  float m = -__builtin_inff();
  for (t = 0; t < L; ++t) m = p[t] > m ? p[t] : m;  // NaN scores are skipped here and poison the sum
  vf vsum = {};
  for (t = 0; t + W <= L; t += W) {
    const vf e = vexp(ld(p + t) - m);
    st(p + t, e);
    vsum += e;
  }
  float sum = hsum(vsum);
  if (t < L) {  // the tail through a padded vector, so every p is the same vexp
    float pad[W];
    for (int i = 0; i < W; ++i) pad[i] = t + i < L ? p[t + i] - m : -__builtin_inff();
    const vf e = vexp(ld(pad));
    for (int i = 0; t + i < L; ++i) {
      p[t + i] = e[i];
      sum += e[i];
    }
  }
  const float inv = 1.0f / sum;
  for (long d0 = 0; d0 < Dv; d0 += 4 * W) {  // up to four vectors of the output in registers over all keys
    const long nv = (Dv - d0) / W < 4 ? (Dv - d0) / W : 4;
    vf acc[4] = {};
    for (t = 0; t < L; ++t) {
      const vf pt = splat(p[t]);
      const float* vt = v + t * D + d0;
      for (int i = 0; i < 4; ++i) {
        if (i < nv) acc[i] += pt * ld(vt + i * W);
      }
    }
    for (int i = 0; i < nv; ++i) st(out + d0 + i * W, acc[i] * inv);
  }
  for (long d = Dv; d < D; ++d) {
    float o = 0.0f;
    for (t = 0; t < L; ++t) o += p[t] * v[t * D + d];
    out[d] = o * inv;
  }
}

#undef BG_INLINE
