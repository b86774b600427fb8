"""Where text comes from: the embedded corpus, local files/folders, or a registered download.

The embedded corpus is CPython's own documentation topics (``pydoc_data.topics``, ~465 KB of
English prose and code), shipped with every CPython, so the demos and tests need no network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .download import download

EMBEDDED = "pydoc"
TEXT_SUFFIXES = (".txt", ".md")


@dataclass(frozen=True)
class Corpus:
    """A public corpus the downloader may fetch. ``sha256`` is required for a verified fetch;
    an entry with ``sha256=None`` can only be fetched with ``verify=False`` (``--no-verify``)."""

    url: str
    sha256: str | None
    size: int | None  # bytes, informational
    description: str


CORPORA: dict[str, Corpus] = {
    # 40,000 lines of Shakespeare from char-rnn. The checksum was not computed on this project's
    # machines (no internet here); it is the value that several independent public projects pin
    # for this exact URL and size, and download() verifies it on first use.
    "tinyshakespeare": Corpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        size=1_115_394,
        description="Tiny Shakespeare (char-rnn), 1.1 MB",
    ),
}


def embedded_text() -> str:
    """CPython's ``pydoc_data.topics``: the ``topics`` values joined in sorted-key order."""
    from pydoc_data.topics import topics

    return "".join(topics[k] for k in sorted(topics))


def _read_folder(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in TEXT_SUFFIXES)
    if not files:
        raise ValueError(f"load_text: folder {folder} holds no {'/'.join(TEXT_SUFFIXES)} files")
    # Plain concatenation in sorted path order: the text is exactly the files' bytes, decoded.
    return "".join(read_utf8(p) for p in files)


def read_utf8(path: Path) -> str:
    """A file's text; a file that is not UTF-8 is refused naming the file and the byte offset."""
    try:
        return path.read_text(encoding="utf-8")  # one decode of the whole file: e.start is the file offset
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text: byte 0x{e.object[e.start]:02x} at offset {e.start:,} "
                         f"({e.reason}); convert it to UTF-8 (e.g. iconv -t utf-8) or pass a text file") from None


def load_text(source: str | os.PathLike | None = None, *, verify: bool = True,
              cache_dir: str | os.PathLike | None = None) -> str:
    """Return a corpus as one string.

    ``source`` is ``None`` or ``"pydoc"`` (the embedded corpus); a path to a UTF-8 text file; a
    folder (every ``*.txt``/``*.md`` below it, recursively, sorted by path, concatenated); or the
    name of a registered corpus in ``CORPORA`` (downloaded once into the cache, checksum-verified).
    """
    if source is None or source == EMBEDDED:
        return embedded_text()
    path = Path(source).expanduser()
    try:
        is_dir, is_file = path.is_dir(), path.is_file()
    except OSError as e:  # e.g. a name longer than the filesystem allows
        raise ValueError(f"load_text: cannot use {str(source)[:60]!r}"
                         f"{f'... ({len(str(source))} characters)' if len(str(source)) > 60 else ''} "
                         f"as a file name: {e.strerror}") from None
    if is_dir:
        return _read_folder(path)
    if is_file:
        return read_utf8(path)
    name = str(source)
    if name in CORPORA:
        entry = CORPORA[name]
        return read_utf8(download(entry.url, entry.sha256, cache_dir, verify=verify))
    raise ValueError(
        f"load_text: {name!r} is not an existing file or folder nor a known corpus; "
        f"known corpora: {[EMBEDDED, *CORPORA]}")
