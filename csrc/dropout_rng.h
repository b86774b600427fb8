// Attention dropout's random numbers: Philox-4x32-10 (Salmon et al., "Parallel random numbers: as
// easy as 1, 2, 3", SC 2011), a counter-based generator. The keep/drop decision of score (b, h, i, j)
// is a pure function of (seed, b, h, i, j, p), so the backward regenerates the forward's mask instead
// of storing it, and every backend draws the same one (docs/design.md, "Attention dropout").
//
// One definition for the CPU kernels (csrc/cpu: scalar, and the SIMD copies with vector words), the
// CUDA kernels (csrc/cuda, on a GPU and under the emulator). Its twins, bit for bit: the Triton
// kernels (babygpt_ext/kernels/triton/dropout.py) and the whole-mask torch version
// (babygpt_ext/ops/dropout.py, ops.dropout_mask), which the tests compare every backend against.
//
// Layout: key = (low, high 32 bits of the seed); counter = (c, i, h, b) with c = counter_of(j);
// score (i, j) takes word word_of(j) of the four. Keys come in groups of 16 that share 4 counters:
// key j = 16 g + 4 w + t uses counter 4 g + t and word w, so four consecutive counters give the
// words of 16 consecutive keys, each word holding 4 consecutive keys -- a SIMD vector of counters
// yields vectors of consecutive keys without a transpose. A score is kept iff its word >= the
// threshold p · 2^32 (a drop probability of threshold / 2^32, within 2^-32 of p), and a kept
// probability is scaled by 1 / (1 - p).
//
// Includes only <cstdint> and dropout_philox.h (the rounds), which attention_simd.h includes again
// inside each of its `#pragma GCC target` copies: a function of the default target cannot inline
// the vector multiply of an AVX2 one, so the rounds are compiled once per instruction set too.
#pragma once

#include <cstdint>

#if defined(__CUDACC__)
#define BABYGPT_RNG_INLINE __host__ __device__ __forceinline__
#define BABYGPT_RNG_UNROLL _Pragma("unroll")
#else
#define BABYGPT_RNG_INLINE inline __attribute__((always_inline))
#define BABYGPT_RNG_UNROLL _Pragma("GCC unroll 10")
#endif

namespace babygpt::dropout {

constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;     // Philox-4x32 round multipliers
constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;   // key schedule (Weyl sequence)
constexpr int kRounds = 10;

#include "dropout_philox.h"  // philox(): the rounds

struct MulHiLo32 {
  BABYGPT_RNG_INLINE void operator()(uint32_t a, uint32_t m, uint32_t& hi, uint32_t& lo) const {
    const uint64_t p = uint64_t(a) * m;
    hi = uint32_t(p >> 32), lo = uint32_t(p);
  }
};

// 32-bit index arithmetic (a sequence is shorter than 2^32 keys): on a GPU, 64-bit indices cost
// registers in the kernels' inner loops.
BABYGPT_RNG_INLINE uint32_t counter_of(uint32_t j) { return (j >> 4) * 4 + (j & 3); }
BABYGPT_RNG_INLINE uint32_t word_of(uint32_t j) { return (j >> 2) & 3; }

// What a kernel needs to draw the mask: the key, and the drop threshold. threshold == 0 is p == 0
// (nothing dropped); kernels then skip the generator entirely.
struct Rng {
  uint32_t k0, k1, threshold;
  float keep_scale;      // 1 / (1 - p), rounded once for the float32 kernels
  double keep_scale_f64;  // the same in double, for the float64 CPU path
};

BABYGPT_RNG_INLINE Rng make_rng(double p, int64_t seed) {
  const uint64_t s = uint64_t(seed);
  // p < 1 (validated), so p · 2^32 < 2^32; the product by a power of two is exact in double.
  return {uint32_t(s), uint32_t(s >> 32), uint32_t(p * 4294967296.0), float(1.0 / (1.0 - p)), 1.0 / (1.0 - p)};
}

// Whether score (b, h, i, j) is kept (the scalar form: float64 CPU path, CUDA threads).
BABYGPT_RNG_INLINE bool keep(const Rng& g, uint32_t b, uint32_t h, uint32_t i, uint32_t j) {
  uint32_t c0 = counter_of(j), c1 = i, c2 = h, c3 = b;
  philox(c0, c1, c2, c3, g.k0, g.k1, MulHiLo32{});
  const uint32_t w = word_of(j);
  const uint32_t x = w == 0 ? c0 : w == 1 ? c1 : w == 2 ? c2 : c3;
  return x >= g.threshold;
}

}  // namespace babygpt::dropout
