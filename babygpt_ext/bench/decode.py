"""Decoding speed: ms per generated token with the KV cache against recomputing the context.

    rows = bench_decode(DECODE_SHAPES[0], rounds=3)

The model is gpt-mini with its context stretched to 1024 positions (random weights: speed does not
depend on what the weights say). Each round generates max_new tokens from the same prompt with
the cache and without it (alternating which goes first), greedy, and checks that both produce the
same tokens. batch > 1 is `babygpt sample --num-samples N`: N continuations as one batch, so a step
yields N tokens; ms/token is per step (one column), tok/s counts every row.
"""

import statistics
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from ..models import GPT, GPTConfig
from .runner import AUTO


@dataclass(frozen=True)
class DecodeShape:
    name: str
    preset: str
    block: int
    batch: int
    prompt: int
    new_tokens: int
    vocab: int = 1000


DECODE_SHAPES = [
    DecodeShape("gpt-mini ctx1024 B1", "gpt-mini", 1024, 1, 16, 512),
    DecodeShape("gpt-mini ctx1024 B8", "gpt-mini", 1024, 8, 16, 512),
]


@dataclass
class DecodeResult:
    shape: str
    backend: str
    cache_ms_per_step: float
    recompute_ms_per_step: float
    speedup: float
    cache_tok_s: float  # tokens of every row per second
    same_tokens: bool
    weights_mb: float  # the weights a cached step reads (all but the position table: one row of it)

    def as_dict(self) -> dict:
        return asdict(self)


def _timed_generate(model, idx, n, kv_cache):
    t0 = time.perf_counter()
    out = model.generate(idx, n, temperature=0.0, kv_cache=kv_cache)
    return time.perf_counter() - t0, out


def bench_decode(shape: DecodeShape, rounds: int = 3, backend: Optional[str] = None,
                 recompute: bool = True) -> DecodeResult:
    """Median seconds of `rounds` generations of shape.new_tokens tokens, cache vs recompute."""
    cfg = GPTConfig.from_preset(shape.preset, vocab_size=shape.vocab, block_size=shape.block, backend=backend)
    torch.manual_seed(0)
    model = GPT(cfg).eval()
    idx = torch.randint(0, shape.vocab, (shape.batch, shape.prompt), generator=torch.Generator().manual_seed(0))
    _timed_generate(model, idx, 8, True)  # warm up: first calls allocate and load
    times = {True: [], False: []}
    outs = {}
    for r in range(rounds):
        for kv in ((True, False) if r % 2 == 0 else (False, True)):
            if kv or recompute:
                dt, outs[kv] = _timed_generate(model, idx, shape.new_tokens, kv)
                times[kv].append(dt)
    cache_s = statistics.median(times[True]) / shape.new_tokens
    re_s = statistics.median(times[False]) / shape.new_tokens if recompute else float("nan")
    same = bool(torch.equal(outs[True], outs[False])) if recompute else True
    weights = sum(p.numel() * p.element_size() for p in model.parameters()) - \
        model.transformer.wpe.weight.numel() * model.transformer.wpe.weight.element_size()
    return DecodeResult(shape.name, backend or "auto", cache_s * 1e3, re_s * 1e3, re_s / cache_s,
                        shape.batch / cache_s, same, weights / 1e6)


def read_bandwidth(nbytes: int, rounds: int = 20) -> float:
    """GB/s at which this machine reads a float32 buffer of nbytes again and again (torch.sum, median
    of `rounds`): the ceiling of a decoding step, which reads every weight once."""
    x = torch.ones(max(1, nbytes // 4))
    x.sum()
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        x.sum()
        times.append(time.perf_counter() - t0)
    return nbytes / statistics.median(times) / 1e9


def format_decode_table(results: List[DecodeResult]) -> str:
    head = (f"{'shape':<22} {'backend':<8} {'cache ms/tok':>12} {'recompute ms/tok':>16} {'speedup':>8} "
            f"{'cache tok/s':>11} {'same tokens':>11}")
    rows = [head, "-" * len(head)]
    for r in results:
        timed = r.recompute_ms_per_step == r.recompute_ms_per_step  # NaN: recompute was not run
        versus = f"{r.recompute_ms_per_step:>16.2f} {r.speedup:>7.1f}x" if timed else f"{'(not run)':>16} {'':>8}"
        rows.append(f"{r.shape:<22} {r.backend:<8} {r.cache_ms_per_step:>12.3f} {versus} {r.cache_tok_s:>11,.0f} "
                    f"{str(r.same_tokens) if timed else '-':>11}")
    return "\n".join(rows)


def run_cli(args) -> int:
    """`babygpt bench --op decode`: ms per token with the KV cache and with recompute."""
    from tqdm import tqdm

    from ..train.precision import cpu_name
    if args.backends and "," in args.backends:
        raise SystemExit(f"babygpt bench --op decode: --backends takes one attention backend for our model, "
                         f"got {args.backends!r}")
    shapes = [s for s in DECODE_SHAPES if not args.quick or s.batch == 1]
    # Recompute is the peer of the single-row case only: a batch's row costs it as much again.
    results = [bench_decode(s, rounds=min(args.rounds, 3), backend=None if args.backends == AUTO else args.backends,
                            recompute=s.batch == 1) for s in tqdm(shapes, desc="bench decode", unit="shape")]
    print(f"\nCPU: {cpu_name()} ({torch.get_num_threads()} threads); gpt-mini with a 1024-position context, "
          f"prompt {shapes[0].prompt} tokens, {shapes[0].new_tokens} new tokens, greedy, fp32")
    print(format_decode_table(results))
    gbs = read_bandwidth(int(results[0].weights_mb * 1e6))
    print(f"a cached step reads {results[0].weights_mb:.1f} MB of weights; this machine reads that much at "
          f"{gbs:.1f} GB/s (torch.sum), so the floor is {results[0].weights_mb / gbs:.3f} ms per step")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1)
        print(f"\nwrote {args.json}")
    return 0
