"""Attention dropout inside the op: one counter-based mask (csrc/dropout_rng.h, Philox-4x32-10) on every
backend. The torch twin (ops.dropout_mask) is checked against Philox's published test vectors; each
kernel's mask is read back exactly and must be that mask; outputs and gradients equal the eager
composition with it; kept fraction, determinism, seeds, p = 0, validation, the engine, compile."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.ops import dropout, engine, reference
from conftest import CPU_BACKENDS, SLOW_BACKENDS, backend_param, dtypes_for
from tolerance import FWD_FACTOR, GRAD_FACTOR, assert_close

# sdpa refuses dropout calls (torch's SDPA draws its own mask); every other backend takes them.
DROPOUT_BACKENDS = [b for b in CPU_BACKENDS if b != "sdpa"]


def test_philox_matches_the_published_test_vectors():
    """Random123's known-answer vectors for Philox-4x32-10 (kat_vectors): the twin is Philox."""
    cases = [((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
             ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
             ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
              (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1))]
    for ctr, key, want in cases:
        got = dropout.philox(*(torch.tensor([c]) for c in ctr), *key)
        assert tuple(int(w) for w in got) == want, (ctr, key)


def test_mask_layout_is_the_documented_function_of_seed_and_position():
    """Score (b, h, i, j) takes word (j >> 2) & 3 of the block at counter ((j >> 4) * 4 + (j & 3), i, h, b)."""
    seed, p = 0x1234_5678_9ABC, 0.3
    mask = dropout.dropout_mask(seed, 2, 3, 5, 37, p)
    k0, k1 = dropout.keys(seed)
    for b, h, i, j in [(0, 0, 0, 0), (1, 2, 4, 36), (0, 1, 3, 17), (1, 0, 2, 22)]:
        words = dropout.philox(*(torch.tensor([c]) for c in ((j >> 4) * 4 + (j & 3), i, h, b)), k0, k1)
        assert bool(mask[b, h, i, j]) == (int(words[(j >> 2) & 3]) >= dropout.threshold(p))


@pytest.mark.parametrize("p", [0.1, 0.2, 0.5])
def test_kept_fraction_is_one_minus_p(p):
    mask = dropout.dropout_mask(7, 4, 8, 256, 256, p)  # 2M scores
    assert abs(mask.double().mean().item() - (1 - p)) < 0.01


def test_fixed_seed_repeats_and_seeds_differ():
    a, b, c = (dropout.dropout_mask(s, 2, 2, 64, 64, 0.2) for s in (5, 5, 6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert (a != c).double().mean() > 0.2, "two seeds must give (nearly) independent masks"


def kernel_mask(backend, b, h, t, p, seed):
    """The mask a backend applies, read back exactly: q = 0 makes every probability 1/t, v = I makes
    output row i the row of P ∘ Z over the keys, so it is nonzero exactly where score (i, j) is kept."""
    q = torch.zeros(b, h, t, t)
    v = torch.eye(t).expand(b, 1, t, t).contiguous()
    o = ops.causal_attention(q, v, v, causal=False, dropout_p=p, seed=seed, backend=backend)
    kept = o != 0
    assert torch.allclose(o[kept], torch.tensor(1.0 / (t * (1 - p)))), "kept weights must be 1 / (T (1 - p))"
    return kept


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_every_backend_draws_the_shared_mask(backend):
    b, h, t = (1, 2, 32) if backend in SLOW_BACKENDS else (2, 3, 80)  # 80 keys: a ragged key block
    for seed, p in [(1, 0.2), (2**40 + 3, 0.5)]:
        assert torch.equal(kernel_mask(backend, b, h, t, p, seed), dropout.dropout_mask(seed, b, h, t, t, p))


@pytest.mark.parametrize("backend", [b for b in DROPOUT_BACKENDS if b not in SLOW_BACKENDS])
def test_decode_row_draws_the_shared_mask(backend):
    """Tq = 1 (the CPU kernel's decode path) against 200 keys: query row 0 of each head."""
    q = torch.zeros(2, 2, 1, 200)
    v = torch.eye(200).expand(2, 2, 200, 200).contiguous()
    o = ops.causal_attention(q, v, v, dropout_p=0.3, seed=9, backend=backend)
    assert torch.equal(o != 0, dropout.dropout_mask(9, 2, 2, 1, 200, 0.3))


# (B, H, Hkv, Tq, Tk, D, causal): causal and not, GQA, Tq < Tk, ragged blocks, D not a vector multiple.
SHAPES = [(2, 4, 2, 70, 70, 32, True), (1, 2, 2, 17, 83, 59, True), (2, 2, 1, 9, 20, 16, False),
          (1, 2, 2, 1, 130, 64, True)]
SLOW_SHAPES = [(1, 2, 1, 17, 17, 16, True), (1, 2, 2, 5, 33, 16, False)]


def grads_of(fn, inputs, dout):
    leaves = [t.detach().clone().requires_grad_() for t in inputs]
    out = fn(*leaves)
    return (out.detach(), *torch.autograd.grad(out, leaves, dout))


CASES = [backend_param("attention", b, dt, s[5], s, id=f"{b}-{'x'.join(map(str, s[:6]))}-"
                       f"{'causal' if s[6] else 'full'}-{str(dt)[6:]}")
         for b in DROPOUT_BACKENDS for s in (SLOW_SHAPES if b in SLOW_BACKENDS else SHAPES) for dt in dtypes_for(b)]


@pytest.mark.parametrize("backend,shape,dtype", CASES)
def test_forward_and_gradients_equal_the_eager_composition_with_the_mask(backend, shape, dtype):
    b, h, hkv, tq, tk, d, causal = shape
    p, seed = 0.2, 77
    base = (torch.randn(b, h, tq, d, dtype=torch.float64), torch.randn(b, hkv, tk, d, dtype=torch.float64),
            torch.randn(b, hkv, tk, d, dtype=torch.float64))
    dout = torch.randn(b, h, tq, d, dtype=torch.float64)
    seed_t, scale = dropout.seed_tensor(seed), d ** -0.5

    def eager(q, k, v):
        return reference.attention(q, k, v, scale, causal, p, seed_t)
    ref = grads_of(eager, base, dout)
    low = [t.to(dtype) for t in base]
    eager_low = grads_of(eager, low, dout.to(dtype))
    got = grads_of(lambda q, k, v: ops.causal_attention(q, k, v, causal=causal, dropout_p=p, seed=seed,
                                                        backend=backend), low, dout.to(dtype))
    for name, g, r, e in zip(("o", "dq", "dk", "dv"), got, ref, eager_low):
        assert_close(g, r, e, name, FWD_FACTOR if name == "o" else GRAD_FACTOR)


@pytest.mark.parametrize("backend", [b for b in DROPOUT_BACKENDS if b in ("cpu", "eager")])
def test_gradcheck_float64_with_dropout(backend):
    q = torch.randn(1, 2, 6, 4, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 1, 9, 4, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 1, 9, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda q, k, v: ops.causal_attention(q, k, v, dropout_p=0.3, seed=4, backend=backend), (q, k, v))


@pytest.mark.parametrize("backend", DROPOUT_BACKENDS)
def test_p_zero_is_the_path_without_dropout_bit_for_bit(backend):
    q, k, v = torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16), torch.randn(1, 2, 33, 16)
    plain = ops.causal_attention(q, k, v, backend=backend)
    assert torch.equal(ops.causal_attention(q, k, v, dropout_p=0.0, seed=3, backend=backend), plain)
    assert torch.equal(ops.causal_attention(q, k, v, dropout_p=0, backend=backend), plain)


def test_seed_none_draws_from_torch_generator():
    q = torch.randn(1, 2, 40, 16)
    torch.manual_seed(10)
    a = ops.causal_attention(q, q, q, dropout_p=0.3, backend="cpu" if "cpu" in CPU_BACKENDS else "eager")
    b = ops.causal_attention(q, q, q, dropout_p=0.3, backend="cpu" if "cpu" in CPU_BACKENDS else "eager")
    torch.manual_seed(10)
    c = ops.causal_attention(q, q, q, dropout_p=0.3, backend="cpu" if "cpu" in CPU_BACKENDS else "eager")
    assert torch.equal(a, c), "torch.manual_seed must make the dropout mask repeat"
    assert not torch.equal(a, b), "consecutive calls must draw different masks"


@pytest.mark.parametrize("kw,err,match", [
    ({"dropout_p": 1.0}, ValueError, r"dropout_p must be in \[0, 1\).*got 1\.0"),
    ({"dropout_p": -0.1}, ValueError, r"dropout_p must be in \[0, 1\)"),
    ({"dropout_p": True}, TypeError, r"dropout_p must be a real number"),
    ({"dropout_p": "0.1"}, TypeError, r"dropout_p must be a real number.*str"),
    ({"dropout_p": 0.1, "seed": 1.5}, TypeError, r"seed must be an int or None.*float"),
    ({"dropout_p": 0.1, "seed": -1}, ValueError, r"seed must be in \[0, 2\*\*63 - 1\), got -1"),
])
def test_bad_dropout_arguments_are_named(kw, err, match):
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(err, match=match):
        ops.causal_attention(q, q, q, **kw)


def test_sdpa_refuses_dropout_and_says_why():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match=r"backend 'sdpa' cannot run.*attention dropout: SDPA draws its own mask"):
        ops.causal_attention(q, q, q, dropout_p=0.1, backend="sdpa")


def test_dropout_is_its_own_call_key_and_measuring_draws_nothing(fresh_engine, monkeypatch):
    monkeypatch.setenv(engine.TUNE_VAR, "1")
    q = torch.randn(1, 2, 24, 16, requires_grad=True)
    plain = ops.explain(q, q, q)
    dropped = ops.explain(q, q, q, dropout_p=0.1)
    assert "dropout" not in plain.key and "dropout=True" in dropped.key
    assert "sdpa" in plain.times and "sdpa" not in dropped.times, (plain.times, dropped.times)
    # A measured first call draws its one seed from torch's generator, nothing more.
    engine.reset()
    torch.manual_seed(5)
    ops.causal_attention(q, q, q, dropout_p=0.1)
    after_call = torch.randint(0, 2**62, (4,))
    torch.manual_seed(5)
    dropout.draw_seed()
    assert torch.equal(torch.randint(0, 2**62, (4,)), after_call)


@pytest.mark.parametrize("backend", [b for b in DROPOUT_BACKENDS if b in ("cpu", "eager")] + [None])
def test_compiles_fullgraph_with_a_drawn_seed(backend):
    """seed=None draws the seed with a tensor op inside the graph; with a given seed the compiled
    forward and gradients equal eager's."""
    torch._dynamo.reset()
    q = torch.randn(1, 2, 12, 8, requires_grad=True)

    def f(q, seed=None):
        return ops.causal_attention(q, q, q, dropout_p=0.25, seed=seed, backend=backend)
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, b = compiled(q), compiled(q)
    assert not torch.equal(a, b), "each compiled call must draw a new seed"
    torch.autograd.grad(a.sum(), q)
    want = f(q, 123)
    got = compiled(q, 123)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got.square().sum(), q)[0],
                               torch.autograd.grad(want.square().sum(), q)[0])
