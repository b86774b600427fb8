"""Fake kernels and autograd for every op of the table, for any namespace that defines them.

The compiled extension defines `babygpt::*` (csrc/ops.cpp), the emulated CUDA build defines
`babygpt_emu::*` and the Triton kernels `babygpt_triton::*`, all with the schemas of csrc/schemas.h.
Their shapes and their calculus are the same too, so one function registers both for a namespace:
`torch.compile` traces through the fakes, and autograd pairs each forward op with its backward op.
"""

import functools

import torch

from .table import OPS

_registered: set = set()


class _NoSecondDerivative(torch.autograd.Function):
    """Passes a backward's gradients through; differentiating them again raises `message`. Its
    inputs include the saved inputs of the op, so the error is on every path a second derivative
    would take (torch's once_differentiable links it only to the incoming gradients)."""

    @staticmethod
    def forward(ctx, message, n, *tensors):
        ctx.message = message
        return tuple(None if t is None else t.clone() for t in tensors[:n])

    @staticmethod
    def backward(ctx, *_):
        raise RuntimeError(ctx.message)


def _once_differentiable(op: str, backward):
    """The backward kernels have no derivative of their own. Differentiating their result again
    (double backward: torch.autograd.grad(..., create_graph=True), then grad again) raises a clear
    error when it happens, instead of giving a silently wrong second-order gradient; a first-order
    grad with create_graph=True still works."""
    message = (f"babygpt_ext: double backward through {op} is not supported (its backward kernels have no "
               "derivative); for higher-order gradients use backend='eager', the differentiable composition")

    def run(ctx, *grads):
        with torch.no_grad():
            out = backward(ctx, *grads)
        linked = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not torch.is_grad_enabled() or not linked:
            return out
        return _NoSecondDerivative.apply(message, len(out), *out, *linked)
    return run


def register_contract(ns: str) -> None:
    """Register fakes and autograd for ns's forward/backward op pairs of every op in the table that
    ns defines (idempotent)."""
    if ns in _registered:
        return
    ops = getattr(torch.ops, ns)
    for spec in (s for s in OPS.values() if hasattr(ops, s.forward)):
        for name, fake in spec.fakes.items():
            torch.library.register_fake(f"{ns}::{name}")(fake)
        torch.library.register_autograd(f"{ns}::{spec.forward}",
                                        _once_differentiable(spec.name, functools.partial(spec.backward, ops)),
                                        setup_context=spec.setup_context)
    _registered.add(ns)
