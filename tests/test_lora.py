"""lora_linear on every backend against the float64 reference: output and every gradient."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import reference
from babygpt_ext.ops.backends import COMPILED
from conftest import CPU_BACKENDS, backend_param, dtypes_for, lora_shapes, takes
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close


def lora_id(s):
    lead, d_in, d_out, r, bias = s
    return f"x{'x'.join(map(str, lead))}-{d_in}to{d_out}-r{r}{'-bias' if bias else ''}"


LORA_BACKENDS = [b for b in CPU_BACKENDS if "lora" in ops.BACKENDS[b].impls]
CASES = [backend_param("lora", b, dt, 0, s, id=f"{b}-{lora_id(s)}-{str(dt)[6:]}")
         for b in LORA_BACKENDS for s in lora_shapes(b) for dt in dtypes_for(b, "lora")]


def make_inputs(shape):
    lead, d_in, d_out, r, bias = shape
    # Scaled like a real layer (unit-variance activations): the sums over d_in stay O(1).
    x = torch.randn(*lead, d_in, dtype=torch.float64)
    w = torch.randn(d_out, d_in, dtype=torch.float64) / d_in ** 0.5
    b = torch.randn(d_out, dtype=torch.float64) if bias else None
    a = torch.randn(r, d_in, dtype=torch.float64) / d_in ** 0.5
    bm = torch.randn(d_out, r, dtype=torch.float64) / r ** 0.5
    return x, w, b, a, bm


def run(fn, inputs, dy, trainable_base: bool):
    """Forward + backward; the base weight/bias are trainable or frozen (LoRA fine-tuning)."""
    grad_flags = (True, trainable_base, trainable_base, True, True)
    leaves = [None if t is None else t.detach().clone().requires_grad_(g) for t, g in zip(inputs, grad_flags)]
    out = fn(*leaves)
    wanted = [t for t in leaves if t is not None and t.requires_grad]
    return out.detach(), torch.autograd.grad(out, wanted, dy)


@pytest.mark.parametrize("trainable_base", [False, True], ids=["frozen-base", "trainable-base"])
@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_matches_float64_reference(backend, shape, dtype, trainable_base):
    scale = 2.0
    base = make_inputs(shape)
    dy64 = torch.randn(*shape[0], shape[2], dtype=torch.float64)
    ref_fn = lambda x, w, b, a, bm: reference.lora_linear(x, w, b, a, bm, scale)
    ref, ref_grads = run(ref_fn, base, dy64, trainable_base)
    low = [None if t is None else t.to(dtype) for t in base]
    eager, eager_grads = run(ref_fn, low, dy64.to(dtype), trainable_base)
    out, grads = run(lambda x, w, b, a, bm: ops.lora_linear(x, w, b, a, bm, scale, backend=backend),
                     low, dy64.to(dtype), trainable_base)
    assert_close(out, ref, eager, "y", FWD_FACTOR)
    assert len(grads) == len(ref_grads)
    names = ["dx"] + (["dweight"] + (["dbias"] if shape[4] else []) if trainable_base else []) + ["dlora_a", "dlora_b"]
    for name, g, r, e in zip(names, grads, ref_grads, eager_grads):
        assert_close(g, r, e, name, GRAD_FACTOR)


@pytest.mark.parametrize("backend", LORA_BACKENDS)
def test_frozen_base_gets_no_gradient(backend):
    x, w, b, a, bm = (t.float() if t is not None else None for t in make_inputs(((4,), 8, 6, 2, True)))
    a.requires_grad_(), bm.requires_grad_()
    ops.lora_linear(x, w, b, a, bm, 1.0, backend=backend).sum().backward()
    assert w.grad is None and b.grad is None and a.grad is not None and bm.grad is not None


F64_BACKENDS = [b for b in LORA_BACKENDS if takes(b, "lora", torch.float64)]


@pytest.mark.parametrize("backend", F64_BACKENDS)
def test_gradcheck_float64(backend):
    x, w, b, a, bm = (t.requires_grad_() for t in make_inputs(((3,), 5, 4, 2, True)))
    assert torch.autograd.gradcheck(lambda *t: ops.lora_linear(*t, 0.5, backend=backend), (x, w, b, a, bm))


@pytest.mark.parametrize("backend", [b for b in LORA_BACKENDS if b in COMPILED])
def test_double_backward_raises_a_clear_error(backend):
    x, w, b, a, bm = (t.float().requires_grad_() for t in make_inputs(((4,), 8, 6, 2, True)))
    y = ops.lora_linear(x, w, b, a, bm, 1.0, backend=backend)
    (gx,) = torch.autograd.grad(y.square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through lora is not supported"):
        torch.autograd.grad(gx.sum(), (x, a, bm))


@pytest.mark.parametrize("backend", LORA_BACKENDS)
def test_zero_tokens_give_an_empty_output(backend):
    x, w, b, a, bm = (t.float() for t in make_inputs(((0, 3), 8, 6, 2, True)))
    y = ops.lora_linear(x, w, b, a, bm, 1.0, backend=backend)
    assert y.shape == (0, 3, 6)


# Several row blocks with a ragged last one (the fused kernel), and one above csrc/cpu/lora.cpp's
# FUSED_MAX_MACS (ATen's GEMMs).
@pytest.mark.parametrize("shape", [((300,), 96, 200, 8, True), ((1100,), 512, 480, 8, True)], ids=lora_id)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_cpu_kernels_are_deterministic_across_calls_and_thread_counts(dtype, shape):
    """Bit-identical output and gradients over repeated calls and with 1 vs 2 threads (each output
    element is one fixed-order sum, however the rows are split between threads)."""
    if "cpu" not in CPU_BACKENDS:
        pytest.skip("the cpu backend is unavailable here (babygpt_ext._C is not built)")
    inputs = [t.to(dtype) for t in make_inputs(shape)]
    dy = torch.randn(*shape[0], shape[2]).to(dtype)
    fn = lambda x, w, b, a, bm: ops.lora_linear(x, w, b, a, bm, 2.0, backend="cpu")
    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 2):
            torch.set_num_threads(n)
            results.append(run(fn, inputs, dy, trainable_base=True))
    finally:
        torch.set_num_threads(threads)
    (y0, g0), rest = results[0], results[1:]
    for y, g in rest:
        assert torch.equal(y, y0)
        assert all(torch.equal(a, b) for a, b in zip(g, g0))
