"""LoRA fine-tuning for any model built from nn.Linear (or GPT-2's Conv1D): inject, freeze, merge,
save/load adapters, in this package's format or PEFT's.

    names = lora.inject(model, target_modules=("c_attn", "c_proj"), r=8, alpha=16)
    lora.mark_only_lora_trainable(model)        # base weights frozen: only lora_A / lora_B train
    ... train ...
    lora.save_adapter(model, "adapter.pt")      # a few KB: the A/B matrices + r/alpha/targets
    lora.save_adapter(model, "adapter_dir", format="peft")   # what PeftModel.from_pretrained reads
    lora.load_adapter(fresh_model, "adapter.pt")  # either format; injects (if needed), checks shapes
    lora.merge(model)                           # fold B A into the weights (the wrappers stay)
    lora.merge_and_unload(model)                # fold, then put the plain base modules back

LoRA keeps the pretrained weight W frozen and learns a low-rank update W + (alpha/r)·B A, with B
starting at zero so training starts from the pretrained model exactly. A low-rank attention that
replaces the weights is a different model (nn.LowRankLinear, the babygpt-lowrank preset).
"""

import os
from typing import Iterable, Optional

import torch
import torch.nn as nn

from . import peft_format
from .nn.lora import SUPPORTED_BASES, LoRALinear, is_adaptable

ADAPTER_FORMAT = 1
FORMATS = ("babygpt", "peft")
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


def lora_state_dict(model: nn.Module) -> dict:
    """Only the adapter tensors: {"<module>.lora_A": (r, in), "<module>.lora_B": (out, r), ...}."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()
            if k.endswith(".lora_A") or k.endswith(".lora_B")}


def save_adapter(model: nn.Module, path, format: str = "babygpt") -> None:
    """Write the adapter (tensors + r/alpha/dropout per module) to `path`.

    format="babygpt": one torch.save file. format="peft": `path` is a directory that receives
    adapter_config.json + adapter_model.safetensors, which peft.PeftModel.from_pretrained loads
    onto the same base model (and load_adapter reads back).
    """
    if format not in FORMATS:
        raise ValueError(f"save_adapter: format must be one of {FORMATS}, got {format!r}")
    modules = lora_modules(model)
    if not modules:
        raise ValueError("save_adapter: the model has no LoRA adapters; call lora.inject first")
    if format == "peft":
        peft_format.write(path, model, modules)
        return
    specs = {n: {"r": m.r, "alpha": m.alpha, "dropout": m.dropout} for n, m in modules.items()}
    first = next(iter(specs.values()))
    targets = getattr(model, _CONFIG_ATTR, {}).get("target_modules", sorted(modules))
    config = {**first, "target_modules": targets, "replaced": sorted(modules), "modules": specs}
    tmp = f"{os.fspath(path)}.tmp"
    torch.save({"format": ADAPTER_FORMAT, "config": config, "state": lora_state_dict(model)}, tmp)
    os.replace(tmp, path)  # atomic: a crash never leaves half an adapter


def _read_babygpt(path) -> tuple:
    """(specs {name: {r, alpha, dropout}}, state {"<name>.lora_A": tensor, ...}) of a save_adapter file."""
    what = (f"load_adapter: {path} is neither a babygpt_ext LoRA adapter (format {ADAPTER_FORMAT}, a file written "
            "by lora.save_adapter) nor a PEFT adapter directory")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as e:  # not a torch.save file at all (e.g. a safetensors file)
        raise ValueError(f"{what}; torch.load said: {e}") from None
    if not isinstance(blob, dict) or blob.get("format") != ADAPTER_FORMAT or "state" not in blob:
        raise ValueError(what)
    cfg = blob["config"]
    specs = cfg.get("modules") or {n: {"r": cfg["r"], "alpha": cfg["alpha"], "dropout": cfg["dropout"]}
                                   for n in cfg["replaced"]}
    return specs, blob["state"]


def load_adapter(model: nn.Module, path) -> list:
    """Load an adapter: a file written by save_adapter, or a PEFT LoRA adapter directory (or its
    adapter_model.safetensors). Injects LoRA first if the model has none.

    Checks that the adapter's modules exist, can be adapted and fit its shapes; the adapter's alpha
    replaces an injected module's. Returns the adapted module names.
    """
    if peft_format.is_peft_path(path):
        specs, state = peft_format.read(path)
    else:
        specs, state = _read_babygpt(path)
    if not lora_modules(model):
        bad = [f"{n} ({type(_get(model, n)).__name__ if _get(model, n) is not None else 'missing'})"
               for n in specs if not is_adaptable(_get(model, n))]
        if bad:
            raise ValueError(f"load_adapter: the adapter targets modules this model lacks or LoRA cannot adapt "
                             f"(it adapts {SUPPORTED_BASES}): {', '.join(bad)}")
        for name, spec in specs.items():
            _set_submodule(model, name, LoRALinear(model.get_submodule(name), spec["r"], spec["alpha"],
                                                   spec["dropout"]))
        setattr(model, _CONFIG_ATTR, {"target_modules": sorted(specs)})
    mine = lora_state_dict(model)
    if set(mine) != set(state):
        raise ValueError(f"load_adapter: adapter tensors do not match the model's LoRA modules: "
                         f"only in adapter {sorted(set(state) - set(mine))}, only in model "
                         f"{sorted(set(mine) - set(state))}")
    bad = [f"{k}: adapter {tuple(state[k].shape)} vs model {tuple(mine[k].shape)}"
           for k in state if state[k].shape != mine[k].shape]
    if bad:
        raise ValueError("load_adapter: shape mismatch (different r or layer sizes?): " + "; ".join(bad))
    modules = lora_modules(model)
    merged = [m for m in modules.values() if m.merged]
    for m in merged:  # load into unmerged modules, or the old B A would stay folded into W
        m.unmerge()
    for name, m in modules.items():
        m.alpha = specs[name]["alpha"]
        m.scale = m.alpha / m.r
    model.load_state_dict(state, strict=False)
    for m in merged:
        m.merge()
    return sorted(modules)
