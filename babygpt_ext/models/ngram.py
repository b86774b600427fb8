"""N-gram language models: sparse counts with add-k smoothing and backoff, and Bengio's MLP.

``NGramLM(n, V, k)`` — the probability of token ``w`` after the previous tokens is

    P(w | h) = (c(h, w) + k) / (c(h) + k·V)     for the longest context h (at most n-1 tokens)
                                                 that was seen in training (c(h) > 0),
    P(w)     = (c(w) + k) / (N + k·V)           when no context is available or seen.

Every branch is an add-k-smoothed *normalised* distribution over the V tokens, and which branch
applies depends only on the context, never on ``w`` — so for every context the probabilities sum
to exactly 1 and perplexity is a real perplexity (unlike "stupid backoff", whose scores do not
sum to 1). Unseen contexts back off to shorter ones instead of collapsing to the add-k uniform
row. k -> 0 gives maximum likelihood (unseen tokens get probability 0, perplexity may be inf);
k -> infinity gives the uniform distribution. Note the cost of add-k with a large vocabulary: a
context seen c(h) times hands k·V/(c(h)+k·V) of its mass to unseen tokens (k=0.01, V=4278 and
c(h)=20: two thirds), which is why word-level samples from rare contexts look like noise. At the start of a sequence the model uses the
tokens it has (a shorter context), the same information the neural models get from padding.

Counts are kept sparse: each m-gram is encoded as the integer sum(id_j · V^(m-1-j)), the codes
are sorted once with ``np.unique`` and looked up with ``np.searchsorted``, so scoring a whole
validation set is a handful of vectorised passes, for any vocabulary size with V^n < 2^62.

``NeuralNGramLM`` is the neural counterpart (Bengio et al. 2003): embed the previous n-1 tokens,
concatenate, one tanh hidden layer, logits over the vocabulary.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .bigram import as_ids, check_idx, generate_from_context, make_generator, next_token_loss, sample_from_probs


def _window_codes(ids: np.ndarray, m: int, V: int) -> np.ndarray:
    """Codes of all length-m windows of ids: out[s] encodes ids[s : s+m] (len(ids)-m+1,)."""
    L = len(ids) - m + 1
    codes = np.zeros(max(L, 0), dtype=np.int64)
    for j in range(m):
        codes = codes * V + ids[j:j + L]
    return codes


def _lookup(keys: np.ndarray, counts: np.ndarray, query: np.ndarray) -> np.ndarray:
    """counts[keys == query] for each query (0 where absent); keys sorted ascending."""
    if keys.size == 0:
        return np.zeros(query.shape, dtype=np.int64)
    pos = np.minimum(np.searchsorted(keys, query), keys.size - 1)
    return np.where(keys[pos] == query, counts[pos], 0)


class NGramLM:
    """Count-based n-gram LM: add-k smoothing, backoff to shorter contexts (see module doc)."""

    def __init__(self, n: int, vocab_size: int, k: float = 1.0):
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if vocab_size < 1:
            raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
        if vocab_size ** n >= 2 ** 62:
            raise ValueError(f"vocab_size**n = {vocab_size}**{n} does not fit the int64 n-gram codes; lower n")
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        self.n, self.vocab_size, self.k = n, vocab_size, float(k)
        empty = np.zeros(0, dtype=np.int64)
        # grams[m] = (sorted codes, counts) of m-grams; ctx[m] = same for their (m-1)-token contexts
        self.grams = {m: (empty, empty) for m in range(1, n + 1)}
        self.ctx = {m: (empty, empty) for m in range(2, n + 1)}
        self.total = 0  # number of training tokens (the unigram context count)

    def fit(self, ids) -> "NGramLM":
        """Count all 1..n-grams of ``ids`` (replacing earlier counts)."""
        ids = as_ids(ids, self.vocab_size).numpy()
        V = self.vocab_size
        self.total = len(ids)
        for m in range(1, self.n + 1):
            codes, counts = np.unique(_window_codes(ids, m, V), return_counts=True)
            self.grams[m] = (codes, counts.astype(np.int64))
            if m >= 2:
                # a context's count = sum over the m-grams that extend it; codes // V are sorted
                ctx_codes, first = np.unique(codes // V, return_index=True)
                ctx_counts = np.add.reduceat(counts, first) if codes.size else counts
                self.ctx[m] = (ctx_codes, ctx_counts.astype(np.int64))
        return self

    # ---- probabilities --------------------------------------------------------------------
    def _denominator_check(self) -> None:
        if self.total + self.k * self.vocab_size == 0:
            raise ValueError("NGramLM has no counts and k=0: fit it first or use k > 0")

    def probs(self, context) -> torch.Tensor:
        """(V,) float64 distribution of the next token after ``context`` (sums to 1)."""
        self._denominator_check()
        ctx = as_ids(context, self.vocab_size, "context").numpy()
        V, k = self.vocab_size, self.k
        for m in range(min(self.n, len(ctx) + 1), 1, -1):  # longest usable context first
            h = int(_window_codes(ctx[len(ctx) - (m - 1):], m - 1, V)[0])
            c_h = int(_lookup(*self.ctx[m], np.array([h]))[0])
            if c_h > 0:
                codes, counts = self.grams[m]
                lo, hi = np.searchsorted(codes, [h * V, h * V + V])  # all m-grams h·w
                row = np.zeros(V, dtype=np.float64)
                row[codes[lo:hi] - h * V] = counts[lo:hi]
                return torch.from_numpy((row + k) / (c_h + k * V))
        codes, counts = self.grams[1]
        row = np.zeros(V, dtype=np.float64)
        row[codes] = counts
        return torch.from_numpy((row + k) / (self.total + k * V))

    def prob(self, context, token: int) -> float:
        if not 0 <= int(token) < self.vocab_size:
            raise ValueError(f"token {token} outside [0, {self.vocab_size})")
        return float(self.probs(context)[int(token)])

    def token_probs(self, ids) -> np.ndarray:
        """P(ids[i] | up to n-1 previous tokens) for i = 1..len-1, vectorised: (len-1,)."""
        self._denominator_check()
        ids = as_ids(ids, self.vocab_size).numpy()
        L, V, k = len(ids), self.vocab_size, self.k
        p = np.zeros(L, dtype=np.float64)
        done = np.zeros(L, dtype=bool)
        done[0] = True  # the first token has no context and is not scored
        for m in range(self.n, 0, -1):
            if L < m:
                continue
            codes = _window_codes(ids, m, V)        # window s predicts ids[s + m - 1]
            pos = np.arange(m - 1, L)
            c_hw = _lookup(*self.grams[m], codes)
            c_h = _lookup(*self.ctx[m], codes // V) if m >= 2 else np.full(codes.shape, self.total)
            take = ~done[pos] & ((c_h > 0) if m >= 2 else True)
            p[pos[take]] = (c_hw[take] + k) / (c_h[take] + k * V)
            done[pos[take]] = True
        return p[1:]

    def perplexity(self, ids) -> float:
        """exp(mean -log P) over ids[1:]; inf if some token has probability 0 (k = 0)."""
        if len(ids) < 2:
            raise ValueError("perplexity needs at least 2 tokens")
        with np.errstate(divide="ignore"):
            return math.exp(-float(np.log(self.token_probs(ids)).mean()))

    def sample(self, context, n_tokens: int, *, generator=None, seed=None, temperature=1.0) -> list[int]:
        """Draw ``n_tokens`` new ids after ``context``; same seed/generator state -> same ids."""
        g = make_generator(generator, seed)
        out = as_ids(context, self.vocab_size, "context").tolist()
        new = []
        for _ in range(n_tokens):
            nxt = sample_from_probs(self.probs(out[-(self.n - 1):] if self.n > 1 else []),
                                    temperature, g)
            out.append(nxt)
            new.append(nxt)
        return new


class NeuralNGramLM(nn.Module):
    """Bengio-style MLP LM: logits for position t from embeddings of tokens t-n+2 .. t."""

    def __init__(self, vocab_size: int, n: int = 3, n_embd: int = 16, hidden: int = 128):
        super().__init__()
        if n < 2:
            raise ValueError(f"n must be >= 2 (at least one previous token), got {n}")
        self.vocab_size, self.n = vocab_size, n
        self.pad_id = vocab_size  # an extra learned embedding meaning "before the start"
        self.wte = nn.Embedding(vocab_size + 1, n_embd)
        self.hidden = nn.Linear((n - 1) * n_embd, hidden)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        check_idx(idx, self.vocab_size)
        B, T = idx.shape
        c = self.n - 1
        padded = F.pad(idx, (c, 0), value=self.pad_id)      # (B, T + c)
        # window s covers padded[s : s+c]; position t needs idx[t-c+1 .. t] = window t+1
        ctx = padded.unfold(1, c, 1)[:, 1:]                 # (B, T, c)
        emb = self.wte(ctx).reshape(B, T, -1)               # (B, T, c·n_embd)
        logits = self.head(torch.tanh(self.hidden(emb)))    # (B, T, V)
        return logits, next_token_loss(logits, idx, targets)

    @torch.no_grad()
    def generate(self, idx: torch.Tensor, max_new_tokens: int, temperature: float = 1.0,
                 top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """idx (B, T) -> (B, T + max_new_tokens); each step looks at the last n-1 tokens."""
        return generate_from_context(self, idx, self.n - 1, max_new_tokens, temperature, top_k, generator)
