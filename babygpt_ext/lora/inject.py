"""LoRA model surgery: put LoRALinear wrappers into a model, freeze the rest, fold them back.

The wrappers (babygpt_ext.nn.LoRALinear) go in place of nn.Linear / GPT-2 Conv1D modules chosen by
PEFT's target-name rule; merge folds (alpha/r)·B A into the base weights and merge_and_unload puts
the plain base modules back, so the model saves exactly as its untouched architecture.
"""

from typing import Iterable, Optional

import torch
import torch.nn as nn

from ..nn.lora import SUPPORTED_BASES, LoRALinear, is_adaptable

_CONFIG_ATTR = "_babygpt_lora_config"


def _matches(name: str, targets: Iterable[str]) -> bool:
    # PEFT's rule: a target matches a module whose dotted name is it or ends with "." + it.
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def _get(model: nn.Module, name: str) -> Optional[nn.Module]:
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def lora_modules(model: nn.Module) -> dict:
    """{name: LoRALinear} for every LoRA wrapper in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject(model: nn.Module, target_modules=("c_attn", "c_proj"), r: int = 8, alpha: float = 16,
           dropout: float = 0.0, backend: Optional[str] = None) -> list:
    """Wrap every module whose name matches target_modules in a LoRALinear; return their names.

    A target matches by dotted suffix: "c_proj" matches both attn.c_proj and mlp.c_proj,
    "attn.c_proj" only the attention's. Matches must be nn.Linear or transformers' Conv1D (already
    adapted ones are skipped). Raises ValueError if a match is of another type, or nothing matches.
    """
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    target_modules = tuple(target_modules)
    wrapped = lora_modules(model)
    inside_lora = {f"{n}.{child}" for n in wrapped for child in ("base", "lora_dropout")}
    candidates = {n: m for n, m in model.named_modules() if n and n not in wrapped and n not in inside_lora}
    matched = [n for n in candidates if _matches(n, target_modules)]
    unsupported = [f"{n} ({type(candidates[n]).__name__})" for n in matched if not is_adaptable(candidates[n])]
    if unsupported:
        raise ValueError(f"lora.inject: target_modules={list(target_modules)} matches modules LoRA cannot adapt: "
                         f"{', '.join(unsupported)}; LoRA adapts {SUPPORTED_BASES}. Name those layers instead "
                         "(e.g. 'attn.c_attn' rather than 'attn')")
    if not matched:
        adaptable = [n for n, m in candidates.items() if is_adaptable(m)]
        short = sorted({n.rsplit(".", 1)[-1] for n in adaptable})
        raise ValueError(f"lora.inject: no module matches target_modules={list(target_modules)}; adaptable "
                         f"({SUPPORTED_BASES}) names in this model: {', '.join(short) or '(none)'}"
                         + (f" (full names like {adaptable[0]})" if adaptable else ""))
    for name in matched:
        _set_submodule(model, name, LoRALinear(candidates[name], r, alpha, dropout, backend=backend))
    targets = getattr(model, _CONFIG_ATTR, {}).get("target_modules", [])
    setattr(model, _CONFIG_ATTR, {"target_modules": sorted(set(targets) | set(target_modules))})
    return matched


def mark_only_lora_trainable(model: nn.Module) -> int:
    """requires_grad = True for lora_A/lora_B only, False for everything else; returns #trainable."""
    if not lora_modules(model):
        raise ValueError("mark_only_lora_trainable: the model has no LoRALinear modules; call lora.inject first")
    n = 0
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith("lora_A") or name.endswith("lora_B"))
        n += p.numel() if p.requires_grad else 0
    return n


def merge(model: nn.Module) -> None:
    """Fold every adapter into its base weight (forward then runs plain Linears).

    Refuses a weight shared with another module (a tied lm_head is also the token embedding: merging
    would change the embedding too, which the unmerged model never did).
    """
    owners = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name)
    for name, m in lora_modules(model).items():
        if len(owners.get(id(m.base.weight), [])) > 1:
            raise ValueError(f"lora.merge: {name}'s weight is shared with {owners[id(m.base.weight)]} (tied "
                             "weights); merging would change those modules too. Keep this adapter unmerged.")
    for m in lora_modules(model).values():
        m.merge()


def unmerge(model: nn.Module) -> None:
    """Undo merge() (weights equal the originals up to float rounding)."""
    for m in lora_modules(model).values():
        m.unmerge()


def merge_and_unload(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight, then put each base module back in its wrapper's place.

    The model then has exactly the untouched architecture's modules and state_dict keys (no
    `.base.` and no lora_A/lora_B), so Hugging Face save_pretrained/from_pretrained round-trip it.
    Returns the model (changed in place), as PEFT's merge_and_unload does.
    """
    if not lora_modules(model):
        raise ValueError("merge_and_unload: the model has no LoRALinear modules; nothing to merge")
    merge(model)  # refuses tied weights before any module is replaced
    for name, m in lora_modules(model).items():
        _set_submodule(model, name, m.base)
    if hasattr(model, _CONFIG_ATTR):
        delattr(model, _CONFIG_ATTR)
    return model
