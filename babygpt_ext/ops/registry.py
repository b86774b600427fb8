"""The backends, and the static policy: who can run a call, and in which order they are preferred.

A backend registers one implementation per op of the table (ops/table.py) and refuses calls in one
place: `refuses(call)` returns None or why not, built from `unavailable()` (not built, no device)
and the backend's own `refuse(call)` (dtype, head dim, ...).

Who runs a call (docs/design.md §3.3; engine.py implements it):
  1. `backend=` passed to the op: that backend or an error (never a silent substitute);
  2. env BABYGPT_BACKEND: preferred when it can take the call, otherwise a one-time warning says why;
  3. the engine measures the backends of the device's chain below that can take the call and keeps
     the fastest (engine.py); where it does not measure, the static policy decides: the first of the
     chain that takes the call. CUDA tensors: cuda → triton → sdpa → eager; CPU tensors:
     cpu → sdpa → eager (torch's SDPA is 2.4–13× faster than the eager composition on this
     project's CPU shapes and always present, so it is the better second choice).
"""

import os
import warnings
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional

from .spec import Call

ENV_VAR = "BABYGPT_BACKEND"
POLICY = {"cuda": ("cuda", "triton", "sdpa", "eager"), "cpu": ("cpu", "sdpa", "eager")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend is not usable here; the message says how to get it."""


@dataclass
class Backend:
    name: str
    description: str
    devices: tuple  # device types it runs on
    impls: Dict[str, Callable]  # op name (ops/table.py) -> implementation taking the op's args
    unavailable: Callable[[], Optional[str]] = lambda: None  # None when usable, else why + how to fix
    refuse: Callable[[Call], Optional[str]] = lambda call: None  # None when it takes this call, else why
    # Static policy only: why it should pass over a call this backend runs correctly (a slower
    # fallback build). The engine still measures the backend; backend= and BABYGPT_BACKEND still use it.
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
        if call.op not in self.impls:
            return f"it has no {call.op} implementation"
        if call.device not in self.devices:
            return f"it runs on {'/'.join(self.devices)} tensors, not {call.device}"
        return self.refuse(call)


def limits(dtypes: tuple, max_head_dim: Optional[int] = None,
           also: Optional[Callable[[Call], Optional[str]]] = None) -> Callable[[Call], Optional[str]]:
    """A backend's `refuse` from the usual limits: the dtypes it computes in, its largest head dim."""
    def refuse(call: Call) -> Optional[str]:
        if call.dtype not in dtypes:
            return f"it does not support {call.dtype}"
        if max_head_dim is not None and call.head_dim > max_head_dim:
            return f"head dim D={call.head_dim} exceeds its maximum {max_head_dim}"
        return also(call) if also else None
    return refuse


BACKENDS: dict = {}
_warned: set = set()
_on_register: list = []  # callbacks that forget decisions made before a backend arrived (engine.reset)


def register(backend: Backend) -> Backend:
    BACKENDS[backend.name] = backend
    for forget in _on_register:
        forget()
    return backend


def get(name: str) -> Backend:
    if name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(BACKENDS)}")
    return BACKENDS[name]


def warn_once(msg: str) -> None:
    if msg not in _warned:
        _warned.add(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=4)


def _describe(call: Call) -> str:
    return f"({call.device}, {call.dtype}{f', D={call.head_dim}' if call.head_dim else ''})"


def requested(call: Call, backend: str) -> Backend:
    """The backend named by `backend=`, or an error saying why it cannot run this call."""
    b = get(backend)
    if (why := b.refuses(call)) is not None:
        kind = BackendUnavailableError if b.why_unavailable() else ValueError
        raise kind(f"backend {backend!r} cannot run this {call.op} call {_describe(call)}: {why}")
    return b


def chain(call: Call, skip: Optional[str] = None) -> tuple:
    """([backends of the device's chain that take the call], [(name, why not), ...]), in policy order.
    Backends without an implementation of the op are left out silently (sdpa never does LoRA)."""
    takers, skipped = [], []
    for name in POLICY.get(call.device, POLICY["cpu"]):
        b = BACKENDS.get(name)
        if b is None or name == skip or call.op not in b.impls:
            continue
        if (why := b.refuses(call)) is None:
            takers.append(b)
        else:
            skipped.append((name, why))
    return takers, skipped


def decide(call: Call, backend: Optional[str]) -> tuple:
    """The static decision: (chosen backend, [(skipped name, reason), ...], how it was chosen).
    Raises on explicit misuse, and when no backend can take the call."""
    if backend is not None:
        return requested(call, backend), [], "requested with backend="
    skipped = []
    env = os.environ.get(ENV_VAR) or None
    if env is not None:
        b = get(env)
        if (why := b.refuses(call)) is None:
            return b, [], f"requested with {ENV_VAR}={env}"
        skipped.append((env, why))
    first = None
    for name in POLICY.get(call.device, POLICY["cpu"]):
        b = BACKENDS.get(name)
        if b is None or name == env or call.op not in b.impls:
            continue
        if (why := b.refuses(call)) is None:
            first = first or b
            if b.policy_skip is None or (why := b.policy_skip(call)) is None:
                return b, skipped, f"static policy for {call.device} tensors"
        skipped.append((name, why))
    if first is not None:  # every taker would rather be passed over: the first still beats failing
        return first, skipped, f"static policy for {call.device} tensors"
    raise RuntimeError(f"no backend can run this {call.op} call {_describe(call)}: "
                       + "; ".join(f"{n}: {w}" for n, w in skipped))
