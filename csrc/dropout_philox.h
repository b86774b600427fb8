// The Philox-4x32 rounds (csrc/dropout_rng.h has the generator, its constants and why). No include
// guard and no includes, on purpose: dropout_rng.h includes this inside namespace babygpt::dropout,
// and csrc/cpu/attention_simd.h inside each of its instruction-set namespaces, so the template is
// compiled under each copy's `#pragma GCC target` (GCC does not inline a function of a wider
// target into one of a narrower). One source for every copy. Needs BABYGPT_RNG_INLINE,
// BABYGPT_RNG_UNROLL and babygpt::dropout's constants (dropout_rng.h, included first).

// Ten Philox rounds on the counter words (c0, c1, c2, c3), in place, under the key (k0, k1).
// U is uint32_t or a vector of them (one independent counter per lane); mulhilo(a, m, hi, lo)
// sets hi:lo = a · m, the 64-bit product of a word and a multiplier.
template <class U, class MulHiLo>
BABYGPT_RNG_INLINE void philox(U& c0, U& c1, U& c2, U& c3, U k0, U k1, MulHiLo mulhilo) {
  BABYGPT_RNG_UNROLL
  for (int r = 0; r < ::babygpt::dropout::kRounds; ++r) {
    U hi0, lo0, hi1, lo1;
    mulhilo(c0, ::babygpt::dropout::kMul0, hi0, lo0);
    mulhilo(c2, ::babygpt::dropout::kMul1, hi1, lo1);
    const U n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0, c1 = lo1, c2 = n2, c3 = lo0;
    k0 += ::babygpt::dropout::kWeyl0, k1 += ::babygpt::dropout::kWeyl1;
  }
}
