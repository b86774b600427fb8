"""A Linear factored through a rank-r bottleneck: y = up(down(x)).

Projecting q, k and v "through rank 4" to save parameters (the BabyGPT seed's idea) is this
factorisation of c_attn (in·r + r·out + out parameters instead of in·out + out). It is a
*trained* factorisation, unlike LoRA, which adds a low-rank update to a frozen full-rank weight.
"""

import torch
import torch.nn as nn


class LowRankLinear(nn.Module):
    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True):
        super().__init__()
        if not isinstance(rank, int) or rank < 1:
            raise ValueError(f"LowRankLinear: rank must be a positive int, got {rank!r}")
        self.in_features, self.out_features, self.rank = in_features, out_features, rank
        self.down = nn.Linear(in_features, rank, bias=False)  # (r, in)
        self.up = nn.Linear(rank, out_features, bias=bias)  # (out, r)
        self.reset_parameters()

    def reset_parameters(self, std: float = 0.02) -> None:
        # Var(y_o) = r · Var(up) · Var(down) · |x|²: with Var(down) = 1/r the product has the
        # same spread as a full Linear initialised with N(0, std²).
        nn.init.normal_(self.down.weight, std=self.rank ** -0.5)
        nn.init.normal_(self.up.weight, std=std)
        if self.up.bias is not None:
            nn.init.zeros_(self.up.bias)

    @property
    def weight(self) -> torch.Tensor:
        """The (out, in) product up·down, for code that reads .weight (e.g. analysis, export)."""
        return self.up.weight @ self.down.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.down(x))  # (..., in) -> (..., r) -> (..., out)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rank={self.rank}"
