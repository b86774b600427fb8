"""The peer of the training benchmark: a GPT and a training loop as a user writes them by hand.

Plain PyTorch in nanoGPT's style, written once here and never tuned: fp32, attention through
torch's own F.scaled_dot_product_attention(is_causal=True), nn.LayerNorm and nn.GELU as they come,
q/k/v split from one projection, torch.optim.AdamW(foreach=True) with nanoGPT's two weight-decay
groups, gradient clipping at 1.0. Nothing in it imports babygpt_ext, so it cannot pick up our
kernels by accident.

    ref = ReferenceGPT(n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=103)
    ref.load_state_dict(our_gpt.state_dict())        # the parameter names are nanoGPT's, as ours
    step = ReferenceLoop(ref, lr=1e-3)
    loss = step(x, y)                                # one optimizer step on (B, T) int64 batches
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ReferenceAttention(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_proj = nn.Linear(n_embd, n_embd)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)  # (B, nh, T, hs)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


class ReferenceBlock(nn.Module):
    def __init__(self, n_embd: int, n_head: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(n_embd)
        self.attn = ReferenceAttention(n_embd, n_head)
        self.ln_2 = nn.LayerNorm(n_embd)
        self.mlp = nn.ModuleDict(dict(c_fc=nn.Linear(n_embd, 4 * n_embd), gelu=nn.GELU(),
                                      c_proj=nn.Linear(4 * n_embd, n_embd)))

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        m = self.mlp
        return x + m.c_proj(m.gelu(m.c_fc(self.ln_2(x))))


class ReferenceGPT(nn.Module):
    """GPT-2's layout: learned positions, pre-LayerNorm blocks, tied input/output embeddings."""

    def __init__(self, n_layer: int, n_head: int, n_embd: int, block_size: int, vocab_size: int):
        super().__init__()
        self.transformer = nn.ModuleDict(dict(
            wte=nn.Embedding(vocab_size, n_embd),
            wpe=nn.Embedding(block_size, n_embd),
            h=nn.ModuleList([ReferenceBlock(n_embd, n_head) for _ in range(n_layer)]),
            ln_f=nn.LayerNorm(n_embd),
        ))
        self.lm_head = nn.Linear(n_embd, vocab_size, bias=False)
        self.transformer.wte.weight = self.lm_head.weight
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                std = 0.02 / math.sqrt(2 * n_layer) if name.endswith("c_proj.weight") else 0.02
                nn.init.normal_(p, std=std)
            elif name.endswith(".bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        B, T = idx.shape
        pos = torch.arange(T, device=idx.device)
        x = self.transformer.wte(idx) + self.transformer.wpe(pos)
        for block in self.transformer.h:
            x = block(x)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss


class ReferenceLoop:
    """One nanoGPT-style optimizer step per call: forward, backward, clip, AdamW, zero the grads."""

    def __init__(self, model: nn.Module, lr: float = 1e-3, weight_decay: float = 0.1, betas=(0.9, 0.95),
                 grad_clip: float = 1.0):
        self.model, self.grad_clip = model, grad_clip
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=betas, foreach=True)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> float:
        self.model.train()
        _, loss = self.model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.grad_clip)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item()
