"""Bigram language models: the classic count matrix and its neural twin.

``BigramLM`` counts how often token ``b`` follows token ``a`` in a (V, V) matrix and turns each
row into a distribution with add-k smoothing. A row that was never seen (token ``a`` never had a
successor in training) backs off to the add-k unigram distribution, so every row is a proper
distribution and perplexity is always defined. It computes exactly what ``NGramLM(n=2)`` does,
densely and vectorised in torch, which is the fast choice for small vocabularies (char-level).

``NeuralBigramLM`` is the same model learned by gradient descent: an embedding table whose row
``a`` *is* the logits of the next token. Trained with cross-entropy it converges towards the
count model's log-probabilities (``log P(b | a)``), which the tests check.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..generate.sampling import check_sampling_args, sample_next

MAX_DENSE_VOCAB = 8192  # a (V, V) float64 matrix of this size is 512 MiB; beyond, use NGramLM(2)


# ---- helpers shared with ngram.py ---------------------------------------------------------
def as_ids(ids, vocab_size: int, name: str = "ids") -> torch.Tensor:
    """Any 1-D sequence of token ids -> int64 CPU tensor, range-checked."""
    if isinstance(ids, torch.Tensor):
        t = ids.detach().to("cpu", torch.int64).reshape(-1)
    else:  # list, tuple, numpy array or memmap
        t = torch.from_numpy(np.asarray(ids, dtype=np.int64).reshape(-1))
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= vocab_size):
        bad = int(t.min()) if int(t.min()) < 0 else int(t.max())
        raise ValueError(f"{name}: token id {bad} outside [0, vocab_size={vocab_size})")
    return t


def make_generator(generator: torch.Generator | None, seed: int | None) -> torch.Generator | None:
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    return torch.Generator().manual_seed(seed) if seed is not None else generator


def sample_from_probs(probs: torch.Tensor, temperature: float, generator: torch.Generator | None) -> int:
    """Draw one id from a (V,) probability vector sharpened (T<1) or flattened (T>1)."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if temperature != 1.0:
        # p^(1/T) renormalised == softmax(log p / T); done in log space for stability
        probs = torch.softmax(torch.log(probs) / temperature, dim=-1)
    return int(torch.multinomial(probs.float(), 1, generator=generator))


def check_idx(idx: torch.Tensor, vocab_size: int, name: str = "idx") -> None:
    if idx.dim() != 2 or idx.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"{name} must be an integer tensor (B, T), got {idx.dtype} of shape {tuple(idx.shape)}")
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= vocab_size):
        raise ValueError(f"{name}: ids must be in [0, {vocab_size}), got range "
                         f"[{int(idx.min())}, {int(idx.max())}]")


def next_token_loss(logits: torch.Tensor, idx: torch.Tensor, targets: torch.Tensor | None):
    """Mean cross-entropy of logits (B, T, V) against targets (B, T), or None without targets."""
    if targets is None:
        return None
    if targets.shape != idx.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal idx shape {tuple(idx.shape)}")
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


@torch.no_grad()
def generate_from_context(model: nn.Module, idx: torch.Tensor, context: int, max_new_tokens: int,
                          temperature: float, top_k: int | None, generator: torch.Generator | None) -> torch.Tensor:
    """Sample max_new_tokens after idx (B, T), feeding the model only the last `context` tokens."""
    check_sampling_args(temperature, top_k, None, model.vocab_size)  # temperature 0 = greedy
    for _ in range(max_new_tokens):
        logits, _ = model(idx[:, -context:])                                                   # (B, <=context, V)
        nxt = sample_next(logits[:, -1, :], temperature, top_k, generator=generator)[:, None]  # (B, 1)
        idx = torch.cat([idx, nxt], dim=1)
    return idx


@torch.no_grad()
def sequence_perplexity(model: nn.Module, ids, context_size: int, chunk_tokens: int = 4096) -> float:
    """Perplexity of a neural LM over ids[1:], each token predicted from the tokens before it,
    exactly like the count models score. Runs in chunks so the (T, V) logits stay small; each
    chunk is fed ``context_size - 1`` extra earlier tokens so no prediction loses context."""
    ids = torch.as_tensor(np.asarray(ids, dtype=np.int64)) if not isinstance(ids, torch.Tensor) else ids.long()
    if ids.numel() < 2:
        raise ValueError("perplexity needs at least 2 tokens")
    was_training = model.training
    model.eval()
    nll, count = 0.0, 0
    for s in range(0, ids.numel() - 1, chunk_tokens):
        e = min(s + chunk_tokens, ids.numel() - 1)   # score targets ids[s+1 : e+1]
        a = max(0, s - context_size + 1)              # earlier tokens only as context
        logits, _ = model(ids[None, a:e])             # (1, e-a, V)
        scored = logits[0, s - a:]                    # (e-s, V)
        nll += float(F.cross_entropy(scored.float(), ids[s + 1:e + 1], reduction="sum"))
        count += e - s
    model.train(was_training)
    return math.exp(nll / count)


# ---- count-based --------------------------------------------------------------------------
class BigramLM:
    """Count-matrix bigram LM with add-k smoothing and unigram backoff for unseen rows."""

    def __init__(self, vocab_size: int, k: float = 1.0):
        if not 1 <= vocab_size <= MAX_DENSE_VOCAB:
            raise ValueError(f"BigramLM keeps a dense (V, V) matrix: vocab_size must be in "
                             f"[1, {MAX_DENSE_VOCAB}], got {vocab_size}; use NGramLM(2, ...) instead")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.vocab_size, self.k = vocab_size, float(k)
        self.counts = torch.zeros(vocab_size, vocab_size, dtype=torch.int64)  # counts[a, b] = #(a then b)
        self.unigram = torch.zeros(vocab_size, dtype=torch.int64)             # #(b)

    def fit(self, ids) -> "BigramLM":
        ids = as_ids(ids, self.vocab_size)
        V = self.vocab_size
        # one bincount over pair codes a*V + b fills the whole matrix at once
        self.counts = torch.bincount(ids[:-1] * V + ids[1:], minlength=V * V).view(V, V)
        self.unigram = torch.bincount(ids, minlength=V)
        return self

    def probs_matrix(self) -> torch.Tensor:
        """(V, V) float64, row a = P(next | a); every row sums to 1."""
        V, k = self.vocab_size, self.k
        total = int(self.unigram.sum())
        if total + k * V == 0:
            raise ValueError("BigramLM has no counts and k=0: fit it first or use k > 0")
        uni = (self.unigram.double() + k) / (total + k * V)                  # (V,)
        rows = self.counts.sum(1, keepdim=True).double()                     # (V, 1)
        smoothed = (self.counts.double() + k) / (rows + k * V).clamp_min(1e-300)
        return torch.where(rows > 0, smoothed, uni.expand(V, V))

    def probs(self, context) -> torch.Tensor:
        """(V,) distribution of the token after ``context`` (only its last token matters)."""
        ctx = as_ids(context, self.vocab_size, "context")
        if ctx.numel() == 0:  # no previous token: the unigram distribution
            total = int(self.unigram.sum())
            return (self.unigram.double() + self.k) / (total + self.k * self.vocab_size)
        return self.probs_matrix()[int(ctx[-1])]

    def prob(self, context, token: int) -> float:
        return float(self.probs(context)[int(token)])

    def perplexity(self, ids) -> float:
        """exp(mean negative log-likelihood) of ids[1:] given the previous token each."""
        ids = as_ids(ids, self.vocab_size)
        if ids.numel() < 2:
            raise ValueError("perplexity needs at least 2 tokens")
        p = self.probs_matrix()[ids[:-1], ids[1:]]  # (N-1,) gathered in one shot
        return math.exp(-float(torch.log(p).mean()))

    def sample(self, context, n_tokens: int, *, generator=None, seed=None, temperature=1.0) -> list[int]:
        g = make_generator(generator, seed)
        P = self.probs_matrix()
        out = as_ids(context, self.vocab_size, "context").tolist()
        new = []
        for _ in range(n_tokens):
            p = P[out[-1]] if out else self.probs([])
            nxt = sample_from_probs(p, temperature, g)
            out.append(nxt)
            new.append(nxt)
        return new


# ---- neural -------------------------------------------------------------------------------
class NeuralBigramLM(nn.Module):
    """Logits of the next token = a learned row per current token."""

    def __init__(self, vocab_size: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.logits_table = nn.Embedding(vocab_size, vocab_size)  # (V, V): row a = logits after a
        # zeros: training starts from the uniform distribution (loss = ln V), not from noise
        nn.init.zeros_(self.logits_table.weight)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        check_idx(idx, self.vocab_size)
        logits = self.logits_table(idx)  # (B, T, V)
        return logits, next_token_loss(logits, idx, targets)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) -> (B, T + max_new_tokens); only the last token conditions each step."""
        return generate_from_context(self, idx, 1, max_new_tokens, temperature, top_k, generator)
