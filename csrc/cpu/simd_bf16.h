// bf16 <-> float32 on vectors of W floats, shared by the per-instruction-set kernels
// (attention_simd.h, gelu_simd.h). A bf16 is the upper half of a float32's bits, kept as its 16
// bits (the headers include nothing, so no at::BFloat16). Included inside the includer's namespace
// and `#pragma GCC target`, so it includes nothing and needs, defined by the includer: W, vf, vu
// (W floats / unsigned ints), ld, st and BG_INLINE.

typedef unsigned short bf16;
typedef unsigned short vh __attribute__((vector_size(W * 2)));  // W bf16

// x rounded to the nearest bf16 (ties to even), the bits in the low half of each lane. NaN stays
// NaN (its payload's low bits could otherwise round it up into inf).
BG_INLINE vu to_bf16(vf x) {
  vu u;
  __builtin_memcpy(&u, &x, sizeof u);
  const vu rounded = (u + 0x7fffu + ((u >> 16) & 1u)) >> 16;
  const vu nan = (vu)((u & 0x7fffffffu) > 0x7f800000u);  // all ones where NaN
  return (rounded & ~nan) | (((u >> 16) | 0x40u) & nan);
}
BG_INLINE vf bf16_to_float(vu h) { return (vf)(h << 16); }

// W elements of a float or bf16 row as floats, and back (rounded once): the element-wise kernels
// read and write bf16 rows in place, with no float32 copy of the tensor.
BG_INLINE vf ldx(const float* p) { return ld(p); }
BG_INLINE vf ldx(const bf16* p) {
  vh h;
  __builtin_memcpy(&h, p, sizeof h);
  return bf16_to_float(__builtin_convertvector(h, vu));
}
BG_INLINE void stx(float* p, vf v) { st(p, v); }
BG_INLINE void stx(bf16* p, vf v) {
  const vh h = __builtin_convertvector(to_bf16(v), vh);
  __builtin_memcpy(p, &h, sizeof h);
}
