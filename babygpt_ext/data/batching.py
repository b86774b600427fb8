"""Train/val split and random (x, y) batches for next-token prediction."""

from __future__ import annotations

import numpy as np
import torch


def split(ids, val_fraction: float = 0.1):
    """Split a token sequence into (train, val): val is the contiguous *tail*.

    A contiguous tail (rather than random positions) keeps validation text unseen as a whole -
    random windows would overlap the training windows and flatter the model. Works on lists,
    numpy arrays/memmaps and tensors (slices, no copies for the latter two).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    n = len(ids)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0 and (n_val == 0 or n_val == n):
        raise ValueError(f"split: {n} tokens are too few for val_fraction={val_fraction}")
    return ids[: n - n_val], ids[n - n_val:]


def get_batch(data, batch_size: int, block_size: int, *, generator: torch.Generator | None = None,
              device: str | torch.device = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Random windows: ``x`` (B, T) int64 and ``y`` (B, T), ``y`` being ``x`` shifted left by
    one token (``y[b, t]`` is the token that follows ``x[b, t]`` in ``data``).

    ``data`` is a 1-D torch tensor or numpy array (a ``np.memmap`` from ``open_tokens`` works
    and only the sampled windows are read from disk). Offsets come from ``generator`` so a seeded
    generator gives the same batches.
    """
    if getattr(data, "ndim", 1) != 1:
        raise ValueError(f"get_batch: data must be 1-D, got shape {tuple(data.shape)}")
    if batch_size < 1 or block_size < 1:
        raise ValueError(f"get_batch: batch_size and block_size must be >= 1, got {batch_size}, {block_size}")
    n = len(data)
    if n <= block_size:
        raise ValueError(f"get_batch: data has {n} tokens, needs more than block_size={block_size}")
    # (B,) start offsets in [0, n - block_size): every window x = data[i : i+T], y = data[i+1 : i+T+1]
    starts = torch.randint(n - block_size, (batch_size,), generator=generator)
    if isinstance(data, torch.Tensor):
        # (B, T+1) index matrix -> one gather instead of B slices
        idx = starts[:, None] + torch.arange(block_size + 1)
        win = data[idx.to(data.device)].to(torch.int64)
    else:
        win = torch.from_numpy(np.stack([np.asarray(data[i: i + block_size + 1], dtype=np.int64)
                                         for i in starts.tolist()]))
    x, y = win[:, :-1].contiguous(), win[:, 1:].contiguous()  # (B, T) each
    device = torch.device(device)
    if x.device.type == "cpu" and device.type == "cuda":
        # pinned memory lets the host-to-device copy overlap with compute
        return x.pin_memory().to(device, non_blocking=True), y.pin_memory().to(device, non_blocking=True)
    return x.to(device), y.to(device)
