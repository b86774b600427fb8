"""A static GPU report: what the compiler made of each kernel, and what a roofline predicts for it.

No GPU is needed. Each row is one kernel × arch × dtype (× autotune config with all_configs) ×
benchmark shape: registers, shared memory, spill bytes and tensor-core instructions read from the
cubin (Triton: babygpt_ext.kernels.triton.aot), plus the roofline time on a reference GPU,
max(FLOPs / peak FLOP/s, bytes / peak bandwidth), for the shapes of docs/design.md §14.2.

Other backends add rows by providing a module `babygpt_ext.bench.gpu_report_cuda` with
`cuda_rows(all_configs: bool) -> list[Row]` (backend "cuda", read from the extension's cubins with
`cuobjdump -res-usage` / `-sass`); `collect_rows` calls it when it is importable. `predict()` and
`kernel_work()` below give them the same roofline.
"""

import importlib
import importlib.util
import json
from dataclasses import asdict, dataclass, field
from typing import Optional

from .shapes import ATTENTION_SHAPES, LORA_SHAPES, AttnShape, LoraShape


@dataclass(frozen=True)
class Device:
    name: str
    dense_tflops_16bit: float  # fp16/bf16 tensor-core peak, dense
    tflops_fp32: float  # non-tensor-core fp32 peak
    bandwidth_tbs: float


# The predictions use the GPU of each arch: sm_90 rows an H100 SXM, sm_80 rows an A100 SXM.
DEVICES = {90: Device("H100-SXM", 790.0, 67.0, 3.0), 80: Device("A100-SXM", 312.0, 19.5, 2.0)}
ELEMENT_SIZE = {"fp16": 2, "bf16": 2, "fp32": 4}


@dataclass
class Row:
    kernel: str
    backend: str  # "triton" | "cuda" | ...
    arch: int  # 80 | 90
    dtype: str  # "fp16" | "bf16" | "fp32"
    regs: int
    smem: int  # bytes per block
    spill_bytes: int
    tensor_core_instrs: int
    predicted_ms: Optional[float]  # roofline time for `shape` on DEVICES[arch]; None without a shape
    predicted_tflops: Optional[float] = None
    shape: str = ""  # benchmark shape the prediction is for
    head_dim: int = 0  # head dim the kernel was compiled for (attention)
    config: str = ""  # autotune configuration (meta-parameters, warps, stages)
    bound: str = ""  # "compute" | "memory"
    device: str = ""
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ roofline
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
    head dim that holds it; LoRA kernels take every LoRA shape."""
    if kernel.startswith("attn"):
        def owner(d):
            fits = [h for h in sorted(compiled_head_dims) if h >= d]
            return fits[0] if fits else None
        return [s for s in ATTENTION_SHAPES if owner(s.D) == head_dim]
    return list(LORA_SHAPES)


# ----------------------------------------------------------------------------------- rows
def triton_rows(all_configs: bool = False, archs=(80, 90), dtypes=("fp16", "bf16")) -> list:
    """Compile every Triton kernel (2 worker processes) and turn the results into Rows."""
    from ..kernels.triton import aot
    specs = [s for s in aot.default_specs(all_configs) if s.arch in archs and s.dtype in dtypes]
    results = aot.compile_many(specs, workers=2)
    head_dims = {s.head_dim for s in specs if s.head_dim}
    rows = []
    for r in results:
        s = r.spec
        base = dict(kernel=s.kernel, backend="triton", arch=s.arch, dtype=s.dtype, regs=r.regs, smem=r.smem,
                    spill_bytes=r.spill_bytes, tensor_core_instrs=r.tensor_core_instrs, head_dim=s.head_dim,
                    config=_config_text(r), error=r.error,
                    extra={"sass_tensor_ops": r.sass_tensor_ops, "local_mem_instrs": r.local_mem_instrs})
        shapes = shapes_for(s.kernel, s.head_dim, head_dims)
        if not shapes:
            rows.append(Row(**base, predicted_ms=None))
        for shape in shapes:
            ms, tflops, bound, dev = predict(s.kernel, shape, s.dtype, s.arch, s.kernel in aot.USES_TENSOR_CORES)
            rows.append(Row(**base, predicted_ms=ms, predicted_tflops=tflops, shape=shape.name, bound=bound,
                            device=dev))
    return rows


def _config_text(r) -> str:
    meta = {k: v for k, v in r.meta.items() if k.startswith(("BLOCK", "GROUP"))}
    return " ".join(f"{k}={v}" for k, v in meta.items()) + f" w={r.num_warps} s={r.num_stages}"


def collect_rows(all_configs: bool = False, backends=("triton", "cuda")) -> tuple:
    """(rows, notes): Triton rows, plus the CUDA C++ rows when their module is importable."""
    rows, notes = [], []
    if "triton" in backends:
        if importlib.util.find_spec("triton") is None:
            notes.append("triton: not installed, no rows")
        else:
            rows += triton_rows(all_configs)
    if "cuda" in backends:
        try:
            mod = importlib.import_module("babygpt_ext.bench.gpu_report_cuda")
        except ImportError as e:
            notes.append(f"cuda: no rows (babygpt_ext.bench.gpu_report_cuda is not importable: {e})")
        else:
            rows += mod.cuda_rows(all_configs)
    return rows, notes


# --------------------------------------------------------------------------------- output
COLUMNS = (("kernel", "kernel", 20), ("backend", "backend", 7), ("arch", "sm", 3), ("dtype", "dtype", 5),
           ("head_dim", "D", 3), ("regs", "regs", 4), ("smem", "smem B", 6), ("spill_bytes", "spill", 5),
           ("tensor_core_instrs", "tc ops", 6), ("shape", "shape", 22), ("predicted_ms", "pred ms", 8),
           ("predicted_tflops", "TFLOP/s", 7), ("bound", "bound", 7))


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def format_table(rows: list, with_config: bool = False) -> str:
    cols = COLUMNS + ((("config", "config", 30),) if with_config else ())
    lines = ["  ".join(title.ljust(w) for _, title, w in cols)]
    for r in rows:
        d = asdict(r)
        line = "  ".join(_cell(d[k]).ljust(w) for k, _, w in cols)
        lines.append(line + (f"  ERROR {r.error}" if r.error else ""))
    devs = sorted({r.device for r in rows if r.device})
    lines.append(f"predicted: roofline max(FLOPs/peak, bytes/bandwidth) on {', '.join(devs) or '-'} "
                 "(sm_90 rows: H100-SXM 790 TFLOP/s 16-bit dense, 3.0 TB/s; sm_80 rows: A100-SXM 312, 2.0 TB/s)")
    return "\n".join(lines)


def to_json(rows: list) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)
