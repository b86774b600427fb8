"""causal_attention per backend, grouped by shape and pass so pytest-benchmark shows them side by side."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.bench.shapes import ATTENTION_SHAPES
from babygpt_ext.bench.runner import backend_arg
from bench_params import device_backends, timed


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=lambda s: s.name)
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("device,backend", device_backends("attention"))
def test_attention(benchmark, device, backend, shape, backward):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    q = torch.randn(shape.B, shape.H, shape.T, shape.D, device=device, dtype=dtype, requires_grad=backward)
    k, v = (torch.randn(shape.B, shape.kv_heads, shape.T, shape.D, device=device, dtype=dtype,
                        requires_grad=backward) for _ in range(2))
    do = torch.randn_like(q)

    def step():
        o = ops.causal_attention(q, k, v, backend=backend_arg(backend))
        if backward:
            o.backward(do)
        return o

    benchmark.group = f"attention {shape.name} {'fwd+bwd' if backward else 'fwd'} {device}"
    benchmark.extra_info["tflops_per_call"] = shape.flops(True, backward) / 1e12
    benchmark(timed(device, step))
