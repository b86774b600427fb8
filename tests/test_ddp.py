"""DDP on the CPU: 2 processes with gloo under torchrun reach the same losses and weights as one
process with the doubled batch.

Why this is an equality test and not a "loss goes down" test: every step draws ONE global batch of
batch_size x grad_accum x world_size windows from a data generator seeded identically on every
rank, and rank r keeps rows [r*B, (r+1)*B) of each micro-batch. So 2 ranks x batch 4 see exactly
the 8 windows a single process with batch 8 sees, DDP averages the two half-batch gradients
(= the gradient of the mean over all 8, as the halves are equal-sized), and every step must
match up to float summation order. grad_accum=2 exercises no_sync() on the first micro-batch.

This file is also the worker: torchrun runs it as a script (see __main__ below).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

VOCAB, BLOCK = 31, 8
STEPS, ACCUM = 6, 2


def tiny_setup():
    from babygpt_ext.models import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=VOCAB, block_size=BLOCK, n_layer=2, n_head=2, n_embd=16))
    g = torch.Generator().manual_seed(1)
    data = (torch.arange(4000) * 5 % VOCAB + (torch.rand(4000, generator=g) < 0.2).long()) % VOCAB
    return model, data[:3500], data[3500:]


def run_worker(out: Path, batch_size: int) -> None:
    """Train the tiny model; rank 0 writes metrics and ckpt.pt. Every rank writes its first step's
    windows and its final weights (to check ranks differ in data and agree in weights)."""
    from babygpt_ext.train import Trainer, TrainConfig, distributed

    torch.set_num_threads(1)
    info = distributed.setup("cpu")
    try:
        model, train, val = tiny_setup()
        cfg = TrainConfig(batch_size=batch_size, grad_accum_steps=ACCUM, max_iters=STEPS, eval_interval=3,
                          eval_iters=2, warmup_iters=2, lr=3e-3, progress=False, seed=7,
                          autocast_dtype="fp32")  # not auto (bf16 on a CPU with bf16 units): equality holds in fp32
        trainer = Trainer(model, train, val, cfg, out, dist_info=info)
        peek = torch.Generator()
        peek.set_state(trainer.data_gen.get_state())  # a copy: peeking must not shift the real stream
        first = trainer.sample_micro_batches(train, peek, ACCUM)
        torch.save(torch.cat([x for x, _ in first]), out / f"rank{info.rank}_x.pt")
        trainer.fit()
        torch.save(trainer.raw_model.state_dict(), out / f"rank{info.rank}_weights.pt")
    finally:
        distributed.teardown()


def read_rows(out: Path):
    with open(out / "metrics.jsonl") as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_ddp_two_gloo_ranks_equal_one_process_with_double_batch(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    single.mkdir()
    ddp.mkdir()
    run_worker(single, batch_size=8)  # in this process: no torchrun env -> world size 1

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           __file__, str(ddp)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"

    # ranks saw different windows, which together are exactly the single process's windows
    x0, x1, xs = (torch.load(p, weights_only=True) for p in (ddp / "rank0_x.pt", ddp / "rank1_x.pt",
                                                                single / "rank0_x.pt"))
    assert not torch.equal(x0, x1)
    B = 4
    for i in range(ACCUM):  # micro-batch i of the single run = rank 0's rows, then rank 1's
        assert torch.equal(xs[2 * B * i: 2 * B * i + B], x0[B * i: B * (i + 1)])
        assert torch.equal(xs[2 * B * i + B: 2 * B * (i + 1)], x1[B * i: B * (i + 1)])

    # same losses at every step (train loss is all-reduced over ranks; val loss too)
    rs, rd = read_rows(single), read_rows(ddp)
    assert [r["step"] for r in rd] == [r["step"] for r in rs] == list(range(STEPS + 1))
    for a, b in zip(rs, rd):
        for key in ("train_loss", "val_loss", "grad_norm"):
            if a[key] is None:
                assert b[key] is None
            else:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (a["step"], key)
    assert rd[-1]["train_loss"] < rd[1]["train_loss"]  # and it trained

    # same weights: both ranks (DDP keeps them in sync) and the single process
    ws = torch.load(single / "rank0_weights.pt", weights_only=True)
    for rank in (0, 1):
        wd = torch.load(ddp / f"rank{rank}_weights.pt", weights_only=True)
        for k in ws:
            torch.testing.assert_close(wd[k], ws[k], rtol=1e-5, atol=1e-5, msg=f"rank {rank} {k}")
    # only rank 0 wrote the run's files
    assert (ddp / "ckpt.pt").exists() and not list(ddp.glob(".*tmp*"))


if __name__ == "__main__":  # the torchrun worker
    run_worker(Path(sys.argv[1]), batch_size=4)
