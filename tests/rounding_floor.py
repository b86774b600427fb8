"""The conditioning floor of the float32 tolerance rule (docs/design.md §13.2): how far a correct
FlashAttention-style float32 kernel can be from the exact result on one call, estimated by running
the kernel's algorithm in float64 with the rounding errors of the standard model put back in.

The standard model says every float32 operation is exact up to a relative error of at most
u = 2^-24, so a computed dot product a·b differs from the exact one by up to about u · Σ|a_d b_d|
(u · the sum of the magnitudes of its terms, not of its result). In the attention backward three such
errors do not cancel the way they do in the eager composition, which computes P once and differentiates
that P:

- the scores s = scale q·k are computed twice, by the forward (making o and lse) and by the
  backward (recomputing P = exp(s - lse)), each time with its own rounding, so the backward's P is not
  exactly the P that made o; an error of u · |scale| Σ|q_d k_d| in s is a relative error of P;
- dP = dO·v and delta = dO·o are separate sums whose difference dS / P cancels: their errors,
  u · Σ|dO_d v_d| and u · Σ|dO_d o_d|, remain in dS even where dS is exactly zero (dq of a query that
  sees one key, dk of a key seen by one query: |dO||v| · |k| · scale of noise on a zero gradient);
- lse = m + log l is rounded at its own magnitude, u · |lse|.

floors() draws one sign per error term (a fixed generator: the floor is a function of the case) and
returns the float64 norm of the difference each makes to o, dq, dk, dv: a typical error of a correct
kernel, not a worst-case bound. The rule multiplies it by its factor; a kernel with a defect (a wrong
term, a gradient off by a relative 1e-4) is far above it (tests/test_tolerance.py).
"""

import torch

U32 = 2.0 ** -24  # unit roundoff of float32


def _signs(g: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randint(0, 2, like.shape, generator=g, dtype=torch.float64).mul_(2).sub_(1)


def _attention_with_errors(q, k, v, dout, scale, causal, g):
    """(o, dq, dk, dv) of the FlashAttention algorithm in float64; g None: exact, else with the rounding
    errors above, one random sign each. q (B, H, Tq, D), k/v (B, Hkv, Tk, D), all float64."""
    h, hkv, tq, tk = q.shape[1], k.shape[1], q.shape[2], k.shape[2]
    kk, vv = k.repeat_interleave(h // hkv, dim=1), v.repeat_interleave(h // hkv, dim=1)
    seen = torch.ones(tq, tk, dtype=torch.bool).tril(diagonal=tk - tq) if causal else torch.ones(tq, tk, dtype=torch.bool)
    s = scale * q @ kk.transpose(-1, -2)
    s_mag = abs(scale) * q.abs() @ kk.abs().transpose(-1, -2)

    def err(like, mag):
        return 0.0 if g is None else U32 * mag * _signs(g, like)

    s_fwd = (s + err(s, s_mag)).masked_fill(~seen, float("-inf"))
    lse = torch.logsumexp(s_fwd, dim=-1, keepdim=True)
    lse = lse + err(lse, lse.abs())
    o = torch.exp(s_fwd - lse) @ vv
    s_bwd = (s + err(s, s_mag)).masked_fill(~seen, float("-inf"))
    p = torch.exp(s_bwd - lse)
    dp = dout @ vv.transpose(-1, -2)
    dp = dp + err(dp, dout.abs() @ vv.abs().transpose(-1, -2))
    delta = (dout * o).sum(-1, keepdim=True)
    delta = delta + err(delta, (dout.abs() * o.abs()).sum(-1, keepdim=True))
    ds = p * (dp - delta)
    dq = scale * ds @ kk
    b, d = q.shape[0], q.shape[3]
    dk = (scale * ds.transpose(-1, -2) @ q).view(b, hkv, h // hkv, tk, d).sum(2)
    dv = (p.transpose(-1, -2) @ dout).view(b, hkv, h // hkv, tk, d).sum(2)
    return o, dq, dk, dv


def floors(q, k, v, dout, scale: float, causal: bool, seed: int = 0) -> tuple:
    """Norms of the float32 rounding errors' effect on (o, dq, dk, dv) for these inputs (any dtype;
    computed in float64)."""
    q, k, v, dout = (t.detach().double() for t in (q, k, v, dout))
    exact = _attention_with_errors(q, k, v, dout, scale, causal, None)
    rounded = _attention_with_errors(q, k, v, dout, scale, causal, torch.Generator().manual_seed(seed))
    return tuple((r - e).norm().item() for r, e in zip(rounded, exact))
