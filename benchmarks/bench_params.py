"""Benchmark parameters: every backend usable for a device, on the shapes of docs/design.md §14.2.

    .venv/bin/python -m pytest benchmarks/ --benchmark-group-by=group --benchmark-columns=median,ops
"""

import pytest
import torch

from babygpt_ext.bench.runner import bench_backends

DEVICES = ["cpu", "cuda"]
NO_GPU = "no CUDA device visible to torch (torch.cuda.is_available() is False): run on a GPU machine"


def device_backends(op):
    """(device, backend) pairs; the CUDA ones skip with the reason when there is no GPU."""
    out = []
    for device in DEVICES:
        if device == "cuda" and not torch.cuda.is_available():
            out.append(pytest.param(device, "cuda", marks=pytest.mark.skip(reason=NO_GPU), id="cuda-all"))
            continue
        out += [pytest.param(device, b, id=f"{device}-{b}") for b in bench_backends(device, op)]
    return out


def timed(device, fn):
    """fn, followed by a device synchronisation so GPU work is inside the measured time."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out
    return run
