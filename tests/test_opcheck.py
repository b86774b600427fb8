"""torch.library.opcheck on every op of the table on every compiled backend that implements it:
schema, fake kernel, autograd registration and AOT dispatch all agree with the real kernel. The ops
come from the op table, so a new op is checked as soon as it has samples in conftest.OP_SAMPLES."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from babygpt_ext.ops import BACKENDS
from babygpt_ext.ops.backends import COMPILED, compiled_ops
from babygpt_ext.ops.table import OPS
from conftest import CPU_BACKENDS, OP_SAMPLES

COMPILED_HERE = [b for b in CPU_BACKENDS if b in COMPILED]
# (backend, op) for every op a compiled backend here has kernels for (the fused training-step ops and
# qkv_attention are the cpu backend's only; the others run qkv_attention through their attention).
IMPLEMENTED = [pytest.param(b, op, id=f"{b}-{op}") for b in COMPILED_HERE for op in OPS
               if op in BACKENDS[b].impls and hasattr(compiled_ops(b), OPS[op].forward)]


class RecordNamespace(TorchDispatchMode):
    """Records every call of an op of one namespace, with its arguments."""

    def __init__(self, ns):
        super().__init__()
        self.ns, self.calls = ns, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.namespace == self.ns:
            self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


def test_every_op_has_samples():
    assert set(OP_SAMPLES) == set(OPS)


@pytest.mark.parametrize("backend,op", IMPLEMENTED)
def test_namespace_schemas_are_the_tables(backend, op):
    ns = compiled_ops(backend)
    for name, schema in OPS[op].schemas.items():
        registered = str(getattr(ns, name).default._schema)
        assert registered.split("(", 1)[1] == schema.split("(", 1)[1], (registered, schema)


@pytest.mark.parametrize("backend,op", IMPLEMENTED)
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_opcheck_forward(backend, op, grad):
    spec = OPS[op]
    forward = getattr(compiled_ops(backend), spec.forward).default
    for call in OP_SAMPLES[op]:
        torch.library.opcheck(forward, spec.make_args(call, "cpu", torch.float32, grad))


@pytest.mark.parametrize("backend,op", IMPLEMENTED)
def test_opcheck_the_other_ops_as_autograd_calls_them(backend, op):
    """The backward ops, with the exact arguments the registered autograd passes them."""
    spec = OPS[op]
    ns = compiled_ops(backend)
    for call in OP_SAMPLES[op]:
        args = spec.make_args(call, "cpu", torch.float32, True)
        recorder = RecordNamespace(COMPILED[backend][1])
        with recorder:
            out = spec.run_compiled(ns, *args)
            torch.autograd.grad(out, [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad],
                                torch.randn_like(out))
        others = [(f, a) for f, a in recorder.calls if f._opname != spec.forward]
        assert {f._opname for f, _ in others} == set(spec.schemas) - {spec.forward}
        for func, func_args in others:
            detached = tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in func_args)
            torch.library.opcheck(func, detached)


@pytest.mark.parametrize("backend,op", IMPLEMENTED)
def test_eager_calls_take_the_registered_calculus_without_its_python_wrapper(backend, op):
    """Untraced calls run each forward op as an autograd.Function of ops/library.py (torch.library's
    autograd wrapper costs more than a small kernel): same outputs and gradients, bit for bit, as
    the registered autograd that opcheck checks above; no graph node under no_grad."""
    from babygpt_ext.ops.library import eager_ops
    spec = OPS[op]
    registered, eager = compiled_ops(backend), eager_ops(COMPILED[backend][1])
    for call in OP_SAMPLES[op]:
        args = spec.make_args(call, "cpu", torch.float32, True)
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        outs = {}
        for name, ns in (("registered", registered), ("eager", eager)):
            out = spec.run_compiled(ns, *args)
            outs[name] = (out, out.grad_fn.name(), torch.autograd.grad(out, leaves, torch.ones_like(out)))
        assert "eager" in outs["eager"][1] and "eager" not in outs["registered"][1], (outs["eager"][1],
                                                                                        outs["registered"][1])
        assert torch.equal(outs["eager"][0], outs["registered"][0])
        for g_eager, g_registered in zip(outs["eager"][2], outs["registered"][2]):
            assert torch.equal(g_eager, g_registered)
        with torch.no_grad():
            assert spec.run_compiled(eager, *args).grad_fn is None
