"""LoRA on Hugging Face models, checked against real PEFT: GPT-2's Conv1D layers, PEFT's adapter
format both ways (same logits as PEFT on the same base model), and merge_and_unload round-tripping
through save_pretrained/from_pretrained. Models are built from small configs (no hub access)."""

import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from babygpt_ext import lora, ops
from babygpt_ext.models import GPT, GPTConfig
from babygpt_ext.nn import LoRALinear

transformers = pytest.importorskip("transformers", reason="the transformers package is not installed "
                                   "(pip install 'babygpt_ext[test]' brings it)")
peft = pytest.importorskip("peft", reason="the peft package is not installed (pip install 'babygpt_ext[test]' brings it)")
safetensors = pytest.importorskip("safetensors", reason="the safetensors package is not installed "
                                  "(pip install 'babygpt_ext[test]' brings it)")
import safetensors.torch  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

LORA_BACKENDS = [b for b in ops.available_backends("cpu") if "lora" in ops.BACKENDS[b].impls]
V = 50


def gpt2():
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=V, n_positions=64, bos_token_id=0,
                                  eos_token_id=0)
    torch.manual_seed(0)  # the same base weights on every call
    return transformers.GPT2LMHeadModel(cfg).eval()


def llama():
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=V, max_position_embeddings=64, bos_token_id=0,
                                   eos_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(cfg).eval()


def babygpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, block_size=32, n_layer=2, n_head=4, n_embd=32)).eval()


def logits(model, idx):
    with torch.no_grad():
        out = model(idx)
    return out[0] if isinstance(out, tuple) else out.logits


def randomise_b(model):
    """B starts at zero (the adapter would then be invisible): give every lora_B values."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)


def set_backend(model, backend):
    for m in lora.lora_modules(model).values():
        m.backend = backend


def assert_same_logits(got, want, backend):
    """The eager backend computes PEFT's own composition, so it must agree bit for bit; the fused
    kernels accumulate in another order and agree to float32 rounding."""
    if backend == "eager":
        assert torch.equal(got, want), (got - want).abs().max()
    else:
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


IDX = torch.randint(0, V, (2, 13), generator=torch.Generator().manual_seed(0))


# ------------------------------------------------------------------------------ GPT-2's Conv1D
@pytest.mark.parametrize("backend", LORA_BACKENDS)
def test_conv1d_base_forward_grads_and_merge(backend):
    torch.manual_seed(1)
    base = Conv1D(7, 12)  # nf=7 outputs, nx=12 inputs: weight (12, 7), the transpose of nn.Linear's
    layer = LoRALinear(base, r=3, alpha=6, backend=backend)
    assert (layer.in_features, layer.out_features, layer.fan_in_fan_out) == (12, 7, True)
    assert layer.lora_A.shape == (3, 12) and layer.lora_B.shape == (7, 3)
    x = torch.randn(2, 5, 12, requires_grad=True)
    torch.testing.assert_close(layer(x), base(x))  # B = 0: the base layer exactly
    randomise_b(layer)
    y = layer(x)
    want = base(x) + 2.0 * F.linear(F.linear(x, layer.lora_A), layer.lora_B)
    torch.testing.assert_close(y, want, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    params = [x, base.weight, base.bias, layer.lora_A, layer.lora_B]
    for got, ref in zip(torch.autograd.grad(y, params, g), torch.autograd.grad(want, params, g)):
        torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    w0 = base.weight.detach().clone()
    layer.merge()
    torch.testing.assert_close(base.weight, w0 + (2.0 * layer.lora_B @ layer.lora_A).t())
    torch.testing.assert_close(layer(x), y, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(base.weight, w0, rtol=0, atol=1e-6)


def test_inject_adapts_gpt2_and_names_unsupported_types():
    model = gpt2()
    names = lora.inject(model, ("c_attn", "c_proj", "c_fc"), r=2, alpha=4)
    assert len(names) == 2 * 4 and all(isinstance(model.get_submodule(n), LoRALinear) for n in names)
    with pytest.raises(ValueError, match=r"cannot adapt: transformer\.h\.0\.attn \(GPT2Attention\).*"
                                         r"adapts nn\.Linear and transformers' Conv1D"):
        lora.inject(gpt2(), ("attn",))
    with pytest.raises(ValueError, match=r"no module matches target_modules=\['q_proj'\].*c_attn, c_fc, c_proj, lm_head"):
        lora.inject(gpt2(), ("q_proj",))


# ------------------------------------------------------------------------- our adapter -> PEFT
@pytest.mark.parametrize("make,targets", [(gpt2, ("c_attn", "c_proj")), (llama, ("q_proj", "v_proj")),
                                          (babygpt, ("c_attn", "mlp.c_proj"))], ids=["gpt2", "llama", "babygpt"])
def test_peft_loads_our_adapter_with_identical_logits(tmp_path, make, targets):
    model = make()
    lora.inject(model, targets[:1], r=4, alpha=8, backend="eager")
    lora.inject(model, targets[1:], r=2, alpha=3, backend="eager")  # per-module r and alpha: PEFT's patterns
    randomise_b(model)
    lora.save_adapter(model, tmp_path, format="peft")
    config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 4 and config["rank_pattern"]
    assert config["fan_in_fan_out"] == (make is gpt2)
    theirs = peft.PeftModel.from_pretrained(make(), tmp_path).eval()
    assert torch.equal(logits(theirs, IDX), logits(model, IDX))


# ------------------------------------------------------------------------- PEFT adapter -> ours
def peft_adapter(make, tmp_path, **config):
    """A PEFT adapter with random A and B saved by PeftModel.save_pretrained; returns PEFT's logits."""
    theirs = peft.get_peft_model(make(), peft.LoraConfig(**config))
    randomise_b(theirs)
    theirs.save_pretrained(tmp_path)
    return logits(theirs.eval(), IDX)


@pytest.mark.parametrize("backend", LORA_BACKENDS)
@pytest.mark.parametrize("make,config", [
    (gpt2, dict(r=3, lora_alpha=5, target_modules=["c_attn", "mlp.c_fc"], fan_in_fan_out=True,
                rank_pattern={"h.1.mlp.c_fc": 2}, alpha_pattern={"h.1.mlp.c_fc": 7})),
    (llama, dict(r=4, lora_alpha=16, target_modules=["q_proj", "k_proj", "down_proj"], lora_dropout=0.1)),
], ids=["gpt2", "llama"])
def test_we_load_peft_adapters_with_identical_logits(tmp_path, backend, make, config):
    want = peft_adapter(make, tmp_path, **config)
    ours = make()
    names = lora.load_adapter(ours, tmp_path)
    assert len(names) == 2 * len(config["target_modules"])
    set_backend(ours, backend)
    assert_same_logits(logits(ours, IDX), want, backend)
    # The weights file alone (with its config beside it) and a model injected beforehand load the same.
    again = make()
    if "rank_pattern" not in config:  # injected beforehand with another alpha: the adapter's must win
        lora.inject(again, config["target_modules"], r=config["r"], alpha=1.0)
    lora.load_adapter(again, tmp_path / "adapter_model.safetensors")
    set_backend(again, backend)
    assert_same_logits(logits(again, IDX), want, backend)


def test_peft_round_trip_through_both_loaders(tmp_path):
    """PEFT -> ours -> (format="peft") -> PEFT keeps the logits: nothing is lost in either direction."""
    want = peft_adapter(gpt2, tmp_path / "a", r=2, lora_alpha=4, target_modules=["c_attn"], fan_in_fan_out=True)
    ours = gpt2()
    lora.load_adapter(ours, tmp_path / "a")
    lora.save_adapter(ours, tmp_path / "b", format="peft")
    back = peft.PeftModel.from_pretrained(gpt2(), tmp_path / "b").eval()
    torch.testing.assert_close(logits(back, IDX), want, rtol=1e-5, atol=1e-5)


def test_load_adapter_explains_what_it_cannot_read(tmp_path):
    with pytest.raises(ValueError, match="directory without adapter_config.json, so it holds no PEFT adapter"):
        lora.load_adapter(gpt2(), tmp_path)
    named = peft.get_peft_model(gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"]), adapter_name="mine")
    named.save_pretrained(tmp_path / "named")  # PEFT puts a named adapter in a subdirectory
    with pytest.raises(ValueError, match=r"subdirectories \['mine'\] hold adapters"):
        lora.load_adapter(gpt2(), tmp_path / "named")
    lora.load_adapter(gpt2(), tmp_path / "named" / "mine")  # ... and that one loads
    peft.get_peft_model(gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], use_dora=True)
                        ).save_pretrained(tmp_path / "dora")
    with pytest.raises(ValueError, match="does not implement: use_dora"):
        lora.load_adapter(gpt2(), tmp_path / "dora")
    peft.get_peft_model(gpt2(), peft.LoraConfig(r=2, target_modules=["c_attn"], use_rslora=True)
                        ).save_pretrained(tmp_path / "rslora")
    with pytest.raises(ValueError, match="does not implement: use_rslora"):
        lora.load_adapter(gpt2(), tmp_path / "rslora")
    peft.get_peft_model(gpt2(), peft.PrefixTuningConfig(num_virtual_tokens=2, task_type="CAUSAL_LM")
                        ).save_pretrained(tmp_path / "prefix")
    with pytest.raises(ValueError, match="PEFT PREFIX_TUNING adapter; only LoRA loads"):
        lora.load_adapter(gpt2(), tmp_path / "prefix")
    peft_adapter(gpt2, tmp_path / "lm", r=2, target_modules=["c_attn"])
    with pytest.raises(ValueError, match=r"lacks or LoRA cannot adapt.*transformer\.h\.0\.attn\.c_attn \(missing\)"):
        lora.load_adapter(llama(), tmp_path / "lm")
    safetensors.torch.save_file({"w": torch.zeros(2)}, tmp_path / "x.safetensors")  # not beside a config
    with pytest.raises(ValueError, match="neither a babygpt_ext LoRA adapter .* nor a PEFT adapter directory"):
        lora.load_adapter(gpt2(), tmp_path / "x.safetensors")


def test_save_adapter_rejects_an_unknown_format(tmp_path):
    model = gpt2()
    lora.inject(model, ("c_attn",))
    with pytest.raises(ValueError, match=r"format must be one of \('babygpt', 'peft'\), got 'hf'"):
        lora.save_adapter(model, tmp_path, format="hf")


# ---------------------------------------------------------------------------- merge_and_unload
@pytest.mark.parametrize("make,targets", [(gpt2, ("c_attn", "c_proj", "c_fc")), (llama, ("q_proj", "o_proj"))],
                         ids=["gpt2", "llama"])
def test_merge_and_unload_saves_and_reloads_as_the_plain_architecture(tmp_path, make, targets):
    model = make()
    lora.inject(model, targets, r=2, alpha=4)
    randomise_b(model)
    adapted = logits(model, IDX)
    assert lora.merge_and_unload(model) is model
    assert not lora.lora_modules(model)
    assert list(model.state_dict()) == list(make().state_dict())  # same keys, same order
    torch.testing.assert_close(logits(model, IDX), adapted, rtol=1e-5, atol=1e-5)
    model.save_pretrained(tmp_path)
    reloaded, info = type(model).from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    assert torch.equal(logits(reloaded.eval(), IDX), logits(model, IDX))


def test_merge_and_unload_on_our_gpt_and_its_refusals():
    model = babygpt()
    lora.inject(model, ("c_attn", "c_proj"), r=2, alpha=4)
    randomise_b(model)
    adapted = logits(model, IDX)
    lora.merge_and_unload(model)
    assert list(model.state_dict()) == list(babygpt().state_dict())
    assert all(type(m) is nn.Linear for n, m in model.named_modules() if n.endswith(("c_attn", "c_proj")))
    torch.testing.assert_close(logits(model, IDX), adapted, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="no LoRALinear modules; nothing to merge"):
        lora.merge_and_unload(model)
    tied = babygpt()  # lm_head.weight is the token embedding
    lora.inject(tied, ("lm_head",), r=2, alpha=2)
    with pytest.raises(ValueError, match="shared with"):
        lora.merge_and_unload(tied)
    assert isinstance(tied.lm_head, LoRALinear)  # refused before anything changed

