"""Attention dropout's mask in Triton: the twin of csrc/dropout_rng.h (Philox-4x32-10 keyed by the
seed, counter (counter_of(j), i, h, b), word word_of(j)), bit for bit, in uint32 arithmetic.

Keys j = 16a + 4w + c (c, w in 0..3) share the Philox block of counter 4a + c and take its word w.
`kept` computes one block per four keys, on a (rows, keys / 4) tile, and interleaves the four words
into the (rows, keys) tile: a block per key held four times the Philox state in registers, and the
kernels spilled with it (64 B per thread for the sm_80 dK/dV kernel at D = 64).
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
def kept(seed_lo, seed_hi, threshold, b, h, i0, j0, ROWS: tl.constexpr, KEYS: tl.constexpr):
    """(ROWS, KEYS) tile: whether score (b, h, i0 + r, j0 + k) survives dropout. j0 and KEYS are
    multiples of 16 (a key block start and size). seed_lo/seed_hi/threshold are uint32 values passed
    as ints."""
    rows = i0 + tl.arange(0, ROWS)
    quads = (j0 // 16) * 4 + tl.arange(0, KEYS // 4)  # counter_of of keys j0 + 16a + c, a block each
    c0 = (tl.zeros([ROWS, KEYS // 4], tl.int32) + quads[None, :]).to(tl.uint32)
    c1 = (tl.zeros([ROWS, KEYS // 4], tl.int32) + rows[:, None]).to(tl.uint32)
    c2 = tl.zeros_like(c1) + h.to(tl.uint32)
    c3 = tl.zeros_like(c1) + b.to(tl.uint32)
    w0, w1, w2, w3 = _philox(c0, c1, c2, c3, seed_lo.to(tl.uint32), seed_hi.to(tl.uint32))
    t = threshold.to(tl.uint32)
    # words[r, 4a + c, w & 1, w >> 1]; the key of (a, w, c) is 16a + 4w + c
    words = tl.join(tl.join(w0 >= t, w1 >= t), tl.join(w2 >= t, w3 >= t))
    words = tl.reshape(words, [ROWS, KEYS // 16, 4, 2, 2])  # (r, a, c, w & 1, w >> 1)
    return tl.reshape(tl.permute(words, (0, 1, 4, 3, 2)), [ROWS, KEYS])  # (r, a, w >> 1, w & 1, c)
