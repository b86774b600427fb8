"""babygpt_ext.patch(model): put our fused attention into an existing nanoGPT-style model, in place.

    model = load_some_nanogpt_model()
    names = babygpt_ext.patch(model)          # ['transformer.h.0.attn', ...]
    logits, _ = model(idx)                    # same logits (to float tolerance), fused attention

A module counts as nanoGPT-style attention when it has `c_attn` (an nn.Linear C -> 3C producing
q, k, v side by side), `c_proj` (C -> C) and an integer `n_head`, and computes
c_proj(softmax(q kᵀ/√D + causal mask) v) with the heads split as nanoGPT splits them. It is
replaced by babygpt_ext.nn.CausalSelfAttention holding the *same* c_attn and c_proj modules, so
weights are shared (an optimizer built before patching still owns them) and nothing is copied.

Hugging Face transformers models (GPT-2 and other decoders) are patched differently, through
their attention registry, without replacing any module: see patch_hf.py.
"""

from typing import Optional

import torch
import torch.nn as nn

from .nn.attention import CausalSelfAttention
from .patch_hf import is_hf_model, patch_hf


def _is_nanogpt_attention(m: nn.Module) -> bool:
    if isinstance(m, CausalSelfAttention):
        return False
    c_attn, c_proj, n_head = getattr(m, "c_attn", None), getattr(m, "c_proj", None), getattr(m, "n_head", None)
    return (isinstance(c_attn, nn.Linear) and isinstance(c_proj, nn.Linear) and isinstance(n_head, int)
            and not isinstance(n_head, bool))


def _replacement(name: str, old: nn.Module, backend: Optional[str]) -> CausalSelfAttention:
    n_embd, n_head = old.c_proj.out_features, old.n_head
    if old.c_attn.in_features != n_embd or old.c_attn.out_features != 3 * n_embd or n_embd % n_head:
        raise ValueError(f"patch: {name} looks like nanoGPT attention but c_attn is "
                         f"{old.c_attn.in_features}->{old.c_attn.out_features} and c_proj "
                         f"{old.c_proj.in_features}->{n_embd} with n_head={n_head}; expected C->3C and C->C "
                         "with C a multiple of n_head")
    dropout = getattr(old, "dropout", None)
    if not isinstance(dropout, float):
        dropout = getattr(getattr(old, "attn_dropout", None), "p", 0.0)
    with torch.device("meta"):  # its own Linears are thrown away below: don't allocate them
        new = CausalSelfAttention(n_embd, n_head, bias=old.c_attn.bias is not None, dropout=float(dropout),
                                  backend=backend)
    new.c_attn, new.c_proj = old.c_attn, old.c_proj  # shared, not copied
    for drop in ("attn_dropout", "resid_dropout"):
        if isinstance(getattr(old, drop, None), nn.Dropout):
            setattr(new, drop, getattr(old, drop))
    new.train(old.training)
    return new


def patch(model: nn.Module, backend: Optional[str] = None) -> list:
    """Put our fused attention into `model` (in place); return the names of the attention modules.

    nanoGPT-style attention submodules are replaced by ours; a Hugging Face transformers model is
    switched to our attention function (patch_hf). backend pins a backend (default: the policy).
    """
    if is_hf_model(model):
        return patch_hf(model, backend)
    if _is_nanogpt_attention(model):
        raise ValueError("patch: model is itself an attention module; patch the model that contains it "
                         "(a module cannot replace itself in place)")
    targets = [(n, m) for n, m in model.named_modules() if n and _is_nanogpt_attention(m)]
    if not targets:
        raise ValueError("patch: found no nanoGPT-style attention (a submodule with nn.Linear c_attn and c_proj "
                         "and an int n_head) in this model, and it is not a Hugging Face transformers model")
    for name, old in targets:
        new = _replacement(name, old, backend)
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return [n for n, _ in targets]
