"""The attention engine: which backend runs a call, and why.

Order of decision (docs/design.md §3.3):
  1. `backend=` passed to the op: that backend or an error (never a silent substitute);
  2. env BABYGPT_BACKEND: preferred when it can take the call, otherwise the policy below runs
     and a one-time warning says why;
  3. the policy, by device: CUDA tensors try cuda → triton → sdpa → eager, CPU tensors
     cpu → sdpa → eager. A backend that cannot take the call (dtype, head dim, not built), or
     that says it would be the slower choice here (policy_skip), is skipped with a one-time
     warning naming the reason.

The chain for CPU tensors puts SDPA second, before eager: torch's SDPA
is 2.4–13× faster than the eager composition on this project's CPU shapes and is always present,
so it is the better second choice. LoRA has no SDPA, so its chains skip it.
"""

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

ENV_VAR = "BABYGPT_BACKEND"
POLICY = {"cuda": ("cuda", "triton", "sdpa", "eager"), "cpu": ("cpu", "sdpa", "eager")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not usable here; the message says how to get it."""


@dataclass(frozen=True)
class Call:
    """What a backend needs to know to accept or refuse a call."""
    op: str  # "attention" | "lora"
    device: str  # torch device type
    dtype: torch.dtype
    head_dim: int = 0


@dataclass
class Backend:
    name: str
    description: str
    devices: tuple  # device types it runs on
    dtypes: tuple
    attention: Optional[Callable] = None  # (q, k, v, scale, causal) -> o
    lora: Optional[Callable] = None  # (x2d, weight, bias, lora_a, lora_b, scale) -> y2d
    max_head_dim: Optional[int] = None
    unavailable: Callable[[], Optional[str]] = lambda: None  # None when usable, else why + how to fix
    extra_check: Optional[Callable[[Call], Optional[str]]] = None
    # Why the automatic policy should pass over a call this backend can run (e.g. a slower
    # fallback build); an explicit backend= or BABYGPT_BACKEND still uses it.
    policy_skip: Optional[Callable[[Call], Optional[str]]] = None
    _why_not: Optional[str] = field(default=None, init=False, repr=False)
    _probed: bool = field(default=False, init=False, repr=False)

    def why_unavailable(self) -> Optional[str]:
        if not self._probed:  # probing can import a module; do it once
            self._why_not, self._probed = self.unavailable(), True
        return self._why_not

    def refuses(self, call: Call) -> Optional[str]:
        """None if this backend takes the call, else the reason it does not."""
        if (why := self.why_unavailable()) is not None:
            return why
        if getattr(self, call.op) is None:
            return f"it has no {call.op} implementation"
        if call.device not in self.devices:
            return f"it runs on {'/'.join(self.devices)} tensors, not {call.device}"
        if call.dtype not in self.dtypes:
            return f"it does not support {call.dtype}"
        if self.max_head_dim is not None and call.head_dim > self.max_head_dim:
            return f"head dim D={call.head_dim} exceeds its maximum {self.max_head_dim}"
        return self.extra_check(call) if self.extra_check else None


BACKENDS: dict = {}
_warned: set = set()
_resolved: dict = {}


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    _resolved.clear()
    return backend


def _get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def _warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def decide(call: Call, backend: Optional[str]) -> tuple:
    """(chosen backend, [(skipped name, reason), ...], how it was chosen). Raises on explicit misuse."""
    if backend is not None:
        b = _get(backend)
        if (why := b.refuses(call)) is not None:
            kind = BackendUnavailableError if b.why_unavailable() else ValueError
            raise kind(f"backend {backend!r} cannot run this {call.op} call ({call.device}, {call.dtype}"
                       f"{f', D={call.head_dim}' if call.op == 'attention' else ''}): {why}")
        return b, [], "requested with backend="
    skipped = []
    env = os.environ.get(ENV_VAR) or None
    if env is not None:
        b = _get(env)
        if (why := b.refuses(call)) is None:
            return b, [], f"requested with {ENV_VAR}={env}"
        skipped.append((env, why))
    for name in POLICY.get(call.device, POLICY["cpu"]):
        b = BACKENDS.get(name)
        if b is None or name == env:
            continue
        if call.op == "lora" and b.lora is None:
            continue  # not a skip worth a warning: that backend never does LoRA
        if (why := b.refuses(call) or (b.policy_skip and b.policy_skip(call))) is None:
            return b, skipped, f"automatic policy for {call.device} tensors"
        skipped.append((name, why))
    raise RuntimeError(f"no backend can run this {call.op} call: " + "; ".join(f"{n}: {w}" for n, w in skipped))


def _resolve_name(op: str, device: str, dtype: torch.dtype, head_dim: int, backend: Optional[str]) -> str:
    """The name of the backend for this call. Under torch.compile this runs once at trace time and
    its result is a constant of the graph (it probes backends, imports modules and warns, none of
    which belongs in a graph); dynamo's guards on device, dtype and shape re-run it when they change."""
    call = Call(op, device, dtype, head_dim)
    env = os.environ.get(ENV_VAR) or None
    key = (call, backend, env)
    if key not in _resolved:
        chosen, skipped, _ = decide(call, backend)
        for name, why in skipped:
            _warn_once(f"babygpt_ext: backend {name!r} skipped for {op} ({device}, {dtype}): {why}; "
                       f"using {chosen.name!r}")
        _resolved[key] = chosen.name
    return _resolved[key]


# torch.compiler.assume_constant_result(_resolve_name), spelled out: the public decorator imports
# torch._dynamo (about a second, and it pulls in triton) just to set this attribute, and importing
# babygpt_ext must stay light and Triton-free on a CPU-only path. tests/test_compile.py fails if a
# torch release stops honouring the attribute (the fullgraph compile would then break the graph).
_resolve_name._dynamo_marked_constant = True


def resolve(call: Call, backend: Optional[str]) -> Backend:
    """The backend that runs `call`, warning once about each backend skipped on the way."""
    return BACKENDS[_resolve_name(call.op, call.device, call.dtype, call.head_dim, backend)]
