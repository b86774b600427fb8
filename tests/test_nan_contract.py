"""The NaN/Inf contract of docs/design.md §2.7 on every backend, forward and every gradient: a masked
(query, key) pair contributes nothing even when q, k or v hold NaN/±Inf there; non-finite values at
visible pairs reach the rows that see them; every finite scale, zero and negative included, gives
finite results. Each case is checked twice: against plain facts of causality that need no
reference (which rows and gradients must stay finite), and element by element against the float64
reference (same non-finite outputs; every gradient the reference has finite is finite and close)."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import reference
from conftest import CPU_BACKENDS, backend_param
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

# (B, H, Hkv, Tq, Tk, D, causal): Tq = Tk with GQA, Tq < Tk (a KV cache), and cross attention,
# where every pair is visible.
SHAPES = [(1, 4, 2, 9, 9, 16, True), (2, 2, 2, 6, 11, 8, True), (1, 2, 1, 5, 7, 8, False)]
POISONS = {"nan": float("nan"), "+inf": float("inf"), "-inf": float("-inf")}
COLUMN = 3  # the poisoned element's head-dim index


def shape_id(s):
    return f"B{s[0]}H{s[1]}kv{s[2]}-Tq{s[3]}Tk{s[4]}-{'causal' if s[6] else 'full'}"


def poisoned_position(shape, tensor: str, where: str) -> int:
    """The time index to poison. k/v: 'future' is a key the first three queries do not see (the
    later ones do), 'visible' the key every query sees. q: 'future' is query 2, whose pairs with
    the later keys are masked; 'visible' the last query, which sees every key."""
    _, _, _, tq, tk, _, _ = shape
    if tensor == "q":
        return 2 if where == "future" else tq - 1
    return (tk - tq) + 3 if where == "future" else 0


def first_row_seeing(shape, key: int) -> int:
    _, _, _, tq, tk, _, causal = shape
    return max(0, key - (tk - tq)) if causal else 0


def make(shape, dtype):
    b, h, hkv, tq, tk, d, _ = shape
    g = torch.Generator().manual_seed(7)
    q, k, v = (torch.randn(b, n, t, d, generator=g, dtype=torch.float64) for n, t in ((h, tq), (hkv, tk), (hkv, tk)))
    return q, k, v, torch.randn(b, h, tq, d, generator=g, dtype=torch.float64)


def fwd_bwd(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    o = fn(*leaves)
    return (o.detach(), *torch.autograd.grad(o, leaves, dout))


def close_where_finite(out, ref, eager, what, factor):
    """out finite wherever ref is, and within the tolerance rule there."""
    keep = torch.isfinite(ref)
    assert torch.isfinite(out[keep]).all(), f"{what}: non-finite where the float64 reference is finite"
    if keep.any():
        assert_close(out[keep], ref[keep], eager[keep], what, factor)


def dtypes(backend, poison):
    """float32 everywhere, float16 for NaN; bfloat16 on the cpu backend, whose bf16 kernels are its own
    (the forward's products on the bf16 units at D = 16, the backward reading bf16 in place)."""
    return ((torch.float32, torch.float16) if poison == "nan" else (torch.float32,)) + \
        ((torch.bfloat16,) if backend == "cpu" else ())


CASES = [backend_param("attention", b, dt, s[5], s, t, where, name, id=f"{b}-{shape_id(s)}-{t}-{where}-{name}-{str(dt)[6:]}")
         for b in CPU_BACKENDS for s in SHAPES for t in "qkv" for where in ("future", "visible")
         for name in POISONS for dt in dtypes(b, name)]


@pytest.mark.parametrize("backend,shape,tensor,where,poison,dtype", CASES)
def test_nan_and_inf_obey_the_contract(backend, shape, tensor, where, poison, dtype):
    causal = shape[6]
    scale = shape[5] ** -0.5
    q, k, v, dout = make(shape, dtype)
    inputs = {"q": q, "k": k, "v": v}
    pos = poisoned_position(shape, tensor, where)
    inputs[tensor][:, :, pos, COLUMN] = POISONS[poison]
    base = [inputs[n] for n in "qkv"]

    ref = fwd_bwd(lambda *t: reference.attention(*t, scale, causal), base, dout)
    low = [t.to(dtype) for t in base]
    eager = fwd_bwd(lambda *t: reference.attention(*t, scale, causal), low, dout.to(dtype))
    got = fwd_bwd(lambda *t: ops.causal_attention(*t, causal=causal, backend=backend), low, dout.to(dtype))
    o, dq, dk, dv = got

    # Causality without a reference: what the poisoned position cannot reach stays finite.
    if causal and tensor in "kv":
        blind = first_row_seeing(shape, pos)  # rows [0, blind) do not see the poisoned key
        assert blind > 0 or where == "visible"
        assert torch.isfinite(o[:, :, :blind]).all(), "a masked key reached an earlier row's output"
        assert torch.isfinite(dq[:, :, :blind]).all(), "a masked key reached an earlier row's dq"
        if tensor == "v":  # v does not enter the weights: dv is finite everywhere
            assert torch.isfinite(dv).all(), "a non-finite value reached dv"
    if causal and tensor == "q":
        sees_up_to = pos + shape[4] - shape[3]  # query pos sees keys <= this one
        assert torch.isfinite(dk[:, :, sees_up_to + 1:]).all(), "a query reached dk of a key it does not see"
        assert torch.isfinite(dv[:, :, sees_up_to + 1:]).all(), "a query reached dv of a key it does not see"
    rows_elsewhere = torch.ones(shape[3], dtype=torch.bool)
    if tensor == "q":
        rows_elsewhere[pos] = False
        assert torch.isfinite(o[:, :, rows_elsewhere]).all(), "a query's NaN/Inf reached another row"
        assert torch.isfinite(dq[:, :, rows_elsewhere]).all(), "a query's NaN/Inf reached another row's dq"
    # Propagation without a reference: a NaN reaches what sees it.
    if poison == "nan":
        seeing = slice(first_row_seeing(shape, pos), None) if tensor in "kv" else slice(pos, pos + 1)
        reached = o[:, :, seeing, COLUMN] if tensor == "v" else o[:, :, seeing]
        assert not torch.isfinite(reached).any(), "a visible NaN did not reach the outputs that see it"

    # Element by element against the float64 reference.
    assert torch.equal(torch.isfinite(o), torch.isfinite(ref[0])), "non-finite outputs differ from the reference"
    close_where_finite(o, ref[0], eager[0], "o", FWD_FACTOR)
    for name, g, r, e in zip(("dq", "dk", "dv"), got[1:], ref[1:], eager[1:]):
        close_where_finite(g, r, e, name, GRAD_FACTOR)


SCALES = [0.0, -0.3, -2.0]
SCALE_CASES = [backend_param("attention", b, dt, s[5], s, sc, id=f"{b}-{shape_id(s)}-scale{sc}-{str(dt)[6:]}")
               for b in CPU_BACKENDS for s in SHAPES for sc in SCALES
               for dt in (torch.float32,) + ((torch.bfloat16,) if b == "cpu" else ())]


@pytest.mark.parametrize("backend,shape,scale,dtype", SCALE_CASES)
def test_zero_and_negative_scales_give_finite_results(backend, shape, scale, dtype):
    causal = shape[6]
    q, k, v, dout = make(shape, dtype)
    ref = fwd_bwd(lambda *t: reference.attention(*t, scale, causal), (q, k, v), dout)
    low = [t.to(dtype) for t in (q, k, v)]
    eager = fwd_bwd(lambda *t: reference.attention(*t, scale, causal), low, dout.to(dtype))
    got = fwd_bwd(lambda *t: ops.causal_attention(*t, causal=causal, scale=scale, backend=backend), low,
                  dout.to(dtype))
    for name, g, r, e, f in zip(("o", "dq", "dk", "dv"), got, ref, eager, (FWD_FACTOR,) + (GRAD_FACTOR,) * 3):
        assert_close(g, r, e, name, f)  # finite, and within the tolerance rule
    if scale == 0.0:  # uniform weights: each output row is the mean of the values it sees
        counts = (reference.causal_mask(shape[3], shape[4]) if causal else torch.ones(shape[3], shape[4])).double()
        vv = v.repeat_interleave(shape[1] // shape[2], dim=1)
        torch.testing.assert_close(ref[0], (counts / counts.sum(-1, keepdim=True)) @ vv)
