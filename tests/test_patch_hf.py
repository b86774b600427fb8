"""babygpt_ext.patch on Hugging Face transformers decoders (GPT-2, and Llama for grouped-query
attention): same logits and gradients as transformers' own attention, our op really runs where
the mask is purely causal (prompt, KV-cache decoding), and padded batches fall back to SDPA."""

import pytest
import torch

import babygpt_ext
from babygpt_ext import ops
from babygpt_ext.patching import hf as patch_hf

transformers = pytest.importorskip("transformers", reason="the transformers package is not installed "
                                   "(pip install 'babygpt_ext[test]' brings it)")
BACKENDS = ops.available_backends("cpu")
V = 50


def gpt2(dtype=torch.float32):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, attn_pdrop=0.0,
                                  resid_pdrop=0.0, embd_pdrop=0.0, bos_token_id=0, eos_token_id=0)
    torch.manual_seed(0)
    return transformers.GPT2LMHeadModel(cfg).to(dtype).eval()


def llama(dtype=torch.float32):
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, bos_token_id=0,
                                   eos_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).to(dtype).eval()


@pytest.fixture
def op_calls(monkeypatch):
    """Counts the calls that reach babygpt_ext's causal_attention through the patched model."""
    calls = []

    def counting(q, k, v, **kw):
        calls.append((tuple(q.shape), tuple(k.shape), kw.get("dropout_p", 0.0)))
        return ops.causal_attention(q, k, v, **kw)

    monkeypatch.setattr(patch_hf, "causal_attention", counting)
    return calls


def reference_logits(make, idx, **kw):
    model = make(torch.float64)
    model.set_attn_implementation("eager")
    return model(idx, **kw).logits


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_logits_match_float64_reference(make, backend, op_calls):
    idx = torch.randint(0, V, (2, 37))
    ref = reference_logits(make, idx)
    sdpa = make()(idx).logits
    model = make()
    names = babygpt_ext.patch(model, backend=backend)
    assert len(names) == 2 and all(n.endswith(("attn", "self_attn")) for n in names), names
    assert model.config._attn_implementation == f"babygpt_{backend}"
    out = model(idx).logits
    assert len(op_calls) == 2, "the fused op did not run on an unpadded prompt"
    err, sdpa_err = ((t.double() - ref).norm().item() for t in (out, sdpa))
    assert err <= 2 * sdpa_err + 1e-6 * ref.norm().item(), f"error {err:.2e} vs transformers' SDPA {sdpa_err:.2e}"


@pytest.mark.parametrize("make", [gpt2, llama], ids=["gpt2", "llama-gqa"])
def test_greedy_generation_with_kv_cache_is_unchanged(make, op_calls):
    idx = torch.randint(0, V, (2, 7))
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = make(torch.float64).generate(idx, **kw)
    model = make(torch.float64)
    babygpt_ext.patch(model)
    assert torch.equal(model.generate(idx, **kw), want)
    decode_steps = [c for c in op_calls if c[0][2] == 1]
    assert decode_steps and all(k[2] > 1 for _, k, _ in decode_steps), "decoding against the cache did not use the op"


def test_padded_batch_falls_back_to_sdpa(op_calls):
    idx = torch.randint(0, V, (2, 11))
    mask = torch.ones(2, 11, dtype=torch.long)
    mask[0, :4] = 0  # left padding: the mask is no longer purely causal
    want = gpt2()(idx, attention_mask=mask).logits
    model = gpt2()
    babygpt_ext.patch(model)
    out = model(idx, attention_mask=mask).logits
    assert not op_calls, "a padding mask must not reach the causal-only op"
    torch.testing.assert_close(out, want, rtol=0, atol=0)


def test_gradients_match_transformers(op_calls):
    idx = torch.randint(0, V, (3, 20))
    grads = []
    for patched in (False, True):
        model = gpt2(torch.float64).train()
        if patched:
            babygpt_ext.patch(model)
        model(idx, labels=idx).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    assert op_calls, "the fused op did not run in training"
    for n, g in grads[0].items():
        torch.testing.assert_close(grads[1][n], g, rtol=1e-9, atol=1e-12, msg=n)


def test_unpatch_patch_twice_and_encoder_models():
    model = gpt2()
    model.set_attn_implementation("eager")
    babygpt_ext.patch(model)
    with pytest.warns(RuntimeWarning, match="nothing to do: it runs babygpt_ext's attention already"):
        assert babygpt_ext.patch(model) == []
    assert babygpt_ext.patch(model, backend="eager") == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert model.config._attn_implementation == "babygpt_eager"
    assert babygpt_ext.unpatch(model) == ["transformer.h.0.attn", "transformer.h.1.attn"]
    assert model.config._attn_implementation == "eager"  # the implementation it had, not always SDPA
    with pytest.warns(RuntimeWarning, match="unpatch: nothing to do: it is not patched"):
        babygpt_ext.unpatch(model)
    with pytest.raises(ValueError, match="unknown backend 'bogus'; known backends:"):
        babygpt_ext.patch(model, backend="bogus")
    assert model.config._attn_implementation == "eager"
    bert = transformers.BertModel(transformers.BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                                         intermediate_size=64, vocab_size=V))
    with pytest.raises(ValueError, match="only decoders can be patched"):
        babygpt_ext.patch(bert)


def test_report_names_cross_attention_left_and_dropout_trains_on_the_op(op_calls):
    cfg = transformers.GPT2Config(n_embd=32, n_layer=1, n_head=4, vocab_size=V, n_positions=64, attn_pdrop=0.1,
                                  add_cross_attention=True, bos_token_id=0, eos_token_id=0)
    model = transformers.GPT2LMHeadModel(cfg)
    with pytest.warns(RuntimeWarning, match="left transformer.h.0.crossattention"):
        report = babygpt_ext.patch(model)
    assert report == ["transformer.h.0.attn"]
    assert report.left == [("transformer.h.0.crossattention", "GPT2Attention: not causal self-attention (is_causal "
                            "is not True), so it runs transformers' SDPA")]
    assert "dropout" not in str(report)
    model = gpt2()
    model.config.attn_pdrop = 0.1
    for blk in model.transformer.h:
        blk.attn.attn_dropout.p = 0.1
    babygpt_ext.patch(model)
    idx = torch.randint(0, V, (2, 9))
    op_calls.clear()
    torch.manual_seed(3)
    a = model.train()(idx).logits
    assert [c[2] for c in op_calls] == [0.1, 0.1], "training with attn_pdrop=0.1 must call the fused op with p=0.1"
    torch.manual_seed(3)
    assert torch.equal(model(idx).logits, a), "torch.manual_seed must make the dropout masks repeat"
    assert not torch.equal(model(idx).logits, a), "a new step draws new masks"
    op_calls.clear()
    model.eval()(idx)
    assert [c[2] for c in op_calls] == [0.0, 0.0]  # eval: the fused op, no dropout
