"""Peak extra memory of one CPU attention call as the context grows: ours against torch's SDPA.

    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_peak_memory.py
    PYTHONPATH=$PWD .venv/bin/python benchmarks/attention_peak_memory.py --T 2048 4096 8192 --dtypes fp32 bf16

Shape: B1 H16 D128 (the bench's `xl` head layout), causal, contiguous q/k/v. "Extra" is the
process's peak resident memory during one call (Linux VmHWM, reset through /proc/self/clear_refs)
minus its resident memory just before, with q, k, v (and, for fwd+bwd, the output gradient)
already allocated: the output, the saved statistics, the gradients and every workspace count.
Each measurement runs in a fresh process: the C allocator keeps freed memory for reuse, so a
second call in the same process would report less than a user's first call takes.

Linear in T means the "MB per 1k T" column stays flat. Beside it: the T x T score matrix an
unfused attention holds per call (B·H·T² floats), which is what the fused kernels avoid.
Linux only (the numbers come from /proc).
"""

import argparse
import multiprocessing
import re

DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
BACKENDS = ("cpu", "torch-sdpa")
B, H, D = 1, 16, 128


def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.M).group(1))


def _measure(backend: str, T: int, dtype_name: str, backward: bool, threads: int) -> float:
    """MB the call adds at its peak (runs in a child process)."""
    import torch
    import torch.nn.functional as F

    from babygpt_ext import ops

    torch.set_num_threads(threads)
    dtype = getattr(torch, dtype_name)

    def call(q, k, v):
        if backend == "torch-sdpa":
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return ops.causal_attention(q, k, v, backend=backend)

    def step(T_):
        q, k, v = (torch.randn(B, H, T_, D, dtype=dtype).requires_grad_(backward) for _ in range(3))
        grad = torch.randn(B, H, T_, D, dtype=dtype) if backward else None
        return q, k, v, grad

    # Load the kernels and start the thread pool on a tiny call, outside the measurement.
    q, k, v, g = step(16)
    out = call(q, k, v)
    if backward:
        out.backward(g)
    del q, k, v, g, out

    q, k, v, g = step(T)
    before = _rss_kb("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM to the current resident size
    out = call(q, k, v)
    if backward:
        out.backward(g)
    return (_rss_kb("VmHWM") - before) / 1024


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--T", type=int, nargs="+", default=[1024, 2048, 4096, 8192], help="context lengths")
    p.add_argument("--dtypes", nargs="+", default=["fp32"], choices=list(DTYPES))
    p.add_argument("--modes", nargs="+", default=["fwd", "fwd+bwd"], choices=["fwd", "fwd+bwd"])
    p.add_argument("--backends", nargs="+", default=list(BACKENDS), help="ours (cpu) and the peer (torch-sdpa)")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    try:
        open("/proc/self/clear_refs", "w").close()
    except OSError as e:
        p.error(f"needs Linux's /proc/self/clear_refs to reset the peak resident size ({e})")

    ctx = multiprocessing.get_context("spawn")
    print(f"B{B} H{H} D{D}, causal, {args.threads} threads; extra = peak resident memory of one call minus "
          "the memory before it")
    print(f"{'dtype':5} {'mode':8} {'T':>5} {'backend':11} {'extra MB':>9} {'MB per 1k T':>11} {'inputs MB':>9} "
          f"{'T x T scores MB':>15}")
    for dt in args.dtypes:
        itemsize = 4 if dt == "fp32" else 2
        for mode in args.modes:
            for T in args.T:
                for backend in args.backends:
                    with ctx.Pool(1) as pool:
                        mb = pool.apply(_measure, (backend, T, DTYPES[dt], mode == "fwd+bwd", args.threads))
                    inputs_mb = 3 * B * H * T * D * itemsize / 2**20
                    scores_mb = B * H * T * T * 4 / 2**20
                    print(f"{dt:5} {mode:8} {T:5} {backend:11} {mb:9.1f} {mb / T * 1024:11.1f} {inputs_mb:9.1f} "
                          f"{scores_mb:15.0f}", flush=True)


if __name__ == "__main__":
    main()
