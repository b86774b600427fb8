"""The trainer really trains: the seed's `babygpt` preset (width 16, 4 heads, 4 layers, context 4),
char-level on the embedded corpus, beats the count-based bigram's validation perplexity on the
same tokenization and the same train/val split.

Why char-level: the bigram then is a strong, well-estimated baseline (103 x 103 counts from 418k
tokens, add-1 smoothing barely matters), so beating it means the model uses its 4-token context,
not that the baseline was starved. (Word-level with a 1000-word vocabulary the add-1 bigram is
weak, and the win would say less.)

Both are scored on every token of the validation tail: the bigram on val[1:] given the previous
token; the GPT on non-overlapping windows of 4 (so its context is 1..4 tokens, averaging 2.5).
Measured here (2 shared cores, 1 thread): bigram 10.21, GPT 8.75 after 600 steps in ~15 s.
"""

import math

import pytest
import torch

from babygpt_ext.data import load_text, split
from babygpt_ext.models import GPT, BigramLM, GPTConfig
from babygpt_ext.tokenizers import get_tokenizer
from babygpt_ext.train import Trainer, TrainConfig


@torch.no_grad()
def windowed_perplexity(model, ids: torch.Tensor, block: int) -> float:
    n = (len(ids) - 1) // block
    x = ids[: n * block].view(n, block)            # (n, T) every val token once as an input
    y = ids[1: n * block + 1].view(n, block)       # (n, T) and once as a target
    model.eval()
    _, loss = model(x, y)
    return math.exp(loss.item())


@pytest.mark.slow
def test_babygpt_beats_count_bigram_on_val_perplexity(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matmuls: one thread beats two contended ones by a wide margin
    try:
        text = load_text()
        tok = get_tokenizer("char", text)
        ids = torch.tensor(tok.encode(text), dtype=torch.int64)
        train, val = split(ids, 0.1)

        bigram_ppl = BigramLM(tok.vocab_size).fit(train).perplexity(val)

        torch.manual_seed(0)
        model = GPT(GPTConfig.from_preset("babygpt", vocab_size=tok.vocab_size))
        cfg = TrainConfig(batch_size=64, max_iters=600, lr=1e-2, min_lr=1e-3, warmup_iters=30, weight_decay=0.0,
                          eval_interval=600, eval_iters=10, progress=False, seed=0)
        Trainer(model, train, val, cfg, tmp_path).fit()
        gpt_ppl = windowed_perplexity(model, val, model.config.block_size)
    finally:
        torch.set_num_threads(threads)

    print(f"val perplexity: bigram {bigram_ppl:.2f}, babygpt {gpt_ppl:.2f}")
    assert 5 < bigram_ppl < 20  # sanity: a char bigram on English prose
    assert gpt_ppl < bigram_ppl
