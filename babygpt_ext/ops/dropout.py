"""Attention dropout's mask, as the kernels draw it: Philox-4x32-10 keyed by the seed, one counter
per (b, h, i, group of keys) -- the torch twin of csrc/dropout_rng.h, bit for bit (the layout of
counters and words is explained there). It builds the whole (B, H, Tq, Tk) mask at once: the eager
backend trains with it and the tests compare every kernel against it.

    keep = dropout_mask(seed, B, H, Tq, Tk, p)     # bool, True where the probability is kept
    o = (softmax(s) * keep / (1 - p)) @ v           # what every backend computes

Words are uint32 values held in int64 tensors (torch has no full uint32 arithmetic); a 32x32-bit
product is formed from 16-bit halves so nothing exceeds 2^49.
"""

import torch

MUL0, MUL1 = 0xD2511F53, 0xCD9E8D57
WEYL0, WEYL1 = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
_U32 = 0xFFFFFFFF
SEED_BOUND = 2 ** 63 - 1  # seeds are int64 values in [0, SEED_BOUND)


def threshold(p: float) -> int:
    """A score is dropped when its word is below this: p · 2^32, truncated (as make_rng in C++)."""
    return int(float(p) * 4294967296.0)


def keys(seed, device=None) -> tuple:
    """(k0, k1): the low and high 32 bits of the seed, the Philox key. seed: an int in [0, 2^63), or
    the op's one-element int64 tensor (kept a tensor, so torch.compile traces the eager backend)."""
    if isinstance(seed, torch.Tensor):
        s = seed.reshape(()).to(device)
        return s & _U32, s >> 32
    return int(seed) & _U32, int(seed) >> 32


def _mulhilo(a: torch.Tensor, m: int) -> tuple:
    lo_a, hi_a = a & 0xFFFF, a >> 16
    t1, t2 = lo_a * m, hi_a * m  # each < 2^48; a · m = t2 · 2^16 + t1
    return (t2 + (t1 >> 16)) >> 16, (((t2 & 0xFFFF) << 16) + t1) & _U32


def philox(c0, c1, c2, c3, k0: int, k1: int) -> tuple:
    """Ten Philox-4x32 rounds on int64 tensors of uint32 counter words (broadcasting)."""
    for _ in range(ROUNDS):
        hi0, lo0 = _mulhilo(c0, MUL0)
        hi1, lo1 = _mulhilo(c2, MUL1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
        k0, k1 = (k0 + WEYL0) & _U32, (k1 + WEYL1) & _U32
    return c0, c1, c2, c3


def dropout_words(seed, b: int, h: int, tq: int, tk: int, device=None) -> torch.Tensor:
    """(B, H, Tq, Tk) int64: the uint32 word each score's keep/drop decision is made on."""
    k0, k1 = keys(seed, device)
    j = torch.arange(tk, device=device)
    counter = (j >> 4) * 4 + (j & 3)
    word = (j >> 2) & 3
    shape = (b, h, tq, tk)
    c0 = counter.expand(shape)
    c1 = torch.arange(tq, device=device).view(1, 1, tq, 1).expand(shape)
    c2 = torch.arange(h, device=device).view(1, h, 1, 1).expand(shape)
    c3 = torch.arange(b, device=device).view(b, 1, 1, 1).expand(shape)
    words = torch.stack(philox(c0, c1, c2, c3, k0, k1), dim=-1)  # (B, H, Tq, Tk, 4)
    return words.gather(-1, word.view(1, 1, 1, tk, 1).expand(*shape, 1)).squeeze(-1)


def dropout_mask(seed, b: int, h: int, tq: int, tk: int, p: float, device=None) -> torch.Tensor:
    """(B, H, Tq, Tk) bool: True where attention dropout with probability p keeps score (b, h, i, j)
    for this seed -- the mask every backend of ops.causal_attention(..., dropout_p=p, seed=seed)
    applies."""
    return dropout_words(seed, b, h, tq, tk, device) >= threshold(p)


def draw_seed() -> torch.Tensor:
    """A fresh seed from torch's default CPU generator (so torch.manual_seed makes runs repeat), as a
    one-element int64 CPU tensor: a tensor op, which torch.compile(fullgraph=True) traces."""
    return torch.randint(0, SEED_BOUND, (1,), dtype=torch.int64)


def seed_tensor(seed: int) -> torch.Tensor:
    return torch.tensor([int(seed)], dtype=torch.int64)
