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


# ------------------------------------------------------------------------------------ integrity
def small_ckpt(**kw):
    g = torch.Generator().manual_seed(0)
    return {"model": {"w": torch.randn(64, 32, generator=g), "b": torch.zeros(32)}, "step": 3,
            "optimizer": {"state": {0: {"exp_avg": torch.ones(4), "step": torch.tensor(3.0)}}, "param_groups": []},
            **kw}


def tensor_data_offset(path, member_suffix):
    """Byte offset in the file where the stored bytes of the zip member ending in member_suffix begin."""
    import struct
    import zipfile
    raw = path.read_bytes()
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if i.filename.endswith(member_suffix))
    h = info.header_offset
    name_len, extra_len = struct.unpack("<HH", raw[h + 26:h + 30])
    return h + 30 + name_len + extra_len, info.file_size


def test_flipped_byte_in_tensor_data_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", small_ckpt())
    start, size = tensor_data_offset(path, "data/0")
    raw = bytearray(path.read_bytes())
    raw[start + size // 2] ^= 0x01  # one bit of one weight
    path.write_bytes(bytes(raw))
    assert torch.load(path, weights_only=True)["step"] == 3  # torch.load alone takes it
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


def test_edited_checkpoint_with_valid_zip_is_refused_by_its_sha256(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", small_ckpt())
    ck = torch.load(path, weights_only=True)
    ck["model"]["w"][0, 0] += 1.0  # re-saved by plain torch.save: CRCs valid, digest stale
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="do not match its sha256"):
        load_checkpoint(path)
    ck["model"]["w"][0, 0] -= 1.0
    ck["step"] = 4  # a plain value is covered too
    torch.save(ck, path)
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(path)


@pytest.mark.parametrize("keep", [0, 10, 100, 0.5, 0.99])
def test_truncated_checkpoint_is_refused(tmp_path, keep):
    path = save_checkpoint(tmp_path / "c.pt", small_ckpt())
    raw = path.read_bytes()
    path.write_bytes(raw[:int(keep * len(raw)) if isinstance(keep, float) else keep])
    with pytest.raises(CheckpointError, match="refusing to load") as e:
        load_checkpoint(path)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("where", ["model", "optimizer"])
def test_non_finite_weights_or_moments_are_refused(tmp_path, where):
    ck = small_ckpt()
    if where == "model":
        ck["model"]["w"][3, 4] = float("nan")
    else:
        ck["optimizer"]["state"][0]["exp_avg"][1] = float("inf")
    path = save_checkpoint(tmp_path / "c.pt", ck)  # the digest is valid: the contents are what is wrong
    with pytest.raises(CheckpointError, match="NaN/Inf") as e:
        load_checkpoint(path)
    assert ("model.w" if where == "model" else "optimizer.state.0.exp_avg") in str(e.value)


def test_checkpoint_records_versions_and_digest(tmp_path):
    back = load_checkpoint(save_checkpoint(tmp_path / "c.pt", small_ckpt()))
    assert back["format"] == ckpt_mod.FORMAT and len(back["sha256"]) == 64
    assert back["versions"]["torch"] == str(torch.__version__) and "babygpt_ext" in back["versions"]
    assert ckpt_mod.content_digest(back) == back["sha256"]
    other = small_ckpt()
    other["model"]["b"] = other["model"]["b"].to(torch.float64)  # same values, another dtype
    assert ckpt_mod.content_digest(other) != ckpt_mod.content_digest(small_ckpt())


def test_format_1_checkpoint_loads_with_a_warning(tmp_path):
    path = tmp_path / "old.pt"
    torch.save({"format": 1, "model": {"w": torch.ones(2)}, "step": 5}, path)
    with pytest.warns(UserWarning, match="no checksum"):
        assert load_checkpoint(path)["step"] == 5


def test_nanogpt_checkpoint_gets_a_hint(tmp_path):
    path = tmp_path / "nano.pt"
    torch.save({"model_args": {"n_layer": 2}, "state_dict": {}, "iter_num": 1}, path)
    with pytest.raises(CheckpointError, match="from_nanogpt_state_dict"):
        load_checkpoint(path)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        path = save_checkpoint(tmp_path / "c.pt", small_ckpt())
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == mode
