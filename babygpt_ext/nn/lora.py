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

The base may also be Hugging Face's `transformers.pytorch_utils.Conv1D` (GPT-2's c_attn, c_proj,
c_fc): a Linear that stores its weight transposed, (in, out). A and B keep their (r, in) and
(out, r) shapes either way, as in PEFT (its fan_in_fan_out); only the base weight is read and
merged transposed.

Under torch.autocast, ops.lora_linear is a custom op: autocast casts none of its inputs, yet
would cast some matmuls inside a kernel and not others (a dtype mismatch). So forward casts the
inputs as autocast casts F.linear's (floating tensors other than float64, to the autocast dtype)
and runs the op with autocast off, as torch.amp.custom_fwd(cast_inputs=...) does.
"""

import math
import sys
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops

SUPPORTED_BASES = "nn.Linear and transformers' Conv1D (GPT-2)"


def is_hf_conv1d(module: nn.Module) -> bool:
    """True for transformers.pytorch_utils.Conv1D. A model holding one has imported transformers,
    so looking the class up in sys.modules never imports it."""
    conv1d = getattr(sys.modules.get("transformers.pytorch_utils"), "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)


def is_adaptable(module: nn.Module) -> bool:
    """Whether LoRALinear can wrap this module."""
    return isinstance(module, nn.Linear) or is_hf_conv1d(module)


def _autocast_cast(t: Optional[torch.Tensor], dtype: torch.dtype) -> Optional[torch.Tensor]:
    if t is None or not t.is_floating_point() or t.dtype == torch.float64:
        return t  # autocast leaves float64 alone
    return t.to(dtype)


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0,
                 backend: Optional[str] = None):
        super().__init__()
        if not is_adaptable(base):
            raise TypeError(f"LoRALinear: base must be one of {SUPPORTED_BASES}, got {type(base).__name__}")
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise ValueError(f"LoRALinear: r must be a positive int, got {r!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"LoRALinear: dropout must be in [0, 1), got {dropout}")
        self.base = base
        self.r, self.alpha, self.scale = r, alpha, alpha / r
        self.backend = backend
        self.fan_in_fan_out = is_hf_conv1d(base)  # base.weight is (in, out)
        in_f, out_f = base.weight.shape if self.fan_in_fan_out else base.weight.shape[::-1]
        self.in_features, self.out_features = in_f, out_f
        kw = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, in_f, **kw))  # (r, in)
        self.lora_B = nn.Parameter(torch.zeros(out_f, r, **kw))  # (out, r)
        # Same init as nn.Linear's weight (and PEFT's lora_A): kaiming-uniform with a = sqrt(5).
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.dropout = dropout
        self._merged = False
        self.train(base.training)  # wrapping a layer of an eval() model must not switch LoRA dropout on

    # Look-alikes of the base, so code that inspects .weight/.bias keeps working after inject().
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self.base.bias

    @property
    def merged(self) -> bool:
        return self._merged

    def base_weight_out_in(self) -> torch.Tensor:
        """The base weight as (out, in), nn.Linear's layout (a transposed view for Conv1D)."""
        return self.base.weight.t() if self.fan_in_fan_out else self.base.weight

    def delta_weight(self) -> torch.Tensor:
        """scale · B A, the (out, in) update LoRA adds to the base weight."""
        return self.scale * (self.lora_B @ self.lora_A)

    @torch.no_grad()
    def merge(self) -> None:
        """Fold scale · B A into the base weight: inference then costs one plain Linear."""
        if not self._merged:
            self.base_weight_out_in().add_(self.delta_weight().to(self.base.weight.dtype))
            self._merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract scale · B A again (equal to the pre-merge weight up to float rounding)."""
        if self._merged:
            self.base_weight_out_in().sub_(self.delta_weight().to(self.base.weight.dtype))
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
        args = (x, self.base_weight_out_in(), self.base.bias, self.lora_A, self.lora_B)
        device = x.device.type
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            dtype = torch.get_autocast_dtype(device)
            with torch.autocast(device, enabled=False):
                return ops.lora_linear(*(_autocast_cast(t, dtype) for t in args), self.scale, backend=self.backend)
        return ops.lora_linear(*args, self.scale, backend=self.backend)

    def extra_repr(self) -> str:
        return (f"r={self.r}, alpha={self.alpha}, scale={self.scale:g}, dropout={self.dropout}, merged={self._merged}"
                + (", fan_in_fan_out=True" if self.fan_in_fan_out else ""))
