"""torch.classes.babygpt.GptDecoder, the fused CPU decoding step (csrc/cpu/decode.cpp): its logits and cache
writes against the float64 model, on odd sizes on purpose (head dims and widths that are not
multiples of a vector, GQA and MQA, no biases, several rows); the arguments it refuses; and that
generate() takes it while giving recompute's tokens."""

import copy

import pytest
import torch

from babygpt_ext import ops
from babygpt_ext.generate.decode import DecodePlan
from babygpt_ext.models import GPT, GPTConfig

pytestmark = pytest.mark.skipif("cpu" not in ops.available_backends("cpu"),
                                reason="babygpt_ext._C is not built (the fused step is one of its CPU kernels)")

VOCAB = 37
CONFIGS = {
    "D8": dict(n_layer=2, n_head=4, n_embd=32),
    "D9-mqa-untied": dict(n_layer=1, n_head=5, n_embd=45, n_kv_head=1, tie_weights=False, lm_head_bias=True),
    "D6-gqa-nobias": dict(n_layer=2, n_head=6, n_embd=36, n_kv_head=3, bias=False),
    "D72": dict(n_layer=1, n_head=2, n_embd=144),
}


def build(cfg: dict, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    m = GPT(GPTConfig(vocab_size=VOCAB, block_size=40, **cfg)).eval()
    with torch.no_grad():  # non-trivial LayerNorm gains and biases, and spread logits
        for name, p in m.named_parameters():
            if p.dim() == 1:
                p.copy_(torch.randn_like(p) * 0.5 + (1.0 if name.endswith("weight") else 0.0))
        m.lm_head.weight.mul_(10.0)
    return m


def prefill(m: GPT, prompt: torch.Tensor) -> list:
    cache = m.new_kv_cache(prompt.shape[0])
    m(prompt, kv_cache=cache)
    return cache


def within_float32_rule(got: torch.Tensor, want64: torch.Tensor, eager32: torch.Tensor) -> tuple:
    """The tolerance rule of docs/design.md §13.2 for a float32 composition: at most twice the error
    the model's own float32 step makes, plus a few units in the last place at the values' scale."""
    err, eager_err = (got.double() - want64).abs().max().item(), (eager32.double() - want64).abs().max().item()
    bound = 2 * eager_err + 4 * torch.finfo(torch.float32).eps * max(want64.abs().max().item(), 1.0)
    return err <= bound, f"max error {err:.3e} > 2x the model's {eager_err:.3e} + 4 ulp"


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_cpu_decode_step_matches_the_float64_model(name, batch):
    m32 = build(CONFIGS[name])
    m64 = copy.deepcopy(m32).double()
    g = torch.Generator().manual_seed(1)
    seq = torch.randint(0, VOCAB, (batch, 12), generator=g)
    with torch.inference_mode():
        fused_cache, model_cache, cache64 = prefill(m32, seq[:, :7]), prefill(m32, seq[:, :7]), prefill(m64, seq[:, :7])
        plan = DecodePlan.of(m32, fused_cache)
        assert plan is not None and plan.fused is not None, "a float32 CPU GPT must take the fused step"
        for pos in range(7, 12):
            tok = seq[:, pos]
            got = plan.step(tok, pos)
            want = m64(tok[:, None], kv_cache=cache64)[0][:, -1]
            eager = m32(tok[:, None], kv_cache=model_cache)[0][:, -1]
            assert got.shape == (batch, VOCAB) and got.dtype == torch.float32
            ok, why = within_float32_rule(got, want, eager)
            assert ok, f"{name} B{batch} logits at pos {pos}: {why}"
        for layer, (f, r) in enumerate(zip(fused_cache, cache64)):
            assert f.length == r.length == 12
            for got_kv, want_kv in ((f.k, r.k), (f.v, r.v)):
                torch.testing.assert_close(got_kv[:, :, :12].double(), want_kv[:, :, :12], rtol=1e-5, atol=1e-5,
                                           msg=f"layer {layer}: cached keys/values")


def test_cpu_decode_step_is_bit_identical_whatever_the_thread_count():
    """Each output feature and each head is one thread's work in a fixed order, so the threads only
    change who computes what."""
    m = build(CONFIGS["D72"])
    threads = torch.get_num_threads()
    logits = []
    with torch.inference_mode():
        filled = prefill(m, torch.tensor([[1, 2, 3], [4, 5, 6]]))  # once: the model's GEMMs are not
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            with torch.inference_mode():
                cache = copy.deepcopy(filled)
                logits.append(DecodePlan.of(m, cache).step(torch.tensor([7, 8]), 3))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(logits[0], logits[1]) and torch.equal(logits[0], logits[2])


def test_cpu_decode_step_propagates_a_non_finite_cached_value():
    """NaN in a visible (cached) value reaches the logits, as in the eager composition: every
    cached position is visible to the newest query."""
    m = build(CONFIGS["D8"])
    with torch.inference_mode():
        cache = prefill(m, torch.tensor([[1, 2, 3]]))
        cache[0].v[0, 0, 1, 0] = float("nan")
        assert torch.isnan(DecodePlan.of(m, cache).step(torch.tensor([4]), 3)).all()


def decoder_args(m: GPT, batch: int = 1) -> list:
    """GptDecoder's constructor arguments for m, as generate/decode.py passes them."""
    seen = []
    real = torch.classes.babygpt.GptDecoder

    class Recorder:
        def __init__(self, *args):
            seen.extend(args)
    torch.classes.babygpt.GptDecoder = Recorder
    try:
        DecodePlan.of(m, m.new_kv_cache(batch))
    finally:
        torch.classes.babygpt.GptDecoder = real
    return seen


def test_cpu_decoder_refuses_bad_weights_naming_them():
    make = torch.classes.babygpt.GptDecoder
    wte, wpe, params, ks, vs, n_head, eps, scale = decoder_args(build(CONFIGS["D8"]))
    bad = list(params)
    bad[2] = bad[2].double()
    with pytest.raises(RuntimeError, match=r"layer 0 attn.c_attn.weight \(params\[2\]\) must be a contiguous "
                                           "float32 CPU tensor, got Double"):
        make(wte, wpe, bad, ks, vs, n_head, eps, scale)
    bad[2] = params[2][:, :-1].contiguous()
    with pytest.raises(RuntimeError, match=r"layer 0 attn.c_attn.weight \(params\[2\]\) must be \[96, 32\], got"):
        make(wte, wpe, bad, ks, vs, n_head, eps, scale)
    with pytest.raises(RuntimeError, match=r"params must hold 12 tensors per layer and 4 after them \(28\), got 27"):
        make(wte, wpe, params[:-1], ks, vs, n_head, eps, scale)
    with pytest.raises(RuntimeError, match="n_head=3 must divide C=32"):
        make(wte, wpe, params, ks, vs, 3, eps, scale)
    with pytest.raises(RuntimeError, match="the caches of layer 1 must be contiguous float32 CPU tensors"):
        make(wte, wpe, params, ks, [vs[0], vs[1].transpose(2, 3)], n_head, eps, scale)


def test_cpu_decoder_step_refuses_bad_tokens_and_positions():
    decoder = torch.classes.babygpt.GptDecoder(*decoder_args(build(CONFIGS["D8"]), batch=2))
    with pytest.raises(RuntimeError, match=r"token id 37 of row 1 is outside the vocabulary \[0, 37\)"):
        decoder.step(torch.tensor([0, VOCAB]), 0)
    with pytest.raises(RuntimeError, match="pos=40 must be below the caches' max_len 40"):
        decoder.step(torch.tensor([1, 2]), 40)
    with pytest.raises(RuntimeError, match=r"tok must be a \(B=2,\) int64 CPU tensor"):
        decoder.step(torch.tensor([1]), 0)


def test_cpu_generate_takes_the_fused_step_and_matches_recompute():
    from torch.profiler import ProfilerActivity, profile
    m = build(dict(CONFIGS["D9-mqa-untied"], n_layer=2))
    idx = torch.randint(0, VOCAB, (3, 5), generator=torch.Generator().manual_seed(3))
    for kw in (dict(temperature=0.0), dict(temperature=1.0)):
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            cached = m.generate(idx, 20, kv_cache=True, generator=torch.Generator().manual_seed(4), **kw)
        recompute = m.generate(idx, 20, kv_cache=False, generator=torch.Generator().manual_seed(4), **kw)
        assert torch.equal(cached, recompute), kw
        names = [e.name for e in prof.events()]
        assert names.count("babygpt::GptDecoder.step") == 20, "one fused step per new token"
        # The model runs its LayerNorms as the fused op (nn/block.py), or as ATen's on the eager backend.
        layer_norms = names.count("babygpt::layer_norm_fwd") + names.count("aten::layer_norm")
        assert layer_norms == 5, "only the prefill's (2 blocks x 2 + ln_f) go through the model"


@pytest.mark.parametrize("why", ["eager backend", "BABYGPT_BACKEND=sdpa", "bfloat16", "two eps"])
def test_the_fused_step_is_left_to_the_tensor_op_plan_when_it_would_not_be_the_same_step(why, monkeypatch):
    cfg = dict(CONFIGS["D8"], backend="eager") if why == "eager backend" else CONFIGS["D8"]
    m = build(cfg)
    if why == "BABYGPT_BACKEND=sdpa":
        monkeypatch.setenv("BABYGPT_BACKEND", "sdpa")
    if why == "bfloat16":
        m = m.to(torch.bfloat16)
    if why == "two eps":
        m.transformer.h[1].ln_2.eps = 1e-6
    plan = DecodePlan.of(m, m.new_kv_cache(1))
    assert plan is not None and plan.fused is None
