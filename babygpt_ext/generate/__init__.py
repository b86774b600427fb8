"""Text generation: sampling rules, the generation loop, and the seed's one-line helper.

    from babygpt_ext.generate import generate, prompt_model
    out = generate(model, idx, max_new_tokens=50, temperature=0.8, top_k=40)   # = model.generate(...)
    print(prompt_model(model, "the meaning of", 20, 10, tokenizer))             # text in, text out
"""

from typing import Optional

import torch

from .loop import generate
from .sampling import filter_logits, sample_next

__all__ = ["generate", "sample_next", "filter_logits", "prompt_model"]


def prompt_model(model, prompt: str, max_new_tokens: int, topk: Optional[int] = None, tokenizer=None,
                 temperature: float = 1.0, generator: Optional[torch.Generator] = None) -> str:
    """Encode `prompt`, continue it by max_new_tokens tokens (top-k sampling), return the decoded text.

    The returned text starts with the prompt (as the tokenizer round-trips it).
    """
    if tokenizer is None:
        raise ValueError("prompt_model: a tokenizer (with encode/decode) is required")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ValueError(f"prompt_model: the prompt {prompt!r} encodes to no tokens; give at least one token")
    device = next(model.parameters()).device
    idx = torch.tensor([ids], dtype=torch.long, device=device)  # (1, T)
    out = model.generate(idx, max_new_tokens, temperature=temperature, top_k=topk, generator=generator)
    return tokenizer.decode(out[0].tolist())
