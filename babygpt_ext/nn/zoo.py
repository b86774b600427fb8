"""The seed's attention zoo on sequences, every one a thin layer over ops.causal_attention.

    DotProductAttention(embed_dim, head_dim)           one head, causal by default: (B, T, C) -> (B, T, hs)
    MultiHeadAttention(embed_dim, n_head)              n heads + output projection: (B, T, C) -> (B, T, C)
    CrossAttention(query_dim, context_dim, n_head, head_dim)
                                                       queries from x, keys/values from a context with
                                                       its own width and length:  (B, Tq, Cq), (B, Tk, Cc) -> (B, Tq, Cq)

The op normalises over the keys: a softmax over the queries (the wrong axis) makes probabilities
of different queries sum to one and leaks the future into the past, so a test checks that changing
future tokens never changes earlier outputs.
"""

from typing import Optional

import torch
import torch.nn as nn

from .. import ops


def split_heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    """(B, T, nh·hs) -> (B, nh, T, hs)"""
    B, T, C = t.shape
    return t.view(B, T, n_head, C // n_head).transpose(1, 2)


def merge_heads(t: torch.Tensor) -> torch.Tensor:
    """(B, nh, T, hs) -> (B, T, nh·hs)"""
    B, nh, T, hs = t.shape
    return t.transpose(1, 2).reshape(B, T, nh * hs)


def check_seq(name: str, x, width: int, what: str = "x") -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: {what} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 3 or x.shape[-1] != width or x.shape[1] < 1:
        raise ValueError(f"{name}: {what} must be (B, T, {width}) with T >= 1, got {tuple(x.shape)}")


def check_positive(name: str, **values) -> None:
    for arg, val in values.items():
        if isinstance(val, bool) or not isinstance(val, int) or val < 1:
            raise ValueError(f"{name}: {arg} must be a positive int, got {val!r}")


class DotProductAttention(nn.Module):
    """Single-head scaled dot-product attention with its own q, k, v projections."""

    def __init__(self, embed_dim: int, head_dim: Optional[int] = None, causal: bool = True, bias: bool = False,
                 backend: Optional[str] = None):
        super().__init__()
        head_dim = embed_dim if head_dim is None else head_dim
        check_positive("DotProductAttention", embed_dim=embed_dim, head_dim=head_dim)
        self.embed_dim, self.head_dim, self.causal, self.backend = embed_dim, head_dim, causal, backend
        self.query = nn.Linear(embed_dim, head_dim, bias=bias)
        self.key = nn.Linear(embed_dim, head_dim, bias=bias)
        self.value = nn.Linear(embed_dim, head_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_seq("DotProductAttention", x, self.embed_dim)
        # A single head is the H = 1 case of the op: (B, T, hs) -> (B, 1, T, hs).
        q, k, v = (proj(x).unsqueeze(1) for proj in (self.query, self.key, self.value))
        return ops.causal_attention(q, k, v, causal=self.causal, backend=self.backend).squeeze(1)  # (B, T, hs)


class MultiHeadAttention(nn.Module):
    """n_head heads of width embed_dim / n_head, concatenated and mixed by `proj`."""

    def __init__(self, embed_dim: int, n_head: int, causal: bool = True, bias: bool = True,
                 backend: Optional[str] = None):
        super().__init__()
        check_positive("MultiHeadAttention", embed_dim=embed_dim, n_head=n_head)
        if embed_dim % n_head != 0:
            raise ValueError(f"MultiHeadAttention: embed_dim={embed_dim} must be a multiple of n_head={n_head}")
        self.embed_dim, self.n_head, self.causal, self.backend = embed_dim, n_head, causal, backend
        self.query = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.key = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.value = nn.Linear(embed_dim, embed_dim, bias=bias)
        self.proj = nn.Linear(embed_dim, embed_dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_seq("MultiHeadAttention", x, self.embed_dim)
        q, k, v = (split_heads(p(x), self.n_head) for p in (self.query, self.key, self.value))  # (B, nh, T, hs)
        y = ops.causal_attention(q, k, v, causal=self.causal, backend=self.backend)  # (B, nh, T, hs)
        return self.proj(merge_heads(y))  # (B, T, C)


class CrossAttention(nn.Module):
    """Queries from x (width query_dim), keys and values from `context` (width context_dim).

    Never causal: every query sees the whole context (the text prompt of a diffusion model, the
    encoder output of a translation model), and Tq != Tk is the normal case. With context=None it
    is self-attention over x, which needs context_dim == query_dim (stable diffusion's convention).
    Names follow stable diffusion: to_q, to_k, to_v, to_out.
    """

    def __init__(self, query_dim: int, context_dim: Optional[int] = None, n_head: int = 8, head_dim: int = 64,
                 bias: bool = False, backend: Optional[str] = None):
        super().__init__()
        context_dim = query_dim if context_dim is None else context_dim
        check_positive("CrossAttention", query_dim=query_dim, context_dim=context_dim, n_head=n_head,
                       head_dim=head_dim)
        self.query_dim, self.context_dim = query_dim, context_dim
        self.n_head, self.head_dim, self.backend = n_head, head_dim, backend
        inner = n_head * head_dim
        self.to_q = nn.Linear(query_dim, inner, bias=bias)
        self.to_k = nn.Linear(context_dim, inner, bias=bias)
        self.to_v = nn.Linear(context_dim, inner, bias=bias)
        self.to_out = nn.Linear(inner, query_dim)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_seq("CrossAttention", x, self.query_dim)
        if context is None:
            if self.context_dim != self.query_dim:
                raise ValueError(f"CrossAttention: context is required (context_dim={self.context_dim} "
                                 f"differs from query_dim={self.query_dim}); x is {tuple(x.shape)}")
            context = x
        check_seq("CrossAttention", context, self.context_dim, what="context")
        if context.shape[0] != x.shape[0]:
            raise ValueError(f"CrossAttention: x and context must have the same batch size; "
                             f"got x {tuple(x.shape)}, context {tuple(context.shape)}")
        q = split_heads(self.to_q(x), self.n_head)  # (B, nh, Tq, hs)
        k = split_heads(self.to_k(context), self.n_head)  # (B, nh, Tk, hs)
        v = split_heads(self.to_v(context), self.n_head)  # (B, nh, Tk, hs)
        y = ops.causal_attention(q, k, v, causal=False, backend=self.backend)  # (B, nh, Tq, hs)
        return self.to_out(merge_heads(y))  # (B, Tq, query_dim)
