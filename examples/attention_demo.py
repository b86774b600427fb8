"""The attention zoo of the seed repo, run for real on babygpt_ext's fused op.

For each module: the input and output shapes, the backend that ran, and, for the causal ones,
a check that changing the future does not change the past (a softmax over the wrong axis, the
seed's bug, fails it). The seed's buggy softmax is shown failing the same check.

    python examples/attention_demo.py
    python examples/attention_demo.py --backend eager --seed 3
"""

import argparse
import math

import torch

from babygpt_ext import ops
from babygpt_ext.nn import (CausalSelfAttention, CrossAttention, DotProductAttention, MultiHeadAttention,
                            SpatialAttention, SpatialTransformer)


def max_change_before(fn, x: torch.Tensor, t: int) -> float:
    """Largest change of outputs at positions < t when positions >= t of x are redrawn."""
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    return (fn(x)[:, :t] - fn(x2)[:, :t]).abs().max().item()


def seed_softmax_bug(x: torch.Tensor) -> torch.Tensor:
    """The seed's softmax: mask the scores, then normalise over the queries (dim=-2), not the keys."""
    T = x.shape[1]
    att = (x @ x.transpose(-2, -1)) / math.sqrt(x.shape[-1])
    att = att.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    return torch.softmax(att, dim=-2) @ x


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default=None, help=f"attention backend (available: "
                   f"{', '.join(ops.available_backends('cpu'))}; default: automatic policy)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    be = args.backend
    B, T, C = 2, 10, 32
    x = torch.randn(B, T, C)
    print(f"backend for (B={B}, H=4, T={T}, D=8) fp32: {ops.explain(*[torch.randn(B, 4, T, 8)] * 3, backend=be)}\n")

    causal = {
        "DotProductAttention(32, head_dim=16)": DotProductAttention(C, 16, backend=be),
        "MultiHeadAttention(32, n_head=4)": MultiHeadAttention(C, 4, backend=be),
        "CausalSelfAttention(32, n_head=4)": CausalSelfAttention(C, 4, backend=be),
        "CausalSelfAttention(32, 4, n_kv_head=1)  [MQA]": CausalSelfAttention(C, 4, n_kv_head=1, backend=be),
    }
    with torch.no_grad():
        for name, m in causal.items():
            y = m.eval()(x)
            leak = max(max_change_before(m, x, t) for t in (1, 5, 9))
            print(f"{name:48s} {tuple(x.shape)} -> {tuple(y.shape)}   future->past leak: {leak:.1e}")
        leak = max(max_change_before(seed_softmax_bug, x, t) for t in (1, 5, 9))
        print(f"{'seed bug: softmax over the queries':48s} {'':>25s}   future->past leak: {leak:.1e}  <- broken\n")

        ctx = torch.randn(B, 7, 20)
        y = CrossAttention(C, 20, n_head=4, head_dim=8, backend=be).eval()(x, ctx)
        print(f"{'CrossAttention(32, 20, 4, 8)':48s} x {tuple(x.shape)}, context {tuple(ctx.shape)} -> {tuple(y.shape)}")
        fmap = torch.randn(B, 64, 6, 6)
        y = SpatialAttention(64, n_head=2, groups=32, backend=be).eval()(fmap)
        print(f"{'SpatialAttention(64, n_head=2)':48s} {tuple(fmap.shape)} -> {tuple(y.shape)} (36 positions)")
        txt = torch.randn(B, 5, 24)
        y = SpatialTransformer(64, 4, context_dim=24, backend=be).eval()(fmap, txt)
        print(f"{'SpatialTransformer(64, 4, context_dim=24)':48s} {tuple(fmap.shape)} + context {tuple(txt.shape)} "
              f"-> {tuple(y.shape)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
