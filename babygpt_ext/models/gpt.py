"""A GPT language model in the shape of nanoGPT's model.py, on babygpt_ext's fused attention.

    config = GPTConfig.from_preset("shakespeare-cpu", vocab_size=tok.vocab_size)
    model = GPT(config)
    logits, loss = model(idx, targets)                   # idx, targets (B, T) int64
    out = model.generate(idx, max_new_tokens=100, temperature=0.8, top_k=50)

Module names match nanoGPT (transformer.wte/wpe/drop/h/ln_f, lm_head, attn.c_attn/c_proj,
mlp.c_fc/c_proj), so a nanoGPT checkpoint's state dict loads with load_state_dict (its causal-mask
buffers `attn.bias` are ignored; see CausalSelfAttention) or with GPT.from_nanogpt_state_dict.
"""

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..nn import Block, LowRankLinear
from ..nn.block import layer_norm
from .presets import PRESETS


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024  # longest context the model sees (the position table's length)
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    n_kv_head: Optional[int] = None  # < n_head: grouped-query attention; None: = n_head
    dropout: float = 0.0
    bias: bool = True  # biases in Linears and LayerNorms (GPT-2: True)
    tie_weights: bool = True  # lm_head.weight is wte.weight (GPT-2, nanoGPT)
    lm_head_bias: bool = False
    qkv_rank: Optional[int] = None  # factor c_attn through this rank (LowRankLinear)
    backend: Optional[str] = None  # attention/LoRA backend; None: the ops' automatic policy

    def __post_init__(self):
        for name in ("vocab_size", "block_size", "n_layer", "n_head", "n_embd"):
            val = getattr(self, name)
            if isinstance(val, bool) or not isinstance(val, int) or val < 1:
                raise ValueError(f"GPTConfig.{name} must be a positive int, got {val!r}")
        if self.n_embd % self.n_head != 0:
            raise ValueError(f"GPTConfig: n_embd={self.n_embd} must be a multiple of n_head={self.n_head}")
        kv = self.n_head if self.n_kv_head is None else self.n_kv_head
        if not isinstance(kv, int) or kv < 1 or self.n_head % kv != 0:
            raise ValueError(f"GPTConfig: n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"GPTConfig.dropout must be in [0, 1), got {self.dropout}")
        if self.qkv_rank is not None and (not isinstance(self.qkv_rank, int) or self.qkv_rank < 1):
            raise ValueError(f"GPTConfig.qkv_rank must be a positive int or None, got {self.qkv_rank!r}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "GPTConfig":
        """A preset (see models/presets.py) with some fields replaced, e.g. vocab_size=tok.vocab_size."""
        if name not in PRESETS:
            raise ValueError(f"unknown GPT preset {name!r}; valid presets: {', '.join(PRESETS)}")
        fields = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(overrides) - set(fields))
        if unknown:
            raise ValueError(f"unknown GPTConfig field(s) {', '.join(unknown)}; valid fields: {', '.join(fields)}")
        values = {k: v for k, v in PRESETS[name].items() if k != "doc"}
        values.update(overrides)
        return cls(**values)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class GPT(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        if not isinstance(config, GPTConfig):
            raise TypeError(f"GPT: config must be a GPTConfig, got {type(config).__name__}")
        self.config = c = config
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(c.vocab_size, c.n_embd),  # token embeddings
            wpe=nn.Embedding(c.block_size, c.n_embd),  # learned position embeddings
            drop=nn.Dropout(c.dropout),
            h=nn.ModuleList([Block(c.n_embd, c.n_head, c.n_kv_head, bias=c.bias, dropout=c.dropout,
                                   backend=c.backend, qkv_rank=c.qkv_rank) for _ in range(c.n_layer)]),
            ln_f=nn.LayerNorm(c.n_embd, bias=c.bias),
        ))
        self.lm_head = nn.Linear(c.n_embd, c.vocab_size, bias=c.lm_head_bias)
        if c.tie_weights:
            # The input embedding and the output projection are the same (V, C) matrix: one vector per
            # token, used both to read it in and to score it out (Press & Wolf, 2017).
            self.transformer.wte.weight = self.lm_head.weight
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                # GPT-2: scale the init of the projections into the residual stream by 1/√(2·n_layer), so
                # the stream's variance does not grow with depth (two residual additions per block).
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * c.n_layer))
        for m in self.modules():
            if isinstance(m, LowRankLinear):
                m.reset_parameters()  # its factors need their own scales (see LowRankLinear)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Number of parameters (a tied weight counted once).

        non_embedding=True leaves out the position table and, when not tied to lm_head, the token
        table: lookups, not computation (nanoGPT's convention for reporting model size).
        """
        n = sum(p.numel() for p in self.parameters())
        if non_embedding:
            n -= self.transformer.wpe.weight.numel()
            if not self.config.tie_weights:
                n -= self.transformer.wte.weight.numel()
        return n

    def new_kv_cache(self, batch_size: int, max_len: Optional[int] = None) -> list:
        """One KVCache per layer, for up to max_len (default block_size) positions."""
        max_len = self.config.block_size if max_len is None else max_len
        return [blk.attn.new_kv_cache(batch_size, max_len) for blk in self.transformer.h]

    def forward(self, idx: torch.Tensor, targets: Optional[torch.Tensor] = None,
                kv_cache: Optional[list] = None) -> tuple:
        """idx (B, T) int64 token ids -> (logits (B, T, vocab_size), loss or None).

        With kv_cache (from new_kv_cache), idx holds only the new tokens: their positions continue
        after the cached ones, and their keys/values are appended to the cache.
        targets (B, T): next-token ids; -1 marks positions to ignore in the loss.
        Token ids are range-checked (one host sync) except while decoding (a non-empty kv_cache):
        those tokens come from the model's own sampling, and the check would stall every step.
        """
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"GPT: idx must be a (B, T) int64 tensor of token ids, got "
                             f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}"
                             f"{' ' + str(idx.dtype) if isinstance(idx, torch.Tensor) else ''}")
        B, T = idx.shape
        past = 0
        if kv_cache is not None:
            if len(kv_cache) != self.config.n_layer:
                raise ValueError(f"GPT: kv_cache must hold one KVCache per layer ({self.config.n_layer}), "
                                 f"got {len(kv_cache)}")
            past = kv_cache[0].length
        if T < 1 or past + T > self.config.block_size:
            raise ValueError(f"GPT: sequence of length {past + T} (idx {tuple(idx.shape)}"
                             f"{f' after {past} cached' if past else ''}) does not fit block_size="
                             f"{self.config.block_size}; crop the context to the last block_size tokens")
        if past == 0 and idx.numel() and not torch.compiler.is_compiling():
            lo, hi = (int(t) for t in torch.aminmax(idx))
            if lo < 0 or hi >= self.config.vocab_size:
                raise ValueError(f"GPT: token ids must be in [0, vocab_size={self.config.vocab_size}), got "
                                 f"min {lo}, max {hi}")
        # positions past .. past+T-1 are consecutive rows of the position table: a slice, no lookup
        pos_emb = self.transformer.wpe.weight[past:past + T]  # (T, C)
        x = self.transformer.wte(idx) + pos_emb  # (B, T, C)
        if self.config.dropout > 0.0:
            x = self.transformer.drop(x)
        for i, block in enumerate(self.transformer.h):
            x = block(x, kv_cache=None if kv_cache is None else kv_cache[i])
        x = layer_norm(self.transformer.ln_f, x)  # the fused op for a plain nn.LayerNorm (nn/block.py)
        logits = self.lm_head(x)  # (B, T, vocab_size)
        loss = None
        if targets is not None:
            if targets.shape != idx.shape:
                raise ValueError(f"GPT: targets must have idx's shape {tuple(idx.shape)}, got {tuple(targets.shape)}")
            try:
                loss = F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1), ignore_index=-1)
            except IndexError:  # the CPU kernel's range check; looked at only on failure, so no extra host sync
                raise ValueError(f"GPT: targets must be in [-1, vocab_size={self.config.vocab_size}) (-1 = ignored), "
                                 f"got min {int(targets.min())}, max {int(targets.max())}") from None
        return logits, loss

    def configure_optimizers(self, weight_decay: float, lr: float, betas=(0.9, 0.95), device_type: str = None):
        """AdamW with two groups, as nanoGPT: every parameter with >= 2 dims (matmul weights and
        embeddings) decays; biases and LayerNorm gains (1-D) do not. Frozen parameters are left out.

        The fused implementation (one kernel over all parameters instead of a dozen elementwise
        passes per tensor list) runs on CUDA and, since torch 2.4, on the CPU."""
        params = [p for p in self.parameters() if p.requires_grad]
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        device_type = device_type or next(self.parameters()).device.type
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=device_type in ("cuda", "cpu"))

    @classmethod
    def from_nanogpt_state_dict(cls, state_dict: dict, config: GPTConfig) -> "GPT":
        """A GPT built from `config` holding a nanoGPT checkpoint's weights (ckpt['model']).

        Handles the `_orig_mod.` prefix torch.compile adds and nanoGPT's `attn.bias` mask buffers.
        """
        sd = {k.removeprefix("_orig_mod."): v for k, v in state_dict.items()}
        sd = {k: v for k, v in sd.items() if not (k.endswith(".attn.bias") or k.endswith(".attn.masked_bias"))}
        model = cls(config)
        mine = model.state_dict()
        missing, unexpected = sorted(set(mine) - set(sd)), sorted(set(sd) - set(mine))
        if missing or unexpected:
            raise ValueError(f"nanoGPT state dict does not match GPTConfig {config}: missing {missing[:8]}, "
                             f"unexpected {unexpected[:8]}")
        bad = [f"{k}: checkpoint {tuple(sd[k].shape)} vs model {tuple(mine[k].shape)}"
               for k in mine if sd[k].shape != mine[k].shape]
        if bad:
            raise ValueError("nanoGPT state dict shapes do not match the config: " + "; ".join(bad[:8]))
        model.load_state_dict(sd)
        return model

    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
                 top_p: Optional[float] = None, stop=None, kv_cache: bool = True,
                 generator: Optional[torch.Generator] = None, stream=None) -> torch.Tensor:
        """Continue each row of idx (B, T) by up to max_new_tokens tokens; returns (B, T + n).

        See babygpt_ext.generate.generate for the details (KV cache, stop ids, streaming).
        """
        from ..generate import generate
        return generate(self, idx, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, stop=stop,
                        kv_cache=kv_cache, generator=generator, stream=stream)
