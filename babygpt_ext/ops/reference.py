"""The eager compositions: the readable definition of every op, and the float64 test reference.

Everything else in the package (C++, CUDA, Triton) must agree with these functions.
"""

import torch


def causal_mask(tq: int, tk: int, device=None) -> torch.Tensor:
    """(Tq, Tk) bool, True where query i may see key j.

    Bottom-right aligned: the Tq queries are the *last* Tq positions of a Tk-long sequence, so
    query i sees keys j <= i + (Tk - Tq). With Tq == Tk this is the usual lower triangle; with
    Tq == 1 (decoding with a KV cache) the single query sees every key.
    """
    return torch.ones(tq, tk, dtype=torch.bool, device=device).tril(diagonal=tk - tq)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, causal: bool) -> torch.Tensor:
    """softmax(scale · q kᵀ + mask) v, materialising the (Tq, Tk) score matrix."""
    h, hkv = q.shape[1], k.shape[1]
    if hkv != h:  # GQA/MQA: each group of H/Hkv query heads shares one key/value head
        k = k.repeat_interleave(h // hkv, dim=1)
        v = v.repeat_interleave(h // hkv, dim=1)
    att = (q @ k.transpose(-2, -1)) * scale  # (B, H, Tq, Tk)
    if causal:
        att = att.masked_fill(~causal_mask(q.shape[2], k.shape[2], q.device), float("-inf"))
    # Normalise over the keys (the last axis): normalising over the queries (dim=-2) would let
    # every position attend to the future.
    att = torch.softmax(att, dim=-1)
    return att @ v  # (B, H, Tq, D)


def lora_linear(x, weight, bias, lora_a, lora_b, scale: float) -> torch.Tensor:
    """x Wᵀ + b + scale · (x Aᵀ) Bᵀ for x (..., in), W (out, in), A (r, in), B (out, r)."""
    y = torch.nn.functional.linear(x, weight, bias)
    return y + scale * torch.nn.functional.linear(torch.nn.functional.linear(x, lora_a), lora_b)


def bias_gelu(x, bias) -> torch.Tensor:
    """gelu(x + bias), the exact (erf) GELU, for x (..., F) and bias (F,) or None."""
    return torch.nn.functional.gelu(x if bias is None else x + bias)
