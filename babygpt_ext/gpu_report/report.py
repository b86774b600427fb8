"""A static GPU report: what the compiler made of each kernel, and what a roofline predicts for it.

No GPU is needed. Each row is one kernel × arch × dtype (× autotune config with all_configs) ×
benchmark shape: registers, shared memory, spill bytes and tensor-core instructions read from the
cubin (Triton: triton_aot.py; CUDA C++: cuda.py), plus the roofline time on a reference GPU
(roofline.py) for the benchmark shapes (docs/design.md §14.2).
"""

import importlib.util
import json
from dataclasses import asdict, dataclass, field, replace
from typing import Optional

from .roofline import DEVICES, predict, shapes_for


@dataclass
class Row:
    kernel: str
    backend: str  # "triton" | "cuda"
    arch: int  # 80 | 90
    dtype: str  # "fp16" | "bf16" | "fp32"
    regs: int
    smem: int  # bytes per block
    spill_bytes: int  # cubin.Kernel.spill_bytes: LOCAL + STACK, for both backends
    tensor_core_instrs: int
    predicted_ms: Optional[float]  # roofline time for `shape` on DEVICES[arch]; None without a shape
    predicted_tflops: Optional[float] = None
    shape: str = ""  # benchmark shape the prediction is for
    head_dim: int = 0  # head dim the kernel was compiled for (attention; 0: any)
    config: str = ""  # autotune configuration (Triton) or mangled name (CUDA)
    bound: str = ""  # "compute" | "memory"
    device: str = ""
    error: Optional[str] = None
    extra: dict = field(default_factory=dict)


def _row(compiled, **where) -> Row:
    """A Row without a prediction: `compiled` gives what the compiler made of the kernel (a
    cubin.Kernel or a triton_aot.Result: the same names), `where` which kernel it is."""
    return Row(regs=compiled.regs, spill_bytes=compiled.spill_bytes, tensor_core_instrs=compiled.tensor_core_instrs,
               predicted_ms=None, extra={"sass_tensor_ops": compiled.tensor_core_ops,
                                         "local_mem_instrs": compiled.local_mem_instrs}, **where)


def _with_predictions(row: Row, shapes: list, tensor_cores: bool) -> list:
    """`row` once per shape with its roofline prediction (once, without one, when it has no shape)."""
    rows = []
    for shape in shapes:
        ms, tflops, bound, dev = predict(row.kernel, shape, row.dtype, row.arch, tensor_cores)
        rows.append(replace(row, predicted_ms=ms, predicted_tflops=tflops, shape=shape.name, bound=bound, device=dev))
    return rows or [row]


def triton_rows(all_configs: bool = False, archs=(80, 90), dtypes=("fp16", "bf16")) -> list:
    """Compile every Triton kernel (2 worker processes) and turn the results into Rows."""
    from . import triton_aot
    specs = [s for s in triton_aot.default_specs(all_configs) if s.arch in archs and s.dtype in dtypes]
    results = triton_aot.compile_many(specs, workers=2)
    head_dims = {s.head_dim for s in specs if s.head_dim}
    rows = []
    for r in results:
        s = r.spec
        row = _row(r, kernel=s.kernel, backend="triton", arch=s.arch, dtype=s.dtype, smem=r.smem, head_dim=s.head_dim,
                   config=_config_text(r), error=r.error)
        rows += _with_predictions(row, shapes_for(s.kernel, s.head_dim, head_dims),
                                  s.kernel in triton_aot.USES_TENSOR_CORES)
    return rows


def _config_text(r) -> str:
    meta = {k: v for k, v in r.meta.items() if k.startswith(("BLOCK", "GROUP"))}
    return (" ".join(f"{k}={v}" for k, v in meta.items()) + f" w={r.num_warps} s={r.num_stages}"
            + (" dropout" if r.meta.get("DROPOUT") else ""))


def cuda_rows(kernels: Optional[list] = None) -> list:
    """Rows for every CUDA C++ kernel × arch × dtype of the built extension (or of `kernels`, as
    cuda.read_kernels returns them: reading the cubins takes ~40 s). The CUDA kernels have one tile
    configuration per (dtype, head-dim bucket), so there is nothing like all_configs."""
    from . import cuda
    if kernels is None:
        if (why := cuda.cuda_missing()) is not None:
            return [Row(kernel="(all)", backend="cuda", arch=0, dtype="-", regs=0, smem=0, spill_bytes=0,
                        tensor_core_instrs=0, predicted_ms=None, error=why)]
        kernels = cuda.read_kernels(cuda.extension_path())
    head_dims = {k.head_dim for k in kernels if k.head_dim}
    rows = []
    for k in kernels:
        row = _row(k.cubin, kernel=k.kernel, backend="cuda", arch=k.cubin.arch, dtype=k.dtype, smem=k.smem,
                   head_dim=k.head_dim, config=k.cubin.name)
        rows += _with_predictions(row, shapes_for(k.kernel, k.head_dim, head_dims), k.cubin.tensor_core_instrs > 0)
    return rows


def collect_rows(all_configs: bool = False, backends=("triton", "cuda")) -> tuple:
    """(rows, notes): the Triton rows when triton is installed, and the CUDA C++ rows."""
    rows, notes = [], []
    if "triton" in backends:
        if importlib.util.find_spec("triton") is None:
            notes.append("triton: not installed, no rows")
        else:
            rows += triton_rows(all_configs)
    if "cuda" in backends:
        rows += cuda_rows()
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
    devices = "; ".join(f"sm_{arch} rows: {d.name} {d.dense_tflops_16bit:g} TFLOP/s 16-bit dense, "
                        f"{d.tflops_fp32:g} fp32, {d.bandwidth_tbs:g} TB/s" for arch, d in sorted(DEVICES.items()))
    lines.append(f"predicted: roofline max(FLOPs/peak, bytes/bandwidth) ({devices})")
    return "\n".join(lines)


def to_json(rows: list) -> str:
    return json.dumps([asdict(r) for r in rows], indent=1)
