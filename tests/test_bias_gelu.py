"""bias_gelu on every backend against the float64 reference and the eager composition (the MLP's
addmm bias + nn.GELU): output and both gradients, odd sizes, no bias, determinism, the fused MLP."""

import pytest
import torch
import torch.nn.functional as F

from babygpt_ext import ops
from babygpt_ext.ops import reference
from babygpt_ext.ops.backends import COMPILED
from conftest import CPU_BACKENDS, backend_param, dtypes_for, takes
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

GELU_BACKENDS = [b for b in CPU_BACKENDS if "bias_gelu" in ops.BACKENDS[b].impls]
# (lead shape of x, F, bias): F not a multiple of any vector width, a single row (a decoding
# step), rows spanning several parts of the bias-gradient sum with a ragged last one.
SHAPES = [((1,), 1, True), ((3, 5), 7, True), ((1, 1), 768, True), ((2, 65), 37, False), ((130,), 512, True),
          ((1100,), 24, True)]
CASES = [backend_param("bias_gelu", b, dt, 0, s, id=f"{b}-x{'x'.join(map(str, s[0]))}-F{s[1]}{'-bias' * s[2]}-"
                       f"{str(dt)[6:]}") for b in GELU_BACKENDS for s in SHAPES for dt in dtypes_for(b, "bias_gelu")]


def make_inputs(shape):
    lead, f, bias = shape
    # Pre-activations of the size a GPT MLP sees (|h| up to ~4), plus both tails and zero.
    x = torch.randn(*lead, f, dtype=torch.float64) * 1.5
    x.view(-1)[:3] = torch.tensor([-9.0, 0.0, 9.0], dtype=torch.float64)[:x.numel()]
    return x, torch.randn(f, dtype=torch.float64) if bias else None


def run(fn, inputs, dy):
    leaves = [None if t is None else t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return out.detach(), torch.autograd.grad(out, [t for t in leaves if t is not None], dy)


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_matches_float64_reference_and_eager(backend, shape, dtype):
    base = make_inputs(shape)
    dy64 = torch.randn(*shape[0], shape[1], dtype=torch.float64)
    ref, ref_grads = run(reference.bias_gelu, base, dy64)
    low = [None if t is None else t.to(dtype) for t in base]
    eager, eager_grads = run(reference.bias_gelu, low, dy64.to(dtype))
    out, grads = run(lambda x, b: ops.bias_gelu(x, b, backend=backend), low, dy64.to(dtype))
    assert_close(out, ref, eager, "y", FWD_FACTOR)
    for name, g, r, e in zip(["dx", "dbias"], grads, ref_grads, eager_grads):
        assert_close(g, r, e, name, GRAD_FACTOR)


def test_the_composition_it_replaces_is_the_reference():
    # What nn/block.py's MLP computed before the fusion: Linear (bias inside addmm), then nn.GELU.
    lin, x = torch.nn.Linear(16, 24).double(), torch.randn(5, 16, dtype=torch.float64)
    torch.testing.assert_close(reference.bias_gelu(F.linear(x, lin.weight), lin.bias), torch.nn.GELU()(lin(x)))


# Not eager: that is ATen's own float32 GELU, whose gelu(inf) depends on its vector path (inf on
# AVX2, NaN on AVX-512, as measured on AMD EPYC Zen 3 and Zen 5); float64 gives inf everywhere.
# bf16 is read and written in place by the CPU kernels (rounded on the store, where a NaN's low
# payload bits must not round it into inf).
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("backend", [b for b in GELU_BACKENDS if b != "eager"])
def test_non_finite_values_propagate_as_in_float64(backend, dtype):
    if not takes(backend, "bias_gelu", dtype):
        pytest.skip(f"{backend} has no {dtype} bias_gelu")
    x = torch.tensor([[float("nan"), float("inf"), -float("inf"), 1.0] * 5]).to(dtype)  # a full vector and a tail
    torch.testing.assert_close(ops.bias_gelu(x, None, backend=backend), reference.bias_gelu(x.double(), None).to(dtype),
                               equal_nan=True)


@pytest.mark.parametrize("backend", [b for b in GELU_BACKENDS if takes(b, "bias_gelu", torch.float64)])
def test_gradcheck_float64(backend):
    x, b = (t.requires_grad_() for t in make_inputs(((3,), 11, True)))
    assert torch.autograd.gradcheck(lambda x, b: ops.bias_gelu(x, b, backend=backend), (x, b))


@pytest.mark.parametrize("backend", [b for b in GELU_BACKENDS if b in COMPILED])
def test_double_backward_raises_a_clear_error(backend):
    x, b = (t.float().requires_grad_() for t in make_inputs(((4,), 8, True)))
    (gx,) = torch.autograd.grad(ops.bias_gelu(x, b, backend=backend).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through bias_gelu is not supported"):
        torch.autograd.grad(gx.sum(), (x, b))


@pytest.mark.parametrize("backend", GELU_BACKENDS)
def test_only_the_inputs_that_want_a_gradient_get_one(backend):
    x, b = (t.float() for t in make_inputs(((4,), 8, True)))
    b.requires_grad_()
    ops.bias_gelu(x, b, backend=backend).sum().backward()
    assert x.grad is None and b.grad is not None
    x.requires_grad_(), b.requires_grad_(False)
    ops.bias_gelu(x, b, backend=backend).sum().backward()
    assert x.grad is not None


@pytest.mark.parametrize("backend", GELU_BACKENDS)
def test_zero_rows_give_an_empty_output(backend):
    assert ops.bias_gelu(torch.randn(0, 3, 8), torch.randn(8), backend=backend).shape == (0, 3, 8)


def test_bad_input_names_the_argument_and_the_shapes():
    with pytest.raises(ValueError, match=r"x must be \(\.\.\., F\).*x \(4, 8\), bias \(7,\)"):
        ops.bias_gelu(torch.randn(4, 8), torch.randn(7))
    with pytest.raises(TypeError, match="bias has dtype torch.float64 but x has torch.float32"):
        ops.bias_gelu(torch.randn(4, 8), torch.randn(8, dtype=torch.float64))
    with pytest.raises(ValueError, match="bias must be 1-D"):
        ops.bias_gelu(torch.randn(4, 8), torch.randn(1, 8))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_kernel_is_deterministic_across_calls_and_thread_counts(dtype):
    """Bit-identical output and gradients with 1 vs 2 threads: the bias gradient is summed in parts
    fixed by the row count, added in order."""
    if "cpu" not in GELU_BACKENDS:
        pytest.skip("the cpu backend is unavailable here (babygpt_ext._C is not built)")
    inputs = [t.to(dtype) for t in make_inputs(((1100,), 300, True))]
    dy = torch.randn(1100, 300).to(dtype)
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            results.append(run(lambda x, b: ops.bias_gelu(x, b, backend="cpu"), inputs, dy))
    finally:
        torch.set_num_threads(threads)
    (y0, g0), rest = results[0], results[1:]
    for y, g in rest:
        assert torch.equal(y, y0) and all(torch.equal(a, b) for a, b in zip(g, g0))
