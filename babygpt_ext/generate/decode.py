"""One decoding step of a GPT as a short list of tensor ops: the KV-cache loop's per-token path.

    plan = DecodePlan.of(model, cache)      # None when the model has parts the plan does not know
    logits = plan.step(tok, pos)            # tok (B,) at position pos -> next-token logits (B, V)

A step feeds one token per row. Through the modules it costs ~100 small tensor ops per layer
(module calls, 3-D views, splits, transposes, per-call validation of the ops), and at one row per
GEMM that overhead, not arithmetic, is most of a token's time. The plan runs the same computation
as GPT.forward on (B, C) rows with the modules' own weights, about 20 ops per layer: the new key
and value are copied straight from the qkv projection into the preallocated cache, the attention
output (B, H, 1, D) is already the (B, C) layout of the heads side by side, and the ops are called
through the engine with arguments validated once (their shapes are the plan's own). Anything the
plan does not reproduce exactly (LoRA or low-rank projections, other modules, forward hooks) makes
DecodePlan.of return None, and the loop calls the model instead.

A float32 model on the CPU with the compiled extension takes one step further: the whole step is
one call, torch.classes.babygpt.GptDecoder (csrc/cpu/decode.cpp), which checks the weights and
caches once, then reads each weight once per step as a matrix-vector product with the biases,
residual adds and GELU fused into the products, so a token costs one call instead of ~20 ops per
layer. It is the `cpu` backend's (attention included), so it runs when the model's attention
backend is the engine's choice or `cpu` and BABYGPT_BACKEND names no other; every other case runs
the tensor-op step below.
"""

import os
from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import ops
from ..ops import engine, registry
from ..ops.backends import BUILD_HINT, load
from ..models.gpt import GPT
from ..nn.attention import CausalSelfAttention
from ..nn.block import MLP, Block


def _plain(module: nn.Module, kind: type) -> bool:
    return type(module) is kind and not (module._forward_hooks or module._forward_pre_hooks)


def _layer_norm(ln: nn.LayerNorm):
    return ln.normalized_shape, ln.weight, ln.bias, ln.eps


def _linear(lin: nn.Linear) -> tuple:
    """(bias or None, weight transposed): F.linear on rows is addmm(bias, x, weightᵀ) (mm without a
    bias), so calling that directly, with the transposed views made once, is the same arithmetic."""
    return lin.bias, lin.weight.t()


def _contiguous(t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    return None if t is None else t.contiguous()  # the tensor itself when it is contiguous already


def _affine(x: torch.Tensor, bias: Optional[torch.Tensor], weight_t: torch.Tensor) -> torch.Tensor:
    return torch.mm(x, weight_t) if bias is None else torch.addmm(bias, x, weight_t)


class DecodePlan:
    def __init__(self, model: GPT, cache: list):
        t = model.transformer
        a = t.h[0].attn
        self.n_head, self.n_kv_head, self.head_dim, self.backend = a.n_head, a.n_kv_head, a.head_dim, a.backend
        self.caches = cache  # one per layer
        self.fused = self._fused(model, cache)  # the whole step as one call, or None
        if self.fused is not None:
            return
        # The tensor-op step's arguments, made once: per layer its LayerNorms and Linears.
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.ln_f, self.head = _layer_norm(t.ln_f), _linear(model.lm_head)
        self.layers = [(_layer_norm(blk.ln_1), _linear(blk.attn.c_attn), _linear(blk.attn.c_proj),
                        _layer_norm(blk.ln_2), blk.mlp.c_fc.weight.t(), blk.mlp.c_fc.bias, _linear(blk.mlp.c_proj))
                       for blk in t.h]
        self._attn_rest = None  # the attention op's arguments after (q, k, v), validated at the first step

    def _fused(self, model: GPT, cache: list):
        """A GptDecoder (csrc/cpu/decode.cpp) over this model's weights and caches when it computes
        this model's step (float32 CPU weights and caches, one LayerNorm eps, the cpu backend's
        attention), else None."""
        t = model.transformer
        lns = [ln for blk in t.h for ln in (blk.ln_1, blk.ln_2)] + [t.ln_f]
        wanted = os.environ.get(registry.ENV_VAR) or "cpu"
        tensors = list(model.parameters()) + [c.k for c in cache] + [c.v for c in cache]
        if (self.backend not in (None, "cpu") or wanted != "cpu" or len({ln.eps for ln in lns}) != 1
                or any(p.dtype != torch.float32 or p.device.type != "cpu" for p in tensors)
                or load("cpu", BUILD_HINT) is not None):
            return None
        params = []
        for blk in t.h:
            a, m = blk.attn, blk.mlp
            for mod in (blk.ln_1, a.c_attn, a.c_proj, blk.ln_2, m.c_fc, m.c_proj):
                params += [_contiguous(mod.weight), _contiguous(mod.bias)]
        params += [_contiguous(t.ln_f.weight), _contiguous(t.ln_f.bias), _contiguous(model.lm_head.weight),
                   _contiguous(model.lm_head.bias)]
        return torch.classes.babygpt.GptDecoder(t.wte.weight.contiguous(), t.wpe.weight.contiguous(), params,
                                                [c.k for c in cache], [c.v for c in cache], self.n_head,
                                                float(lns[0].eps), self.head_dim ** -0.5)

    @classmethod
    def of(cls, model, cache: list) -> Optional["DecodePlan"]:
        """The plan for a GPT made of its own plain modules (no hooks), else None."""
        if type(model) is not GPT or not _plain(model, GPT) or not _plain(model.lm_head, nn.Linear):
            return None
        hooks = torch.nn.modules.module
        if not _plain(model.transformer.ln_f, nn.LayerNorm) or hooks._global_forward_hooks or \
                hooks._global_forward_pre_hooks:
            return None
        for blk in model.transformer.h:
            if not (_plain(blk, Block) and _plain(blk.attn, CausalSelfAttention) and _plain(blk.mlp, MLP)
                    and all(_plain(ln, nn.LayerNorm) for ln in (blk.ln_1, blk.ln_2))
                    and all(_plain(lin, nn.Linear) for lin in (blk.attn.c_attn, blk.attn.c_proj, blk.mlp.c_fc,
                                                               blk.mlp.c_proj))
                    and blk.mlp.gelu.approximate == "none"):
                return None
        return cls(model, cache)

    def step(self, tok: torch.Tensor, pos: int) -> torch.Tensor:
        """tok (B,) int64, the token at position pos (every cache holds positions < pos) -> logits (B, V)."""
        if self.fused is not None:
            for c in self.caches:
                c.length = pos + 1
            return self.fused.step(tok, pos)
        B = tok.shape[0]
        nh, nkv, hs = self.n_head, self.n_kv_head, self.head_dim
        C, kv_width = nh * hs, nkv * hs
        x = F.embedding(tok, self.wte) + self.wpe[pos]  # (B, C)
        for (ln_1, attn, proj, ln_2, fc_t, fc_bias, fc2), cache in zip(self.layers, self.caches):
            qkv = _affine(F.layer_norm(x, *ln_1), *attn)  # (B, C + 2 kv_width)
            cache.k[:, :, pos] = qkv[:, C:C + kv_width].view(B, nkv, hs)
            cache.v[:, :, pos] = qkv[:, C + kv_width:].view(B, nkv, hs)
            cache.length = pos + 1
            q = qkv[:, :C].view(B, nh, 1, hs)
            k, v = cache.k[:, :, :pos + 1], cache.v[:, :, :pos + 1]
            if self._attn_rest is None:  # one query sees every key: causal and non-causal agree
                self._attn_rest = ops.OPS["attention"].validate(q, k, v, False, None)[3:]
            y = engine.run(ops.OPS["attention"], (q, k, v, *self._attn_rest), self.backend)  # (B, nh, 1, hs)
            x = x + _affine(y.view(B, C), *proj)  # the heads side by side are (B, C) already
            h = torch.mm(F.layer_norm(x, *ln_2), fc_t)  # c_fc's bias goes into the GELU, as in MLP
            x = x + _affine(engine.run(ops.OPS["bias_gelu"], (h, fc_bias), None), *fc2)
        return _affine(F.layer_norm(x, *self.ln_f), *self.head)  # (B, V)
