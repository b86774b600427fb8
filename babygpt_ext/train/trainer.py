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
Every eval_interval steps: mean val loss over eval_iters batches (model.eval(), no_grad), a metrics
row, the loss-curve PNG and ckpt.pt (+ best.pt). On Ctrl-C or an exception, last.pt is written
before re-raising, so `resume=True` continues from the last finished step.
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
from . import distributed
from .checkpoint import (FORMAT, capture_rng, load_checkpoint, newest_checkpoint, restore_rng, save_checkpoint,
                         strip_wrappers)
from .config import TrainConfig
from .metrics import MetricsWriter, plot_loss_curve
from .schedule import lr_for_config

AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
EVAL_SEED_OFFSET = 1_000_003  # the eval generator must not share a stream with the training data


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
                 hooks=(), extra: dict | None = None, dist_info: distributed.DistInfo | None = None):
        """hooks: callables hook(trainer, row) run after every step (row = that step's metrics);
        extra: plain values stored in every checkpoint (e.g. the tokenizer file, the data source)."""
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

        self.step, self.best_val_loss, self.tokens_seen = 0, math.inf, 0
        self.last_val_loss, self.resumed_from = None, None
        if cfg.resume:
            self._resume()
        # RNG states at the start of step self.step: what a crash checkpoint must store
        self._rng_snapshot = capture_rng(self.data_gen)

    # ---------------------------------------------------------------------------- setup helpers
    def _resolve_autocast(self):
        name = self.cfg.autocast_dtype
        if name == "auto":
            name = "bf16" if self.device_type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
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
            "format": FORMAT,
            "step": self.step,
            "best_val_loss": self.best_val_loss,
            "val_loss": self.last_val_loss,
            "tokens_seen": self.tokens_seen,
            "model": strip_wrappers(self.raw_model.state_dict()),
            "model_class": type(self.raw_model).__name__,
            "model_config": dataclasses.asdict(cfg_obj) if dataclasses.is_dataclass(cfg_obj) else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "train_config": self.cfg.to_dict(),
            "world_size": self.dist.world_size,
            "rng": rng if rng is not None else capture_rng(self.data_gen),
            "extra": self.extra,
        }

    def save(self, name: str, rng: dict | None = None) -> Path | None:
        """Rank 0 writes out_dir/name atomically; other ranks do nothing."""
        if not self.dist.is_main:
            return None
        return save_checkpoint(self.out_dir / name, self.state_dict(rng))

    def _resume(self) -> None:
        path = newest_checkpoint(self.out_dir)
        if path is None:
            raise FileNotFoundError(f"resume=True but {self.out_dir} holds no ckpt.pt or last.pt to resume from")
        ckpt = load_checkpoint(path, map_location=self.device)
        self.raw_model.load_state_dict(strip_wrappers(ckpt["model"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        restore_rng(ckpt["rng"], self.data_gen)
        if self.dist.rank > 0:
            # only rank 0's RNG was saved; give the other ranks their own (dropout) streams again
            torch.manual_seed(self.cfg.seed + self.dist.rank + 7919 * int(ckpt["step"]))
        self.step, self.best_val_loss = int(ckpt["step"]), float(ckpt["best_val_loss"])
        self.last_val_loss, self.tokens_seen = ckpt.get("val_loss"), int(ckpt.get("tokens_seen", 0))
        self.resumed_from = path

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
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.tokens_seen += self.tokens_per_step
        loss = distributed.all_reduce_mean(loss_sum / n, self.dist)  # the global batch's mean loss
        return {"train_loss": float(loss), "lr": lr, "grad_norm": float(grad_norm)}

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
    def _should_stop_for_time(self, t0: float) -> bool:
        if self.cfg.time_budget is None:
            return False
        flag = torch.tensor([float(time.perf_counter() - t0 >= self.cfg.time_budget)])
        if self.dist.enabled:  # rank 0 decides, so every rank leaves the loop at the same step
            flag = flag.to(self.device)
            dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _eval_and_save(self, metrics: MetricsWriter | None, row: dict) -> None:
        val = self.evaluate()
        row["val_loss"] = self.last_val_loss = val
        improved = val < self.best_val_loss
        self.best_val_loss = min(self.best_val_loss, val)
        if self.dist.is_main:
            self.save("ckpt.pt")
            if improved and self.cfg.save_best:
                self.save("best.pt")

    def fit(self) -> dict:
        cfg, main = self.cfg, self.dist.is_main
        metrics = MetricsWriter(self.out_dir, resume_step=self.step if self.resumed_from else None) if main else None
        t0 = time.perf_counter()
        pbar = None
        if main and cfg.progress:
            from tqdm.auto import tqdm
            pbar = tqdm(total=cfg.max_iters, initial=self.step, desc="train", dynamic_ncols=True, file=sys.stderr)
        row, tok_s_ema = None, None
        try:
            if self.step == 0:
                # the starting point of the curves (≈ ln vocab_size for a fresh model); every rank
                # evaluates because the evaluation ends in a collective
                val0 = self.evaluate()
                if metrics is not None and not metrics.rows:
                    metrics.log({"step": 0, "val_loss": val0, "elapsed_s": 0.0, "tokens_seen": 0})
            while self.step < cfg.max_iters:
                t_step = time.perf_counter()
                batches = self.sample_micro_batches(self.train_data, self.data_gen, cfg.grad_accum_steps)
                row = self.train_step(batches)
                self._rng_snapshot = capture_rng(self.data_gen)  # state at the start of step self.step
                dt = time.perf_counter() - t_step
                tok_s = self.tokens_per_step / max(dt, 1e-9)
                tok_s_ema = tok_s if tok_s_ema is None else 0.9 * tok_s_ema + 0.1 * tok_s
                row.update(step=self.step, tokens_per_s=tok_s, tokens_seen=self.tokens_seen,
                           elapsed_s=time.perf_counter() - t0)
                out_of_time = self._should_stop_for_time(t0)
                evaluated = self.step % cfg.eval_interval == 0 or self.step == cfg.max_iters or out_of_time
                if evaluated:
                    self._eval_and_save(metrics, row)
                if metrics is not None and (self.step % cfg.log_interval == 0 or evaluated):
                    metrics.log(row)
                    if evaluated:
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
        except BaseException:
            # Ctrl-C or a crash: keep the last finished step. Its RNG states are the snapshot, not the
            # current ones (the interrupted step may already have drawn its batch).
            if main:
                path = self.save("last.pt", rng=self._rng_snapshot)
                print(f"\ninterrupted at step {self.step}: saved {path}; continue with resume=True (--resume)",
                      file=sys.stderr)
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
            "best_val_loss": self.best_val_loss, "tokens_per_s": tok_s_ema, "elapsed_s": time.perf_counter() - t0,
            "ckpt": self.out_dir / "ckpt.pt", "best": self.out_dir / "best.pt", "last": self.out_dir / "last.pt",
            "metrics_jsonl": self.out_dir / "metrics.jsonl", "metrics_csv": self.out_dir / "metrics.csv",
            "plot": self.out_dir / "loss.png",
        }
