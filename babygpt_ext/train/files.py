"""Atomic file writes for a run directory, and the cleanup of the temp files a hard kill leaves.

Every file of a run is written to a unique temp name in the same directory (``.NAME.XXXXXXXX.tmp``),
fsynced, given the permissions the umask asks for, then ``os.replace``d over its target: a reader
(or a resumed run) sees the old file or the new one, never half of one. A process killed with
SIGKILL cannot remove its temp file; the next run that owns the directory does (``clean_temp_files``).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def temp_path(path: Path) -> Path:
    """A fresh, unique temp file next to ``path`` (same filesystem, so os.replace is atomic)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable (survives a power cut, not only a killed process)."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def commit(tmp: Path, path: Path) -> None:
    """fsync ``tmp``, give it the umask's permissions (mkstemp makes 0600), rename it over ``path``."""
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write(path: str | os.PathLike, write, mode: str | None = "wb") -> Path:
    """Create ``path`` atomically: ``write(f)`` fills a temp file that then replaces ``path``
    (mode=None: ``write(tmp_path)`` for writers that want a file name).

    On any failure (a full disk, Ctrl-C) the temp file is removed and ``path`` is untouched."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path(path)
    try:
        if mode is None:
            write(tmp)
        else:
            with open(tmp, mode, **({} if "b" in mode else {"encoding": "utf-8", "newline": ""})) as f:
                write(f)
        commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_copy(src: str | os.PathLike, dst: str | os.PathLike) -> Path:
    """Make ``dst`` a copy of ``src`` atomically: a hard link where the filesystem allows (no bytes
    copied; ``src`` is itself only ever replaced, never rewritten in place), else a full copy."""
    src, dst = Path(src), Path(dst)
    tmp = temp_path(dst)
    try:
        tmp.unlink()
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)
        commit(tmp, dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return dst


def clean_temp_files(directory: str | os.PathLike) -> list[Path]:
    """Remove the temp files killed writers left in ``directory``. Only safe while holding its lock."""
    removed = []
    for p in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        if p.is_file():
            p.unlink(missing_ok=True)
            removed.append(p)
    return removed
