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

import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch

from ..models import GPT, GPTConfig
from .reference_loop import ReferenceGPT, ReferenceLoop


@dataclass(frozen=True)
class TrainShape:
    name: str
    preset: str
    batch: int
    block: int
    vocab: int  # the tokenizer's size in the run this shape stands for

    @property
    def tokens(self) -> int:
        return self.batch * self.block


TRAIN_SHAPES = [
    TrainShape("shakespeare-cpu B12xT64", "shakespeare-cpu", 12, 64, 103),  # char tokens of the pydoc corpus
    TrainShape("shakespeare-cpu B16xT64", "shakespeare-cpu", 16, 64, 103),  # the demo's batch
    TrainShape("gpt-mini B8xT128", "gpt-mini", 8, 128, 1000),
    TrainShape("gpt2 B1xT1024", "gpt2", 1, 1024, 50257),
]
QUICK_TRAIN = ("shakespeare-cpu B12xT64",)


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


def make_pair(shape: TrainShape, dtype: str = "auto", backend: Optional[str] = None, seed: int = 0,
              max_iters: int = 1000):
    """(ours: a Trainer on a fresh GPT, ref: a ReferenceLoop on a copy of its initial weights)."""
    from ..train import TrainConfig, Trainer
    cfg = GPTConfig.from_preset(shape.preset, vocab_size=shape.vocab, block_size=shape.block, backend=backend)
    torch.manual_seed(seed)
    model = GPT(cfg)
    ref_model = ReferenceGPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    ref_model.load_state_dict(model.state_dict())
    tokens = torch.randint(0, shape.vocab, (shape.block + 2,))  # the Trainer wants data; batches come from us
    tcfg = TrainConfig(batch_size=shape.batch, block_size=shape.block, max_iters=max_iters, warmup_iters=0,
                       lr=1e-3, min_lr=1e-3, autocast_dtype=dtype, progress=False, seed=seed)
    trainer = Trainer(model, tokens, tokens, tcfg, out_dir=tempfile.mkdtemp(prefix="babygpt-bench-"))
    ref = ReferenceLoop(ref_model, lr=tcfg.lr, weight_decay=tcfg.weight_decay, betas=(tcfg.beta1, tcfg.beta2),
                        grad_clip=tcfg.grad_clip)
    return trainer, ref


def bench_train(shape: TrainShape, rounds: int = 5, steps_per_round: int = 4, warmup: int = 3,
                dtype: str = "auto", backend: Optional[str] = None) -> TrainResult:
    """Median ms per optimizer step of ours and of the reference, timed in alternating blocks."""
    trainer, ref = make_pair(shape, dtype, backend)
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
