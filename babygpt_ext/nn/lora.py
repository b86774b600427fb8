"""LoRALinear: a frozen-able nn.Linear plus a trainable low-rank update (Hu et al., 2021).

    layer = LoRALinear(nn.Linear(128, 384), r=8, alpha=16)
    y = layer(x)            # x Wᵀ + b + (alpha/r) · (x Aᵀ) Bᵀ, one fused op (ops.lora_linear)
    layer.merge()           # W += (alpha/r) · B A; forward is then the plain Linear
    layer.unmerge()         # W -= (alpha/r) · B A

Names follow PEFT: lora_A (r, in) starts kaiming-uniform, lora_B (out, r) starts at zero, so a
freshly wrapped layer computes exactly what the base layer did, and training moves away from it.
The base layer stays in `self.base`; freezing it is babygpt_ext.lora.mark_only_lora_trainable's job.

LoRA dropout (dropout > 0, training mode) drops inputs of the low-rank path only, so the update is
scale · B A dropout(x) while the base path sees x. The fused op takes one x for both paths, so that
case runs the eager composition (base Linear + two small matmuls) instead.
"""

import math
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0,
                 backend: Optional[str] = None):
        super().__init__()
        if not isinstance(base, nn.Linear):
            raise TypeError(f"LoRALinear: base must be an nn.Linear, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRALinear: r must be a positive int, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.backend = backend
        out_f, in_f = base.weight.shape
        kw = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, in_f, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, **kw))  # (out, r)
        # Same init as nn.Linear's weight (and PEFT's lora_A): kaiming-uniform with a = sqrt(5).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout = dropout
        self._merged = False

    # nn.Linear look-alikes, so code that inspects .weight/.in_features keeps working after inject().
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def merged(self) -> bool:
        return self._merged

    def delta_weight(self) -> torch.Tensor:
        """scale · B A, the (out, in) update LoRA adds to the base weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold scale · B A into the base weight: inference then costs one plain Linear."""
        if not self._merged:
            self.base.weight.add_(self.delta_weight().to(self.base.weight.dtype))
            self._merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract scale · B A again (equal to the pre-merge weight up to float rounding)."""
        if self._merged:
            self.base.weight.sub_(self.delta_weight().to(self.base.weight.dtype))
            self._merged = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise ValueError(f"LoRALinear: x must be (..., in_features={self.in_features}), got {tuple(x.shape)}")
        if self._merged:
            return self.base(x)
        if self.training and self.dropout > 0:
            # Eager composition: dropout applies to the low-rank path's input only (see module doc).
            xa = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
            return self.base(x) + self.scale * F.linear(xa, self.lora_B)
        return ops.lora_linear(x, self.base.weight, self.base.bias, self.lora_A, self.lora_B, self.scale,
                               backend=self.backend)

    def extra_repr(self) -> str:
        return f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, dropout={self.dropout}, merged={self._merged}"
