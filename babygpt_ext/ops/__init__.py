"""Functional API of babygpt_ext: fused causal attention, fused LoRA linear, fused bias + GELU, LayerNorm.

    from babygpt_ext import ops
    o = ops.causal_attention(q, k, v)                  # q (B, H, Tq, D), k/v (B, Hkv, Tk, D)
    y = ops.qkv_attention(c_attn(x), n_head)           # a GPT layer's attention: (B, T, (3) H D) -> (B, T, H D)
    y = ops.lora_linear(x, w, b, lora_a, lora_b, alpha / r)
    h = ops.bias_gelu(x, b)                            # gelu(x + b), the MLP's activation
    h = ops.layer_norm(x, ln.weight, ln.bias, ln.eps)  # nn.LayerNorm, output in the autocast dtype
    print(ops.explain(q, k, v))                        # which backend runs, measured times, and why

Every call is validated here, before any kernel runs, then handed to the engine (engine.py), which
runs it on the backend measured fastest for its call key (registry.py: the backends and the static
policy; table.py: the ops).
"""

from dataclasses import dataclass, field
from typing import Optional

import torch

from . import backends as _backends  # noqa: F401  (registers the backends)
from . import engine
from .dropout import dropout_mask
from .registry import BACKENDS, Backend, BackendUnavailableError, register
from .table import OPS

__all__ = ["causal_attention", "qkv_attention", "lora_linear", "bias_gelu", "layer_norm", "dropout_mask", "available_backends",
           "explain", "explain_qkv", "explain_lora", "Explanation", "BACKENDS", "OPS", "Backend",
           "BackendUnavailableError", "register"]

_ATTENTION, _QKV_ATTENTION = OPS["attention"], OPS["qkv_attention"]
_LORA, _BIAS_GELU, _LAYER_NORM = OPS["lora"], OPS["bias_gelu"], OPS["layer_norm"]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
                     scale: Optional[float] = None, dropout_p: float = 0.0, seed: Optional[int] = None,
                     backend: Optional[str] = None) -> torch.Tensor:
    """softmax(scale · q kᵀ + mask) v, computed without materialising the scores where the backend can.

    q: (B, H, Tq, D); k, v: (B, Hkv, Tk, D) with H a multiple of Hkv (GQA/MQA). With causal=True
    the mask is bottom-right aligned (query i sees keys j <= i + Tk - Tq), so Tq < Tk is the
    KV-cache decoding case. causal=False allows any Tq, Tk (cross and spatial attention).
    scale defaults to D**-0.5; any finite scale, zero and negative too, gives finite results.
    Returns (B, H, Tq, D) in q's dtype (empty when B, Tq or Tk is 0).

    NaN/Inf (docs/design.md §2.7): masked (future) keys never affect any output or gradient, even
    holding NaN/Inf; a NaN/Inf at a visible position makes the outputs that see it non-finite (NaN
    or ±Inf: which one is not promised).

    dropout_p > 0 drops each attention weight with that probability and scales the kept ones by
    1 / (1 - dropout_p), as nn.Dropout on the softmax would (use it while training only). The mask
    is dropout_mask(seed, B, H, Tq, Tk, dropout_p), the same on every backend; seed=None draws the
    seed from torch's default CPU generator, so torch.manual_seed makes a run repeat.
    """
    return engine.run(_ATTENTION, _ATTENTION.validate(q, k, v, causal, scale, dropout_p, seed), backend)


def qkv_attention(qkv: torch.Tensor, n_head: int, n_kv_head: Optional[int] = None, *, causal: bool = True,
                  scale: Optional[float] = None, dropout_p: float = 0.0, seed: Optional[int] = None,
                  backend: Optional[str] = None) -> torch.Tensor:
    """A GPT layer's attention from its fused projection: qkv (B, T, (n_head + 2·n_kv_head)·D) holds
    q's n_head heads, then k's and v's n_kv_head heads, side by side along the last axis (nanoGPT's
    c_attn output; n_kv_head defaults to n_head). Returns (B, T, n_head·D), the heads side by side,
    ready for c_proj: causal_attention on the split heads, with the heads merged after.

    The same numbers as that composition on every backend; the cpu backend reads and writes these
    layouts in place, so neither the forward nor the gradient of qkv makes a copy. causal, scale,
    dropout_p and seed are causal_attention's.
    """
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    return engine.run(_QKV_ATTENTION, _QKV_ATTENTION.validate(qkv, n_head, n_kv_head, causal, scale, dropout_p, seed),
                      backend)


def lora_linear(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor], lora_a: torch.Tensor,
                lora_b: torch.Tensor, scale: float, *, backend: Optional[str] = None) -> torch.Tensor:
    """x Wᵀ + b + scale · (x Aᵀ) Bᵀ in one pass: x (..., in), W (out, in), A (r, in), B (out, r).

    scale is LoRA's alpha / r. bias may be None. Returns (..., out) in x's dtype.
    """
    y = engine.run(_LORA, _LORA.validate(x, weight, bias, lora_a, lora_b, scale), backend)  # (N, out)
    return y if x.dim() == 2 else y.reshape(*x.shape[:-1], weight.shape[0])


def bias_gelu(x: torch.Tensor, bias: Optional[torch.Tensor], *, backend: Optional[str] = None) -> torch.Tensor:
    """gelu(x + bias), the exact (erf) GELU, in one pass (and one backward pass that also sums dbias):
    x (..., F), bias (F,) or None. Returns x's shape and dtype."""
    return engine.run(_BIAS_GELU, _BIAS_GELU.validate(x, bias), backend).reshape(x.shape)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float = 1e-5, *,
               backend: Optional[str] = None) -> torch.Tensor:
    """nn.LayerNorm over the last axis: (x - mean) / sqrt(var + eps) * weight + bias, x (..., C),
    weight and bias (C,) or None (float32 or x's dtype). Returns x's shape in the dtype the next op
    wants: inside an enabled autocast region of x's device its autocast dtype (the bf16 a Linear
    would cast the float32 output to; float64 stays float64), else x's dtype. Statistics are float32
    (float64 for float64 x); the backward returns dx in x's dtype and dweight, dbias in theirs."""
    y = engine.run(_LAYER_NORM, _LAYER_NORM.validate(x, weight, bias, eps), backend)  # (N, C)
    return y if x.dim() == 2 else y.reshape(x.shape)


def available_backends(device: Optional[str] = None, op: Optional[str] = None) -> list:
    """Names of the backends usable on this machine (optionally: for tensors on `device`, with an
    implementation of `op`)."""
    return [n for n, b in BACKENDS.items()
            if b.why_unavailable() is None and (device is None or torch.device(device).type in b.devices)
            and (op is None or op in b.impls)]


@dataclass
class Explanation:
    backend: str
    how: str
    skipped: list  # [(name, reason)]
    key: str = ""  # the call key, as the tuning cache names it
    times: dict = field(default_factory=dict)  # name -> measured seconds per call (fwd, or fwd+bwd)
    failed: dict = field(default_factory=dict)  # name -> the error it raised while being timed

    def __str__(self) -> str:
        lines = [f"backend: {self.backend} ({self.how})"]
        if self.key:
            lines.append(f"  key: {self.key}")
        lines += [f"  measured {name}: {duration(t)}" for name, t in sorted(self.times.items(), key=lambda x: x[1])]
        lines += [f"  failed {name}: {why}" for name, why in self.failed.items()]
        lines += [f"  skipped {name}: {why}" for name, why in self.skipped]
        return "\n".join(lines)


def duration(seconds: float) -> str:
    return f"{seconds * 1e3:.2f} ms" if seconds >= 1e-3 else f"{seconds * 1e6:.1f} µs"


def _explain(spec, args, backend) -> Explanation:
    call = engine.call_of(spec, args)
    if call is None:
        return Explanation("eager", "the output is empty: the reference composition returns it", [])
    d = engine.decision(spec, args, backend, call)
    return Explanation(d.backend, d.how, d.skipped, call.label(), d.times, d.failed)


def explain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool = True,
            scale: Optional[float] = None, dropout_p: float = 0.0, backend: Optional[str] = None) -> Explanation:
    """Which backend causal_attention(q, k, v, ...) runs, why, and the measured time of every
    candidate (deciding exactly as that call would, measuring if it would; a dropout call is timed
    with a fixed seed, drawing nothing from torch's generator)."""
    return _explain(_ATTENTION, _ATTENTION.validate(q, k, v, causal, scale, dropout_p, 0), backend)


def explain_qkv(qkv: torch.Tensor, n_head: int, n_kv_head: Optional[int] = None, *, causal: bool = True,
                scale: Optional[float] = None, dropout_p: float = 0.0, backend: Optional[str] = None) -> Explanation:
    """As explain, for qkv_attention(qkv, n_head, n_kv_head, ...)."""
    n_kv_head = n_head if n_kv_head is None else n_kv_head
    return _explain(_QKV_ATTENTION, _QKV_ATTENTION.validate(qkv, n_head, n_kv_head, causal, scale, dropout_p, 0),
                    backend)


def explain_lora(x, weight, bias, lora_a, lora_b, scale, *, backend: Optional[str] = None) -> Explanation:
    """As explain, for lora_linear(x, weight, bias, lora_a, lora_b, scale)."""
    return _explain(_LORA, _LORA.validate(x, weight, bias, lora_a, lora_b, scale), backend)
