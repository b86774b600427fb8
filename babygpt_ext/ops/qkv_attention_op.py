"""A GPT layer's attention straight from its fused projection, as data: q, k, v are the heads of
qkv (B, T, (H + 2 Hkv) D), side by side along the last axis (q's H heads, then k's Hkv, then v's
Hkv: the layout nanoGPT's c_attn produces), and the output is (B, T, H D), the heads side by side
again, as c_proj reads them. Causal attention of T queries over the same T positions.

args: (qkv, n_head, n_kv_head, scale, causal, dropout_p, seed), the attention op's scale, dropout
and seed (attention_op.py). The cpu backend's kernels read q, k, v in place and write o and the
gradient dqkv in these layouts (csrc/cpu/attention.cpp attn_qkv_fwd/attn_qkv_bwd), so the split,
the transposes, the re-assembly of the heads and autograd's concatenation of dq, dk, dv into the
projection's gradient cost no copy. Other backends compose it from their attention (split_heads,
merge_heads around it), which is also the reference.
"""

import operator

import torch

from . import attention_op, reference, validate
from .attention_op import acc_dtype, has_residual
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call


def split_heads(qkv: torch.Tensor, n_head: int, n_kv_head: int) -> tuple:
    """q (B, H, T, D), k and v (B, Hkv, T, D): views of qkv (B, T, (H + 2 Hkv) D), no copy (unless
    qkv's last axis is itself strided)."""
    b, t, width = qkv.shape
    d = width // (n_head + 2 * n_kv_head)
    q, k, v = qkv.split([n_head * d, n_kv_head * d, n_kv_head * d], dim=2)
    return (q.reshape(b, t, n_head, d).transpose(1, 2), k.reshape(b, t, n_kv_head, d).transpose(1, 2),
            v.reshape(b, t, n_kv_head, d).transpose(1, 2))


def merge_heads(o: torch.Tensor) -> torch.Tensor:
    """(B, H, T, D) -> (B, T, H D): the heads side by side (a copy unless o is laid out so already)."""
    b, h, t, d = o.shape
    return o.transpose(1, 2).reshape(b, t, h * d)


def _validate(qkv, n_head, n_kv_head, causal, scale, dropout_p=0.0, seed=None):
    scale = validate.qkv_attention_args(qkv, n_head, n_kv_head, causal, scale)
    return (qkv, int(n_head), int(n_kv_head), scale, causal) + validate.dropout_args(dropout_p, seed)


def _reference(qkv, n_head, n_kv_head, scale, causal, dropout_p=0.0, seed=None):
    q, k, v = split_heads(qkv, n_head, n_kv_head)
    return merge_heads(reference.attention(q, k, v, scale, causal, dropout_p, seed))


def _key(qkv, n_head, n_kv_head, scale, causal, dropout_p, seed):
    b, t, width = qkv.shape
    if b == 0 or t == 0:
        return None
    return (qkv.requires_grad and _grad_enabled(), qkv.dtype, qkv.device, width // (n_head + 2 * n_kv_head), n_head,
            n_kv_head, causal, (t - 1).bit_length(), (t - 1).bit_length(), (b - 1).bit_length(), dropout_p > 0)


def _traced_facts(qkv, n_head, n_kv_head, scale, causal, dropout_p, seed):
    # As attention_op's: operator.index specialises the graph on D (and on the head counts it comes
    # from).
    d = operator.index(qkv.shape[-1]) // (operator.index(n_head) + 2 * operator.index(n_kv_head))
    return d, attention_op.traced_facts(causal, dropout_p)


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)
    h, hkv = dims["H"], dims["Hkv"]
    qkv = torch.randn(dims["B<="], dims["Tq<="], (h + 2 * hkv) * call.head_dim, generator=g)
    return (qkv.to(device, dtype).requires_grad_(requires_grad), h, hkv, call.head_dim ** -0.5,
            dims["causal"]) + attention_op.timed_dropout(dims)


def _fwd_fake(qkv, n_head, n_kv_head, scale, causal, dropout_p=0.0, seed=None):
    b, t, width = qkv.shape
    o = qkv.new_empty((b, t, n_head * (width // (n_head + 2 * n_kv_head))))
    o_lo = torch.empty_like(o) if has_residual(qkv.dtype) else qkv.new_empty((0,))
    return o, qkv.new_empty((b, n_head, t), dtype=acc_dtype(qkv.dtype)), o_lo


def _bwd_fake(dout, qkv, o, lse, o_lo, n_head, n_kv_head, scale, causal, dropout_p=0.0, seed=None):
    return qkv.new_empty(qkv.shape)


def _setup_context(ctx, inputs, output):
    qkv, n_head, n_kv_head, scale, causal, dropout_p, seed = inputs
    o, lse, o_lo = output
    ctx.save_for_backward(qkv, o, lse, o_lo)
    ctx.heads, ctx.scale, ctx.causal, ctx.dropout_p, ctx.seed = (n_head, n_kv_head), scale, causal, dropout_p, seed


def _backward(ns, ctx, do, _dlse, _do_lo):
    qkv, o, lse, o_lo = ctx.saved_tensors
    dqkv = ns.attn_qkv_bwd(do, qkv, o, lse, o_lo, *ctx.heads, ctx.scale, ctx.causal, ctx.dropout_p, ctx.seed)
    return dqkv, None, None, None, None, None, None


QKV_ATTENTION = OpSpec(
    name="qkv_attention", validate=_validate, reference=_reference, key=_key, describe=attention_op.describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "attn_qkv_fwd": ("(Tensor qkv, int n_head, int n_kv_head, float scale, bool causal, float dropout_p=0.,"
                         " Tensor? seed=None) -> (Tensor o, Tensor lse, Tensor o_lo)"),
        "attn_qkv_bwd": ("(Tensor dout, Tensor qkv, Tensor o, Tensor lse, Tensor o_lo, int n_head, int n_kv_head,"
                         " float scale, bool causal, float dropout_p=0., Tensor? seed=None) -> Tensor dqkv"),
    },
    fakes={"attn_qkv_fwd": _fwd_fake, "attn_qkv_bwd": _bwd_fake},
    forward="attn_qkv_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, qkv, n_head, n_kv_head, scale, causal, dropout_p, seed: ns.attn_qkv_fwd(
        qkv, n_head, n_kv_head, scale, causal, dropout_p, seed)[0])
