"""The CPU attention kernels against torch's own SDPA, called as a user calls it, side by side.

    .venv/bin/python benchmarks/cpu_attention_vs_sdpa.py                 # every shape, fp32 + bf16
    .venv/bin/python benchmarks/cpu_attention_vs_sdpa.py --shapes medium,long --dtypes float32
    .venv/bin/python benchmarks/cpu_attention_vs_sdpa.py --threads 1      # one core (a loaded machine)

The peer is raw `F.scaled_dot_product_attention(q, k, v, is_causal=True)`, never our `sdpa`
wrapper; ours is `ops.causal_attention(..., backend="cpu")` (validation and dispatch included).
Two input layouts: `contig` (three contiguous (B, H, T, D) tensors) and `gpt` (a GPT layer's
attention from its (B, T, 3C) projection to (B, T, C): the peer splits, transposes, runs SDPA and
merges the heads, as nanoGPT does; ours is `ops.qkv_attention(..., backend="cpu")`). Rounds are
interleaved (sdpa, ours, sdpa, ...) and the median of each is kept, so load on a shared machine
hits both alike; compare the ratio. The machine's own ceiling is printed first: torch.mm 2048²
in each dtype on the same cores, and each row's GFLOP/s as a share of the faster of the dtype's
and float32's (a CPU without bf16 units computes bf16 in float32).
"""

import argparse
import statistics
import time

import torch

from babygpt_ext.bench.runner import PEER, attention_call, gemm_ceiling_tflops
from babygpt_ext.train.precision import cpu_name

# name: (B, H, T, D), as in babygpt_ext/bench/shapes.py, plus the long-context xl shape.
SHAPES = {"babygpt": (16, 4, 32, 4), "nanogpt-cpu": (12, 4, 64, 32), "medium": (4, 8, 512, 64),
          "long": (1, 8, 2048, 64), "xl": (1, 16, 4096, 128)}


def inputs(shape, dtype, layout, grad):
    """The inputs of the layout: (qkv,) for gpt, (q, k, v) for contig."""
    B, H, T, D = shape
    if layout == "gpt":
        return (torch.randn(B, T, 3 * H * D, dtype=dtype).requires_grad_(grad),)
    return tuple(torch.randn(B, H, T, D, dtype=dtype).requires_grad_(grad) for _ in range(3))


def calls(H, layout):
    """(SDPA as users call it, ours) for the layout, as `babygpt bench` times them."""
    return attention_call(PEER, layout, H, H), attention_call("cpu", layout, H, H)


def median_time(fn, reps: int) -> float:
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated names of " + ", ".join(SHAPES))
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated torch dtypes")
    p.add_argument("--layouts", default="contig,gpt")
    p.add_argument("--modes", default="fwd,fwd+bwd")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per row (median kept)")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")]
    print(f"CPU: {cpu_name()}; {torch.get_num_threads()} threads; torch {torch.__version__}")
    # A CPU without bf16/fp16 units computes those in float32, so a dtype's ceiling is the faster of
    # its GEMM and fp32's (gemm_ceiling_tflops).
    ceiling = {dt: gemm_ceiling_tflops("cpu", dt) * 1e3 for dt in dtypes}
    print("GEMM ceiling (torch.mm 2048²): " + ", ".join(f"{str(dt)[6:]} {g:.1f} GFLOP/s" for dt, g in ceiling.items()))
    print(f"{'shape':12s} {'dtype':9s} {'layout':6s} {'mode':8s} {'sdpa ms':>9s} {'cpu ms':>9s} {'speedup':>8s} "
          f"{'GFLOP/s':>8s} {'% ceil':>7s}")
    for name in args.shapes.split(","):
        B, H, T, D = SHAPES[name]
        for dt in dtypes:
            for layout in args.layouts.split(","):
                for mode in args.modes.split(","):
                    grad = mode == "fwd+bwd"
                    leaves = inputs(SHAPES[name], dt, layout, grad)
                    sdpa, ours = calls(H, layout)
                    do = torch.randn(ours(*leaves).shape, dtype=dt)

                    def call(fn):
                        o = fn(*leaves)
                        if grad:
                            torch.autograd.grad(o, leaves, do)

                    flop = 2 * B * H * T * T * D * (1 + 2.5 * grad)  # causal: half of 4·B·H·T²·D per pass
                    reps = max(3, min(50, int(2e9 / flop)))
                    call(sdpa), call(ours)  # warm-up
                    a, b = [], []
                    for _ in range(args.rounds):
                        a.append(median_time(lambda: call(sdpa), reps))
                        b.append(median_time(lambda: call(ours), reps))
                    ta, tb = statistics.median(a), statistics.median(b)
                    gf = flop / tb / 1e9
                    print(f"{name:12s} {str(dt)[6:]:9s} {layout:6s} {mode:8s} {ta * 1e3:9.3f} {tb * 1e3:9.3f} "
                          f"{ta / tb:7.2f}x {gf:8.1f} {100 * gf / ceiling[dt]:6.1f}%", flush=True)


if __name__ == "__main__":
    main()
