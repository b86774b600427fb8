"""Character-level tokenizer: one id per distinct character of the training text.

Decision on unknown characters: ``encode`` raises ``ValueError`` listing the characters that
are not in the vocabulary (and where the first one is). A silent ``<unk>`` would make
``decode(encode(s)) != s`` without anyone noticing, and a char vocabulary is normally built from
the very text it encodes. Build the tokenizer from a text that covers what you will encode
(e.g. the whole corpus, as the scripts do), or pass ``extra_chars`` for characters you expect.
"""

from __future__ import annotations

from typing import Iterable

from .base import VocabularyTokenizer


class CharTokenizer(VocabularyTokenizer):
    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise ValueError("CharTokenizer: every vocabulary entry must be a single character")
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: vocabulary characters must be distinct")
        if not chars:
            raise ValueError("CharTokenizer: empty vocabulary (was the text empty?)")
        super().__init__(chars)

    @classmethod
    def from_text(cls, text: str, extra_chars: str = "") -> "CharTokenizer":
        """Vocabulary = the sorted set of characters in ``text`` (+ ``extra_chars``)."""
        return cls(sorted(set(text) | set(extra_chars)))

    def encode(self, text: str) -> list[int]:
        self._check_text(text)
        stoi = self.stoi
        try:
            return [stoi[c] for c in text]
        except KeyError:
            unknown = sorted({c for c in text if c not in stoi})
            first = next(i for i, c in enumerate(text) if c not in stoi)
            raise ValueError(
                f"CharTokenizer.encode: {len(unknown)} character(s) not in the vocabulary of "
                f"{self.vocab_size}: {unknown[:10]!r} (first at index {first}); build the "
                f"tokenizer from text containing them or pass extra_chars"
            ) from None

    def _state(self) -> dict:
        return {"chars": self.itos}

    @classmethod
    def _from_state(cls, state: dict) -> "CharTokenizer":
        return cls(state["chars"])
