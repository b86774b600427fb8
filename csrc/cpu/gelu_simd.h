// The exact (erf) GELU and its derivative on float32 and bf16 rows, for the fused bias + GELU op (bias_gelu.cpp).
//
// Included once per instruction set by bias_gelu.cpp, inside a namespace and under a `#pragma GCC
// target`, as attention_simd.h is by attention.cpp (see there for why: GCC vector extensions of W
// floats, W the register width (simd_vec.h), no includes but simd_vec.h and simd_exp.h, memory
// through memcpy).
//
// With h = x + b and z = |h| / √2, the lower tail of the normal distribution is
//   q(h) = Φ(−|h|) = ½ erfc(z) = ½ t P(t) e^{−z²},   t = 1 / (1 + p z)
// (Abramowitz & Stegun 7.1.26: |error of erf| < 1.5e-7, the formula ATen's vectorised erf uses).
// Then Φ(h) = 1 − q for h ≥ 0 and q for h < 0 (no cancellation in the far negative tail), and
//   gelu(h)  = h Φ(h),        gelu'(h) = Φ(h) + h φ(h),   φ(h) = e^{−h²/2} / √(2π) = e^{−z²} / √(2π),
// so the backward reuses the exponential the tail needs. NaN propagates; ±inf give what the float64
// reference gives (gelu(inf) = inf, gelu(−inf) = NaN as inf·0).
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4).

#include "simd_vec.h"  // W, vf, vi, ld, st, splat, BG_INLINE
#include "simd_exp.h"  // vexp()
#include "simd_bf16.h"  // bf16, ldx(), stx(): rows of float or bf16

struct Gelu {
  vf cdf;  // Φ(h)
  vf pdf;  // φ(h)
};

BG_INLINE Gelu gelu_parts(vf h) {
  const vf z = (h < 0.0f ? -h : h) * 0.70710678118654752f;
  const vf t = 1.0f / (1.0f + 0.3275911f * z);
  vf poly = splat(1.061405429f);
  poly = poly * t - 1.453152027f;
  poly = poly * t + 1.421413741f;
  poly = poly * t - 0.284496736f;
  poly = poly * t + 0.254829592f;
  const vf e = vexp(-z * z);  // NaN h: NaN (the comparisons in the exp are false)
  const vf tail = 0.5f * t * poly * e;    // Φ(−|h|)
  return Gelu{h < 0.0f ? tail : 1.0f - tail, e * 0.39894228040143268f};
}

// y[i] = gelu(x[i] + b[i]) for i < n; b may be null (no bias). T: float, or bf16 (computed in
// float32, rounded once on the store).
template <class T>
BG_INLINE void gelu_row_t(const T* x, const float* b, T* y, long n) {
  long i = 0;
  for (; i + W <= n; i += W) {
    const vf h = b ? ldx(x + i) + ld(b + i) : ldx(x + i);
    stx(y + i, h * gelu_parts(h).cdf);
  }
  if (i < n) {  // the tail through a zero-padded vector
    T xs[W] = {}, ys[W];
    float bs[W] = {};
    __builtin_memcpy(xs, x + i, (n - i) * sizeof(T));
    if (b) __builtin_memcpy(bs, b + i, (n - i) * 4);
    const vf h = ldx(xs) + ld(bs);
    stx(ys, h * gelu_parts(h).cdf);
    __builtin_memcpy(y + i, ys, (n - i) * sizeof(T));
  }
}

// dx[i] = dy[i] gelu'(x[i] + b[i]); with db non-null also db[i] += dx[i] (the bias gradient's
// running sum over rows, added in row order by the caller; float32 whatever T, summed before dx
// is rounded).
template <class T>
BG_INLINE void gelu_grad_row_t(const T* dy, const T* x, const float* b, T* dx, float* db, long n) {
  long i = 0;
  for (; i + W <= n; i += W) {
    const vf h = b ? ldx(x + i) + ld(b + i) : ldx(x + i);
    const Gelu g = gelu_parts(h);
    const vf d = ldx(dy + i) * (g.cdf + h * g.pdf);
    stx(dx + i, d);
    if (db) st(db + i, ld(db + i) + d);
  }
  if (i < n) {
    T dys[W] = {}, xs[W] = {}, dxs[W];
    float bs[W] = {}, dbs[W] = {};
    const long m = (n - i) * sizeof(T), mf = (n - i) * 4;
    __builtin_memcpy(dys, dy + i, m);
    __builtin_memcpy(xs, x + i, m);
    if (b) __builtin_memcpy(bs, b + i, mf);
    const vf h = ldx(xs) + ld(bs);
    const Gelu g = gelu_parts(h);
    const vf d = ldx(dys) * (g.cdf + h * g.pdf);
    stx(dxs, d);
    __builtin_memcpy(dx + i, dxs, m);
    if (db) {
      __builtin_memcpy(dbs, db + i, mf);
      st(dbs, ld(dbs) + d);
      __builtin_memcpy(db + i, dbs, mf);
    }
  }
}

static void gelu_row(const float* x, const float* b, float* y, long n) { gelu_row_t(x, b, y, n); }
static void gelu_row_bf16(const bf16* x, const float* b, bf16* y, long n) { gelu_row_t(x, b, y, n); }
static void gelu_grad_row(const float* dy, const float* x, const float* b, float* dx, float* db, long n) {
  gelu_grad_row_t(dy, x, b, dx, db, n);
}
static void gelu_grad_row_bf16(const bf16* dy, const bf16* x, const float* b, bf16* dx, float* db, long n) {
  gelu_grad_row_t(dy, x, b, dx, db, n);
}

#undef BG_INLINE
