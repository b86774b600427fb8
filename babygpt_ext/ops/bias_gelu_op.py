"""The fused bias + GELU op as data: gelu(x + bias), the exact (erf) GELU of a GPT MLP.

args: (x, bias) with x already flattened to (N, F) and bias (F,) or None; the public ops.bias_gelu
flattens the lead dimensions and restores them. The backward returns dbias summed over the rows in
the same pass (schemas in csrc/schemas.h, BABYGPT_DEFINE_CPU_FUSED).
"""

import torch

from . import reference, validate
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call


def _validate(x, bias):
    validate.bias_gelu_args(x, bias)
    return x.reshape(-1, x.shape[-1]), bias


def _key(x, bias):
    n, f = x.shape
    if n == 0 or f == 0:
        return None
    grad = (x.requires_grad or (bias is not None and bias.requires_grad)) and _grad_enabled()
    return grad, x.dtype, x.device, (f - 1).bit_length(), bias is not None, (n - 1).bit_length()


def _describe(key):
    f, bias, n = key
    return 0, (("F<=", 1 << f), ("bias", bias), ("N<=", 1 << n))


def _traced_facts(x, bias):
    return 0, ()


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)

    def mk(*shape):
        return torch.randn(*shape, generator=g).to(device, dtype).requires_grad_(requires_grad)
    return mk(dims["N<="], dims["F<="]), mk(dims["F<="]) if dims["bias"] else None


def _fwd_fake(x, bias):
    return x.new_empty(x.shape)


def _bwd_fake(dy, x, bias, need_dbias):
    return x.new_empty(x.shape), x.new_empty((x.shape[1],) if need_dbias else (0,))


def _setup_context(ctx, inputs, output):
    x, bias = inputs
    ctx.save_for_backward(x, bias)


def _backward(ns, ctx, dy):
    x, bias = ctx.saved_tensors
    need_dbias = bias is not None and ctx.needs_input_grad[1]
    dx, dbias = ns.bias_gelu_bwd(dy, x, bias, need_dbias)
    return dx if ctx.needs_input_grad[0] else None, dbias if need_dbias else None


BIAS_GELU = OpSpec(
    name="bias_gelu", validate=_validate, reference=reference.bias_gelu, key=_key, describe=_describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "bias_gelu_fwd": "(Tensor x, Tensor? bias) -> Tensor",
        "bias_gelu_bwd": "(Tensor dy, Tensor x, Tensor? bias, bool need_dbias) -> (Tensor dx, Tensor dbias)",
    },
    fakes={"bias_gelu_fwd": _fwd_fake, "bias_gelu_bwd": _bwd_fake},
    forward="bias_gelu_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, x, bias: ns.bias_gelu_fwd(x, bias))
