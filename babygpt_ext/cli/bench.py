"""`babygpt bench`: every usable backend side by side, one shape at a time, as ratios."""

import argparse
import json

import torch
from tqdm import tqdm

from ..bench.runner import bench_attention, bench_backends, bench_lora
from ..bench.shapes import ATTENTION_SHAPES, LORA_SHAPES, QUICK

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

EPILOG = """\
Every backend is timed in every round (interleaved, median of --rounds), so the ratios hold on a
noisy shared machine; absolute times are only comparable on the same machine.
'speedup' is the baseline's time over the backend's time (baseline: sdpa where it runs, else eager);
'err' is the max abs difference from the eager backend in the same dtype.

examples:
  babygpt bench --quick                       # a few seconds: small shapes, forward only
  babygpt bench --op attention --mode both    # forward and forward+backward, all shapes
  babygpt bench --device cuda --dtype bf16    # on a GPU: cuda vs triton vs sdpa vs eager
  babygpt bench --json bench.json             # the rows as JSON as well
"""


def format_table(results) -> str:
    head = f"{'op':<9} {'shape':<24} {'mode':<8} {'backend':<8} {'ms':>9} {'TFLOP/s':>8} {'speedup':>8} {'err':>9}"
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.op:<9} {r.shape:<24} {r.mode:<8} {r.backend:<8} {r.ms:>9.3f} {r.tflops:>8.4f} "
                    f"{r.speedup:>7.2f}x {r.max_err:>9.2e}" + (f"  peak {r.peak_mb:.0f} MB" if r.peak_mb else ""))
    return "\n".join(rows)


def run(args) -> int:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("babygpt bench: --device cuda but no CUDA device is visible to torch")
    dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    modes = {"fwd": [False], "fwd+bwd": [True], "both": [False, True]}[args.mode]
    cases = []
    if args.op in ("attention", "all"):
        cases += [(bench_attention, s) for s in ATTENTION_SHAPES if not args.quick or s.name in QUICK]
    if args.op in ("lora", "all"):
        cases += [(bench_lora, s) for s in LORA_SHAPES if not args.quick or s.name in QUICK]
    results = []
    for fn, shape in tqdm(cases, desc=f"bench on {device} ({args.dtype or dtype})", unit="shape"):
        op = "attention" if fn is bench_attention else "lora"
        backends = args.backends.split(",") if args.backends else bench_backends(device, op)
        for backward in modes:
            results += fn(shape, backends, device, dtype, backward, rounds=args.rounds)
    print(f"\ndevice: {torch.cuda.get_device_name(0) if device == 'cuda' else 'CPU'} "
          f"({torch.get_num_threads()} threads), dtype {dtype}, causal attention")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the backends side by side (attention and LoRA)",
                       description="Time causal attention and the fused LoRA linear on every backend usable "
                                   "for the device, on the benchmark shapes of docs/design.md §14.2.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if visible")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--op", choices=("attention", "lora", "all"), default="all")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--quick", action="store_true", help="only the small shapes")
    p.add_argument("--backends", help="comma-separated backends to compare (default: all usable here)")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)
