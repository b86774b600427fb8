"""The csrc/cuda kernels under the CPU emulator in hostile schedules: every kernel re-run with the
threads of each block resumed in reverse and in random order, dynamic shared memory poisoned with
NaN bytes, against the float64 reference with the tolerance rule of docs/design.md §13.2.

The shared suite (test_attention.py, test_lora.py, ...) already runs backend cuda_emu in the
default (forward-order, poisoned) schedule; this file adds the schedules a missing __syncthreads /
__syncwarp or an unwritten shared tile would fail in, checks the emulator config switch, and that
the strided views a GPT layer hands over are read in place (no copy) with the same results."""

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


def _grads(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, leaves, dout, allow_unused=True)


def _assert_matches_reference(fn, ref_fn, base, dout, dtype, names, schedule):
    """fn on `base` rounded to dtype against ref_fn in float64, with eager in dtype as the yardstick;
    names: the output's, then one per input gradient (None: not checked)."""
    ref, ref_g = _grads(ref_fn, base, dout)
    low = [t.to(dtype) for t in base]
    eager, eager_g = _grads(ref_fn, low, dout.to(dtype))
    out, g = _grads(fn, low, dout.to(dtype))
    assert_close(out, ref, eager, f"{names[0]} [{schedule}]", FWD_FACTOR)
    for name, x, r, e in zip(names[1:], g, ref_g, eager_g):
        if name is not None:
            assert_close(x, r, e, f"{name} [{schedule}]", GRAD_FACTOR)


@pytest.fixture(params=SCHEDULES, ids=[f"{o}{s}" for o, s in SCHEDULES])
def hostile(request, emu):
    """The emulator's ops, run in a reverse or random thread order with poisoned shared memory."""
    mod, ops = emu
    order, seed = request.param
    mod.set_config(order, seed, True, 0)
    return ops, order


each_dtype = pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: str(d)[6:])


@each_dtype
@pytest.mark.parametrize("shape", ATTN, ids=lambda s: "B{}H{}kv{}-Tq{}Tk{}-D{}-{}".format(*s[:6], "c" if s[6] else "f"))
def test_attention_in_hostile_schedules(hostile, shape, dtype):
    ops, order = hostile
    b, h, hkv, tq, tk, d, causal = shape
    base = [torch.randn(b, h, tq, d, dtype=torch.float64), torch.randn(b, hkv, tk, d, dtype=torch.float64),
            torch.randn(b, hkv, tk, d, dtype=torch.float64)]
    dout = torch.randn(b, h, tq, d, dtype=torch.float64)
    scale = d ** -0.5
    _assert_matches_reference(lambda q, k, v: ops.attn_fwd(q, k, v, scale, causal)[0],
                              lambda q, k, v: reference.attention(q, k, v, scale, causal),
                              base, dout, dtype, ("o", "dq", "dk", "dv"), order)


@each_dtype
@pytest.mark.parametrize("shape", LORA, ids=lambda s: "N{}-in{}-out{}-r{}-{}".format(*s[:4], "b" if s[4] else "nob"))
def test_lora_in_hostile_schedules(hostile, shape, dtype):
    ops, order = hostile
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

    names = ("y", "dx", "dweight", "dbias" if has_bias else None, "dlora_a", "dlora_b")
    _assert_matches_reference(fn(ops), fn(None), base, dy, dtype, names, order)


def test_nan_input_propagates_without_crash(emu):
    _, ops = emu
    q, k, v = (torch.randn(1, 1, 5, 8) for _ in range(3))
    q[0, 0, 2, 3] = float("nan")
    o, lse, _ = ops.attn_fwd(q, k, v, 0.3, True)
    assert torch.isnan(o[0, 0, 2]).all() and torch.isnan(lse[0, 0, 2])
    assert torch.isfinite(o[0, 0, [0, 1, 3, 4]]).all()  # other rows are untouched by the NaN row


def test_kernel_refuses_head_dim_over_256(emu):
    _, ops = emu
    q = torch.randn(1, 1, 2, 257)
    with pytest.raises(RuntimeError, match="head dim"):
        ops.attn_fwd(q, q, q, 0.1, True)


def _gpt_layer_views(b, t, h, hkv, d, dtype):
    """q, k, v as a GPT layer makes them: one fused projection (B, T, (H + 2 Hkv) D) split, viewed as
    heads and transposed to (B, heads, T, D) -- rows contiguous, every other stride foreign."""
    qkv = torch.randn(b, t, (h + 2 * hkv) * d, dtype=dtype)
    q, k, v = qkv.split([h * d, hkv * d, hkv * d], dim=2)
    return tuple(x.view(b, t, -1, d).transpose(1, 2) for x in (q, k, v))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=lambda d: str(d)[6:])
@pytest.mark.parametrize("causal", [True, False], ids=["causal", "full"])
def test_gpt_layer_views_are_read_in_place(emu, dtype, causal):
    """The glue hands the kernels the strides of q, k, v and dO instead of copying them: no copy
    runs, and the results are bitwise those of contiguous copies (same values, same arithmetic)."""
    _, ops = emu
    q, k, v = _gpt_layer_views(2, 37, 4, 2, 24, dtype)
    assert not any(x.is_contiguous() for x in (q, k, v))
    dout = torch.randn(2, 37, 4, 24, dtype=dtype).transpose(1, 2)  # the gradient of y.transpose(1, 2)
    with torch.profiler.profile() as prof:
        o, lse, o_lo = ops.attn_fwd(q, k, v, 0.2, causal)
        grads = ops.attn_bwd(dout, q, k, v, o, lse, o_lo, 0.2, causal)
    copies = [e.name for e in prof.events() if e.name in ("aten::copy_", "aten::clone", "aten::contiguous")]
    assert not copies, f"the glue copied its inputs: {copies}"
    contiguous = [x.contiguous() for x in (q, k, v)]
    o_ref, lse_ref, o_lo_ref = ops.attn_fwd(*contiguous, 0.2, causal)
    grads_ref = ops.attn_bwd(dout.contiguous(), *contiguous, o_ref, lse_ref, o_lo_ref, 0.2, causal)
    for name, x, r in zip(("o", "lse", "dq", "dk", "dv"), (o, lse, *grads), (o_ref, lse_ref, *grads_ref)):
        assert torch.equal(x, r), f"{name} differs between the strided views and contiguous copies"


def test_inputs_with_strided_rows_are_copied_and_still_right(emu):
    """A last-dim stride != 1 is the one layout the kernels cannot read: the glue copies it."""
    _, ops = emu
    q, k, v = (torch.randn(1, 2, 9, 32)[..., ::2] for _ in range(3))
    assert q.stride(-1) == 2
    o, lse, _ = ops.attn_fwd(q, k, v, 0.25, True)
    o_ref, lse_ref, _ = ops.attn_fwd(q.contiguous(), k.contiguous(), v.contiguous(), 0.25, True)
    assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref)
