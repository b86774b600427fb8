"""What a resumed run may change, and how the trainer tells that the data are still the same.

A resumed run continues the run its checkpoint describes. The settings that define the
trajectory (optimizer, schedule, batch, seed, precision, validation set) come from the checkpoint;
a config that asks for other values is refused, since honouring them silently would make a run no
uninterrupted run could reproduce. Settings that only change how long the run goes or how it is
observed are applied, with a note.
"""

from __future__ import annotations

import dataclasses
import hashlib

import torch

from ..errors import UserError
from .config import TrainConfig

# applied on resume, with a note when they differ from the checkpoint's
CHANGEABLE = ("max_iters", "time_budget", "eval_interval", "log_interval", "save_best", "device", "compile")
# not about the run at all
IGNORED = ("progress", "resume")
# every other TrainConfig field must equal the checkpoint's (new fields are safe by default)

FULL_HASH_TOKENS = 1 << 24     # hash every token up to this length ...
SAMPLED_CHUNKS, CHUNK = 256, 1 << 16  # ... and evenly spaced chunks of longer streams (memmaps of GBs)


class ResumeConflict(UserError):
    """A resumed run was asked to change what defines it."""


def resolve_config(stored: dict, cfg: TrainConfig) -> tuple[TrainConfig, list[str], list[str]]:
    """(config to run with, notes, conflicts) for resuming a checkpoint whose train_config is ``stored``.

    A longer or shorter --max-iters keeps the checkpoint's LR schedule: the cosine still ends where
    it was going to (lr_decay_iters is pinned to it), and the steps past it run at min_lr."""
    old = TrainConfig.from_dict(stored)
    notes, conflicts = [], []
    pinned = cfg.max_iters != old.max_iters and cfg.lr_decay_iters is None and old.lr_decay_iters is None
    if pinned:
        cfg = dataclasses.replace(cfg, lr_decay_iters=old.decay_iters)
        notes.append(f"max_iters {cfg.max_iters} (was {old.max_iters}); the LR schedule stays the checkpoint's "
                     f"(cosine to step {old.decay_iters}, then min_lr)")
    for f in dataclasses.fields(TrainConfig):
        name, new = f.name, getattr(cfg, f.name)
        if name in IGNORED or name not in stored or pinned and name in ("max_iters", "lr_decay_iters"):
            continue
        was = getattr(old, name)
        if new == was:
            continue
        if name in CHANGEABLE:
            notes.append(f"{name} {new} (was {was})")
        elif name == "lr_decay_iters" and new == old.decay_iters:
            continue  # the same schedule, spelled out
        else:
            conflicts.append(f"{name}={new!r} (checkpoint: {was!r})")
    return cfg, notes, conflicts


def data_fingerprint(data) -> dict:
    """Length and sha256 of a token stream (as int64), exact up to FULL_HASH_TOKENS tokens and over
    SAMPLED_CHUNKS evenly spaced chunks beyond, so a multi-GB memmap costs a fraction of a second."""
    n = len(data)
    h = hashlib.sha256()
    if n <= FULL_HASH_TOKENS:
        spans = [(0, n)]
    else:
        stride = (n - CHUNK) // (SAMPLED_CHUNKS - 1)
        spans = [(i * stride, i * stride + CHUNK) for i in range(SAMPLED_CHUNKS)]
    for a, b in spans:
        h.update(torch.as_tensor(data[a:b]).to(torch.int64).contiguous().numpy().tobytes())
    return {"tokens": n, "sha256": h.hexdigest(), "sampled": n > FULL_HASH_TOKENS}
