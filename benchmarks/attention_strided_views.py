"""What reading q/k/v/dO in place through strides saves in a GPT layer, against copying them first.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_strided_views.py [--threads 1 2] [--backend cpu]

A GPT layer's q, k, v are (B, H, T, D) views of its fused (B, T, 3C) projection, and the gradient of
the attention output comes back as a (B, T, H, D) view. The kernels take strides, so they read these
in place; the peer is the same call after `.contiguous()` of all four, the copies a kernel without
strides would need. Both are timed round-robin in one run (fwd+bwd, median), and the bytes of the
four copies are the temporaries saved per layer-step.
"""

import argparse

import torch

from babygpt_ext import ops
from babygpt_ext.bench.timing import time_interleaved
from babygpt_ext.train.precision import cpu_name


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
    dy = torch.randn(b, t, h, d, generator=g).transpose(1, 2)  # (B, H, T, D) view of a (B, T, H, D) grad

    def step(copy: bool):
        def run():
            q, k, v = (s.view(b, t, h, d).transpose(1, 2) for s in x.split(c, dim=2))  # (B, H, T, D) views
            grad = dy
            if copy:
                q, k, v, grad = q.contiguous(), k.contiguous(), v.contiguous(), dy.contiguous()
            ops.causal_attention(q, k, v, backend=args.backend).backward(grad)
            x.grad = None
        return run

    saved_mib = 4 * b * t * c * x.element_size() / 2**20
    print(f"{cpu_name()}, torch {torch.__version__}; B{b} T{t} H{h} D{d} fp32 fwd+bwd,"
          f" backend {args.backend}; copies avoided per layer-step: {saved_mib:.1f} MiB")
    for n in args.threads:
        torch.set_num_threads(n)
        fns = {"strided views": step(False), "contiguous copies": step(True)}
        ms = {k: v * 1e3 for k, v in time_interleaved(fns, "cpu", rounds=args.rounds).items()}
        print(f"  {n} thread(s): strided views {ms['strided views']:.1f} ms, contiguous copies "
              f"{ms['contiguous copies']:.1f} ms, copies / strided {ms['contiguous copies'] / ms['strided views']:.3f}x")


if __name__ == "__main__":
    main()
