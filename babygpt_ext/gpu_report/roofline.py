"""What a roofline predicts for one kernel launch: max(FLOPs / peak FLOP/s, bytes / peak bandwidth)
on the reference GPU of its arch, for the benchmark shapes of docs/design.md §14.2."""

from dataclasses import dataclass

from ..bench.shapes import ATTENTION_SHAPES, LORA_SHAPES, AttnShape, LoraShape


@dataclass(frozen=True)
class Device:
    name: str
    dense_tflops_16bit: float  # fp16/bf16 tensor-core peak, dense
    tflops_fp32: float  # non-tensor-core fp32 peak
    bandwidth_tbs: float


# The predictions use the GPU of each arch: sm_90 rows an H100 SXM, sm_80 rows an A100 SXM.
DEVICES = {90: Device("H100-SXM", 790.0, 67.0, 3.0), 80: Device("A100-SXM", 312.0, 19.5, 2.0)}
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4}


def kernel_work(kernel: str, shape, element_size: int) -> tuple:
    """(FLOPs, bytes) one launch of `kernel` does on `shape` (causal attention).

    FLOPs are what the kernel executes: forward 2 matmuls (4·B·H·T²·D, halved by causality); the
    dK/dV kernel recomputes S and does 4 matmuls (2× forward), the dQ kernel 3 (1.5× forward) — 3.5×
    in total against the nominal 2.5× of docs/design.md §14.3, the price of the atomics-free split.
    Bytes: every input read once and every output written once."""
    if isinstance(shape, AttnShape):
        fwd = shape.flops(causal=True)
        q = shape.B * shape.H * shape.T * shape.D * element_size  # q, o, dq, dO: one such tensor
        kv = shape.B * shape.kv_heads * shape.T * shape.D * element_size
        row = shape.B * shape.H * shape.T * 4  # lse or delta (float32)
        return {
            "attn_fwd": (fwd, 2 * q + 2 * kv + row),
            "attn_bwd_preprocess": (2.0 * shape.B * shape.H * shape.T * shape.D, 2 * q + row),
            "attn_bwd_dkdv": (2.0 * fwd, 2 * q + 4 * kv + 2 * row),
            "attn_bwd_dq": (1.5 * fwd, 3 * q + 2 * kv + 2 * row),
        }[kernel]
    if isinstance(shape, LoraShape):
        n, i, o, r = shape.N, shape.d_in, shape.d_out, shape.r
        return {
            # y = x Wᵀ + b + s·xa Bᵀ (the xa launch, 2·N·r·in FLOPs, is the same kernel, included)
            "lora_matmul": (shape.flops(), element_size * (n * i + o * i + r * i + o * r + o + n * o) + 4 * n * r),
            "lora_colsum": (float(n * o), element_size * (n * o + o)),
        }[kernel]
    raise TypeError(f"unknown shape {shape!r}")


def predict(kernel: str, shape, dtype: str, arch: int, tensor_cores: bool = True) -> tuple:
    """(ms, TFLOP/s, bound, device) of the roofline max(FLOPs / peak, bytes / bandwidth)."""
    dev = DEVICES[arch]
    flops, nbytes = kernel_work(kernel, shape, ELEMENT_SIZE[dtype])
    peak = dev.dense_tflops_16bit if (tensor_cores and dtype != "fp32") else dev.tflops_fp32
    t_compute, t_memory = flops / (peak * 1e12), nbytes / (dev.bandwidth_tbs * 1e12)
    t = max(t_compute, t_memory)
    return t * 1e3, flops / t / 1e12, "compute" if t_compute >= t_memory else "memory", dev.name


def shapes_for(kernel: str, head_dim: int, compiled_head_dims) -> list:
    """The benchmark shapes a compiled variant predicts: each attention shape goes to the smallest compiled
    head dim that holds it (a kernel compiled for every head dim, head_dim 0, takes them all); LoRA
    kernels take every LoRA shape."""
    if not kernel.startswith("attn"):
        return list(LORA_SHAPES)
    if not head_dim:
        return list(ATTENTION_SHAPES)

    def owner(d):
        fits = [h for h in sorted(compiled_head_dims) if h >= d]
        return fits[0] if fits else None
    return [s for s in ATTENTION_SHAPES if owner(s.D) == head_dim]
