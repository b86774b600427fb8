// e^x on a vector of W floats, shared by the per-instruction-set kernels (attention_simd.h,
// gelu_simd.h, decode_simd.h). Included inside their namespace and `#pragma GCC target`, so it includes nothing
// and needs, defined by the includer: vf and vi (W floats / ints), splat() and BG_INLINE.

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
