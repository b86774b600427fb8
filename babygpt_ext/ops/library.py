"""Fake kernels and autograd for every op of the table, for any namespace that defines them.

The compiled extension defines `babygpt::*` (csrc/ops.cpp), the emulated CUDA build defines
`babygpt_emu::*` and the Triton kernels `babygpt_triton::*`, all with the schemas of csrc/schemas.h.
Their shapes and their calculus are the same too, so one function registers both for a namespace:
`torch.compile` traces through the fakes, and autograd pairs each forward op with its backward op.

Eager calls (the ops layer, outside torch.compile tracing) take the same pairing through
eager_ops(ns) instead: an autograd.Function per op that calls the kernel below the Autograd key.
torch.library's autograd wrapper runs Python on every call, ~100 µs on a 2-core AMD EPYC (Zen 1)
for attention with grad (its fill_defaults rebuilds the schema's argument list once per argument),
against 14 µs for the kernel at B1 H1 T2 D4 and 22 µs for a whole SDPA call.
"""

import functools

import torch

from .table import OPS

_registered: set = set()
_eager: dict = {}  # namespace -> _EagerOps


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
        if not torch.is_grad_enabled():  # a plain backward (no create_graph): nothing can differentiate it
            return out
        linked = [t for t in (*grads, *ctx.saved_tensors) if isinstance(t, torch.Tensor) and t.requires_grad]
        if not linked:
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
        torch.library.register_autograd(f"{ns}::{spec.forward}", _backward_of(spec, ops),
                                        setup_context=spec.setup_context)
    _eager[ns] = _EagerOps(ops)
    _registered.add(ns)


def eager_ops(ns: str):
    """torch.ops.<ns> as untraced calls should use it (register_contract(ns) first): the forward
    op of each spec is an autograd.Function with the registered calculus; other ops are ns's own."""
    return _eager[ns]


def _backward_of(spec, ops):
    return _once_differentiable(spec.name, functools.partial(spec.backward, ops))


def _eager_forward(spec, ops):
    op = getattr(ops, spec.forward).default
    backward = _backward_of(spec, ops)

    def forward(ctx, *args):
        with torch._C._AutoDispatchBelowAutograd():
            out = op(*args)
        spec.setup_context(ctx, args, out)
        return out

    # Built by name so the graph node reads e.g. attn_fwd_eagerBackward (the metaclass names it).
    Forward = type(f"{spec.forward}_eager", (torch.autograd.Function,),
                   {"forward": staticmethod(forward), "backward": staticmethod(backward)})

    def run(*args):
        if torch.is_grad_enabled():
            for a in args:  # a loop, not any(<generator>): 3 µs of a 15 µs small call
                if isinstance(a, torch.Tensor) and a.requires_grad:
                    return Forward.apply(*args)
        with torch._C._AutoDispatchBelowAutograd():  # nothing to record: no Function node either
            return op(*args)
    return run


class _EagerOps:
    """A compiled namespace for eager calls: spec.run_compiled takes it where it takes torch.ops.<ns>.
    Every run_compiled passes all of the forward's arguments, which setup_context reads positionally."""

    def __init__(self, ops):
        self._ops = ops
        for spec in (s for s in OPS.values() if hasattr(ops, s.forward)):
            setattr(self, spec.forward, _eager_forward(spec, ops))

    def __getattr__(self, name):  # ops without autograd (the backward ops): the namespace's own
        return getattr(self._ops, name)
