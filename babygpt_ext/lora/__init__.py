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

from .adapters import ADAPTER_FORMAT, FORMATS, load_adapter, lora_state_dict, save_adapter
from .inject import inject, lora_modules, mark_only_lora_trainable, merge, merge_and_unload, unmerge

__all__ = ["inject", "mark_only_lora_trainable", "merge", "unmerge", "merge_and_unload", "lora_modules",
           "lora_state_dict", "save_adapter", "load_adapter", "ADAPTER_FORMAT", "FORMATS"]
