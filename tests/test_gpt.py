"""GPT and GPTConfig: parameter counts, presets, causality per backend, nanoGPT compatibility,
optimizer groups, validation, torch.compile."""

import math

import pytest
import torch
import torch.nn.functional as F

from babygpt_ext import ops
from babygpt_ext.models import GPT, PRESETS, GPTConfig

BACKENDS = ops.available_backends("cpu")


def tiny(**kw) -> GPTConfig:
    base = dict(vocab_size=37, block_size=16, n_layer=2, n_head=4, n_embd=32)
    base.update(kw)
    return GPTConfig(**base)


# ------------------------------------------------------------------------------ parameter counts
@pytest.mark.parametrize("vocab", [478, 100])
def test_babygpt_has_the_seed_parameter_count(vocab):
    m = GPT(GPTConfig.from_preset("babygpt", vocab_size=vocab))
    assert m.num_parameters() == 13_216 + 33 * vocab
    if vocab == 478:
        assert m.num_parameters() == 28_990


def test_lowrank_preset_is_smaller_by_the_factored_c_attn():
    full = GPT(GPTConfig.from_preset("babygpt", vocab_size=478)).num_parameters()
    low = GPT(GPTConfig.from_preset("babygpt-lowrank", vocab_size=478)).num_parameters()
    # per block: c_attn 16·48 + 48 = 816 becomes 16·4 + 4·48 + 48 = 304
    assert low == full - 4 * (816 - 304) == 26_942


@pytest.mark.parametrize("name,vocab,count", [
    ("shakespeare-cpu", 1000, 929_536), ("gpt-mini", 1000, 2_886_144), ("gpt2", 50257, 124_439_808)])
def test_larger_preset_counts(name, vocab, count):
    with torch.device("meta"):  # shapes only: GPT-2 small would otherwise allocate 0.5 GB
        m = GPT(GPTConfig.from_preset(name, vocab_size=vocab))
    assert m.num_parameters() == count
    assert m.lm_head.weight is m.transformer.wte.weight  # tied: counted once


def test_non_embedding_count_leaves_out_the_tables():
    m = GPT(GPTConfig.from_preset("babygpt", vocab_size=478))
    assert m.num_parameters(non_embedding=True) == 28_990 - 4 * 16 - 478 * 16


# -------------------------------------------------------------------------------------- presets
def test_from_preset_applies_overrides_and_rejects_unknowns():
    c = GPTConfig.from_preset("shakespeare-cpu", vocab_size=65, dropout=0.1)
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size, c.dropout) == (4, 4, 128, 64, 65, 0.1)
    assert GPTConfig.from_preset("gpt-mini").n_embd == 192 and GPTConfig.from_preset("gpt-mini").n_layer == 6
    g = GPTConfig.from_preset("gpt2")
    assert (g.n_layer, g.n_head, g.n_embd, g.block_size, g.vocab_size, g.tie_weights) == (12, 12, 768, 1024, 50257, True)
    with pytest.raises(ValueError, match="valid presets: " + ", ".join(PRESETS)):
        GPTConfig.from_preset("gpt5")
    with pytest.raises(ValueError, match="unknown GPTConfig field.*n_layers.*valid fields:.*n_layer"):
        GPTConfig.from_preset("babygpt", n_layers=3)
    with pytest.raises(ValueError, match="n_embd=30 must be a multiple of n_head=4"):
        GPTConfig.from_preset("babygpt", n_embd=30)


# ------------------------------------------------------------------------------------- causality
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("extra", [{}, {"n_kv_head": 2}, {"qkv_rank": 3}], ids=["mha", "gqa", "lowrank"])
def test_changing_future_tokens_never_changes_earlier_logits(backend, extra):
    torch.manual_seed(0)
    m = GPT(tiny(backend=backend, **extra)).eval()
    idx = torch.randint(0, 37, (2, 12))
    with torch.no_grad():
        base, _ = m(idx)
        for t in (1, 5, 11):
            idx2 = idx.clone()
            idx2[:, t:] = (idx2[:, t:] + 1 + torch.randint(0, 35, idx2[:, t:].shape)) % 37  # every future token changes
            logits, _ = m(idx2)
            torch.testing.assert_close(logits[:, :t], base[:, :t], rtol=0, atol=1e-5)
            assert not torch.allclose(logits[:, t:], base[:, t:]), "later logits must follow their tokens"


# ------------------------------------------------------------------------ forward, loss, validation
def test_loss_is_cross_entropy_and_ignores_minus_one():
    torch.manual_seed(1)
    m = GPT(tiny())
    idx, tgt = torch.randint(0, 37, (3, 8)), torch.randint(0, 37, (3, 8))
    logits, loss = m(idx, tgt)
    assert logits.shape == (3, 8, 37)
    torch.testing.assert_close(loss, F.cross_entropy(logits.reshape(-1, 37), tgt.reshape(-1)))
    assert abs(loss.item() - math.log(37)) < 0.5  # a fresh model is close to uniform
    tgt[:, :4] = -1
    _, loss2 = m(idx, tgt)
    torch.testing.assert_close(loss2, F.cross_entropy(logits[:, 4:].reshape(-1, 37), tgt[:, 4:].reshape(-1)))
    loss2.backward()
    assert all(p.grad is not None for p in m.parameters())


def test_forward_rejects_bad_input_with_shapes():
    m = GPT(tiny())
    with pytest.raises(ValueError, match="length 17.*block_size=16"):
        m(torch.zeros(1, 17, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(B, T\) int64.*torch.float32"):
        m(torch.zeros(1, 4))
    with pytest.raises(ValueError, match=r"vocab_size=37.*max 37"):
        m(torch.tensor([[1, 37]]))
    with pytest.raises(ValueError, match=r"targets must have idx's shape \(1, 4\)"):
        m(torch.zeros(1, 4, dtype=torch.long), torch.zeros(1, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="GPTConfig"):
        GPT({"n_layer": 2})


def test_configure_optimizers_decays_matrices_only():
    m = GPT(tiny(lm_head_bias=True))
    opt = m.configure_optimizers(weight_decay=0.1, lr=1e-3, betas=(0.9, 0.95))
    assert isinstance(opt, torch.optim.AdamW)
    decay, no_decay = opt.param_groups
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() < 2 for p in no_decay["params"])
    ids = {id(p) for g in opt.param_groups for p in g["params"]}
    assert ids == {id(p) for p in m.parameters()}  # every parameter once (the tied one too)
    assert any(p is m.transformer.wte.weight for p in decay["params"])  # nanoGPT: embeddings decay


# ------------------------------------------------------------------------- nanoGPT compatibility
def nanogpt_logits(sd: dict, n_head: int, idx: torch.Tensor) -> torch.Tensor:
    """nanoGPT's forward written out functionally on a nanoGPT state dict (its manual attention path)."""
    T = idx.shape[1]
    x = sd["transformer.wte.weight"][idx] + sd["transformer.wpe.weight"][:T]
    n_layer = len({k.split(".")[2] for k in sd if k.startswith("transformer.h.")})
    for i in range(n_layer):
        p = lambda name: sd[f"transformer.h.{i}.{name}"]  # noqa: E731
        C = x.shape[-1]
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"))
        q, k, v = F.linear(h, p("attn.c_attn.weight"), p("attn.c_attn.bias")).split(C, dim=2)
        q, k, v = (t.view(1, T, n_head, C // n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(p("attn.bias")[:, :, :T, :T] == 0, float("-inf")).softmax(dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(1, T, C)
        x = x + F.linear(y, p("attn.c_proj.weight"), p("attn.c_proj.bias"))
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"))
        x = x + F.linear(F.gelu(F.linear(h, p("mlp.c_fc.weight"), p("mlp.c_fc.bias"))),
                         p("mlp.c_proj.weight"), p("mlp.c_proj.bias"))
    x = F.layer_norm(x, (x.shape[-1],), sd["transformer.ln_f.weight"], sd["transformer.ln_f.bias"])
    return F.linear(x, sd["lm_head.weight"])


def nanogpt_state_dict(cfg: GPTConfig, compiled: bool) -> dict:
    """A state dict with exactly nanoGPT's keys: tied wte/lm_head, `attn.bias` tril buffers."""
    g = torch.Generator().manual_seed(0)
    C, V, L = cfg.n_embd, cfg.vocab_size, cfg.block_size
    rnd = lambda *s: torch.randn(*s, generator=g) * 0.1  # noqa: E731
    wte = rnd(V, C)
    sd = {"transformer.wte.weight": wte, "transformer.wpe.weight": rnd(L, C),
          "transformer.ln_f.weight": 1 + rnd(C), "transformer.ln_f.bias": rnd(C), "lm_head.weight": wte}
    for i in range(cfg.n_layer):
        pre = f"transformer.h.{i}."
        sd.update({pre + "ln_1.weight": 1 + rnd(C), pre + "ln_1.bias": rnd(C),
                   pre + "attn.c_attn.weight": rnd(3 * C, C), pre + "attn.c_attn.bias": rnd(3 * C),
                   pre + "attn.c_proj.weight": rnd(C, C), pre + "attn.c_proj.bias": rnd(C),
                   pre + "attn.bias": torch.tril(torch.ones(L, L)).view(1, 1, L, L),
                   pre + "ln_2.weight": 1 + rnd(C), pre + "ln_2.bias": rnd(C),
                   pre + "mlp.c_fc.weight": rnd(4 * C, C), pre + "mlp.c_fc.bias": rnd(4 * C),
                   pre + "mlp.c_proj.weight": rnd(C, 4 * C), pre + "mlp.c_proj.bias": rnd(C)})
    return {("_orig_mod." + k if compiled else k): v for k, v in sd.items()}


@pytest.mark.parametrize("compiled", [False, True], ids=["plain", "orig_mod-prefix"])
def test_nanogpt_state_dict_loads_and_computes_nanogpts_function(compiled):
    cfg = tiny()
    sd = nanogpt_state_dict(cfg, compiled)
    m = GPT.from_nanogpt_state_dict(sd, cfg).eval()
    idx = torch.randint(0, 37, (1, 10))
    plain = {k.removeprefix("_orig_mod."): v for k, v in sd.items()}
    want = nanogpt_logits(plain, cfg.n_head, idx)
    with torch.no_grad():
        torch.testing.assert_close(m(idx)[0], want, rtol=1e-4, atol=1e-5)
    # Plain load_state_dict works too: the attn.bias mask buffers are dropped on load.
    m2 = GPT(cfg)
    m2.load_state_dict(plain)
    with torch.no_grad():
        torch.testing.assert_close(m2(idx)[0], want, rtol=1e-4, atol=1e-5)


def test_nanogpt_state_dict_mismatch_is_explained():
    cfg = tiny()
    sd = {k: v for k, v in nanogpt_state_dict(cfg, False).items() if "ln_f" not in k}
    with pytest.raises(ValueError, match="missing.*ln_f"):
        GPT.from_nanogpt_state_dict(sd, cfg)
    with pytest.raises(ValueError, match=r"shapes do not match.*wpe"):
        GPT.from_nanogpt_state_dict(nanogpt_state_dict(cfg, False), tiny(block_size=8))


# ---------------------------------------------------------------------------------- torch.compile
def test_torch_compile_forward_matches_eager():
    torch.manual_seed(2)
    m = GPT(tiny(n_layer=1)).eval()
    idx = torch.randint(0, 37, (2, 8))
    # aot_eager: dynamo + fake tensors + AOTAutograd through the ops, without inductor codegen (which
    # takes ~1 min of C++ compilation on this 2-core machine; tests/test_compile.py covers inductor).
    # One eager call first: the ops layer imports the backend's module lazily (importlib) on the first
    # call, which dynamo cannot trace; once loaded, the whole model is one graph.
    with torch.no_grad():
        want = m(idx)[0]
        compiled = torch.compile(m, backend="aot_eager", fullgraph=True)
        torch.testing.assert_close(compiled(idx)[0], want, rtol=1e-5, atol=1e-5)
