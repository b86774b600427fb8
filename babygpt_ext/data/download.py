"""Checksum-verified, cached downloads with nothing but the standard library.

``download(url, sha256)`` returns a path in the cache (``$BABYGPT_CACHE`` or
``~/.cache/babygpt_ext``). The bytes are streamed into a ``.part`` file *in the cache directory*
(same filesystem, so the final ``os.replace`` is atomic), hashed on the way, and only renamed
into place when both the byte count (``Content-Length``) and the sha256 match. Any failure -
wrong checksum, connection dropped early, HTTP error, deadline or size cap exceeded, Ctrl-C -
deletes the ``.part`` file, so the cache never holds a half-written file under a real name. A
cached file is re-hashed on use and not downloaded again when it matches.

Left-overs: a process killed with ``kill -9`` cannot delete its ``.part`` file. Each download
holds an exclusive ``flock`` on its own ``.part`` file (released by the kernel when the process
dies, however it dies), and every call first deletes the ``.part`` files in the cache that no
process holds, so a concurrent download of the same file is never disturbed.

Limits: ``deadline`` bounds the whole transfer in seconds (checked after every received block,
so a stalled read adds at most ``timeout``), ``max_bytes`` bounds its size (a larger
``Content-Length`` is refused before the body is read).

Integrity policy: a checksum is required. ``sha256=None`` is only accepted together with
``verify=False``, which downloads and prints the hash it saw (so you can pin it). Such a file is
cached under a name derived from the URL only when the server announced its length and exactly
that many bytes arrived; without a ``Content-Length`` a truncated transfer cannot be told from a
complete one, so the file is kept under an ``unchecked-`` name that the cache never serves (the
next call downloads it again).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

_CHUNK = 1 << 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_UNSAFE_CHARS = re.compile(r"[^A-Za-z0-9._+-]+")
MAX_NAME_CHARS = 200  # of the URL's file name: with the key prefix and the .part suffix under NAME_MAX (255)
DEFAULT_DEADLINE_S = 1800.0
DEFAULT_MAX_BYTES = 1 << 30  # corpora are read into memory as one string; 1 GiB is already a lot
PART_SUFFIX = ".part"
UNCHECKED_PREFIX = "unchecked-"


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
    if len(base) > MAX_NAME_CHARS:
        raise ValueError(
            f"download({url[:60]!r}...): the URL's file name has {len(base)} characters; a cache file name "
            f"takes at most {MAX_NAME_CHARS}. Download it yourself and pass the local path instead")
    base = _UNSAFE_CHARS.sub("_", base)  # '%', spaces, control characters: nothing a shell or the OS trips on
    # Prefix by content hash (or URL hash when unverified) so two URLs ending in "input.txt"
    # never collide in the cache.
    key = sha256[:16] if sha256 else "url-" + hashlib.sha256(url.encode()).hexdigest()[:16]
    return f"{key}-{base}"


def _check_arguments(url: str, sha256: str | None, verify: bool, timeout: float, deadline: float,
                     max_bytes: int) -> str | None:
    """Validate everything before touching the network; return the normalised sha256."""
    scheme = urllib.parse.urlparse(url).scheme if isinstance(url, str) else None
    if scheme not in ("http", "https"):
        raise ValueError(f"download: url must be an http:// or https:// URL, got {url!r}")
    for name, value in (("timeout", timeout), ("deadline", deadline)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"download: {name} must be a positive number of seconds, got {value!r}")
    if not isinstance(max_bytes, int) or isinstance(max_bytes, bool) or max_bytes < 1:
        raise ValueError(f"download: max_bytes must be a positive int, got {max_bytes!r}")
    if sha256 is not None:
        sha256 = sha256.strip().lower()
        if not _HEX64.fullmatch(sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    elif verify:
        raise ValueError(
            f"download({url!r}): no sha256 given. Pass the expected checksum, or verify=False "
            f"(CLI: --no-verify) to fetch it unverified and print its hash for pinning.")
    return sha256


def remove_stale_parts(directory: Path) -> list[Path]:
    """Delete the ``.part`` files in ``directory`` that no live download holds a lock on."""
    removed = []
    for part in directory.glob(f".*{PART_SUFFIX}"):
        try:
            fd = os.open(part, os.O_RDONLY)
        except FileNotFoundError:
            continue  # its download just finished or failed
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # a download in progress (this or another process)
        else:
            part.unlink(missing_ok=True)
            removed.append(part)
        finally:
            os.close(fd)
    return removed


def _locked_part(directory: Path, name: str):
    """(file object, path) of a new, uniquely named ``.part`` file that this process holds a lock on."""
    while True:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=PART_SUFFIX)
        fcntl.flock(fd, fcntl.LOCK_EX)  # blocks only while a cleaner that saw it unlocked deletes it
        try:
            if os.stat(tmp).st_ino == os.fstat(fd).st_ino:
                return os.fdopen(fd, "wb"), Path(tmp)
        except FileNotFoundError:
            pass  # a cleaner removed it between mkstemp and flock: make another
        os.close(fd)


def download(url: str, sha256: str | None, cache_dir: str | os.PathLike | None = None, *,
             verify: bool = True, progress: bool = True, timeout: float = 30.0,
             deadline: float = DEFAULT_DEADLINE_S, max_bytes: int = DEFAULT_MAX_BYTES) -> Path:
    """Fetch ``url`` into the cache and return the file's path (see module docstring).

    ``timeout``: seconds for the connection and for each read; ``deadline``: seconds for the whole
    transfer; ``max_bytes``: the largest response accepted."""
    sha256 = _check_arguments(url, sha256, verify, timeout, deadline, max_bytes)
    name = _target_name(url, sha256)
    directory = get_cache_dir(cache_dir)
    remove_stale_parts(directory)
    target = directory / name

    if target.exists():
        if sha256 is None:
            return target  # unverified but length-checked when it was fetched
        if sha256_file(target) == sha256:
            return target
        target.unlink()  # corrupted or tampered cache entry: fetch again

    out, tmp = _locked_part(directory, name)
    try:
        with out:
            actual, received, expected_len = _stream(url, out, timeout, progress, deadline, max_bytes)
            if expected_len is not None and received != expected_len:
                raise DownloadError(
                    f"download of {url} incomplete: the server closed the connection after "
                    f"{received} of {expected_len} bytes (Content-Length); nothing was cached")
            if sha256 is not None and actual != sha256:
                raise DownloadError(
                    f"checksum mismatch for {url}: expected sha256 {sha256}, got {actual} "
                    f"({received} bytes); the file was discarded")
            if sha256 is None and expected_len is None:
                target = directory / f"{UNCHECKED_PREFIX}{name}"
                print(f"downloaded {url} UNVERIFIED and with no Content-Length, so it may be truncated and "
                      f"is not cached (fetched again next time): {received} bytes, sha256 {actual}", file=sys.stderr)
            elif sha256 is None:
                print(f"downloaded {url} UNVERIFIED: {received} bytes, sha256 {actual}", file=sys.stderr)
            os.replace(tmp, target)  # still under our lock, so no cleaner can see a stale .part
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target


def _stream(url: str, out, timeout: float, progress: bool, deadline: float,
            max_bytes: int) -> tuple[str, int, int | None]:
    """Copy the response body into ``out``; return (sha256 hex, bytes received, Content-Length)."""
    from tqdm import tqdm

    h = hashlib.sha256()
    received = 0
    give_up = time.monotonic() + deadline
    req = urllib.request.Request(url, headers={"User-Agent": "babygpt_ext"})
    try:
        with urllib.request.urlopen(req, timeout=min(timeout, deadline)) as resp:
            length = resp.headers.get("Content-Length")
            expected_len = int(length) if length is not None and length.isdigit() else None
            if expected_len is not None and expected_len > max_bytes:
                raise DownloadError(f"download of {url} refused: the server announces {expected_len:,} bytes, "
                                    f"more than max_bytes={max_bytes:,}; pass a larger max_bytes to allow it")
            with tqdm(total=expected_len, unit="B", unit_scale=True, desc=Path(url).name,
                      disable=not progress, leave=False) as bar:
                while True:
                    # read1: whatever one socket read brings (a plain read(n) waits for all n
                    # bytes, so a server sending a byte a second would never hit the deadline).
                    # http.client returns b"" (not an error) when the peer closes early; the
                    # caller compares the byte count with Content-Length to catch that.
                    block = resp.read1(_CHUNK)
                    if not block:
                        break
                    received += len(block)
                    if received > max_bytes:
                        raise DownloadError(f"download of {url} stopped: more than max_bytes={max_bytes:,} "
                                            f"bytes arrived; pass a larger max_bytes to allow it")
                    out.write(block)
                    h.update(block)
                    bar.update(len(block))
                    if time.monotonic() > give_up:
                        raise DownloadError(f"download of {url} stopped: still running after the deadline of "
                                            f"{deadline:g} s ({received:,} bytes received); pass a larger "
                                            f"deadline to allow it")
    except urllib.error.HTTPError as e:
        raise DownloadError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
    except urllib.error.URLError as e:
        raise DownloadError(f"download of {url} failed: {e.reason}") from e
    except (OSError, ValueError) as e:  # IncompleteRead, ConnectionReset, timeouts
        raise DownloadError(f"download of {url} failed after {received} bytes: {e!r}") from e
    return h.hexdigest(), received, expected_len
