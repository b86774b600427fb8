"""Timing candidate backends for one call key within a fixed budget (the engine's stopwatch).

Each candidate is a zero-argument step (forward, or forward + backward) on private copies of the
call's inputs. Protocol: two warm-up calls each (one when a call alone exceeds the budget), the
faster of the two being the first estimate; a candidate that raises is dropped and reported;
candidates far slower than the best estimate are dropped (more samples cannot turn 3x into a
win); then interleaved rounds, rotating the order, until the budget is spent (at least MIN_ROUNDS
where they fit in four budgets, else one; at most MAX_ROUNDS); each sample repeats a short call
until it lasts SAMPLE_S, so neither the timer's resolution nor one preemption decides. The result
is the fastest sample per candidate (on a machine shared with other work load only ever adds
time: on a loaded 2-core machine the median of one backend varied 5x between measurements; the
minimum picked the faster backend 12 times of 12, the median 9 of 12), plus every sample in round
order, so that the engine can also compare two candidates round by round: samples taken side by
side share the machine's load, which a minimum alone does not see when the load never lets up.
A key costs about
BUDGET_S when its calls are short, up to four budgets for mid-sized calls, and about three calls
per candidate when a single call exceeds the budget.

CPU steps are timed by the wall clock; CUDA steps by CUDA events with a synchronisation per sample
(kernels are asynchronous, so the host clock alone would time the launches).
"""

import os
import time
from typing import Callable, Dict, List, Optional, Tuple

import torch

BUDGET_S = 0.05  # per call key, warm-ups included; a single expensive call can overrun it
MIN_ROUNDS, MAX_ROUNDS = 5, 15  # MIN_ROUNDS where they fit in a few budgets, else one round
SAMPLE_S = 2e-3  # long enough that one preemption by another process does not decide a sample
MAX_REPEATS = 64
PRUNE_AFTER_WARMUP = 3.0  # dropped when its estimate is this many times the fastest one's
# When the first candidate (the static choice) takes this many budgets for one call, only the others
# the caller names as competitive are timed (the engine: those within COMPETITIVE of the static
# choice at the nearest smaller measured size): each costs at least two such calls, and a far slower
# one far more (the eager composition in bf16 at T = 4096 on a CPU without bf16 units: about 6
# minutes a call).
LONG_CALL_BUDGETS = 4
# CPU timing is not attempted above this many runnable threads per core (1-minute load average):
# at load 9-15 on 2 cores a 2-thread parallel region waits out whole scheduler slices whenever one
# of its threads is descheduled, a 20 µs call measured 16-36 ms, and the engine picked backends
# the benchmark then timed at 0.11x-0.62x the best; at load 2-3 its choices held.
OVERSUBSCRIBED = 2.0


def cpu_oversubscribed() -> Optional[str]:
    """Why timing on the CPU now would measure other work (the machine runs more than OVERSUBSCRIBED
    threads per core of this process), or None."""
    try:
        load = os.getloadavg()[0]
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no load average or affinity on this OS: assume quiet
        return None
    if load <= OVERSUBSCRIBED * cores:
        return None
    return f"the machine is oversubscribed (load average {load:.1f} on {cores} cores), so timing would measure other work"


class WallClock:
    """Host time around synchronous (CPU) work."""
    now = staticmethod(time.perf_counter)

    def start(self):
        return self.now()

    def stop(self, started) -> float:
        return self.now() - started


class CudaClock(WallClock):
    """CUDA events on the current stream, synchronised at the end of every sample."""

    def start(self):
        ev = torch.cuda.Event(enable_timing=True)
        ev.record()
        return ev

    def stop(self, started) -> float:
        end = torch.cuda.Event(enable_timing=True)
        end.record()
        end.synchronize()
        return started.elapsed_time(end) / 1e3


def clock_for(device: torch.device) -> WallClock:
    return CudaClock() if device.type == "cuda" else WallClock()


def _timed(clock: WallClock, step: Callable, repeats: int) -> float:
    started = clock.start()
    for _ in range(repeats):
        step()
    return clock.stop(started) / repeats


def _failure(e: Exception) -> str:
    text = str(e).splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def time_candidates(steps: Dict[str, Callable], clock: WallClock, budget_s: float, timed_if_long=frozenset()
                    ) -> Tuple[Dict[str, float], Dict[str, str], int, Dict[str, List[float]]]:
    """({name: fastest seconds per step}, {name: why it failed}, rounds, {name: seconds per step of
    each round, in order}) for the given steps. A step that raises, at any point, is dropped and
    reported instead of timed; a candidate pruned after the warm-up has no samples. When the first
    step takes LONG_CALL_BUDGETS budgets, only the names in timed_if_long are timed besides it."""
    begin = clock.now()
    warm, estimated, failed = {}, {}, {}
    long_call = False
    for name, step in steps.items():
        if long_call and name not in timed_if_long:
            continue
        try:
            # The first call pays one-time costs (allocation, lazy setup); a second one, when the
            # first fits the budget, gives an estimate good enough to prune on.
            first = _timed(clock, step, 1)
            if not warm and first >= LONG_CALL_BUDGETS * budget_s:
                # The process's first kernel call can carry its start-up (thread pool, first-touch
                # pages): 0.9-1.7 s at B12 H4 T64 D32 on AMD EPYC Zen 1, where a warm call takes ~5 ms.
                # One more call before the static choice is judged long.
                first = min(first, _timed(clock, step, 1))
            warm[name] = min(first, _timed(clock, step, 1)) if first < budget_s else first
            estimated[name] = first < budget_s
        except Exception as e:  # noqa: BLE001 - any failure means "not this backend"
            failed[name] = _failure(e)
            continue
        if len(warm) == 1 and first >= LONG_CALL_BUDGETS * budget_s:
            long_call = True  # see LONG_CALL_BUDGETS
            if not timed_if_long:
                return dict(warm), failed, 0, {}
    if not warm:
        return {}, failed, 0, {}
    best = min(warm.values())
    alive = [n for n in warm if not estimated[n] or warm[n] <= PRUNE_AFTER_WARMUP * best]
    repeats = {n: max(1, min(MAX_REPEATS, int(SAMPLE_S / max(warm[n], 1e-9)))) for n in alive}
    samples = {n: [] for n in alive}
    round_s = sum(max(warm[n], SAMPLE_S) for n in alive)
    min_rounds = MIN_ROUNDS if round_s * MIN_ROUNDS <= 4 * budget_s else 1
    rounds = 0
    while alive and rounds < MAX_ROUNDS and (rounds < min_rounds or clock.now() - begin < budget_s):
        for name in alive[rounds % len(alive):] + alive[:rounds % len(alive)]:
            try:
                samples[name].append(_timed(clock, steps[name], repeats[name]))
            except Exception as e:  # noqa: BLE001
                failed[name] = _failure(e)
                alive.remove(name)
        rounds += 1
    times = {n: min(samples[n]) for n in alive}
    # Pruned after warm-up: their warm-up time is reported (it says enough: 3x slower at least).
    times.update({n: warm[n] for n in warm if n not in samples})
    return times, failed, rounds, {n: samples[n] for n in alive}
