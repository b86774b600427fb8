"""Checkpoints: written atomically, loaded safely, and complete enough to resume a run exactly.

A checkpoint is a dict of tensors and plain Python values only:

    {"format": 1, "step": int, "best_val_loss": float,
     "model": state_dict, "optimizer": state_dict,
     "model_config": dict, "model_class": str, "train_config": dict,
     "rng": {"torch": ByteTensor, "cuda": [ByteTensor...], "python": list, "numpy": {...}, "data": ByteTensor},
     "extra": dict}

so ``torch.load(path, weights_only=True)`` can read it. weights_only refuses any pickle that would
import or call arbitrary code (a crafted ``__reduce__`` calling ``os.system`` raises instead of
running), which matters because checkpoints get shared and downloaded.

Writes go to a temporary file in the same directory, are fsynced, then ``os.replace``d over the
target: a crash mid-write leaves the old checkpoint intact, never a truncated one.
"""

from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch

FORMAT = 1


class CheckpointError(RuntimeError):
    pass


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


# ---------------------------------------------------------------------------- save / load
def save_checkpoint(path: str | os.PathLike, ckpt: dict) -> Path:
    """Write ``ckpt`` to ``path`` atomically (temp file in the same dir + fsync + os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # same directory: os.replace is only atomic within one filesystem
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        # never leave half-written temp files behind, even on Ctrl-C
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def load_checkpoint(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """Load a checkpoint with weights_only=True: tensors and plain containers only, no code runs.

    mmap=True maps the tensors' storage instead of reading it (cheap when only metadata is needed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as e:  # pickle.UnpicklingError for disallowed globals, RuntimeError for corrupt zips
        raise CheckpointError(f"refusing to load {path}: it is not a plain-tensor checkpoint "
                              f"(torch.load weights_only=True failed: {e})") from e
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a babygpt_ext checkpoint (no 'model' entry)")
    return ckpt


def newest_checkpoint(out_dir: str | os.PathLike, names=("ckpt.pt", "last.pt")) -> Path | None:
    """The checkpoint in out_dir with the highest step (ckpt.pt from evals, last.pt from a crash)."""
    best, best_step = None, -1
    for name in names:
        p = Path(out_dir) / name
        if p.is_file():
            step = int(load_checkpoint(p, mmap=True)["step"])
            if step > best_step:
                best, best_step = p, step
    return best


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
