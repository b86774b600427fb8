"""Autoregressive generation with a KV cache, batched prompts, stop tokens and streaming.

Two ways to get the logits of the next position, which produce the same tokens (a test checks it):

  recompute (kv_cache=False)  run the model on the last block_size tokens at every step: O(T²) work
                              per token, and simple.
  KV cache  (kv_cache=True)   run the prompt once ("prefill", Tq = Tk = T), keeping every layer's
                              keys and values; then feed only the newest token (Tq = 1 query
                              against Tk cached keys: the op's bottom-right causal mask), through
                              decode.py's DecodePlan when the model is a plain GPT.

Positions are absolute (learned position embeddings), so once the sequence is longer than
block_size the window of the last block_size tokens slides and every cached key sits at a new
position: the cache is no longer valid. From that step on generation falls back to recompute
over the last block_size tokens (the "crop"), exactly as the recompute path does.
"""

from typing import Callable, Optional, Sequence, Union

import torch

from .decode import DecodePlan
from .sampling import check_sampling_args, sample_next


def _stop_rule(stop, device) -> Optional[Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """stop (ids or a callable) as one function (idx (B, T), newest column (B,)) -> (B,) bool."""
    if stop is None:
        return None
    if callable(stop):
        def rows_done(idx, tok):
            done = torch.as_tensor(stop(idx), dtype=torch.bool, device=idx.device)
            if done.shape != tok.shape:
                raise ValueError(f"generate: stop(idx) must return one bool per row, shape {tuple(tok.shape)}, "
                                 f"got shape {tuple(done.shape)}")
            return done
        return rows_done
    ids = [stop] if isinstance(stop, int) else list(stop)
    if not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise ValueError(f"stop must be a token id, a non-empty list of token ids or a callable, got {stop!r}")
    ids = torch.tensor(ids, dtype=torch.long, device=device)
    return lambda idx, tok: torch.isin(tok, ids)


def generate(model, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0, top_k: Optional[int] = None,
             top_p: Optional[float] = None,
             stop: Union[int, Sequence[int], Callable[[torch.Tensor], object], None] = None, kv_cache: bool = True,
             generator: Optional[torch.Generator] = None,
             stream: Optional[Callable[[torch.Tensor], None]] = None) -> torch.Tensor:
    """Continue every row of idx (B, T) by up to max_new_tokens tokens; returns (B, T + n), n <= max_new_tokens.

    temperature 0 is greedy (argmax); otherwise logits / temperature are filtered by top_k and
    top_p and sampled (with `generator` for reproducibility). All rows share one length, so batched
    prompts must have the same length.
    stop: a token id or a list of ids; a row that samples one has finished. Or a callable
    stop(idx) -> (B,) bools, called with the whole (B, T) sequence after each new token, for rules
    ids cannot express (e.g. "the decoded text contains a stop string"). A finished row keeps
    repeating its last token (so the output stays rectangular: cut each row where it stopped),
    and generation ends early once every row has finished.
    stream: called with each new column of tokens (B,) as soon as it is chosen (for printing).
    The model runs in eval mode (no dropout) and is put back in its previous mode afterwards.
    """
    if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] < 1:
        raise ValueError("generate: idx must be a (B, T) tensor of token ids with T >= 1, got "
                         f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"generate: max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    check_sampling_args(temperature, top_k, top_p, model.config.vocab_size)
    was_training = model.training
    model.eval()
    try:
        # inference_mode: no autograd bookkeeping (version counters, views) on the ~100 small ops
        # of every step; the result is cloned outside it so callers get an ordinary tensor.
        with torch.inference_mode():
            out, n = _generate(model, idx, max_new_tokens, temperature, top_k, top_p, stop, kv_cache,
                               generator, stream)
        return out[:, :n].clone()
    finally:
        model.train(was_training)


def _generate(model, idx, max_new_tokens, temperature, top_k, top_p, stop, kv_cache, generator, stream):
    """The loop of generate(): (the output buffer (B, T + max_new_tokens), how many columns are filled)."""
    block_size = model.config.block_size
    rows_done = _stop_rule(stop, idx.device)
    B, n = idx.shape
    # Every token lands in one preallocated buffer (no torch.cat per token); the model reads
    # views of it.
    out = idx.new_empty(B, n + max_new_tokens)
    out[:, :n] = idx
    cache = model.new_kv_cache(B) if kv_cache and hasattr(model, "new_kv_cache") else None
    plan = None
    if cache is not None:
        logits = model(out[:, max(0, n - block_size):n], kv_cache=cache)[0][:, -1]  # prefill: (B, V)
        plan = DecodePlan.of(model, cache)
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    last = idx[:, -1]
    for _ in range(max_new_tokens):
        if cache is None:
            logits = model(out[:, max(0, n - block_size):n])[0][:, -1]  # recompute over the (cropped) context
        tok = sample_next(logits, temperature, top_k, top_p, generator)  # (B,)
        if rows_done is not None:
            tok = torch.where(done, last, tok)  # finished rows repeat their last token
        last = tok
        out[:, n] = tok
        n += 1
        if rows_done is not None:
            done = done | rows_done(out[:, :n], tok)
        if stream is not None:
            stream(tok)
        if rows_done is not None and bool(done.all()):
            break
        if cache is not None:
            pos = cache[0].length
            if pos < block_size:  # decode: one query, Tq = 1
                logits = plan.step(tok, pos) if plan is not None else model(out[:, n - 1:n], kv_cache=cache)[0][:, -1]
            else:
                cache = None  # the window starts sliding: cached positions are stale (see above)
    return out, n
