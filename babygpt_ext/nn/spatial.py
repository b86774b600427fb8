"""Attention over the positions of an image feature map (B, C, H, W), as in diffusion U-Nets.

    SpatialAttention(channels, n_head=1, groups=32)      GroupNorm + 1×1 conv q/k/v/proj + residual
    SpatialTransformer(channels, n_head, context_dim)    GroupNorm, 1×1 conv in, [self-attn, cross-attn,
                                                         MLP] with pre-LayerNorms, 1×1 conv out + residual

Both treat the H·W pixels as a sequence of length T = H·W with C features each; nothing is causal
(a pixel may look at every other pixel), so they call the op with causal=False.
"""

from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from .zoo import CrossAttention, check_positive


def check_map(name: str, x, channels: int) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels or x.shape[2] < 1 or x.shape[3] < 1:
        raise ValueError(f"{name}: x must be a (B, C={channels}, H, W) feature map, got {tuple(x.shape)}")


def group_norm(name: str, channels: int, groups: int) -> nn.GroupNorm:
    check_positive(name, channels=channels, groups=groups)
    if channels % groups != 0:
        raise ValueError(f"{name}: groups={groups} must divide channels={channels} (GroupNorm splits the "
                         f"channels into equal groups); pass groups= a divisor of {channels}")
    return nn.GroupNorm(groups, channels, eps=1e-6)


class SpatialAttention(nn.Module):
    """Self-attention across the H·W positions of a (B, C, H, W) map, added back to the input."""

    def __init__(self, channels: int, n_head: int = 1, groups: int = 32, backend: Optional[str] = None):
        super().__init__()
        check_positive("SpatialAttention", channels=channels, n_head=n_head)
        if channels % n_head != 0:
            raise ValueError(f"SpatialAttention: channels={channels} must be a multiple of n_head={n_head}")
        self.channels, self.n_head, self.backend = channels, n_head, backend
        self.norm = group_norm("SpatialAttention", channels, groups)
        # A 1×1 convolution is a Linear applied at every pixel independently.
        self.q = nn.Conv2d(channels, channels, kernel_size=1)
        self.k = nn.Conv2d(channels, channels, kernel_size=1)
        self.v = nn.Conv2d(channels, channels, kernel_size=1)
        self.proj_out = nn.Conv2d(channels, channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_map("SpatialAttention", x, self.channels)
        B, C, H, W = x.shape
        h = self.norm(x)
        nh, hs = self.n_head, C // self.n_head

        def heads(t):  # (B, C, H, W) -> (B, nh, H·W, hs): pixels become the sequence
            return t.reshape(B, nh, hs, H * W).transpose(2, 3)

        y = ops.causal_attention(heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), causal=False,
                                 backend=self.backend)  # (B, nh, H·W, hs)
        y = y.transpose(2, 3).reshape(B, C, H, W)
        return x + self.proj_out(y)


class SpatialTransformer(nn.Module):
    """Stable diffusion's transformer block on a feature map, optionally conditioned on a context.

    With context_dim=None the second attention attends to the map itself (no conditioning).
    """

    def __init__(self, channels: int, n_head: int, context_dim: Optional[int] = None,
                 head_dim: Optional[int] = None, groups: int = 32, backend: Optional[str] = None):
        super().__init__()
        check_positive("SpatialTransformer", channels=channels, n_head=n_head)
        head_dim = channels // n_head if head_dim is None else head_dim
        check_positive("SpatialTransformer", head_dim=head_dim)
        inner = n_head * head_dim
        self.channels, self.context_dim = channels, context_dim
        self.norm = group_norm("SpatialTransformer", channels, groups)
        self.proj_in = nn.Conv2d(channels, inner, kernel_size=1)
        self.norm1 = nn.LayerNorm(inner)
        self.attn1 = CrossAttention(inner, None, n_head, head_dim, backend=backend)  # self-attention
        self.norm2 = nn.LayerNorm(inner)
        self.attn2 = CrossAttention(inner, context_dim, n_head, head_dim, backend=backend)  # cross-attention
        self.norm3 = nn.LayerNorm(inner)
        self.ff = nn.Sequential(nn.Linear(inner, 4 * inner), nn.GELU(), nn.Linear(4 * inner, inner))
        self.proj_out = nn.Conv2d(inner, channels, kernel_size=1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        check_map("SpatialTransformer", x, self.channels)
        if context is not None and self.context_dim is None:
            raise ValueError(f"SpatialTransformer: got a context {tuple(context.shape)} but was built with "
                             "context_dim=None; pass context_dim= at construction")
        if context is None and self.context_dim is not None:
            raise ValueError(f"SpatialTransformer: built with context_dim={self.context_dim}, so forward "
                             f"needs context (B, Tk, {self.context_dim})")
        B, C, H, W = x.shape
        h = self.proj_in(self.norm(x))  # (B, inner, H, W)
        inner = h.shape[1]
        h = h.reshape(B, inner, H * W).transpose(1, 2)  # (B, H·W, inner): one token per pixel
        h = h + self.attn1(self.norm1(h))
        h = h + self.attn2(self.norm2(h), context)
        h = h + self.ff(self.norm3(h))
        h = h.transpose(1, 2).reshape(B, inner, H, W)
        return x + self.proj_out(h)
