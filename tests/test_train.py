"""Trainer behaviour: LR schedule, gradient accumulation == one big batch, exact resume after a
kill, metrics files and loss PNG, time budget, crash checkpoint, config validation.

All on a tiny GPT (2 layers, width 16, context 8) with one torch thread: on a shared 2-core
machine, OpenMP threads of tiny ops spend more time spinning than computing.
"""

import copy
import csv
import json
import math
import re
import warnings

import pytest
import torch

from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.train import Trainer, TrainConfig, load_checkpoint, lr_at, lr_for_config

VOCAB = 29


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny_gpt(seed=0, dropout=0.0, backend=None):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=VOCAB, block_size=8, n_layer=2, n_head=2, n_embd=16, dropout=dropout,
                         backend=backend))


def token_data(n=3000, seed=1):
    # a learnable stream (a noisy repeating pattern), so losses move and differ step to step
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) * 7 % VOCAB
    noise = torch.randint(0, VOCAB, (n,), generator=g)
    keep = torch.rand(n, generator=g) < 0.8
    return torch.where(keep, base, noise)


def quiet_cfg(**kw):
    # fp32, not auto: the exactness checks below (accumulation, resume) hold in fp32, and auto would
    # pick bf16 on a CPU with bf16 units.
    base = dict(batch_size=4, max_iters=10, eval_interval=5, eval_iters=2, warmup_iters=2, lr=3e-3, min_lr=3e-4,
                progress=False, seed=123, autocast_dtype="fp32")
    base.update(kw)
    return TrainConfig(**base)


def rows(out_dir):
    with open(out_dir / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


# ------------------------------------------------------------------------------------ schedule
def test_lr_schedule_warmup_cosine_min():
    kw = dict(lr=1e-3, min_lr=1e-4, warmup_iters=10, decay_iters=110)
    assert lr_at(0, **kw) == pytest.approx(1e-4)            # first step already moves: lr / warmup
    assert lr_at(9, **kw) == pytest.approx(1e-3)            # warmup ends at the full lr
    assert lr_at(10, **kw) == pytest.approx(1e-3)           # cosine starts at the peak
    assert lr_at(60, **kw) == pytest.approx(5.5e-4)         # halfway down the cosine: (lr + min_lr) / 2
    assert lr_at(110, **kw) == pytest.approx(1e-4)          # reaches min_lr ...
    assert lr_at(10_000, **kw) == pytest.approx(1e-4)       # ... and stays there
    lrs = [lr_at(s, **kw) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))        # monotone decay
    cfg = TrainConfig(lr=2e-3, min_lr=2e-4, warmup_iters=5, max_iters=50)
    assert lr_for_config(49, cfg) < lr_for_config(5, cfg) == pytest.approx(2e-3)


def test_trainer_sets_scheduled_lr_each_step(tmp_path):
    cfg = quiet_cfg(max_iters=6, warmup_iters=3)
    Trainer(tiny_gpt(), token_data(), token_data(seed=2), cfg, tmp_path).fit()
    logged = [r["lr"] for r in rows(tmp_path) if r["lr"] is not None]
    assert logged == pytest.approx([lr_for_config(s, cfg) for s in range(6)])


# ------------------------------------------------------------------------------------ accumulation
def record_grads(trainer):
    """Wrap optimizer.step to keep a copy of the (clipped) gradients it is about to apply."""
    seen, real_step = [], trainer.optimizer.step

    def step(*a, **kw):
        seen.append({n: p.grad.detach().clone() for n, p in trainer.raw_model.named_parameters()})
        return real_step(*a, **kw)

    trainer.optimizer.step = step
    return seen


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    model = tiny_gpt()
    data = token_data()
    x, y = torch.stack([data[i:i + 8] for i in range(0, 80, 10)]), torch.stack([data[i + 1:i + 9] for i in range(0, 80, 10)])
    big = Trainer(copy.deepcopy(model), data, data, quiet_cfg(batch_size=8), tmp_path / "big")
    acc = Trainer(copy.deepcopy(model), data, data, quiet_cfg(batch_size=2, grad_accum_steps=4), tmp_path / "acc")
    g_big, g_acc = record_grads(big), record_grads(acc)
    m_big = big.train_step([(x, y)])                                                 # batch 8
    m_acc = acc.train_step([(x[i:i + 2], y[i:i + 2]) for i in range(0, 8, 2)])       # 4 x micro-batch 2
    assert m_acc["train_loss"] == pytest.approx(m_big["train_loss"], rel=1e-6)
    assert m_acc["grad_norm"] == pytest.approx(m_big["grad_norm"], rel=1e-5)
    for name, g in g_big[0].items():
        torch.testing.assert_close(g_acc[0][name], g, rtol=1e-5, atol=1e-6, msg=name)
    assert any(g.abs().max() > 1e-4 for g in g_big[0].values())  # the comparison is not between zeros
    for (name, p), q in zip(big.raw_model.named_parameters(), acc.raw_model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-6, msg=name)


def test_accumulated_run_sees_the_same_windows_as_the_big_batch_run(tmp_path):
    """fit() draws one global batch per step, so accum 4 x 2 and 1 x 8 train on identical data."""
    data = token_data()
    big = Trainer(tiny_gpt(), data, data, quiet_cfg(batch_size=8), tmp_path / "a")
    acc = Trainer(tiny_gpt(), data, data, quiet_cfg(batch_size=2, grad_accum_steps=4), tmp_path / "b")
    (xb, yb), = big.sample_micro_batches(data, big.data_gen, 1)
    micro = acc.sample_micro_batches(data, acc.data_gen, 4)
    assert torch.equal(torch.cat([m[0] for m in micro]), xb) and torch.equal(torch.cat([m[1] for m in micro]), yb)


# ------------------------------------------------------------------------------------ exact resume
class KillAt:
    def __init__(self, step, exc=KeyboardInterrupt):
        self.step, self.exc = step, exc

    def __call__(self, trainer, row):
        if trainer.step == self.step:
            raise self.exc("simulated kill")


@pytest.mark.parametrize("resume_from", ["last.pt", "ckpt.pt"])
def test_killed_and_resumed_run_equals_uninterrupted_run(tmp_path, resume_from):
    # dropout > 0 so the torch RNG state matters too (not only data order and optimizer state)
    cfg = dict(max_iters=12, eval_interval=4)
    train, val = token_data(), token_data(seed=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # "attention dropout runs eager"
        full = Trainer(tiny_gpt(dropout=0.1), train, val, quiet_cfg(**cfg), tmp_path / "full")
        full.fit()

        killed = Trainer(tiny_gpt(dropout=0.1), train, val, quiet_cfg(**cfg), tmp_path / "run",
                         hooks=[KillAt(7)])
        with pytest.raises(KeyboardInterrupt):
            killed.fit()
        assert load_checkpoint(tmp_path / "run" / "last.pt")["step"] == 7
        if resume_from == "ckpt.pt":  # lose the crash checkpoint: resume from the step-4 eval checkpoint
            (tmp_path / "run" / "last.pt").unlink()
        # a fresh process would build a fresh model: different init proves the weights are loaded
        resumed = Trainer(tiny_gpt(seed=99, dropout=0.1), train, val, quiet_cfg(**cfg, resume=True),
                          tmp_path / "run")
        assert resumed.step == (7 if resume_from == "last.pt" else 4)
        resumed.fit()

    r_full, r_res = rows(tmp_path / "full"), rows(tmp_path / "run")
    assert [r["step"] for r in r_res] == [r["step"] for r in r_full] == list(range(13))
    for key in ("train_loss", "val_loss", "lr", "grad_norm"):
        assert [r[key] for r in r_res] == [r[key] for r in r_full], key  # bit-identical
    for (name, p), q in zip(full.raw_model.named_parameters(), resumed.raw_model.parameters()):
        assert torch.equal(p, q), name
    s_full, s_res = full.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    for k in s_full:
        assert torch.equal(s_full[k]["exp_avg_sq"], s_res[k]["exp_avg_sq"])


def test_resume_without_checkpoint_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="no ckpt.pt or last.pt"):
        Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(resume=True), tmp_path)


def test_exception_writes_last_checkpoint_and_reraises(tmp_path):
    t = Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(), tmp_path, hooks=[KillAt(3, RuntimeError)])
    with pytest.raises(RuntimeError, match="simulated kill"):
        t.fit()
    ck = load_checkpoint(tmp_path / "last.pt")
    assert ck["step"] == 3 and ck["train_config"]["max_iters"] == 10
    assert ck["model_config"]["n_embd"] == 16 and ck["model_class"] == "GPT"
    assert len(rows(tmp_path)) == 4  # step 0 (initial eval) .. 3, flushed before the crash


# ------------------------------------------------------------------------------------ files
def test_metrics_files_and_loss_png(tmp_path):
    s = Trainer(tiny_gpt(), token_data(), token_data(seed=2), quiet_cfg(max_iters=10, eval_interval=5),
                tmp_path).fit()
    r = rows(tmp_path)
    assert [x["step"] for x in r] == list(range(11))
    assert [x["val_loss"] is not None for x in r] == [i in (0, 5, 10) for i in range(11)]
    assert r[0]["val_loss"] == pytest.approx(math.log(VOCAB), rel=0.05)  # untrained ≈ uniform
    assert r[-1]["val_loss"] < r[0]["val_loss"]
    assert all(x["tokens_per_s"] > 0 for x in r[1:])
    with open(tmp_path / "metrics.csv") as f:
        table = list(csv.DictReader(f))
    assert len(table) == 11 and float(table[5]["val_loss"]) == pytest.approx(r[5]["val_loss"])
    png = (tmp_path / "loss.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    for name in ("ckpt.pt", "best.pt"):
        assert load_checkpoint(tmp_path / name)["step"] in (5, 10)
    assert s["step"] == 10 and s["val_loss"] == pytest.approx(r[-1]["val_loss"])
    assert not list(tmp_path.glob(".*tmp*"))  # no temp files left behind


def test_time_budget_stops_cleanly_with_eval_and_checkpoint(tmp_path):
    s = Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(max_iters=100_000, time_budget=0.05),
                tmp_path).fit()
    assert 1 <= s["step"] < 100_000
    assert s["val_loss"] is not None and load_checkpoint(tmp_path / "ckpt.pt")["step"] == s["step"]
    assert rows(tmp_path)[-1]["val_loss"] == s["val_loss"]


def test_bf16_autocast_on_cpu_trains(tmp_path):
    t = Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(max_iters=3, autocast_dtype="bf16"), tmp_path)
    assert t.autocast_dtype == torch.bfloat16
    s = t.fit()
    assert math.isfinite(s["train_loss"]) and next(t.raw_model.parameters()).dtype == torch.float32


def test_model_without_configure_optimizers_gets_decay_groups(tmp_path):
    class Plain(torch.nn.Module):  # minimal LM: embedding -> linear, no configure_optimizers
        def __init__(self):
            super().__init__()
            self.emb, self.head = torch.nn.Embedding(VOCAB, 8), torch.nn.Linear(8, VOCAB)

        def forward(self, idx, targets=None):
            logits = self.head(self.emb(idx))
            return logits, torch.nn.functional.cross_entropy(logits.flatten(0, 1), targets.flatten())

    t = Trainer(Plain(), token_data(), token_data(), quiet_cfg(block_size=8, weight_decay=0.2), tmp_path)
    decays = {id(p): g["weight_decay"] for g in t.optimizer.param_groups for p in g["params"]}
    assert decays[id(t.raw_model.emb.weight)] == decays[id(t.raw_model.head.weight)] == 0.2
    assert decays[id(t.raw_model.head.bias)] == 0.0
    assert t.fit()["step"] == 10


@pytest.mark.parametrize("bad, match", [
    (dict(batch_size=0), "batch_size"), (dict(grad_accum_steps=-1), "grad_accum_steps"),
    (dict(lr=1e-3, min_lr=1e-2), "min_lr"), (dict(device="tpu"), "device"),
    (dict(autocast_dtype="int8"), "autocast_dtype"), (dict(time_budget=0), "time_budget")])
def test_bad_config_names_the_field(bad, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**bad)


def test_bad_trainer_inputs(tmp_path):
    with pytest.raises(ValueError, match="exceeds the model's context 8"):
        Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(block_size=9), tmp_path)
    with pytest.raises(ValueError, match="val_data has 5 tokens"):
        Trainer(tiny_gpt(), token_data(), token_data()[:5], quiet_cfg(), tmp_path)
    with pytest.raises(ValueError, match="fp16"):
        Trainer(tiny_gpt(), token_data(), token_data(), quiet_cfg(autocast_dtype="fp16", device="cpu"), tmp_path)


# ------------------------------------------------------------------------------------ CLI
def test_cli_train_resume_and_sample_stream(tmp_path, capsys):
    from babygpt_ext.cli import main
    from babygpt_ext.tokenizers import Tokenizer

    out = tmp_path / "run"
    common = ["train", "--preset", "babygpt", "--tokenizer", "char", "--batch-size", "8", "--eval-interval", "10",
              "--eval-iters", "2", "--warmup", "2", "--out", str(out), "--no-progress", "--backend", "sdpa"]
    assert main(common + ["--max-iters", "10"]) == 0
    printed = capsys.readouterr().out
    for what in ("ckpt.pt", "tokenizer.json", "metrics.jsonl", "metrics.csv", "loss.png"):
        assert str(out / what) in printed  # tells the user where everything is
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck["step"] == 10 and ck["model_config"]["n_embd"] == 16 and ck["extra"]["tokenizer"] == "tokenizer.json"
    assert ck["model_config"]["backend"] == "sdpa"
    assert Tokenizer.load(out / "tokenizer.json").vocab_size == ck["model_config"]["vocab_size"]

    assert main(common + ["--max-iters", "15", "--resume"]) == 0  # extend the run
    assert "resuming" in capsys.readouterr().out
    assert load_checkpoint(out / "ckpt.pt")["step"] == 15
    assert [r["step"] for r in rows(out)] == list(range(16))

    streamed = []

    class Spy:  # stdout that records each write, to see tokens arrive one by one
        def write(self, s):
            streamed.append(s)

        def flush(self):
            pass

    import sys
    real = sys.stdout
    sys.stdout = Spy()
    try:
        rc = main(["sample", "--ckpt", str(out / "ckpt.pt"), "--prompt", "def ", "--max-new-tokens", "12",
                   "--num-samples", "2", "--seed", "0", "--top-k", "20", "--top-p", "0.95"])
    finally:
        sys.stdout = real
    assert rc == 0
    text = "".join(streamed)
    assert text.count("--- sample") == 2 and text.count("def ") >= 2
    assert len(streamed) >= 12  # one write per streamed token (plus headers), not one at the end


def test_sample_streamer_holds_back_a_possible_stop_string():
    from babygpt_ext.cli.sample import Streamer
    from babygpt_ext.tokenizers import CharTokenizer

    tok = CharTokenizer.from_text("ab\ncd")
    writes = []

    class Out:
        def write(self, s):
            writes.append(s)

        def flush(self):
            pass

    s = Streamer(tok, stops=["\n\n", "cd"], out=Out())
    for ch in "ab\n":
        s(torch.tensor(tok.encode(ch)))
    assert "".join(writes) == "ab"  # "\n" could start the stop string "\n\n": held back
    s(torch.tensor(tok.encode("c")))
    assert "".join(writes) == "ab\n"  # it did not; now "c" could start "cd"
    s(torch.tensor(tok.encode("a")))
    assert "".join(writes) == "ab\nca" and not s.stopped  # they did not
    for ch in "\n\nb":
        s(torch.tensor(tok.encode(ch)))
    s.finish()
    assert "".join(writes) == "ab\nca" and s.stopped  # the stop string and what follows stay unprinted
    rest = Streamer(tok, stops=["cd"], out=Out())
    writes.clear()
    for ch in "abc":
        rest(torch.tensor(tok.encode(ch)))
    rest.finish()  # ended without completing the stop string: the held-back "c" is printed
    assert "".join(writes) == "abc"


def test_cli_sample_stop_cuts_every_sample(tmp_path, capsys):
    from babygpt_ext.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "babygpt", "--tokenizer", "char", "--batch-size", "8", "--max-iters", "5",
                 "--eval-interval", "5", "--eval-iters", "1", "--out", str(out), "--no-progress"]) == 0
    capsys.readouterr()
    sample = ["sample", "--ckpt", str(out / "ckpt.pt"), "--prompt", "a", "--max-new-tokens", "40", "--seed", "3",
              "--num-samples", "2", "--temperature", "1.0"]
    assert main(sample) == 0
    free = capsys.readouterr().out.split("--- sample 2 ---\n")[0].removeprefix("--- sample 1 ---\na")
    stop = free[10:12]  # two characters the first sample generates
    assert main(sample + ["--stop", stop.encode("unicode_escape").decode()]) == 0
    cut = capsys.readouterr().out
    first, second = cut.split("--- sample 2 ---\n")
    assert first == "--- sample 1 ---\na" + free[:free.index(stop)] + "\n"
    assert stop not in second.removeprefix("a")
    assert main(["sample", "--ckpt", str(out / "ckpt.pt"), "--stop", ""]) == 2


def test_cli_sample_refuses_mismatched_tokenizer(tmp_path, capsys):
    from babygpt_ext.cli import main
    from babygpt_ext.tokenizers import get_tokenizer

    out = tmp_path / "run"
    assert main(["train", "--preset", "babygpt", "--tokenizer", "char", "--max-iters", "2", "--eval-iters", "1",
                 "--warmup", "1", "--out", str(out), "--no-progress"]) == 0
    get_tokenizer("char", "abc").save(tmp_path / "small.json")
    assert main(["sample", "--ckpt", str(out / "ckpt.pt"), "--tokenizer", str(tmp_path / "small.json")]) == 2
    assert "expects" in capsys.readouterr().err


def test_cli_resume_takes_the_run_from_the_checkpoint(tmp_path, capsys):
    from babygpt_ext.cli import main

    def refused(argv, match):
        """The CLI turns the refusal (a UserError) into one line on stderr and exit status 1."""
        capsys.readouterr()
        assert main(argv) == 1
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and re.search(match, err), err

    out = tmp_path / "run"
    common = ["train", "--out", str(out), "--no-progress", "--eval-iters", "1", "--eval-interval", "3"]
    assert main(common + ["--preset", "babygpt", "--tokenizer", "word", "--vocab-size", "300", "--batch-size", "4",
                          "--max-iters", "3", "--lr", "2e-3", "--threads", "1"]) == 0
    refused(common + ["--preset", "babygpt", "--max-iters", "3"], "already holds a run.*--resume.*--force")
    for bad, match in ((["--lr", "1e-2"], "lr=0.01"), (["--preset", "gpt-mini"], "--preset gpt-mini"),
                       (["--tokenizer", "char"], "--tokenizer char"), (["--seed", "5"], "seed=5")):
        refused(common + ["--resume", "--max-iters", "6"] + bad, match)
    capsys.readouterr()

    (out / "tokenizer.json").unlink()  # lost: rebuilt from the data only because the rebuild is identical
    torch.set_num_threads(2)  # no --threads: the checkpoint's count (1) is restored
    assert main(common + ["--resume", "--max-iters", "6"]) == 0
    assert torch.get_num_threads() == 1
    captured = capsys.readouterr()
    assert "rebuilt it from the data" in captured.err and "resuming" in captured.out
    assert "max_iters 6 (was 3)" in captured.err and "not be bit-exact" not in captured.err
    ck = load_checkpoint(out / "ckpt.pt")
    assert ck["step"] == 6 and ck["extra"]["run"]["tokenizer"] == "word" and ck["train_config"]["lr"] == 2e-3
    assert ck["train_config"]["batch_size"] == 4 and ck["num_threads"] == 1

    original = (out / "tokenizer.json").read_text()
    (out / "tokenizer.json").write_text(json.dumps(json.loads(original), indent=1))  # same vocabulary, other bytes
    refused(common + ["--resume", "--max-iters", "9"], "not the tokenizer this run was trained with")
    assert main(["sample", "--ckpt", str(out / "ckpt.pt"), "--max-new-tokens", "2"]) == 2
    assert "sha256 differs" in capsys.readouterr().err
    (out / "tokenizer.json").write_text(original)
    assert main(["sample", "--ckpt", str(out / "ckpt.pt"), "--max-new-tokens", "2"]) == 0

    assert main(common + ["--preset", "babygpt", "--max-iters", "2", "--force"]) == 0
    assert load_checkpoint(out / "ckpt.pt")["step"] == load_checkpoint(out / "best.pt")["step"] == 2
    assert [r["step"] for r in rows(out)] == [0, 1, 2]
