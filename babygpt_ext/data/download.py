"""Checksum-verified, cached downloads with nothing but the standard library.

``download(url, sha256)`` returns a path in the cache (``$BABYGPT_CACHE`` or
``~/.cache/babygpt_ext``). The bytes are streamed into a temp file *in the cache directory*
(same filesystem, so the final ``os.replace`` is atomic), hashed on the way, and only renamed
into place when both the byte count (``Content-Length``) and the sha256 match. Any failure -
wrong checksum, connection dropped early, HTTP error, Ctrl-C - deletes the temp file, so the
cache never holds a half-written file under a real name. A cached file is re-hashed on use and
not downloaded again when it matches.

Integrity policy: a checksum is required. ``sha256=None`` is only accepted together with
``verify=False``, which downloads, prints the hash it saw (so you can pin it) and caches the file
under a name derived from the URL instead of from the hash.
"""

from __future__ import annotations

import hashlib
import os
import re
import sys
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

_CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")


class DownloadError(RuntimeError):
    """A download failed; no partial file was left in the cache."""


def get_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    """The cache directory: the argument, else ``$BABYGPT_CACHE``, else ``~/.cache/babygpt_ext``."""
    if cache_dir is None:
        cache_dir = os.environ.get("BABYGPT_CACHE") or Path.home() / ".cache" / "babygpt_ext"
    path = Path(cache_dir).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _target_name(url: str, sha256: str | None) -> str:
    base = Path(urllib.parse.urlparse(url).path).name or "download"
    # Prefix by content hash (or URL hash when unverified) so two URLs ending in "input.txt"
    # never collide in the cache.
    key = sha256[:16] if sha256 else "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{key}-{base}"


def download(url: str, sha256: str | None, cache_dir: str | os.PathLike | None = None, *,
             verify: bool = True, progress: bool = True, timeout: float = 30.0) -> Path:
    """Fetch ``url`` into the cache and return the file's path (see module docstring)."""
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    elif verify:
        raise ValueError(
            f"download({url!r}): no sha256 given. Pass the expected checksum, or verify=False "
            f"(CLI: --no-verify) to fetch it unverified and print its hash for pinning.")
    directory = get_cache_dir(cache_dir)
    target = directory / _target_name(url, sha256)

    if target.exists():
        if sha256 is None:
            return target  # unverified mode: whatever was fetched last time under this URL
        if sha256_file(target) == sha256:
            return target
        target.unlink()  # corrupted or tampered cache entry: fetch again

    fd, tmp_name = tempfile.mkstemp(dir=directory, prefix=f".{target.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            actual, received, expected_len = _stream(url, out, timeout, progress)
        if expected_len is not None and received != expected_len:
            raise DownloadError(
                f"download of {url} incomplete: the server closed the connection after "
                f"{received} of {expected_len} bytes (Content-Length); nothing was cached")
        if sha256 is not None and actual != sha256:
            raise DownloadError(
                f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual} "
                f"({received} bytes); the file was discarded")
        if sha256 is None:
            print(f"downloaded {url} UNVERIFIED: {received} bytes, sha256 {actual}", file=sys.stderr)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _stream(url: str, out, timeout: float, progress: bool) -> tuple[str, int, int | None]:
    """Copy the response body into ``out``; return (sha256 hex, bytes received, Content-Length)."""
    from tqdm import tqdm

    h = hashlib.sha256()
    received = 0
    req = urllib.request.Request(url, headers={"User-Agent": "babygpt_ext"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            length = resp.headers.get("Content-Length")
            expected_len = int(length) if length is not None and length.isdigit() else None
            with tqdm(total=expected_len, unit="B", unit_scale=True, desc=Path(url).name,
                      disable=not progress, leave=False) as bar:
                while True:
                    # http.client returns b"" (not an error) when the peer closes early; the
                    # caller compares the byte count with Content-Length to catch that.
                    block = resp.read(_CHUNK)
                    if not block:
                        break
                    out.write(block)
                    h.update(block)
                    received += len(block)
                    bar.update(len(block))
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed: {e.reason}") from e
    except (OSError, ValueError) as e:  # IncompleteRead, ConnectionReset, timeouts
        raise DownloadError(f"download of {url} failed after {received} bytes: {e!r}") from e
    return h.hexdigest(), received, expected_len
