"""The whole training step and its precision: ours matches the plain-PyTorch reference loop, bf16
trains, `--dtype auto` picks bf16 only where the CPU multiplies it natively; the end-to-end
benchmarks produce sane rows. (Timings are the benchmarks' business, never asserted here.)"""

import math
from pathlib import Path

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.bench.decode import DecodeShape, bench_decode
from babygpt_ext.bench.reference_loop import ReferenceGPT
from babygpt_ext.bench.runner import TEST_ONLY_ON_CPU
from babygpt_ext.bench.train_step import TrainShape, bench_train, make_pair
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.train import precision

SMALL = (("n_layer", 2), ("n_head", 2), ("n_embd", 32))
TINY = TrainShape("tiny", "shakespeare-cpu", batch=3, block=16, vocab=40, steps_per_round=2, overrides=SMALL)


def batches(n, shape=TINY, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [tuple(torch.randint(0, shape.vocab, (shape.batch, shape.block), generator=g) for _ in range(2))
            for _ in range(n)]


# The interpreters (Triton's, the CUDA emulator) are tested on the ops elsewhere; a whole model is too slow there.
@pytest.mark.parametrize("backend", [b for b in ops.available_backends("cpu") if b not in TEST_ONLY_ON_CPU])
def test_our_training_step_follows_the_reference_loop(backend):
    # Same weights, same batches: fused AdamW, the sliced position table and the attention backend
    # must not change what is learned, only how fast.
    trainer, ref = make_pair(TINY, "fp32", backend)
    assert trainer.optimizer.defaults["fused"] and not ref.optimizer.defaults["fused"]
    for x, y in batches(6):
        ours, theirs = trainer.train_step([(x, y)])["train_loss"], ref(x, y)
        assert abs(ours - theirs) < 2e-4, f"{backend}: loss {ours} vs reference {theirs}"
    for (name, p), q in zip(trainer.raw_model.named_parameters(), ref.model.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=5e-4, msg=name)


def test_the_reference_is_the_same_function_as_ours():
    torch.manual_seed(0)
    cfg = GPTConfig.from_preset("shakespeare-cpu", vocab_size=40, block_size=16, **dict(SMALL))
    ours = GPT(cfg)
    ref = ReferenceGPT(cfg.n_layer, cfg.n_head, cfg.n_embd, cfg.block_size, cfg.vocab_size)
    ref.load_state_dict(ours.state_dict())
    x, y = batches(1)[0]
    torch.testing.assert_close(ours(x, y)[0], ref(x, y)[0], rtol=1e-5, atol=1e-5)


def test_bf16_training_lowers_the_loss():
    # bf16 runs on any CPU (emulated without bf16 units: slower, still correct).
    shape = TrainShape("tiny", "shakespeare-cpu", batch=4, block=16, vocab=12, overrides=SMALL)
    trainer, _ = make_pair(shape, "bf16", lr=3e-3, min_lr=3e-3)
    assert trainer.autocast_dtype == torch.bfloat16 and trainer.dtype_name == "bf16"
    cycle = torch.arange(64) % shape.vocab  # a learnable sequence: every token fixes the next one
    x = torch.stack([cycle[i:i + 16] for i in range(4)])
    y = torch.stack([cycle[i + 1:i + 17] for i in range(4)])
    with trainer.autocast():
        logits, _ = trainer.raw_model(x, y)
    assert logits.dtype == torch.bfloat16  # the GEMMs really ran in bf16
    losses = [trainer.train_step([(x, y)])["train_loss"] for _ in range(40)]
    assert math.isfinite(losses[-1]) and losses[-1] < losses[0] - 1.0, losses[::8]
    assert all(p.dtype == torch.float32 for p in trainer.raw_model.parameters())  # fp32 master weights


@pytest.mark.parametrize("unit,expected", [("amx_bf16", "bf16"), ("avx512_bf16", "bf16"), (None, "fp32")])
def test_dtype_auto_picks_bf16_only_with_native_bf16_units(monkeypatch, unit, expected):
    monkeypatch.setattr(precision, "cpu_bf16_units", lambda: unit)
    name, reason = precision.resolve_dtype("auto", "cpu")
    assert name == expected and reason.startswith("auto: ") and (unit is None or unit in reason)
    assert precision.resolve_dtype("bf16", "cpu") == ("bf16", "requested")


def test_cpu_bf16_units_agree_with_the_kernels_flag_list():
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo (not Linux): nothing independent to compare torch's view with")
    flags = set(cpuinfo.read_text().split())
    unit = precision.cpu_bf16_units()
    assert unit == next((f for f in precision.BF16_CPU_FLAGS if f in flags), None)


def test_train_benchmark_rows():
    r = bench_train(TINY, rounds=2, dtype="fp32")
    assert r.ours_ms > 0 and r.ref_ms > 0 and r.speedup > 0 and r.dtype == "fp32"
    assert r.ours_tok_s == pytest.approx(TINY.tokens / r.ours_ms * 1e3)
    assert abs(r.ours_loss - r.ref_loss) < 2e-4  # both took the same steps from the same weights


def test_decode_benchmark_rows():
    shape = DecodeShape("tiny", "babygpt", block=48, batch=2, prompt=4, new_tokens=20, vocab=40)
    r = bench_decode(shape, rounds=1)
    assert r.same_tokens and r.cache_ms_per_step > 0 and r.recompute_ms_per_step > 0
    assert r.cache_tok_s == pytest.approx(2 / r.cache_ms_per_step * 1e3)
    model = GPT(GPTConfig.from_preset("babygpt", vocab_size=40, block_size=48))
    wpe = model.transformer.wpe.weight
    assert r.weights_mb * 1e6 == pytest.approx(sum(p.numel() * 4 for p in model.parameters()) - wpe.numel() * 4)


def test_read_bandwidth_is_a_rate():
    from babygpt_ext.bench.decode import read_bandwidth
    assert 0.0 < read_bandwidth(1 << 20, rounds=3) < 1e4  # GB/s
