"""Run the ops on every chosen backend for one shape and report times, ratios and errors.

The backend name AUTO is the engine's own choice (backend=None): its first call measures the
candidates (outside the timed rounds), so its row shows what a user gets once the key is decided.
"""

from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

from .. import ops
from ..ops.qkv_attention_op import merge_heads, split_heads
from ..ops.spec import Call
from .shapes import AttnShape, LoraShape
from .timing import time_interleaved

# Backends that exist to *test* kernels on a CPU (the Triton interpreter, the CUDA emulator):
# timing them measures the emulation, not the kernel, so they are never benchmarked on the CPU.
TEST_ONLY_ON_CPU = ("triton", "cuda_emu")
AUTO = "auto"
# The peer, and every attention row's baseline: F.scaled_dot_product_attention called directly, as
# a user writes it (our `sdpa` backend adds the NaN-propagation pass of the op contract, which costs
# more than the attention itself at small shapes, so timing against it would flatter the kernels).
PEER = "torch-sdpa"


@dataclass
class Result:
    op: str
    shape: str
    backend: str
    mode: str  # "fwd" | "fwd+bwd"
    dtype: str
    ms: float
    tflops: float
    speedup: float  # baseline time / this time (>1: faster than the baseline)
    baseline: str
    max_err: float  # vs the eager backend in the same dtype
    peak_mb: Optional[float]
    runs: str = ""  # the backend that ran: the row's own, or for AUTO the engine's choice
    layout: str = "contig"  # attention inputs: contiguous (B, H, T, D) tensors, or a GPT layer's views

    def as_dict(self) -> dict:
        return asdict(self)


def bench_backends(device: str, op: str) -> List[str]:
    """The backends worth timing for `op` on `device`, then AUTO."""
    return [n for n in ops.available_backends(device, op=op) if not (device == "cpu" and n in TEST_ONLY_ON_CPU)] + [AUTO]


def runnable(backends: List[str], op: str, device: str, dtype: torch.dtype, head_dim: int = 0) -> tuple:
    """(the backends that can run this kind of call, [why each other one is left out]). Unknown names
    raise ValueError listing the known ones."""
    call = Call(op, device, dtype, head_dim)
    kept, notes = [], []
    for name in backends:
        why = None if name == AUTO else ops.registry.get(name).refuses(call)
        if why is None:
            kept.append(name)
        else:
            notes.append(f"{name} left out of the {op} table: {why}")
    return kept, notes


def gemm_ceiling_tflops(device: str, dtype: torch.dtype, n: int = 2048) -> float:
    """The machine's own matmul throughput in `dtype` (torch.mm n x n, median of 5), the ceiling
    each row's TFLOP/s is read against. A dtype the hardware has no units for is computed in
    float32 by the kernels here, so its ceiling is the faster of its GEMM and float32's; a 512²
    probe first keeps such a GEMM from taking minutes (bf16 2048² on AVX2 only: AMD Zen 1)."""
    def rate(dt, m):
        a, b = torch.randn(m, m, device=device, dtype=dt), torch.randn(m, m, device=device, dtype=dt)
        times = time_interleaved({"mm": lambda: torch.mm(a, b)}, device, rounds=5)
        return 2 * m ** 3 / times["mm"] / 1e12

    def ceiling(dt):
        probe = rate(dt, 512)
        return probe if probe < 0.01 else rate(dt, n)
    own = ceiling(dtype)
    return own if dtype == torch.float32 or device != "cpu" else max(own, ceiling(torch.float32))


def backend_arg(name: str):
    """The `backend=` argument of a row's name: None (the engine's choice) for AUTO."""
    return None if name == AUTO else name


def _callables(make_inputs, run, backends, backward: bool):
    """One zero-argument step per backend on shared inputs, and each backend's output (for errors)."""
    inputs = make_inputs()
    grad = torch.randn_like(run(backends[0], *inputs)) if backward else None
    fns, outs = {}, {}
    for name in backends:
        def step(name=name):
            out = run(name, *inputs)
            if backward:
                out.backward(grad)
            return out
        outs[name] = run(name, *inputs).detach().float()
        fns[name] = step
    return fns, outs, inputs


def _peak_mb(device: str, fn) -> Optional[float]:
    if device != "cuda":
        return None
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() / 2**20


def _results(op, shape_name, mode, dtype, fns, outs, times, flops, device, auto_runs: str) -> List[Result]:
    baseline = next((b for b in (PEER, "sdpa", "eager") if b in times), next(iter(times)))
    ref = outs.get("eager", outs[baseline])
    return [Result(op, shape_name, name, mode, str(dtype).replace("torch.", ""), t * 1e3, flops / t / 1e12,
                   times[baseline] / t, baseline, (outs[name] - ref).abs().max().item(), _peak_mb(device, fns[name]),
                   auto_runs if name == AUTO else name)
            for name, t in times.items()]


LAYOUTS = ("contig", "gpt")


def attention_call(name: str, layout: str, H: int, Hkv: int, causal: bool = True):
    """What the row `name` runs for one attention call in the layout, as each side is called in a
    model. contig: (q, k, v) -> o, the peer raw SDPA, ours causal_attention. gpt: (qkv,) -> (B, T, H·D),
    the peer split -> SDPA -> merge (nanoGPT's code), ours qkv_attention."""
    def sdpa(q, k, v):  # Tq == Tk here, so SDPA's top-left causal mask is the contract's
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=k.shape[1] != q.shape[1])

    if layout == "gpt":
        if name == PEER:
            return lambda qkv: merge_heads(sdpa(*split_heads(qkv, H, Hkv)))
        return lambda qkv: ops.qkv_attention(qkv, H, Hkv, causal=causal, backend=backend_arg(name))
    if name == PEER:
        return sdpa
    return lambda q, k, v: ops.causal_attention(q, k, v, causal=causal, backend=backend_arg(name))


def bench_attention(shape: AttnShape, backends: List[str], device: str, dtype: torch.dtype, backward: bool,
                    causal: bool = True, rounds: int = 7, layout: str = "contig") -> List[Result]:
    """contig: q, k, v contiguous (B, heads, T, D) tensors into causal_attention (the peer: SDPA).
    gpt: a GPT layer's attention from its fused projection qkv (B, T, (H + 2·Hkv)·D) to (B, T, H·D),
    as each side is called in a model: the peer splits, transposes, runs SDPA and merges the heads
    (nanoGPT's code), ours is qkv_attention."""
    if layout not in LAYOUTS:
        raise ValueError(f"bench_attention: layout must be one of {LAYOUTS}, got {layout!r}")
    H, Hkv = shape.H, shape.kv_heads

    def make():
        g = torch.Generator().manual_seed(0)
        if layout == "gpt":
            qkv = torch.randn(shape.B, shape.T, (H + 2 * Hkv) * shape.D, generator=g)
            return (qkv.to(device, dtype).requires_grad_(backward),)
        mk = lambda h: torch.randn(shape.B, h, shape.T, shape.D, generator=g).to(device, dtype).requires_grad_(backward)
        return mk(H), mk(Hkv), mk(Hkv)

    def run(name, *inputs):
        return attention_call(name, layout, H, Hkv, causal)(*inputs)

    fns, outs, inputs = _callables(make, run, [PEER, *backends], backward)
    times = time_interleaved(fns, device, rounds=rounds)
    auto_runs = ""
    if AUTO in backends:
        auto_runs = (ops.explain_qkv(inputs[0], H, Hkv, causal=causal) if layout == "gpt"
                     else ops.explain(*inputs, causal=causal)).backend
    rows = _results("attention", shape.name, "fwd+bwd" if backward else "fwd", dtype, fns, outs, times,
                    shape.flops(causal, backward), device, auto_runs)
    for r in rows:
        r.layout = layout
    return rows


def bench_lora(shape: LoraShape, backends: List[str], device: str, dtype: torch.dtype, backward: bool,
               rounds: int = 7) -> List[Result]:
    def make():
        g = torch.Generator().manual_seed(0)
        mk = lambda *s, grad=backward: (torch.randn(*s, generator=g) * 0.1).to(device, dtype).requires_grad_(grad)
        # The frozen base (weight, bias) takes no gradient, as in LoRA fine-tuning.
        return (mk(shape.N, shape.d_in), mk(shape.d_out, shape.d_in, grad=False), mk(shape.d_out, grad=False),
                mk(shape.r, shape.d_in), mk(shape.d_out, shape.r))

    def run(name, x, w, b, a, bm):
        return ops.lora_linear(x, w, b, a, bm, 2.0, backend=backend_arg(name))

    fns, outs, inputs = _callables(make, run, backends, backward)
    times = time_interleaved(fns, device, rounds=rounds)
    auto_runs = ops.explain_lora(*inputs, 2.0).backend if AUTO in backends else ""
    return _results("lora", shape.name, "fwd+bwd" if backward else "fwd", dtype, fns, outs, times,
                    shape.flops(backward), device, auto_runs)
