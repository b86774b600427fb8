"""What working in place saves in a GPT layer's attention, against copying.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_strided_views.py [--threads 1 2] [--backend cpu]
    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_strided_views.py --shape 12 64 4 32   # nanogpt-cpu

A GPT layer's q, k, v are (B, H, T, D) views of its fused (B, T, 3C) projection, and the gradient of
the attention output comes back as a (B, T, H, D) view. Three ways, fwd+bwd from the projection to
the merged (B, T, C) output, timed round-robin in one run (median):
  qkv_attention      ops.qkv_attention: q, k, v read and o, dqkv written in place (what GPT uses)
  strided views      ops.causal_attention on the views (read in place); the heads merged after, and
                     autograd assembling the projection's gradient from dq, dk, dv (copies, a cat)
  contiguous copies  the same after `.contiguous()` of q, k, v and dO, as a kernel without strides needs
The bytes of those four copies are printed as the temporaries saved per layer-step.
"""

import argparse

import torch

from babygpt_ext import ops
from babygpt_ext.bench.timing import time_interleaved
from babygpt_ext.ops.qkv_attention_op import merge_heads, split_heads
from babygpt_ext.train.precision import cpu_name


class _ContiguousGrad(torch.autograd.Function):
    """Identity forward; the backward hands on a contiguous copy of the incoming gradient."""

    @staticmethod
    def forward(ctx, t):
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--backend", default="cpu", help="a backend that takes strided inputs (default cpu)")
    p.add_argument("--shape", type=int, nargs=4, default=[4, 512, 12, 64], metavar=("B", "T", "H", "D"),
                   help="default: a GPT-2-small layer at batch 4 x 512")
    p.add_argument("--rounds", type=int, default=15)
    args = p.parse_args()
    b, t, h, d = args.shape
    c = h * d
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, t, 3 * c, generator=g, requires_grad=True)
    dy = torch.randn(b, t, c, generator=g)  # the gradient of the merged (B, T, C) output

    def step(copy: bool):
        def run():
            q, k, v = split_heads(x, h, h)  # (B, H, T, D) views
            if copy:
                q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
            o = ops.causal_attention(q, k, v, backend=args.backend)
            if copy:  # the gradient reaches o as a (B, H, T, D) view of dy: copied too
                o = _ContiguousGrad.apply(o)
            merge_heads(o).backward(dy)
            x.grad = None
        return run

    def in_place():
        ops.qkv_attention(x, h, backend=args.backend).backward(dy)
        x.grad = None

    saved_mib = 4 * b * t * c * x.element_size() / 2**20
    print(f"{cpu_name()}, torch {torch.__version__}; B{b} T{t} H{h} D{d} fp32 fwd+bwd,"
          f" backend {args.backend}; the four copies of `contiguous copies`: {saved_mib:.1f} MiB per layer-step")
    for n in args.threads:
        torch.set_num_threads(n)
        fns = {"qkv_attention": in_place, "strided views": step(False), "contiguous copies": step(True)}
        ms = {k: v * 1e3 for k, v in time_interleaved(fns, "cpu", rounds=args.rounds).items()}
        print(f"  {n} thread(s): " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items()) + "; / qkv_attention: "
              + ", ".join(f"{k} {v / ms['qkv_attention']:.3f}x" for k, v in ms.items() if k != "qkv_attention"))


if __name__ == "__main__":
    main()
