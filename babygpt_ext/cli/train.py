"""`babygpt train`: tokenize a corpus, build a GPT preset, train it, checkpoint it."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Train a GPT on a text corpus (default: CPython's documentation topics, embedded in every Python).

What happens:
  1. the corpus is read and a tokenizer (char / word / BPE) is built from it and saved as
     OUT/tokenizer.json; the last --val-fraction of the token stream is held out for validation
  2. a GPT is built from --preset (vocab size = the tokenizer's)
  3. AdamW (weight decay on matrices only), linear warmup then cosine decay to --min-lr,
     gradient clipping, optional gradient accumulation
  4. every --eval-interval steps: mean validation loss over --eval-iters batches, a row in
     OUT/metrics.jsonl + OUT/metrics.csv, OUT/loss.png redrawn, OUT/ckpt.pt (and best.pt) written
     atomically. Ctrl-C writes OUT/last.pt first; --resume continues the exact same run.

Tokens per optimizer step = batch-size x block-size x grad-accum x (number of processes).
Under torchrun every process gets its own slice of each global batch (gloo on CPU, nccl on GPU)
and only rank 0 writes files.

presets:
{presets}
"""

EPILOG = """\
examples:
  babygpt train --preset shakespeare-cpu --tokenizer char --time-budget 120 --out runs/demo
        a small GPT in about two minutes on a laptop-class CPU
  babygpt train --preset shakespeare-cpu --data pydoc --tokenizer char --max-iters 500 --out runs/demo
  babygpt train --preset babygpt --tokenizer word --max-iters 3000 --lr 1e-2 --out runs/baby
  babygpt train --out runs/demo --resume --max-iters 1000       continue (or extend) a run
  babygpt train --preset gpt-mini --tokenizer bpe --vocab-size 2000 --batch-size 8 --grad-accum 4
  babygpt train --data input.txt --backend sdpa                 compare attention backends' tokens/s
  torchrun --nproc_per_node=2 --no-python babygpt train --preset shakespeare-cpu --batch-size 8
        data-parallel on 2 processes (CPU: gloo); same as `torchrun ... -m babygpt_ext.cli.train ...`
then:
  babygpt sample --ckpt runs/demo/ckpt.pt --prompt "def " --max-new-tokens 200
"""


def _presets_text() -> str:
    from ..models.presets import describe
    return describe()


def register(subparsers) -> None:
    from ..train import TrainConfig
    d = TrainConfig()  # defaults shown in --help come from the dataclass itself
    p = subparsers.add_parser("train", help="train a GPT preset on a corpus (checkpoints, metrics, loss curve)",
                              description=DESCRIPTION.format(presets=_presets_text()), epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    g = p.add_argument_group("data and model")
    g.add_argument("--preset", default="shakespeare-cpu", help="GPT shape (see presets above; default shakespeare-cpu)")
    g.add_argument("--data", default="pydoc",
                   help="'pydoc' (embedded corpus), a text file, a folder of .txt/.md, or a corpus name")
    g.add_argument("--tokenizer", choices=["char", "word", "bpe"], default="char", help="tokenizer kind (default char)")
    g.add_argument("--vocab-size", type=int, default=1000, help="bpe: target vocabulary; word: cap (default 1000)")
    g.add_argument("--val-fraction", type=float, default=0.1, help="held-out tail of the tokens (default 0.1)")
    g.add_argument("--block-size", type=int, default=None,
                   help="context length: overrides the preset's (the model's position table grows or shrinks)")
    g.add_argument("--dropout", type=float, default=None, help="dropout override (preset default: 0.0)")
    g.add_argument("--backend", default=None,
                   help="attention backend: eager, sdpa, cpu, triton, cuda (default: automatic policy)")
    g.add_argument("--out", default="runs/demo", help="run directory for checkpoints, metrics, plot (default runs/demo)")

    o = p.add_argument_group("optimization")
    o.add_argument("--batch-size", type=int, default=d.batch_size, help=f"sequences per micro-batch per process ({d.batch_size})")
    o.add_argument("--grad-accum", type=int, default=d.grad_accum_steps, help="micro-batches per optimizer step (1)")
    o.add_argument("--max-iters", type=int, default=d.max_iters, help=f"optimizer steps = schedule length ({d.max_iters})")
    o.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="stop cleanly after this much training time (evaluate + checkpoint); "
                        "the cosine schedule still spans --max-iters, so set both")
    o.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate ({d.lr})")
    o.add_argument("--min-lr", type=float, default=d.min_lr, help=f"learning rate at the end of the cosine ({d.min_lr})")
    o.add_argument("--warmup", type=int, default=d.warmup_iters, help=f"linear warmup steps ({d.warmup_iters})")
    o.add_argument("--lr-decay-iters", type=int, default=None, help="where the cosine ends (default: --max-iters)")
    o.add_argument("--weight-decay", type=float, default=d.weight_decay, help=f"AdamW decay on matrices ({d.weight_decay})")
    o.add_argument("--beta1", type=float, default=d.beta1)
    o.add_argument("--beta2", type=float, default=d.beta2)
    o.add_argument("--grad-clip", type=float, default=d.grad_clip, help=f"max gradient norm, 0 = off ({d.grad_clip})")

    r = p.add_argument_group("evaluation, hardware, bookkeeping")
    r.add_argument("--eval-interval", type=int, default=d.eval_interval, help=f"steps between evals ({d.eval_interval})")
    r.add_argument("--eval-iters", type=int, default=d.eval_iters, help=f"val batches per eval ({d.eval_iters})")
    r.add_argument("--log-interval", type=int, default=d.log_interval, help="steps between metrics rows (1)")
    r.add_argument("--seed", type=int, default=d.seed, help=f"seeds model init, data order, dropout ({d.seed})")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto", help="auto = cuda if available")
    r.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"], default="auto",
                   help="autocast dtype: auto = bf16 on CUDA when supported, fp32 on CPU")
    r.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads per process (default: torch's choice; 1 is often faster for small "
                        "models on a busy machine, where spinning OpenMP threads fight over cores)")
    r.add_argument("--compile", action="store_true", help="torch.compile the model (slow start, faster steps)")
    r.add_argument("--resume", action="store_true", help="continue from OUT/ckpt.pt or OUT/last.pt, whichever is newer")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


def train_config(args):
    from ..train import TrainConfig
    return TrainConfig(
        batch_size=args.batch_size, block_size=None, grad_accum_steps=args.grad_accum, max_iters=args.max_iters,
        lr=args.lr, min_lr=args.min_lr, warmup_iters=args.warmup, lr_decay_iters=args.lr_decay_iters,
        weight_decay=args.weight_decay, beta1=args.beta1, beta2=args.beta2, grad_clip=args.grad_clip,
        eval_interval=args.eval_interval, eval_iters=args.eval_iters, log_interval=args.log_interval,
        progress=not args.no_progress, seed=args.seed, device=args.device, autocast_dtype=args.dtype,
        compile=args.compile, resume=args.resume, time_budget=args.time_budget)


def _tokenizer(args, text: str, out: Path, info):
    """Rank 0 builds and saves the tokenizer (or reuses the saved one on --resume); others load it."""
    from ..tokenizers import Tokenizer, get_tokenizer
    from ..train import distributed
    path = out / "tokenizer.json"
    if info.is_main and not (args.resume and path.exists()):
        get_tokenizer(args.tokenizer, text, vocab_size=args.vocab_size).save(path)
    distributed.barrier(info)
    return Tokenizer.load(path), path


def _model_config(args, vocab_size: int, out: Path):
    from ..models import GPTConfig
    from ..train import load_checkpoint, newest_checkpoint
    if args.resume:
        ckpt_path = newest_checkpoint(out)
        if ckpt_path is not None:  # the architecture is the checkpoint's, whatever flags say now
            stored = load_checkpoint(ckpt_path)["model_config"]
            return GPTConfig(**{**stored, "backend": args.backend})
    overrides = {"vocab_size": vocab_size, "backend": args.backend}
    if args.block_size is not None:
        overrides["block_size"] = args.block_size
    if args.dropout is not None:
        overrides["dropout"] = args.dropout
    return GPTConfig.from_preset(args.preset, **overrides)


def run(args) -> int:
    import torch

    from ..data import load_text, split
    from ..models import GPT
    from ..train import Trainer, distributed

    cfg = train_config(args)  # validates the numbers before any slow work
    if args.threads is not None:
        if args.threads < 1:
            print(f"babygpt train: --threads must be >= 1, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    info = distributed.setup(cfg.device)
    try:
        if info.is_main:
            out.mkdir(parents=True, exist_ok=True)
        text = load_text(None if args.data == "pydoc" else args.data)
        tok, tok_path = _tokenizer(args, text, out, info)
        ids = torch.tensor(tok.encode(text), dtype=torch.int64)
        train_ids, val_ids = split(ids, args.val_fraction)
        mcfg = _model_config(args, tok.vocab_size, out)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = GPT(mcfg)
        if info.is_main:
            print(f"data: {args.data} -> {len(text):,} chars -> {len(ids):,} {args.tokenizer} tokens "
                  f"(vocab {tok.vocab_size}); train {len(train_ids):,} / val {len(val_ids):,}")
            print(f"model: {args.preset} ({model.num_parameters():,} parameters, context {mcfg.block_size}, "
                  f"backend {mcfg.backend or 'auto'}); processes: {info.world_size} on {info.device}")
        trainer = Trainer(model, train_ids, val_ids, cfg, out, dist_info=info,
                          extra={"tokenizer": tok_path.name, "preset": args.preset, "data": args.data})
        if info.is_main:
            start = f"resuming {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from else "starting"
            print(f"{start}: {trainer.tokens_per_step:,} tokens/step, {cfg.max_iters} steps"
                  + (f", time budget {cfg.time_budget:g} s" if cfg.time_budget else ""))
        try:
            s = trainer.fit()
        except KeyboardInterrupt:
            return 130  # last.pt is written and the message printed by the Trainer
        if info.is_main:
            val = f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "n/a"
            tps = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "n/a"
            train = f"{s['train_loss']:.4f}" if s["train_loss"] is not None else "n/a"
            print(f"done: step {s['step']}, train loss {train}, val loss {val} "
                  f"(best {s['best_val_loss']:.4f}), {tps} tokens/s, {s['elapsed_s']:.1f} s")
            print(f"checkpoint: {s['ckpt']}" + (f"  (best: {s['best']})" if s["best"].exists() else ""))
            print(f"tokenizer:  {tok_path}")
            print(f"metrics:    {s['metrics_jsonl']}  {s['metrics_csv']}")
            print(f"loss curve: {s['plot']}")
            print(f"sample it:  babygpt sample --ckpt {s['ckpt']} --prompt \"def \"")
        return 0
    finally:
        distributed.teardown()


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m babygpt_ext.cli.train ...
    from . import main
    sys.exit(main(["train", *sys.argv[1:]]))
