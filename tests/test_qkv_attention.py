"""qkv_attention (a GPT layer's attention from its fused projection) on every backend: against the
float64 reference, and on the cpu backend, whose kernels read and write the (B, T, ·) layouts in
place, bit for bit the same as causal_attention on the split heads (the same kernels)."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops.qkv_attention_op import merge_heads, split_heads
from conftest import CPU_BACKENDS, SLOW_BACKENDS, backend_param, dtypes_for
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

# (B, T, H, Hkv, D): odd T and D, GQA and MQA, one position, a T over two query and key blocks.
SHAPES_FULL = [(1, 1, 1, 1, 1), (2, 17, 4, 2, 59), (3, 64, 4, 4, 32), (1, 129, 4, 1, 16), (2, 33, 2, 2, 128)]
SHAPES_SMALL = [(1, 1, 1, 1, 1), (1, 17, 4, 2, 8), (2, 9, 2, 2, 16)]


def shapes_for(backend):
    return SHAPES_SMALL if backend in SLOW_BACKENDS else SHAPES_FULL


def shape_id(s):
    return "B{}T{}H{}kv{}D{}".format(*s)


CASES = [backend_param("qkv_attention", b, dt, s[4], s, id=f"{b}-{shape_id(s)}-{str(dt)[6:]}")
         for b in CPU_BACKENDS for s in shapes_for(b) for dt in dtypes_for(b, "qkv_attention")]


def make_qkv(shape, dtype=torch.float64):
    b, t, h, hkv, d = shape
    return torch.randn(b, t, (h + 2 * hkv) * d, dtype=torch.float64).to(dtype)


def out_and_grad(fn, qkv, dout):
    leaf = qkv.detach().clone().requires_grad_()
    out = fn(leaf)
    (grad,) = torch.autograd.grad(out, leaf, dout)
    return out.detach(), grad


def split_then_attend(h, hkv, backend, **kw):
    """The composition a GPT layer writes by hand: split, transpose, attend, merge the heads."""
    def run(qkv):
        return merge_heads(ops.causal_attention(*split_heads(qkv, h, hkv), backend=backend, **kw))
    return run


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_matches_float64_reference(backend, shape, dtype):
    _, _, h, hkv, d = shape
    qkv64 = make_qkv(shape)
    dout64 = torch.randn(shape[0], shape[1], h * d, dtype=torch.float64)
    ref, ref_grad = out_and_grad(split_then_attend(h, hkv, "eager"), qkv64, dout64)
    low, dout = qkv64.to(dtype), dout64.to(dtype)
    eager, eager_grad = out_and_grad(split_then_attend(h, hkv, "eager"), low, dout)
    out, grad = out_and_grad(lambda x: ops.qkv_attention(x, h, hkv, backend=backend), low, dout)
    assert_close(out, ref, eager, "o", FWD_FACTOR)
    assert_close(grad, ref_grad, eager_grad, "dqkv", GRAD_FACTOR)


CPU_CASES = [pytest.param(s, dt, id=f"{shape_id(s)}-{str(dt)[6:]}") for s in SHAPES_FULL
             for dt in (torch.float32, torch.bfloat16, torch.float16, torch.float64)]


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the cpu backend (babygpt_ext._C) is not built here")
@pytest.mark.parametrize("shape,dtype", CPU_CASES)
@pytest.mark.parametrize("dropout_p", [0.0, 0.2], ids=["no-dropout", "dropout"])
def test_cpu_in_place_layouts_equal_the_split_heads_call_bit_for_bit(shape, dtype, dropout_p):
    """Output and gradient of qkv from the kernels writing in place equal, bit for bit, the kernels
    on the split heads followed by autograd's re-assembly: only the layout of the writes differs."""
    _, _, h, hkv, d = shape
    qkv, dout = make_qkv(shape, dtype), torch.randn(shape[0], shape[1], h * d).to(dtype)
    out, grad = out_and_grad(lambda x: ops.qkv_attention(x, h, hkv, dropout_p=dropout_p, seed=7, backend="cpu"),
                             qkv, dout)
    out_s, grad_s = out_and_grad(split_then_attend(h, hkv, "cpu", dropout_p=dropout_p, seed=7), qkv, dout)
    assert out.is_contiguous() and grad.is_contiguous()
    assert torch.equal(out, out_s) and torch.equal(grad, grad_s)


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the cpu backend (babygpt_ext._C) is not built here")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_is_deterministic_across_thread_counts(dtype):
    shape = (1, 300, 2, 1, 64)  # B·Hkv = 1: the backward splits the keys into parts
    qkv, dout = make_qkv(shape, dtype), torch.randn(1, 300, 128).to(dtype)
    threads = torch.get_num_threads()
    try:
        runs = []
        for n in (1, threads, threads):
            torch.set_num_threads(n)
            runs.append(out_and_grad(lambda x: ops.qkv_attention(x, 2, 1, backend="cpu"), qkv, dout))
    finally:
        torch.set_num_threads(threads)
    for out, grad in runs[1:]:
        assert torch.equal(out, runs[0][0]) and torch.equal(grad, runs[0][1])


@pytest.mark.skipif("cpu" not in CPU_BACKENDS, reason="the cpu backend (babygpt_ext._C) is not built here")
@pytest.mark.parametrize("layout", ["slice", "time-major", "strided-last-axis"])
def test_cpu_reads_a_strided_qkv_and_any_dout(layout):
    """qkv as a slice of a wider tensor (rows strided), time-major (T, B, ·) transposed, or with a
    strided last axis; dout expanded (stride 0, as from .sum())."""
    width = 3 * 4 * 8
    base = {"slice": lambda: torch.randn(2, 17, width + 5)[:, :, 5:],
            "time-major": lambda: torch.randn(17, 2, width).transpose(0, 1),
            "strided-last-axis": lambda: torch.randn(2, 17, width, 2)[..., 0]}[layout]()
    qkv = base.detach().requires_grad_()
    out = ops.qkv_attention(qkv, 4, backend="cpu")
    out.sum().backward()
    qkv2 = base.detach().contiguous().requires_grad_()
    ref = split_then_attend(4, 4, "eager")(qkv2)
    ref.sum().backward()
    torch.testing.assert_close(out, ref)
    torch.testing.assert_close(qkv.grad, qkv2.grad)


@pytest.mark.parametrize("args,kwargs,error,match", [
    ((torch.randn(2, 3, 12, 4), 2), {}, ValueError, "qkv must be 3-D"),
    ((torch.randn(2, 3, 12).long(), 2), {}, TypeError, "qkv must be float16"),
    ((torch.randn(2, 3, 13), 2), {}, ValueError, r"\(B, T, 6 \* D\)"),
    ((torch.randn(2, 3, 12), 2.0), {}, TypeError, "n_head must be an int"),
    ((torch.randn(2, 3, 12), 0), {}, ValueError, "n_head must be at least 1"),
    ((torch.randn(2, 3, 12), 3, 2), {}, ValueError, "n_head=3 must be a multiple of n_kv_head=2"),
    ((torch.randn(2, 3, 12), 2), {"causal": 1}, TypeError, "causal must be a bool"),
])
def test_bad_arguments_name_what_is_wrong(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        ops.qkv_attention(*args, **kwargs)


def test_empty_batch_or_sequence_gives_an_empty_output():
    for b, t in ((0, 4), (2, 0)):
        out = ops.qkv_attention(torch.randn(b, t, 3 * 2 * 8, requires_grad=True), 2)
        assert out.shape == (b, t, 16)
        out.sum().backward()
