"""The benchmark harness itself: rows for every backend, sane numbers, errors against eager."""

import torch

from babygpt_ext.bench.runner import AUTO, PEER, bench_attention, bench_backends, bench_lora, runnable
from babygpt_ext.bench.shapes import AttnShape, LoraShape
from babygpt_ext.cli import main
from babygpt_ext.cli.bench import format_table


def test_attention_rows_cover_every_backend_with_small_errors():
    backends = bench_backends("cpu", "attention")
    assert {"eager", "sdpa"} <= set(backends) and "triton" not in backends  # interpreters are not timed
    assert backends[-1] == AUTO
    rows = bench_attention(AttnShape("t", B=1, H=2, T=16, D=8), backends, "cpu", torch.float32, backward=True,
                           rounds=2)
    assert [r.backend for r in rows] == [PEER, *backends]  # the peer first: raw SDPA, every row's baseline
    for r in rows:
        assert r.ms > 0 and r.tflops > 0 and r.max_err < 1e-5 and r.baseline == PEER
    assert abs(next(r for r in rows if r.backend == PEER).speedup - 1.0) < 1e-12
    auto = next(r for r in rows if r.backend == AUTO)
    assert auto.runs in backends and f"auto→{auto.runs}" in format_table(rows)


def test_lora_rows_skip_backends_without_lora():
    backends = bench_backends("cpu", "lora")
    assert "sdpa" not in backends and "eager" in backends
    rows = bench_lora(LoraShape("t", N=8, d_in=16, d_out=12, r=2), backends, "cpu", torch.float32, backward=False,
                      rounds=2)
    assert all(r.max_err < 1e-5 and r.baseline == "eager" for r in rows)


def test_flop_counts():
    s = AttnShape("t", B=2, H=3, T=5, D=7)
    assert s.flops(causal=False) == 4 * 2 * 3 * 5 * 5 * 7
    assert s.flops(causal=True) == s.flops(causal=False) / 2
    assert s.flops(causal=True, backward=True) == 3.5 * s.flops(causal=True)


def test_a_backend_without_the_op_is_left_out_of_that_table_with_a_note():
    kept, notes = runnable(["eager", "sdpa", "cpu", AUTO], "lora", "cpu", torch.float32)
    assert kept == ["eager", "cpu", AUTO] and notes == ["sdpa left out of the lora table: it has no lora implementation"]


def test_bench_with_a_backend_that_has_no_lora_runs_and_notes_it(capsys):
    assert main(["bench", "--backends", "eager,sdpa,cpu", "--op", "lora", "--quick", "--mode", "fwd", "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("lora ")]
    assert rows and not any(" sdpa " in row for row in rows)
    assert "note: sdpa left out of the lora table: it has no lora implementation" in out


def test_gpt_layout_rows_time_a_gpt_layers_attention_from_its_qkv(capsys):
    rows = bench_attention(AttnShape("t", B=1, H=4, T=16, D=8, Hkv=2), ["cpu"], "cpu", torch.float32,
                           backward=True, rounds=2, layout="gpt")
    assert [r.layout for r in rows] == ["gpt", "gpt"] and all(r.max_err < 1e-5 for r in rows)
    assert main(["bench", "--op", "attention", "--quick", "--mode", "fwd", "--layout", "gpt", "--backends", "cpu",
                 "--rounds", "1"]) == 0
    out = capsys.readouterr().out
    assert "GEMM ceiling (torch.mm 2048², float32)" in out
    rows = [line.split() for line in out.splitlines() if line.startswith("attention ")]
    assert rows and all(row[2] == "gpt" and row[7].endswith("%") for row in rows)
