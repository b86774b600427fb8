"""Property tests (Hypothesis): random shapes against the float64 reference, random bad shapes
against the documented errors. Derandomised so CI sees the same examples every run."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from babygpt_ext import ops
from babygpt_ext.ops import reference
from conftest import CPU_BACKENDS, SLOW_BACKENDS
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

FAST = [b for b in CPU_BACKENDS if b not in SLOW_BACKENDS]


@st.composite
def attention_shapes(draw):
    hkv, group = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    causal = draw(st.booleans())
    tq = draw(st.integers(1, 40))
    tk = tq + draw(st.integers(0, 40)) if causal else draw(st.integers(1, 80))
    return draw(st.integers(1, 2)), hkv * group, hkv, tq, tk, draw(st.integers(1, 72)), causal


@pytest.mark.parametrize("backend", FAST)
@settings(max_examples=25, deadline=None, derandomize=True)
@given(shape=attention_shapes())
def test_random_shapes_match_float64_reference(backend, shape):
    b, h, hkv, tq, tk, d, causal = shape
    q64 = torch.randn(b, h, tq, d, dtype=torch.float64)
    k64, v64 = torch.randn(b, hkv, tk, d, dtype=torch.float64), torch.randn(b, hkv, tk, d, dtype=torch.float64)
    do = torch.randn(b, h, tq, d, dtype=torch.float64)

    def run(fn, dtype):
        leaves = [t.to(dtype).requires_grad_() for t in (q64, k64, v64)]
        out = fn(*leaves)
        return out.detach(), torch.autograd.grad(out, leaves, do.to(dtype))

    ref, ref_grads = run(lambda q, k, v: reference.attention(q, k, v, d ** -0.5, causal), torch.float64)
    eager, eager_grads = run(lambda q, k, v: reference.attention(q, k, v, d ** -0.5, causal), torch.float32)
    out, grads = run(lambda q, k, v: ops.causal_attention(q, k, v, causal=causal, backend=backend), torch.float32)
    assert_close(out, ref, eager, f"o {shape}", FWD_FACTOR)
    for name, g, r, e in zip(("dq", "dk", "dv"), grads, ref_grads, eager_grads):
        assert_close(g, r, e, f"{name} {shape}", GRAD_FACTOR)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(q_shape=st.lists(st.integers(1, 5), min_size=1, max_size=6),
       k_shape=st.lists(st.integers(1, 5), min_size=1, max_size=6), causal=st.booleans())
def test_random_bad_shapes_raise_value_error_before_any_kernel(q_shape, k_shape, causal):
    q, k = torch.randn(*q_shape), torch.randn(*k_shape)
    valid = (len(q_shape) == 4 and len(k_shape) == 4 and q_shape[0] == k_shape[0] and q_shape[3] == k_shape[3]
             and q_shape[1] % k_shape[1] == 0 and (not causal or q_shape[2] <= k_shape[2]))
    if valid:
        assert ops.causal_attention(q, k, k, causal=causal).shape == q.shape
    else:
        with pytest.raises(ValueError, match=r"q|k"):
            ops.causal_attention(q, k, k, causal=causal)
