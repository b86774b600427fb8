"""lora_linear per backend (frozen base, LoRA factors trainable), grouped by shape and pass."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.bench.shapes import LORA_SHAPES
from babygpt_ext.bench.runner import backend_arg
from bench_params import device_backends, timed


@pytest.mark.parametrize("shape", LORA_SHAPES, ids=lambda s: s.name.replace(" ", "-"))
@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "fwd+bwd"])
@pytest.mark.parametrize("device,backend", device_backends("lora"))
def test_lora(benchmark, device, backend, shape, backward):
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    mk = lambda *s, grad=False: (torch.randn(*s, device=device) * 0.1).to(dtype).requires_grad_(grad)
    x, w, b = mk(shape.N, shape.d_in, grad=backward), mk(shape.d_out, shape.d_in), mk(shape.d_out)
    a, bm = mk(shape.r, shape.d_in, grad=backward), mk(shape.d_out, shape.r, grad=backward)
    dy = torch.randn(shape.N, shape.d_out, device=device, dtype=dtype)

    def step():
        y = ops.lora_linear(x, w, b, a, bm, 2.0, backend=backend_arg(backend))
        if backward:
            y.backward(dy)
        return y

    benchmark.group = f"lora {shape.name} {'fwd+bwd' if backward else 'fwd'} {device}"
    benchmark(timed(device, step))
