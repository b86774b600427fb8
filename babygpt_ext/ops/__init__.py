"""Functional API of babygpt_ext: fused causal attention and fused LoRA linear.

    from babygpt_ext import ops
    o = ops.causal_attention(q, k, v)                  # q (B, H, Tq, D), k/v (B, Hkv, Tk, D)
    y = ops.lora_linear(x, w, b, lora_a, lora_b, alpha / r)
    print(ops.explain(q, k, v))                        # which backend runs, and why

Every call is validated here, before any kernel runs, then dispatched to a backend (registry.py).
"""

from dataclasses import dataclass
from typing import Optional

import torch

from . import backends as _backends  # noqa: F401  (registers the backends)
from . import validate
from .registry import BACKENDS, Backend, BackendUnavailableError, Call, decide, register, resolve

__all__ = ["causal_attention", "lora_linear", "available_backends", "explain", "Explanation", "BACKENDS",
           "Backend", "BackendUnavailableError", "register"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     scale: Optional[float] = None, backend: Optional[str] = None) -> torch.Tensor:
    """softmax(scale · q kᵀ + mask) v, computed without materialising the scores where the backend can.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (GQA/MQA). With causal=True
    the mask is bottom-right aligned (query i sees keys j <= i + Tk - Tq), so Tq < Tk is the
    KV-cache decoding case. causal=False allows any Tq, Tk (cross and spatial attention).
    scale defaults to D**-0.5. Returns (B, H, Tq, D) in q's dtype.
    """
    scale = validate.attention_args(q, k, v, causal, scale)
    b = resolve(Call("attention", q.device.type, q.dtype, q.shape[-1]), backend)
    return b.attention(q, k, v, scale, causal)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, *, backend: Optional[str] = None) -> torch.Tensor:
    """x Wᵀ + b + scale · (x Aᵀ) Bᵀ in one pass: x (..., in), W (out, in), A (r, in), B (out, r).

    scale is LoRA's alpha / r. bias may be None. Returns (..., out) in x's dtype.
    """
    scale = validate.lora_args(x, weight, bias, lora_a, lora_b, scale)
    b = resolve(Call("lora", x.device.type, x.dtype), backend)
    lead = x.shape[:-1]
    y = b.lora(x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scale)  # (N, out)
    return y.reshape(*lead, weight.shape[0])


def available_backends(device: Optional[str] = None) -> list:
    """Names of the backends usable on this machine (optionally: for tensors on `device`)."""
    return [n for n, b in BACKENDS.items()
            if b.why_unavailable() is None and (device is None or torch.device(device).type in b.devices)]


@dataclass
class Explanation:
    backend: str
    how: str
    skipped: list  # [(name, reason)]

    def __str__(self) -> str:
        lines = [f"backend: {self.backend} ({self.how})"]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
            scale: Optional[float] = None, backend: Optional[str] = None) -> Explanation:
    """Which backend causal_attention(q, k, v, ...) would run, and why the others were passed over."""
    validate.attention_args(q, k, v, causal, scale)
    chosen, skipped, how = decide(Call("attention", q.device.type, q.dtype, q.shape[-1]), backend)
    return Explanation(chosen.name, how, skipped)
