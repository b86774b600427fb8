"""Word-level tokenizer, as in the BabyGPT seed, but lossless.

Text is cut into three kinds of pieces: runs of word characters (``\\w+``), single punctuation
characters, and runs of whitespace. Whitespace is kept as tokens, so decoding is plain
concatenation and ``decode(encode(s)) == s`` whenever every piece of ``s`` is in the vocabulary.

Pieces outside the vocabulary encode to ``<unk>`` (id 0) and decode to the string ``"<unk>"``.
A literal "<unk>" in the text can never be confused with it: the splitter turns it into the
three pieces "<", "unk", ">". ``max_vocab``/``min_count`` trade rare words for ``<unk>``.
"""

from __future__ import annotations

import re
from collections import Counter
from typing import Iterable

from .base import VocabularyTokenizer

UNK = "<unk>"
_PIECES = re.compile(r"\w+|\s+|[^\w\s]")


def split_words(text: str) -> list[str]:
    """The pieces the word tokenizer works on; ``"".join(split_words(s)) == s``."""
    return _PIECES.findall(text)


class WordTokenizer(VocabularyTokenizer):
    kind = "word"

    def __init__(self, words: Iterable[str]):
        words = [w for w in words if w != UNK]
        if any(not isinstance(w, str) or not w for w in words):
            raise ValueError("WordTokenizer: every vocabulary entry must be a non-empty string")
        if len(set(words)) != len(words):
            raise ValueError("WordTokenizer: vocabulary words must be distinct")
        super().__init__([UNK, *words])
        self.unk_id = 0

    @classmethod
    def from_text(cls, text: str, max_vocab: int | None = None, min_count: int = 1) -> "WordTokenizer":
        """Vocabulary from the pieces of ``text``: most frequent first (ties alphabetical), at
        most ``max_vocab`` entries including ``<unk>``, each seen at least ``min_count`` times."""
        if max_vocab is not None and max_vocab < 2:
            raise ValueError(f"max_vocab must be >= 2 (<unk> plus one word), got {max_vocab}")
        counts = Counter(split_words(text))
        ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
        if max_vocab is not None:
            ranked = ranked[: max_vocab - 1]
        return cls(ranked)

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        get = self.stoi.get
        return [get(p, 0) for p in split_words(text)]

    def _state(self) -> dict:
        return {"words": self.itos[1:]}

    @classmethod
    def _from_state(cls, state: dict) -> "WordTokenizer":
        return cls(state["words"])
