"""torch.library.opcheck on every op of every compiled backend: schema, fake kernel, autograd
registration and AOT dispatch all agree with the real kernel."""

import pytest
import torch

from babygpt_ext.ops.backends import COMPILED, compiled_ops
from conftest import CPU_BACKENDS

COMPILED_HERE = [b for b in CPU_BACKENDS if b in COMPILED]


def attn_samples(dtype, grad):
    out = []
    for (h, hkv, tq, tk, d, causal) in [(2, 1, 5, 5, 8, True), (2, 2, 3, 7, 16, True), (4, 2, 6, 3, 8, False)]:
        q = torch.randn(1, h, tq, d, dtype=dtype, requires_grad=grad)
        k = torch.randn(1, hkv, tk, d, dtype=dtype, requires_grad=grad)
        v = torch.randn(1, hkv, tk, d, dtype=dtype, requires_grad=grad)
        out.append((q, k, v, d ** -0.5, causal))
    return out


def lora_samples(dtype, grad):
    x = torch.randn(5, 8, dtype=dtype, requires_grad=grad)
    w, b = torch.randn(6, 8, dtype=dtype), torch.randn(6, dtype=dtype)
    a = torch.randn(2, 8, dtype=dtype, requires_grad=grad)
    bm = torch.randn(6, 2, dtype=dtype, requires_grad=grad)
    return [(x, w, b, a, bm, 0.5), (x, w, None, a, bm, 2.0)]


@pytest.mark.parametrize("backend", COMPILED_HERE)
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_opcheck_attn_fwd(backend, grad):
    for args in attn_samples(torch.float32, grad):
        torch.library.opcheck(compiled_ops(backend).attn_fwd.default, args)


@pytest.mark.parametrize("backend", COMPILED_HERE)
def test_opcheck_attn_bwd(backend):
    ns = compiled_ops(backend)
    for q, k, v, scale, causal in attn_samples(torch.float32, False):
        o, lse = ns.attn_fwd(q, k, v, scale, causal)
        torch.library.opcheck(ns.attn_bwd.default, (torch.randn_like(o), q, k, v, o, lse, scale, causal))


@pytest.mark.parametrize("backend", COMPILED_HERE)
@pytest.mark.parametrize("grad", [False, True], ids=["no-grad", "grad"])
def test_opcheck_lora_fwd(backend, grad):
    for args in lora_samples(torch.float32, grad):
        torch.library.opcheck(compiled_ops(backend).lora_fwd.default, args)


@pytest.mark.parametrize("backend", COMPILED_HERE)
@pytest.mark.parametrize("need_dweight,need_dbias", [(False, False), (True, True)])
def test_opcheck_lora_bwd(backend, need_dweight, need_dbias):
    ns = compiled_ops(backend)
    for x, w, b, a, bm, scale in lora_samples(torch.float32, False):
        y, xa = ns.lora_fwd(x, w, b, a, bm, scale)
        torch.library.opcheck(ns.lora_bwd.default,
                              (torch.randn_like(y), x, w, a, bm, xa, scale, need_dweight, need_dbias and b is not None))
