"""Learning-rate schedule: linear warmup, then cosine decay to min_lr, then flat at min_lr.

      lr ▲    ___
         │   /   ‾‾--.__
         │  /           ‾‾--.___
  min_lr │ /                     ‾‾‾‾‾‾‾‾‾
         └──────┴──────────────────┴───────▶ step
              warmup            decay_iters

Warmup keeps the first Adam updates small while its second-moment estimates are still noise;
the cosine tail anneals towards min_lr so the last steps average out the gradient noise.
"""

from __future__ import annotations

import math


def lr_at(step: int, *, lr: float, min_lr: float, warmup_iters: int, decay_iters: int) -> float:
    """Learning rate for optimizer step ``step`` (0-based: the first update uses lr_at(0))."""
    if step < warmup_iters:
        # (step + 1) so step 0 already moves (lr / warmup), and step warmup-1 reaches the full lr
        return lr * (step + 1) / warmup_iters
    if step >= decay_iters:
        return min_lr
    progress = (step - warmup_iters) / max(1, decay_iters - warmup_iters)  # 0 -> 1
    coeff = 0.5 * (1.0 + math.cos(math.pi * progress))                       # 1 -> 0
    return min_lr + coeff * (lr - min_lr)


def lr_for_config(step: int, cfg) -> float:
    return lr_at(step, lr=cfg.lr, min_lr=cfg.min_lr, warmup_iters=cfg.warmup_iters, decay_iters=cfg.decay_iters)
