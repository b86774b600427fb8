// LayerNorm rows on float32 vectors, for the fused LayerNorm op (layer_norm.cpp): the forward
// y = (x − mean) · rstd · w + b with rstd = 1 / √(var + eps), and its backward.
//
// Included once per instruction set by layer_norm.cpp, inside a namespace and under a `#pragma GCC
// target`, as gelu_simd.h is by bias_gelu.cpp (GCC vector extensions of W floats, W the register
// width (simd_vec.h), no includes but simd_vec.h, memory through memcpy).
//
// Rows are read and written in place as float32 or bfloat16 (the element type is a template
// parameter: float or uint16_t holding bf16 bits), so a bf16 output under autocast is rounded once,
// as it is stored, and no full-size float32 copy of the activations is ever made. Arithmetic is in
// float32 throughout. A row's tail (C not a multiple of W) is one zero-padded vector: the forward's
// sums mask its padding; the backward's padding has dy = 0, which contributes nothing to any sum.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4).

#include "simd_vec.h"  // W, vf, vi, ld, st, splat, BG_INLINE

typedef unsigned int vu __attribute__((vector_size(W * 4)));
typedef unsigned short vh __attribute__((vector_size(W * 2)));  // W bf16

// bf16 bits -> float32: the bf16 is the high half of the float.
BG_INLINE vf bf16_bits_to_float(vh h) { return (vf)(__builtin_convertvector(h, vu) << 16); }

// x rounded to the nearest bf16, ties to even. A NaN stays NaN: its low payload bits could otherwise
// carry the rounding into the exponent and make it inf, so NaN lanes keep their high half with a
// quiet bit set instead.
BG_INLINE vh float_to_bf16_bits(vf x) {
  vu u;
  __builtin_memcpy(&u, &x, sizeof u);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
  return __builtin_convertvector((rounded & ~nan) | (((u >> 16) | 0x40u) & nan), vh);
}

// W elements at p as float32.
BG_INLINE vf load(const float* p) { return ld(p); }
BG_INLINE vf load(const unsigned short* p) {
  vh h;
  __builtin_memcpy(&h, p, sizeof h);
  return bf16_bits_to_float(h);
}
BG_INLINE void store(float* p, vf v) { st(p, v); }
BG_INLINE void store(unsigned short* p, vf v) {
  const vh h = float_to_bf16_bits(v);
  __builtin_memcpy(p, &h, sizeof h);
}

// The first m < W elements at p, zero-padded to a vector; and the first m lanes of v stored at p.
template <class T>
BG_INLINE vf load_part(const T* p, long m) {
  T buf[W] = {};
  __builtin_memcpy(buf, p, m * sizeof(T));
  return load(buf);
}
template <class T>
BG_INLINE void store_part(T* p, vf v, long m) {
  T buf[W];
  store(buf, v);
  __builtin_memcpy(p, buf, m * sizeof(T));
}

// The lanes' sum in a fixed order (lane 0 first), so a row's result does not depend on anything
// but the row.
BG_INLINE float hsum(vf v) {
  float a[W];
  __builtin_memcpy(a, &v, sizeof a);
  float s = 0.0f;
  for (int l = 0; l < W; ++l) s += a[l];
  return s;
}

// All ones in the lanes below m, zero above: selects a tail vector's real elements.
BG_INLINE vi lanes_below(long m) {
  int a[W];
  for (int l = 0; l < W; ++l) a[l] = l < m ? -1 : 0;
  vi v;
  __builtin_memcpy(&v, a, sizeof v);
  return v;
}

// One row of the forward: x (c,) -> y (c,), with its mean and rstd. w, b may be null (1 and 0).
// Two passes for the statistics (the sum, then the squared deviations from the mean), which keeps
// the variance accurate when |mean| >> std, and a third for the output; the row stays in L1.
template <class X, class Y>
static void ln_fwd_row(const X* x, const float* w, const float* b, Y* y, long c, float eps, float* mean_out,
                       float* rstd_out) {
  const long full = c - c % W, m = c - full;
  vf s = {};
  for (long i = 0; i < full; i += W) s += load(x + i);
  if (m) s += load_part(x + full, m);
  const float mean = hsum(s) / c;
  vf q = {};
  for (long i = 0; i < full; i += W) {
    const vf d = load(x + i) - mean;
    q += d * d;
  }
  if (m) {
    const vf d = load_part(x + full, m) - mean;
    q += lanes_below(m) ? d * d : vf{};
  }
  const float rstd = 1.0f / __builtin_sqrtf(hsum(q) / c + eps);
  for (long i = 0; i < c; i += W) {
    const long n = c - i < W ? c - i : W;
    vf h = ((n == W ? load(x + i) : load_part(x + i, n)) - mean) * rstd;
    if (w) h *= n == W ? ld(w + i) : load_part(w + i, n);
    if (b) h += n == W ? ld(b + i) : load_part(b + i, n);
    if (n == W) store(y + i, h); else store_part(y + i, h, n);
  }
  *mean_out = mean;
  *rstd_out = rstd;
}

// One row of the backward, with xhat = (x − mean) · rstd and g = dy · w:
//   dx = rstd · (g − mean(g) − xhat · mean(g · xhat)),
// and, when dw / db are not null, dw += dy · xhat and db += dy (the parameter gradients' running
// sums over the rows of one part, added in row order by the caller).
template <class X, class D>
static void ln_bwd_row(const D* dy, const X* x, const float* w, float mean, float rstd, X* dx, float* dw, float* db,
                       long c) {
  vf sg = {}, sgx = {};
  for (long i = 0; i < c; i += W) {
    const long n = c - i < W ? c - i : W;
    const vf d = n == W ? load(dy + i) : load_part(dy + i, n);  // zero-padded: no tail term below
    const vf xh = ((n == W ? load(x + i) : load_part(x + i, n)) - mean) * rstd;
    const vf g = w ? d * (n == W ? ld(w + i) : load_part(w + i, n)) : d;
    sg += g;
    sgx += g * xh;
    if (dw) {
      const vf v = (n == W ? ld(dw + i) : load_part(dw + i, n)) + d * xh;
      if (n == W) st(dw + i, v); else store_part(dw + i, v, n);
    }
    if (db) {
      const vf v = (n == W ? ld(db + i) : load_part(db + i, n)) + d;
      if (n == W) st(db + i, v); else store_part(db + i, v, n);
    }
  }
  const float c1 = hsum(sg) / c, c2 = hsum(sgx) / c;
  for (long i = 0; i < c; i += W) {
    const long n = c - i < W ? c - i : W;
    const vf d = n == W ? load(dy + i) : load_part(dy + i, n);
    const vf xh = ((n == W ? load(x + i) : load_part(x + i, n)) - mean) * rstd;
    const vf g = w ? d * (n == W ? ld(w + i) : load_part(w + i, n)) : d;
    const vf v = rstd * (g - c1 - xh * c2);
    if (n == W) store(dx + i, v); else store_part(dx + i, v, n);
  }
}

#undef BG_INLINE
