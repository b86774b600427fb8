"""TrainConfig: every knob of a training run, as one plain dataclass.

It is stored in every checkpoint as a plain dict (``dataclasses.asdict``), so a checkpoint can be
loaded with ``torch.load(..., weights_only=True)`` and still say how it was made.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Optional

AUTOCAST_DTYPES = ("fp32", "bf16", "fp16")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    # ---- batch: tokens per optimizer step = batch_size * block_size * grad_accum_steps * world_size
    batch_size: int = 16           # sequences per micro-batch, per process
    block_size: Optional[int] = None  # sequence length; None = the model's context length
    grad_accum_steps: int = 1      # micro-batches whose gradients are summed before one optimizer step
    # ---- optimizer (AdamW) and schedule (linear warmup, then cosine decay to min_lr)
    max_iters: int = 1000          # optimizer steps; also the length of the cosine schedule
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_iters: int = 100
    lr_decay_iters: Optional[int] = None  # where the cosine reaches min_lr; None = max_iters
    weight_decay: float = 0.1      # applied to matrices only (embeddings/linear weights), not biases/norms
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0         # max global grad norm; 0 disables clipping
    # ---- evaluation, logging, checkpoints
    eval_interval: int = 100       # evaluate + checkpoint every this many steps (and at the end)
    eval_iters: int = 20           # validation batches averaged per evaluation
    log_interval: int = 1          # write a metrics row every this many steps
    save_best: bool = True         # also keep best.pt (lowest validation loss)
    progress: bool = True          # tqdm progress bar (rank 0 only)
    # ---- reproducibility, hardware
    seed: int = 1337
    device: str = "auto"           # auto = cuda if available else cpu
    autocast_dtype: str = "auto"   # auto = bf16 where the GPU/CPU multiplies bf16 natively, else fp32
    compile: bool = False          # torch.compile the model
    resume: bool = False           # continue from the newest checkpoint in out_dir
    time_budget: Optional[float] = None  # seconds of training; stop cleanly (eval + checkpoint) when spent

    def __post_init__(self):
        positive = ("batch_size", "grad_accum_steps", "max_iters", "eval_interval", "eval_iters", "log_interval")
        for name in positive:
            val = getattr(self, name)
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive int, got {val!r}")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"TrainConfig.block_size must be >= 1 or None, got {self.block_size}")
        if self.warmup_iters < 0:
            raise ValueError(f"TrainConfig.warmup_iters must be >= 0, got {self.warmup_iters}")
        if self.lr <= 0 or self.min_lr < 0 or self.min_lr > self.lr:
            raise ValueError(f"TrainConfig needs lr > 0 and 0 <= min_lr <= lr, got lr={self.lr}, min_lr={self.min_lr}")
        if self.grad_clip < 0 or self.weight_decay < 0:
            raise ValueError(f"TrainConfig.grad_clip and weight_decay must be >= 0, "
                             f"got {self.grad_clip}, {self.weight_decay}")
        if self.device not in DEVICES:
            raise ValueError(f"TrainConfig.device must be one of {DEVICES}, got {self.device!r}")
        if self.autocast_dtype not in AUTOCAST_DTYPES + ("auto",):
            raise ValueError(f"TrainConfig.autocast_dtype must be auto or one of {AUTOCAST_DTYPES}, "
                             f"got {self.autocast_dtype!r}")
        if self.time_budget is not None and self.time_budget <= 0:
            raise ValueError(f"TrainConfig.time_budget must be > 0 seconds or None, got {self.time_budget}")

    @property
    def decay_iters(self) -> int:
        return self.lr_decay_iters if self.lr_decay_iters is not None else self.max_iters

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Rebuild from a stored dict, ignoring keys this version does not know (older/newer runs)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})
