"""The CPU LoRA kernels against the eager composition users would write, at the LoRA shapes.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/lora_cpu_vs_eager.py [--threads 1 2] [--dtypes fp32 bf16]

The peer is `F.linear(x, W, b) + scale * F.linear(F.linear(x, A), B)` under autograd, called raw
(not through babygpt_ext.ops); ours is `ops.lora_linear(..., backend="cpu")` as users call it.
Modes: fwd, fwd+bwd with a frozen base (x, A, B trainable: LoRA fine-tuning) and fwd+bwd with a
trainable base (the weight and bias get gradients too). Both are timed round-robin in one run
(babygpt_ext.bench.timing), so a loaded machine slows both alike; the ratio is eager / ours.
"""

import argparse

import torch
import torch.nn.functional as F

from babygpt_ext import ops
from babygpt_ext.bench.shapes import LORA_SHAPES
from babygpt_ext.bench.timing import time_interleaved
from babygpt_ext.train.precision import cpu_name

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MODES = ("fwd", "fwd+bwd frozen", "fwd+bwd trainable")
SCALE = 2.0


def eager(x, w, b, a, bm):
    return F.linear(x, w, b) + SCALE * F.linear(F.linear(x, a), bm)


def ours(x, w, b, a, bm):
    return ops.lora_linear(x, w, b, a, bm, SCALE, backend="cpu")


def steps(shape, dtype, mode):
    """One zero-argument step per implementation, on shared inputs."""
    g = torch.Generator().manual_seed(0)
    backward, trainable = mode != "fwd", mode == "fwd+bwd trainable"
    mk = lambda *s, grad: (torch.randn(*s, generator=g) * 0.1).to(dtype).requires_grad_(grad)
    inputs = (mk(shape.N, shape.d_in, grad=backward), mk(shape.d_out, shape.d_in, grad=trainable),
              mk(shape.d_out, grad=trainable), mk(shape.r, shape.d_in, grad=backward),
              mk(shape.d_out, shape.r, grad=backward))
    dy = torch.randn(shape.N, shape.d_out, generator=g).to(dtype)

    def step(fn):
        def run():
            y = fn(*inputs)
            if backward:
                y.backward(dy)
        return run
    return {"eager": step(eager), "cpu": step(ours)}


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=list(DTYPES))
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument("--shapes", nargs="+", default=[s.name.split()[0] for s in LORA_SHAPES],
                   help="shape names of babygpt_ext/bench/shapes.py (first word)")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    print(f"CPU: {cpu_name()}, torch {torch.__version__}, "
          f"capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"{'shape':24} {'dtype':5} {'mode':18} {'thr':>3} {'eager ms':>9} {'cpu ms':>9} {'speedup':>8}")
    for shape in [s for s in LORA_SHAPES if s.name.split()[0] in args.shapes]:
        for dt in args.dtypes:
            for mode in args.modes:
                for threads in args.threads:
                    torch.set_num_threads(threads)
                    t = time_interleaved(steps(shape, DTYPES[dt], mode), "cpu", rounds=args.rounds)
                    print(f"{shape.name:24} {dt:5} {mode:18} {threads:3} {t['eager'] * 1e3:9.3f} "
                          f"{t['cpu'] * 1e3:9.3f} {t['eager'] / t['cpu']:7.2f}x", flush=True)


if __name__ == "__main__":
    main()
