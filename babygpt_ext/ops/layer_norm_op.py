"""The fused LayerNorm op as data: nn.LayerNorm over the last axis, its output in the dtype the next
op wants (the autocast dtype inside an enabled autocast region, else x's).

args: (x, weight, bias, eps, out_dtype) with x already flattened to (N, C), weight and bias (C,) or
None, and out_dtype decided by the public ops.layer_norm (output_dtype below), so the compiled op is
a pure function of its arguments: opcheck and torch.compile's fakes see the dtype as an argument,
not as state. The forward returns (y, mean, rstd) and the backward dweight and dbias summed over
the rows in the same pass (schemas in csrc/schemas.h, BABYGPT_DEFINE_CPU_FUSED).
"""

import torch

from . import reference, validate
from .attention_op import acc_dtype
from .spec import OpSpec

_grad_enabled = torch.is_grad_enabled  # bound once: the key runs on every call
_autocast_on, _autocast_dtype = torch.is_autocast_enabled, torch.get_autocast_dtype
AUTOCAST_DEVICES = ("cpu", "cuda")


def output_dtype(x: torch.Tensor) -> torch.dtype:
    """The autocast dtype inside an enabled autocast region of x's device, else x's dtype. float64
    stays float64, as autocast never casts it (a float64 x would reach the next Linear unchanged)."""
    dev = x.device.type
    if x.dtype != torch.float64 and dev in AUTOCAST_DEVICES and _autocast_on(dev):
        return _autocast_dtype(dev)
    return x.dtype


def _validate(x, weight, bias, eps):
    validate.layer_norm_args(x, weight, bias, eps)
    return x if x.dim() == 2 else x.reshape(-1, x.shape[-1]), weight, bias, float(eps), output_dtype(x)


def _key(x, weight, bias, eps, out_dtype):
    n, c = x.shape
    if n == 0 or c == 0:
        return None
    grad = (x.requires_grad or (weight is not None and weight.requires_grad)
            or (bias is not None and bias.requires_grad)) and _grad_enabled()
    return (grad, x.dtype, x.device, (c - 1).bit_length(), weight is not None, bias is not None, out_dtype,
            (n - 1).bit_length())


def _describe(key):
    c, weight, bias, out, n = key
    return 0, (("C<=", 1 << c), ("weight", weight), ("bias", bias), ("out", str(out).replace("torch.", "")),
               ("N<=", 1 << n))


def _traced_facts(x, weight, bias, eps, out_dtype):
    return 0, ()


def _make_args(call, device, dtype, requires_grad):
    dims = dict(call.dims)
    g = torch.Generator().manual_seed(0)
    # A call whose output is x's dtype keeps that when timed in another dtype; parameters are float32
    # (a model's, under autocast too), float64 for a float64 x.
    out = dtype if dims["out"] == str(call.dtype).replace("torch.", "") else getattr(torch, dims["out"])
    pdtype = torch.float64 if dtype == torch.float64 else torch.float32

    def mk(*shape, dt=dtype):
        return torch.randn(*shape, generator=g).to(device, dt).requires_grad_(requires_grad)
    c = dims["C<="]
    return (mk(dims["N<="], c), mk(c, dt=pdtype) if dims["weight"] else None,
            mk(c, dt=pdtype) if dims["bias"] else None, 1e-5, out)


def _fwd_fake(x, weight, bias, eps, out_dtype):
    stats = (x.shape[0],)
    return (x.new_empty(x.shape, dtype=out_dtype), x.new_empty(stats, dtype=acc_dtype(x.dtype)),
            x.new_empty(stats, dtype=acc_dtype(x.dtype)))


def _bwd_fake(dy, x, weight, mean, rstd, need_dweight, need_dbias):
    c = x.shape[1]
    return (x.new_empty(x.shape), x.new_empty((c,) if need_dweight else (0,), dtype=mean.dtype),
            x.new_empty((c,) if need_dbias else (0,), dtype=mean.dtype))


def _setup_context(ctx, inputs, output):
    x, weight, bias, eps, out_dtype = inputs
    _, mean, rstd = output
    ctx.save_for_backward(x, weight, mean, rstd)
    # The kernel returns dweight/dbias in the statistics' dtype; these are the parameters' own.
    ctx.weight_dtype = None if weight is None else weight.dtype
    ctx.bias_dtype = None if bias is None else bias.dtype


def _backward(ns, ctx, dy, _dmean, _drstd):
    # mean and rstd are internal (the public op returns neither): their gradients are ignored.
    x, weight, mean, rstd = ctx.saved_tensors
    need_dweight = weight is not None and ctx.needs_input_grad[1]
    need_dbias = ctx.bias_dtype is not None and ctx.needs_input_grad[2]
    dx, dweight, dbias = ns.layer_norm_bwd(dy, x, weight, mean, rstd, need_dweight, need_dbias)
    return (dx if ctx.needs_input_grad[0] else None, dweight.to(ctx.weight_dtype) if need_dweight else None,
            dbias.to(ctx.bias_dtype) if need_dbias else None, None, None)


LAYER_NORM = OpSpec(
    name="layer_norm", validate=_validate, reference=reference.layer_norm, key=_key, describe=_describe,
    traced_facts=_traced_facts, make_args=_make_args,
    schemas={
        "layer_norm_fwd": ("(Tensor x, Tensor? weight, Tensor? bias, float eps, ScalarType out_dtype)"
                           " -> (Tensor y, Tensor mean, Tensor rstd)"),
        "layer_norm_bwd": ("(Tensor dy, Tensor x, Tensor? weight, Tensor mean, Tensor rstd, bool need_dweight,"
                           " bool need_dbias) -> (Tensor dx, Tensor dweight, Tensor dbias)"),
    },
    fakes={"layer_norm_fwd": _fwd_fake, "layer_norm_bwd": _bwd_fake},
    forward="layer_norm_fwd", setup_context=_setup_context, backward=_backward,
    run_compiled=lambda ns, x, weight, bias, eps, out_dtype: ns.layer_norm_fwd(x, weight, bias, eps, out_dtype)[0])
