"""The fused LoRA linear op as data: x Wᵀ + b + scale · (x Aᵀ) Bᵀ (layouts in csrc/schemas.h).

args: (x, weight, bias, lora_a, lora_b, scale) with x already flattened to (N, in); the public
ops.lora_linear flattens the lead dimensions and restores them.
"""

import torch

from . import reference, validate
from .attention_op import acc_dtype
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call


def _validate(x, weight, bias, lora_a, lora_b, scale):
    scale = validate.lora_args(x, weight, bias, lora_a, lora_b, scale)
    # No reshape of a 2-D x: even a view adds an autograd node (ViewBackward0) to every call.
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1]), weight, bias, lora_a, lora_b, scale


def _key(x, weight, bias, lora_a, lora_b, scale):
    n, d_in = x.shape
    d_out, r = lora_b.shape
    if n == 0 or d_out == 0:
        return None
    grad = (x.requires_grad or weight.requires_grad or lora_a.requires_grad or lora_b.requires_grad
            or (bias is not None and bias.requires_grad)) and _grad_enabled()
    # Whether the frozen base takes a gradient changes the backward's work (dW is the biggest matmul).
    return grad, x.dtype, x.device, d_in, d_out, r, bias is not None, weight.requires_grad, (n - 1).bit_length()


def _describe(key):
    d_in, d_out, r, bias, base_grad, n = key
    return 0, (("in", d_in), ("out", d_out), ("r", r), ("bias", bias), ("base_grad", base_grad), ("N<=", 1 << n))


def _traced_facts(*args):
    return 0, ()


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)

    def mk(*shape, grad=requires_grad):
        return (torch.randn(*shape, generator=g) * 0.1).to(device, dtype).requires_grad_(grad)
    base_grad = requires_grad and dims["base_grad"]
    return (mk(dims["N<="], dims["in"]), mk(dims["out"], dims["in"], grad=base_grad),
            mk(dims["out"], grad=base_grad) if dims["bias"] else None,
            mk(dims["r"], dims["in"]), mk(dims["out"], dims["r"]), 2.0)


def _fwd_fake(x, weight, bias, lora_a, lora_b, scale):
    n = x.shape[0]
    return x.new_empty((n, weight.shape[0])), x.new_empty((n, lora_a.shape[0]), dtype=acc_dtype(x.dtype))


def _bwd_fake(dy, x, weight, lora_a, lora_b, xa, scale, need_dweight, need_dbias):
    dw = x.new_empty(weight.shape) if need_dweight else x.new_empty((0,))
    db = x.new_empty((weight.shape[0],)) if need_dbias else x.new_empty((0,))
    return x.new_empty(x.shape), dw, db, x.new_empty(lora_a.shape), x.new_empty(lora_b.shape)


def _setup_context(ctx, inputs, output):
    x, weight, bias, lora_a, lora_b, scale = inputs
    _, xa = output
    ctx.save_for_backward(x, weight, lora_a, lora_b, xa)
    ctx.scale = scale
    ctx.has_bias = bias is not None


def _backward(ns, ctx, dy, _dxa):
    x, weight, lora_a, lora_b, xa = ctx.saved_tensors
    need_dw = ctx.needs_input_grad[1]
    need_db = ctx.has_bias and ctx.needs_input_grad[2]
    dx, dw, db, da, dbm = ns.lora_bwd(dy, x, weight, lora_a, lora_b, xa, ctx.scale, need_dw, need_db)
    return dx if ctx.needs_input_grad[0] else None, dw if need_dw else None, db if need_db else None, da, dbm, None


LORA = OpSpec(
    name="lora", validate=_validate, reference=reference.lora_linear, key=_key, describe=_describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "lora_fwd": ("(Tensor x, Tensor weight, Tensor? bias, Tensor lora_a, Tensor lora_b, float scale)"
                     " -> (Tensor y, Tensor xa)"),
        "lora_bwd": ("(Tensor dy, Tensor x, Tensor weight, Tensor lora_a, Tensor lora_b, Tensor xa, float scale,"
                     " bool need_dweight, bool need_dbias) -> (Tensor dx, Tensor dweight, Tensor dbias,"
                     " Tensor dlora_a, Tensor dlora_b)"),
    },
    fakes={"lora_fwd": _fwd_fake, "lora_bwd": _bwd_fake},
    forward="lora_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, x, weight, bias, lora_a, lora_b, scale: ns.lora_fwd(x, weight, bias, lora_a, lora_b,
                                                                                   scale)[0])
