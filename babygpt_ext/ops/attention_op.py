"""The attention op as data: softmax(scale · q kᵀ + mask) v (layouts in csrc/schemas.h).

args: (q, k, v, scale, causal), q (B, H, Tq, D), k and v (B, Hkv, Tk, D).
"""

import operator

import torch

from . import reference, validate
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the saved statistics (lse, xa): float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _validate(q, k, v, causal, scale):
    return q, k, v, validate.attention_args(q, k, v, causal, scale), causal


def _key(q, k, v, scale, causal):
    b, h, tq, d = q.shape
    _, hkv, tk, _ = k.shape
    if b == 0 or tq == 0 or tk == 0:
        return None
    return ((q.requires_grad or k.requires_grad or v.requires_grad) and _grad_enabled(), q.dtype, q.device,
            d, h, hkv, causal, (tq - 1).bit_length(), (tk - 1).bit_length(), (b - 1).bit_length())


def _describe(key):
    d, h, hkv, causal, tq, tk, b = key
    return d, (("H", h), ("Hkv", hkv), ("causal", causal), ("Tq<=", 1 << tq), ("Tk<=", 1 << tk), ("B<=", 1 << b))


def _traced_facts(q, k, v, scale, causal):
    # operator.index makes dynamo specialise the graph on D (a symbolic D cannot be a constant of
    # the graph); sizes that change between calls, T and B, stay symbolic.
    return operator.index(q.shape[-1]), (("causal", causal),)


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)

    def mk(heads, t):
        return torch.randn(dims["B<="], heads, t, call.head_dim, generator=g).to(device, dtype).requires_grad_(
            requires_grad)
    return (mk(dims["H"], dims["Tq<="]), mk(dims["Hkv"], dims["Tk<="]), mk(dims["Hkv"], dims["Tk<="]),
            call.head_dim ** -0.5, dims["causal"])


def _fwd_fake(q, k, v, scale, causal):
    b, h, tq, _ = q.shape
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty((b, h, tq), dtype=acc_dtype(q.dtype))


def _bwd_fake(dout, q, k, v, o, lse, scale, causal):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, scale, causal = inputs
    o, lse = output
    ctx.save_for_backward(q, k, v, o, lse)
    ctx.scale, ctx.causal = scale, causal


def _backward(ns, ctx, do, _dlse):
    # lse is an internal statistic (the public API never returns it), so its gradient is always
    # zero and is ignored.
    q, k, v, o, lse = ctx.saved_tensors
    dq, dk, dv = ns.attn_bwd(do, q, k, v, o, lse, ctx.scale, ctx.causal)
    return dq, dk, dv, None, None


ATTENTION = OpSpec(
    name="attention", validate=_validate, reference=reference.attention, key=_key, describe=_describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "attn_fwd": "(Tensor q, Tensor k, Tensor v, float scale, bool causal) -> (Tensor o, Tensor lse)",
        "attn_bwd": ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, float scale, bool causal)"
                     " -> (Tensor dq, Tensor dk, Tensor dv)"),
    },
    fakes={"attn_fwd": _fwd_fake, "attn_bwd": _bwd_fake},
    forward="attn_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, q, k, v, scale, causal: ns.attn_fwd(q, k, v, scale, causal)[0])
