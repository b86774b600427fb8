"""LoRA fine-tuning for any model built from nn.Linear: inject, freeze, merge, save/load adapters.

    names = lora.inject(model, target_modules=("c_attn", "c_proj"), r=8, alpha=16)
    lora.mark_only_lora_trainable(model)        # base weights frozen: only lora_A / lora_B train
    ... train ...
    lora.save_adapter(model, "adapter.pt")      # a few KB: the A/B matrices + r/alpha/targets
    lora.load_adapter(fresh_model, "adapter.pt")  # injects (if needed) and loads, checking shapes
    lora.merge(model)                           # fold B A into the weights for plain-Linear inference

LoRA keeps the pretrained weight W frozen and learns a low-rank update W + (alpha/r)·B A, with B
starting at zero so training starts from the pretrained model exactly. A low-rank attention that
replaces the weights is a different model (nn.LowRankLinear, the babygpt-lowrank preset).
"""

import os
from typing import Iterable, Optional

import torch
import torch.nn as nn

from .nn.lora import LoRALinear

ADAPTER_FORMAT = 1
_CONFIG_ATTR = "_babygpt_lora_config"


def _matches(name: str, targets: Iterable[str]) -> bool:
    # PEFT's rule: a target matches a module whose dotted name is it or ends with "." + it.
    return any(name == t or name.endswith("." + t) for t in targets)


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, module)


def lora_modules(model: nn.Module) -> dict:
    """{name: LoRALinear} for every LoRA wrapper in the model."""
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def inject(model: nn.Module, target_modules=("c_attn", "c_proj"), r: int = 8, alpha: float = 16,
           dropout: float = 0.0, backend: Optional[str] = None) -> list:
    """Wrap every nn.Linear whose name matches target_modules in a LoRALinear; return their names.

    A target matches by dotted suffix: "c_proj" matches both attn.c_proj and mlp.c_proj,
    "attn.c_proj" only the attention's. Raises ValueError if nothing matches.
    """
    if isinstance(target_modules, str):
        target_modules = (target_modules,)
    target_modules = tuple(target_modules)
    inside_lora = {f"{n}.base" for n in lora_modules(model)}
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear) and n not in inside_lora]
    chosen = [n for n in linears if _matches(n, target_modules)]
    if not chosen:
        short = sorted({n.rsplit(".", 1)[-1] for n in linears})
        raise ValueError(f"lora.inject: no nn.Linear matches target_modules={list(target_modules)}; "
                         f"Linear names in this model: {', '.join(short) or '(none)'}"
                         + (f" (full names like {linears[0]})" if linears else ""))
    for name in chosen:
        _set_submodule(model, name, LoRALinear(model.get_submodule(name), r, alpha, dropout, backend=backend))
    config = getattr(model, _CONFIG_ATTR, None) or {"r": r, "alpha": alpha, "dropout": dropout,
                                                    "target_modules": [], "replaced": []}
    config["target_modules"] = sorted(set(config["target_modules"]) | set(target_modules))
    config["replaced"] = sorted(set(config["replaced"]) | set(chosen))
    setattr(model, _CONFIG_ATTR, config)
    return chosen


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


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapter tensors: {"<module>.lora_A": (r, in), "<module>.lora_B": (out, r), ...}."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith(".lora_A") or k.endswith(".lora_B")}


def save_adapter(model: nn.Module, path) -> None:
    """Write the adapter (tensors + r/alpha/dropout/targets) to `path` with torch.save."""
    config = getattr(model, _CONFIG_ATTR, None)
    if config is None or not lora_modules(model):
        raise ValueError("save_adapter: the model has no LoRA adapters; call lora.inject first")
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"format": ADAPTER_FORMAT, "config": dict(config), "state": lora_state_dict(model)}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves half an adapter


def load_adapter(model: nn.Module, path) -> list:
    """Load an adapter written by save_adapter; injects LoRA first if the model has none.

    Checks that the adapter's modules exist and their shapes fit; returns the adapted module names.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != ADAPTER_FORMAT or "state" not in blob:
        raise ValueError(f"load_adapter: {path} is not a babygpt_ext LoRA adapter (format {ADAPTER_FORMAT})")
    cfg, state = blob["config"], blob["state"]
    if not lora_modules(model):
        missing = [n for n in cfg["replaced"] if not isinstance(_get(model, n), nn.Linear)]
        if missing:
            raise ValueError(f"load_adapter: the adapter targets modules this model lacks (or that are not "
                             f"nn.Linear): {missing}")
        for name in cfg["replaced"]:
            _set_submodule(model, name, LoRALinear(model.get_submodule(name), cfg["r"], cfg["alpha"], cfg["dropout"]))
        setattr(model, _CONFIG_ATTR, dict(cfg))
    mine = lora_state_dict(model)
    if set(mine) != set(state):
        raise ValueError(f"load_adapter: adapter tensors do not match the model's LoRA modules: "
                         f"only in adapter {sorted(set(state) - set(mine))}, only in model "
                         f"{sorted(set(mine) - set(state))}")
    bad = [f"{k}: adapter {tuple(state[k].shape)} vs model {tuple(mine[k].shape)}"
           for k in state if state[k].shape != mine[k].shape]
    if bad:
        raise ValueError("load_adapter: shape mismatch (different r or layer sizes?): " + "; ".join(bad))
    merged = [m for m in lora_modules(model).values() if m.merged]
    for m in merged:  # load into unmerged modules, or the old B A would stay folded into W
        m.unmerge()
    model.load_state_dict(state, strict=False)
    for m in merged:
        m.merge()
    return sorted(lora_modules(model))


def _get(model: nn.Module, name: str):
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None
