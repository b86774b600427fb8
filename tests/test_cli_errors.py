"""Every expected CLI error is one line on stderr, no traceback, and the right exit status (2 usage,
130 Ctrl-C, 1 otherwise); --debug / BABYGPT_DEBUG=1 add the traceback. The table runs in-process
through main(argv); a few cases run as real processes (Ctrl-C, a closed pipe, the entry point)."""

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from babygpt_ext.cli import main

ROOT = Path(__file__).resolve().parents[1]
CORPUS = "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer.\n" * 60


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # what a malicious checkpoint does: call a function while unpickling
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def d(tmp_path_factory):
    """A folder of good, bad and foreign inputs, and a tiny trained run in d/run."""
    d = tmp_path_factory.mktemp("cli_errors")
    (d / "corpus.txt").write_text(CORPUS, encoding="utf-8")
    assert main(["train", "--preset", "babygpt", "--data", str(d / "corpus.txt"), "--max-iters", "2",
                 "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2", "--out", str(d / "run"),
                 "--no-progress"]) == 0
    (d / "binary.bin").write_bytes(bytes(range(256)) * 4)  # first non-UTF-8 byte: 0x80 at offset 128
    (d / "latin1.txt").write_bytes("naïve café".encode("latin-1"))  # 0xef at offset 2
    (d / "empty_dir").mkdir()
    (d / "a_file").write_text("not a directory")
    (d / "garbage.pt").write_bytes(os.urandom(2000))
    ckpt = (d / "run" / "ckpt.pt").read_bytes()
    (d / "truncated.pt").write_bytes(ckpt[: len(ckpt) // 2])
    torch.save({"model": _RunsCode(d / "pwned")}, d / "evil.pt")
    torch.save([1, 2, 3], d / "list.pt")
    torch.save({"step": 3}, d / "no_model.pt")
    torch.save({"model": {"transformer.wte.weight": torch.zeros(4, 4)}, "optimizer": {}, "iter_num": 5,
                "best_val_loss": 1.0, "config": {"dataset": "shakespeare_char"},
                "model_args": dict(n_layer=1, n_head=1, n_embd=4, block_size=4, bias=False, vocab_size=4, dropout=0.0)},
               d / "nanogpt.pt")
    (d / "tok_foreign.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE"}}))
    (d / "tok_kind.json").write_text(json.dumps({"kind": "sentencepiece", "format": 1}))
    (d / "tok_damaged.json").write_text(json.dumps({"kind": "char", "format": 1}))
    (d / "tok_other.json").write_text(json.dumps({"kind": "char", "format": 1, "chars": list("xyz")}))
    return d


LONG_NAME = "x" * 300
S = "sample --ckpt {d}/run/ckpt.pt"
T = "train --data {d}/corpus.txt --preset babygpt --no-progress --out {d}/r_t"

# (argv, exit status, a fragment of the one line)
CASES = [
    # ---- the top level
    ("", 2, "no command given"),
    ("nosuch", 2, "invalid choice: 'nosuch'"),
    ("--nosuch", 2, "unrecognized arguments: --nosuch"),
    ("info --verbose", 2, "unrecognized arguments: --verbose"),
    # ---- train: flags and values
    ("train --batch-size 0", 2, "--batch-size: must be >= 1, got 0"),
    ("train --batch-size two", 2, "--batch-size: expected an integer >= 1, got 'two'"),
    ("train --max-iters 0", 2, "--max-iters: must be >= 1"),
    ("train --lr 0", 2, "--lr: must be > 0"),
    ("train --lr nan", 2, "--lr: must be > 0, got nan"),
    ("train --lr -0.001", 2, "--lr: must be > 0"),
    ("train --min-lr -1", 2, "--min-lr: must be >= 0"),
    ("train --val-fraction 0", 2, "--val-fraction: must be in (0, 1)"),
    ("train --val-fraction 1", 2, "--val-fraction: must be in (0, 1)"),
    ("train --dropout 1", 2, "--dropout: must be in [0, 1)"),
    ("train --block-size 0", 2, "--block-size: must be >= 1"),
    ("train --grad-accum 0", 2, "--grad-accum"),
    ("train --warmup -1", 2, "--warmup: must be >= 0"),
    ("train --eval-interval 0", 2, "--eval-interval"),
    ("train --eval-iters 0", 2, "--eval-iters"),
    ("train --log-interval 0", 2, "--log-interval"),
    ("train --threads 0", 2, "--threads: must be >= 1"),
    ("train --time-budget 0", 2, "--time-budget: must be > 0"),
    ("train --time-budget inf", 2, "--time-budget: must be > 0, got inf"),
    ("train --grad-clip -1", 2, "--grad-clip"),
    ("train --weight-decay -0.1", 2, "--weight-decay"),
    ("train --beta1 1", 2, "--beta1: must be in [0, 1)"),
    ("train --beta2 -0.5", 2, "--beta2"),
    ("train --vocab-size 1", 2, "--vocab-size: must be >= 2"),
    ("train --tokenizer sentencepiece", 2, "invalid choice: 'sentencepiece'"),
    ("train --device tpu", 2, "invalid choice: 'tpu'"),
    ("train --dtype fp64", 2, "invalid choice: 'fp64'"),
    ("train --backend flash", 2, "unknown backend 'flash'"),
    ("train --backend {unusable}", 1, "backend '{unusable}' is not usable here"),
    ("train --preset", 2, "expected one argument"),
    # ---- train: inputs and environment
    (T + " --preset gpt5", 1, "unknown GPT preset 'gpt5'; valid presets: babygpt"),
    (T + " --data {d}/missing.txt", 1, "is not an existing file or folder nor a known corpus"),
    (T + " --data {d}/binary.bin", 1, "binary.bin is not UTF-8 text: byte 0x80 at offset 128"),
    (T + " --data {d}/latin1.txt", 1, "latin1.txt is not UTF-8 text: byte 0xef at offset 2"),
    (T + " --data {d}/empty_dir", 1, "holds no .txt/.md files"),
    (T + " --data " + LONG_NAME, 1, "File name too long"),
    (T + " --out {d}/a_file", 1, "a_file is a file, not a directory"),
    (T + " --out {d}/a_file/run", 1, "a_file"),
    (T + " --device cuda --out {d}/r_cuda", 1, "torch sees no CUDA GPU"),
    (T + " --dtype fp16 --out {d}/r_fp16", 1, "'fp16' needs CUDA"),
    (T + " --resume --out {d}/empty_dir", 1, "no ckpt.pt or last.pt to resume from"),
    (T + " --lr 1e-3 --min-lr 1e-2", 2, "0 <= min_lr <= lr"),
    (T + " --tokenizer bpe --vocab-size 10 --out {d}/r_bpe", 1, "vocab_size must be >= 257"),
    (T + " --block-size 100000 --out {d}/r_block", 1, "needs more than block_size=100000"),
    # ---- sample: flags and values
    (S + " --max-new-tokens 0", 2, "--max-new-tokens: must be >= 1"),
    (S + " --max-new-tokens many", 2, "--max-new-tokens: expected an integer"),
    (S + " --num-samples 0", 2, "--num-samples"),
    (S + " --temperature -1", 2, "--temperature: must be >= 0"),
    (S + " --temperature nan", 2, "--temperature"),
    (S + " --top-k 0", 2, "--top-k: must be >= 1"),
    (S + " --top-p 0", 2, "--top-p: must be in (0, 1]"),
    (S + " --top-p 1.5", 2, "--top-p: must be in (0, 1]"),
    (S + " --device tpu", 2, "invalid choice: 'tpu'"),
    (S + " --backend flash", 2, "unknown backend 'flash'"),
    (S + " --backend {unusable}", 1, "backend '{unusable}' is not usable here"),
    (S + " --device cuda", 1, "torch sees no CUDA GPU"),
    (S + " --stop ''", 2, "--stop needs a non-empty TEXT"),
    (S + " --prompt ''", 2, "--prompt encodes to no tokens"),
    (S + " --prompt 'QQ'", 1, "not in the vocabulary"),
    # ---- sample: missing, corrupt and foreign files
    ("sample --ckpt {d}/missing.pt", 1, "missing.pt"),
    ("sample --ckpt {d}/empty_dir", 1, "empty_dir"),
    ("sample --ckpt {d}/garbage.pt", 1, "refusing to load"),
    ("sample --ckpt {d}/truncated.pt", 1, "refusing to load"),
    ("sample --ckpt {d}/evil.pt", 1, "refusing to load"),
    ("sample --ckpt {d}/list.pt", 1, "list.pt"),
    ("sample --ckpt {d}/no_model.pt", 1, "no_model.pt"),
    ("sample --ckpt {d}/corpus.txt", 1, "corpus.txt"),
    ("sample --ckpt {d}/nanogpt.pt", 1, "GPT.from_nanogpt_state_dict"),
    (S + " --tokenizer {d}/missing.json", 2, "missing.json not found"),
    (S + " --tokenizer {d}/garbage.pt", 1, "garbage.pt: not a babygpt tokenizer file (not UTF-8"),
    (S + " --tokenizer {d}/corpus.txt", 1, "corpus.txt: not a babygpt tokenizer file (not JSON"),
    (S + " --tokenizer {d}/tok_foreign.json", 1, "no 'kind' field"),
    (S + " --tokenizer {d}/tok_kind.json", 1, "unknown tokenizer kind 'sentencepiece'"),
    (S + " --tokenizer {d}/tok_damaged.json", 1, "damaged 'char' tokenizer file"),
    (S + " --tokenizer {d}/tok_other.json", 2, "has 3 tokens but the model expects"),
    (S + " --tokenizer {d}/empty_dir", 2, "empty_dir not found"),
    # ---- bench
    ("bench --rounds 0", 2, "--rounds: must be >= 1, got 0"),
    ("bench --rounds -3", 2, "--rounds: must be >= 1, got -3"),
    ("bench --rounds 1.5", 2, "--rounds: expected an integer >= 1, got '1.5'"),
    ("bench --curve-steps -1", 2, "--curve-steps: must be >= 0, got -1"),
    ("bench --backends sdpa,flash", 1, "unknown backend 'flash'"),
    ("bench --op matmul", 2, "invalid choice: 'matmul'"),
    ("bench --mode train", 2, "invalid choice: 'train'"),
    ("bench --dtype fp64", 2, "invalid choice: 'fp64'"),
    ("bench --device cuda", 1, "no CUDA device"),
    # ---- tokenize
    ("tokenize --kind sentencepiece", 2, "invalid choice"),
    ("tokenize --vocab-size 0", 2, "--vocab-size: must be >= 2"),
    ("tokenize --kind bpe --vocab-size 10", 1, "vocab_size must be >= 257"),
    ("tokenize --data {d}/missing.txt", 1, "is not an existing file"),
    ("tokenize --data {d}/binary.bin", 1, "binary.bin is not UTF-8 text: byte 0x80 at offset 128"),
    ("tokenize --data {d}/empty_dir", 1, "holds no .txt/.md files"),
    ("tokenize --data " + LONG_NAME, 1, "(300 characters) as a file name: File name too long"),
    ("tokenize --kind char --data {d}/corpus.txt --save {d}/a_file/tok.json", 1, "a_file exists and is not a directory"),
    # ---- tune, gpu-report, demo
    ("tune --batch-size 0", 2, "--batch-size: must be >= 1, got 0"),
    ("tune --batch-size 1.5", 2, "--batch-size: expected an integer >= 1, got '1.5'"),
    ("tune --budget-ms 0", 2, "--budget-ms: must be > 0, got 0"),
    ("tune --budget-ms inf", 2, "--budget-ms: must be > 0, got inf"),
    ("tune --budget-ms fast", 2, "--budget-ms: expected a number > 0, got 'fast'"),
    ("tune --preset gpt5", 2, "invalid choice: 'gpt5'"),
    ("gpu-report --backend rocm", 2, "invalid choice: 'rocm'"),
    ("demo --time-budget 0", 2, "--time-budget: must be > 0"),
    ("demo --max-iters 0", 2, "--max-iters: must be >= 1"),
    ("demo --skip-everything", 2, "unrecognized arguments: --skip-everything"),
]


def unusable_backend():
    """A backend that cannot run on this machine (cuda without a GPU, cuda_emu when not built, ...)."""
    from babygpt_ext import ops
    return next((name for name, b in ops.BACKENDS.items() if b.why_unavailable()), None)


def argv_of(template: str, d: Path) -> list:
    import shlex
    return shlex.split(template.format(d=d, unusable=unusable_backend()))


def test_the_table_is_large():
    assert len(CASES) >= 60


@pytest.mark.parametrize("template,status,fragment", CASES, ids=[c[0][:50] for c in CASES])
def test_bad_invocation_is_one_line_and_a_status(template, status, fragment, d, capsys):
    if "{unusable}" in template and unusable_backend() is None:
        pytest.skip("every backend is usable on this machine")
    if "cuda" in template.split() and torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU, so --device cuda is not an error")
    fragment = fragment.format(unusable=unusable_backend())
    rc = main(argv_of(template, d))
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert rc == status, err
    assert len(lines) == 1, err
    assert "Traceback" not in err
    assert lines[0].startswith("babygpt") and fragment in lines[0], lines[0]
    assert not (d / "pwned").exists()  # the malicious pickle never ran


def test_debug_flag_and_env_var_add_the_traceback(d, capsys, monkeypatch):
    missing = str(d / "missing.pt")
    for argv in (["--debug", "sample", "--ckpt", missing], ["sample", "--ckpt", missing, "--debug"]):
        assert main(argv) == 1
        err = capsys.readouterr().err
        assert "Traceback (most recent call last)" in err and err.splitlines()[-1].endswith("does not exist")
    monkeypatch.setenv("BABYGPT_DEBUG", "1")
    assert main(["sample", "--ckpt", missing]) == 1
    assert "Traceback" in capsys.readouterr().err
    monkeypatch.setenv("BABYGPT_DEBUG", "0")
    assert main(["sample", "--ckpt", missing]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_unexpected_errors_and_interrupts_are_one_line_too(monkeypatch, capsys):
    from babygpt_ext.cli import info

    def boom(exc):
        def report():
            raise exc
        return report

    monkeypatch.setattr(info, "report", boom(KeyError("layer.7")))
    assert main(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "KeyError: 'layer.7'" in err and "--debug" in err
    monkeypatch.setattr(info, "report", boom(KeyboardInterrupt()))
    assert main(["info"]) == 130
    assert capsys.readouterr().err == "babygpt info: interrupted (Ctrl-C)\n"


def test_ctrl_c_during_a_checkpoint_write_is_an_interrupt_not_a_crash(d, capsys, monkeypatch):
    """torch.save turns a KeyboardInterrupt raised inside its writer into a RuntimeError
    ('[enforce fail at inline_container.cc]'); that is still Ctrl-C: status 130, no traceback."""
    real_save = torch.save
    calls = []

    class InterruptedFile:
        def __init__(self, f):
            self.f, self.writes = f, 0

        def write(self, b):
            self.writes += 1
            if self.writes == 3:
                raise KeyboardInterrupt
            return self.f.write(b)

        def __getattr__(self, name):
            return getattr(self.f, name)

    def save(obj, f, *args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            return real_save(obj, f, *args, **kwargs)
        if isinstance(f, (str, os.PathLike)):
            with open(f, "wb") as out:
                return real_save(obj, InterruptedFile(out), *args, **kwargs)
        return real_save(obj, InterruptedFile(f), *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    rc = main(["train", "--preset", "babygpt", "--data", str(d / "corpus.txt"), "--max-iters", "3",
               "--eval-interval", "1", "--eval-iters", "1", "--batch-size", "2", "--out", str(d / "r_ctrl_c"),
               "--no-progress"])
    err = capsys.readouterr().err
    assert calls and rc == 130, err
    assert "Traceback" not in err and "enforce fail" not in err
    assert err.splitlines()[-1] == "babygpt train: interrupted (Ctrl-C)"


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    from babygpt_ext import __version__
    assert capsys.readouterr().out.startswith(f"babygpt_ext {__version__} (torch {torch.__version__}")


def test_model_targets_and_tokenizer_ids_are_validated():
    from babygpt_ext.models import GPT, GPTConfig

    model = GPT(GPTConfig.from_preset("babygpt", vocab_size=10))
    idx = torch.zeros(1, 4, dtype=torch.long)
    for bad in (10, -2):
        with pytest.raises(ValueError, match=r"targets must be in \[-1, vocab_size=10\)"):
            model(idx, torch.full((1, 4), bad))
    assert model(idx, torch.full((1, 4), 9))[1] is not None


# ---- as real processes --------------------------------------------------------------------
def _ctrl_c_reaches_the_child():
    # A suite started in the background (`make test &`, nohup) runs with SIGINT ignored, which a
    # child inherits: its Python would then never see the Ctrl-C these tests send.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _babygpt(*args, **kwargs):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    env.pop("BABYGPT_DEBUG", None)
    return subprocess.Popen([sys.executable, "-m", "babygpt_ext", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_ctrl_c_reaches_the_child,
                            **kwargs)


def test_entry_point_statuses():
    p = _babygpt("train", "--batch-size", "0")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 2 and err == "babygpt train: argument --batch-size: must be >= 1, got 0 (see `babygpt train --help`)\n"
    p = _babygpt("--version")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0 and out.startswith("babygpt_ext ")


def _interrupt_when(p, stream, marker: str, timeout: float = 120.0) -> str:
    """Read `stream` of process `p` until `marker` appears, then send SIGINT (what Ctrl-C does)."""
    seen, t_end = "", time.monotonic() + timeout
    while marker not in seen:
        assert p.poll() is None and time.monotonic() < t_end, f"never saw {marker!r}: {seen[-500:]}"
        seen += stream.read(1)
    os.kill(p.pid, signal.SIGINT)
    return seen


@pytest.mark.parametrize("command", ["sample", "bench", "train"])
def test_ctrl_c_is_status_130_without_a_traceback(command, d):
    if command == "sample":
        p = _babygpt("sample", "--ckpt", str(d / "run" / "ckpt.pt"), "--max-new-tokens", "1000000", "--prompt", "To")
        _interrupt_when(p, p.stdout, "To")
    elif command == "bench":
        p = _babygpt("bench", "--quick", "--rounds", "1000", "--op", "attention", "--backends", "eager,sdpa")
        _interrupt_when(p, p.stderr, "bench on")
    else:
        p = _babygpt("train", "--preset", "babygpt", "--data", str(d / "corpus.txt"), "--max-iters", "1000000",
                     "--eval-interval", "1000000", "--batch-size", "2", "--out", str(d / "r_sigint"), "--no-progress")
        _interrupt_when(p, p.stdout, "starting:")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert "Traceback" not in err, err
    last = err.splitlines()[-1]
    # train finishes the step it is in, saves last.pt and says how to resume (the trainer's own line)
    assert last == f"babygpt {command}: interrupted (Ctrl-C)" or (
        command == "train" and last.startswith("stopped at step") and "--resume" in last), err


def test_a_closed_pipe_is_one_line(d):
    p = _babygpt("sample", "--ckpt", str(d / "run" / "ckpt.pt"), "--max-new-tokens", "1000000", "--prompt", "To")
    p.stdout.read(2)
    p.stdout.close()  # like `babygpt sample ... | head -c 2`
    err = p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 1 and "Traceback" not in err and "Exception ignored" not in err, err
    assert err.splitlines()[-1] == "babygpt sample: output closed before it was all written (broken pipe)"
