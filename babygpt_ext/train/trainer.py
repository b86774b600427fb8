"""The Trainer: one loop for a single process or DDP under torchrun.

    trainer = Trainer(model, train_ids, val_ids, TrainConfig(max_iters=500), out_dir="runs/demo")
    summary = trainer.fit()        # -> dict: final losses, where the checkpoint/metrics/plot are

One optimizer step, in order:
  1. lr from the schedule (warmup + cosine) for this step
  2. one *global* batch of batch_size × grad_accum_steps × world_size windows is drawn from the
     shared data generator (same seed on every rank); this rank keeps its own slice of each
     micro-batch. So ranks see different data, and a DDP run with W ranks × batch B sees exactly
     the windows a single process with batch W·B sees — which is what makes DDP testable.
  3. per micro-batch: forward under autocast, backward of loss / grad_accum_steps (so the summed
     gradient is the gradient of the mean loss); under DDP all but the last micro-batch run in
     no_sync() so gradients are all-reduced once per step, not once per micro-batch
  4. clip the global grad norm, AdamW step, zero grads
A loss or gradient norm that is NaN/Inf stops the run (TrainingDiverged) before the step is
applied, without writing anything: the last checkpoint stays the last good one.

Every eval_interval steps: mean val loss over eval_iters batches (model.eval(), no_grad), a metrics
row, the loss-curve PNG and ckpt.pt (+ best.pt, a hard link of it when the val loss improved).
Ctrl-C or SIGTERM stops after the current step (interrupt.py); on that or any other exception
last.pt is written before re-raising, so `resume=True` continues from the last finished step.

The run directory is locked for the trainer's lifetime (rundir.py); a directory that holds another
run is refused unless resume=True or force=True.
"""

from __future__ import annotations

import dataclasses
import math
import random
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from ..data import get_batch
from ..errors import UserError
from . import distributed
from .checkpoint import (CheckpointError, capture_rng, load_checkpoint, load_newest, nonfinite_entries, restore_rng,
                         save_checkpoint, strip_wrappers, versions)
from .config import TrainConfig
from .files import atomic_copy
from .interrupt import RunInterrupted, StopOnSignal
from .metrics import FIELDS, MetricsWriter, plot_loss_curve
from .resume import ResumeConflict, data_fingerprint, resolve_config
from .rundir import claim_run_dir
from .precision import resolve_dtype
from .schedule import lr_for_config

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
EVAL_SEED_OFFSET = 1_000_003  # the eval generator must not share a stream with the training data


class TrainingDiverged(UserError):
    """The training loss or gradient norm became NaN/Inf."""


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, device_type: str) -> torch.optim.Optimizer:
    """The model's own AdamW groups if it has configure_optimizers, else the same rule here:
    matrices (dim >= 2: linear weights, embeddings) decay, biases and norm gains do not."""
    betas = (cfg.beta1, cfg.beta2)
    if hasattr(model, "configure_optimizers"):
        return model.configure_optimizers(cfg.weight_decay, cfg.lr, betas, device_type=device_type)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def as_token_tensor(data, name: str):
    """Lists become int64 tensors; tensors and numpy arrays/memmaps are used as they are."""
    if isinstance(data, (list, tuple)):
        data = torch.tensor(data, dtype=torch.int64)
    if getattr(data, "ndim", None) != 1:
        raise ValueError(f"Trainer: {name} must be a 1-D sequence of token ids, got shape "
                         f"{tuple(getattr(data, 'shape', ()))}")
    return data


class Trainer:
    def __init__(self, model: torch.nn.Module, train_data, val_data, config: TrainConfig, out_dir, *,
                 hooks=(), extra: dict | None = None, dist_info: distributed.DistInfo | None = None,
                 force: bool = False):
        """hooks: callables hook(trainer, row) run after every step (row = that step's metrics);
        extra: plain values stored in every checkpoint (e.g. the tokenizer file, the data source);
        force: delete a run already in out_dir and start a new one (else that is an error)."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"Trainer: config must be a TrainConfig, got {type(config).__name__}")
        self.cfg = cfg = config
        self.out_dir = Path(out_dir)
        self.hooks, self.extra = list(hooks), dict(extra or {})
        self.dist = dist_info or distributed.setup(cfg.device)
        self.device = self.dist.device
        self.device_type = torch.device(self.device).type

        model_block = getattr(getattr(model, "config", None), "block_size", None)
        self.block_size = cfg.block_size or model_block
        if self.block_size is None:
            raise ValueError("Trainer: set TrainConfig.block_size (the model has no config.block_size)")
        if model_block is not None and self.block_size > model_block:
            raise ValueError(f"Trainer: block_size={self.block_size} exceeds the model's context {model_block}")
        self.train_data = as_token_tensor(train_data, "train_data")
        self.val_data = as_token_tensor(val_data, "val_data")
        for name, d in (("train_data", self.train_data), ("val_data", self.val_data)):
            if len(d) <= self.block_size:
                raise ValueError(f"Trainer: {name} has {len(d)} tokens; it needs more than block_size={self.block_size}")

        # Seeds: torch/python/numpy differ per rank (dropout masks must differ); the data generator is
        # the same on every rank because each rank takes its own slice of one shared global batch.
        torch.manual_seed(cfg.seed + self.dist.rank)
        random.seed(cfg.seed + self.dist.rank)
        np.random.seed(cfg.seed + self.dist.rank)
        self.data_gen = torch.Generator().manual_seed(cfg.seed)

        self.raw_model = model.to(self.device)
        self.optimizer = build_optimizer(self.raw_model, cfg, self.device_type)
        self.autocast_dtype = self._resolve_autocast()
        # fp16 needs loss scaling to keep small gradients from flushing to zero; bf16/fp32 do not
        self.scaler = torch.amp.GradScaler(self.device_type, enabled=self.autocast_dtype == torch.float16)
        self.fwd_model = torch.compile(self.raw_model) if cfg.compile else self.raw_model
        self.model = self.fwd_model
        if self.dist.enabled:
            ids = [self.dist.local_rank] if self.device_type == "cuda" else None
            self.model = DDP(self.fwd_model, device_ids=ids)

        self.step, self.best_val_loss, self.best_step, self.tokens_seen = 0, math.inf, None, 0
        self.last_val_loss, self.resumed_from, self._resumed_rows = None, None, []
        self.data_fingerprint = {"train": data_fingerprint(self.train_data), "val": data_fingerprint(self.val_data)}
        self._unsaved_rows = []     # metrics rows since the last ckpt.pt: every checkpoint carries them
        self._last_saved = None     # (file name, step) of the newest checkpoint this run wrote or resumed
        self._consistent = True     # False while an optimizer step is half applied
        # rank 0 alone writes, so it alone owns the directory: from here until fit() ends (or close())
        self._lock = claim_run_dir(self.out_dir, resume=cfg.resume, force=force) if self.dist.is_main else None
        if cfg.resume:
            try:
                self._resume()
            except BaseException:
                self.close()
                raise
        # RNG states at the start of step self.step: what a crash checkpoint must store
        self._rng_snapshot = capture_rng(self.data_gen)

    def close(self) -> None:
        """Release the run directory (fit() does this when it ends)."""
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    # ---------------------------------------------------------------------------- setup helpers
    def _resolve_autocast(self):
        """torch dtype for autocast (None: fp32); the name and the reason stay for the run's log."""
        name, reason = resolve_dtype(self.cfg.autocast_dtype, self.device_type)
        self.dtype_name, self.dtype_reason = name, reason
        if name == "fp16" and self.device_type != "cuda":
            raise ValueError("TrainConfig.autocast_dtype='fp16' needs CUDA; on the CPU use 'bf16' or 'fp32'")
        return AUTOCAST[name]

    def autocast(self):
        if self.autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device_type, dtype=self.autocast_dtype)

    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.block_size * self.cfg.grad_accum_steps * self.dist.world_size

    # ---------------------------------------------------------------------------- checkpoints
    def state_dict(self, rng: dict | None = None) -> dict:
        cfg_obj = getattr(self.raw_model, "config", None)
        return {
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "best_step": self.best_step,
            "val_loss": self.last_val_loss,
            "tokens_seen": self.tokens_seen,
            "model": strip_wrappers(self.raw_model.state_dict()),
            "model_class": type(self.raw_model).__name__,
            "model_config": dataclasses.asdict(cfg_obj) if dataclasses.is_dataclass(cfg_obj) else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "num_threads": torch.get_num_threads(),
            "rng": rng if rng is not None else capture_rng(self.data_gen),
            "metrics_rows": list(self._unsaved_rows),
            "data_fingerprint": self.data_fingerprint,
            "extra": self.extra,
        }

    def save(self, name: str, rng: dict | None = None) -> Path | None:
        """Rank 0 writes out_dir/name atomically; other ranks do nothing."""
        if not self.dist.is_main:
            return None
        state = self.state_dict(rng)
        bad = nonfinite_entries(state)
        if bad:  # the loss check stops a diverging run first; this keeps a NaN off disk whatever happened
            raise TrainingDiverged(f"step {self.step}: {len(bad)} tensors hold NaN/Inf ({', '.join(bad[:3])}); "
                                   f"not writing {name}")
        path = save_checkpoint(self.out_dir / name, state)
        self._last_saved = (name, self.step)
        return path

    def _note(self, text: str) -> None:
        if self.dist.is_main:
            print(f"note: {text}", file=sys.stderr)

    def _resume(self) -> None:
        path, ckpt = load_newest(self.out_dir, map_location=self.device)
        if path is None:
            raise FileNotFoundError(f"resume=True but {self.out_dir} holds no ckpt.pt or last.pt to resume from")
        self._check_resumable(path, ckpt)
        self.raw_model.load_state_dict(strip_wrappers(ckpt["model"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], self.data_gen)
        if self.dist.rank > 0:
            # only rank 0's RNG was saved; give the other ranks their own (dropout) streams again
            torch.manual_seed(self.cfg.seed + self.dist.rank + 7919 * int(ckpt["step"]))
        self.step, self.best_val_loss = int(ckpt["step"]), float(ckpt["best_val_loss"])
        self.best_step = ckpt.get("best_step")
        self.last_val_loss, self.tokens_seen = ckpt.get("val_loss"), int(ckpt.get("tokens_seen", 0))
        self.resumed_from, self._resumed_rows = path, list(ckpt.get("metrics_rows", []))
        self._last_saved = (path.name, self.step)
        if self.dist.is_main:
            self._reconcile_best(path, ckpt)

    def _check_resumable(self, path: Path, ckpt: dict) -> None:
        """Refuse a config or data that would make this another run; note the legitimate changes."""
        where = f"{path} (step {ckpt['step']})"
        self.cfg, notes, conflicts = resolve_config(ckpt.get("train_config", {}), self.cfg)
        if conflicts:
            raise ResumeConflict(f"resuming {where}: {', '.join(conflicts)}; a resumed run keeps the settings it "
                                 f"was started with: drop those, or start a new run in another directory")
        for name, now in self.data_fingerprint.items():
            was = (ckpt.get("data_fingerprint") or {}).get(name)
            if was is not None and was != now:
                raise ResumeConflict(f"resuming {where}: the {name} tokens differ from the checkpoint's "
                                     f"({now['tokens']:,} tokens, sha256 {now['sha256'][:12]} vs {was['tokens']:,}, "
                                     f"{was['sha256'][:12]}); resume with the same data and tokenizer, or start a "
                                     f"new run")
        for text in notes:
            self._note(f"resuming with {text}")
        threads, was_threads = torch.get_num_threads(), ckpt.get("num_threads")
        if was_threads is not None and was_threads != threads:
            self._note(f"{path.name} was written with {was_threads} torch threads, this process uses {threads}: "
                       f"sums run in another order, so the resumed run will not be bit-exact with an uninterrupted "
                       f"one (use {was_threads} threads for that)")
        if ckpt.get("world_size", 1) != self.dist.world_size:
            self._note(f"{path.name} was written by {ckpt.get('world_size', 1)} processes, this run has "
                       f"{self.dist.world_size}: the global batch and the data order change")
        was_torch = (ckpt.get("versions") or {}).get("torch")
        if was_torch is not None and was_torch != versions()["torch"]:
            self._note(f"{path.name} was written by torch {was_torch}, this is {versions()['torch']}: "
                       f"the resumed run may not be bit-exact")

    def _reconcile_best(self, path: Path, ckpt: dict) -> None:
        """Make best.pt the checkpoint of the step the resumed checkpoint calls best. A kill between
        writing ckpt.pt and linking best.pt leaves best.pt one improvement behind: rebuilt here."""
        best, want = self.out_dir / "best.pt", ckpt.get("best_step")
        if not self.cfg.save_best or want is None:
            return
        try:
            have = int(load_checkpoint(best, mmap=True)["step"]) if best.exists() else None
        except CheckpointError:
            have = "unreadable"
        if have == want:
            return
        if want == ckpt["step"]:
            atomic_copy(path, best)
            self._note(f"best.pt was {have if have is not None else 'missing'}, the best val loss is step {want}'s: "
                       f"rebuilt best.pt from {path.name}")
        elif isinstance(have, int) and have > ckpt["step"]:
            best.unlink()
            self._note(f"removed best.pt of step {have}: it comes after the resumed step {ckpt['step']}, whose "
                       f"steps run again")
        else:
            self._note(f"best.pt is {have}, not step {want} the checkpoint calls best, and cannot be rebuilt; "
                       f"it is replaced at the next improvement")

    # ---------------------------------------------------------------------------- one step
    def sample_micro_batches(self, data, generator: torch.Generator, accum: int):
        """accum (x, y) pairs of (batch_size, block_size) for this rank, from one global draw."""
        B, W, r = self.cfg.batch_size, self.dist.world_size, self.dist.rank
        x, y = get_batch(data, accum * W * B, self.block_size, generator=generator)  # (accum·W·B, T)
        x = x.view(accum, W, B, -1)[:, r]  # (accum, B, T): this rank's slice of each micro-batch
        y = y.view(accum, W, B, -1)[:, r]
        return [(x[i].to(self.device), y[i].to(self.device)) for i in range(accum)]

    def train_step(self, micro_batches) -> dict:
        """One optimizer step over the given micro-batches (gradient accumulation). Returns metrics."""
        lr = lr_for_config(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.model.train()
        n = len(micro_batches)
        loss_sum = torch.zeros((), device=self.device)
        for i, (x, y) in enumerate(micro_batches):
            # under DDP, skip the gradient all-reduce on all but the last micro-batch
            sync = nullcontext() if (not self.dist.enabled or i == n - 1) else self.model.no_sync()
            with sync:
                with self.autocast():
                    _, loss = self.model(x, y)
                # / n: the summed gradients are those of the mean loss over the n micro-batches
                self.scaler.scale(loss / n).backward()
            loss_sum += loss.detach().float()
        self.scaler.unscale_(self.optimizer)  # clip true gradients, not scaled ones (no-op unless fp16)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.raw_model.parameters(), clip)
        loss = distributed.all_reduce_mean(loss_sum / n, self.dist)  # the global batch's mean loss
        self._check_finite(loss, grad_norm)
        self._consistent = False
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        self._consistent = True
        return {"train_loss": float(loss), "lr": lr, "grad_norm": float(grad_norm)}

    def _check_finite(self, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        """Stop before a NaN/Inf is applied to the weights. Both values are the same on every rank
        (the loss is all-reduced, the gradients too), so every rank stops at the same step. With
        fp16 an infinite gradient is the GradScaler's business (it skips the step, lowers the scale)."""
        ok = torch.isfinite(loss) if self.scaler.is_enabled() else torch.isfinite(loss) & torch.isfinite(grad_norm)
        if bool(ok):
            return
        kept = (f"{self._last_saved[0]} (step {self._last_saved[1]}) is the last good checkpoint"
                if self._last_saved else "no checkpoint was written")
        raise TrainingDiverged(f"step {self.step + 1}: the training loss is {float(loss)} and the gradient norm "
                               f"{float(grad_norm)}: the run diverged; stopped before applying it, {kept}. Lower the "
                               f"learning rate (--lr {self.cfg.lr:g} now) or clip gradients (--grad-clip > 0)")

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean val loss over eval_iters batches. The eval generator is re-seeded every time, so every
        evaluation scores the same windows (comparable across steps) and the training data stream is
        untouched (a run with more evals stays identical)."""
        self.fwd_model.eval()
        g = torch.Generator().manual_seed(self.cfg.seed + EVAL_SEED_OFFSET)
        total = torch.zeros((), device=self.device)
        for _ in range(self.cfg.eval_iters):
            (x, y), = self.sample_micro_batches(self.val_data, g, 1)
            with self.autocast():
                _, loss = self.fwd_model(x, y)
            total += loss.float()
        self.fwd_model.train()
        return float(distributed.all_reduce_mean(total / self.cfg.eval_iters, self.dist))

    # ---------------------------------------------------------------------------- the loop
    def _stop_requests(self, t0: float, signals: StopOnSignal) -> tuple[bool, int | None]:
        """(time budget spent, signal that asked to stop). Under DDP rank 0 decides for everyone, so
        every rank leaves the loop at the same step."""
        spent = self.cfg.time_budget is not None and time.perf_counter() - t0 >= self.cfg.time_budget
        if not self.dist.enabled:
            return spent, signals.signum
        flag = torch.tensor([float(spent), float(signals.signum or 0)], device=self.device)
        dist.broadcast(flag, src=0)
        return bool(flag[0].item()), int(flag[1].item()) or None

    def _eval_and_save(self, row: dict) -> None:
        val = self.evaluate()
        row["val_loss"] = self.last_val_loss = val
        improved = val < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_step = val, self.step
        if self.dist.is_main:
            self._unsaved_rows.append({k: row.get(k) for k in FIELDS})
            self._metrics.sync()  # the file's rows must never trail the checkpoint's step by more than it carries
            path = self.save("ckpt.pt")
            self._unsaved_rows = []
            if improved and self.cfg.save_best:
                atomic_copy(path, self.out_dir / "best.pt")
            (self.out_dir / "last.pt").unlink(missing_ok=True)  # superseded: older than this ckpt.pt

    def _save_on_exit(self, exc: BaseException) -> None:
        """After an interrupt or a crash: write last.pt when the state is whole, say what is kept."""
        if isinstance(exc, TrainingDiverged):
            return
        if not self._consistent:
            print(f"\nstopped in the middle of step {self.step + 1}: no last.pt; resume continues from "
                  f"{self._last_saved[0] if self._last_saved else 'the start'}", file=sys.stderr)
            return
        try:
            path = self.save("last.pt", rng=self._rng_snapshot)
        except Exception as e:  # a full disk fails this too: report it, re-raise the original error
            print(f"\nstopped at step {self.step}; could not write last.pt ({str(e).splitlines()[0]})", file=sys.stderr)
            return
        print(f"\nstopped at step {self.step}: saved {path}; continue with resume=True (--resume)", file=sys.stderr)

    def fit(self) -> dict:
        """Train to max_iters (or the time budget). Returns the summary; releases the run directory."""
        try:
            with StopOnSignal() as signals:
                return self._fit(signals)
        finally:
            self.close()

    def _fit(self, signals: StopOnSignal) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        resume_step = self.step if self.resumed_from else None
        metrics = self._metrics = MetricsWriter(self.out_dir, resume_step, self._resumed_rows) if main else None
        t0 = time.perf_counter()
        pbar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm
            pbar = tqdm(total=cfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr)
        row, tok_s_ema, train_time, steps_run = None, None, 0.0, 0
        try:
            if self.step == 0:
                # the starting point of the curves (≈ ln vocab_size for a fresh model); every rank
                # evaluates because the evaluation ends in a collective
                val0 = self.evaluate()
                if metrics is not None and not metrics.rows:
                    self._unsaved_rows.append(metrics.log({"step": 0, "val_loss": val0, "elapsed_s": 0.0,
                                                           "tokens_seen": 0}))
            while self.step < cfg.max_iters:
                t_step = time.perf_counter()
                batches = self.sample_micro_batches(self.train_data, self.data_gen, cfg.grad_accum_steps)
                row = self.train_step(batches)
                self._rng_snapshot = capture_rng(self.data_gen)  # state at the start of step self.step
                dt = time.perf_counter() - t_step
                train_time, steps_run = train_time + dt, steps_run + 1
                tok_s = self.tokens_per_step / max(dt, 1e-9)
                tok_s_ema = tok_s if tok_s_ema is None else 0.9 * tok_s_ema + 0.1 * tok_s
                row.update(step=self.step, tokens_per_s=tok_s, tokens_seen=self.tokens_seen,
                           elapsed_s=time.perf_counter() - t0)
                out_of_time, stop_signal = self._stop_requests(t0, signals)
                evaluated = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters or out_of_time
                if evaluated:
                    self._eval_and_save(row)  # carries this step's row: it is logged just below
                if metrics is not None and (self.step % cfg.log_interval == 0 or evaluated):
                    logged = metrics.log(row)
                    if not evaluated:
                        self._unsaved_rows.append(logged)
                    else:
                        plot_loss_curve(metrics.rows, self.out_dir / "loss.png", title=f"{self.out_dir.name}")
                if pbar is not None:
                    post = {"loss": f"{row['train_loss']:.4f}", "lr": f"{row['lr']:.2e}", "tok/s": f"{tok_s_ema:,.0f}"}
                    if self.last_val_loss is not None:
                        post["val"] = f"{self.last_val_loss:.4f}"
                    pbar.set_postfix(post, refresh=False)
                    pbar.update(1)
                for hook in self.hooks:
                    hook(self, row)
                if out_of_time:
                    break
                if stop_signal:
                    raise RunInterrupted(stop_signal)
        except BaseException as e:
            # Ctrl-C or a crash: keep the last finished step. Its RNG states are the snapshot, not the
            # current ones (the interrupted step may already have drawn its batch).
            if main:
                self._save_on_exit(e)
            raise
        finally:
            if pbar is not None:
                pbar.close()
            if metrics is not None:
                metrics.close()
        if metrics is not None:
            plot_loss_curve(metrics.rows, self.out_dir / "loss.png", title=f"{self.out_dir.name}")
        return {
            "step": self.step, "train_loss": row["train_loss"] if row else None, "val_loss": self.last_val_loss,
            "best_val_loss": self.best_val_loss, "elapsed_s": time.perf_counter() - t0,
            # this session's training steps: their tokens over their time (evaluations and checkpoints excluded)
            "tokens_per_s": steps_run * self.tokens_per_step / train_time if steps_run else None,
            "ckpt": self.out_dir / "ckpt.pt", "best": self.out_dir / "best.pt", "last": self.out_dir / "last.pt",
            "metrics_jsonl": self.out_dir / "metrics.jsonl", "metrics_csv": self.out_dir / "metrics.csv",
            "plot": self.out_dir / "loss.png",
        }
