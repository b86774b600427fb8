"""torch.compile(fullgraph=True) through every op of the table, and a training step through a small
module that uses both ops: the fake kernels and the autograd registration let the compiler trace
the custom ops whole, and the engine's choice is a constant of the graph."""

import pytest
import torch
import torch.nn as nn

from babygpt_ext import ops
from babygpt_ext.ops import engine
from babygpt_ext.ops.table import OPS
from conftest import CPU_BACKENDS, OP_SAMPLES

# The Triton interpreter and the CUDA emulator are exercised by opcheck; compiling through them
# on the CPU would only time the interpreter.
COMPILE_BACKENDS = [b for b in CPU_BACKENDS if b in ("cpu", "eager")] + [None]


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dynamic", [False, None], ids=["static", "auto-dynamic"])
def test_every_op_compiles_whole_and_matches_eager(op, backend, dynamic):
    """Forward and gradients through torch.compile(fullgraph=True), for every sample of the op; with
    automatic dynamic shapes the second sample recompiles with symbolic sizes."""
    torch._dynamo.reset()
    spec = OPS[op]

    def loss_and_grads(fn, args):
        leaves = [a for a in args if isinstance(a, torch.Tensor) and a.requires_grad]
        loss = fn(*args).square().sum()
        return loss.detach(), torch.autograd.grad(loss, leaves)

    compiled = torch.compile(lambda *args: engine.run(spec, args, backend), fullgraph=True, backend="aot_eager",
                             dynamic=dynamic)
    for call in OP_SAMPLES[op]:
        args = spec.make_args(call, "cpu", torch.float32, True)
        loss, grads = loss_and_grads(lambda *a: engine.run(spec, a, backend), args)
        loss_c, grads_c = loss_and_grads(compiled, args)
        torch.testing.assert_close(loss_c, loss)
        for g, gc in zip(grads, grads_c):
            torch.testing.assert_close(gc, g)


class TinyLoRAAttention(nn.Module):
    """x -> LoRA qkv projection -> causal attention -> LoRA output projection."""

    def __init__(self, d=32, heads=4, r=4, backend=None):
        super().__init__()
        self.heads, self.backend = heads, backend
        self.w_qkv, self.w_out = nn.Parameter(torch.randn(3 * d, d) / d ** 0.5), nn.Parameter(torch.randn(d, d) / d ** 0.5)
        self.b_qkv = nn.Parameter(torch.zeros(3 * d))
        self.a_qkv, self.bm_qkv = nn.Parameter(torch.randn(r, d) * 0.1), nn.Parameter(torch.randn(3 * d, r) * 0.1)
        self.a_out, self.bm_out = nn.Parameter(torch.randn(r, d) * 0.1), nn.Parameter(torch.randn(d, r) * 0.1)

    def forward(self, x):  # (B, T, d)
        b, t, d = x.shape
        qkv = ops.lora_linear(x, self.w_qkv, self.b_qkv, self.a_qkv, self.bm_qkv, 2.0, backend=self.backend)
        q, k, v = qkv.view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)  # 3 × (B, nh, T, hs)
        y = ops.causal_attention(q, k, v, backend=self.backend).transpose(1, 2).reshape(b, t, d)
        return ops.lora_linear(y, self.w_out, None, self.a_out, self.bm_out, 2.0, backend=self.backend)


def train_step(model, x):
    model.zero_grad()
    loss = model(x).square().mean()
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("backend", COMPILE_BACKENDS)
def test_compiled_training_step_matches_eager(backend):
    torch._dynamo.reset()
    model = TinyLoRAAttention(backend=backend)
    x = torch.randn(2, 9, 32)
    loss, grads = train_step(model, x)
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    loss_c, grads_c = train_step(compiled, x)
    torch.testing.assert_close(loss_c, loss)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g)


def test_compiled_with_inductor_uses_the_custom_ops():
    """Inductor (the default compiler) keeps babygpt::attn_fwd as an opaque kernel call."""
    torch._dynamo.reset()
    model = TinyLoRAAttention(backend="cpu")
    x = torch.randn(2, 9, 32)
    loss, grads = train_step(model, x)
    loss_c, grads_c = train_step(torch.compile(model, fullgraph=True), x)
    torch.testing.assert_close(loss_c, loss, rtol=1e-5, atol=1e-5)
    for g, gc in zip(grads, grads_c):
        torch.testing.assert_close(gc, g, rtol=1e-4, atol=1e-5)
