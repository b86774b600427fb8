"""LoRA adapters on disk: only the A/B matrices and their r/alpha, in this package's format (one
torch.save file, version ADAPTER_FORMAT) or PEFT's (a directory, peft_format.py)."""

import os

import torch
import torch.nn as nn

from . import peft_format
from ..nn.lora import SUPPORTED_BASES, LoRALinear, is_adaptable
from .inject import _CONFIG_ATTR, _get, _set_submodule, lora_modules

ADAPTER_FORMAT = 1
FORMATS = ("babygpt", "peft")


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
