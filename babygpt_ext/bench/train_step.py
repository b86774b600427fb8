"""Training-step throughput: `babygpt train`'s step against the hand-written PyTorch loop.

    rows = bench_train(TRAIN_SHAPES[0], rounds=5)       # tokens/s of ours and of the reference

Ours is exactly what `babygpt train` runs per step: the Trainer's train_step on a GPT (its
optimizer, clipping, the dtype `--dtype auto` picks here). The peer is reference_loop.py: the same
architecture written by hand in plain PyTorch (fp32, SDPA, foreach AdamW). Both start from the same
weights and take the same batches, so their losses stay together (printed as a check) while the
steps are timed in alternating blocks (the ratio survives a noisy shared machine).

bench_curves() trains the reference and ours (fp32 and bf16) for many steps on a real corpus and
reports each one's validation loss, plotting the three curves in one PNG.
"""

import contextlib
import shutil
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from ..models import GPT, GPTConfig
from .reference_loop import ReferenceGPT, ReferenceLoop
from .runner import AUTO


@dataclass(frozen=True)
class TrainShape:
    name: str
    preset: str
    batch: int
    block: int
    vocab: int  # the tokenizer's size in the run this shape stands for
    steps_per_round: int = 4  # optimizer steps per timed block (1 where a step takes seconds)
    overrides: tuple = ()  # (GPTConfig field, value) pairs replacing the preset's (e.g. tiny test models)

    @property
    def tokens(self) -> int:
        return self.batch * self.block


TRAIN_SHAPES = [
    TrainShape("shakespeare-cpu B12xT64", "shakespeare-cpu", 12, 64, 103),  # char tokens of the pydoc corpus
    TrainShape("shakespeare-cpu B16xT64", "shakespeare-cpu", 16, 64, 103),  # the demo's batch
    TrainShape("gpt-mini B8xT128", "gpt-mini", 8, 128, 1000),
    TrainShape("gpt2 B1xT1024", "gpt2", 1, 1024, 50257, steps_per_round=1),
]
QUICK_TRAIN = ("shakespeare-cpu B12xT64", "shakespeare-cpu B16xT64")


@dataclass
class TrainResult:
    shape: str
    dtype: str  # what ours ran in (the reference is always fp32)
    ours_ms: float
    ref_ms: float
    ours_tok_s: float
    ref_tok_s: float
    speedup: float
    cpu_speedup: float  # the same ratio in process CPU time: steadier when other jobs share the cores
    ours_loss: float  # after the timed steps, from the same weights and batches
    ref_loss: float
    peak_rss_gb: Optional[float]

    def as_dict(self) -> dict:
        return asdict(self)


def _peak_rss_gb() -> Optional[float]:
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB
    except ImportError:
        return None


def make_pair(shape: TrainShape, dtype: str = "auto", backend: Optional[str] = None, seed: int = 0, **schedule):
    """(ours: a Trainer on a fresh GPT, ref: a ReferenceLoop on a copy of its initial weights).
    schedule: TrainConfig fields (default: a constant learning rate of 1e-3)."""
    from ..train import TrainConfig, Trainer
    cfg = GPTConfig.from_preset(shape.preset, **{"vocab_size": shape.vocab, "block_size": shape.block,
                                                 "backend": backend, **dict(shape.overrides)})
    torch.manual_seed(seed)
    model = GPT(cfg)
    ref_model = ReferenceGPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    ref_model.load_state_dict(model.state_dict())
    tokens = torch.randint(0, shape.vocab, (shape.block + 2,))  # the Trainer wants data; batches come from us
    schedule = {"max_iters": 1000, "warmup_iters": 0, "lr": 1e-3, "min_lr": 1e-3, **schedule}
    tcfg = TrainConfig(batch_size=shape.batch, block_size=shape.block, autocast_dtype=dtype, progress=False,
                       seed=seed, **schedule)
    trainer = Trainer(model, tokens, tokens, tcfg, out_dir=tempfile.mkdtemp(prefix="babygpt-bench-"))
    ref = ReferenceLoop(ref_model, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(tcfg.beta1, tcfg.beta2),
                        grad_clip=tcfg.grad_clip)
    return trainer, ref


def discard(trainer) -> None:
    """Release and delete a benchmark Trainer's scratch run directory."""
    trainer.close()
    shutil.rmtree(trainer.out_dir, ignore_errors=True)


def bench_train(shape: TrainShape, rounds: int = 5, dtype: str = "auto", backend: Optional[str] = None) -> TrainResult:
    """Median ms per optimizer step of ours and of the reference, timed in alternating blocks."""
    trainer, ref = make_pair(shape, dtype, backend)
    steps_per_round = shape.steps_per_round
    warmup = min(3, steps_per_round)
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, shape.vocab, (shape.batch, shape.block), generator=g),
                torch.randint(0, shape.vocab, (shape.batch, shape.block), generator=g)) for _ in range(8)]
    runs = {"ours": lambda x, y: trainer.train_step([(x, y)])["train_loss"], "ref": ref}
    last = {}
    n = 0

    def block(name, steps):
        nonlocal n
        t0, c0 = time.perf_counter(), time.process_time()
        for i in range(steps):
            x, y = batches[(n + i) % len(batches)]
            last[name] = runs[name](x, y)
        return (time.perf_counter() - t0) / steps, (time.process_time() - c0) / steps

    for name in runs:
        block(name, warmup)
    wall, cpu = {name: [] for name in runs}, {name: [] for name in runs}
    for r in range(rounds):
        for name in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            w, c = block(name, steps_per_round)
            wall[name].append(w)
            cpu[name].append(c)
        n += steps_per_round  # both saw the same batches in this round
    discard(trainer)
    ms = {name: statistics.median(s) * 1e3 for name, s in wall.items()}
    cpu_ms = {name: statistics.median(s) for name, s in cpu.items()}
    return TrainResult(shape.name, trainer.dtype_name, ms["ours"], ms["ref"], shape.tokens / ms["ours"] * 1e3,
                       shape.tokens / ms["ref"] * 1e3, ms["ref"] / ms["ours"], cpu_ms["ref"] / cpu_ms["ours"],
                       last["ours"], last["ref"], _peak_rss_gb())


def format_train_table(results: List[TrainResult]) -> str:
    head = (f"{'shape':<24} {'dtype':<5} {'ours ms':>8} {'ref ms':>8} {'ours tok/s':>11} {'ref tok/s':>10} "
            f"{'speedup':>8} {'(cpu time)':>10} {'loss ours/ref':>14}")
    rows = [head, "-" * len(head)]
    for r in results:
        rows.append(f"{r.shape:<24} {r.dtype:<5} {r.ours_ms:>8.2f} {r.ref_ms:>8.2f} {r.ours_tok_s:>11,.0f} "
                    f"{r.ref_tok_s:>10,.0f} {r.speedup:>7.2f}x {r.cpu_speedup:>9.2f}x {r.ours_loss:>7.3f}/{r.ref_loss:.3f}"
                    + (f"  peak RSS {r.peak_rss_gb:.1f} GiB" if r.peak_rss_gb else ""))
    return "\n".join(rows)


# ------------------------------------------------------------------------------ loss curves
CURVE_RUNS = {"reference fp32": "fp32", "ours fp32": "fp32", "ours bf16": "bf16"}


def bench_curves(steps: int, out_png, batch: int = 12, block: int = 64, eval_interval: int = 100,
                 eval_iters: int = 20, backend: Optional[str] = None, seed: int = 0,
                 runs: tuple = tuple(CURVE_RUNS)) -> dict:
    """Train the reference, ours in fp32 and ours in bf16 (or the `runs` of CURVE_RUNS named) from
    the same weights on the same batches of the embedded corpus (char tokens, shakespeare-cpu shape)
    with the Trainer's schedule. Returns {run name: [(step, val loss), ...]} and plots the curves
    into out_png."""
    from ..data import get_batch, load_text, split
    from ..tokenizers import get_tokenizer
    from ..train import lr_for_config
    text = load_text(None)
    ids = torch.tensor(get_tokenizer("char", text).encode(text), dtype=torch.int64)
    train_ids, val_ids = split(ids)
    vocab = int(ids.max()) + 1
    shape = TrainShape("curves", "shakespeare-cpu", batch, block, vocab)
    val_g = torch.Generator().manual_seed(seed + 1)
    val_batches = [get_batch(val_ids, batch, block, generator=val_g) for _ in range(eval_iters)]
    curves = {}
    for run, dtype in ((run, CURVE_RUNS[run]) for run in runs):
        trainer, ref = make_pair(shape, dtype, backend, seed=seed, max_iters=steps, warmup_iters=100, min_lr=1e-4)
        model = ref.model if run.startswith("reference") else trainer.raw_model
        autocast = trainer.autocast if run.startswith("ours") else contextlib.nullcontext
        data_g = torch.Generator().manual_seed(seed)
        points = []
        for step in range(steps + 1):
            if step % eval_interval == 0 or step == steps:
                points.append((step, _mean_loss(model, val_batches, autocast)))
            if step == steps:
                break
            x, y = get_batch(train_ids, batch, block, generator=data_g)
            if run.startswith("reference"):
                for group in ref.optimizer.param_groups:
                    group["lr"] = lr_for_config(step, trainer.cfg)
                ref(x, y)
            else:
                trainer.train_step([(x, y)])
        curves[run] = points
        discard(trainer)
    _plot_curves(curves, out_png, f"shakespeare-cpu B{batch}xT{block}, char tokens of the embedded corpus")
    return curves


@torch.no_grad()
def _mean_loss(model, batches, autocast) -> float:
    model.eval()
    total = 0.0
    for x, y in batches:
        with autocast():
            total += float(model(x, y)[1])
    model.train()
    return total / len(batches)


def _plot_curves(curves: dict, path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")  # no display on servers; must precede pyplot's import
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=100)
    for run, points in curves.items():
        ax.plot(*zip(*points), "o-", lw=1.2, ms=2.5, label=run)
    ax.set_xlabel("step")
    ax.set_ylabel("validation cross-entropy (nats/token)")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------ CLI
def run_cli(args) -> int:
    """`babygpt bench --op train`: the table, then (--curve-steps N) the loss curves."""
    from tqdm import tqdm

    from ..train.precision import cpu_name, resolve_dtype
    dtype = args.dtype or "auto"
    if args.backends and "," in args.backends:
        raise SystemExit(f"babygpt bench --op train: --backends takes one attention backend for our model, "
                         f"got {args.backends!r}")
    backend = None if args.backends == AUTO else args.backends  # None: the engine's choice
    shapes = [s for s in TRAIN_SHAPES if not args.quick or s.name in QUICK_TRAIN]
    results = [bench_train(s, rounds=args.rounds, dtype=dtype, backend=backend)
               for s in tqdm(shapes, desc="bench train", unit="shape")]
    name, reason = resolve_dtype(dtype, "cpu")
    print(f"\nCPU: {cpu_name()} ({torch.get_num_threads()} threads); ours: babygpt train's step in {name} "
          f"({reason}), attention backend {backend or 'auto'}; reference: plain PyTorch, fp32, SDPA, AdamW(foreach)")
    print(format_train_table(results))
    if args.curve_steps:
        from pathlib import Path
        png = Path(args.curve_png)
        curves = bench_curves(args.curve_steps, png, backend=backend)
        final = {run: points[-1][1] for run, points in curves.items()}
        print(f"\nvalidation loss after {args.curve_steps} steps: "
              + ", ".join(f"{run} {loss:.4f}" for run, loss in final.items())
              + f"; curves: {png}")
    if args.json:
        import json
        with open(args.json, "w") as f:
            json.dump([r.as_dict() for r in results], f, indent=1)
        print(f"\nwrote {args.json}")
    return 0
