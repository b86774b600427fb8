"""Triton-specific checks beyond the shared backend suite (test_attention.py, test_lora.py, ...).

The shared suite runs the triton backend with the interpreter's single small configuration. Here:
every configuration of the Ampere and Hopper autotune lists runs once in the interpreter (a block
size that breaks a causal split or a bound mask fails here, not on someone's GPU), the op schemas
match csrc/schemas.h, opcheck passes, strided inputs are read in place, bf16 is refused in the
interpreter with a reason, and a CPU-only program never imports triton.
"""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import reference

from tolerance import assert_close

pytestmark = pytest.mark.skipif("triton" not in ops.available_backends("cpu"),
                                reason="backend triton is unavailable here: "
                                       f"{ops.BACKENDS['triton'].why_unavailable()}")
ROOT = Path(__file__).resolve().parents[1]


def _tk():
    from babygpt_ext.kernels import triton as tk
    return tk


def _configs(family):
    from babygpt_ext.kernels.triton import configs as C
    return [(arch, i, c) for arch in (80, 90) for i, c in enumerate(C.configs(family, arch))]


def _ids(family):
    return [f"sm{a}-cfg{i}-{c.kwargs}".replace(" ", "") for a, i, c in _configs(family)]


def _attn_case(seed, b=1, h=4, hkv=2, tq=37, tk=70, d=24):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, n, t, d, generator=g, dtype=torch.float64) for n, t in ((h, tq), (hkv, tk), (hkv, tk)))
    do = torch.randn(b, h, tq, d, generator=g, dtype=torch.float64)
    return q, k, v, do


def _attn_ref(q, k, v, do, scale, causal):
    q, k, v = (t.clone().requires_grad_() for t in (q, k, v))
    o = reference.attention(q, k, v, scale, causal)
    return (o, *torch.autograd.grad(o, (q, k, v), do))


@pytest.mark.parametrize("family", ["attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"])
@pytest.mark.parametrize("causal", [True, False])
def test_every_attention_config_is_correct_in_the_interpreter(family, causal):
    """Each config of one kernel family, the other two kernels on their interpreter config.

    Shape: Tq < Tk (bottom-right diagonal), GQA groups of 2, T and D not multiples of any block."""
    att = _tk().attention
    q, k, v, do = _attn_case(7 if causal else 8)
    scale = 0.3
    want = _attn_ref(q, k, v, do, scale, causal)
    f32 = [t.float() for t in (q, k, v, do)]
    for arch, i, cfg in _configs(family):
        o, lse, o_lo = att.attn_fwd(*f32[:3], scale, causal, configs={family: cfg})
        got = (o, *att.attn_bwd(f32[3], *f32[:3], o, lse, o_lo, scale, causal, configs={family: cfg}))
        for name, x, ref in zip(("o", "dq", "dk", "dv"), got, want):
            assert_close(x, ref, ref.float(), f"{family} sm{arch} config {i} {cfg.kwargs}: {name}", 1.0)


@pytest.mark.parametrize("with_bias", [True, False])
def test_every_lora_config_is_correct_in_the_interpreter(with_bias):
    lora = _tk().lora
    g = torch.Generator().manual_seed(3)
    n, fin, fout, r = 45, 70, 37, 5
    x, w, a, bm = (torch.randn(*s, generator=g, dtype=torch.float64) for s in ((n, fin), (fout, fin), (r, fin), (fout, r)))
    b = torch.randn(fout, generator=g, dtype=torch.float64) if with_bias else None
    dy = torch.randn(n, fout, generator=g, dtype=torch.float64)
    leaves = [t.clone().requires_grad_() for t in (x, w, a, bm)] + ([b.clone().requires_grad_()] if with_bias else [])
    y_ref = reference.lora_linear(leaves[0], leaves[1], leaves[4] if with_bias else None, leaves[2], leaves[3], 0.5)
    grads = torch.autograd.grad(y_ref, leaves, dy)
    for arch, i, cfg in _configs("lora"):
        args32 = [t.float() for t in (x, w)] + [b.float() if with_bias else None] + [t.float() for t in (a, bm)]
        y, xa = lora.lora_fwd(*args32, 0.5, config=cfg)
        dx, dw, db, da, dbm = lora.lora_bwd(dy.float(), args32[0], args32[1], args32[3], args32[4], xa, 0.5,
                                            True, with_bias, config=cfg)
        what = f"lora sm{arch} config {i} {cfg.kwargs}"
        assert_close(y, y_ref.detach(), y_ref.float(), what + ": y", 1.0)
        assert_close(xa, x @ a.T, xa, what + ": xa", 1.0)
        got = [dx, dw, da, dbm] + ([db] if with_bias else [])
        for name, t, ref in zip(("dx", "dweight", "dlora_a", "dlora_b", "dbias"), got, grads):
            assert_close(t, ref, ref.float(), f"{what}: {name}", 1.0)
        if not with_bias:
            assert db.numel() == 0


def test_lora_bwd_returns_empty_base_grads_when_not_needed():
    x, w, a, bm = torch.randn(6, 8), torch.randn(5, 8), torch.randn(2, 8), torch.randn(5, 2)
    tk = _tk()
    y, xa = torch.ops.babygpt_triton.lora_fwd(x, w, None, a, bm, 2.0)
    dx, dw, db, da, dbm = torch.ops.babygpt_triton.lora_bwd(torch.randn_like(y), x, w, a, bm, xa, 2.0, False, False)
    assert dw.numel() == 0 and db.numel() == 0 and dx.shape == x.shape and da.shape == a.shape
    assert tk.NAMESPACE == "babygpt_triton"


def test_schemas_match_csrc():
    """The namespace must be interchangeable with torch.ops.babygpt: same schema text."""
    text = (ROOT / "csrc" / "schemas.h").read_text()
    body = "".join(re.findall(r'"((?:[^"\\]|\\.)*)"', text))  # concatenated C string literals
    for name, schema in _tk().SCHEMAS.items():
        assert f"{name}{schema}" in body, f"{name}: {schema} is not the schema of csrc/schemas.h"
        assert str(getattr(torch.ops.babygpt_triton, name).default._schema) == f"babygpt_triton::{name}{schema}"


@pytest.mark.parametrize("op", ["attn_fwd", "lora_fwd"])
def test_opcheck(op):
    ops.causal_attention(torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8), torch.randn(1, 1, 2, 8), backend="triton")
    if op == "attn_fwd":
        args = tuple(torch.randn(1, 2, n, 40, requires_grad=True) for n in (17, 33, 33)) + (0.2, True)
        args = (args[0], args[1][:, :1], args[2][:, :1]) + args[3:]  # GQA, and k/v non-contiguous views
    else:
        args = (torch.randn(9, 20, requires_grad=True), torch.randn(12, 20, requires_grad=True),
                torch.randn(12, requires_grad=True), torch.randn(3, 20, requires_grad=True),
                torch.randn(12, 3, requires_grad=True), 0.7)
    torch.library.opcheck(getattr(torch.ops.babygpt_triton, op).default, args)


def test_strided_inputs_are_read_in_place():
    """q/k/v as views of one fused (B, T, 3, H, D) projection, the way nn modules produce them."""
    qkv = torch.randn(2, 19, 3, 2, 24)
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    got = ops.causal_attention(q, k, v, backend="triton")
    want = reference.attention(q.double(), k.double(), v.double(), 24 ** -0.5, True)
    assert_close(got, want, want.float(), "strided attention", 1.0)


def test_bf16_is_refused_in_the_interpreter_with_the_reason():
    q = torch.randn(1, 1, 4, 8, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="interpreter.*bfloat16"):
        ops.causal_attention(q, q, q, backend="triton")


def test_cpu_only_program_does_not_import_triton():
    code = ("import babygpt_ext, babygpt_ext.ops, sys, torch\n"
            "q = torch.randn(1, 2, 5, 8)\n"
            "o = babygpt_ext.ops.causal_attention(q, q, q)\n"
            "y = babygpt_ext.ops.lora_linear(torch.randn(3, 8), torch.randn(4, 8), None, torch.randn(2, 8),"
            " torch.randn(4, 2), 1.0)\n"
            "assert o.shape == q.shape and y.shape == (3, 4)\n"
            "ours = sorted(m for m in sys.modules if m.startswith('babygpt_ext.kernels'))\n"
            "assert not ours, f'the CPU path imported {ours}'\n"
            "assert 'triton' not in sys.modules, 'the CPU path imported triton'\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", "BABYGPT_BACKEND")}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]


def test_prune_keeps_configs_at_the_head_dims_they_were_measured_at():
    from babygpt_ext.kernels.triton import configs as C
    for family in ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq"):
        for arch in (80, 90):
            full = C.configs(family, arch)
            assert full[0].head_dims is None, "the first config is gpu-report's: it must suit every head dim"
            for d in (16, 32, 64, 128):
                kept = C.prune_for_head_dim(full, {}, BLOCK_D=d)
                bucket = 64 if d <= 64 else 128
                assert kept[0] is full[0] and kept == [c for c in full if c.head_dims in (None, (bucket,))]
                with_dropout = C.prune_for_head_dim(full, {}, BLOCK_D=d, DROPOUT=True)
                assert with_dropout == [c for c in kept if c.dropout_dims is None or bucket in c.dropout_dims]
                assert with_dropout, f"{family} sm_{arch} offers no config for dropout at D = {d}"
            kept = C.prune_for_head_dim(full, {}, BLOCK_D=256)
            assert kept and all(c.kwargs["BLOCK_M"] * c.kwargs["BLOCK_N"] <= 64 * 64 for c in kept)
            assert all(c.head_dims is None for c in kept)
