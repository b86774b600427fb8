// The exact (erf) GELU and its derivative on float32 rows, for the fused bias + GELU op (bias_gelu.cpp).
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

// y[i] = gelu(x[i] + b[i]) for i < n; b may be null (no bias).
static void gelu_row(const float* x, const float* b, float* y, long n) {
  long i = 0;
  for (; i + W <= n; i += W) {
    const vf h = b ? ld(x + i) + ld(b + i) : ld(x + i);
    st(y + i, h * gelu_parts(h).cdf);
  }
  if (i < n) {  // the tail through a zero-padded vector
    float xs[W] = {}, bs[W] = {}, ys[W];
    __builtin_memcpy(xs, x + i, (n - i) * 4);
    if (b) __builtin_memcpy(bs, b + i, (n - i) * 4);
    const vf h = ld(xs) + ld(bs);
    st(ys, h * gelu_parts(h).cdf);
    __builtin_memcpy(y + i, ys, (n - i) * 4);
  }
}

// dx[i] = dy[i] gelu'(x[i] + b[i]); with db non-null also db[i] += dx[i] (the bias gradient's
// running sum over rows, added in row order by the caller).
static void gelu_grad_row(const float* dy, const float* x, const float* b, float* dx, float* db, long n) {
  long i = 0;
  for (; i + W <= n; i += W) {
    const vf h = b ? ld(x + i) + ld(b + i) : ld(x + i);
    const Gelu g = gelu_parts(h);
    const vf d = ld(dy + i) * (g.cdf + h * g.pdf);
    st(dx + i, d);
    if (db) st(db + i, ld(db + i) + d);
  }
  if (i < n) {
    float dys[W] = {}, xs[W] = {}, bs[W] = {}, dbs[W] = {}, dxs[W];
    const long m = (n - i) * 4;
    __builtin_memcpy(dys, dy + i, m);
    __builtin_memcpy(xs, x + i, m);
    if (b) __builtin_memcpy(bs, b + i, m);
    const vf h = ld(xs) + ld(bs);
    const Gelu g = gelu_parts(h);
    const vf d = ld(dys) * (g.cdf + h * g.pdf);
    st(dxs, d);
    __builtin_memcpy(dx + i, dxs, m);
    if (db) {
      __builtin_memcpy(dbs, db + i, m);
      st(dbs, ld(dbs) + d);
      __builtin_memcpy(db + i, dbs, m);
    }
  }
}

#undef BG_INLINE
