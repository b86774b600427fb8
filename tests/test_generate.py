"""Generation: the KV cache gives the same tokens as recompute, sampling rules, stop ids, streaming."""

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.generate import filter_logits, generate, prompt_model, sample_next
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.tokenizers import CharTokenizer

BACKENDS = ops.available_backends("cpu")


def model(backend=None, seed=0, **kw) -> GPT:
    torch.manual_seed(seed)
    cfg = dict(vocab_size=29, block_size=12, n_layer=2, n_head=4, n_embd=32, backend=backend, tie_weights=False)
    cfg.update(kw)
    m = GPT(GPTConfig(**cfg))
    with torch.no_grad():  # spread the logits (std ~2): a fresh model is nearly uniform, so greedy ties are likely
        m.lm_head.weight.mul_(20.0)
    return m.eval()


def run(m, idx, kv_cache, seed=None, **kw):
    g = None if seed is None else torch.Generator().manual_seed(seed)
    return m.generate(idx, generator=g, kv_cache=kv_cache, **kw)


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0), dict(temperature=0.8, top_k=7),
                                      dict(temperature=1.0, top_p=0.9)], ids=["greedy", "t1", "topk", "topp"])
def test_kv_cache_equals_recompute_token_for_token(sampling):
    m = model(None, n_kv_head=2)
    idx = torch.randint(0, 29, (3, 5), generator=torch.Generator().manual_seed(1))  # batched prompts
    # 20 new tokens: the sequence passes block_size=12, so the cache path also hands over to the crop.
    with_cache = run(m, idx, True, seed=5, max_new_tokens=20, **sampling)
    recompute = run(m, idx, False, seed=5, max_new_tokens=20, **sampling)
    assert with_cache.shape == (3, 25)
    assert torch.equal(with_cache, recompute)
    assert torch.equal(with_cache[:, :5], idx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kv_cache_equals_recompute_on_every_backend(backend):
    # One layer and greedy + one sampled run: the Triton interpreter costs ~1 s per generated token.
    m = model(backend, n_layer=1)
    idx = torch.randint(0, 29, (2, 6), generator=torch.Generator().manual_seed(2))
    for kw in (dict(temperature=0.0), dict(temperature=1.0, seed=9)):
        a, b = run(m, idx, True, max_new_tokens=8, **kw), run(m, idx, False, max_new_tokens=8, **kw)
        assert torch.equal(a, b), f"{backend}: KV-cache and recompute disagree ({kw})"


def test_the_equality_check_can_fail():
    # Guard for the test above: different seeds must give different samples, so equality means something.
    m = model()
    idx = torch.zeros(2, 3, dtype=torch.long)
    assert not torch.equal(run(m, idx, True, seed=1, max_new_tokens=15), run(m, idx, True, seed=2, max_new_tokens=15))


def test_prompt_longer_than_block_size_is_cropped():
    m = model()
    idx = torch.randint(0, 29, (2, 20))
    a, b = run(m, idx, True, max_new_tokens=4, temperature=0), run(m, idx, False, max_new_tokens=4, temperature=0)
    assert torch.equal(a, b) and a.shape == (2, 24)
    want = m(idx[:, -12:])[0][:, -1].argmax(-1)
    assert torch.equal(a[:, 20], want)


def test_greedy_is_argmax_and_topk1_and_tiny_topp_are_greedy():
    m = model()
    idx = torch.randint(0, 29, (2, 4))
    greedy = run(m, idx, True, max_new_tokens=6, temperature=0)
    seq = idx
    for _ in range(6):  # by hand: append the argmax of the last position
        seq = torch.cat([seq, m(seq)[0][:, -1].argmax(-1, keepdim=True)], dim=1)
    assert torch.equal(greedy, seq)
    assert torch.equal(run(m, idx, True, seed=3, max_new_tokens=6, top_k=1), greedy)
    assert torch.equal(run(m, idx, True, seed=3, max_new_tokens=6, top_p=1e-6), greedy)


def test_filter_logits_top_k_and_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isfinite(filter_logits(logits, top_k=2)).tolist() == [[True, False, True, False]]
    # nucleus 0.7: 0.5 alone is short of 0.7, 0.5 + 0.3 reaches it -> keep those two
    assert torch.isfinite(filter_logits(logits, top_p=0.7)).tolist() == [[True, False, True, False]]
    assert torch.isfinite(filter_logits(logits, top_p=0.85)).tolist() == [[True, False, True, True]]
    assert torch.isfinite(filter_logits(logits, top_p=0.1)).tolist() == [[True, False, False, False]]
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)])
    assert set(draws.flatten().tolist()) == {0, 2}


def test_stop_ids_end_rows_and_generation():
    m = model()
    idx = torch.randint(0, 29, (2, 3), generator=torch.Generator().manual_seed(4))
    free = run(m, idx, True, max_new_tokens=8, temperature=0)
    stop_id = int(free[0, 5])  # the 3rd token row 0 generates
    first = int((free[0, 3:] == stop_id).nonzero()[0])
    out = run(m, idx, True, max_new_tokens=8, temperature=0, stop=stop_id)
    assert torch.equal(out[0, :4 + first], free[0, :4 + first])  # identical up to and including the stop
    assert (out[0, 3 + first:] == stop_id).all()  # a stopped row repeats its stop id
    # Every id stops every row: generation ends after one token.
    every = run(m, idx, True, max_new_tokens=8, temperature=0, stop=list(range(29)))
    assert every.shape == (2, 4)


def test_callable_stop_ends_each_row_where_it_says():
    m = model()
    idx = torch.randint(0, 29, (2, 3), generator=torch.Generator().manual_seed(4))
    free = run(m, idx, True, max_new_tokens=8, temperature=0)
    seen = []

    def after_two_new(rows):  # (B, T) -> row 0 stops after 2 new tokens, row 1 after 4
        seen.append(rows.shape[1])
        return [rows.shape[1] >= 5, rows.shape[1] >= 7]

    out = run(m, idx, True, max_new_tokens=8, temperature=0, stop=after_two_new)
    assert seen == [4, 5, 6, 7] and out.shape == (2, 7)  # called after every token; ends when all rows are done
    assert torch.equal(out[1], free[1, :7])
    assert torch.equal(out[0, :5], free[0, :5]) and (out[0, 5:] == free[0, 4]).all()  # repeats its last token
    with pytest.raises(ValueError, match=r"one bool per row, shape \(2,\)"):
        run(m, idx, True, max_new_tokens=2, stop=lambda rows: [True])


def test_stream_receives_each_new_column():
    m = model()
    idx = torch.randint(0, 29, (2, 3))
    cols = []
    out = run(m, idx, True, seed=0, max_new_tokens=5, stream=cols.append)
    assert len(cols) == 5 and all(c.shape == (2,) for c in cols)
    assert torch.equal(torch.stack(cols, dim=1), out[:, 3:])


def test_generate_runs_in_eval_mode_and_restores_the_mode():
    m = model(dropout=0.3).train()
    idx = torch.zeros(1, 2, dtype=torch.long)
    a = run(m, idx, True, max_new_tokens=5, temperature=0)
    b = run(m, idx, False, max_new_tokens=5, temperature=0)
    assert torch.equal(a, b)  # dropout would make these differ
    assert m.training


def test_generate_rejects_bad_arguments():
    m = model()
    idx = torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="temperature"):
        m.generate(idx, 3, temperature=-1)
    with pytest.raises(ValueError, match="top_k"):
        m.generate(idx, 3, top_k=0)
    with pytest.raises(ValueError, match="top_p"):
        m.generate(idx, 3, top_p=1.5)
    with pytest.raises(ValueError, match="stop"):
        m.generate(idx, 3, stop=[])
    with pytest.raises(ValueError, match=r"\(B, T\)"):
        generate(m, torch.zeros(4, dtype=torch.long), 3)


def test_prompt_model_returns_the_prompt_and_its_continuation():
    tok = CharTokenizer.from_text("abcdefghijklmnopqrstuvwxyz .")
    m = model(vocab_size=tok.vocab_size)
    text = prompt_model(m, "hello", 7, 5, tok, generator=torch.Generator().manual_seed(0))
    assert text.startswith("hello") and len(text) == 12
    with pytest.raises(ValueError, match="no tokens"):
        prompt_model(m, "", 3, 5, tok)


# ------------------------------------------------------------------------------- the decode loop
def test_batched_decoding_equals_each_row_alone():
    # `babygpt sample --num-samples N` decodes N rows as one batch: each row must come out as if alone.
    m = model(None, block_size=24)
    idx = torch.randint(0, 29, (8, 4), generator=torch.Generator().manual_seed(3))
    together = run(m, idx, True, max_new_tokens=12, temperature=0.0)
    for row in range(8):
        assert torch.equal(together[row:row + 1], run(m, idx[row:row + 1], True, max_new_tokens=12, temperature=0.0))


def test_decode_loop_has_no_cat_and_checks_ids_only_at_prefill():
    from torch.profiler import ProfilerActivity, profile
    m = model(None, block_size=40)
    idx = torch.randint(0, 29, (2, 5), generator=torch.Generator().manual_seed(4))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        out = run(m, idx, True, max_new_tokens=20, temperature=0.0)
    names = [e.name for e in prof.events()]
    assert "aten::cat" not in names  # the cache and the output are preallocated
    assert names.count("aten::aminmax") == 1  # the prompt's ids are checked once, not at every step
    assert out.shape == (2, 25) and not out.is_inference()  # an ordinary tensor, usable with autograd


def test_decode_steps_skip_the_id_check_but_the_prompt_is_checked():
    m = model(None)
    with pytest.raises(ValueError, match="vocab_size=29.*max 29"):
        m.generate(torch.tensor([[1, 29]]), 3)


# --------------------------------------------------------------------------- the decode plan
def test_decode_plan_step_equals_the_models_forward_with_the_cache():
    from babygpt_ext.generate.decode import DecodePlan
    m = model(None, n_kv_head=2, block_size=24)
    idx = torch.randint(0, 29, (3, 9), generator=torch.Generator().manual_seed(6))
    with torch.inference_mode():
        cache_ref, cache_plan = m.new_kv_cache(3), m.new_kv_cache(3)
        m(idx[:, :5], kv_cache=cache_ref), m(idx[:, :5], kv_cache=cache_plan)
        plan = DecodePlan.of(m, cache_plan)
        assert plan is not None
        for pos in range(5, 9):
            want = m(idx[:, pos:pos + 1], kv_cache=cache_ref)[0][:, -1]
            torch.testing.assert_close(plan.step(idx[:, pos], pos), want, rtol=1e-5, atol=1e-5)
        assert cache_plan[0].length == cache_ref[0].length == 9
        for a, b in zip(cache_plan, cache_ref):
            torch.testing.assert_close(a.k[:, :, :9], b.k[:, :, :9]), torch.testing.assert_close(a.v[:, :, :9], b.v[:, :, :9])


def test_decode_plan_declines_what_it_would_not_reproduce():
    from babygpt_ext import lora
    from babygpt_ext.generate.decode import DecodePlan
    m = model()
    assert DecodePlan.of(m, m.new_kv_cache(1)) is not None
    hooked = model()
    hooked.transformer.h[1].mlp.register_forward_hook(lambda mod, inp, out: out * 2)
    assert DecodePlan.of(hooked, hooked.new_kv_cache(1)) is None
    adapted = model()
    lora.inject(adapted, target_modules=("c_attn",), r=2, alpha=4)
    assert DecodePlan.of(adapted, adapted.new_kv_cache(1)) is None
    assert DecodePlan.of(model(qkv_rank=4), model(qkv_rank=4).new_kv_cache(1)) is None


def test_lora_models_still_decode_like_recompute():
    from babygpt_ext import lora
    m = model(None, block_size=24)
    lora.inject(m, target_modules=("c_attn", "c_fc"), r=2, alpha=4)
    for name, p in m.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-zero update, so the LoRA path matters
    idx = torch.randint(0, 29, (2, 4), generator=torch.Generator().manual_seed(7))
    assert torch.equal(run(m, idx, True, max_new_tokens=10, temperature=0.0),
                       run(m, idx, False, max_new_tokens=10, temperature=0.0))
