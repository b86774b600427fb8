"""babygpt_ext.patch(model): put our fused attention into an existing nanoGPT-style model, in place.

    model = load_some_nanogpt_model()
    report = babygpt_ext.patch(model)         # ['transformer.h.0.attn', ...] (a PatchReport)
    print(report)                             # what it patched, what it left and why
    logits, _ = model(idx)                    # same logits (to float tolerance), fused attention
    babygpt_ext.unpatch(model)                # the original attention modules, back in place

A module counts as nanoGPT-style attention when it has `c_attn` (an nn.Linear C -> 3C producing
q, k, v side by side), `c_proj` (C -> C), an integer `n_head` and nothing else our attention
would not run (dropouts and nanoGPT's causal-mask buffer aside), and computes
c_proj(softmax(q kᵀ/√D + causal mask) v) with the heads split as nanoGPT splits them. It is
replaced by babygpt_ext.nn.CausalSelfAttention holding the *same* c_attn and c_proj modules, so
weights are shared (an optimizer built before patching still owns them) and nothing is copied.
Its attention dropout (nanoGPT's `dropout`, else `attn_dropout.p`) runs inside the fused op while
training.
The original module rides along outside the module tree (no state_dict entry) for unpatch().
Attention-like modules that fail the test are left alone and named in the report with the reason.

patch() is idempotent: on a patched model it changes nothing and says so (or switches the
backend, if a different one is asked for). backend= is checked when patching, not at the first
forward.

Hugging Face transformers models (GPT-2 and other decoders) are patched differently, through
their attention registry, without replacing any module: see hf.py.
"""

from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from ..nn.attention import CausalSelfAttention
from ..nn.lora import LoRALinear
from .hf import is_hf_model, patch_hf, unpatch_hf
from .report import PatchReport

_ORIGINAL = "_babygpt_original"  # key in a replacement's __dict__: the module it replaced
# Children and buffers of nanoGPT's attention that CausalSelfAttention takes over or does not need.
_KNOWN_CHILDREN = {"c_attn", "c_proj", "attn_dropout", "resid_dropout"}
_MASK_BUFFERS = {"bias", "masked_bias"}


def check_backend(backend: Optional[str]) -> None:
    """Raise now, not at the first forward, for a backend that cannot run the attention."""
    if backend is None:
        return
    if backend not in ops.BACKENDS:
        raise ValueError(f"patch: unknown backend {backend!r}; known backends: {', '.join(ops.BACKENDS)} "
                         "(or backend=None for the automatic policy)")
    b = ops.BACKENDS[backend]
    if "attention" not in b.impls:
        raise ValueError(f"patch: backend {backend!r} has no attention implementation")
    if (why := b.why_unavailable()) is not None:
        raise ops.BackendUnavailableError(f"patch: backend {backend!r} is not usable here: {why}")


def _linear_like(m) -> bool:
    return isinstance(m, nn.Linear) or (isinstance(m, LoRALinear) and not m.fan_in_fan_out)


def _looks_like_attention(m: nn.Module) -> bool:
    return hasattr(m, "c_attn") or type(m).__name__.endswith("Attention")


def _why_not_nanogpt(m: nn.Module) -> Optional[str]:
    """None if m is nanoGPT-style attention patch() can replace, else the reason it is not."""
    c_attn, c_proj, n_head = getattr(m, "c_attn", None), getattr(m, "c_proj", None), getattr(m, "n_head", None)
    for name, lin in (("c_attn", c_attn), ("c_proj", c_proj)):
        if not _linear_like(lin):
            return f"{name} is {type(lin).__name__ if lin is not None else 'missing'}, not an nn.Linear"
    if not isinstance(n_head, int) or isinstance(n_head, bool):
        return f"n_head is {n_head!r}, not an int"
    n_embd = c_proj.out_features
    if c_attn.in_features != n_embd or c_attn.out_features != 3 * n_embd or n_embd % n_head:
        return (f"c_attn is {c_attn.in_features}->{c_attn.out_features} and c_proj {c_proj.in_features}->{n_embd} "
                f"with n_head={n_head}; expected C->3C and C->C with C a multiple of n_head")
    extra = sorted(set(dict(m.named_children())) - _KNOWN_CHILDREN)
    extra += sorted(n for n, _ in m.named_parameters(recurse=False))
    extra += sorted(set(n for n, _ in m.named_buffers(recurse=False)) - _MASK_BUFFERS)
    if extra:
        return f"it holds {', '.join(extra)}, which our attention would not run"
    return None


def _dropout_p(old: nn.Module) -> float:
    dropout = getattr(old, "dropout", None)
    if not isinstance(dropout, float):
        dropout = getattr(getattr(old, "attn_dropout", None), "p", 0.0)
    return float(dropout)


def _replacement(old: nn.Module, backend: Optional[str]) -> CausalSelfAttention:
    n_embd = old.c_proj.out_features
    with torch.device("meta"):  # its own Linears are thrown away below: don't allocate them
        new = CausalSelfAttention(n_embd, old.n_head, bias=old.c_attn.bias is not None, dropout=_dropout_p(old),
                                  backend=backend)
    new.c_attn, new.c_proj = old.c_attn, old.c_proj  # shared, not copied
    for drop in ("attn_dropout", "resid_dropout"):
        if isinstance(getattr(old, drop, None), nn.Module):
            setattr(new, drop, getattr(old, drop))
    new.train(old.training)
    new.__dict__[_ORIGINAL] = old  # not a submodule: no state_dict keys, no second copy of c_attn
    return new


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _patched(model: nn.Module) -> dict:
    return {n: m for n, m in model.named_modules() if isinstance(m, CausalSelfAttention) and _ORIGINAL in m.__dict__}


def _inside(name: str, outer) -> bool:
    return any(name.startswith(o + ".") for o in outer)


def _outermost(named: list) -> list:
    """Drop modules that sit inside another listed one (it is replaced as a whole)."""
    return [(n, m) for n, m in named if not _inside(n, [o for o, _ in named])]


def _is_self_attention(m: nn.Module) -> bool:
    return not isinstance(m, CausalSelfAttention) and _why_not_nanogpt(m) is None


def patch(model: nn.Module, backend: Optional[str] = None) -> PatchReport:
    """Put our fused attention into `model` (in place); return a PatchReport: the list of the
    attention modules' names, plus what was left and why (print it for a summary).

    nanoGPT-style attention submodules are replaced by ours; a Hugging Face transformers model is
    switched to our attention function (patch_hf). backend pins a backend (default: the policy).
    A no-op (already patched) or a module left alone is also said in a RuntimeWarning.
    """
    check_backend(backend)
    if is_hf_model(model):
        return patch_hf(model, backend).warn_if_worth_it()
    if _is_self_attention(model):
        raise ValueError("patch: model is itself an attention module; patch the model that contains it "
                         "(a module cannot replace itself in place)")
    done = _patched(model)
    native = [n for n, m in model.named_modules() if isinstance(m, CausalSelfAttention) and n not in done]
    candidates = [(n, m, _why_not_nanogpt(m)) for n, m in model.named_modules()
                  if n and not isinstance(m, CausalSelfAttention) and _looks_like_attention(m)
                  and not _inside(n, done)]
    todo = _outermost([(n, m) for n, m, why in candidates if why is None])
    new = [n for n, _ in todo]
    # A left module inside a patched one goes with it; one around a patched one is only its container.
    left = [(n, f"{type(m).__name__}: {why}") for n, m, why in candidates
            if why is not None and not _inside(n, new) and not any(_inside(t, [n]) for t in new)]
    if not todo and not done and not native:
        reasons = "; ".join(f"{n}: {why}" for n, why in left)
        raise ValueError("patch: found no nanoGPT-style attention (a submodule with nn.Linear c_attn C->3C and c_proj "
                         "C->C and an int n_head) in this model, and it is not a Hugging Face transformers model"
                         + (f"; attention-like modules it could not take: {reasons}" if reasons else ""))
    switched = [n for n, m in done.items() if m.backend != backend]
    for m in done.values():
        m.backend = backend
    for name, old in todo:
        _set_submodule(model, name, _replacement(old, backend))
    names = new + switched
    if not names:
        why = (f"{len(done)} attention module(s) were patched before ({', '.join(done)})" if done else
               f"it is built with babygpt_ext's attention ({', '.join(native)})")
        return PatchReport("patch", left=left, backend=backend, nothing_to_do=why).warn_if_worth_it()
    return PatchReport("patch", names, left, backend=backend).warn_if_worth_it()


def unpatch(model: nn.Module) -> PatchReport:
    """Undo patch(): put the original attention modules back (sharing the current c_attn/c_proj,
    so training done while patched is kept), or switch a Hugging Face model back to the attention
    implementation it had. Returns a PatchReport of the restored modules; a model that was not
    patched is left alone, with a RuntimeWarning saying so."""
    if is_hf_model(model):
        return unpatch_hf(model).warn_if_worth_it()
    done = _patched(model)
    for name, new in done.items():
        old = new.__dict__.pop(_ORIGINAL)
        old.c_attn, old.c_proj = new.c_attn, new.c_proj  # e.g. LoRA injected while patched stays
        for drop in ("attn_dropout", "resid_dropout"):
            if isinstance(getattr(old, drop, None), nn.Module):
                setattr(old, drop, getattr(new, drop))
        old.to(next(new.c_proj.parameters()).device)  # its own buffers (the mask) follow model.to(device)
        old.train(new.training)
        _set_submodule(model, name, old)
    if not done:
        return PatchReport("unpatch", nothing_to_do="no module in this model was put in by babygpt_ext.patch"
                           ).warn_if_worth_it()
    return PatchReport("unpatch", list(done))
