"""Interleaved timing: every backend is timed in every round, so a noisy neighbour on a shared
machine slows all of them alike and the ratios between them stay meaningful."""

import statistics
import time
from typing import Callable, Dict

import torch


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _calibrate(fn: Callable, device: str, target_s: float) -> int:
    """How many calls make one sample last about target_s (tiny shapes take microseconds)."""
    n = 1
    while True:
        _sync(device)
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        _sync(device)
        dt = time.perf_counter() - t0
        if dt >= target_s or n >= 1 << 16:
            return n
        n = max(n * 2, int(n * target_s / max(dt, 1e-9)))


def time_interleaved(fns: Dict[str, Callable], device: str, rounds: int = 7, warmup: int = 2,
                     target_s: float = 0.02) -> Dict[str, float]:
    """Median seconds per call of each function, sampled round-robin (rotating the order)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    inner = {name: _calibrate(fn, device, target_s) for name, fn in fns.items()}
    samples = {name: [] for name in fns}
    names = list(fns)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            t0 = time.perf_counter()
            for _ in range(inner[name]):
                fns[name]()
            _sync(device)
            samples[name].append((time.perf_counter() - t0) / inner[name])
    return {name: statistics.median(s) for name, s in samples.items()}
