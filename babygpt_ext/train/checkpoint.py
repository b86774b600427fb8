"""Checkpoints: written atomically, loaded safely, proven intact, complete enough to resume a run exactly.

A checkpoint is a dict of tensors and plain Python values only:

    {"format": 2, "step": int, "best_val_loss": float, "best_step": int,
     "model": state_dict, "optimizer": state_dict,
     "model_config": dict, "model_class": str, "train_config": dict, "num_threads": int,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor...], "python": list, "numpy": {...}, "data": ByteTensor},
     "metrics_rows": [row...], "data_fingerprint": {...},
     "extra": dict (the CLI's run settings, tokenizer file and its sha256),
     "versions": {"torch": str, "babygpt_ext": str, "python": str, "numpy": str},
     "sha256": str}

so ``torch.load(path, weights_only=True)`` can read it. weights_only refuses any pickle that would
import or call arbitrary code (a crafted ``__reduce__`` calling ``os.system`` raises instead of
running), which matters because checkpoints get shared and downloaded.

Integrity, checked on every load: "sha256" is the digest of every other entry (tensor bytes with
their dtypes, shapes and names; config values; versions), and the zip members' CRC32s are
verified too (torch.load checks neither). A flipped byte or a truncated file is refused with one
line; so are non-finite weights or optimizer moments, which would only train NaN further.

Writes are atomic (files.atomic_write): a crash mid-write leaves the old checkpoint intact.
"""

from __future__ import annotations

import hashlib
import os
import platform
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .files import atomic_write

FORMAT = 2


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be used: corrupt, unsafe, foreign, non-finite, or not writable."""


# ---------------------------------------------------------------------------- RNG states
def capture_rng(data_generator: torch.Generator | None = None) -> dict:
    """Every random state a training step consumes, as tensors and lists (weights_only-safe)."""
    version, mt, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),                       # ByteTensor
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": [version, list(mt), gauss],                 # tuple -> list of ints
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
    }
    if data_generator is not None:
        state["data"] = data_generator.get_state()
    return state


def restore_rng(state: dict, data_generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) != torch.cuda.device_count():
            # a different GPU count: restore what we can (exactness across machines is not promised)
            for i, s in enumerate(state["cuda"][: torch.cuda.device_count()]):
                torch.cuda.set_rng_state(s, i)
        else:
            torch.cuda.set_rng_state_all(state["cuda"])
    version, mt, gauss = state["python"]
    random.setstate((version, tuple(mt), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    if data_generator is not None:
        if "data" not in state:
            raise CheckpointError("checkpoint has no data-sampling generator state to resume from")
        data_generator.set_state(state["data"])


# ---------------------------------------------------------------------------- integrity
def _feed(h, obj, where: str) -> None:
    """Hash ``obj`` canonically: dict keys sorted, each value tagged with its type (and tensors with
    dtype and shape), so equal contents give equal digests and any changed byte changes it."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{where}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(f"D{where}|{len(obj)}|".encode())
        for k in sorted(obj, key=lambda k: (type(k).__name__, str(k))):
            h.update(f"K{type(k).__name__}:{k}|".encode())
            _feed(h, obj[k], f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        h.update(f"L{where}|{len(obj)}|".encode())
        for i, v in enumerate(obj):
            _feed(h, v, f"{where}[{i}]")
    else:  # None, bool, int, float (repr keeps inf/nan and every bit), str
        h.update(f"V{type(obj).__name__}:{obj!r}|".encode())


def content_digest(ckpt: dict) -> str:
    """sha256 of every entry but "sha256" itself."""
    h = hashlib.sha256()
    _feed(h, {k: v for k, v in ckpt.items() if k != "sha256"}, "")
    return h.hexdigest()


def versions() -> dict:
    from .. import __version__
    return {"torch": str(torch.__version__), "babygpt_ext": __version__, "python": platform.python_version(),
            "numpy": np.__version__}


def nonfinite_entries(ckpt: dict) -> list[str]:
    """Names of the model weights and optimizer moments holding NaN or Inf."""
    bad = [f"model.{k}" for k, v in ckpt.get("model", {}).items()
           if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    for pid, state in (ckpt.get("optimizer") or {}).get("state", {}).items():
        bad += [f"optimizer.state.{pid}.{k}" for k, v in state.items()
                if isinstance(v, torch.Tensor) and v.is_floating_point() and not torch.isfinite(v).all()]
    return bad


# ---------------------------------------------------------------------------- save / load
def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write ``ckpt`` (plus "format", "versions" and its "sha256") to ``path`` atomically.

    torch.save gets the temp file's name, not a Python file object: it then writes in C++, so a
    Ctrl-C is delivered after it returns (as KeyboardInterrupt, not as torch's "enforce fail")."""
    path = Path(path)
    ckpt = {**ckpt, "format": FORMAT, "versions": versions()}
    ckpt["sha256"] = content_digest(ckpt)
    try:
        return atomic_write(path, lambda tmp: torch.save(ckpt, str(tmp)), mode=None)
    except RuntimeError as e:  # torch's writer reports a full disk as "file write failed"
        free = shutil.disk_usage(path.parent).free
        raise CheckpointError(f"could not write {path} ({str(e).splitlines()[0]}; {free:,} bytes free on its "
                              f"filesystem); the previous {path.name} is intact") from e


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with weights_only=True (tensors and plain containers only, no code runs),
    then prove it intact: zip CRCs, the content sha256, finite weights. Any failure is a one-line
    CheckpointError naming the file.

    mmap=True maps the tensors' storage instead of reading it into memory."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        with zipfile.ZipFile(path) as z:
            broken = z.testzip()
    except Exception as e:  # BadZipFile, EOFError; a damaged directory can also give UnicodeDecodeError etc.
        raise CheckpointError(f"refusing to load {path}: not a complete checkpoint file "
                              f"(truncated or corrupt: {type(e).__name__}: {e})") from e
    if broken is not None:
        member = broken.split("/", 1)[-1]  # torch names the archive's top folder after the (temp) file
        raise CheckpointError(f"refusing to load {path}: it is corrupt (CRC mismatch in its {member}); "
                              f"restore it from a copy or resume from an earlier checkpoint")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # pickle.UnpicklingError for disallowed globals, RuntimeError for corrupt zips
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()] or [type(e).__name__]
        first = next((ln for ln in lines if "WeightsUnpickler error" in ln), lines[0])[:200]
        raise CheckpointError(f"refusing to load {path}: it is not a plain-tensor checkpoint "
                              f"(torch.load weights_only=True failed: {first})") from e
    if isinstance(ckpt, dict) and "model_args" in ckpt and "model_class" not in ckpt:
        raise CheckpointError(f"{path} is a nanoGPT checkpoint, not one written by babygpt train; load it in Python "
                              "with GPT.from_nanogpt_state_dict(ckpt['model'], GPTConfig(**ckpt['model_args']))")
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a babygpt_ext checkpoint (no 'model' entry)")
    stored = ckpt.get("sha256")
    if stored is None:
        if ckpt.get("format", 1) >= 2:
            raise CheckpointError(f"refusing to load {path}: its sha256 entry is missing")
        # format 1 (written before checkpoints carried a digest): nothing to check it against
        import warnings
        warnings.warn(f"{path} has no checksum (format 1); its contents cannot be verified", stacklevel=2)
    elif content_digest(ckpt) != stored:
        raise CheckpointError(f"refusing to load {path}: its contents do not match its sha256 (the file was "
                              f"corrupted or edited); restore it from a copy or resume from an earlier checkpoint")
    bad = nonfinite_entries(ckpt)
    if bad:
        raise CheckpointError(f"refusing to load {path}: {len(bad)} tensors hold NaN/Inf ({', '.join(bad[:3])}"
                              f"{', ...' if len(bad) > 3 else ''}); the run had diverged, use an earlier checkpoint")
    return ckpt


RESUMABLE = ("ckpt.pt", "last.pt")  # eval checkpoints, and the crash checkpoint of an interrupted run


def load_newest(out_dir: str | os.PathLike, map_location="cpu") -> tuple[Path | None, dict | None]:
    """(path, checkpoint) of the highest step among out_dir's ckpt.pt and last.pt, or (None, None).

    A corrupt candidate is an error, not skipped: resuming from an older one would quietly drop
    steps, so the message names the file and what resuming without it means."""
    found = [Path(out_dir) / name for name in RESUMABLE if (Path(out_dir) / name).is_file()]
    best, best_ckpt = None, None
    for p in found:
        try:
            ckpt = load_checkpoint(p, map_location=map_location)
        except CheckpointError as e:
            others = [q.name for q in found if q != p]
            fix = f"move it away to resume from {others[0]} instead" if others else "no other checkpoint is left"
            raise CheckpointError(f"{e} ({fix})") from e
        if best_ckpt is None or int(ckpt["step"]) > int(best_ckpt["step"]):
            best, best_ckpt = p, ckpt
    return best, best_ckpt


def newest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The checkpoint in out_dir with the highest step (ckpt.pt from evals, last.pt from a crash)."""
    return load_newest(out_dir)[0]


def strip_wrappers(state_dict: dict) -> dict:
    """Drop the key prefixes torch.compile ('_orig_mod.') and DDP ('module.') add."""
    out = {}
    for k, v in state_dict.items():
        stripped = True
        while stripped:  # any nesting order: DDP(compile(m)) gives "module._orig_mod."
            stripped = False
            for prefix in ("_orig_mod.", "module."):
                if k.startswith(prefix):
                    k, stripped = k[len(prefix):], True
        out[k] = v
    return out
