"""`babygpt train`: tokenize a corpus, build a GPT preset, train it, checkpoint it.

Flags that define a run default to None here, so a resumed run can tell a flag the user gave
(compared with the checkpoint) from one they did not (taken from the checkpoint)."""

from __future__ import annotations

import errno
import hashlib
import os
import sys
from pathlib import Path

from ..errors import UserError

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
     atomically, with a sha256 of their contents that every load checks.
  5. Ctrl-C (or SIGTERM) stops after the current step and writes OUT/last.pt; a loss that turns
     NaN/Inf stops the run with an error, keeping the last good checkpoint.

Run directories: one run at a time owns OUT (a lock; a second run into it is refused with the
owner's PID). A directory that already holds a run is never silently replaced: --resume
continues it, --force deletes it and starts over; anything else is refused.

--resume continues the run exactly: model, tokenizer, data, schedule, batch, seed and torch
thread count come from the checkpoint. A flag that contradicts it is refused; --max-iters,
--time-budget, --eval-interval, --log-interval, --device, --compile, --backend and --threads may
change (noted; the last four may make the run not bit-exact). A longer --max-iters keeps the
checkpoint's LR schedule: the cosine ends where it was going to, later steps run at min_lr.

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
                              description=DESCRIPTION.format(presets=_presets_text()), epilog=EPILOG)
    g = p.add_argument_group("data and model")
    g.add_argument("--preset", help="GPT shape (see presets above; default shakespeare-cpu)")
    g.add_argument("--data", help="'pydoc' (embedded corpus, the default), a text file, a folder of .txt/.md, "
                                  "or a corpus name")
    g.add_argument("--tokenizer", choices=["char", "word", "bpe"], help="tokenizer kind (default char)")
    g.add_argument("--vocab-size", type=int, help="bpe: target vocabulary; word: cap (default 1000)")
    g.add_argument("--val-fraction", type=float, help="held-out tail of the tokens (default 0.1)")
    g.add_argument("--block-size", type=int, default=None,
                   help="context length: overrides the preset's (the model's position table grows or shrinks)")
    g.add_argument("--dropout", type=float, default=None, help="dropout override (preset default: 0.0)")
    g.add_argument("--backend", default=None,
                   help="attention backend: eager, sdpa, cpu, triton, cuda (default: automatic policy)")
    g.add_argument("--out", default="runs/demo",
                   help="run directory for checkpoints, metrics, plot (default runs/demo); one that holds a run "
                        "already needs --resume or --force")

    o = p.add_argument_group("optimization")
    o.add_argument("--batch-size", type=int, help=f"sequences per micro-batch per process ({d.batch_size})")
    o.add_argument("--grad-accum", type=int, help="micro-batches per optimizer step (1)")
    o.add_argument("--max-iters", type=int, help=f"optimizer steps = schedule length ({d.max_iters})")
    o.add_argument("--time-budget", type=float, metavar="SECONDS",
                   help="stop cleanly after this much training time (evaluate + checkpoint); "
                        "the cosine schedule still spans --max-iters, so set both")
    o.add_argument("--lr", type=float, help=f"peak learning rate ({d.lr})")
    o.add_argument("--min-lr", type=float, help=f"learning rate at the end of the cosine ({d.min_lr})")
    o.add_argument("--warmup", type=int, help=f"linear warmup steps ({d.warmup_iters})")
    o.add_argument("--lr-decay-iters", type=int, help="where the cosine ends (default: --max-iters)")
    o.add_argument("--weight-decay", type=float, help=f"AdamW decay on matrices ({d.weight_decay})")
    o.add_argument("--beta1", type=float, help=f"AdamW beta1 ({d.beta1})")
    o.add_argument("--beta2", type=float, help=f"AdamW beta2 ({d.beta2})")
    o.add_argument("--grad-clip", type=float, help=f"max gradient norm, 0 = off ({d.grad_clip})")

    r = p.add_argument_group("evaluation, hardware, bookkeeping")
    r.add_argument("--eval-interval", type=int, help=f"steps between evals ({d.eval_interval})")
    r.add_argument("--eval-iters", type=int, help=f"val batches per eval ({d.eval_iters})")
    r.add_argument("--log-interval", type=int, help="steps between metrics rows (1)")
    r.add_argument("--seed", type=int, help=f"seeds model init, data order, dropout ({d.seed})")
    r.add_argument("--device", choices=["auto", "cpu", "cuda"], help="auto (default) = cuda if available")
    r.add_argument("--dtype", choices=["auto", "fp32", "bf16", "fp16"],
                   help="autocast dtype: auto (default) = bf16 where the GPU or CPU (AMX / AVX512-BF16) "
                        "multiplies bf16 natively, else fp32")
    r.add_argument("--threads", type=int,
                   help="torch CPU threads per process (default: torch's choice, or the checkpoint's on --resume; "
                        "1 is often faster for small models on a busy machine, where spinning OpenMP threads "
                        "fight over cores)")
    r.add_argument("--compile", action="store_true", default=None,
                   help="torch.compile the model (slow start, faster steps)")
    r.add_argument("--resume", action="store_true", help="continue the run in OUT from its newest checkpoint "
                                                         "(ckpt.pt or last.pt), with its settings")
    r.add_argument("--force", action="store_true", help="delete the run already in OUT and start a new one")
    r.add_argument("--no-progress", action="store_true", help="no progress bar (logs only)")
    p.set_defaults(func=run)


# flag dest -> TrainConfig field
CONFIG_FLAGS = {"batch_size": "batch_size", "grad_accum": "grad_accum_steps", "max_iters": "max_iters",
                "time_budget": "time_budget", "lr": "lr", "min_lr": "min_lr", "warmup": "warmup_iters",
                "lr_decay_iters": "lr_decay_iters", "weight_decay": "weight_decay", "beta1": "beta1", "beta2": "beta2",
                "grad_clip": "grad_clip", "eval_interval": "eval_interval", "eval_iters": "eval_iters",
                "log_interval": "log_interval", "seed": "seed", "device": "device", "dtype": "autocast_dtype",
                "compile": "compile"}
# what the CLI builds the run from (stored in every checkpoint's extra["run"]), with its defaults
RUN_DEFAULTS = {"preset": "shakespeare-cpu", "data": "pydoc", "tokenizer": "char", "vocab_size": 1000,
                "val_fraction": 0.1, "block_size": None, "dropout": None, "backend": None}
RUN_CHANGEABLE = ("backend",)  # the same math by another kernel: allowed on resume, noted


class TrainError(UserError):
    """A `babygpt train` run that cannot start or go on."""


def train_config(args, stored: dict | None = None):
    """The TrainConfig from the flags given; the rest from the checkpoint's (resume) or the defaults."""
    from ..train import TrainConfig
    given = {field: getattr(args, dest) for dest, field in CONFIG_FLAGS.items() if getattr(args, dest) is not None}
    return TrainConfig.from_dict({**(stored or {}), **given, "progress": not args.no_progress, "resume": args.resume})


def run_settings(args, ckpt: dict | None, where: str) -> dict:
    """preset/data/tokenizer/...: the flags (fresh run) or the checkpoint's (resume, conflicts refused)."""
    given = {k: getattr(args, k) for k in RUN_DEFAULTS if getattr(args, k) is not None}
    if ckpt is None:
        run = {**RUN_DEFAULTS, **given}
        if run["data"] != "pydoc" and Path(run["data"]).expanduser().exists():
            run["data"] = str(Path(run["data"]).expanduser().resolve())  # resumable from another cwd
        return run
    stored = ckpt.get("extra", {}).get("run")
    if stored is None:
        raise TrainError(f"{where} was written before checkpoints recorded their run settings; it can be sampled "
                         f"but not resumed by this version")
    conflicts = [f"--{k.replace('_', '-')} {v} (checkpoint: {stored.get(k)})" for k, v in given.items()
                 if k not in RUN_CHANGEABLE and v != stored.get(k)
                 and not (k == "data" and Path(v).expanduser().resolve() == Path(str(stored.get(k))))]
    if conflicts:
        raise TrainError(f"--resume {where}: {', '.join(conflicts)}; a resumed run keeps its model, tokenizer and "
                         f"data: drop those flags, or start a new run with another --out")
    run = {**stored, **{k: given[k] for k in RUN_CHANGEABLE if k in given}}
    if run["backend"] != stored.get("backend"):
        print(f"note: resuming with --backend {run['backend']} (was {stored.get('backend') or 'auto'}): another "
              f"kernel, so the resumed run may not be bit-exact", file=sys.stderr)
    return run


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_tokenizer(tok, path: Path) -> str:
    """Write tok atomically with the umask's permissions; returns the file's sha256."""
    from ..train.files import atomic_write
    atomic_write(path, lambda tmp: tok.save(tmp), mode=None)
    return file_sha256(path)


def _tokenizer(run: dict, text: str, out: Path, info, ckpt: dict | None, where: str):
    """(tokenizer, path, sha256). Fresh run: rank 0 builds and saves it. Resume: the saved file,
    proven to be the checkpoint's by its sha256; a missing one is rebuilt from the data only if the
    rebuild is byte-identical. Other ranks load what rank 0 left."""
    from ..tokenizers import Tokenizer, get_tokenizer
    from ..train import distributed
    path = out / (ckpt["extra"].get("tokenizer", "tokenizer.json") if ckpt else "tokenizer.json")
    want = ckpt["extra"].get("tokenizer_sha256") if ckpt else None
    if info.is_main:
        if ckpt is None:
            save_tokenizer(get_tokenizer(run["tokenizer"], text, vocab_size=run["vocab_size"]), path)
        elif path.is_file():
            if want is not None and file_sha256(path) != want:
                raise TrainError(f"--resume {where}: {path} is not the tokenizer this run was trained with (its "
                                 f"sha256 differs); put the run's tokenizer.json back, or start a new run")
        else:
            from ..train.files import temp_path
            rebuilt = temp_path(path)
            try:
                get_tokenizer(run["tokenizer"], text, vocab_size=run["vocab_size"]).save(rebuilt)
                if want is None or file_sha256(rebuilt) != want:
                    raise TrainError(f"--resume {where}: {path} is missing and rebuilding it from the data does not "
                                     f"give the run's tokenizer; restore {path.name} from a copy")
                save_tokenizer(Tokenizer.load(rebuilt), path)
            finally:
                rebuilt.unlink(missing_ok=True)
            print(f"note: {path} was missing: rebuilt it from the data (same sha256 as the checkpoint's)",
                  file=sys.stderr)
    distributed.barrier(info)
    return Tokenizer.load(path), path, file_sha256(path)


def _model_config(run: dict, vocab_size: int, ckpt: dict | None):
    from ..models import GPTConfig
    if ckpt is not None:  # the architecture is the checkpoint's
        return GPTConfig(**{**ckpt["model_config"], "backend": run["backend"]})
    overrides = {"vocab_size": vocab_size, "backend": run["backend"]}
    if run["block_size"] is not None:
        overrides["block_size"] = run["block_size"]
    if run["dropout"] is not None:
        overrides["dropout"] = run["dropout"]
    return GPTConfig.from_preset(run["preset"], **overrides)


def run(args) -> int:
    import torch

    from ..data import load_text, split
    from ..models import GPT
    from ..train import Trainer, claim_run_dir, distributed, load_newest

    if args.threads is not None and args.threads < 1:
        print(f"babygpt train: --threads must be >= 1, got {args.threads}", file=sys.stderr)
        return 2
    if args.resume and args.force:
        print("babygpt train: --resume continues the run in --out, --force replaces it: give one", file=sys.stderr)
        return 2
    out = Path(args.out)
    if args.resume and not out.is_dir():
        raise TrainError(f"--resume: {out} does not exist; give the --out of the run to continue")
    info = distributed.setup(args.device or "auto")
    # rank 0 writes, so rank 0 owns the directory: before the tokenizer is written into it
    lock = claim_run_dir(out, resume=args.resume, force=args.force) if info.is_main else None
    trainer = None
    try:
        ckpt_path, ckpt = load_newest(out) if args.resume else (None, None)
        if args.resume and ckpt is None:
            raise TrainError(f"--resume: {out} holds no ckpt.pt or last.pt to resume from; drop --resume to start "
                             f"a new run there")
        where = f"{ckpt_path} (step {ckpt['step']})" if ckpt else ""
        run_args = run_settings(args, ckpt, where)
        try:
            cfg = train_config(args, ckpt["train_config"] if ckpt else None)  # validates before any slow work
        except ValueError as e:
            print(f"babygpt train: {e}", file=sys.stderr)
            return 2
        if cfg.device != (args.device or "auto"):
            info = distributed.setup(cfg.device)  # the checkpoint's device; setup is idempotent
        threads = args.threads or (ckpt.get("num_threads") if ckpt else None)
        if threads:
            torch.set_num_threads(threads)
        text = load_text(None if run_args["data"] == "pydoc" else run_args["data"])
        tok, tok_path, tok_sha = _tokenizer(run_args, text, out, info, ckpt, where)
        ids = torch.tensor(tok.encode(text), dtype=torch.int64)
        train_ids, val_ids = split(ids, run_args["val_fraction"])
        mcfg = _model_config(run_args, tok.vocab_size, ckpt)
        torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
        model = GPT(mcfg)
        if info.is_main:
            print(f"data: {run_args['data']} -> {len(text):,} chars -> {len(ids):,} {run_args['tokenizer']} tokens "
                  f"(vocab {tok.vocab_size}); train {len(train_ids):,} / val {len(val_ids):,}")
            print(f"model: {run_args['preset']} ({model.num_parameters():,} parameters, context {mcfg.block_size}, "
                  f"backend {mcfg.backend or 'auto'}); processes: {info.world_size} on {info.device}")
        trainer = Trainer(model, train_ids, val_ids, cfg, out, dist_info=info,
                          extra={"tokenizer": tok_path.name, "tokenizer_sha256": tok_sha, "run": run_args,
                                 "preset": run_args["preset"], "data": run_args["data"]})
        if info.is_main:
            start = f"resuming {trainer.resumed_from} at step {trainer.step}" if trainer.resumed_from else "starting"
            print(f"dtype: {trainer.dtype_name} ({trainer.dtype_reason})")
            print(f"{start}: {trainer.tokens_per_step:,} tokens/step, {trainer.cfg.max_iters} steps"
                  + (f", time budget {cfg.time_budget:g} s" if cfg.time_budget else ""))
        try:
            s = trainer.fit()
        except KeyboardInterrupt as e:
            return getattr(e, "exit_code", 130)  # last.pt is written and the message printed by the Trainer
        if info.is_main:
            val = f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "n/a"
            tps = f"{s['tokens_per_s']:,.0f}" if s["tokens_per_s"] else "n/a"
            train = f"{s['train_loss']:.4f}" if s["train_loss"] is not None else "n/a"
            print(f"done: step {s['step']}, train loss {train}, val loss {val} "
                  f"(best {s['best_val_loss']:.4f}), {tps} tokens/s (average), {s['elapsed_s']:.1f} s")
            print(f"checkpoint: {s['ckpt']}" + (f"  (best: {s['best']})" if s["best"].exists() else ""))
            print(f"tokenizer:  {tok_path}")
            print(f"metrics:    {s['metrics_jsonl']}  {s['metrics_csv']}")
            print(f"loss curve: {s['plot']}")
            print(f"sample it:  babygpt sample --ckpt {s['ckpt']} --prompt \"def \"")
        return 0
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        kept = (f"{trainer._last_saved[0]} (step {trainer._last_saved[1]})"
                if trainer is not None and trainer._last_saved else "what was saved before")
        raise TrainError(f"no space left on the disk holding {out} ({os.strerror(e.errno)}: {e.filename or out}); "
                         f"free some, then --resume continues from {kept}") from e
    finally:
        if lock is not None:
            lock.release()
        distributed.teardown()


if __name__ == "__main__":  # torchrun --nproc_per_node=2 -m babygpt_ext.cli.train ...
    from . import main
    sys.exit(main(["train", *sys.argv[1:]]))
