"""Tokenizers with one interface: char, word (lossless, with <unk>), and byte-level BPE.

    >>> from babygpt_ext.tokenizers import get_tokenizer, Tokenizer
    >>> tok = get_tokenizer("bpe", text, vocab_size=1000)
    >>> ids = tok.encode("hello")            # list[int]
    >>> tok.decode(ids)                       # 'hello'
    >>> tok.save("tok.json"); Tokenizer.load("tok.json")   # dispatches on the saved kind
"""

from __future__ import annotations

from .base import Tokenizer, registered_kinds, safe_chunks
from .bpe import BPETokenizer
from .char import CharTokenizer
from .word import WordTokenizer, split_words

KINDS = ("char", "word", "bpe")


def get_tokenizer(kind: str, text: str, vocab_size: int | None = 1000) -> Tokenizer:
    """Build a tokenizer of ``kind`` from ``text``.

    ``vocab_size`` is the target for ``bpe`` (None -> 1000) and a cap for ``word`` (most
    frequent pieces kept, the rest become ``<unk>``; None -> every piece of the text);
    ``char`` ignores it (its vocabulary is the text's characters).
    """
    if kind == "char":
        return CharTokenizer.from_text(text)
    if kind == "word":
        return WordTokenizer.from_text(text, max_vocab=vocab_size)
    if kind == "bpe":
        return BPETokenizer.train(text, vocab_size=1000 if vocab_size is None else vocab_size)
    raise ValueError(f"unknown tokenizer kind {kind!r}; choose one of {KINDS}")


__all__ = ["Tokenizer", "CharTokenizer", "WordTokenizer", "BPETokenizer", "get_tokenizer",
           "split_words", "safe_chunks", "registered_kinds", "KINDS"]
