"""causal_attention on every backend against the float64 reference: output and all gradients,
odd shapes, GQA, Tq != Tk, non-contiguous inputs, NaN propagation, causality."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import reference
from babygpt_ext.ops.backends import COMPILED
from conftest import CPU_BACKENDS, attn_id, attn_shapes, backend_param, dtypes_for, takes
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

CASES = [backend_param("attention", b, dt, s[5], s, id=f"{b}-{attn_id(s)}-{str(dt)[6:]}")
         for b in CPU_BACKENDS for s in attn_shapes(b) for dt in dtypes_for(b)]


@pytest.fixture(autouse=True)
def poison_uninitialised_memory():
    """torch.empty (and so every output a kernel allocates) comes back filled with NaN, so a kernel
    that leaves part of its output unwritten fails instead of passing on lucky zeros."""
    import torch.utils.deterministic as det
    old = (torch.are_deterministic_algorithms_enabled(), det.fill_uninitialized_memory)
    torch.use_deterministic_algorithms(True, warn_only=True)
    det.fill_uninitialized_memory = True
    yield
    torch.use_deterministic_algorithms(old[0])
    det.fill_uninitialized_memory = old[1]


def make_inputs(shape, transposed: bool):
    """float64 leaves q (B,H,Tq,D), k, v (B,Hkv,Tk,D). transposed: built as (B,T,H,D) and viewed
    as (B,H,T,D), the non-contiguous layout a model's head split produces."""
    b, h, hkv, tq, tk, d, _ = shape

    def make(heads, t):
        if transposed:
            return torch.randn(b, t, heads, d, dtype=torch.float64).transpose(1, 2)
        return torch.randn(b, heads, t, d, dtype=torch.float64)
    return make(h, tq), make(hkv, tk), make(hkv, tk)


def run_with_grads(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad(out, leaves, dout)
    return out.detach(), grads


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_matches_float64_reference(backend, shape, dtype):
    causal = shape[-1]
    base = make_inputs(shape, transposed=(shape[3] + shape[5]) % 2 == 1)
    scale = shape[5] ** -0.5
    ref, ref_grads = run_with_grads(lambda q, k, v: reference.attention(q, k, v, scale, causal), base,
                                    dout64 := torch.randn(*shape[:2], shape[3], shape[5], dtype=torch.float64))
    low = [t.to(dtype) for t in base]
    # The same rounding of the inputs for eager and for the backend: both start from `low`.
    eager, eager_grads = run_with_grads(lambda q, k, v: reference.attention(q, k, v, scale, causal), low,
                                        dout64.to(dtype))
    out, grads = run_with_grads(lambda q, k, v: ops.causal_attention(q, k, v, causal=causal, backend=backend),
                                low, dout64.to(dtype))
    assert_close(out, ref, eager, "o", FWD_FACTOR)
    for name, g, r, e in zip(("dq", "dk", "dv"), grads, ref_grads, eager_grads):
        assert_close(g, r, e, name, GRAD_FACTOR)


F64_BACKENDS = [b for b in CPU_BACKENDS if takes(b, "attention", torch.float64)]


@pytest.mark.parametrize("backend", F64_BACKENDS)
@pytest.mark.parametrize("tq,tk,causal", [(5, 5, True), (3, 7, True), (4, 6, False)])
def test_gradcheck_float64(backend, tq, tk, causal):
    q = torch.randn(1, 2, tq, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, tk, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, tk, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda q, k, v: ops.causal_attention(q, k, v, causal=causal, backend=backend),
                                    (q, k, v))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_in_one_query_stays_in_that_row(backend):
    q, k, v = (torch.randn(1, 2, 9, 16) for _ in range(3))
    q[0, 1, 4, 3] = float("nan")
    o = ops.causal_attention(q, k, v, backend=backend)
    assert torch.isnan(o[0, 1, 4]).all(), "a NaN in q must propagate to its own output row"
    o[0, 1, 4] = 0
    assert torch.isfinite(o).all(), "a NaN in one query row leaked into other rows"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_in_a_key_reaches_exactly_the_queries_that_see_it(backend):
    q, k, v = (torch.randn(1, 1, 8, 16) for _ in range(3))
    k[0, 0, 5, 0] = float("nan")
    o = ops.causal_attention(q, k, v, backend=backend)
    assert torch.isfinite(o[0, 0, :5]).all() and torch.isnan(o[0, 0, 5:]).all()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("tq", [8, 3])
def test_future_keys_do_not_change_the_past(backend, tq):
    """The seed's bug: softmax over the wrong axis lets position i see keys after i."""
    q = torch.randn(1, 2, tq, 16)
    k, v = torch.randn(1, 2, 8, 16), torch.randn(1, 2, 8, 16)
    o = ops.causal_attention(q, k, v, backend=backend)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1], v2[:, :, -1] = torch.randn(16) * 10, torch.randn(16) * 10  # change only the last key
    o2 = ops.causal_attention(q, k2, v2, backend=backend)
    assert torch.equal(o[:, :, :-1], o2[:, :, :-1]), "earlier queries changed when a later key changed"
    assert not torch.equal(o[:, :, -1], o2[:, :, -1]), "the last query must see the last key"


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_default_scale_is_inverse_sqrt_head_dim(backend):
    q, k, v = (torch.randn(1, 2, 6, 9) for _ in range(3))
    a = ops.causal_attention(q, k, v, backend=backend)
    b = ops.causal_attention(q, k, v, scale=9 ** -0.5, backend=backend)
    c = ops.causal_attention(q, k, v, scale=1.0, backend=backend)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("b,tq,tk,causal", [(0, 4, 4, True), (2, 0, 0, True), (2, 0, 5, True), (2, 3, 0, False)],
                         ids=["B0", "T0", "Tq0", "Tk0-full"])
def test_zero_size_batches_and_sequences_behave_like_sdpa(backend, b, tq, tk, causal):
    q = torch.randn(b, 4, tq, 8, requires_grad=True)
    k, v = (torch.randn(b, 2, tk, 8, requires_grad=True) for _ in range(2))
    o = ops.causal_attention(q, k, v, causal=causal, backend=backend)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal and tq == tk,
                                                                enable_gqa=True)
    assert o.shape == expected.shape == (b, 4, tq, 8)
    assert torch.equal(o, expected)  # empty, or (no keys to attend to) zeros
    grads = torch.autograd.grad(o.sum(), (q, k, v), allow_unused=True)
    assert [None if g is None else g.shape for g in grads] in ([q.shape, k.shape, v.shape], [q.shape, None, None])


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if b in COMPILED])
def test_double_backward_raises_a_clear_error(backend):
    """The backward kernels have no derivative: a second-order gradient must fail loudly, not be wrong."""
    q, k, v = (torch.randn(1, 2, 5, 8, requires_grad=True) for _ in range(3))
    o = ops.causal_attention(q, k, v, backend=backend)
    g_plain = torch.autograd.grad(o.square().sum(), q, retain_graph=True)[0]
    (g,) = torch.autograd.grad(o.square().sum(), q, create_graph=True)  # first order still works
    torch.testing.assert_close(g, g_plain)
    with pytest.raises(RuntimeError, match="double backward through attention is not supported.*backend='eager'"):
        torch.autograd.grad(g.sum(), (q, k, v))


def test_double_backward_through_the_eager_backend_matches_gradgradcheck():
    q, k, v = (torch.randn(1, 2, 4, 3, dtype=torch.float64, requires_grad=True) for _ in range(3))
    assert torch.autograd.gradgradcheck(lambda *t: ops.causal_attention(*t, backend="eager"), (q, k, v))
