"""The fused CPU LayerNorm against what a GPT block ran before it, at the model's (N, C) shapes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/layer_norm_cpu_vs_eager.py [--threads 1 2] [--modes bf16-autocast fp32]

The peer is what nn.LayerNorm followed by a Linear costs: under bf16 autocast `F.layer_norm(x, (C,),
w, b).to(torch.bfloat16)` (the LayerNorm in float32, then the cast the Linear makes, and both
backwards), in float32 `F.layer_norm(x, (C,), w, b)`. Ours is `ops.layer_norm(x, w, b,
backend="cpu")`, whose output is bf16 under autocast. x is float32 (the residual stream) and w, b
are float32 in every mode; fwd+bwd gives all three gradients. Both are timed round-robin in one run
(babygpt_ext.bench.timing), so a loaded machine slows both alike; the ratio is eager / ours.
"""

import argparse

import torch
import torch.nn.functional as F

from babygpt_ext import ops
from babygpt_ext.bench.timing import time_interleaved
from babygpt_ext.train.precision import cpu_name

# (N, C): B12 T64 C128 (the profiled training step), B16 T64 C192, B8 T128 C768 (GPT-2 small's width)
SHAPES = [(768, 128), (1024, 192), (1024, 768)]
MODES = {"bf16-autocast": torch.bfloat16, "fp32": None}


def eager(x, w, b, out_dtype):
    y = F.layer_norm(x, (x.shape[-1],), w, b)
    return y if out_dtype is None else y.to(out_dtype)


def ours(x, w, b, out_dtype):
    return ops.layer_norm(x, w, b, backend="cpu")


def steps(n, c, autocast_dtype, backward):
    """One zero-argument step per implementation, on shared inputs."""
    g = torch.Generator().manual_seed(0)
    mk = lambda *s: (torch.randn(*s, generator=g) + 1.0).requires_grad_(backward)  # noqa: E731
    x, w, b = mk(n, c), mk(c), mk(c)
    dy = torch.randn(n, c, generator=g).to(autocast_dtype or torch.float32)

    def step(fn):
        def run():
            with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
                y = fn(x, w, b, autocast_dtype)
            if backward:
                y.backward(dy)
        return run
    return {"eager": step(eager), "cpu": step(ours)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'N x C':12} {'mode':14} {'pass':8} {'thr':>3} {'eager us':>9} {'cpu us':>9} {'speedup':>8}")
    for n, c in SHAPES:
        for mode in args.modes:
            for backward in (False, True):
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    t = time_interleaved(steps(n, c, MODES[mode], backward), "cpu", rounds=args.rounds)
                    print(f"{f'{n} x {c}':12} {mode:14} {'fwd+bwd' if backward else 'fwd':8} {threads:3} "
                          f"{t['eager'] * 1e6:9.1f} {t['cpu'] * 1e6:9.1f} {t['eager'] / t['cpu']:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
