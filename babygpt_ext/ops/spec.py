"""What an op is, as data: the OpSpec every op of the contract fills in, and the Call a backend sees.

An op is validated once (its validator), computed by the eager composition (its reference), and
implemented by each backend that registers a function for it under the spec's name. In a compiled
namespace it is a forward/backward pair of torch ops with the schemas of csrc/schemas.h; the spec
carries their fake kernels (for torch.compile) and the autograd formula that pairs them. The engine
(engine.py) only ever asks a spec two questions about a call: its key (what the choice of backend
depends on) and its inputs (to time the candidates on). Adding an op is one OpSpec in its own module,
listed in table.py, plus one implementation per backend.
"""

from dataclasses import dataclass
from typing import Callable, Dict, Tuple

import torch


@dataclass(frozen=True)
class Call:
    """What a backend needs to know to accept or refuse a call, and what a decision is keyed by.

    dims holds the op's other key facts as (name, value) pairs, sizes already bucketed (a bucket is
    the next power of two, so T=100 and T=128 share one decision). device_name is the GPU's name, or
    the CPU model with the thread count (both change which kernel is fastest).
    """
    op: str
    device: str  # torch device type
    dtype: torch.dtype
    head_dim: int = 0
    dims: Tuple[Tuple[str, object], ...] = ()
    needs_grad: bool = False
    device_name: str = ""

    def label(self) -> str:
        """One line naming the call key, e.g. for ops.explain and the tuning cache."""
        facts = ([f"D={self.head_dim}"] if self.head_dim else []) + [f"{n}{v}" if n.endswith("<=") else f"{n}={v}"
                                                                for n, v in self.dims]
        where = f"{self.device} ({self.device_name})" if self.device_name else self.device
        return (f"{self.op} {where} {str(self.dtype).replace('torch.', '')} {' '.join(facts)} "
                f"{'fwd+bwd' if self.needs_grad else 'fwd'}").replace("  ", " ")


@dataclass(frozen=True)
class OpSpec:
    """One op of the contract. `args` below are the implementation's arguments, the tuple that
    `validate` returns and that every backend's implementation takes."""
    name: str  # the key of table.OPS and of Backend.impls
    validate: Callable  # public arguments -> args; raises TypeError/ValueError naming the argument
    reference: Callable  # (*args) -> output: the eager composition (also any backend's answer on empty input)
    # (*args) -> None when the output is empty (the reference computes it), else a hashable tuple
    # (whether autograd will want gradients: an input requires them and grad mode is on, dtype,
    # device, *shape facts), sizes as the exponent of their power-of-two bucket, (n - 1).bit_length():
    # 1 -> 0, 2 -> 1, 3..4 -> 2, 5..8 -> 3. Runs on every call, so it only reads shapes and flags.
    key: Callable
    # (key without its first three entries) -> (head_dim, dims) for the Call
    describe: Callable[[tuple], Tuple[int, tuple]]
    # (*args) -> (head_dim, dims) known under torch.compile tracing: no sizes that dynamic shapes
    # could make symbolic, except the head dim (which backends' limits depend on)
    traced_facts: Callable
    # (Call, device, dtype, requires_grad) -> args: inputs of the call's shape, for `babygpt tune`
    make_args: Callable
    schemas: Dict[str, str]  # compiled op name -> schema, exactly as csrc/schemas.h defines it
    fakes: Dict[str, Callable]  # compiled op name -> fake kernel
    forward: str  # the compiled op that autograd is registered on
    setup_context: Callable  # (ctx, inputs, output) of the forward op
    backward: Callable  # (compiled namespace, ctx, *grad outputs) -> grads of the forward op's inputs
    run_compiled: Callable  # (compiled namespace, *args) -> output: the op through a compiled backend
