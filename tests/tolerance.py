"""The tolerance rule of docs/design.md §13.2 (FlashAttention's): compare to a float64 reference, and in
low precision allow a multiple of the error that eager PyTorch itself makes in that precision."""

import torch

FWD_FACTOR, GRAD_FACTOR = 2.0, 3.0
FP32_REL = 1e-5
# Absolute floor per element for fp32 (~8 ulp at 1.0): a gradient that is exactly zero in float64
# (e.g. dq when every query sees a single key) is only zero up to rounding in float32.
FP32_ATOL = 1e-6


def rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    ref = ref.double()
    return ((out.double() - ref).norm() / ref.norm().clamp_min(1e-30)).item()


def bound_ratio(out: torch.Tensor, ref64: torch.Tensor, eager_lowp: torch.Tensor, factor: float, floor=None):
    """(error / allowed error, description): at most 1.0 when out obeys the rule. out: the backend's
    result; ref64: float64 reference; eager_lowp: eager composition in out's dtype; floor: for
    float32, the conditioning floor of this call (tests/rounding_floor.py), which the rule allows
    `factor` times on top of the relative part."""
    if out.dtype in (torch.float32, torch.float64):
        err = (out.double() - ref64).norm().item()
        conditioning = factor * floor if floor is not None and out.dtype == torch.float32 else 0.0
        absolute = FP32_ATOL * out.numel() ** 0.5 + conditioning
        bound = FP32_REL * ref64.norm().item() + absolute
        return err / bound, (f"norm-wise error {err:.3e} > {bound:.3e} (relative {rel_error(out, ref64):.2e}, "
                             f"conditioning floor {floor if floor is not None else 0:.2e})")
    err = (out.double() - ref64).abs().max().item()
    eager_err = (eager_lowp.double() - ref64).abs().max().item()
    # Rounding floor: one unit in the last place at the output's scale (at least 1.0, the scale of
    # the unit-normal test inputs), so an exact eager result (error 0, e.g. a gradient that
    # vanishes when every query sees one key) does not demand an exact kernel.
    floor = torch.finfo(out.dtype).eps * max(ref64.abs().max().item(), 1.0)
    bound = factor * eager_err + floor
    return err / bound, f"max error {err:.3e} > {factor}x eager's {eager_err:.3e} + floor {floor:.1e}"


def assert_close(out: torch.Tensor, ref64: torch.Tensor, eager_lowp: torch.Tensor, what: str, factor: float):
    """out: the backend's result; ref64: float64 reference; eager_lowp: eager composition in out's dtype."""
    assert out.shape == ref64.shape, f"{what}: shape {tuple(out.shape)} != reference {tuple(ref64.shape)}"
    assert out.dtype == eager_lowp.dtype, f"{what}: dtype {out.dtype}, expected {eager_lowp.dtype}"
    assert torch.isfinite(out).all(), f"{what}: non-finite values"
    ratio, why = bound_ratio(out, ref64, eager_lowp, factor)
    assert ratio <= 1.0, f"{what}: {why}"
