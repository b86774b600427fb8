"""The pre-LayerNorm transformer block of GPT-2 / nanoGPT: x + attn(ln(x)), then x + mlp(ln(x)).

Normalising *before* each sublayer (not after, as in the 2017 paper) keeps the residual stream an
untouched sum, which is what lets deep stacks train without warmup tricks.

The LayerNorms stay nn.LayerNorm modules (their state_dict keys are nanoGPT's and HF's), but a
plain one runs as ops.layer_norm (layer_norm below): under bf16 autocast its output is already the
bf16 the next Linear wants, so neither the cast after it nor that cast's backward runs.
"""

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from .attention import CausalSelfAttention, KVCache


_module = torch.nn.modules.module  # the global hooks, which a direct call would skip


def layer_norm(ln: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """ln(x) for any norm module; a plain nn.LayerNorm over the last axis (no hooks, its own class)
    runs as the fused op, whose output dtype follows autocast (ops.layer_norm)."""
    if (type(ln) is nn.LayerNorm and len(ln.normalized_shape) == 1 and not (ln._forward_hooks or ln._forward_pre_hooks)
            and not (_module._global_forward_hooks or _module._global_forward_pre_hooks)):
        return ops.layer_norm(x, ln.weight, ln.bias, ln.eps)
    return ln(x)


class MLP(nn.Module):
    """Position-wise feed-forward: widen 4×, GELU, project back (nanoGPT names c_fc, c_proj).

    c_fc's bias is added inside the GELU's pass (ops.bias_gelu), not by the GEMM: one pass over the
    (B, T, 4C) activations forward and one backward (which also sums c_fc's bias gradient), where
    addmm + GELU + their backwards make four. A c_fc that is not a plain nn.Linear (LoRA) runs as
    a module.
    """

    def __init__(self, n_embd: int, bias: bool = True, dropout: float = 0.0):
        super().__init__()
        self.c_fc = nn.Linear(n_embd, 4 * n_embd, bias=bias)
        self.gelu = nn.GELU()  # exact erf GELU, as nanoGPT (GPT-2 used the tanh approximation)
        self.c_proj = nn.Linear(4 * n_embd, n_embd, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fc = self.c_fc
        if type(fc) is nn.Linear and self.gelu.approximate == "none":
            h = F.linear(x, fc.weight)  # (B, T, C) -> (B, T, 4C)
            bias = fc.bias if fc.bias is None or fc.bias.dtype == h.dtype else fc.bias.to(h.dtype)  # autocast
            h = ops.bias_gelu(h, bias)
        else:
            h = self.gelu(fc(x))
        y = self.c_proj(h)  # (B, T, 4C) -> (B, T, C)
        # p = 0 (the presets' default) skips the module call: decoding runs this ~100 times per token
        return self.dropout(y) if self.dropout.p > 0 else y


class Block(nn.Module):
    def __init__(self, n_embd: int, n_head: int, n_kv_head: Optional[int] = None, bias: bool = True,
                 dropout: float = 0.0, backend: Optional[str] = None, qkv_rank: Optional[int] = None):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd, bias=bias)
        self.attn = CausalSelfAttention(n_embd, n_head, n_kv_head, bias=bias, dropout=dropout,
                                        backend=backend, qkv_rank=qkv_rank)
        self.ln_2 = nn.LayerNorm(n_embd, bias=bias)
        self.mlp = MLP(n_embd, bias=bias, dropout=dropout)

    def forward(self, x: torch.Tensor, kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        x = x + self.attn(layer_norm(self.ln_1, x), kv_cache=kv_cache)  # (B, T, C)
        return x + self.mlp(layer_norm(self.ln_2, x))
