"""Bad input raises TypeError/ValueError naming the argument and the shapes, before any kernel
runs, on every backend (the checks live in front of the dispatch, so no backend can skip them)."""

import pytest
import torch

from babygpt_ext import ops
from conftest import CPU_BACKENDS


def qkv(b=1, h=2, hkv=2, tq=4, tk=4, d=8, dtype=torch.float32):
    return torch.randn(b, h, tq, d, dtype=dtype), torch.randn(b, hkv, tk, d, dtype=dtype), torch.randn(b, hkv, tk, d, dtype=dtype)


q, k, v = qkv()
ATTN_BAD = [
    ("q 3-D", (q[0], k, v), {}, ValueError, r"q must be 4-D, got shape \(2, 4, 8\)"),
    ("k 5-D", (q, k[None], v), {}, ValueError, r"k must be 4-D"),
    ("batch mismatch", (torch.randn(2, 2, 4, 8), k, v), {}, ValueError, r"same batch size B.*q \(2, 2, 4, 8\), k \(1, 2, 4, 8\)"),
    ("head dim mismatch", (torch.randn(1, 2, 4, 7), k, v), {}, ValueError, r"same head dim D"),
    ("k/v shapes differ", (q, k, v[:, :, :3]), {}, ValueError, r"k and v must have the same shape"),
    ("H not a multiple of Hkv", (torch.randn(1, 3, 4, 8), k, v), {}, ValueError, r"H=3 must be a multiple of .*Hkv=2"),
    ("causal Tq > Tk", (torch.randn(1, 2, 5, 8), k, v), {}, ValueError, r"causal attention needs Tq <= Tk.*Tq=5, Tk=4"),
    ("no heads", (q[:, :0], k, v), {}, ValueError, r"heads H, Hkv and the head dim D must be at least 1"),
    ("empty head dim", (q[..., :0], k[..., :0], v[..., :0]), {}, ValueError, r"head dim D must be at least 1"),
    ("integer dtype", (q.long(), k.long(), v.long()), {}, TypeError, r"q must be float16, bfloat16, float32 or float64, got torch.int64"),
    ("mixed dtypes", (q, k.double(), v), {}, TypeError, r"k has dtype torch.float64 but q has torch.float32"),
    ("mixed devices", (q, k.to("meta"), v), {}, ValueError, r"k is on meta but q is on cpu"),
    ("not a tensor", (q.tolist(), k, v), {}, TypeError, r"q must be a torch.Tensor, got list"),
    ("causal not bool", (q, k, v), {"causal": 1}, TypeError, r"causal must be a bool"),
    ("scale not a number", (q, k, v), {"scale": "0.1"}, TypeError, r"scale must be a real number"),
    ("scale not finite", (q, k, v), {"scale": float("inf")}, ValueError, r"scale must be finite"),
]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("args,kwargs,exc,match", [pytest.param(*c[1:], id=c[0]) for c in ATTN_BAD])
def test_attention_rejects_bad_input(backend, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ops.causal_attention(*args, backend=backend, **kwargs)


x, w, bias, a, bm = torch.randn(3, 8), torch.randn(6, 8), torch.randn(6), torch.randn(2, 8), torch.randn(6, 2)
LORA_BAD = [
    ("x wrong width", (torch.randn(3, 7), w, bias, a, bm, 1.0), ValueError, r"x must be \(\.\.\., in_features=8\).*x \(3, 7\)"),
    ("weight 1-D", (x, w[0], bias, a, bm, 1.0), ValueError, r"weight must be 2-D"),
    ("lora_a wrong in", (x, w, bias, torch.randn(2, 5), bm, 1.0), ValueError, r"lora_a must be \(r, in_features=8\)"),
    ("lora_b wrong rank", (x, w, bias, a, torch.randn(6, 3), 1.0), ValueError, r"lora_b must be \(out_features=6, r=2\)"),
    ("bias wrong size", (x, w, torch.randn(5), a, bm, 1.0), ValueError, r"bias must be \(out_features=6,\)"),
    ("integer x", (x.long(), w, bias, a, bm, 1.0), TypeError, r"x must be float16"),
    ("mixed dtypes", (x, w.half(), bias, a, bm, 1.0), TypeError, r"weight has dtype torch.float16 but x has torch.float32"),
    ("mixed devices", (x, w, bias, a.to("meta"), bm, 1.0), ValueError, r"lora_a is on meta"),
    ("scale None", (x, w, bias, a, bm, None), TypeError, r"scale must be a real number"),
    ("in_features 0", (x[:, :0], w[:, :0], bias, a[:, :0], bm, 1.0), ValueError,
     r"in_features \(weight.shape\[1\]\) must be at least 1.*x \(3, 0\)"),
]


@pytest.mark.parametrize("backend", [b for b in CPU_BACKENDS if "lora" in ops.BACKENDS[b].impls])
@pytest.mark.parametrize("args,exc,match", [pytest.param(*c[1:], id=c[0]) for c in LORA_BAD])
def test_lora_rejects_bad_input(backend, args, exc, match):
    with pytest.raises(exc, match=match):
        ops.lora_linear(*args, backend=backend)


def test_unknown_backend_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown backend 'fast'; known backends: eager, sdpa, cpu"):
        ops.causal_attention(q, k, v, backend="fast")
