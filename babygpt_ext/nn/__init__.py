"""Drop-in modules built on babygpt_ext.ops.

    from babygpt_ext import nn as bnn
    attn = bnn.CausalSelfAttention(n_embd=128, n_head=4)        # GPT attention, KV cache for decoding
    lin = bnn.LoRALinear(torch.nn.Linear(128, 128), r=8, alpha=16)
    blk = bnn.Block(128, 4)                                     # pre-LN transformer block

The seed's attention zoo: DotProductAttention, MultiHeadAttention, CrossAttention,
SpatialAttention, SpatialTransformer.
"""

from .attention import CausalSelfAttention, KVCache
from .block import MLP, Block
from .lora import LoRALinear
from .lowrank import LowRankLinear
from .spatial import SpatialAttention, SpatialTransformer
from .zoo import CrossAttention, DotProductAttention, MultiHeadAttention

__all__ = ["CausalSelfAttention", "KVCache", "MLP", "Block", "LoRALinear",
           "LowRankLinear", "DotProductAttention", "MultiHeadAttention", "CrossAttention", "SpatialAttention",
           "SpatialTransformer"]
