"""Fake kernels and autograd for the four ops of the contract, for any namespace that defines them.

The compiled extension defines `babygpt::*` (csrc/ops.cpp), the emulated CUDA build defines
`babygpt_emu::*` and the Triton kernels `babygpt_triton::*`, all with the same schemas. Their
shapes and their calculus are the same too, so one function registers both for a namespace:
`torch.compile` traces through the fakes, and autograd pairs each forward op with its backward op.
"""

import torch

_registered: set = set()


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Dtype of the saved statistics (lse, xa): float32, or float64 for float64 inputs."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def register_contract(ns: str) -> None:
    """Register fakes and autograd for ns::attn_fwd/attn_bwd/lora_fwd/lora_bwd (idempotent)."""
    if ns in _registered:
        return
    ops = getattr(torch.ops, ns)

    # ----------------------------------------------------------------------------- fakes
    @torch.library.register_fake(f"{ns}::attn_fwd")
    def _attn_fwd_fake(q, k, v, scale, causal):
        b, h, tq, _ = q.shape
        return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(
            (b, h, tq), dtype=acc_dtype(q.dtype))

    @torch.library.register_fake(f"{ns}::attn_bwd")
    def _attn_bwd_fake(dout, q, k, v, o, lse, scale, causal):
        return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))

    @torch.library.register_fake(f"{ns}::lora_fwd")
    def _lora_fwd_fake(x, weight, bias, lora_a, lora_b, scale):
        n = x.shape[0]
        return x.new_empty((n, weight.shape[0])), x.new_empty((n, lora_a.shape[0]), dtype=acc_dtype(x.dtype))

    @torch.library.register_fake(f"{ns}::lora_bwd")
    def _lora_bwd_fake(dy, x, weight, lora_a, lora_b, xa, scale, need_dweight, need_dbias):
        dw = x.new_empty(weight.shape) if need_dweight else x.new_empty((0,))
        db = x.new_empty((weight.shape[0],)) if need_dbias else x.new_empty((0,))
        return x.new_empty(x.shape), dw, db, x.new_empty(lora_a.shape), x.new_empty(lora_b.shape)

    # -------------------------------------------------------------------------- autograd
    def _attn_setup(ctx, inputs, output):
        q, k, v, scale, causal = inputs
        o, lse = output
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.scale, ctx.causal = scale, causal

    def _attn_backward(ctx, do, _dlse):
        # lse is an internal statistic (the public API never returns it), so its gradient is
        # always zero and is ignored.
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = ops.attn_bwd(do, q, k, v, o, lse, ctx.scale, ctx.causal)
        return dq, dk, dv, None, None

    torch.library.register_autograd(f"{ns}::attn_fwd", _attn_backward, setup_context=_attn_setup)

    def _lora_setup(ctx, inputs, output):
        x, weight, bias, lora_a, lora_b, scale = inputs
        _, xa = output
        ctx.save_for_backward(x, weight, lora_a, lora_b, xa)
        ctx.scale = scale
        ctx.has_bias = bias is not None

    def _lora_backward(ctx, dy, _dxa):
        x, weight, lora_a, lora_b, xa = ctx.saved_tensors
        need_dw = ctx.needs_input_grad[1]
        need_db = ctx.has_bias and ctx.needs_input_grad[2]
        dx, dw, db, da, dbm = ops.lora_bwd(dy, x, weight, lora_a, lora_b, xa, ctx.scale, need_dw, need_db)
        return (dx if ctx.needs_input_grad[0] else None, dw if need_dw else None, db if need_db else None,
                da, dbm, None)

    torch.library.register_autograd(f"{ns}::lora_fwd", _lora_backward, setup_context=_lora_setup)
    _registered.add(ns)
