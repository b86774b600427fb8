"""Checkpoint files: safe loading (weights_only refuses code), atomic writes, RNG round trips."""

import os
import pickle
import random

import numpy as np
import pytest
import torch

from babygpt_ext.train import (CheckpointError, capture_rng, load_checkpoint, newest_checkpoint, restore_rng,
                               save_checkpoint, strip_wrappers)
from babygpt_ext.train import checkpoint as ckpt_mod


class RunsCode:
    """Unpickling this calls os.system(cmd): what a malicious 'checkpoint' would do."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "step": 1, "payload": RunsCode(f"touch {marker}")}, evil)

    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    assert not marker.exists()

    # the payload is live: an unsafe load *does* run it (so the check above can fail)
    torch.load(evil, weights_only=False)
    assert marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_plain_pickle_file_is_refused(tmp_path):
    p = tmp_path / "plain.pkl"
    with open(p, "wb") as f:  # not even a torch zip: a bare pickle stream with a global
        pickle.dump({"model": RunsCode("true")}, f)
    with pytest.raises(CheckpointError):
        load_checkpoint(p)


def test_not_a_babygpt_checkpoint(tmp_path):
    p = save_checkpoint(tmp_path / "x.pt", {"weights": torch.ones(1)})
    with pytest.raises(CheckpointError, match="no 'model' entry"):
        load_checkpoint(p)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


def test_save_roundtrip_with_rng_and_plain_configs(tmp_path):
    ck = {"model": {"w": torch.randn(3, 4)}, "step": 7, "model_config": {"n_embd": 16, "bias": True, "backend": None},
          "rng": capture_rng(torch.Generator().manual_seed(5)), "best_val_loss": float("inf")}
    back = load_checkpoint(save_checkpoint(tmp_path / "c.pt", ck))
    assert torch.equal(back["model"]["w"], ck["model"]["w"]) and back["model_config"] == ck["model_config"]
    assert back["step"] == 7 and back["best_val_loss"] == float("inf")


def test_failed_write_keeps_the_old_checkpoint_and_no_temp_files(tmp_path, monkeypatch):
    path = save_checkpoint(tmp_path / "ckpt.pt", {"model": {"w": torch.zeros(2)}, "step": 1})

    def broken_save(obj, f):
        with open(f, "wb") as out:
            out.write(b"half a checkpoint")
        raise KeyboardInterrupt  # Ctrl-C in the middle of writing

    monkeypatch.setattr(ckpt_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, {"model": {"w": torch.ones(2)}, "step": 2})
    monkeypatch.undo()
    assert load_checkpoint(path)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_rng_capture_restore_roundtrip():
    gen = torch.Generator().manual_seed(3)
    torch.randn(3), random.random(), np.random.rand(), torch.rand(2, generator=gen)  # advance all four
    state = capture_rng(gen)

    def draw():
        return (torch.randn(4).tolist(), random.random(), np.random.rand(3).tolist(),
                torch.rand(4, generator=gen).tolist())

    first = draw()
    draw()  # move on
    restore_rng(state, gen)
    assert draw() == first


def test_rng_state_survives_weights_only_load(tmp_path):
    gen = torch.Generator().manual_seed(11)
    state = capture_rng(gen)
    expect = (torch.rand(3).tolist(), random.random(), np.random.rand(), torch.rand(3, generator=gen).tolist())
    back = load_checkpoint(save_checkpoint(tmp_path / "r.pt", {"model": {}, "rng": state}))
    gen2 = torch.Generator()
    restore_rng(back["rng"], gen2)
    assert (torch.rand(3).tolist(), random.random(), np.random.rand(), torch.rand(3, generator=gen2).tolist()) == expect


def test_restore_without_data_state_is_an_error():
    state = capture_rng(None)
    with pytest.raises(CheckpointError, match="data-sampling generator"):
        restore_rng(state, torch.Generator())


def test_newest_checkpoint_picks_highest_step(tmp_path):
    assert newest_checkpoint(tmp_path) is None
    save_checkpoint(tmp_path / "ckpt.pt", {"model": {}, "step": 100})
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "step": 42})
    assert newest_checkpoint(tmp_path).name == "ckpt.pt"
    save_checkpoint(tmp_path / "last.pt", {"model": {}, "step": 137})
    assert newest_checkpoint(tmp_path).name == "last.pt"


def test_strip_wrappers_removes_compile_and_ddp_prefixes():
    sd = {"_orig_mod.a.weight": 1, "module._orig_mod.b": 2, "c": 3}
    assert strip_wrappers(sd) == {"a.weight": 1, "b": 2, "c": 3}
