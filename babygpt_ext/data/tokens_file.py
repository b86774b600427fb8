"""Token ids on disk, for corpora larger than memory.

Format: ``<path>`` holds the raw ids, little-endian ``uint16`` when the vocabulary has fewer than
65,536 tokens (half the disk and page cache of int32), else ``uint32``; a sidecar
``<path>.json`` holds ``{"format", "dtype", "vocab_size", "count"}``. Raw ids with a sidecar
(rather than a header) keep the file a plain array that ``np.memmap``/``np.fromfile`` or any
other tool reads directly. Both files are written to temp names and renamed into place.
"""

from __future__ import annotations

import codecs
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from ..tokenizers.base import Tokenizer, last_safe_cut

FORMAT = "babygpt-tokens-v1"
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}


def sidecar_path(path: str | os.PathLike) -> Path:
    return Path(str(path) + ".json")


def dtype_for_vocab(vocab_size: int) -> str:
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    if vocab_size <= 1 << 16:  # ids 0..65535 fit uint16
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise ValueError(f"vocab_size {vocab_size} does not fit uint32 ids")


def _as_chunks(ids) -> Iterator[np.ndarray]:
    """Accept one sequence of ints (list/array/tensor) or an iterable yielding ints or chunks."""
    if hasattr(ids, "numpy") and hasattr(ids, "cpu"):  # torch tensor
        ids = ids.cpu().numpy()
    if isinstance(ids, np.ndarray):
        yield ids.reshape(-1)
        return
    buf: list[int] = []
    for item in ids:
        if isinstance(item, (int, np.integer)):
            buf.append(int(item))
            if len(buf) >= 1 << 20:
                yield np.asarray(buf, dtype=np.int64)
                buf = []
        else:
            if buf:
                yield np.asarray(buf, dtype=np.int64)
                buf = []
            if hasattr(item, "numpy") and hasattr(item, "cpu"):
                item = item.cpu().numpy()
            yield np.asarray(item, dtype=np.int64).reshape(-1)
    if buf:
        yield np.asarray(buf, dtype=np.int64)


def _atomic_json(path: Path, obj: dict) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_tokens(path: str | os.PathLike, ids, *, vocab_size: int, dtype: str | None = None) -> int:
    """Write ids (a sequence, or an iterable of ints or of chunks, consumed once) to ``path``;
    return how many were written. ``dtype`` defaults to the smallest that holds ``vocab_size``."""
    path = Path(path)
    dtype = dtype or dtype_for_vocab(vocab_size)
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {list(_DTYPES)}, got {dtype!r}")
    np_dtype = _DTYPES[dtype]
    limit = min(vocab_size, np.iinfo(np_dtype).max + 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    count = 0
    try:
        with os.fdopen(fd, "wb") as f:
            for chunk in _as_chunks(ids):
                if chunk.size == 0:
                    continue
                lo, hi = int(chunk.min()), int(chunk.max())
                if lo < 0 or hi >= limit:
                    raise ValueError(f"write_tokens: id {lo if lo < 0 else hi} (near position {count}) "
                                     f"is outside [0, {limit}) for vocab_size={vocab_size}, dtype={dtype}")
                f.write(chunk.astype(np_dtype).tobytes())
                count += chunk.size
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _atomic_json(sidecar_path(path), {"format": FORMAT, "dtype": dtype, "vocab_size": vocab_size, "count": count})
    return count


def read_meta(path: str | os.PathLike) -> dict:
    side = sidecar_path(path)
    if not side.exists():
        raise FileNotFoundError(f"{path}: no sidecar {side.name} (was it written by write_tokens?)")
    meta = json.loads(side.read_text())
    if meta.get("format") != FORMAT or meta.get("dtype") not in _DTYPES:
        raise ValueError(f"{side}: not a {FORMAT} sidecar: {meta}")
    return meta


def open_tokens(path: str | os.PathLike) -> np.memmap:
    """Memory-map a token file read-only: a 1-D array of ``count`` ids, read lazily from disk."""
    meta = read_meta(path)
    np_dtype = _DTYPES[meta["dtype"]]
    size = Path(path).stat().st_size
    if size != meta["count"] * np_dtype.itemsize:
        raise ValueError(f"{path}: {size} bytes on disk, sidecar says {meta['count']} x {meta['dtype']}")
    if meta["count"] == 0:  # np.memmap cannot map an empty file
        return np.zeros(0, dtype=np_dtype)
    return np.memmap(path, dtype=np_dtype, mode="r", shape=(meta["count"],))


def _pieces(source, chunk_chars: int, bar) -> Iterator[str]:
    """Text pieces from a file (``Path``: read in binary, decoded incrementally), a ``str``
    (the text itself), or an iterable of strings."""
    if isinstance(source, os.PathLike):
        decoder = codecs.getincrementaldecoder("utf-8")()
        with open(source, "rb") as f:
            while block := f.read(chunk_chars):
                bar.update(len(block))
                yield decoder.decode(block)
        yield decoder.decode(b"", final=True)
    elif isinstance(source, str):
        for i in range(0, len(source), chunk_chars):
            bar.update(min(chunk_chars, len(source) - i))
            yield source[i:i + chunk_chars]
    else:
        for piece in source:
            bar.update(len(piece))
            yield piece


def tokenize_to_file(source, tokenizer: Tokenizer, path: str | os.PathLike, *,
                     chunk_chars: int = 1 << 20, progress: bool = True) -> int:
    """Encode a text source into a token file without holding all ids (or all text) in memory.

    ``source``: a ``pathlib.Path`` to a UTF-8 file (streamed), a ``str`` holding the text, or an
    iterable of strings. Pieces are cut only at boundaries that do not change tokenization (see
    ``tokenizers.base.safe_chunks``), so the file equals ``tokenizer.encode(whole_text)``.
    Returns the number of tokens written.
    """
    from tqdm import tqdm

    total = os.path.getsize(source) if isinstance(source, os.PathLike) else (
        len(source) if isinstance(source, str) else None)
    unit = "B" if isinstance(source, os.PathLike) else "char"

    def ids() -> Iterator[list[int]]:
        carry = ""
        with tqdm(total=total, unit=unit, unit_scale=True, desc="tokenize", disable=not progress) as bar:
            for piece in _pieces(source, chunk_chars, bar):
                carry += piece
                cut = last_safe_cut(carry)
                if cut:  # with no safe boundary yet, keep accumulating (correctness over memory)
                    yield tokenizer.encode(carry[:cut])
                    carry = carry[cut:]
            if carry:
                yield tokenizer.encode(carry)

    return write_tokens(path, ids(), vocab_size=tokenizer.vocab_size)
