"""babygpt_ext.patch on a nanoGPT-style model written here from nanoGPT's description: the logits stay
the same, the weights are shared, and the patched model is still causal on every backend; patching
twice is a no-op, a bad backend fails at patch time, unpatch() restores the original modules, and
the report names what was patched, what was left and why."""

import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import babygpt_ext
from babygpt_ext import lora, ops
from babygpt_ext.bench.nanogpt_model import NanoAttention, NanoGPT
from babygpt_ext.nn import CausalSelfAttention

BACKENDS = ops.available_backends("cpu")


@pytest.mark.parametrize("backend", BACKENDS)
def test_patch_keeps_the_logits_and_shares_the_weights(backend):
    torch.manual_seed(0)
    model = NanoGPT().eval()
    idx = torch.randint(0, 31, (3, 12))
    with torch.no_grad():
        before = model(idx)
    c_attn = model.h[0].attn.c_attn
    names = babygpt_ext.patch(model, backend=backend)
    assert names == ["h.0.attn", "h.1.attn"]
    attn = model.h[0].attn
    assert isinstance(attn, CausalSelfAttention) and attn.backend == backend
    assert attn.c_attn is c_attn  # shared module, not a copy
    assert all(p.device.type == "cpu" for p in model.parameters())  # nothing left on the meta device
    with torch.no_grad():
        after = model(idx)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    # Still causal: changing the last 4 tokens leaves the first 8 positions alone.
    idx2 = idx.clone()
    idx2[:, 8:] = (idx2[:, 8:] + 1) % 31
    with torch.no_grad():
        torch.testing.assert_close(model(idx2)[:, :8], after[:, :8], rtol=0, atol=1e-5)


def test_patched_model_trains_the_shared_weights():
    torch.manual_seed(1)
    model = NanoGPT()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)  # built before patching: must still own the weights
    babygpt_ext.patch(model)
    w = model.h[0].attn.c_attn.weight.detach().clone()
    idx = torch.randint(0, 31, (2, 8))
    F.cross_entropy(model(idx).reshape(-1, 31), idx.reshape(-1)).backward()
    opt.step()
    assert not torch.equal(model.h[0].attn.c_attn.weight, w)


def test_patch_explains_what_it_could_not_patch():
    with pytest.raises(ValueError, match="no nanoGPT-style attention"):
        babygpt_ext.patch(nn.Sequential(nn.Linear(4, 4)))
    with pytest.raises(ValueError, match="itself an attention module"):
        babygpt_ext.patch(NanoAttention(8, 2, 4))
    odd = NanoGPT()
    odd.h[0].attn.c_attn = nn.Linear(32, 64)  # not C -> 3C: left as it is, with the reason
    with pytest.warns(RuntimeWarning, match=r"left h\.0\.attn: NanoAttention: c_attn is 32->64"):
        report = babygpt_ext.patch(odd)
    assert report == ["h.1.attn"] and [n for n, _ in report.left] == ["h.0.attn"]
    assert isinstance(odd.h[0].attn, NanoAttention) and isinstance(odd.h[1].attn, CausalSelfAttention)
    all_odd = NanoGPT()
    for blk in all_odd.h:
        blk.attn.c_attn = nn.Linear(32, 64)
    with pytest.raises(ValueError, match=r"could not take: h\.0\.attn: NanoAttention: c_attn is 32->64"):
        babygpt_ext.patch(all_odd)


class QKNormAttention(NanoAttention):
    """nanoGPT attention plus a layer our attention would not run: patching it would change the math."""

    def __init__(self, *args):
        super().__init__(*args)
        self.q_norm = nn.LayerNorm(32 // self.n_head)


def test_patch_leaves_attention_with_extra_layers_and_reports_it():
    model = NanoGPT()
    model.h[1].attn = QKNormAttention(32, 4, 16)
    with pytest.warns(RuntimeWarning, match="holds q_norm, which our attention would not run"):
        report = babygpt_ext.patch(model)
    assert report == ["h.0.attn"] and isinstance(model.h[1].attn, QKNormAttention)
    assert "left h.1.attn: QKNormAttention" in str(report)


def test_patch_twice_is_a_no_op_that_says_so():
    model = NanoGPT()
    first = babygpt_ext.patch(model)
    modules = [blk.attn for blk in model.h]
    with pytest.warns(RuntimeWarning, match=r"nothing to do: 2 attention module\(s\) were patched before"):
        again = babygpt_ext.patch(model)
    assert first == ["h.0.attn", "h.1.attn"] and again == [] and again.nothing_to_do
    assert [blk.attn for blk in model.h] == modules  # the very same modules
    switched = babygpt_ext.patch(model, backend="eager")  # another backend: switched, not re-patched
    assert switched == ["h.0.attn", "h.1.attn"] and all(blk.attn.backend == "eager" for blk in model.h)
    assert [blk.attn for blk in model.h] == modules
    from babygpt_ext.models import GPT, GPTConfig
    with pytest.warns(RuntimeWarning, match="it is built with babygpt_ext's attention"):
        assert babygpt_ext.patch(GPT(GPTConfig(vocab_size=11, block_size=8, n_layer=1, n_head=2, n_embd=8))) == []


def test_patch_checks_the_backend_before_touching_the_model():
    model = NanoGPT()
    with pytest.raises(ValueError, match=r"unknown backend 'bogus'; known backends: eager, sdpa, cpu"):
        babygpt_ext.patch(model, backend="bogus")
    assert all(isinstance(blk.attn, NanoAttention) for blk in model.h)
    if "cuda" not in ops.available_backends():
        with pytest.raises(ops.BackendUnavailableError, match="backend 'cuda' is not usable here"):
            babygpt_ext.patch(model, backend="cuda")


def test_unpatch_restores_the_original_modules_with_the_trained_weights():
    torch.manual_seed(2)
    model = NanoGPT()
    originals = [blk.attn for blk in model.h]
    keys = list(model.state_dict())  # nanoGPT's causal-mask buffer `bias` included
    idx = torch.randint(0, 31, (2, 10))
    babygpt_ext.patch(model)
    assert "h.0.attn.bias" not in model.state_dict()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    F.cross_entropy(model(idx).reshape(-1, 31), idx.reshape(-1)).backward()
    opt.step()
    model.eval()
    with torch.no_grad():
        patched = model(idx)
    report = babygpt_ext.unpatch(model)
    assert report == ["h.0.attn", "h.1.attn"]
    assert [blk.attn for blk in model.h] == originals and not model.training and not model.h[0].attn.training
    assert list(model.state_dict()) == keys
    with torch.no_grad():
        torch.testing.assert_close(model(idx), patched, rtol=1e-5, atol=1e-5)  # the trained weights, shared
    with pytest.warns(RuntimeWarning, match="unpatch: nothing to do"):
        assert babygpt_ext.unpatch(model) == []


def test_patch_a_lora_model_and_unpatch_it_keeps_the_adapters():
    torch.manual_seed(3)
    model = NanoGPT().eval()
    lora.inject(model, ("c_attn",), r=2, alpha=4)
    with torch.no_grad():
        for m in lora.lora_modules(model).values():
            m.lora_B.normal_()
        before = model(torch.arange(12)[None])
    assert babygpt_ext.patch(model) == ["h.0.attn", "h.1.attn"]
    babygpt_ext.unpatch(model)
    assert set(lora.lora_modules(model)) == {"h.0.attn.c_attn", "h.1.attn.c_attn"}
    with torch.no_grad():
        torch.testing.assert_close(model(torch.arange(12)[None]), before, rtol=1e-5, atol=1e-5)


def test_report_summarises_patched_and_left():
    model = NanoGPT()
    for blk in model.h:
        blk.attn.dropout = 0.2
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a clean patch is quiet
        report = babygpt_ext.patch(model, backend="cpu")
    text = str(report)
    assert text.startswith("patch: 2 attention module(s) now run babygpt_ext's attention (backend: 'cpu'): "
                           "h.0.attn, h.1.attn")
    assert "note:" not in text, "dropout trains on the fused op: nothing takes another path"


def test_patched_nanogpt_trains_with_its_dropout_on_the_fused_op(monkeypatch):
    """nanoGPT's dropout 0.2 (attn_dropout and resid_dropout): after patch() every training forward
    of every layer calls ops.qkv_attention with dropout_p=0.2, the backward runs, and eval calls
    it with 0."""
    torch.manual_seed(0)
    model = NanoGPT()
    for blk in model.h:
        blk.attn = NanoAttention(32, 4, 16, dropout=0.2)
    babygpt_ext.patch(model)
    calls = []
    real = ops.qkv_attention

    def counting(qkv, n_head, n_kv_head, **kw):
        calls.append(kw.get("dropout_p", 0.0))
        return real(qkv, n_head, n_kv_head, **kw)
    monkeypatch.setattr(ops, "qkv_attention", counting)
    idx = torch.randint(0, 31, (4, 16))
    loss = F.cross_entropy(model.train()(idx).flatten(0, 1), idx.roll(-1, 1).flatten())
    loss.backward()
    assert calls == [0.2, 0.2] and all(p.grad is not None for p in model.parameters())
    calls.clear()
    with torch.no_grad():
        model.eval()(idx)
    assert calls == [0.0, 0.0]
