"""layer_norm on every backend against a float64 reference and the eager composition (nn.LayerNorm,
then the cast the next Linear makes under autocast): output and the three gradients, odd sizes,
with and without weight and bias, every input dtype, inside and outside autocast (the output
dtype), non-contiguous inputs, NaN rows, determinism, gradcheck, compile under autocast, and a GPT
whose fused LayerNorms give the losses and gradients of plain nn.LayerNorm modules."""

import pytest
import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from babygpt_ext import ops
from babygpt_ext.models.gpt import GPT, GPTConfig
from babygpt_ext.ops import reference
from babygpt_ext.ops.backends import COMPILED
from conftest import CPU_BACKENDS, backend_param, dtypes_for, takes
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close, bound_ratio

LN_BACKENDS = [b for b in CPU_BACKENDS if "layer_norm" in ops.BACKENDS[b].impls]
# (lead shape of x, C, weight, bias): C of one element, below one vector, one short of and one past
# a multiple of every vector width, GPT-2's 768; a single row (a decoding step), a few rows, and
# rows spanning several parts of the parameter-gradient sums with a ragged last part.
SHAPES = [((1,), 1, True, True), ((7,), 3, True, False), ((1000,), 127, True, True), ((2, 500), 129, True, True),
          ((7,), 768, True, True), ((1,), 768, False, False), ((1000,), 3, False, True), ((3, 5), 129, True, False)]
# (x dtype, autocast dtype or None): outside autocast the output is x's dtype; inside, the
# autocast dtype (a float32 residual stream is the training step's case).
MODES = [(dt, None) for dt in (torch.float32, torch.float16, torch.bfloat16)] + [
    (torch.float32, torch.bfloat16), (torch.bfloat16, torch.bfloat16), (torch.float32, torch.float16)]


def _mode_id(mode):
    dt, ac = mode
    return str(dt)[6:] + (f"-autocast_{str(ac)[6:]}" if ac else "")


CASES = [backend_param("layer_norm", b, m[0], 0, s, m[1],
                       id=f"{b}-x{'x'.join(map(str, s[0]))}-C{s[1]}{'-w' * s[2]}{'-b' * s[3]}-{_mode_id(m)}")
         for b in LN_BACKENDS for s in SHAPES for m in MODES if m[0] in dtypes_for(b, "layer_norm")]


def make_inputs(shape, dtype, param_dtype=torch.float32):
    """x of the given dtype, mean and spread of a residual stream (|mean| well above zero, so the
    variance is not the mean square), and float32 parameters (a model's, under autocast too)."""
    lead, c, weight, bias = shape
    x = (torch.randn(*lead, c, dtype=torch.float64) * 2.0 + 3.0).to(dtype)
    w = (1.0 + 0.5 * torch.randn(c, dtype=torch.float64)).to(param_dtype) if weight else None
    b = torch.randn(c, dtype=torch.float64).to(param_dtype) if bias else None
    return x, w, b


U32 = 2.0 ** -24  # unit roundoff of float32


def conditioning_floors(x, w, dy, eps=1e-5):
    """{gradient name: floor} of the float32 rule for one call (float64 inputs): x − mean is exact up
    to u·(|x| + |mean|), which rstd amplifies, so xhat carries e = u·rstd·(|x| + |mean|) of noise
    that no float32 LayerNorm avoids. It matters where var << eps (C = 1: xhat is exactly 0 but
    rstd = eps^-1/2 ≈ 316); elsewhere it is far below the relative part of the rule."""
    mean = x.mean(-1, keepdim=True)
    rstd = (x.var(-1, unbiased=False, keepdim=True) + eps).rsqrt()
    e = U32 * rstd * (x.abs() + mean.abs())  # (N, C)
    xhat = (x - mean) * rstd
    wabs = torch.ones(x.shape[-1], dtype=x.dtype) if w is None else w.abs()
    g = dy * (1 if w is None else w)
    c2 = (g * xhat).mean(-1, keepdim=True)
    # dx = rstd·(g − mean(g) − xhat·c2): the rounding of its terms, and xhat's noise through c2
    dx = rstd * (U32 * (g.abs() + g.mean(-1, keepdim=True).abs()) + e * c2.abs()
                 + xhat.abs() * (g.abs() * e).mean(-1, keepdim=True))
    rows = lambda t: t.reshape(-1, x.shape[-1])  # noqa: E731
    return {"y": (wabs * e).norm().item(), "dx": dx.norm().item(),
            "dweight": (rows(dy.abs()) * rows(e)).sum(0).norm().item(), "dbias": 0.0}


def check(out, ref, eager, name, factor, floors):
    """assert_close, with the conditioning floor of this call for float32 results. A float32
    parameter gradient of a 16-bit x also passes within factor x eager's own error: eager's mixed-
    dtype backward is not float32-accurate there (it misses the float32 rule ~30x for fp16 x)."""
    if out.dtype != torch.float32:
        return assert_close(out, ref, eager, name, factor)
    assert out.shape == ref.shape and out.dtype == eager.dtype and torch.isfinite(out).all(), name
    ratio, why = bound_ratio(out, ref, eager, factor, floors[name])
    err, eager_err = (out.double() - ref).norm().item(), (eager.double() - ref).norm().item()
    assert ratio <= 1.0 or err <= factor * eager_err, f"{name}: {why}, and > {factor}x eager's {eager_err:.3e}"


def run(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, [t for t in leaves if t is not None], dy)


def autocast(dtype):
    return torch.autocast("cpu", dtype=dtype, enabled=dtype is not None)


def as_float64(t):
    return None if t is None else t.double()


@pytest.mark.parametrize("backend,shape,autocast_dtype,dtype", CASES)
def test_matches_float64_reference_and_eager(backend, shape, autocast_dtype, dtype):
    x, w, b = make_inputs(shape, dtype)
    out_dtype = autocast_dtype or dtype
    dy = torch.randn(*shape[0], shape[1], dtype=torch.float64).to(out_dtype)
    # The reference sees exactly the (rounded) numbers the op sees, in float64.
    ref, ref_grads = run(lambda x, w, b: reference.layer_norm(x, w, b, 1e-5, torch.float64),
                         [as_float64(t) for t in (x, w, b)], dy.double())
    with autocast(autocast_dtype):
        eager, eager_grads = run(lambda x, w, b: reference.layer_norm(x, w, b, 1e-5, out_dtype), (x, w, b), dy)
        out, grads = run(lambda x, w, b: ops.layer_norm(x, w, b, 1e-5, backend=backend), (x, w, b), dy)
    assert out.dtype == out_dtype
    floors = conditioning_floors(x.double(), as_float64(w), dy.double())
    check(out, ref, eager, "y", FWD_FACTOR, floors)
    names = ["dx"] + ["dweight"] * (w is not None) + ["dbias"] * (b is not None)
    for name, g, r, e in zip(names, grads, ref_grads, eager_grads):
        check(g, r, e, name, GRAD_FACTOR, floors)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_parameters_in_x_dtype(backend):
    """bf16 weight and bias with a bf16 x (a model cast to bf16 whole): gradients in bf16 too."""
    x, w, b = make_inputs(((9,), 33, True, True), torch.bfloat16, torch.bfloat16)
    dy = torch.randn(9, 33).bfloat16()
    out, grads = run(lambda x, w, b: ops.layer_norm(x, w, b, backend=backend), (x, w, b), dy)
    eager, eager_grads = run(lambda x, w, b: reference.layer_norm(x, w, b, 1e-5, torch.bfloat16), (x, w, b), dy)
    ref, ref_grads = run(lambda x, w, b: reference.layer_norm(x, w, b, 1e-5, torch.float64),
                         [as_float64(t) for t in (x, w, b)], dy.double())
    assert_close(out, ref, eager, "y", FWD_FACTOR)
    for name, g, r, e in zip(["dx", "dweight", "dbias"], grads, ref_grads, eager_grads):
        assert g.dtype == torch.bfloat16
        assert_close(g, r, e, name, GRAD_FACTOR)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_output_dtype_follows_autocast(backend):
    x, w, b = make_inputs(((2, 3), 8, True, True), torch.float32)
    assert ops.layer_norm(x, w, b, backend=backend).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ops.layer_norm(x, w, b, backend=backend).dtype == torch.bfloat16
        assert ops.layer_norm(x.half(), w, b, backend=backend).dtype == torch.bfloat16
        # autocast never casts float64, so a float64 LayerNorm output stays float64
        assert ops.layer_norm(x.double(), w.double(), b.double(), backend=backend).dtype == torch.float64
        with torch.autocast("cpu", enabled=False):
            assert ops.layer_norm(x, w, b, backend=backend).dtype == torch.float32
    assert ops.layer_norm(x.bfloat16(), w, b, backend=backend).dtype == torch.bfloat16


def test_the_compiled_op_is_not_recast_by_autocast():
    """The kernel's output dtype is its argument, inside autocast as outside: autocast has no kernel
    for custom ops, so it casts neither the inputs nor the output. And the public op under autocast
    is the kernel asked for the autocast dtype."""
    fwd = torch.ops.babygpt.layer_norm_fwd
    x, w, b = make_inputs(((5,), 24, True, True), torch.float32)
    outside = fwd(x, w, b, 1e-5, torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = fwd(x, w, b, 1e-5, torch.float32)
        public = ops.layer_norm(x, w, b, backend="cpu")
    assert inside[0].dtype == torch.float32 and all(torch.equal(i, o) for i, o in zip(inside, outside))
    assert torch.equal(public, fwd(x, w, b, 1e-5, torch.bfloat16)[0])


def test_bf16_output_is_the_float32_output_rounded_once():
    x, w, b = make_inputs(((64,), 200, True, True), torch.float32)
    fwd = torch.ops.babygpt.layer_norm_fwd
    assert torch.equal(fwd(x, w, b, 1e-5, torch.bfloat16)[0], fwd(x, w, b, 1e-5, torch.float32)[0].bfloat16())


@pytest.mark.parametrize("backend", [b for b in LN_BACKENDS if takes(b, "layer_norm", torch.float64)])
@pytest.mark.parametrize("params", ["weight-bias", "weight", "none"])
def test_gradcheck_float64(backend, params):
    x, w, b = make_inputs(((3,), 11, params != "none", params == "weight-bias"), torch.float64, torch.float64)
    inputs = tuple(t.requires_grad_() for t in (x, w, b) if t is not None)

    def fn(x, *p):
        w = p[0] if params != "none" else None
        return ops.layer_norm(x, w, p[1] if params == "weight-bias" else None, backend=backend)
    assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_non_contiguous_inputs_give_the_contiguous_results(backend):
    base = torch.randn(129, 40) * 2 + 1  # x (40, 129) as a transposed view
    w, b = torch.randn(129), torch.randn(129)
    dy = torch.randn(40, 129)
    views = [base.t(), torch.randn(2, 129, 20).permute(0, 2, 1), torch.randn(40, 258)[:, ::2]]
    for x in views:
        assert not x.is_contiguous()
        dyv = dy.reshape(x.shape) if x.shape != dy.shape else dy
        got = run(lambda x, w, b: ops.layer_norm(x, w, b, backend=backend), (x, w, b), dyv)
        want = run(lambda x, w, b: ops.layer_norm(x, w, b, backend=backend), (x.contiguous(), w, b), dyv)
        assert torch.equal(got[0], want[0]) and all(torch.equal(g, h) for g, h in zip(got[1], want[1]))


@pytest.mark.parametrize("backend", [b for b in LN_BACKENDS if b != "eager"])
def test_nan_stays_in_its_row(backend):
    x, w, b = make_inputs(((9,), 37, True, True), torch.float32)
    x_nan = x.clone()
    x_nan[4, 5] = float("nan")
    dy = torch.randn(9, 37)
    clean, (dx_clean, _, _) = run(lambda x, w, b: ops.layer_norm(x, w, b, backend=backend), (x, w, b), dy)
    dirty, (dx_dirty, _, _) = run(lambda x, w, b: ops.layer_norm(x, w, b, backend=backend), (x_nan, w, b), dy)
    assert dirty[4].isnan().all() and dx_dirty[4].isnan().all()
    rest = [r for r in range(9) if r != 4]
    assert torch.equal(dirty[rest], clean[rest]) and torch.equal(dx_dirty[rest], dx_clean[rest])
    with torch.autocast("cpu", dtype=torch.bfloat16):  # NaN survives the rounding to bf16
        assert ops.layer_norm(x_nan, w, b, backend=backend)[4].isnan().all()


@pytest.mark.parametrize("backend", [b for b in LN_BACKENDS if b in COMPILED])
def test_double_backward_raises_a_clear_error(backend):
    x, w, b = (t.requires_grad_() for t in make_inputs(((4,), 8, True, True), torch.float32))
    (gx,) = torch.autograd.grad(ops.layer_norm(x, w, b, backend=backend).square().sum() * x.sum(), x,
                                create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through layer_norm is not supported"):
        torch.autograd.grad(gx.sum(), (x, w, b))


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_only_the_inputs_that_want_a_gradient_get_one(backend):
    x, w, b = make_inputs(((4,), 8, True, True), torch.float32)
    w.requires_grad_()
    ops.layer_norm(x, w, b, backend=backend).square().sum().backward()
    assert x.grad is None and w.grad is not None and b.grad is None
    x.requires_grad_(), b.requires_grad_(), w.requires_grad_(False)
    ops.layer_norm(x, w, b, backend=backend).square().sum().backward()
    assert x.grad is not None and b.grad is not None


@pytest.mark.parametrize("backend", LN_BACKENDS)
def test_zero_rows_give_an_empty_output(backend):
    assert ops.layer_norm(torch.randn(0, 3, 8), torch.randn(8), None, backend=backend).shape == (0, 3, 8)


def test_bad_input_names_the_argument_and_the_shapes():
    with pytest.raises(ValueError, match=r"weight must be \(C,\) with C = x.shape\[-1\]; got x \(4, 8\), weight \(7,\)"):
        ops.layer_norm(torch.randn(4, 8), torch.randn(7), None)
    with pytest.raises(TypeError, match=r"bias has dtype torch.float64 but x has torch.float32.*bias.float\(\)"):
        ops.layer_norm(torch.randn(4, 8), torch.randn(8), torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="weight must be 1-D"):
        ops.layer_norm(torch.randn(4, 8), torch.randn(1, 8), None)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        ops.layer_norm(torch.randn(4, 8), None, None, -1.0)
    with pytest.raises(TypeError, match="x must be float16, bfloat16, float32 or float64"):
        ops.layer_norm(torch.ones(4, 8, dtype=torch.int64), None, None)


@pytest.mark.parametrize("mode", [(torch.float32, None), (torch.bfloat16, None), (torch.float32, torch.bfloat16)],
                         ids=_mode_id)
def test_cpu_kernel_is_deterministic_across_calls_and_thread_counts(mode):
    """Bit-identical output and gradients with 1 vs 2 threads: the parameter gradients are summed
    in parts fixed by the row count, added in order."""
    dtype, ac = mode
    inputs = make_inputs(((1000,), 300, True, True), dtype)
    dy = torch.randn(1000, 300).to(ac or dtype)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            with autocast(ac):
                results.append(run(lambda x, w, b: ops.layer_norm(x, w, b, backend="cpu"), inputs, dy))
    finally:
        torch.set_num_threads(threads)
    (y0, g0), rest = results[0], results[1:]
    for y, g in rest:
        assert torch.equal(y, y0) and all(torch.equal(a, b) for a, b in zip(g, g0))


@pytest.mark.parametrize("backend", [b for b in LN_BACKENDS if b in ("cpu", "eager")])
def test_compiles_whole_under_autocast(backend):
    """torch.compile(fullgraph=True) of a LayerNorm + Linear under bf16 autocast: the output dtype is
    decided while tracing (dynamo folds the autocast state), and matches the eager call."""
    torch._dynamo.reset()
    x, w, b = (t.requires_grad_() for t in make_inputs(((3, 7), 16, True, True), torch.float32))
    lin = torch.randn(24, 16)

    def fn(x, w, b):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            h = ops.layer_norm(x, w, b, backend=backend)
            return h, torch.nn.functional.linear(h, lin).float().square().sum()

    h, loss = fn(x, w, b)
    grads = torch.autograd.grad(loss, (x, w, b))
    hc, loss_c = torch.compile(fn, fullgraph=True, backend="aot_eager")(x, w, b)
    grads_c = torch.autograd.grad(loss_c, (x, w, b))
    assert h.dtype == hc.dtype == torch.bfloat16
    torch.testing.assert_close(hc, h)
    torch.testing.assert_close(loss_c, loss)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g)


# ------------------------------------------------------------------------------ in the model
class ModuleLayerNorm(nn.LayerNorm):
    """nn.LayerNorm by another class name: nn/block.py runs it as a module (the path before the fusion)."""


class RecordOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(func.name())
        return func(*args, **(kwargs or {}))


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=61, block_size=16, n_layer=2, n_head=2, n_embd=32))


def with_module_layer_norms(model):
    for m in model.modules():
        if type(m) is nn.LayerNorm:
            m.__class__ = ModuleLayerNorm
    return model


def loss_and_grads(model, idx, targets, dtype):
    model.zero_grad()
    with autocast(dtype):
        _, loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "autocast_bf16"])
def test_gpt_with_fused_layer_norm_matches_the_module_path(dtype, fresh_engine, monkeypatch):
    monkeypatch.setenv("BABYGPT_BACKEND", "cpu")  # the fused kernels, not whichever the engine measures faster
    idx, targets = torch.randint(0, 61, (3, 16)), torch.randint(0, 61, (3, 16))
    fused, plain = tiny_gpt(), with_module_layer_norms(tiny_gpt())
    assert list(fused.state_dict()) == list(plain.state_dict())  # same keys: checkpoints load either way
    with RecordOps() as rec:
        loss_f, grads_f = loss_and_grads(fused, idx, targets, dtype)
    # two per block and ln_f, forward and backward
    assert rec.names.count("babygpt::layer_norm_fwd") >= 5
    loss_p, grads_p = loss_and_grads(plain, idx, targets, dtype)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype is None else dict(rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(loss_f, loss_p, **tol)
    for name in grads_p:
        g_f, g_p = grads_f[name], grads_p[name]
        # norm-wise: a few bf16 roundings of the same value may land on either side of a tie
        err = ((g_f - g_p).norm() / g_p.norm().clamp_min(1e-12)).item()
        assert err <= (1e-5 if dtype is None else 2e-2), f"{name}: relative error {err:.2e}"
