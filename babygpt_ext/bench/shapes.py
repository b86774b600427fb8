"""The benchmark shapes of docs/design.md §14.2 and their FLOP counts (§14.3)."""

from dataclasses import dataclass


@dataclass(frozen=True)
class AttnShape:
    name: str
    B: int
    H: int
    T: int
    D: int
    Hkv: int = 0  # 0: same as H

    @property
    def kv_heads(self) -> int:
        return self.Hkv or self.H

    def flops(self, causal: bool = True, backward: bool = False) -> float:
        """Matmul FLOPs: 4·B·H·Tq·Tk·D forward (QKᵀ and PV), halved when causal; backward 2.5×."""
        f = 4.0 * self.B * self.H * self.T * self.T * self.D * (0.5 if causal else 1.0)
        return f * (3.5 if backward else 1.0)  # forward + backward = 1 + 2.5

    def bytes(self, element_size: int) -> float:
        """q, k, v read once and o written once (the floor any fused kernel pays)."""
        return element_size * (2 * self.B * self.H * self.T * self.D + 2 * self.B * self.kv_heads * self.T * self.D)


@dataclass(frozen=True)
class LoraShape:
    name: str
    N: int  # tokens = batch × sequence
    d_in: int
    d_out: int
    r: int

    def flops(self, backward: bool = False) -> float:
        f = 2.0 * self.N * (self.d_in * self.d_out + self.r * (self.d_in + self.d_out))
        return f * (3.0 if backward else 1.0)  # backward: dx and the LoRA grads ≈ 2× forward


ATTENTION_SHAPES = (
    AttnShape("babygpt", B=16, H=4, T=32, D=4),
    AttnShape("nanogpt-cpu", B=12, H=4, T=64, D=32),
    AttnShape("medium", B=4, H=8, T=512, D=64),
    AttnShape("long", B=1, H=8, T=2048, D=64),
    AttnShape("xl", B=1, H=16, T=4096, D=128),
)

LORA_SHAPES = (
    LoraShape("babygpt c_attn", N=16 * 32, d_in=16, d_out=48, r=4),
    LoraShape("shakespeare-cpu c_attn", N=12 * 64, d_in=128, d_out=384, r=8),
    LoraShape("gpt2 c_attn", N=4 * 512, d_in=768, d_out=2304, r=16),
)

QUICK = {"babygpt", "nanogpt-cpu", "medium", "babygpt c_attn", "shakespeare-cpu c_attn"}
