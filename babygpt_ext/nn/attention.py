"""Causal self-attention for GPT models, with a KV cache for decoding.

    attn = CausalSelfAttention(n_embd=128, n_head=4)          # nanoGPT's names: c_attn, c_proj
    y = attn(x)                                              # x (B, T, C) -> (B, T, C)
    cache = KVCache(batch_size=2, n_kv_head=4, max_len=64, head_dim=32)
    y = attn(x_prompt, kv_cache=cache); y = attn(x_next, kv_cache=cache)   # decoding, Tq < Tk

Training and prefill without a cache go through babygpt_ext.ops.qkv_attention, straight from the
fused projection; with a cache, through babygpt_ext.ops.causal_attention, whose causal mask is
bottom-right aligned: the Tq new queries are the *last* Tq positions of the Tk cached keys, which
is exactly what decoding with a cache needs. Attention dropout while training is the op's too (dropout_p:
the kernels drop the probabilities from a counter-based mask, seeded from torch's generator).
"""

from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from ..ops.qkv_attention_op import merge_heads, split_heads
from .lowrank import LowRankLinear


class KVCache:
    """Keys and values of the positions seen so far, for one attention layer.

    Buffers are preallocated (B, Hkv, max_len, D) so decoding never reallocates (no torch.cat per
    token); `length` is the number of positions filled. append() writes the new keys/values in
    place and returns views of everything cached so far: (B, Hkv, length, D), strided along the
    positions' axis whenever length < max_len, which the attention op takes as it is.
    """

    def __init__(self, batch_size: int, n_kv_head: int, max_len: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device=None):
        for name, val in (("batch_size", batch_size), ("n_kv_head", n_kv_head), ("max_len", max_len),
                          ("head_dim", head_dim)):
            if not isinstance(val, int) or val < 1:
                raise ValueError(f"KVCache: {name} must be a positive int, got {val!r}")
        shape = (batch_size, n_kv_head, max_len, head_dim)
        # empty, not zeros: positions >= length are never read, and zero-filling the whole context
        # up front costs more than a short generation (first-touch page faults included).
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.length = 0

    @property
    def max_len(self) -> int:
        return self.k.shape[2]

    def reset(self) -> None:
        self.length = 0

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple:
        """k, v (B, Hkv, T, D) -> all cached keys and values (B, Hkv, length + T, D)."""
        b, h, _, d = self.k.shape
        if k.shape != v.shape or k.dim() != 4 or (k.shape[0], k.shape[1], k.shape[3]) != (b, h, d):
            raise ValueError(f"KVCache.append: k and v must be (B={b}, Hkv={h}, T, D={d}); "
                             f"got k {tuple(k.shape)}, v {tuple(v.shape)}")
        t = k.shape[2]
        if self.length + t > self.max_len:
            raise ValueError(f"KVCache is full: holds {self.length} of {self.max_len} positions, "
                             f"cannot append {t} more")
        self.k[:, :, self.length:self.length + t] = k  # copy_ casts when the cache's dtype differs
        self.v[:, :, self.length:self.length + t] = v
        self.length += t
        return self.k[:, :, :self.length], self.v[:, :, :self.length]


class CausalSelfAttention(nn.Module):
    """Multi-head causal self-attention; GQA/MQA when n_kv_head < n_head.

    c_attn projects x to q (n_head heads), k and v (n_kv_head heads each) in one Linear, so its
    output width is (n_head + 2·n_kv_head)·head_dim; with n_kv_head == n_head this is nanoGPT's
    3·n_embd and a nanoGPT state dict loads unchanged (its `attn.bias` mask buffer is dropped on
    load: the op builds the mask itself). qkv_rank=r factors c_attn through rank r (the BabyGPT
    seed's low-rank idea; see LowRankLinear).
    """

    def __init__(self, n_embd: int, n_head: int, n_kv_head: Optional[int] = None, bias: bool = True,
                 dropout: float = 0.0, backend: Optional[str] = None, qkv_rank: Optional[int] = None):
        super().__init__()
        n_kv_head = n_head if n_kv_head is None else n_kv_head
        if n_head < 1 or n_embd % n_head != 0:
            raise ValueError(f"CausalSelfAttention: n_embd={n_embd} must be a multiple of n_head={n_head}")
        if n_kv_head < 1 or n_head % n_kv_head != 0:
            raise ValueError(f"CausalSelfAttention: n_head={n_head} must be a multiple of n_kv_head={n_kv_head}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"CausalSelfAttention: dropout must be in [0, 1), got {dropout}")
        self.n_embd, self.n_head, self.n_kv_head = n_embd, n_head, n_kv_head
        self.head_dim = n_embd // n_head
        self.dropout, self.backend = dropout, backend
        qkv_out = (n_head + 2 * n_kv_head) * self.head_dim
        if qkv_rank is None:
            self.c_attn = nn.Linear(n_embd, qkv_out, bias=bias)
        else:
            self.c_attn = LowRankLinear(n_embd, qkv_out, qkv_rank, bias=bias)
        self.c_proj = nn.Linear(n_embd, n_embd, bias=bias)
        # nanoGPT's layout (a patched model keeps its own); as in nanoGPT's flash path, attention
        # dropout itself is the op's, with p = self.dropout.
        self.attn_dropout = nn.Dropout(dropout)
        self.resid_dropout = nn.Dropout(dropout)

    def new_kv_cache(self, batch_size: int, max_len: int, dtype=None, device=None) -> KVCache:
        w = next(self.parameters())
        return KVCache(batch_size, self.n_kv_head, max_len, self.head_dim,
                       dtype=dtype or w.dtype, device=device or w.device)

    def forward(self, x: torch.Tensor, kv_cache: Optional[KVCache] = None) -> torch.Tensor:
        if x.dim() != 3 or x.shape[-1] != self.n_embd:
            raise ValueError(f"CausalSelfAttention: x must be (B, T, n_embd={self.n_embd}), got {tuple(x.shape)}")
        T, nh, nkv = x.shape[1], self.n_head, self.n_kv_head
        dropout_p = self.dropout if self.training else 0.0
        qkv = self.c_attn(x)  # (B, T, (nh + 2 nkv) hs): q's heads, then k's, then v's
        if kv_cache is None:
            # The cpu kernels read q, k, v from qkv and write y with its heads side by side, in place:
            # no transposed copies, forward or backward.
            y = ops.qkv_attention(qkv, nh, nkv, dropout_p=dropout_p, backend=self.backend)  # (B, T, C)
        else:
            q, k, v = split_heads(qkv, nh, nkv)  # (B, nh, T, hs), (B, nkv, T, hs) twice: views
            k, v = kv_cache.append(k, v)  # (B, nkv, Tpast + T, hs): the new queries are the last T
            # A single query is the last position and sees every key: causal and non-causal agree,
            # and the non-causal call needs no mask (decoding is this case at every step).
            y = merge_heads(ops.causal_attention(q, k, v, causal=T > 1, dropout_p=dropout_p, backend=self.backend))
        y = self.c_proj(y)  # mix the heads
        return self.resid_dropout(y) if self.dropout > 0.0 else y

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # nanoGPT registers its causal mask as a buffer `attn.bias` (when flash attention is off);
        # HF GPT-2 adds `attn.masked_bias`. The op needs neither: drop them instead of failing.
        for name in ("bias", "masked_bias"):
            state_dict.pop(prefix + name, None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
