// The vector of W floats of the per-instruction-set kernels and its loads, stores and broadcast,
// shared by gelu_simd.h and decode_simd.h. Included inside the includer's namespace and `#pragma
// GCC target` (see attention_simd.h for why), so it includes nothing.
//
// Needs, defined by the includer: BABYGPT_VEC_FLOATS (W: 16, 8 or 4). Defines BG_INLINE, which the
// includer undefines at its end.

constexpr int W = BABYGPT_VEC_FLOATS;
typedef float vf __attribute__((vector_size(W * 4)));
typedef int vi __attribute__((vector_size(W * 4)));
typedef unsigned vu __attribute__((vector_size(W * 4)));

#define BG_INLINE static inline __attribute__((always_inline))

BG_INLINE vf ld(const float* p) { vf v; __builtin_memcpy(&v, p, sizeof v); return v; }
BG_INLINE void st(float* p, vf v) { __builtin_memcpy(p, &v, sizeof v); }
// Every lane x, as one broadcast: x - 0 is x for every x, -0 included, so GCC drops the subtraction
// (lora_simd.h measured why `vf{} + x` is worse in a loop).
BG_INLINE vf splat(float x) { return x - vf{}; }
