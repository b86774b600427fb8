"""The attention op as data: softmax(scale · q kᵀ + mask) v (layouts in csrc/schemas.h), with
attention dropout on the probabilities when dropout_p > 0.

args: (q, k, v, scale, causal, dropout_p, seed), q (B, H, Tq, D), k and v (B, Hkv, Tk, D); seed is
None when dropout_p == 0, else a one-element int64 CPU tensor that, with (b, h, i, j), decides every
score's keep/drop (ops/dropout.py): the backward regenerates the forward's mask from it.
"""

import operator

import torch

from . import dropout, reference, validate
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the saved statistics (lse, xa): float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _validate(q, k, v, causal, scale, dropout_p=0.0, seed=None):
    scale = validate.attention_args(q, k, v, causal, scale)
    return (q, k, v, scale, causal) + validate.dropout_args(dropout_p, seed)


def _key(q, k, v, scale, causal, dropout_p, seed):
    b, h, tq, d = q.shape
    _, hkv, tk, _ = k.shape
    if b == 0 or tq == 0 or tk == 0:
        return None
    return ((q.requires_grad or k.requires_grad or v.requires_grad) and _grad_enabled(), q.dtype, q.device,
            d, h, hkv, causal, (tq - 1).bit_length(), (tk - 1).bit_length(), (b - 1).bit_length(), dropout_p > 0)


# A dropout call is its own key: the ("dropout", True) fact is there only when it holds, so the keys,
# labels and tuning-cache entries of calls without dropout read as they always did.
DROPOUT_FACT = (("dropout", True),)


def describe(key):
    d, h, hkv, causal, tq, tk, b, drop = key
    return d, ((("H", h), ("Hkv", hkv), ("causal", causal), ("Tq<=", 1 << tq), ("Tk<=", 1 << tk), ("B<=", 1 << b))
               + (DROPOUT_FACT if drop else ()))


def traced_facts(causal, dropout_p) -> tuple:
    """The facts of a traced attention call besides D. The dropout fact is named either way, so a
    call without dropout never takes the backend measured for dropout calls (as a branch, which
    specialises the graph: with dynamic shapes dropout_p may be traced as a symbol)."""
    return ("causal", causal), ("dropout", True) if dropout_p > 0 else ("dropout", False)


def _traced_facts(q, k, v, scale, causal, dropout_p, seed):
    # operator.index makes dynamo specialise the graph on D (a symbolic D cannot be a constant of
    # the graph); sizes that change between calls, T and B, stay symbolic.
    return operator.index(q.shape[-1]), traced_facts(causal, dropout_p)


def timed_dropout(dims: dict) -> tuple:
    """(dropout_p, seed) of a timed call: a dropout key is timed with a fixed seed, so tuning draws
    nothing from the caller's generator."""
    return (0.1, dropout.seed_tensor(0)) if dims.get("dropout") else (0.0, None)


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)

    def mk(heads, t):
        return torch.randn(dims["B<="], heads, t, call.head_dim, generator=g).to(device, dtype).requires_grad_(
            requires_grad)
    return (mk(dims["H"], dims["Tq<="]), mk(dims["Hkv"], dims["Tk<="]), mk(dims["Hkv"], dims["Tk<="]),
            call.head_dim ** -0.5, dims["causal"]) + timed_dropout(dims)


def has_residual(dtype: torch.dtype) -> bool:
    """Whether attn_fwd returns o's rounding residual o_lo (csrc/schemas.h): fp16/bf16, whose o is
    rounded from the fp32 accumulator; fp32/fp64 get an empty o_lo."""
    return dtype in (torch.float16, torch.bfloat16)


def _fwd_fake(q, k, v, scale, causal, dropout_p=0.0, seed=None):
    b, h, tq, _ = q.shape
    o = torch.empty_like(q, memory_format=torch.contiguous_format)
    o_lo = torch.empty_like(o) if has_residual(q.dtype) else q.new_empty((0,))
    return o, q.new_empty((b, h, tq), dtype=acc_dtype(q.dtype)), o_lo


def _bwd_fake(dout, q, k, v, o, lse, o_lo, scale, causal, dropout_p=0.0, seed=None):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


def _setup_context(ctx, inputs, output):
    q, k, v, scale, causal, dropout_p, seed = inputs
    o, lse, o_lo = output
    # o_lo is what keeps delta = rowsum(dO o) at fp32 accuracy in fp16/bf16 (csrc/schemas.h).
    ctx.save_for_backward(q, k, v, o, lse, o_lo)
    # The seed (a CPU tensor of one element) is all the backward needs to regenerate the mask.
    ctx.scale, ctx.causal, ctx.dropout_p, ctx.seed = scale, causal, dropout_p, seed


def _backward(ns, ctx, do, _dlse, _do_lo):
    # lse and o_lo are internal (the public API returns neither), so their gradients are always
    # zero and are ignored.
    q, k, v, o, lse, o_lo = ctx.saved_tensors
    dq, dk, dv = ns.attn_bwd(do, q, k, v, o, lse, o_lo, ctx.scale, ctx.causal, ctx.dropout_p, ctx.seed)
    return dq, dk, dv, None, None, None, None


ATTENTION = OpSpec(
    name="attention", validate=_validate, reference=reference.attention, key=_key, describe=describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "attn_fwd": ("(Tensor q, Tensor k, Tensor v, float scale, bool causal, float dropout_p=0., Tensor? seed=None)"
                     " -> (Tensor o, Tensor lse, Tensor o_lo)"),
        "attn_bwd": ("(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor o, Tensor lse, Tensor o_lo, float scale,"
                     " bool causal, float dropout_p=0., Tensor? seed=None) -> (Tensor dq, Tensor dk, Tensor dv)"),
    },
    fakes={"attn_fwd": _fwd_fake, "attn_bwd": _bwd_fake},
    forward="attn_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, q, k, v, scale, causal, dropout_p, seed: ns.attn_fwd(q, k, v, scale, causal, dropout_p,
                                                                                  seed)[0])
