"""The attention modules of babygpt_ext.nn: causality (the seed's bug), math against an eager float64
composition, KV-cache decoding, attention dropout in the op, and input validation."""

import math

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import reference
from babygpt_ext.nn import (CausalSelfAttention, CrossAttention, DotProductAttention, KVCache, MultiHeadAttention,
                            SpatialAttention, SpatialTransformer)

BACKENDS = ops.available_backends("cpu")


def future_leaks(fn, x: torch.Tensor, t: int) -> bool:
    """True if changing positions >= t of x (B, T, C) changes any output at positions < t."""
    x2 = x.clone()
    x2[:, t:] = torch.randn_like(x2[:, t:])
    y1, y2 = fn(x), fn(x2)
    assert not torch.allclose(y1[:, t:], y2[:, t:]), "the perturbation must reach the later outputs"
    return not torch.allclose(y1[:, :t], y2[:, :t], rtol=0, atol=1e-6)


def leaky_attention(x: torch.Tensor) -> torch.Tensor:
    """The seed's bug: masked scores normalised over the queries (dim=-2) instead of the keys."""
    T = x.shape[1]
    att = (x @ x.transpose(-2, -1)) / math.sqrt(x.shape[-1])
    att = att.masked_fill(torch.ones(T, T, dtype=torch.bool).tril().logical_not(), float("-inf"))
    return torch.softmax(att, dim=-2) @ x


def test_the_causality_check_catches_the_seed_bug():
    # The check below must be able to fail: the seed's softmax over the wrong axis leaks the future.
    assert future_leaks(leaky_attention, torch.randn(2, 7, 8), 3)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [
    lambda b: DotProductAttention(12, 5, backend=b),
    lambda b: MultiHeadAttention(12, 3, backend=b),
    lambda b: CausalSelfAttention(12, 4, backend=b),
    lambda b: CausalSelfAttention(12, 4, n_kv_head=2, backend=b),  # GQA
    lambda b: CausalSelfAttention(12, 4, qkv_rank=3, backend=b),  # low-rank q/k/v
], ids=["dot", "mha", "csa", "csa-gqa", "csa-lowrank"])
def test_future_never_changes_the_past(make, backend):
    torch.manual_seed(0)
    m = make(backend).eval()
    x = torch.randn(2, 9, 12)
    with torch.no_grad():
        for t in (1, 4, 8):
            assert not future_leaks(m, x, t), f"position < {t} saw the future"


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_causal_modules_do_see_the_whole_sequence(backend):
    torch.manual_seed(0)
    m = MultiHeadAttention(8, 2, causal=False, backend=backend).eval()
    with torch.no_grad():
        assert future_leaks(m, torch.randn(1, 6, 8), 3)


def eager64(q, k, v, causal):
    q, k, v = q.double(), k.double(), v.double()
    att = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if causal:
        tq, tk = q.shape[-2], k.shape[-2]
        att = att.masked_fill(torch.ones(tq, tk, dtype=torch.bool).tril(tk - tq).logical_not(), float("-inf"))
    return torch.softmax(att, dim=-1) @ v


@pytest.mark.parametrize("backend", BACKENDS)
def test_causal_self_attention_matches_nanogpt_math(backend):
    torch.manual_seed(1)
    m = CausalSelfAttention(16, 4, backend=backend).eval()
    x = torch.randn(3, 7, 16)
    q, k, v = m.c_attn(x).split(16, dim=2)
    heads = lambda t: t.view(3, 7, 4, 4).transpose(1, 2)  # noqa: E731
    y = eager64(heads(q), heads(k), heads(v), True).transpose(1, 2).reshape(3, 7, 16)
    want = m.c_proj(y.float())
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_decoding_equals_full_forward(backend):
    torch.manual_seed(2)
    m = CausalSelfAttention(16, 4, n_kv_head=2, backend=backend).eval()
    x = torch.randn(2, 10, 16)
    full = m(x)
    cache = m.new_kv_cache(2, 12)
    parts = [m(x[:, :6], kv_cache=cache)] + [m(x[:, t:t + 1], kv_cache=cache) for t in range(6, 10)]
    assert cache.length == 10
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-6)


def test_kv_cache_rejects_overflow_and_bad_shapes():
    cache = KVCache(1, 2, 4, 8)
    cache.append(torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8))
    with pytest.raises(ValueError, match="full"):
        cache.append(torch.randn(1, 2, 2, 8), torch.randn(1, 2, 2, 8))
    with pytest.raises(ValueError, match=r"\(1, 3, 1, 8\)"):
        cache.append(torch.randn(1, 3, 1, 8), torch.randn(1, 3, 1, 8))
    with pytest.raises(ValueError, match="max_len"):
        KVCache(1, 2, 0, 8)


def test_attention_dropout_runs_in_the_op_while_training():
    torch.manual_seed(3)
    m = CausalSelfAttention(16, 4, dropout=0.5).train()
    x = torch.randn(2, 8, 16)
    y1 = m(x)
    y2 = m(x)
    assert not torch.allclose(y1, y2), "dropout must be active in training"
    # The mask is a function of (seed, b, h, i, j): same seed, same masks; a query never sees a
    # later key, so changing the future keeps the past.
    x2 = x.clone()
    x2[:, 5:] = torch.randn(2, 3, 16)
    torch.manual_seed(11)
    a = m(x)
    torch.manual_seed(11)
    b = m(x2)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    m.eval()  # eval: no dropout, the plain composition
    q, k, v = (t.view(2, 8, 4, 4).transpose(1, 2) for t in m.c_attn(x).split(16, 2))
    want = m.c_proj(reference.attention(q, k, v, 0.5, True).transpose(1, 2).reshape(2, 8, 16))
    torch.testing.assert_close(m(x), want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_cross_attention_matches_eager_with_different_widths_and_lengths(backend):
    torch.manual_seed(4)
    m = CrossAttention(query_dim=12, context_dim=20, n_head=3, head_dim=5, backend=backend).eval()
    x, ctx = torch.randn(2, 7, 12), torch.randn(2, 11, 20)
    heads = lambda t: t.view(2, -1, 3, 5).transpose(1, 2)  # noqa: E731
    y = eager64(heads(m.to_q(x)), heads(m.to_k(ctx)), heads(m.to_v(ctx)), False)
    want = m.to_out(y.transpose(1, 2).reshape(2, 7, 15).float())
    out = m(x, ctx)
    assert out.shape == (2, 7, 12)
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-5)


def test_cross_attention_validates_inputs():
    m = CrossAttention(12, 20, 3, 5)
    with pytest.raises(ValueError, match=r"context must be \(B, T, 20\).*\(2, 11, 19\)"):
        m(torch.randn(2, 7, 12), torch.randn(2, 11, 19))
    with pytest.raises(ValueError, match="batch size"):
        m(torch.randn(2, 7, 12), torch.randn(3, 11, 20))
    with pytest.raises(ValueError, match="context is required"):
        m(torch.randn(2, 7, 12))
    with pytest.raises(ValueError, match=r"x must be \(B, T, 12\)"):
        m(torch.randn(7, 12), torch.randn(2, 11, 20))


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_attention_matches_eager(backend):
    torch.manual_seed(5)
    m = SpatialAttention(8, n_head=2, groups=4, backend=backend).eval()
    x = torch.randn(2, 8, 3, 5)
    h = m.norm(x)
    seq = lambda t: t.reshape(2, 2, 4, 15).transpose(2, 3)  # noqa: E731  (B, nh, HW, hs)
    y = eager64(seq(m.q(h)), seq(m.k(h)), seq(m.v(h)), False).transpose(2, 3).reshape(2, 8, 3, 5)
    torch.testing.assert_close(m(x), x + m.proj_out(y.float()), rtol=1e-5, atol=1e-5)


def test_spatial_modules_validate_inputs():
    with pytest.raises(ValueError, match="groups=32 must divide channels=8"):
        SpatialAttention(8)
    with pytest.raises(ValueError, match=r"\(B, C=8, H, W\).*\(2, 6, 3, 3\)"):
        SpatialAttention(8, groups=4)(torch.randn(2, 6, 3, 3))
    st = SpatialTransformer(8, 2, context_dim=6, groups=4)
    with pytest.raises(ValueError, match="needs context"):
        st(torch.randn(1, 8, 2, 2))
    with pytest.raises(ValueError, match="context_dim=None"):
        SpatialTransformer(8, 2, groups=4)(torch.randn(1, 8, 2, 2), torch.randn(1, 3, 6))


@pytest.mark.parametrize("backend", BACKENDS)
def test_spatial_transformer_uses_its_context(backend):
    torch.manual_seed(6)
    st = SpatialTransformer(8, 2, context_dim=6, groups=4, backend=backend).eval()
    x, ctx = torch.randn(2, 8, 3, 4), torch.randn(2, 5, 6)
    y = st(x, ctx)
    assert y.shape == x.shape and torch.isfinite(y).all()
    assert not torch.allclose(y, st(x, torch.randn(2, 5, 6))), "the context must influence the output"
    y.sum().backward()
    assert st.attn2.to_k.weight.grad is not None and st.attn2.to_k.weight.grad.abs().sum() > 0


def test_module_constructors_name_bad_arguments():
    with pytest.raises(ValueError, match="n_embd=10 must be a multiple of n_head=4"):
        CausalSelfAttention(10, 4)
    with pytest.raises(ValueError, match="n_head=4 must be a multiple of n_kv_head=3"):
        CausalSelfAttention(12, 4, n_kv_head=3)
    with pytest.raises(ValueError, match="embed_dim=10 must be a multiple of n_head=4"):
        MultiHeadAttention(10, 4)
    with pytest.raises(ValueError, match=r"n_embd=12\).*\(2, 5, 8\)"):
        CausalSelfAttention(12, 4)(torch.randn(2, 5, 8))
    with pytest.raises(ValueError, match=r"\(B, T, 12\).*\(5, 12\)"):
        DotProductAttention(12)(torch.randn(5, 12))
