"""One run per run directory: an OS file lock, and no silent replacement of another run's files.

``claim_run_dir(out_dir, resume=..., force=...)`` takes an exclusive ``flock`` on ``out_dir/.lock``
(held until ``release()`` or the process ends: the kernel drops it on any exit, kill -9 included,
so a crashed run never leaves a stale lock), then removes the temp files killed writers left, then
checks what the directory holds:

  - nothing of a run                -> a new run starts
  - a run, and resume=True          -> it is continued
  - a run, and force=True           -> its files are deleted, a new run starts
  - a run, neither                  -> RunDirTaken: say --resume or --force, or pick another dir

Claims are re-entrant within a process (the CLI claims the directory before writing the tokenizer,
then the Trainer claims it again): a second claim on a directory this process already holds only
counts up, and the lock goes when the last claim is released.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from ..errors import UserError
from .files import clean_temp_files

LOCK_NAME = ".lock"
# what a run writes into its directory; any of them means "this directory holds a run"
RUN_FILES = ("ckpt.pt", "last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "loss.png")


class RunDirBusy(UserError):
    """Another live process owns the run directory."""


class RunDirTaken(UserError):
    """The run directory holds an earlier run and neither resume nor force was asked for."""


_held: dict[str, "RunDirLock"] = {}  # realpath -> this process's lock on it


class RunDirLock:
    def __init__(self, directory: Path, fd: int):
        self.directory, self._fd, self._claims = directory, fd, 1

    def release(self) -> None:
        self._claims -= 1
        if self._claims == 0:
            _held.pop(os.path.realpath(self.directory), None)
            os.close(self._fd)  # closing the descriptor drops the flock


def _lock(directory: Path) -> RunDirLock:
    key = os.path.realpath(directory)
    if key in _held:
        _held[key]._claims += 1
        return _held[key]
    try:
        import fcntl
    except ImportError:  # no flock on this platform (Windows): runs are not protected from each other
        fcntl = None
    fd = os.open(directory / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o666)
    if fcntl is not None:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(fd, 200, 0).decode(errors="replace").split()
            os.close(fd)
            pid = owner[0] if owner else "unknown"
            raise RunDirBusy(f"{directory} is in use by another run (PID {pid}); wait for it to finish or stop "
                             f"it (kill {pid}), or give this run another --out") from None
    # the lock file's text is for the message above; the lock itself is the flock
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode(), 0)
    lock = _held[key] = RunDirLock(directory, fd)
    return lock


def run_files(directory: Path) -> list[str]:
    return [name for name in RUN_FILES if (directory / name).exists()]


def claim_run_dir(out_dir: str | os.PathLike, *, resume: bool = False, force: bool = False) -> RunDirLock:
    """Lock ``out_dir`` for this run (creating it), clean left-over temp files, refuse to clobber a run."""
    directory = Path(out_dir)
    if directory.exists() and not directory.is_dir():
        raise RunDirTaken(f"--out {directory} is a file, not a directory; give a directory for the run's files")
    directory.mkdir(parents=True, exist_ok=True)
    lock = _lock(directory)
    try:
        if lock._claims == 1:  # first claim of this process: nobody else writes here now
            clean_temp_files(directory)
        found = run_files(directory)
        if found and not resume:
            if not force:
                raise RunDirTaken(f"{directory} already holds a run ({', '.join(found)}); continue it with "
                                  f"--resume, replace it with --force, or give this run another --out")
            for name in found:
                (directory / name).unlink()
    except BaseException:
        lock.release()
        raise
    return lock
