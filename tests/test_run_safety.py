"""Run directories under faults: one owner at a time, no silent replacement, metrics that survive a
torn write and agree with the checkpoints, a NaN that stops the run, Ctrl-C that waits for the step,
resume that refuses to become another run. Tiny GPT, one thread (helpers from test_train).

The heavier version (kill -9 at many moments, disk-full on a tmpfs, corrupt files, two concurrent
CLI runs) is tests/fault/run_faults.py, run by hand: it takes minutes.
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from babygpt_ext.errors import UserError
from babygpt_ext.train import (CheckpointError, ResumeConflict, RunDirBusy, RunDirTaken, RunInterrupted, Trainer,
                               TrainingDiverged, claim_run_dir, load_checkpoint, load_newest, lr_for_config)
from babygpt_ext.train import trainer as trainer_mod
from test_train import KillAt, one_thread, quiet_cfg, rows, tiny_gpt, token_data  # noqa: F401 (fixture)

ROOT = Path(__file__).resolve().parents[1]


def fit(out, hooks=(), **cfg):
    t = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(**cfg), out, hooks=hooks)
    return t, t.fit()


def same_rows(a, b, keys=("step", "train_loss", "val_loss", "lr", "grad_norm")):
    return [[r[k] for k in keys] for r in a] == [[r[k] for k in keys] for r in b]


# ------------------------------------------------------------------------------------ ownership
HOLDER = textwrap.dedent("""
    import sys, time
    from babygpt_ext.train import claim_run_dir
    claim_run_dir(sys.argv[1])
    print("ready", flush=True)
    time.sleep(60)
""")


def test_a_second_process_is_refused_with_the_owner_pid_until_the_owner_dies(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "ready"
        with pytest.raises(RunDirBusy, match=f"PID {holder.pid}") as e:
            claim_run_dir(tmp_path)
        assert "another --out" in str(e.value) and "\n" not in str(e.value)
        with pytest.raises(RunDirBusy):  # a Trainer is refused the same way, even to resume
            Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(resume=True), tmp_path)
    finally:
        holder.kill()  # SIGKILL: no cleanup code runs, the kernel drops the lock
        holder.wait()
    claim_run_dir(tmp_path).release()


def flock_is_free(directory) -> bool:
    """Try the lock through a descriptor of its own: flock conflicts between open files, even in one process."""
    import fcntl
    fd = os.open(directory / ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def test_claims_are_reentrant_in_one_process(tmp_path):
    a = claim_run_dir(tmp_path)
    b = claim_run_dir(tmp_path)  # the CLI claims, then its Trainer does
    b.release()
    assert not flock_is_free(tmp_path)  # still held by `a`
    a.release()
    assert flock_is_free(tmp_path)


def test_a_new_run_into_a_run_directory_needs_resume_or_force(tmp_path):
    fit(tmp_path, max_iters=5)
    with pytest.raises(RunDirTaken, match="--resume.*--force"):
        Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(), tmp_path)
    (tmp_path / "last.pt").write_bytes(b"stale")  # every file of the old run goes with --force
    t = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=3), tmp_path, force=True)
    assert not (tmp_path / "ckpt.pt").exists() and not (tmp_path / "last.pt").exists()
    t.fit()
    assert [r["step"] for r in rows(tmp_path)] == [0, 1, 2, 3]
    with pytest.raises(RunDirTaken, match="is a file"):
        claim_run_dir(tmp_path / "metrics.csv")


def test_left_over_temp_files_are_removed_on_start(tmp_path):
    for name in (".ckpt.pt.abc123.tmp", ".loss.png.x.tmp", ".tokenizer.json.q.tmp"):
        (tmp_path / name).write_bytes(b"x" * 1000)
    (tmp_path / "notes.tmp").write_text("the user's")  # not hidden: not ours
    fit(tmp_path, max_iters=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == ["notes.tmp"]


# ------------------------------------------------------------------------------------ metrics
def test_torn_last_metrics_line_is_dropped_and_the_run_resumes_exactly(tmp_path, capsys):
    _, _ = fit(tmp_path / "full", max_iters=12, eval_interval=4)
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(run, hooks=[KillAt(7)], max_iters=12, eval_interval=4)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 8, "train_loss": 3.1')  # a write cut off by a full disk
    (run / "last.pt").unlink()  # and the crash checkpoint never made it: resume from ckpt.pt (step 4)
    t = Trainer(tiny_gpt(seed=5), token_data(), token_data(seed=2), quiet_cfg(max_iters=12, eval_interval=4,
                                                                               resume=True), run)
    assert t.step == 4
    t.fit()
    err = capsys.readouterr().err
    assert "dropped 1 incomplete line" in err and "steps 5..7" in err
    assert same_rows(rows(run), rows(tmp_path / "full"))


def test_kill_between_checkpoint_and_its_metrics_row_leaves_no_gap(tmp_path, monkeypatch):
    fit(tmp_path / "full", max_iters=12, eval_interval=4)
    run = tmp_path / "run"
    real_log = trainer_mod.MetricsWriter.log

    def dies_at_step_8(self, row):
        if row.get("step") == 8:
            raise SystemExit("killed after ckpt.pt of step 8 was written, before its metrics row")
        return real_log(self, row)

    monkeypatch.setattr(trainer_mod.MetricsWriter, "log", dies_at_step_8)
    with pytest.raises(SystemExit):
        fit(run, max_iters=12, eval_interval=4)
    monkeypatch.undo()
    assert [r["step"] for r in rows(run)][-1] == 7 and load_checkpoint(run / "ckpt.pt")["step"] == 8
    (run / "last.pt").unlink(missing_ok=True)
    Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=12, eval_interval=4, resume=True),
            run).fit()
    assert same_rows(rows(run), rows(tmp_path / "full"))


def test_kill_between_ckpt_and_best_is_repaired_on_resume(tmp_path, monkeypatch, capsys):
    run = tmp_path / "run"
    real_copy = trainer_mod.atomic_copy
    calls = []

    def dies_on_second_best(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise SystemExit("killed after ckpt.pt, before best.pt")
        return real_copy(src, dst)

    monkeypatch.setattr(trainer_mod, "atomic_copy", dies_on_second_best)
    with pytest.raises(SystemExit):
        fit(run, max_iters=12, eval_interval=4)
    monkeypatch.undo()
    ck = load_checkpoint(run / "ckpt.pt")
    assert ck["step"] == ck["best_step"] == 8 and load_checkpoint(run / "best.pt")["step"] == 4  # disagree
    t = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=12, eval_interval=4, resume=True),
                run)
    assert "rebuilt best.pt" in capsys.readouterr().err
    best = load_checkpoint(run / "best.pt")
    assert best["step"] == 8 and best["val_loss"] == ck["best_val_loss"]
    t.fit()
    best, last = load_checkpoint(run / "best.pt"), load_checkpoint(run / "ckpt.pt")
    assert best["step"] == last["best_step"] and best["val_loss"] == last["best_val_loss"]


def test_a_superseded_last_pt_is_removed(tmp_path):
    run = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        fit(run, hooks=[KillAt(6)], max_iters=12, eval_interval=4)
    assert load_newest(run)[0].name == "last.pt"
    Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=12, eval_interval=4, resume=True),
            run).fit()
    assert not (run / "last.pt").exists() and load_checkpoint(run / "ckpt.pt")["step"] == 12


def test_a_corrupt_resume_candidate_is_named_with_the_way_out(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, hooks=[KillAt(6)], max_iters=12, eval_interval=4)
    raw = bytearray((tmp_path / "last.pt").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    (tmp_path / "last.pt").write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"last.pt.*move it away to resume from ckpt.pt"):
        Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=12, eval_interval=4, resume=True),
                tmp_path)


# ------------------------------------------------------------------------------------ NaN
def poison_weights_at(step):
    def hook(trainer, row):
        if trainer.step == step:
            with torch.no_grad():
                next(trainer.raw_model.parameters()).view(-1)[0] = float("inf")
    return hook


def test_a_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"step 7: the training loss is nan.*ckpt.pt \(step 5\)") as e:
        fit(tmp_path, hooks=[poison_weights_at(6)], max_iters=10, eval_interval=5)
    assert isinstance(e.value, UserError) and "\n" not in str(e.value)
    assert load_checkpoint(tmp_path / "ckpt.pt")["step"] == 5  # finite, untouched
    assert not (tmp_path / "last.pt").exists()
    assert [r["step"] for r in rows(tmp_path)] == list(range(7))  # nothing logged for the bad step


def test_a_diverging_learning_rate_stops_with_an_error(tmp_path):
    with pytest.raises(TrainingDiverged, match="diverged"):
        fit(tmp_path, max_iters=200, eval_interval=50, lr=1e4, min_lr=1e4, warmup_iters=0, grad_clip=0.0)
    for name in ("ckpt.pt", "best.pt"):
        if (tmp_path / name).exists():
            load_checkpoint(tmp_path / name)  # whatever was kept is finite


# ------------------------------------------------------------------------------------ signals
def signal_at(step, times=1, sig=signal.SIGINT):
    def hook(trainer, row):
        if trainer.step == step:
            for _ in range(times):
                os.kill(os.getpid(), sig)
    return hook


def test_sigint_in_the_middle_of_an_optimizer_step_waits_for_the_step(tmp_path, monkeypatch):
    before = signal.getsignal(signal.SIGINT)  # SIG_IGN, not Python's handler, in a suite run in the background
    fit(tmp_path / "full", max_iters=10, eval_interval=5)
    run = tmp_path / "run"
    t = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=10, eval_interval=5), run)
    real_step = t.optimizer.step

    def step_with_ctrl_c(*a, **kw):
        if t.step == 6:  # the 7th update: Ctrl-C arrives while the weights are being changed
            os.kill(os.getpid(), signal.SIGINT)
        return real_step(*a, **kw)

    t.optimizer.step = step_with_ctrl_c
    with pytest.raises(RunInterrupted) as e:
        t.fit()
    assert e.value.exit_code == 130
    assert load_checkpoint(run / "last.pt")["step"] == 7  # the step finished, then the run stopped
    Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=10, eval_interval=5, resume=True),
            run).fit()
    assert same_rows(rows(run), rows(tmp_path / "full"))
    assert signal.getsignal(signal.SIGINT) is before  # handlers restored


def test_sigterm_stops_cleanly_and_a_second_signal_stops_at_once(tmp_path):
    with pytest.raises(RunInterrupted) as e:
        fit(tmp_path / "a", hooks=[signal_at(3, sig=signal.SIGTERM)], max_iters=10)
    assert e.value.exit_code == 143 and load_checkpoint(tmp_path / "a" / "last.pt")["step"] == 4  # seen after step 4
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path / "b", hooks=[signal_at(3, times=2)], max_iters=10)
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 3


# ------------------------------------------------------------------------------------ resume rules
def test_resume_refuses_settings_that_define_the_run(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, hooks=[KillAt(4)], max_iters=10)
    for bad in (dict(lr=1e-2, min_lr=1e-3), dict(batch_size=8), dict(seed=1), dict(eval_iters=3)):
        with pytest.raises(ResumeConflict, match=next(iter(bad))) as e:
            Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=10, resume=True, **bad),
                    tmp_path)
        assert "\n" not in str(e.value)
    with pytest.raises(ResumeConflict, match="train tokens differ"):
        Trainer(tiny_gpt(), token_data(seed=9), token_data(seed=2), quiet_cfg(max_iters=10, resume=True), tmp_path)


def test_resume_applies_a_longer_run_with_the_checkpoints_schedule(tmp_path, capsys):
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, hooks=[KillAt(4)], max_iters=10)
    torch.set_num_threads(2)
    t = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=14, resume=True), tmp_path)
    err = capsys.readouterr().err
    assert "max_iters 14 (was 10)" in err and "cosine to step 10" in err
    assert "1 torch threads, this process uses 2" in err and "not be bit-exact" in err
    torch.set_num_threads(1)
    assert t.cfg.decay_iters == 10
    t.fit()
    lrs = [r["lr"] for r in rows(tmp_path)[1:]]
    assert lrs[:10] == pytest.approx([lr_for_config(s, quiet_cfg(max_iters=10)) for s in range(10)])
    assert lrs[10:] == pytest.approx([quiet_cfg().min_lr] * 4)


def test_summary_tokens_per_s_is_the_run_average(tmp_path):
    _, s = fit(tmp_path, max_iters=6)
    rates = [r["tokens_per_s"] for r in rows(tmp_path)[1:]]
    harmonic = len(rates) / sum(1 / r for r in rates)  # same tokens every step: total tokens / total time
    assert s["tokens_per_s"] == pytest.approx(harmonic, rel=1e-9)


def test_metrics_rows_carried_by_checkpoints_are_rows_since_the_previous_one(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        fit(tmp_path, hooks=[KillAt(7)], max_iters=12, eval_interval=4)
    assert [r["step"] for r in load_checkpoint(tmp_path / "ckpt.pt")["metrics_rows"]] == [0, 1, 2, 3, 4]
    assert [r["step"] for r in load_checkpoint(tmp_path / "last.pt")["metrics_rows"]] == [5, 6, 7]
    with open(tmp_path / "metrics.jsonl") as f:
        on_disk = [json.loads(line) for line in f]
    assert on_disk[-3:] == load_checkpoint(tmp_path / "last.pt")["metrics_rows"]
