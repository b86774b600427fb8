// LayerNorm rows on float32 vectors, for the fused LayerNorm op (layer_norm.cpp): the forward
// y = (x − mean) · rstd · w + b with rstd = 1 / √(var + eps), and its backward.
//
// Included once per instruction set by layer_norm.cpp, inside a namespace and under a `#pragma GCC
// target`, as gelu_simd.h is by bias_gelu.cpp (GCC vector extensions of W floats, W the register
// width (simd_vec.h), no includes but simd_vec.h and simd_bf16.h, memory through memcpy).
//
// Rows are read and written in place as float32 or bfloat16 (the element type is a template
// parameter: float or uint16_t holding bf16 bits), so a bf16 output under autocast is rounded once,
// as it is stored, and no full-size float32 copy of the activations is ever made. Arithmetic is in
// float32 throughout. A row's tail (C not a multiple of W) is one zero-padded vector: the forward's
// sums mask its padding; the backward's padding has dy = 0, which contributes nothing to any sum.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4).

#include "simd_vec.h"  // W, vf, vi, vu, ld, st, splat, BG_INLINE

#include "simd_bf16.h"  // bf16, ldx(), stx(): rows of float or bf16

// The first m < W elements at p, zero-padded to a vector.
template <class T>
BG_INLINE vf load_part(const T* p, long m) {
  T buf[W] = {};
  __builtin_memcpy(buf, p, m * sizeof(T));
  return ldx(buf);
}

// The lanes' sum as a fixed tree (halves added until one lane is left), so a row's result depends
// on nothing but the row, and the dependency chain is log2(W) adds, not W (the two sums of a row
// are on its critical path).
BG_INLINE float hsum(vf v) {
  float a[W];
  __builtin_memcpy(a, &v, sizeof a);
  for (int h = W / 2; h >= 1; h /= 2)
    for (int l = 0; l < h; ++l) a[l] += a[l + h];
  return a[0];
}

// All ones in the lanes below m, zero above: selects a tail vector's real elements.
BG_INLINE vi lanes_below(long m) {
  int a[W];
  for (int l = 0; l < W; ++l) a[l] = l < m ? -1 : 0;
  vi v;
  __builtin_memcpy(&v, a, sizeof v);
  return v;
}

// y = (x − mean) · rstd · w + b on W elements (w, b null: 1 and 0).
template <class X, class Y>
BG_INLINE void ln_out(const X* x, const float* w, const float* b, Y* y, vf mean, vf rstd) {
  vf h = (ldx(x) - mean) * rstd;
  if (w) h *= ld(w);
  if (b) h += ld(b);
  stx(y, h);
}

// One row of the forward: x (c,) -> y (c,), with its mean and rstd. w, b may be null (1 and 0).
// Two passes for the statistics (the sum, then the squared deviations from the mean), which keeps
// the variance accurate when |mean| >> std, and a third for the output; the row stays in L1. The
// sums run in four accumulators (an add's latency is four cycles), the tail (c % W elements) after
// the whole vectors, through zero-padded copies.
template <class X, class Y>
static void ln_fwd_row(const X* x, const float* w, const float* b, Y* y, long c, float eps, float* mean_out,
                       float* rstd_out) {
  const long full = c - c % W, m = c - full;
  vf s0 = {}, s1 = {}, s2 = {}, s3 = {};
  long i = 0;
  for (; i + 4 * W <= full; i += 4 * W) {
    s0 += ldx(x + i);
    s1 += ldx(x + i + W);
    s2 += ldx(x + i + 2 * W);
    s3 += ldx(x + i + 3 * W);
  }
  for (; i < full; i += W) s0 += ldx(x + i);
  if (m) s1 += load_part(x + full, m);
  const float mean = hsum((s0 + s1) + (s2 + s3)) / c;
  const vf vm = splat(mean);
  vf q0 = {}, q1 = {}, q2 = {}, q3 = {};
  for (i = 0; i + 4 * W <= full; i += 4 * W) {
    const vf d0 = ldx(x + i) - vm, d1 = ldx(x + i + W) - vm, d2 = ldx(x + i + 2 * W) - vm,
             d3 = ldx(x + i + 3 * W) - vm;
    q0 += d0 * d0;
    q1 += d1 * d1;
    q2 += d2 * d2;
    q3 += d3 * d3;
  }
  for (; i < full; i += W) {
    const vf d = ldx(x + i) - vm;
    q0 += d * d;
  }
  if (m) {
    const vf d = load_part(x + full, m) - vm;
    q1 += lanes_below(m) ? d * d : vf{};
  }
  const float rstd = 1.0f / __builtin_sqrtf(hsum((q0 + q1) + (q2 + q3)) / c + eps);
  const vf vr = splat(rstd);
  for (i = 0; i < full; i += W) ln_out(x + i, w ? w + i : w, b ? b + i : b, y + i, vm, vr);
  if (m) {
    X xs[W] = {};
    float ws[W] = {}, bs[W] = {};
    Y ys[W];
    __builtin_memcpy(xs, x + full, m * sizeof(X));
    if (w) __builtin_memcpy(ws, w + full, m * 4);
    if (b) __builtin_memcpy(bs, b + full, m * 4);
    ln_out(xs, w ? ws : w, b ? bs : b, ys, vm, vr);
    __builtin_memcpy(y + full, ys, m * sizeof(Y));
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// The backward's sums on W elements, with xhat = (x − mean) · rstd and g = dy · w: sg += g,
// sgx += g · xhat, and (when not null) dw += dy · xhat, db += dy.
template <class X, class D>
BG_INLINE void ln_grad_sums(const D* dy, const X* x, const float* w, vf mean, vf rstd, float* dw, float* db, vf& sg,
                            vf& sgx) {
  const vf d = ldx(dy), xh = (ldx(x) - mean) * rstd, g = w ? d * ld(w) : d;
  sg += g;
  sgx += g * xh;
  if (dw) st(dw, ld(dw) + d * xh);
  if (db) st(db, ld(db) + d);
}

// dx = rstd · (g − c1 − xhat · c2) on W elements.
template <class X, class D>
BG_INLINE void ln_grad_dx(const D* dy, const X* x, const float* w, vf mean, vf rstd, vf c1, vf c2, X* dx) {
  const vf d = ldx(dy), xh = (ldx(x) - mean) * rstd, g = w ? d * ld(w) : d;
  stx(dx, rstd * (g - c1 - xh * c2));
}

// One row of the backward:
//   dx = rstd · (g − mean(g) − xhat · mean(g · xhat)),
// and, when dw / db are not null, dw += dy · xhat and db += dy (the parameter gradients' running
// sums over the rows of one part, added in row order by the caller). The tail goes through
// zero-padded copies: its padding has dy = 0, so it adds nothing to any sum.
template <class X, class D>
static void ln_bwd_row(const D* dy, const X* x, const float* w, float mean, float rstd, X* dx, float* dw, float* db,
                       long c) {
  const long full = c - c % W, m = c - full;
  const vf vm = splat(mean), vr = splat(rstd);
  vf sg0 = {}, sg1 = {}, sgx0 = {}, sgx1 = {};
  long i = 0;
  for (; i + 2 * W <= full; i += 2 * W) {
    ln_grad_sums(dy + i, x + i, w ? w + i : w, vm, vr, dw ? dw + i : dw, db ? db + i : db, sg0, sgx0);
    ln_grad_sums(dy + i + W, x + i + W, w ? w + i + W : w, vm, vr, dw ? dw + i + W : dw, db ? db + i + W : db, sg1,
                 sgx1);
  }
  for (; i < full; i += W) ln_grad_sums(dy + i, x + i, w ? w + i : w, vm, vr, dw ? dw + i : dw, db ? db + i : db, sg0, sgx0);
  D ds[W] = {};
  X xs[W] = {}, dxs[W];
  float ws[W] = {}, dws[W] = {}, dbs[W] = {};
  if (m) {
    __builtin_memcpy(ds, dy + full, m * sizeof(D));
    __builtin_memcpy(xs, x + full, m * sizeof(X));
    if (w) __builtin_memcpy(ws, w + full, m * 4);
    if (dw) __builtin_memcpy(dws, dw + full, m * 4);
    if (db) __builtin_memcpy(dbs, db + full, m * 4);
    ln_grad_sums(ds, xs, w ? ws : w, vm, vr, dw ? dws : dw, db ? dbs : db, sg1, sgx1);
    if (dw) __builtin_memcpy(dw + full, dws, m * 4);
    if (db) __builtin_memcpy(db + full, dbs, m * 4);
  }
  const vf c1 = splat(hsum(sg0 + sg1) / c), c2 = splat(hsum(sgx0 + sgx1) / c);
  for (i = 0; i < full; i += W) ln_grad_dx(dy + i, x + i, w ? w + i : w, vm, vr, c1, c2, dx + i);
  if (m) {
    ln_grad_dx(ds, xs, w ? ws : w, vm, vr, c1, c2, dxs);
    __builtin_memcpy(dx + full, dxs, m * sizeof(X));
  }
}

#undef BG_INLINE
