"""The one tokenizer interface, the save/load format, and text chunking.

Every tokenizer maps text to a list of integer ids in ``[0, vocab_size)`` and back. They are
saved as one JSON file ``{"kind": ..., "format": 1, ...}``; ``Tokenizer.load(path)`` reads the
``kind`` field and hands the rest to the matching subclass, so callers never need to know which
kind of tokenizer a checkpoint used.
"""

from __future__ import annotations

import json
import operator
import os
import re
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable, Iterator

FORMAT_VERSION = 1

# kind string -> subclass; filled by Tokenizer.__init_subclass__.
_REGISTRY: dict[str, type["Tokenizer"]] = {}


class Tokenizer(ABC):
    """Abstract base: ``encode``, ``decode``, ``vocab_size``, ``save``, ``load``, ``kind``."""

    kind: str = ""

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.kind:
            _REGISTRY[cls.kind] = cls

    # ---- the interface -------------------------------------------------------------------
    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids."""

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. ``decode(encode(s)) == s`` for text the tokenizer can represent."""

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of distinct ids; every id is in ``[0, vocab_size)``."""

    @abstractmethod
    def _state(self) -> dict:
        """JSON-serialisable state, without the ``kind``/``format`` fields."""

    @classmethod
    @abstractmethod
    def _from_state(cls, state: dict) -> "Tokenizer":
        """Inverse of ``_state``."""

    # ---- shared behaviour ----------------------------------------------------------------
    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """Encode several texts; subclasses backed by a Rust library do this in parallel."""
        return [self.encode(t) for t in texts]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer as JSON (atomically: temp file + rename)."""
        path = Path(path)
        payload = {"kind": self.kind, "format": FORMAT_VERSION, **self._state()}
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(payload, f, ensure_ascii=False)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        """Read a file written by ``save`` and rebuild the right subclass from its ``kind``.

        A file that is not a babygpt tokenizer (not UTF-8, not JSON, no ``kind``) or whose state is
        damaged raises ``ValueError`` naming the file."""
        try:
            with open(path, encoding="utf-8") as f:
                payload = json.load(f)
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not a babygpt tokenizer file (not UTF-8 text: byte offset {e.start})") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not a babygpt tokenizer file (not JSON: {e})") from None
        if not isinstance(payload, dict) or "kind" not in payload:
            raise ValueError(f"{path}: not a babygpt tokenizer file (no 'kind' field)")
        kind = payload.pop("kind")
        version = payload.pop("format", None)
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: tokenizer format {version!r}, this version reads {FORMAT_VERSION}")
        if not isinstance(kind, str) or kind not in _REGISTRY:
            raise ValueError(f"{path}: unknown tokenizer kind {kind!r}; known: {sorted(_REGISTRY)}")
        sub = _REGISTRY[kind]
        if cls is not Tokenizer and not issubclass(sub, cls):
            raise ValueError(f"{path}: holds a {kind!r} tokenizer, not a {cls.__name__}")
        try:
            return sub._from_state(payload)
        except Exception as e:  # a missing field, a wrong type, a vocabulary the subclass refuses
            raise ValueError(f"{path}: damaged {kind!r} tokenizer file ({type(e).__name__}: {e})") from e

    def _check_text(self, text) -> None:
        """Every ``encode`` takes one str: a list of single characters would otherwise encode silently."""
        if not isinstance(text, str):
            raise TypeError(f"{type(self).__name__}.encode expects str, got {type(text).__name__}")

    def _check_ids(self, ids: Iterable[int]) -> list[int]:
        """``ids`` as a list of ints, each in [0, vocab_size). Floats and bools are refused
        (``int(2.7)`` would silently decode token 2); numpy and torch integers are accepted."""
        ids = [i if type(i) is int else _as_id(i) for i in ids]  # `type(i) is int`: the fast path, bool excluded
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: ids {bad[:5]} are outside [0, vocab_size={self.vocab_size})")
        return ids

    def __repr__(self) -> str:
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"


class VocabularyTokenizer(Tokenizer):
    """A tokenizer whose vocabulary is a list of distinct strings, id = position (``itos``), and
    whose decoding is their concatenation: the char and word tokenizers."""

    def __init__(self, itos: list[str]):
        self.itos: list[str] = itos
        self.stoi: dict[str, int] = {s: i for i, s in enumerate(itos)}

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def decode(self, ids: Iterable[int]) -> str:
        itos = self.itos
        return "".join(itos[i] for i in self._check_ids(ids))


def _as_id(i) -> int:
    """A numpy/torch integer scalar as an int; anything else (float, bool, str) is a TypeError."""
    if isinstance(i, bool) or "bool" in str(getattr(i, "dtype", "")):
        raise TypeError(f"decode: ids must be integers, got a bool {i!r}")
    try:
        return operator.index(i)
    except TypeError:
        raise TypeError(f"decode: ids must be integers, got {type(i).__name__} {i!r}") from None


def registered_kinds() -> list[str]:
    return sorted(_REGISTRY)


# ---- chunking text without changing its tokenization --------------------------------------
# Cutting just *before* a whitespace run that follows a non-space character never changes the
# ids, for every tokenizer here: char trivially; word because its pieces (\w+, one punctuation
# mark, a whitespace run) never span that boundary; byte-level BPE because GPT-2's pre-tokenizer
# never joins a non-space character to the whitespace after it, and a whitespace run at the
# start of a text splits exactly as it does mid-text. Only ASCII whitespace counts as the run's
# first character: characters like U+001C are "space" to Python but punctuation to the Rust
# regex. This lets BPE encode in parallel chunks and tokenize_to_file stream (tested: chunked
# ids == whole-text ids).
_SAFE_CUT = re.compile(r"(?<=\S)(?=[ \t\n\r\f\v])")
_ASCII_SPACE = frozenset(" \t\n\r\f\v")


def safe_chunks(text: str, chunk_chars: int = 1 << 16) -> Iterator[str]:
    """Yield consecutive pieces of ``text`` of about ``chunk_chars`` characters, cut only at
    safe boundaries (see above). A text with no boundary comes back whole."""
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}")
    start, n = 0, len(text)
    while start < n:
        if n - start <= chunk_chars:
            yield text[start:]
            return
        m = _SAFE_CUT.search(text, start + chunk_chars)
        if m is None:
            yield text[start:]
            return
        yield text[start:m.start()]
        start = m.start()


def last_safe_cut(text: str) -> int:
    """Index of the last safe boundary in ``text`` (0 if none): ``text[:i]`` can be encoded
    now, ``text[i:]`` must wait for more input."""
    for i in range(len(text) - 1, 0, -1):
        if text[i] in _ASCII_SPACE and not text[i - 1].isspace():
            return i
    return 0
