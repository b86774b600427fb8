"""Hugging Face transformers models: our fused causal attention through their attention registry.

    model = transformers.GPT2LMHeadModel.from_pretrained(...)   # or Llama, Qwen2, ... (decoders)
    babygpt_ext.patch(model)                 # ['transformer.h.0.attn', ...] (a PatchReport)
    babygpt_ext.unpatch(model)               # back to the implementation it had (e.g. "sdpa")

transformers (>= 4.48) looks the attention function up by name, `config._attn_implementation`,
in `AttentionInterface`, and builds masks with the function of the same name in
`AttentionMaskInterface`. We register "babygpt" in both: masks are built as for SDPA, which
passes no mask at all when it is purely causal (no padding; a prompt, or one decoding step
against the KV cache); then the call goes to babygpt_ext.ops.causal_attention, with the attention
dropout transformers asks for (its `dropout` argument: attn_pdrop / attention_dropout in training,
0 in eval). Every other call (a padding mask, cross or bidirectional attention, more queries than
keys) goes to transformers' own SDPA function, so results never change silently; the report names
the modules that are not causal self-attention (they always take SDPA). No module is replaced and
no weight is touched.
"""

import functools
from typing import Optional

import torch
import torch.nn as nn

from ..ops import causal_attention
from .report import PatchReport

IMPL = "babygpt"  # registered name; "babygpt_<backend>" when a backend is pinned
_BEFORE = "_babygpt_attn_before"  # model attribute: the implementation patch_hf replaced


def _attention(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
               attention_mask: Optional[torch.Tensor], dropout: float = 0.0, scaling: Optional[float] = None,
               is_causal: Optional[bool] = None, *, backend: Optional[str] = None, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    # query (B, H, Tq, D); key, value (B, Hkv, Tk, D) with H a multiple of Hkv.
    causal = is_causal if is_causal is not None else getattr(module, "is_causal", False)
    if attention_mask is None and causal and query.shape[2] <= key.shape[2]:
        out = causal_attention(query, key, value, scale=scaling, dropout_p=dropout, backend=backend)  # (B, H, Tq, D)
        return out.transpose(1, 2), None  # transformers wants (B, Tq, H, D) and no weights
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                  is_causal=is_causal, **kwargs)


def is_hf_model(model: nn.Module) -> bool:
    return hasattr(model, "set_attn_implementation") and hasattr(getattr(model, "config", None),
                                                                 "_attn_implementation")


def _is_attention(m: nn.Module) -> bool:
    return type(m).__name__.endswith("Attention")


def causal_attention_modules(model: nn.Module) -> list:
    """Names of the submodules transformers runs as causal self-attention."""
    return [n for n, m in model.named_modules() if n and _is_attention(m) and getattr(m, "is_causal", False) is True]


def patch_hf(model: nn.Module, backend: Optional[str] = None) -> PatchReport:
    """Make a transformers model use babygpt_ext's causal attention; report the attention modules."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask
    except ImportError as e:
        raise ValueError("patch: this Hugging Face model needs transformers >= 4.48 (AttentionInterface) "
                         f"to be patched; {e}") from None
    names = causal_attention_modules(model)
    if not names:
        raise ValueError(f"patch: {type(model).__name__} has no causal self-attention module "
                         "(an ...Attention submodule with is_causal=True); only decoders can be patched")
    modules = dict(model.named_modules())
    left = [(n, f"{type(m).__name__}: not causal self-attention (is_causal is not True), so it runs "
             "transformers' SDPA") for n, m in modules.items() if n and _is_attention(m) and n not in names
            and not any(n.startswith(c + ".") for c in names)]
    impl, current = IMPL if backend is None else f"{IMPL}_{backend}", model.config._attn_implementation
    if current == impl:
        return PatchReport("patch", left=left, backend=backend,
                           nothing_to_do=f"it runs babygpt_ext's attention already (attn_implementation={impl!r})")
    if not str(current).startswith(IMPL):
        setattr(model, _BEFORE, current)
    AttentionInterface.register(impl, functools.partial(_attention, backend=backend))
    AttentionMaskInterface.register(impl, sdpa_mask)
    model.set_attn_implementation(impl)
    notes = ["calls with a padding mask run transformers' SDPA (the fused op is causal-only)"]
    return PatchReport("patch", names, left, notes, backend=backend)


def unpatch_hf(model: nn.Module) -> PatchReport:
    """Switch a patched transformers model back to the attention implementation it had."""
    current = model.config._attn_implementation
    if not str(current).startswith(IMPL):
        return PatchReport("unpatch", nothing_to_do=f"it is not patched (attn_implementation={current!r})")
    model.set_attn_implementation(getattr(model, _BEFORE, None) or "sdpa")
    if hasattr(model, _BEFORE):
        delattr(model, _BEFORE)
    return PatchReport("unpatch", causal_attention_modules(model))
