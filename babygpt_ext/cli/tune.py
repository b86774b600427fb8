"""`babygpt tune`: measure the engine's choice ahead of time for the benchmark shapes and a preset's
calls, so a training run or a benchmark starts with every decision in the tuning cache."""

import os
import time

import torch

from ..bench.shapes import ATTENTION_SHAPES, LORA_SHAPES
from ..models.gpt import GPTConfig
from ..models.presets import PRESETS
from ..ops import OPS, duration, engine, measure, tuning_cache
from ..ops.spec import Call

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
LORA_RANK = 8  # babygpt_ext.lora.inject's default

EPILOG = f"""\
Each call key (op, device, dtype, head dim, heads, causal, grads or not, sizes bucketed by powers of
two) is timed on every backend that can take it, within a budget of about {measure.BUDGET_S * 1e3:.0f} ms
per key (a key whose single call takes longer costs a few calls per backend). Keys already in the
cache are shown, not measured again, unless --force.

examples:
  babygpt tune                                              # the benchmark shapes, fp32 on the CPU
  babygpt tune --preset shakespeare-cpu --batch-size 12     # also that model's training, eval and decoding calls
  babygpt tune --dtype fp32,bf16 --force                    # measure again
"""


def _attention(b, h, hkv, tq, tk, d, grad, op="attention"):
    return Call(op, "", None, d, (("H", h), ("Hkv", hkv), ("causal", True), ("Tq<=", tq), ("Tk<=", tk), ("B<=", b)),
                grad)


def _lora(n, d_in, d_out, bias, grad):
    return Call("lora", "", None, 0, (("in", d_in), ("out", d_out), ("r", LORA_RANK), ("bias", bias),
                                     ("base_grad", False), ("N<=", n)), grad)


def benchmark_calls(modes) -> list:
    calls = [_attention(s.B, s.H, s.kv_heads, s.T, s.T, s.D, g) for s in ATTENTION_SHAPES for g in modes]
    return calls + [Call("lora", "", None, 0, (("in", s.d_in), ("out", s.d_out), ("r", s.r), ("bias", True),
                                                ("base_grad", False), ("N<=", s.N)), g)
                    for s in LORA_SHAPES for g in modes]


def preset_calls(preset: str, batch_size: int, modes) -> list:
    """The calls a GPT of this preset makes: training (fwd+bwd) and evaluation (fwd) at full context
    (qkv_attention on its projection), decoding one token with a KV cache at every power-of-two
    context, and its LoRA-adapted projections (c_attn, c_proj) with the base frozen."""
    c = GPTConfig.from_preset(preset)
    h, hkv, d, t = c.n_head, c.n_kv_head or c.n_head, c.n_embd // c.n_head, c.block_size
    calls = [_attention(batch_size, h, hkv, t, t, d, g, op="qkv_attention") for g in modes]
    calls += [_attention(1, h, hkv, 1, 1 << e, d, False) for e in range(1, t.bit_length()) if 1 << e <= t]
    n = batch_size * t
    calls += [_lora(n, c.n_embd, 3 * c.n_embd, c.bias, g) for g in modes]
    return calls + [_lora(n, c.n_embd, c.n_embd, c.bias, g) for g in modes]


def lookup_overhead_s(spec, args, rounds: int = 20, n: int = 5000) -> tuple:
    """(seconds of the engine's per-call work once a key is decided, the same for one os.environ.get
    as a yardstick of this machine's speed right now): the fastest of `rounds` rounds, as load on
    the machine only adds time."""
    engine.run(spec, args, None)  # decide the key

    def per_call(fn):
        samples = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            samples.append((time.perf_counter() - t0) / n)
        return min(samples)
    return per_call(lambda: engine.implementation(spec, args, None)), per_call(lambda: os.environ.get("HOME"))


def run(args) -> int:
    device = args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("babygpt tune: --device cuda but no CUDA device is visible to torch")
    if not engine.tuning_enabled():
        raise SystemExit(f"babygpt tune: {engine.TUNE_VAR}=0 turns measuring off; unset it to tune")
    names = [n.strip() for n in (args.dtype or ("bf16" if device == "cuda" else "fp32")).split(",")]
    if bad := [n for n in names if n not in DTYPES]:
        raise SystemExit(f"babygpt tune: --dtype {','.join(bad)} is not one of {', '.join(DTYPES)}")
    measure.BUDGET_S = args.budget_ms / 1e3
    modes = {"fwd": [False], "fwd+bwd": [True], "both": [False, True]}[args.mode]
    shapes = benchmark_calls(modes) + (preset_calls(args.preset, args.batch_size, modes) if args.preset else [])
    print(f"tuning cache: {tuning_cache.path()}")
    begin, measured = time.perf_counter(), 0
    for dtype in (DTYPES[n] for n in names):
        for shape in shapes:
            spec = OPS[shape.op]
            call_args = spec.make_args(shape, device, dtype, shape.needs_grad)
            call = engine.call_of(spec, call_args)
            cached = not args.force and tuning_cache.lookup(call) is not None
            d = engine.decision(spec, call_args, None, call, force=args.force)
            measured += not cached
            times = "  ".join(f"{n} {duration(t)}" for n, t in sorted(d.times.items(), key=lambda x: x[1]))
            print(f"{'cached ' if cached else 'tuned  '} {call.label()}\n          -> {d.backend}   {times or d.how}")
    spec = OPS["attention"]
    small = spec.make_args(_attention(1, 2, 2, 8, 8, 16, False), device, torch.float32, False)
    overhead, yardstick = lookup_overhead_s(spec, small)
    print(f"done: {measured} keys measured in {time.perf_counter() - begin:.1f} s; the engine's work per call once "
          f"a key is decided: {overhead * 1e6:.2f} µs (one os.environ.get here now: {yardstick * 1e6:.2f} µs)")
    return 0


def register(sub) -> None:
    p = sub.add_parser("tune", help="measure the engine's backend choices ahead of time (the tuning cache)",
                       description="Measure which backend is fastest for every call key of the benchmark shapes "
                                   "and, with --preset, of that model's calls; the decisions go to the tuning "
                                   "cache, where every later process finds them.",
                       epilog=EPILOG)
    p.add_argument("--preset", choices=tuple(PRESETS), help="also the calls of this GPT preset")
    p.add_argument("--batch-size", type=int, default=12, help="the preset's batch size (default 12)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="default: cuda if visible")
    p.add_argument("--dtype", help="comma-separated: fp32, fp16, bf16 (default: fp32 on the CPU, bf16 on CUDA)")
    p.add_argument("--mode", choices=("fwd", "fwd+bwd", "both"), default="both")
    p.add_argument("--budget-ms", type=float, default=measure.BUDGET_S * 1e3, help="measuring budget per key")
    p.add_argument("--force", action="store_true", help="measure keys that are already cached again")
    p.set_defaults(func=run)
