"""`babygpt bench`: every usable backend side by side, one shape at a time, as ratios."""

import json

import torch
from tqdm import tqdm

from ..bench.runner import AUTO, LAYOUTS, bench_attention, bench_backends, bench_lora, gemm_ceiling_tflops, runnable
from ..bench.shapes import ATTENTION_SHAPES, LORA_SHAPES, QUICK
from ..train.precision import cpu_name

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}

# op -> (bench function, its shapes, the head dim a shape's calls have): one entry per benchmarked op.
BENCHES = {
    "attention": (bench_attention, ATTENTION_SHAPES, lambda s: s.D),
    "lora": (bench_lora, LORA_SHAPES, lambda s: 0),
}

EPILOG = """\
Every backend is timed in every round (interleaved, median of --rounds), so the ratios hold on a
noisy shared machine; absolute times are only comparable on the same machine.
'speedup' is the baseline's time over the backend's time (attention: torch-sdpa, F.scaled_dot_product_attention
called directly; LoRA: eager, the composition a user writes);
'err' is the max abs difference from the eager backend in the same dtype; '%ceil' is the row's
TFLOP/s over the machine's own GEMM throughput (torch.mm 2048², measured first in the same run).
Attention runs on contiguous (B, H, T, D) inputs and on the 'gpt' layout, the strided q/k/v views a
GPT layer splits from its fused qkv projection (--layout). The 'auto' row is the
engine's own choice (backend=None), shown as auto→<backend>; its measuring happens before the
timed rounds. A backend that cannot run an op is left out of that op's table, with a note.

examples:
  babygpt bench --quick                       # a few seconds: small shapes, forward only
  babygpt bench --op attention --mode both    # forward and forward+backward, all shapes, both layouts
  babygpt bench --op attention --layout gpt --dtype bf16
  babygpt bench --device cuda --dtype bf16    # on a GPU: cuda vs triton vs sdpa vs eager
  babygpt bench --json bench.json             # the rows as JSON as well
  babygpt bench --backends eager,sdpa,cpu,auto --quick
  babygpt bench --op train --quick            # tokens/s of babygpt train's step vs a plain PyTorch loop
  babygpt bench --op decode                   # ms/token: KV cache vs recompute, batch 1 and 8
"""


def format_table(results, ceiling_tflops: float = 0.0) -> str:
    head = (f"{'op':<9} {'shape':<24} {'layout':<6} {'mode':<8} {'backend':<11} {'ms':>9} {'TFLOP/s':>8} "
            f"{'%ceil':>6} {'speedup':>8} {'err':>9}")
    rows = [head, "-" * len(head)]
    for r in results:
        backend = r.backend if r.runs in ("", r.backend) else f"{r.backend}→{r.runs}"
        share = f"{100 * r.tflops / ceiling_tflops:>5.0f}%" if ceiling_tflops else f"{'-':>6}"
        layout = r.layout if r.op == "attention" else "-"
        rows.append(f"{r.op:<9} {r.shape:<24} {layout:<6} {r.mode:<8} {backend:<11} {r.ms:>9.3f} {r.tflops:>8.4f} "
                    f"{share} {r.speedup:>7.2f}x {r.max_err:>9.2e}" + (f"  peak {r.peak_mb:.0f} MB" if r.peak_mb else ""))
    return "\n".join(rows)


def run(args) -> int:
    if args.op in ("train", "decode"):  # whole-model benchmarks: babygpt_ext/bench/train_step.py, decode.py
        from ..bench import decode, train_step
        return (train_step if args.op == "train" else decode).run_cli(args)
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("babygpt bench: --device cuda but no CUDA device is visible to torch")
    dtype = DTYPES[args.dtype or ("bf16" if device == "cuda" else "fp32")]
    modes = {"fwd": [False], "fwd+bwd": [True], "both": [False, True]}[args.mode]
    requested = [n.strip() for n in args.backends.split(",") if n.strip()] if args.backends else None
    cases, notes = [], []
    for op in BENCHES if args.op == "all" else [args.op]:
        fn, shapes, head_dim = BENCHES[op]
        for shape in shapes:
            if args.quick and shape.name not in QUICK:
                continue
            try:
                backends, left_out = runnable(requested or bench_backends(device, op), op, device, dtype, head_dim(shape))
            except ValueError as e:
                raise SystemExit(f"babygpt bench: --backends: {e}")
            notes += [n for n in left_out if n not in notes]
            if backends:
                cases.append((fn, shape, backends))
    layouts = LAYOUTS if args.layout == "both" else (args.layout,)
    ceiling = gemm_ceiling_tflops(device, dtype)
    results = []
    for fn, shape, backends in tqdm(cases, desc=f"bench on {device} ({args.dtype or dtype})", unit="shape"):
        for layout in layouts if fn is bench_attention else (None,):
            for backward in modes:
                extra = {"layout": layout} if layout else {}
                results += fn(shape, backends, device, dtype, backward, rounds=args.rounds, **extra)
    print(f"\ndevice: {torch.cuda.get_device_name(0) if device == 'cuda' else cpu_name()} "
          f"({torch.get_num_threads()} threads), dtype {dtype}, causal attention")
    name = str(dtype).replace("torch.", "")
    of = f"the faster of {name} and float32" if device == "cpu" and dtype != torch.float32 else name
    print(f"GEMM ceiling (torch.mm 2048², {of}): {ceiling:.3f} TFLOP/s")
    print(format_table(results, ceiling))
    for note in notes:
        print(f"note: {note}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1)
        print(f"\nwrote {args.json}")
    return 0


def register(sub) -> None:
    p = sub.add_parser("bench", help="time the backends side by side (attention and LoRA)",
                       description="Time causal attention and the fused LoRA linear on every backend usable "
                                   "for the device, on the benchmark shapes of docs/design.md §14.2.",
                       epilog=EPILOG)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if visible")
    p.add_argument("--dtype", choices=tuple(DTYPES), help="default: fp32 on the CPU, bf16 on CUDA")
    p.add_argument("--op", choices=(*BENCHES, "all", "train", "decode"), default="all",
                   help="train: babygpt train's step vs a plain-PyTorch loop (tokens/s); decode: KV cache vs "
                        "recompute (ms/token); neither is part of all")
    p.add_argument("--curve-steps", type=int, default=0, metavar="N",
                   help="--op train: also train reference, ours fp32 and ours bf16 for N steps and plot the "
                        "validation losses into --curve-png")
    p.add_argument("--curve-png", default="train_curves.png", help="where --curve-steps writes its plot")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--layout", choices=(*LAYOUTS, "both"), default="both",
                   help="attention inputs: contiguous tensors, a GPT layer's strided q/k/v views, or both")
    p.add_argument("--quick", action="store_true", help="only the small shapes")
    p.add_argument("--backends", help=f"comma-separated backends to compare, '{AUTO}' for the engine's choice "
                                      f"(default: all usable here, and {AUTO})")
    p.add_argument("--rounds", type=int, default=7, help="interleaved rounds; the median is reported")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.set_defaults(func=run)
