"""Input checks for the public ops. They run before any backend, so a bad call never reaches a
kernel: it raises TypeError (wrong kind of thing, wrong dtype) or ValueError (wrong shape or
device), naming the argument and the shapes involved."""

import math
import numbers

import torch

from . import dropout

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _tensor(name: str, t, ndim: "int | None" = None) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(t.shape)}")
    return t


def _same_dtype_and_device(named: dict) -> None:
    items = [(n, t) for n, t in named.items() if t is not None]
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} has dtype {t.dtype} but {first_name} has {first.dtype}; "
                            "all inputs must share one dtype")
        if t.device != first.device:
            raise ValueError(f"{name} is on {t.device} but {first_name} is on {first.device}; "
                             "all inputs must be on one device")


def _scale(scale, default: float) -> float:
    if scale is None:
        return default
    if isinstance(scale, bool) or not isinstance(scale, numbers.Real):
        raise TypeError(f"scale must be a real number or None, got {type(scale).__name__}")
    if not math.isfinite(scale):
        raise ValueError(f"scale must be finite, got {scale}")
    return float(scale)


def _alike_4d(q, k, v) -> bool:
    """Whether q, k, v are 4-D float tensors of one dtype and device: the common case in one cheap
    test (the per-argument checks cost a fifth of a small attention call's Python time)."""
    return (isinstance(q, torch.Tensor) and isinstance(k, torch.Tensor) and isinstance(v, torch.Tensor)
            and q.dtype in FLOAT_DTYPES and q.dtype == k.dtype == v.dtype and q.dim() == k.dim() == v.dim() == 4
            and q.device == k.device == v.device)


def attention_args(q, k, v, causal, scale) -> float:
    """Check causal_attention's inputs; return the scale to use (default D**-0.5). B, Tq and Tk may
    be 0 (the output is then empty, as with SDPA)."""
    if not _alike_4d(q, k, v):  # the named checks say what is wrong
        _tensor("q", q, 4), _tensor("k", k, 4), _tensor("v", v, 4)
        _same_dtype_and_device({"q": q, "k": k, "v": v})
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    (b, h, tq, d), (bk, hkv, tk, dk) = q.shape, k.shape
    # The message text is built only when a check fails: formatting it on every call cost about a
    # quarter of the Python time of a small attention call (decoding makes many).
    def shapes():
        return f"q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}"
    if k.shape != v.shape:
        raise ValueError(f"k and v must have the same shape (B, Hkv, Tk, D); got {shapes()}")
    if bk != b:
        raise ValueError(f"q and k must have the same batch size B; got {shapes()}")
    if dk != d:
        raise ValueError(f"q and k must have the same head dim D; got {shapes()}")
    if min(h, d, hkv) < 1:
        raise ValueError(f"the heads H, Hkv and the head dim D must be at least 1; got {shapes()}")
    if h % hkv != 0:
        raise ValueError(f"the number of query heads H={h} must be a multiple of the key/value heads "
                         f"Hkv={hkv}; got {shapes()}")
    if causal and tq > tk:
        raise ValueError(f"causal attention needs Tq <= Tk (queries are the last Tq of Tk positions); "
                         f"got Tq={tq}, Tk={tk} ({shapes()})")
    return _scale(scale, d ** -0.5)


def _positive_int(name: str, x) -> int:
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(x).__name__}")
    if x < 1:
        raise ValueError(f"{name} must be at least 1, got {x}")
    return int(x)


def qkv_attention_args(qkv, n_head, n_kv_head, causal, scale) -> float:
    """Check qkv_attention's inputs; return the scale to use (default D**-0.5)."""
    if not (isinstance(qkv, torch.Tensor) and qkv.dtype in FLOAT_DTYPES and qkv.dim() == 3):
        _tensor("qkv", qkv, 3)
    h, hkv = _positive_int("n_head", n_head), _positive_int("n_kv_head", n_kv_head)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    if h % hkv != 0:
        raise ValueError(f"n_head={h} must be a multiple of n_kv_head={hkv}")
    width, heads = qkv.shape[2], h + 2 * hkv
    if width < heads or width % heads != 0:
        raise ValueError(f"qkv must be (B, T, (n_head + 2 * n_kv_head) * D) = (B, T, {heads} * D), its q, k and v "
                         f"heads side by side; got {tuple(qkv.shape)}, whose last dimension is not a positive "
                         f"multiple of {heads} (n_head={h}, n_kv_head={hkv})")
    return _scale(scale, (width // heads) ** -0.5)


def dropout_args(dropout_p, seed) -> tuple:
    """Check attention dropout's arguments; return (p, seed) as the kernels take them: seed None when
    p == 0 (no mask, the kernels skip the generator), else a one-element int64 CPU tensor -- the given
    int, or a fresh draw from torch's default CPU generator (ops/dropout.py)."""
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, numbers.Real):
        raise TypeError(f"dropout_p must be a real number in [0, 1), got {type(dropout_p).__name__}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1) (the probability of dropping an attention weight), "
                         f"got {dropout_p}")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, numbers.Integral)):
        raise TypeError(f"seed must be an int or None (None draws one from torch's generator), "
                        f"got {type(seed).__name__}")
    if seed is not None and not 0 <= seed < dropout.SEED_BOUND:
        raise ValueError(f"seed must be in [0, 2**63 - 1), got {seed}")
    if dropout_p == 0:
        return 0.0, None
    return float(dropout_p), dropout.draw_seed() if seed is None else dropout.seed_tensor(seed)


def _alike_lora(x, weight, bias, lora_a, lora_b) -> bool:
    """Whether x and the 2-D weight, lora_a, lora_b (and a 1-D bias) are float tensors of one dtype
    and device: the common case in one cheap test (the per-argument checks took a third of a small
    LoRA call's Python time)."""
    T = torch.Tensor
    return (isinstance(x, T) and isinstance(weight, T) and isinstance(lora_a, T) and isinstance(lora_b, T)
            and x.dtype in FLOAT_DTYPES and x.dtype == weight.dtype == lora_a.dtype == lora_b.dtype
            and weight.dim() == lora_a.dim() == lora_b.dim() == 2 and x.device == weight.device == lora_a.device
            == lora_b.device and (bias is None or (isinstance(bias, T) and bias.dim() == 1 and bias.dtype == x.dtype
                                                    and bias.device == x.device)))


def lora_args(x, weight, bias, lora_a, lora_b, scale) -> float:
    """Check lora_linear's inputs; return scale as a float."""
    if not _alike_lora(x, weight, bias, lora_a, lora_b):  # the named checks say what is wrong
        _tensor("x", x)
        _tensor("weight", weight, 2), _tensor("lora_a", lora_a, 2), _tensor("lora_b", lora_b, 2)
        if bias is not None:
            _tensor("bias", bias, 1)
        _same_dtype_and_device({"x": x, "weight": weight, "bias": bias, "lora_a": lora_a, "lora_b": lora_b})
    out_f, in_f = weight.shape
    r = lora_a.shape[0]
    def shapes():  # built only when a check fails
        return (f"x {tuple(x.shape)}, weight {tuple(weight.shape)}, lora_a {tuple(lora_a.shape)}, "
                f"lora_b {tuple(lora_b.shape)}" + (f", bias {tuple(bias.shape)}" if bias is not None else ""))
    if x.dim() < 1 or x.shape[-1] != in_f:
        raise ValueError(f"x must be (..., in_features={in_f}) to match weight (out, in); got {shapes()}")
    if lora_a.shape[1] != in_f:
        raise ValueError(f"lora_a must be (r, in_features={in_f}); got {shapes()}")
    if tuple(lora_b.shape) != (out_f, r):
        raise ValueError(f"lora_b must be (out_features={out_f}, r={r}); got {shapes()}")
    if bias is not None and bias.shape[0] != out_f:
        raise ValueError(f"bias must be (out_features={out_f},); got {shapes()}")
    if in_f < 1:
        raise ValueError(f"in_features (weight.shape[1]) must be at least 1: an empty input row has nothing "
                         f"to project; got {shapes()}")
    if r < 1:
        raise ValueError(f"the LoRA rank r (lora_a.shape[0]) must be at least 1; got {shapes()}")
    if scale is None:
        raise TypeError("scale must be a real number (alpha / r), got None")
    return _scale(scale, 1.0)


def bias_gelu_args(x, bias) -> None:
    """Check bias_gelu's inputs: x (..., F), bias (F,) or None."""
    _tensor("x", x)
    if bias is not None:
        _tensor("bias", bias, 1)
        _same_dtype_and_device({"x": x, "bias": bias})
    if x.dim() < 1 or (bias is not None and x.shape[-1] != bias.shape[0]):
        raise ValueError(f"x must be (..., F) with F the size of bias; got x {tuple(x.shape)}"
                         + (f", bias {tuple(bias.shape)}" if bias is not None else ""))


def layer_norm_args(x, weight, bias, eps) -> None:
    """Check layer_norm's inputs: x (..., C); weight and bias (C,) or None, float32 or x's dtype (a
    float32 parameter with a low-precision x is the autocast case); eps a finite number >= 0."""
    _tensor("x", x)
    if x.dim() < 1:
        raise ValueError(f"x must be (..., C) with at least one dimension, got shape {tuple(x.shape)}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is None:
            continue
        _tensor(name, p, 1)
        if p.shape[0] != x.shape[-1]:
            raise ValueError(f"{name} must be (C,) with C = x.shape[-1]; got x {tuple(x.shape)}, {name} "
                             f"{tuple(p.shape)} (pass the LayerNorm's normalized_shape as x's last dimension)")
        if p.dtype not in (x.dtype, torch.float32):
            raise TypeError(f"{name} has dtype {p.dtype} but x has {x.dtype}; {name} must be float32 or x's "
                            f"dtype (cast it with {name}.float())")
        if p.device != x.device:
            raise ValueError(f"{name} is on {p.device} but x is on {x.device}; all inputs must be on one device")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not math.isfinite(eps) or eps < 0:
        raise ValueError(f"eps must be a finite number >= 0 (nn.LayerNorm's default is 1e-5), got {eps!r}")
