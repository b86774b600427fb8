// FlashAttention-style float32 micro-kernels for the CPU (forward block task, backward group task).
//
// This header is deliberately included several times by attention.cpp, each time inside a
// different namespace and under a different `#pragma GCC target` (AVX-512, AVX2+FMA, baseline
// x86-64), so the same source is compiled once per instruction set and the fastest copy the CPU
// supports is picked at run time. That keeps the wheel portable (no -march=native) while using the
// wide registers where they exist. Consequently it includes nothing (std headers must not be
// compiled under the pragma) and uses only GCC builtins.
//
// The vectors are GCC vector extensions of W floats, W the register width of the instruction set
// (16: zmm, 8: ymm, 4: xmm). A vector wider than the target's registers has no machine mode, and
// GCC then keeps every such value in memory (each add a load, an add and a store): an AVX2 build
// of 16-float vectors ran 10x slower than one of 8-float vectors. Memory is accessed through
// memcpy so no buffer needs vector alignment.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4) and BABYGPT_QK_ROWS (query
// rows per S micro-kernel: the register budget — 4 rows x 4 zmm accumulators fit the 32 zmm
// registers; with 16 ymm or xmm registers one row's BK / W accumulators already take half).

constexpr int W = BABYGPT_VEC_FLOATS;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));

constexpr long BK = 64;  // keys per block: one S row is BK / W vectors, kept in registers
constexpr int NB = BK / W;
constexpr long BQ = 64;  // query rows per forward task: amortises packing K/V over 64 rows
constexpr int QKR = BABYGPT_QK_ROWS;

#define BG_INLINE static inline __attribute__((always_inline))

BG_INLINE vf ld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
BG_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
BG_INLINE vf splat(float x) { return vf{} + x; }
BG_INLINE long lmin(long a, long b) { return a < b ? a : b; }
BG_INLINE long lmax(long a, long b) { return a > b ? a : b; }
// Max that ignores NaN in `a` (the comparison is false), like the reference's running max: NaN
// scores never win the max, they reach the output through the exp-sum instead.
BG_INLINE vf vmax(vf a, vf b) { return a > b ? a : b; }
BG_INLINE float fmax_nan_ignoring(float a, float b) { return a > b ? a : b; }
#if BABYGPT_VEC_FLOATS == 16
BG_INLINE vf lanes() { return vf{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15}; }
#elif BABYGPT_VEC_FLOATS == 8
BG_INLINE vf lanes() { return vf{0, 1, 2, 3, 4, 5, 6, 7}; }
#else
BG_INLINE vf lanes() { return vf{0, 1, 2, 3}; }
#endif

// Horizontal reductions as a log2(W)-step shuffle tree (a W-step scalar chain costs ~W/log2(W)
// times the latency). Step w swaps neighbouring groups of w lanes. The max stays NaN-ignoring:
// its inputs are already NaN-free partial maxima.
BG_INLINE vf swap_groups(vf v, int w) {
#if BABYGPT_VEC_FLOATS == 16
  switch (w) {
    case 8: return __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    case 4: return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3, 12, 13, 14, 15, 8, 9, 10, 11);
    case 2: return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5, 10, 11, 8, 9, 14, 15, 12, 13);
    default: return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6, 9, 8, 11, 10, 13, 12, 15, 14);
  }
#elif BABYGPT_VEC_FLOATS == 8
  switch (w) {
    case 4: return __builtin_shufflevector(v, v, 4, 5, 6, 7, 0, 1, 2, 3);
    case 2: return __builtin_shufflevector(v, v, 2, 3, 0, 1, 6, 7, 4, 5);
    default: return __builtin_shufflevector(v, v, 1, 0, 3, 2, 5, 4, 7, 6);
  }
#else
  return w == 2 ? __builtin_shufflevector(v, v, 2, 3, 0, 1) : __builtin_shufflevector(v, v, 1, 0, 3, 2);
#endif
}
BG_INLINE float hsum(vf v) {
  for (int w = W / 2; w >= 1; w /= 2) v += swap_groups(v, w);
  return v[0];
}
BG_INLINE float hmax(vf v) {
  for (int w = W / 2; w >= 1; w /= 2) v = vmax(v, swap_groups(v, w));
  return v[0];
}

// e^x without a libm call, branch-free so it vectorises: x = n ln2 + r with |r| <= ln2/2, e^r by
// its degree-6 Taylor polynomial (truncation error r^7/7! < 1.3e-7 relative), 2^n built in the
// exponent bits. Inputs below -87.3 (incl. -inf: masked scores) give exactly 0; NaN stays NaN.
BG_INLINE vf vexp(vf x) {
  const vf lo = splat(-87.3365447f), hi = splat(88.0f);
  vf xc = x < lo ? lo : x;
  xc = xc > hi ? hi : xc;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  const vf t = xc * 1.44269504f + magic;
  const vf n = t - magic;
  vf r = xc - n * 0.693359375f;  // ln2 split in two so n*ln2_hi is exact
  r = r - n * -2.12194440e-4f;
  vf p = splat(1.0f / 720);
  p = p * r + 1.0f / 120;
  p = p * r + 1.0f / 24;
  p = p * r + 1.0f / 6;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const vi bits = (__builtin_convertvector(n, vi) + 127) << 23;
  const vf y = p * (vf)bits;
  return x < lo ? vf{} : y;
}

// S[r, 0:BK] = scale * Σ_d rows[r, d] * Kt[d, 0:BK] for R rows (row stride D): broadcast-FMA over
// keys with the accumulators in registers; each Kt vector load is reused by R rows.
template <int R>
BG_INLINE void qk_rows(const float* rows, long D, const float* Kt, float scale, float* S) {
  vf acc[R][NB];
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NB; ++c) acc[r][c] = vf{};
  for (long d = 0; d < D; ++d) {
    const float* kt = Kt + d * BK;
    for (int c = 0; c < NB; ++c) {
      const vf kc = ld(kt + W * c);
      for (int r = 0; r < R; ++r) acc[r][c] += kc * rows[r * D + d];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NB; ++c) st(S + r * BK + W * c, acc[r][c] * scale);
}

// O[r, 0:NV*W] += Σ_{c<n} P[r, c] * X[c, 0:NV*W] for R rows (P row stride BK, X and O row
// stride Dp): the R x NV accumulators stay in registers over the keys and each X vector load is
// shared by the R rows.
template <int R, int NV>
BG_INLINE void axpy_rows_nv(const float* P, long n, const float* X, long Dp, float* O) {
  vf acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = ld(O + r * Dp + W * v);
  for (long c = 0; c < n; ++c) {
    vf x[NV];
    for (int v = 0; v < NV; ++v) x[v] = ld(X + c * Dp + W * v);
    for (int r = 0; r < R; ++r) {
      const float b = P[r * BK + c];
      for (int v = 0; v < NV; ++v) acc[r][v] += x[v] * b;
    }
  }
  for (int r = 0; r < R; ++r)
    for (int v = 0; v < NV; ++v) st(O + r * Dp + W * v, acc[r][v]);
}
// The same over all of Dp (a multiple of 16) in chunks of 64 floats, the last one 16, 32 or 48.
template <int R>
BG_INLINE void axpy_rows(const float* P, long n, const float* X, long Dp, float* O) {
  for (long d0 = 0; d0 < Dp; d0 += 64) {
    switch ((Dp - d0) >= 64 ? 4 : (Dp - d0) / 16) {
      case 4: axpy_rows_nv<R, 64 / W>(P, n, X + d0, Dp, O + d0); break;
      case 3: axpy_rows_nv<R, 48 / W>(P, n, X + d0, Dp, O + d0); break;
      case 2: axpy_rows_nv<R, 32 / W>(P, n, X + d0, Dp, O + d0); break;
      default: axpy_rows_nv<R, 16 / W>(P, n, X + d0, Dp, O + d0); break;
    }
  }
}

// dst[c, 0:Dp] = src[c, 0:D] for c < n, zero padding d >= D (and rows n..BK-1 when pad_rows).
static void pack_rows(const float* src, long n, long D, long Dp, float* dst) {
  for (long c = 0; c < n; ++c) {
    __builtin_memcpy(dst + c * Dp, src + c * D, D * sizeof(float));
    for (long d = D; d < Dp; ++d) dst[c * Dp + d] = 0;
  }
}
// dst[d, c] = src[c, d] (D x BK), zero for the padding columns c >= n.
static void pack_transposed(const float* src, long n, long D, float* dst) {
  for (long d = 0; d < D; ++d)
    for (long c = n; c < BK; ++c) dst[d * BK + c] = 0;
  for (long c = 0; c < n; ++c)
    for (long d = 0; d < D; ++d) dst[d * BK + c] = src[c * D + d];
}

static long fwd_workspace(long D) {
  const long Dp = (D + 15) / 16 * 16;
  return D * BK + BK * Dp + BQ * BK + BQ * Dp + 2 * BQ;
}

// Query rows [i0, i0+nr) of one (batch, head): q, o, lse point at the head's row 0, k, v at its kv
// head's row 0. Online softmax over key blocks; blocks entirely in the causal future are never
// visited and only the blocks crossing the diagonal (or the ragged last block) are masked.
static void fwd_block(const float* q, const float* k, const float* v, float* o, float* lse, long i0, long nr,
                      long Tq, long Tk, long D, float scale, bool causal, float* ws) {
  const long Dp = (D + 15) / 16 * 16, off = Tk - Tq;
  float* Kt = ws;
  float* Vp = Kt + D * BK;
  float* S = Vp + BK * Dp;
  float* O = S + BQ * BK;
  float* m = O + BQ * Dp;
  float* l = m + BQ;
  long cnt[BQ];
  for (long r = 0; r < nr; ++r) m[r] = -__builtin_inff(), l[r] = 0;
  __builtin_memset(O, 0, nr * Dp * sizeof(float));
  const long kend = causal ? lmin(Tk, i0 + nr - 1 + off + 1) : Tk;
  const float* qb = q + i0 * D;
  for (long j0 = 0; j0 < kend; j0 += BK) {
    const long nb = lmin(BK, kend - j0);
    pack_transposed(k + j0 * D, nb, D, Kt);
    pack_rows(v + j0 * D, nb, D, Dp, Vp);
    long r = 0;
    for (; r + QKR <= nr; r += QKR) qk_rows<QKR>(qb + r * D, D, Kt, scale, S + r * BK);
    for (; r < nr; ++r) qk_rows<1>(qb + r * D, D, Kt, scale, S + r * BK);
    bool full = true;  // every row sees all nb keys of this block (it is below the diagonal)
    for (r = 0; r < nr; ++r) {
      // Keys of this block that row i sees (bottom-right causal); <= 0 when the block is wholly
      // in this row's future (possible when Tq < Tk shifts the diagonal off the block grid).
      const long n = causal ? lmin(nb, i0 + r + off - j0 + 1) : nb;
      cnt[r] = n;
      full = full && n == nb;
      if (n <= 0) continue;
      float* s = S + r * BK;
      for (long c = n; c < BK; ++c) s[c] = -__builtin_inff();
      vf mx = splat(-__builtin_inff());
      for (int c = 0; c < NB; ++c) mx = vmax(ld(s + W * c), mx);
      const float m_new = fmax_nan_ignoring(hmax(mx), m[r]);
      // A row whose scores are all NaN keeps m = -inf; subtracting 0 then keeps the NaN flowing.
      const float msub = m_new == -__builtin_inff() ? 0.0f : m_new;
      const float alpha = vexp(splat(m[r] - msub))[0];
      vf sum{};
      for (int c = 0; c < NB; ++c) {
        const vf p = vexp(ld(s + W * c) - msub);
        st(s + W * c, p);
        sum += p;
      }
      float* orow = O + r * Dp;
      if (alpha != 1.0f)
        for (long d = 0; d < Dp; d += W) st(orow + d, ld(orow + d) * alpha);
      l[r] = l[r] * alpha + hsum(sum);
      m[r] = m_new;
    }
    // O += P V. Blocks crossing the diagonal go row by row over exactly the keys each row sees, so
    // a NaN/inf in a future value row cannot leak in through 0 * NaN.
    r = 0;
    if (full)
      for (; r + QKR <= nr; r += QKR) axpy_rows<QKR>(S + r * BK, nb, Vp, Dp, O + r * Dp);
    for (; r < nr; ++r)
      if (cnt[r] > 0) axpy_rows<1>(S + r * BK, cnt[r], Vp, Dp, O + r * Dp);
  }
  for (long r = 0; r < nr; ++r) {
    const float inv = 1.0f / l[r];
    float* orow = o + (i0 + r) * D;
    for (long d = 0; d < D; ++d) orow[d] = O[r * Dp + d] * inv;
    lse[i0 + r] = (m[r] == -__builtin_inff() ? 0.0f : m[r]) + __builtin_logf(l[r]);
  }
}

static long bwd_workspace(long D, long G, long Tq) {
  const long Dp = (D + 15) / 16 * 16;
  return 2 * D * BK + 3 * BK * Dp + 4 * QKR * BK + 2 * QKR * Dp + G * Tq * Dp;
}

// One group of R consecutive query rows against one key block: recompute P from lse, then
// dS = P ∘ (dO Vᵀ − delta); dQ rows += dS K; dV += Pᵀ dO and dK += dSᵀ Q as a rank-R update so
// each dK/dV row is loaded and stored once per R rows (the rows' q/do vectors stay in registers).
template <int R>
BG_INLINE void bwd_rows(const float* q, const float* dout, const float* lse, const float* delta, float* dQ,
                        long i, long j0, long nb, long off, bool causal, long D, long Dp, float scale,
                        const float* Kt, const float* Vt, const float* Kp, float* dK, float* dV, float* P,
                        float* dS, float* Xq, float* Xdo) {
  qk_rows<R>(q + i * D, D, Kt, scale, P);
  qk_rows<R>(dout + i * D, D, Vt, 1.0f, dS);
  long nmax = 0;
  for (int r = 0; r < R; ++r) {
    const long n = causal ? lmin(nb, i + r + off - j0 + 1) : nb;  // >= 1: rows start at first_query
    nmax = lmax(nmax, n);
    const vf lim = splat((float)n), L = splat(lse[i + r]), dl = splat(delta[i + r]);
    for (int c = 0; c < NB; ++c) {
      const vf seen = lanes() + (float)(W * c);
      const vf p = vexp(ld(P + r * BK + W * c) - L);
      const vf ds = p * (ld(dS + r * BK + W * c) - dl);
      // Select, not multiply by a 0/1 mask: a masked key's score may be NaN or inf.
      st(P + r * BK + W * c, seen < lim ? p : vf{});
      st(dS + r * BK + W * c, seen < lim ? ds : vf{});
    }
  }
  axpy_rows<R>(dS, nmax, Kp, Dp, dQ + i * Dp);
  pack_rows(q + i * D, R, D, Dp, Xq);
  pack_rows(dout + i * D, R, D, Dp, Xdo);
  for (long d = 0; d < Dp; d += W) {
    vf xq[R], xdo[R];
    for (int r = 0; r < R; ++r) xq[r] = ld(Xq + r * Dp + d), xdo[r] = ld(Xdo + r * Dp + d);
    for (long c = 0; c < nmax; ++c) {
      vf ak = ld(dK + c * Dp + d), av = ld(dV + c * Dp + d);
      for (int r = 0; r < R; ++r) ak += xq[r] * dS[r * BK + c], av += xdo[r] * P[r * BK + c];
      st(dK + c * Dp + d, ak);
      st(dV + c * Dp + d, av);
    }
  }
}

// All of the backward for one (batch, kv head): its G query heads' dq and its dk, dv. One task owns
// every output it writes, so there are no atomics and no reduction buffers beyond dQ's padded copy.
// q, dout, dq, lse, delta point at the group's first query head (the group's heads are adjacent).
static void bwd_group(const float* q, const float* dout, const float* lse, const float* delta, float* dq,
                      const float* k, const float* v, float* dk, float* dv, long G, long Tq, long Tk, long D,
                      float scale, bool causal, float* ws) {
  const long Dp = (D + 15) / 16 * 16, off = Tk - Tq;
  float* Kt = ws;
  float* Vt = Kt + D * BK;
  float* Kp = Vt + D * BK;
  float* dK = Kp + BK * Dp;
  float* dV = dK + BK * Dp;
  float* P = dV + BK * Dp;
  float* dS = P + 2 * QKR * BK;
  float* Xq = dS + 2 * QKR * BK;
  float* Xdo = Xq + QKR * Dp;
  float* dQ = Xdo + QKR * Dp;
  __builtin_memset(dQ, 0, G * Tq * Dp * sizeof(float));
  for (long j0 = 0; j0 < Tk; j0 += BK) {
    const long nb = lmin(BK, Tk - j0);
    pack_transposed(k + j0 * D, nb, D, Kt);
    pack_transposed(v + j0 * D, nb, D, Vt);
    pack_rows(k + j0 * D, nb, D, Dp, Kp);
    __builtin_memset(dK, 0, 2 * BK * Dp * sizeof(float));  // dK and dV are adjacent
    const long first = causal ? lmax(0, j0 - off) : 0;
    for (long g = 0; g < G; ++g) {
      const float* qg = q + g * Tq * D;
      const float* dog = dout + g * Tq * D;
      long i = first;
      for (; i + QKR <= Tq; i += QKR)
        bwd_rows<QKR>(qg, dog, lse + g * Tq, delta + g * Tq, dQ + g * Tq * Dp, i, j0, nb, off, causal, D, Dp,
                      scale, Kt, Vt, Kp, dK, dV, P, dS, Xq, Xdo);
      for (; i < Tq; ++i)
        bwd_rows<1>(qg, dog, lse + g * Tq, delta + g * Tq, dQ + g * Tq * Dp, i, j0, nb, off, causal, D, Dp,
                    scale, Kt, Vt, Kp, dK, dV, P, dS, Xq, Xdo);
    }
    for (long c = 0; c < nb; ++c)
      for (long d = 0; d < D; ++d) {
        dk[(j0 + c) * D + d] = dK[c * Dp + d] * scale;
        dv[(j0 + c) * D + d] = dV[c * Dp + d];
      }
  }
  for (long r = 0; r < G * Tq; ++r)
    for (long d = 0; d < D; ++d) dq[r * D + d] = dQ[r * Dp + d] * scale;
}

#undef BG_INLINE
