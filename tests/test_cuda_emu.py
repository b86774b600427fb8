"""The csrc/cuda kernels under the CPU emulator in hostile schedules: every kernel re-run with the
threads of each block resumed in reverse and in random order, dynamic shared memory poisoned with
NaN bytes, against the float64 reference with the tolerance rule of docs/design.md §13.2.

The shared suite (test_attention.py, test_lora.py, ...) already runs backend cuda_emu in the
default (forward-order, poisoned) schedule; this file adds the schedules a missing __syncthreads /
__syncwarp or an unwritten shared tile would fail in, and checks the emulator config switch."""

import importlib.util

import pytest
import torch

from babygpt_ext.ops import reference
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("babygpt_ext._C_emu") is None,
    reason="babygpt_ext._C_emu is not built (build with BABYGPT_EXT_EMU=1 pip install --no-build-isolation -e .)")

SCHEDULES = [("reverse", 0), ("random", 1), ("random", 2024)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# (B, H, Hkv, Tq, Tk, D, causal): ragged tiles, GQA, Tq < Tk, non-causal, each head-dim bucket
# (64 / 128 / 256) and, for D = 200 in fp32, the two-warp tiles and the two-pass dK/dV.
ATTN = [(1, 2, 1, 17, 17, 59, True), (1, 2, 2, 3, 70, 8, True), (1, 1, 1, 65, 40, 16, False),
        (1, 1, 1, 9, 9, 130, True), (1, 1, 1, 33, 33, 200, True)]
LORA = [(7, 33, 65, 4, True), (70, 16, 9, 1, False)]  # (N, in, out, r, bias)


@pytest.fixture
def emu():
    import babygpt_ext._C_emu as emu_mod
    from babygpt_ext.ops.backends import compiled_ops
    saved = emu_mod.get_config()
    yield emu_mod, compiled_ops("cuda_emu")
    emu_mod.set_config(saved["order"], saved["seed"], saved["poison"], saved["workers"])


def test_config_switch_round_trips(emu):
    mod, _ = emu
    mod.set_config("random", 77, True, 1)
    assert mod.get_config() == {"order": "random", "seed": 77, "poison": True, "workers": 1}
    mod.set_config("reverse", 3, False, 0)  # workers 0 keeps the current value
    assert mod.get_config() == {"order": "reverse", "seed": 3, "poison": False, "workers": 1}
    with pytest.raises(ValueError, match="order"):
        mod.set_config("sideways", 0, True, 0)


def test_module_keeps_its_symbol_table():
    """cudaemu finds static __shared__ variables through the module's ELF .symtab (to poison them
    before every block); a build that strips _C_emu would quietly lose that check."""
    import struct

    import babygpt_ext._C_emu as emu_mod
    data = open(emu_mod.__file__, "rb").read()
    assert data[:4] == b"\x7fELF" and data[4] == 2, "expected a 64-bit ELF module"
    shoff, = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    types = [struct.unpack_from("<I", data, shoff + i * shentsize + 4)[0] for i in range(shnum)]
    assert 2 in types, f"{emu_mod.__file__} has no .symtab (SHT_SYMTAB): was it stripped?"


def _grads(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, dout, allow_unused=True)


@pytest.mark.parametrize("order,seed", SCHEDULES, ids=[f"{o}{s}" for o, s in SCHEDULES])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", ATTN, ids=lambda s: "B{}H{}kv{}-Tq{}Tk{}-D{}-{}".format(*s[:6], "c" if s[6] else "f"))
def test_attention_in_hostile_schedules(emu, shape, dtype, order, seed):
    mod, ops = emu
    mod.set_config(order, seed, True, 0)
    b, h, hkv, tq, tk, d, causal = shape
    base = [torch.randn(b, h, tq, d, dtype=torch.float64), torch.randn(b, hkv, tk, d, dtype=torch.float64),
            torch.randn(b, hkv, tk, d, dtype=torch.float64)]
    dout = torch.randn(b, h, tq, d, dtype=torch.float64)
    scale = d ** -0.5
    eager_fn = lambda q, k, v: reference.attention(q, k, v, scale, causal)  # noqa: E731
    ref, ref_g = _grads(eager_fn, base, dout)
    low = [t.to(dtype) for t in base]
    eager, eager_g = _grads(eager_fn, low, dout.to(dtype))
    out, g = _grads(lambda q, k, v: ops.attn_fwd(q, k, v, scale, causal)[0], low, dout.to(dtype))
    assert_close(out, ref, eager, f"o [{order}]", FWD_FACTOR)
    for name, x, r, e in zip(("dq", "dk", "dv"), g, ref_g, eager_g):
        assert_close(x, r, e, f"{name} [{order}]", GRAD_FACTOR)


@pytest.mark.parametrize("order,seed", SCHEDULES, ids=[f"{o}{s}" for o, s in SCHEDULES])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("shape", LORA, ids=lambda s: "N{}-in{}-out{}-r{}-{}".format(*s[:4], "b" if s[4] else "nob"))
def test_lora_in_hostile_schedules(emu, shape, dtype, order, seed):
    mod, ops = emu
    mod.set_config(order, seed, True, 0)
    n, fin, fout, r, has_bias = shape
    base = [torch.randn(n, fin, dtype=torch.float64), torch.randn(fout, fin, dtype=torch.float64),
            torch.randn(fout, dtype=torch.float64), torch.randn(r, fin, dtype=torch.float64),
            torch.randn(fout, r, dtype=torch.float64)]
    if not has_bias:
        base[2] = torch.zeros(0, dtype=torch.float64)  # placeholder, never used below
    dy = torch.randn(n, fout, dtype=torch.float64)
    scale = 0.75

    def fn(backend_ops):
        def run(x, w, bias, a, bm):
            bias = bias if has_bias else None
            if backend_ops is None:
                return reference.lora_linear(x, w, bias, a, bm, scale)
            return backend_ops.lora_fwd(x, w, bias, a, bm, scale)[0]
        return run

    ref, ref_g = _grads(fn(None), base, dy)
    low = [t.to(dtype) for t in base]
    eager, eager_g = _grads(fn(None), low, dy.to(dtype))
    out, g = _grads(fn(ops), low, dy.to(dtype))
    assert_close(out, ref, eager, f"y [{order}]", FWD_FACTOR)
    names = ("dx", "dweight", "dbias", "dlora_a", "dlora_b")
    for name, x, rr, e in zip(names, g, ref_g, eager_g):
        if name == "dbias" and not has_bias:
            continue
        assert_close(x, rr, e, f"{name} [{order}]", GRAD_FACTOR)


def test_nan_input_propagates_without_crash(emu):
    _, ops = emu
    q, k, v = (torch.randn(1, 1, 5, 8) for _ in range(3))
    q[0, 0, 2, 3] = float("nan")
    o, lse = ops.attn_fwd(q, k, v, 0.3, True)
    assert torch.isnan(o[0, 0, 2]).all() and torch.isnan(lse[0, 0, 2])
    assert torch.isfinite(o[0, 0, [0, 1, 3, 4]]).all()  # other rows are untouched by the NaN row


def test_kernel_refuses_head_dim_over_256(emu):
    _, ops = emu
    q = torch.randn(1, 1, 2, 257)
    with pytest.raises(RuntimeError, match="head dim"):
        ops.attn_fwd(q, q, q, 0.1, True)
