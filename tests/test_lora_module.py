"""LoRALinear and babygpt_ext.lora: the math, merge/unmerge, inject, adapters, and a real fine-tune."""

import random

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import tolerance
from babygpt_ext import lora, ops
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.nn import LoRALinear
from babygpt_ext.ops.registry import Call

# Backends with a LoRA implementation (sdpa is attention only).
BACKENDS = ops.available_backends("cpu", op="lora")


def randomised(layer: LoRALinear) -> LoRALinear:
    with torch.no_grad():  # B starts at zero (the update is then invisible): give it values
        layer.lora_B.normal_()
    return layer


# ---------------------------------------------------------------------------------- LoRALinear
def test_fresh_lora_layer_equals_its_base_and_has_peft_shapes():
    torch.manual_seed(0)
    base = nn.Linear(10, 6)
    layer = LoRALinear(base, r=3, alpha=6)
    assert layer.lora_A.shape == (3, 10) and layer.lora_B.shape == (6, 3) and layer.scale == 2.0
    assert layer.lora_A.abs().sum() > 0 and layer.lora_B.abs().sum() == 0
    x = torch.randn(4, 5, 10)
    torch.testing.assert_close(layer(x), base(x))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bias", [True, False])
def test_lora_forward_and_grads_match_the_eager_formula(backend, bias):
    torch.manual_seed(1)
    layer = randomised(LoRALinear(nn.Linear(12, 7, bias=bias), r=4, alpha=8, backend=backend))
    x = torch.randn(3, 5, 12, requires_grad=True)
    y = layer(x)
    want = F.linear(x, layer.weight, layer.bias) + 2.0 * F.linear(F.linear(x, layer.lora_A), layer.lora_B)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    got = torch.autograd.grad(y, [x, layer.lora_A, layer.lora_B], g)
    ref = torch.autograd.grad(want, [x, layer.lora_A, layer.lora_B], g)
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_merge_and_unmerge():
    torch.manual_seed(2)
    layer = randomised(LoRALinear(nn.Linear(8, 5), r=2, alpha=4))
    w0 = layer.weight.detach().clone()
    x = torch.randn(6, 8)
    y = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer.weight, w0 + 2.0 * layer.lora_B @ layer.lora_A)
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.merge()  # idempotent: not folded in twice
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight, w0, rtol=0, atol=1e-6)


def test_lora_dropout_applies_to_the_low_rank_path_only():
    torch.manual_seed(3)
    layer = randomised(LoRALinear(nn.Linear(16, 4), r=2, alpha=2, dropout=0.5)).train()
    x = torch.randn(32, 16)
    torch.manual_seed(9)
    y = layer(x)
    torch.manual_seed(9)
    mask_x = nn.functional.dropout(x, 0.5, training=True)  # the same dropout draw
    torch.testing.assert_close(y, layer.base(x) + F.linear(F.linear(mask_x, layer.lora_A), layer.lora_B))
    layer.eval()
    torch.testing.assert_close(layer(x), layer.base(x) + F.linear(F.linear(x, layer.lora_A), layer.lora_B),
                               rtol=1e-5, atol=1e-5)


def test_lora_linear_rejects_bad_arguments():
    with pytest.raises(TypeError, match="nn.Linear"):
        LoRALinear(nn.Conv1d(3, 3, 1), 2, 2)
    with pytest.raises(ValueError, match="r must be a positive int"):
        LoRALinear(nn.Linear(3, 3), 0, 2)
    with pytest.raises(ValueError, match=r"in_features=3\).*\(2, 4\)"):
        LoRALinear(nn.Linear(3, 3), 1, 1)(torch.randn(2, 4))


# ------------------------------------------------------------------------------------ autocast
def autocast_case(device, dtype, backend):
    """Skipped with the backend's own reason where it refuses dtype (e.g. bf16 in Triton's interpreter)."""
    why = ops.BACKENDS[backend].refuses(Call("lora", device, dtype))
    marks = [pytest.mark.skip(reason=f"backend {backend} cannot run this here: {why}")] if why else []
    return pytest.param(device, dtype, backend, id=f"{device}-{str(dtype)[6:]}-{backend}", marks=marks)


def autocast_cases():
    cases = [autocast_case("cpu", torch.bfloat16, b) for b in BACKENDS]
    if not torch.cuda.is_available():
        return cases + [pytest.param("cuda", None, None, id="cuda", marks=pytest.mark.skip(
            reason="no CUDA device: CUDA autocast (bf16, fp16) is checked where torch.cuda.is_available()"))]
    cuda = [b for b in ops.available_backends("cuda") if "lora" in ops.BACKENDS[b].impls]
    return cases + [autocast_case("cuda", dt, b) for dt in (torch.bfloat16, torch.float16) for b in cuda]


def eager_lora(x, w, b, a, bm, scale):
    return F.linear(x, w, b) + scale * F.linear(F.linear(x, a), bm)


@pytest.mark.parametrize("device,dtype,backend", autocast_cases())
def test_lora_under_autocast_matches_the_eager_composition(device, dtype, backend):
    torch.manual_seed(4)
    layer = randomised(LoRALinear(nn.Linear(24, 10), r=4, alpha=8, backend=backend)).to(device)
    x = torch.randn(3, 7, 24, device=device, requires_grad=True)
    params = [x, layer.weight, layer.bias, layer.lora_A, layer.lora_B]
    with torch.autocast(device, dtype=dtype):
        y = layer(x)
        eager = eager_lora(*params, layer.scale)
    assert y.dtype == eager.dtype == dtype
    # The float64 reference computes exactly from what autocast feeds the matmuls: inputs rounded to dtype.
    low = [p.detach().to(dtype).double().requires_grad_() for p in params]
    ref = eager_lora(*low, layer.scale)
    tolerance.assert_close(y, ref, eager, "forward under autocast", tolerance.FWD_FACTOR)
    g = torch.randn_like(y)
    got, want = torch.autograd.grad(y, params, g), torch.autograd.grad(eager, params, g)
    for name, a, e, r in zip(("x", "weight", "bias", "lora_A", "lora_B"), got, want,
                             torch.autograd.grad(ref, low, g.double())):
        assert a.dtype == e.dtype == torch.float32, name  # gradients come back in the parameters' dtype
        # They were computed in dtype, so comparing them there loses nothing.
        tolerance.assert_close(a.to(dtype), r, e.to(dtype), f"d{name} under autocast", tolerance.GRAD_FACTOR)


def test_gpt_with_lora_trains_under_cpu_bf16_autocast():
    idx = torch.randint(0, 20, (2, 12))
    losses = {}
    for backend, dropout in (("eager", 0.0), (None, 0.0), (None, 0.1)):
        m = small_gpt()
        lora.inject(m, ("c_attn", "c_proj"), r=2, alpha=4, dropout=dropout, backend=backend)
        for layer in lora.lora_modules(m).values():
            randomised(layer)
        m.train(dropout > 0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits, loss = m(idx, idx)
        assert logits.dtype == torch.bfloat16 and torch.isfinite(loss)
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for n, p in m.named_parameters() if "lora_" in n)
        losses[backend, dropout] = loss.item()
    # The fused op and the eager composition agree to bf16 rounding over the whole model.
    assert abs(losses[None, 0.0] - losses["eager", 0.0]) <= 2e-2 * abs(losses["eager", 0.0])


# -------------------------------------------------------------------------------------- inject
def small_gpt(seed=0, vocab=20) -> GPT:
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=vocab, block_size=16, n_layer=2, n_head=4, n_embd=32))


def test_inject_matches_by_suffix_and_explains_misses():
    m = small_gpt()
    names = lora.inject(m, ("attn.c_proj", "c_fc"), r=2, alpha=4)
    assert names == ["transformer.h.0.attn.c_proj", "transformer.h.0.mlp.c_fc",
                     "transformer.h.1.attn.c_proj", "transformer.h.1.mlp.c_fc"]
    assert isinstance(m.transformer.h[1].mlp.c_fc, LoRALinear)
    assert isinstance(m.transformer.h[1].mlp.c_proj, nn.Linear)  # mlp.c_proj is not attn.c_proj
    with pytest.raises(ValueError, match="no module matches.*q_proj.*c_attn.*lm_head"):
        lora.inject(small_gpt(), ["q_proj"])
    n = lora.mark_only_lora_trainable(m)
    assert n == 2 * (2 * 32 + 32 * 2) + 2 * (2 * 32 + 128 * 2)
    assert {k for k, p in m.named_parameters() if p.requires_grad} == {k for k in lora.lora_state_dict(m)}
    with pytest.raises(ValueError, match="no LoRALinear"):
        lora.mark_only_lora_trainable(small_gpt())


def test_merge_refuses_a_tied_lm_head():
    m = small_gpt()  # tie_weights=True: lm_head.weight is transformer.wte.weight
    lora.inject(m, ("lm_head",), r=2, alpha=2)
    w = m.transformer.wte.weight.detach().clone()
    with pytest.raises(ValueError, match="lm_head's weight is shared with.*wte"):
        lora.merge(m)
    assert torch.equal(m.transformer.wte.weight, w) and not m.lm_head.merged


# ------------------------------------------------------------------------ fine-tuning, end to end
def corpus(words, n_words, seed) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(words) for _ in range(n_words)) + " "


TEXT_A = corpus(["the", "cat", "sat", "on", "mat", "hat"], 3000, 0)
TEXT_B = corpus(["a", "dog", "ran", "to", "fog", "log", "hot"], 3000, 1)
CHARS = sorted(set(TEXT_A + TEXT_B))


def encode(text):
    return torch.tensor([CHARS.index(c) for c in text])


def batches(data, steps, seed, B=16, T=16):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        i = torch.randint(0, len(data) - T - 1, (B,), generator=g)
        yield torch.stack([data[j:j + T] for j in i]), torch.stack([data[j + 1:j + T + 1] for j in i])


def train(model, data, steps, lr, seed):
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for x, y in batches(data, steps, seed):
        _, loss = model(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@torch.no_grad()
def eval_loss(model, data):
    model.eval()
    out = sum(model(x, y)[1].item() for x, y in batches(data, 4, seed=123, B=32)) / 4
    model.train()
    return out


@pytest.fixture
def one_thread():
    # 200 tiny steps: threads buy nothing at these sizes, and on a loaded 2-core machine OpenMP's
    # spinning workers made this test 20x slower (measured: 108 s with 2 threads vs 5 s with 1).
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_lora_fine_tune_on_a_second_corpus(tmp_path, one_thread):
    data_a, data_b = encode(TEXT_A), encode(TEXT_B)
    model = small_gpt(seed=0, vocab=len(CHARS))
    train(model, data_a, 100, lr=3e-3, seed=0)  # "pretraining" on corpus A
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    loss_b_before = eval_loss(model, data_b)

    lora.inject(model, ("c_attn", "c_proj"), r=4, alpha=8)
    n_train = lora.mark_only_lora_trainable(model)
    assert 0 < n_train < model.num_parameters() // 5
    train(model, data_b, 100, lr=1e-2, seed=1)
    loss_b_after = eval_loss(model, data_b)
    assert loss_b_after < 0.8 * loss_b_before, (loss_b_before, loss_b_after)

    # The frozen base is untouched, bit for bit (LoRALinear keeps it under `.base`).
    now = {k.replace(".base.", "."): v for k, v in model.state_dict().items() if "lora_" not in k}
    assert now.keys() == base_state.keys()
    assert all(torch.equal(now[k], base_state[k]) for k in base_state)

    model.eval()
    idx = encode(TEXT_B[:16])[None]
    with torch.no_grad():
        unmerged = model(idx)[0]
        lora.merge(model)
        merged = model(idx)[0]
        lora.unmerge(model)
        again = model(idx)[0]
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, unmerged, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(unmerged, GPT.forward(_fresh_with(base_state), idx)[0], atol=1e-3)

    # Adapter only: small, and it round-trips into a fresh model holding the same base weights.
    path = tmp_path / "adapter.pt"
    lora.save_adapter(model, path)
    saved = torch.load(path, weights_only=True)
    assert set(saved["state"]) == set(lora.lora_state_dict(model)) and saved["config"]["r"] == 4
    fresh = _fresh_with(base_state)
    names = lora.load_adapter(fresh, path)
    assert len(names) == 6  # per layer: attn.c_attn, attn.c_proj and (suffix "c_proj") mlp.c_proj
    with torch.no_grad():
        assert torch.equal(fresh.eval()(idx)[0], unmerged)


def _fresh_with(state) -> GPT:
    m = small_gpt(seed=99, vocab=len(CHARS))
    m.load_state_dict(state)
    return m.eval()


def test_load_adapter_validates_names_and_shapes(tmp_path):
    m = small_gpt()
    lora.inject(m, ("c_attn",), r=4, alpha=4)
    path = tmp_path / "a.pt"
    lora.save_adapter(m, path)
    other_rank = small_gpt()
    lora.inject(other_rank, ("c_attn",), r=2, alpha=4)
    with pytest.raises(ValueError, match=r"shape mismatch.*c_attn.lora_A: adapter \(4, 32\) vs model \(2, 32\)"):
        lora.load_adapter(other_rank, path)
    other_targets = small_gpt()
    lora.inject(other_targets, ("c_fc",), r=4, alpha=4)
    with pytest.raises(ValueError, match="only in adapter.*c_attn"):
        lora.load_adapter(other_targets, path)
    torch.save({"state": {}}, tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="neither a babygpt_ext LoRA adapter"):
        lora.load_adapter(small_gpt(), tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="no LoRA adapters"):
        lora.save_adapter(small_gpt(), tmp_path / "none.pt")


def test_adapter_file_keeps_per_module_rank_and_alpha(tmp_path):
    m = small_gpt()
    lora.inject(m, ("c_attn",), r=4, alpha=8)
    lora.inject(m, ("mlp.c_fc",), r=2, alpha=1)
    for layer in lora.lora_modules(m).values():
        randomised(layer)
    m.eval()
    idx = torch.randint(0, 20, (2, 9))
    lora.save_adapter(m, tmp_path / "a.pt")
    fresh = small_gpt().eval()
    lora.load_adapter(fresh, tmp_path / "a.pt")
    assert {n: (x.r, x.alpha) for n, x in lora.lora_modules(fresh).items()} == \
        {n: (x.r, x.alpha) for n, x in lora.lora_modules(m).items()}
    with torch.no_grad():
        assert torch.equal(fresh(idx)[0], m(idx)[0])
    # A file from before per-module entries (one r and alpha in its config) still loads.
    blob = torch.load(tmp_path / "a.pt", weights_only=True)
    del blob["config"]["modules"]
    blob["state"] = {k: v for k, v in blob["state"].items() if "c_attn" in k}
    blob["config"]["replaced"] = [n for n in blob["config"]["replaced"] if n.endswith("c_attn")]
    torch.save(blob, tmp_path / "old.pt")
    old = small_gpt().eval()
    assert lora.load_adapter(old, tmp_path / "old.pt") == ["transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"]
    assert all((x.r, x.alpha) == (4, 8) for x in lora.lora_modules(old).values())
