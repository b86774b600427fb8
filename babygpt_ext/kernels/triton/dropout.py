"""Attention dropout's mask in Triton: the twin of csrc/dropout_rng.h (Philox-4x32-10 keyed by the
seed, counter (counter_of(j), i, h, b), word word_of(j)), bit for bit, in uint32 arithmetic.

Each score computes its own Philox block and keeps one of its four words (the C++ SIMD copy shares a
block among four keys); on a GPU the ten rounds are cheap next to the two dots of a tile.
"""

import triton
import triton.language as tl


@triton.jit
def _philox(c0, c1, c2, c3, k0, k1):
    for _ in tl.static_range(10):
        hi0 = tl.umulhi(c0, 0xD2511F53)
        lo0 = c0 * 0xD2511F53
        hi1 = tl.umulhi(c2, 0xCD9E8D57)
        lo1 = c2 * 0xCD9E8D57
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0 = k0 + 0x9E3779B9
        k1 = k1 + 0xBB67AE85
    return c0, c1, c2, c3


@triton.jit
def kept(seed_lo, seed_hi, threshold, b, h, i, j):
    """Whether score (b, h, i, j) survives dropout; i and j broadcast against each other (a tile or
    its transpose). seed_lo/seed_hi/threshold are uint32 values passed as ints."""
    i, j = tl.broadcast(i, j)
    c0 = ((j >> 4) * 4 + (j & 3)).to(tl.uint32)
    c1 = i.to(tl.uint32)
    c2 = tl.zeros_like(c1) + h.to(tl.uint32)
    c3 = tl.zeros_like(c1) + b.to(tl.uint32)
    k0 = tl.zeros_like(c1) + seed_lo.to(tl.uint32)
    k1 = tl.zeros_like(c1) + seed_hi.to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, k0, k1)
    word = (j >> 2) & 3
    x = tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))
    return x >= threshold.to(tl.uint32)
