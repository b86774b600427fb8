"""The attention engine: which backend runs a call, chosen by measurement and remembered.

With backend=None and no usable BABYGPT_BACKEND, the first call of a call key (spec.Call: op,
device and its name, dtype, head dim, heads, causal, whether grads are needed, sizes bucketed by
powers of two) times every backend of the device's chain that can take it (measure.py: forward, plus
backward when grads are needed, on private copies of the inputs; the outputs are thrown away) and
keeps the fastest, unless it beats the static policy's first choice by less than MARGIN, in its
fastest sample or in the median of the rounds compared side by side (so noise does not flip
decisions). The decision goes to the tuning cache on disk (tuning_cache.py), where
later processes find it; later calls of the key are one dictionary lookup.

The static policy (registry.decide) decides instead, and Decision.how says why, when:
BABYGPT_TUNE=0; only one backend can take the call; the inputs cannot be timed (fake, functional
or other tensor subclasses, a CUDA graph being captured); on a CPU that is oversubscribed (more
runnable threads than measure.OVERSUBSCRIBED per core: timing would measure the other work; the
decision is then not cached on disk); or under torch.compile tracing with no
measured decision for the key (the graph holds the chosen kernel, never timing code).
Environment variables are read when a key is decided, not on every call.
"""

import os
import statistics
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import torch

from . import measure, registry, tuning_cache
from .registry import BACKENDS
from .spec import Call, OpSpec

TUNE_VAR = "BABYGPT_TUNE"
# Bound once: the per-call path skips an attribute lookup (dynamo knows the function by identity).
_is_compiling = torch.compiler.is_compiling
MARGIN = 0.05  # a candidate must be this much faster than the static choice to displace it
# A key whose static call is long (measure.LONG_CALL_BUDGETS) times only the backends that ran within
# this factor of the static choice at the nearest smaller measured size (_competitive).
COMPETITIVE = 1.5


@dataclass
class Decision:
    backend: str
    how: str  # one sentence: requested, measured, or static and why
    skipped: list  # [(name, why it cannot take the call)] before the static choice, in policy order
    static: str = ""  # the static policy's choice
    times: Dict[str, float] = field(default_factory=dict)  # name -> seconds per step (fastest sample)
    failed: Dict[str, str] = field(default_factory=dict)  # name -> the error it raised while being timed
    rounds: int = 0


_chosen: dict = {}  # hot key -> implementation: the per-call lookup
_decisions: Dict[tuple, Decision] = {}  # (Call, backend) -> Decision, for explain and info


def reset() -> None:
    """Forget every decision made in this process (the disk cache is read again when needed)."""
    _chosen.clear()
    _decisions.clear()
    tuning_cache.forget()


registry._on_register.append(lambda: (_chosen.clear(), _decisions.clear()))


def tuning_enabled() -> bool:
    return os.environ.get(TUNE_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def run(spec: OpSpec, args: tuple, backend: Optional[str]):
    """Run op `spec` on its validated args with the backend chosen for them."""
    return implementation(spec, args, backend)(*args)


def implementation(spec: OpSpec, args: tuple, backend: Optional[str]):
    """The function that runs these args: once their key is decided, a key and a dictionary lookup
    (this is the engine's whole cost per call; `babygpt tune` reports it)."""
    key = spec.key(*args)
    if key is None:  # an empty output: the reference computes it, autograd included, as SDPA would
        if backend is not None:
            registry.get(backend)
        return spec.reference
    if _is_compiling():
        return BACKENDS[_traced_choice(spec.name, key[2], key[1], key[0], spec.traced_facts(*args), backend)
                        ].impls[spec.name]
    hot = (spec.name, backend, key)
    impl = _chosen.get(hot)
    if impl is None:
        call = _call(spec, key)
        d = decision(spec, args, backend, call)
        for name, why in d.skipped:
            registry.warn_once(f"babygpt_ext: backend {name!r} skipped for {call.op} ({call.device}, {call.dtype}): "
                               f"{why}; using {d.backend!r}")
        impl = _chosen[hot] = BACKENDS[d.backend].impls[spec.name]
    return impl


def call_of(spec: OpSpec, args: tuple) -> Optional[Call]:
    """The Call key of validated args (None for an empty output)."""
    key = spec.key(*args)
    return None if key is None else _call(spec, key)


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        major, minor = torch.cuda.get_device_capability(index)
        return f"{torch.cuda.get_device_name(index)}, cc {major}.{minor}"
    if device.type == "cpu":
        return f"{tuning_cache.cpu_model()}, {torch.get_num_threads()} threads"
    return ""


def _call(spec: OpSpec, key: tuple) -> Call:
    grad, dtype, device = key[:3]
    head_dim, dims = spec.describe(key[3:])
    return Call(spec.name, device.type, dtype, head_dim, dims, grad, _device_name(device))


def decision(spec: OpSpec, args: tuple, backend: Optional[str], call: Call, force: bool = False) -> Decision:
    """Decide who runs `call` (measuring on args if needed) and remember it. force: measure again
    even if a decision is cached."""
    if not force and (call, backend) in _decisions:
        return _decisions[(call, backend)]
    chosen, skipped, how = registry.decide(call, backend)
    if how.startswith("requested"):
        d = Decision(chosen.name, how, skipped)
    elif (why := _why_static(call, args)) is not None:
        d = Decision(chosen.name, f"{how}: {why}", skipped, static=chosen.name)
    else:
        d = _measured(spec, args, call, chosen.name, skipped, force)
    _decisions[(call, backend)] = d
    return d


def _why_static(call: Call, args: tuple) -> Optional[str]:
    if not tuning_enabled():
        return f"{TUNE_VAR}=0 turns measuring off"
    takers, _ = registry.chain(call)
    if len(takers) < 2:
        return f"only {takers[0].name if takers else 'one backend'} can take this call, nothing to compare"
    if any(isinstance(a, torch.Tensor) and type(a) not in (torch.Tensor, torch.nn.Parameter) for a in args):
        return "the inputs are not plain tensors (fake, functional or a subclass), so they cannot be timed"
    if call.device == "cuda" and torch.cuda.is_current_stream_capturing():
        return "a CUDA graph is being captured, which timing would break"
    return None


def _measured(spec: OpSpec, args: tuple, call: Call, static: str, skipped: list, force: bool) -> Decision:
    takers = [b.name for b in registry.chain(call)[0]]
    cached = None if force else tuning_cache.lookup(call)
    if cached is not None and cached["backend"] in takers:
        return Decision(cached["backend"], f"measured earlier, read from the tuning cache {tuning_cache.path()}",
                        skipped, static, {n: t / 1e6 for n, t in cached["times_us"].items()}, {}, cached["rounds"])
    if call.device == "cpu" and (busy := measure.cpu_oversubscribed()) is not None:
        # Not written to the cache: a process that starts on a quieter machine measures the key.
        return Decision(static, f"static policy: {busy}", skipped, static)
    steps = _steps(spec, args, call.needs_grad, takers)
    times, failed, rounds, samples = measure.time_candidates(steps, measure.clock_for(args[0].device),
                                                             measure.BUDGET_S, _competitive(call, static))
    for name, err in failed.items():
        registry.warn_once(f"babygpt_ext: backend {name!r} failed while being timed for {call.label()} ({err}); "
                           "left out of the choice")
    if not times:
        return Decision(static, "static policy: every candidate failed while being timed", skipped, static,
                        failed=failed)
    if rounds == 0 and len(times) == 1 and len(takers) > 1 + len(failed):
        (only, t), = times.items()
        tuning_cache.store(call, only, static, times, 0)
        return Decision(only, f"static policy: one call of {only!r} takes {t:.2f} s, so the others are not timed "
                        "(each would cost several such calls)", skipped, static, times, failed)
    best = min(times, key=lambda n: (times[n], takers.index(n)))
    if static in times and (best == static or times[best] * (1 + MARGIN) >= times[static]):
        chosen, how = static, (f"measured: the static choice {static!r} is fastest" if best == static else
                               f"measured: {best!r} is within {MARGIN:.0%} of the static choice {static!r}, "
                               "which is kept")
    elif static in times and (ratio := _paired_ratio(samples.get(static), samples.get(best))) < 1 + MARGIN:
        chosen, how = static, (f"measured: {best!r} has the fastest sample, but round by round it is only "
                               f"{ratio:.2f}x the static choice {static!r}, which is kept")
    else:
        chosen = best
        how = (f"measured: {best!r} is {times[static] / times[best]:.2f}x the static choice {static!r}"
               if static in times else f"measured: {best!r} is fastest (the static choice {static!r} failed)")
    tuning_cache.store(call, chosen, static, times, rounds)
    return Decision(chosen, how, skipped, static, times, failed, rounds)


def _sizes(c: Call) -> tuple:
    return tuple(v for n, v in c.dims if n.endswith("<="))


def _flags(c: Call) -> set:
    return {f for f in c.dims if isinstance(f[1], bool)}


def _competitive(call: Call, static: str) -> frozenset:
    """The backends that ran within COMPETITIVE of `static` at the largest smaller measured size of
    this op (same device, dtype, mode and flags such as causal and dropout; every size bucket at
    most this call's; head dim and head counts may differ: the `xl` benchmark shape has D = 128, the
    next smaller one D = 64): the only ones worth timing when one call of this size is long. (AMD
    EPYC Zen 3, fp32 fwd+bwd, 2 threads: sdpa took 0.93x the cpu kernel's time at `long` and
    0.76-0.79x at `xl`, where one call of the cpu kernel takes 3 s.)"""
    same = lambda c: (_sizes(c) != _sizes(call) and all(a <= b for a, b in zip(_sizes(c), _sizes(call)))  # noqa: E731
                      and (c.op, c.device, c.device_name, c.dtype, c.needs_grad)
                      == (call.op, call.device, call.device_name, call.dtype, call.needs_grad)
                      and _flags(c) == _flags(call))
    smaller = [(c, d.times) for (c, b), d in _decisions.items() if b is None and d.times]
    smaller += [(tuning_cache.to_call(e), {n: t / 1e6 for n, t in e["times_us"].items()})
                for e in tuning_cache.entries().values()]
    smaller = [(c, times) for c, times in smaller if same(c)]
    if not smaller:
        return frozenset()
    _, times = max(smaller, key=lambda ct: sum(_sizes(ct[0])))
    if static not in times:
        return frozenset()
    return frozenset(n for n, t in times.items() if n != static and t <= COMPETITIVE * times[static])


def _paired_ratio(static: Optional[list], challenger: Optional[list]) -> float:
    """The median over the rounds of static's time / challenger's time. Samples of one round are
    taken side by side, so under a load that never lets up the ratio still compares like with like
    (fastest samples alone mislead there: on a 2-core machine at load 9 they sent a fwd+bwd key to
    the eager composition, which the benchmark then timed at 0.62x the cpu kernel). inf when static
    has no samples (pruned after the warm-up as several times slower), 1 when the challenger has none."""
    if not static:
        return float("inf")
    if not challenger:
        return 1.0
    return statistics.median(s / c for s, c in zip(static, challenger))


def _steps(spec: OpSpec, args: tuple, needs_grad: bool, names: List[str]) -> dict:
    """One zero-argument step per backend: the op on private copies of args (forward, plus backward
    when grads are needed). Nothing the caller holds is touched, and no RNG is drawn from."""
    copies = tuple(a.detach().clone().requires_grad_(needs_grad and a.requires_grad)
                   if isinstance(a, torch.Tensor) else a for a in args)
    wanted = [a for a in copies if isinstance(a, torch.Tensor) and a.requires_grad]

    def step_of(impl):
        if not needs_grad:
            def forward():
                with torch.no_grad():
                    impl(*copies)
            return forward
        seed = []

        def forward_backward():
            with torch.enable_grad():
                out = impl(*copies)
                if not seed:
                    seed.append(torch.ones_like(out))
                torch.autograd.grad(out, wanted, seed[0])
        return forward_backward
    return {name: step_of(BACKENDS[name].impls[spec.name]) for name in names}


def _matches(c: Call, probe: Call) -> bool:
    """Whether measured key c is one of the calls a traced probe stands for: the same op, device,
    dtype, mode and head dim, and every fact the probe names (a flag missing from a key, such as
    attention's dropout fact, reads as False)."""
    facts = dict(c.dims)
    return ((c.op, c.device, c.device_name, c.dtype, c.needs_grad, c.head_dim)
            == (probe.op, probe.device, probe.device_name, probe.dtype, probe.needs_grad, probe.head_dim)
            and all(facts.get(name, False) == value for name, value in probe.dims))


def _traced_choice(op: str, device: torch.device, dtype: torch.dtype, grad: bool, facts: tuple,
                   backend: Optional[str]) -> str:
    """The backend for a call under torch.compile tracing, a constant of the graph: without sizes
    (dynamic shapes make them symbolic), it takes the measured decision when every measured size
    of this op, device, dtype, head dim and mode agrees on one backend, else the static policy."""
    head_dim, dims = facts
    probe = Call(op, device.type, dtype, head_dim, dims, grad, _device_name(device))
    chosen, skipped, how = registry.decide(probe, backend)
    name = chosen.name
    if not how.startswith("requested") and tuning_enabled():
        measured = {d.backend for (c, b), d in _decisions.items() if b is None and d.times and _matches(c, probe)}
        measured |= {e["backend"] for e in tuning_cache.entries().values() if _matches(tuning_cache.to_call(e), probe)}
        if len(measured) == 1 and BACKENDS[(only := measured.pop())].refuses(probe) is None:
            name = only
    for skipped_name, why in skipped:
        registry.warn_once(f"babygpt_ext: backend {skipped_name!r} skipped for {op} ({device.type}, {dtype}): "
                           f"{why}; using {name!r}")
    return name


# torch.compiler.assume_constant_result(_traced_choice), spelled out: the public decorator imports
# torch._dynamo (about a second, and it pulls in triton) just to set this attribute, and importing
# babygpt_ext must stay light and Triton-free on a CPU-only path. tests/test_compile.py fails if a
# torch release stops honouring the attribute (the fullgraph compile would then break the graph).
_traced_choice._dynamo_marked_constant = True
