"""PEFT's LoRA adapter format, read and written (babygpt_ext.lora.save_adapter/load_adapter use it).

A PEFT adapter is a directory holding
  adapter_config.json        LoraConfig's fields: r, lora_alpha, lora_dropout, target_modules,
                             rank_pattern/alpha_pattern (per-module r and alpha), fan_in_fan_out, ...
  adapter_model.safetensors  "base_model.model.<module>.lora_A.weight" (r, in) and ".lora_B.weight"
                             (out, r) for every adapted module (adapter_model.bin: the same, pickled)
Those are our lora_A/lora_B shapes, for Linear and GPT-2's Conv1D alike, and PEFT's scaling is
ours, lora_alpha / r. A config asking for anything else (DoRA, rsLoRA, trained biases, extra
trainable modules) is refused by name rather than loaded as plain LoRA.
"""

import json
import os
import re

import torch

CONFIG_NAME = "adapter_config.json"
SAFETENSORS_NAME = "adapter_model.safetensors"
PICKLE_NAME = "adapter_model.bin"
PREFIX = "base_model.model."
# Options that change PEFT's forward beyond x Wᵀ + scale · B A x: an adapter using one is refused.
UNSUPPORTED = ("use_dora", "use_rslora", "lora_bias", "use_qalora", "alora_invocation_tokens", "layer_replication",
               "modules_to_save", "trainable_token_indices", "target_parameters", "use_bdlora")


def _safetensors():
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError("PEFT adapters are stored as safetensors: pip install safetensors") from None
    return safetensors.torch


def _causal_lm_task(model) -> "str | None":
    # PeftModel.from_pretrained picks PeftModelForCausalLM (generate(), labels=) for this task type;
    # any other model loads as a plain PeftModel.
    name = type(model).__name__
    return "CAUSAL_LM" if name.endswith(("ForCausalLM", "LMHeadModel")) and hasattr(model, "generate") else None


def write(directory, model, modules: dict) -> None:
    """Write {name: LoRALinear} of `model` as a PEFT adapter directory (created if missing)."""
    st = _safetensors()
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    first = next(iter(modules.values()))
    # PEFT has one r, alpha and dropout plus per-module patterns (regexes matched against the end of a
    # module name): modules that differ from the first get an escaped full-name pattern.
    rank_pattern = {re.escape(n): m.r for n, m in modules.items() if m.r != first.r}
    alpha_pattern = {re.escape(n): m.alpha for n, m in modules.items() if m.alpha != first.alpha}
    config = {
        "peft_type": "LORA", "task_type": _causal_lm_task(model),
        "base_model_name_or_path": getattr(getattr(model, "config", None), "_name_or_path", None) or None,
        "r": first.r, "lora_alpha": first.alpha, "lora_dropout": first.dropout,
        "target_modules": sorted(modules), "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern,
        "fan_in_fan_out": any(m.fan_in_fan_out for m in modules.values()),
        "bias": "none", "modules_to_save": None, "init_lora_weights": True, "inference_mode": True,
        "use_rslora": False, "use_dora": False,
    }
    tensors = {}
    for name, m in modules.items():
        tensors[f"{PREFIX}{name}.lora_A.weight"] = m.lora_A.detach().contiguous()
        tensors[f"{PREFIX}{name}.lora_B.weight"] = m.lora_B.detach().contiguous()
    weights, cfg = os.path.join(directory, SAFETENSORS_NAME), os.path.join(directory, CONFIG_NAME)
    st.save_file(tensors, weights + ".tmp", metadata={"format": "pt"})
    with open(cfg + ".tmp", "w") as f:
        json.dump(config, f, indent=2)
    os.replace(weights + ".tmp", weights)  # each file atomic: a crash never leaves half of one
    os.replace(cfg + ".tmp", cfg)


def is_peft_path(path) -> bool:
    """A directory (PEFT's or not: read() says what is missing), or a PEFT weights file beside its config."""
    path = os.fspath(path)
    if os.path.isdir(path):
        return True
    return (os.path.basename(path) in (SAFETENSORS_NAME, PICKLE_NAME)
            and os.path.isfile(os.path.join(os.path.dirname(path), CONFIG_NAME)))


def _no_adapter_here(directory: str) -> ValueError:
    subdirs = sorted(d for d in os.listdir(directory) if os.path.isfile(os.path.join(directory, d, CONFIG_NAME)))
    found = (f"; its subdirectories {subdirs} hold adapters (PEFT saves a named adapter there): pass one of "
             "those" if subdirs else "")
    return ValueError(f"load_adapter: {directory} is a directory without {CONFIG_NAME}, so it holds no PEFT "
                      f"adapter{found}. Pass a PEFT adapter directory ({CONFIG_NAME} + {SAFETENSORS_NAME}, as "
                      "PeftModel.save_pretrained writes) or a file written by lora.save_adapter")


def _pattern_value(patterns: dict, name: str, default):
    # PEFT's rule (peft.utils.other.get_pattern_key): the first pattern matching the end of the name.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return default


def _read_tensors(directory: str) -> dict:
    weights = os.path.join(directory, SAFETENSORS_NAME)
    if os.path.isfile(weights):
        return _safetensors().load_file(weights, device="cpu")
    pickled = os.path.join(directory, PICKLE_NAME)
    if os.path.isfile(pickled):
        return torch.load(pickled, map_location="cpu", weights_only=True)
    raise ValueError(f"load_adapter: {directory} has {CONFIG_NAME} but neither {SAFETENSORS_NAME} nor {PICKLE_NAME}")


def read(path) -> tuple:
    """(specs {name: {r, alpha, dropout}}, state {"<name>.lora_A": (r, in), "<name>.lora_B": (out, r)})."""
    path = os.fspath(path)
    directory = path if os.path.isdir(path) else os.path.dirname(path)
    config_path = os.path.join(directory, CONFIG_NAME)
    if not os.path.isfile(config_path):
        raise _no_adapter_here(directory)
    with open(config_path) as f:
        cfg = json.load(f)
    if cfg.get("peft_type") != "LORA":
        raise ValueError(f"load_adapter: {directory} holds a PEFT {cfg.get('peft_type')} adapter; only LoRA loads")
    used = [k for k in UNSUPPORTED if cfg.get(k)]
    used += [f"bias={cfg['bias']!r}"] if cfg.get("bias", "none") != "none" else []
    if used:
        raise ValueError(f"load_adapter: {directory} uses PEFT options babygpt_ext's LoRA does not implement: "
                         f"{', '.join(used)}; only plain LoRA adapters load (x Wᵀ + lora_alpha/r · B A x)")
    state, other = {}, []
    for key, t in _read_tensors(directory).items():
        name, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
        if not key.startswith(PREFIX) or part not in ("A.weight", "B.weight"):
            other.append(key)
            continue
        state[f"{name}.lora_{part[0]}"] = t
    if other:
        raise ValueError(f"load_adapter: {directory} holds tensors that are not LoRA A/B matrices of Linear layers "
                         f"(e.g. {other[:3]}); only plain LoRA adapters load")
    names = sorted({k.rpartition(".lora_")[0] for k in state})
    unpaired = [n for n in names if f"{n}.lora_A" not in state or f"{n}.lora_B" not in state]
    if unpaired or not names:
        raise ValueError(f"load_adapter: {directory} has no complete LoRA A/B pair for {unpaired or 'any module'}")
    specs = {n: {"r": state[f"{n}.lora_A"].shape[0],
                 "alpha": _pattern_value(cfg.get("alpha_pattern") or {}, n, cfg["lora_alpha"]),
                 "dropout": float(cfg.get("lora_dropout") or 0.0)} for n in names}
    return specs, state
