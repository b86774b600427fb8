"""babygpt_ext.patch on a nanoGPT-style model written here from nanoGPT's description: the logits stay
the same, the weights are shared, and the patched model is still causal on every backend."""

import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import babygpt_ext
from babygpt_ext import ops
from babygpt_ext.nn import CausalSelfAttention

BACKENDS = ops.available_backends("cpu")


class NanoAttention(nn.Module):
    """nanoGPT's CausalSelfAttention (manual path): c_attn C->3C, a tril mask buffer `bias`, c_proj."""

    def __init__(self, n_embd, n_head, block_size, dropout=0.0):
        super().__init__()
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.attn_dropout, self.resid_dropout = nn.Dropout(dropout), nn.Dropout(dropout)
        self.n_head, self.n_embd, self.dropout = n_head, n_embd, dropout
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, float("-inf"))
        att = self.attn_dropout(F.softmax(att, dim=-1))
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.resid_dropout(self.c_proj(y))


class NanoBlock(nn.Module):
    def __init__(self, n_embd, n_head, block_size):
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(n_embd), nn.LayerNorm(n_embd)
        self.attn = NanoAttention(n_embd, n_head, block_size)
        self.mlp = nn.Sequential(nn.Linear(n_embd, 4 * n_embd), nn.GELU(), nn.Linear(4 * n_embd, n_embd))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class NanoGPT(nn.Module):
    def __init__(self, vocab=31, block_size=16, n_layer=2, n_head=4, n_embd=32):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab, n_embd), nn.Embedding(block_size, n_embd)
        self.h = nn.ModuleList([NanoBlock(n_embd, n_head, block_size) for _ in range(n_layer)])
        self.ln_f, self.lm_head = nn.LayerNorm(n_embd), nn.Linear(n_embd, vocab, bias=False)

    def forward(self, idx):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for blk in self.h:
            x = blk(x)
        return self.lm_head(self.ln_f(x))


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
    odd.h[0].attn.c_attn = nn.Linear(32, 64)  # not C -> 3C
    with pytest.raises(ValueError, match=r"h.0.attn.*32->64"):
        babygpt_ext.patch(odd)
