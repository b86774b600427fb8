"""Rows of `babygpt gpu-report` for the CUDA C++ kernels (csrc/cuda), read from the built extension.

No GPU and no recompilation: the kernels are already in babygpt_ext/_C*.so as cubins for every
arch of TORCH_CUDA_ARCH_LIST. `cuobjdump -res-usage` gives registers and local memory (spills;
the kernels use no other local memory) and `cuobjdump -sass` the instructions, of which we count
the tensor-core ones (HMMA on sm_80, HMMA/HGMMA on sm_90). Shared memory is dynamic (sized at
launch from D), so it is computed with the same formulas as csrc/cuda/launchers.cuh for the largest
D of each compiled head-dim bucket; tests/test_cuda_emu.py checks those formulas against the C++.
"""

import importlib.util
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# mangled kernel name -> the kernel names of gpu_report.kernel_work
KERNELS = {
    "attn_fwd_kernel": "attn_fwd",
    "attn_delta_kernel": "attn_bwd_preprocess",
    "attn_dq_kernel": "attn_bwd_dq",
    "attn_dkdv_kernel": "attn_bwd_dkdv",
    "gemm_kernel": "lora_matmul",
    "colsum_kernel": "lora_colsum",
}
DTYPES = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}
ELEMENT_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2}
TENSOR_CORE = re.compile(r"\b(HMMA|HGMMA|IMMA|BMMA|DMMA)\b")
_MANGLED = re.compile(r"_ZN7babygpt4cuda\d+(\w+?)I(f|6__half|13__nv_bfloat16)(?:Li(\d+)E)?E")


@dataclass
class CudaKernel:
    """One kernel instance of one arch, as the cubin describes it."""
    mangled: str
    kernel: str  # gpu_report name, e.g. "attn_fwd"
    arch: int
    dtype: str
    head_dim: int  # DMAX bucket (attention), 0 otherwise
    regs: int = 0
    local_bytes: int = 0  # spills (LOCAL in -res-usage)
    stack_bytes: int = 0
    smem: int = 0
    tensor_core_instrs: int = 0
    sass_ops: dict = field(default_factory=dict)


def find_cuobjdump() -> Optional[str]:
    """The toolkit's cuobjdump, else the copy shipped in triton's wheel, else PATH's."""
    cands = [Path("/usr/local/cuda/bin/cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        cands.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for c in cands:
        if c.exists():
            return str(c)
    return shutil.which("cuobjdump")


def extension_path(module: str = "babygpt_ext._C") -> Optional[str]:
    """The built extension; BABYGPT_CUDA_SO names another build of it to inspect instead (e.g. one
    built out of tree with `setup.py build_ext --build-lib DIR`)."""
    if os.environ.get("BABYGPT_CUDA_SO"):
        return os.environ["BABYGPT_CUDA_SO"]
    spec = importlib.util.find_spec(module)
    return spec.origin if spec and spec.origin else None


def parse_name(mangled: str):
    """(kernel, dtype, head_dim) of a babygpt::cuda kernel, or None for anything else."""
    m = _MANGLED.match(mangled)
    if not m or m.group(1) not in KERNELS:
        return None
    return KERNELS[m.group(1)], DTYPES[m.group(2)], int(m.group(3) or 0)


# ------------------------------------------------------------------ shared memory (bytes)
def _round_up(a: int, b: int) -> int:
    return (a + b - 1) // b * b


def smem_bytes(kernel: str, dtype: str, d: int) -> int:
    """Dynamic shared memory of a launch at head dim d (mirrors csrc/cuda: AttnTiles, DkDvTiles,
    GemmTiles). d picks the bucket DMAX = 64 | 128 | 256."""
    es = ELEMENT_SIZE[dtype]
    dmax = 64 if d <= 64 else 128 if d <= 128 else 256
    pad = 16 // es
    ld = _round_up(d, 16) + pad
    if kernel in ("attn_fwd", "attn_bwd_dq"):
        bm, bn = (32 if es == 4 and dmax > 128 else 64), (32 if es == 4 or dmax > 128 else 64)
        q_tiles = 1 if kernel == "attn_fwd" else 2
        return es * ((q_tiles * bm + 2 * bn) * ld + bm * (bn + pad))
    if kernel == "attn_bwd_dkdv":
        bnk, bmq = (32 if es == 4 and dmax > 128 else 64), 32
        return 2 * bmq * 4 + es * ((2 * bnk + 2 * bmq) * ld + 2 * bnk * (bmq + pad))
    if kernel == "lora_matmul":
        return es * (64 * (32 + pad) + 32 * (64 + pad))
    return 0


# ------------------------------------------------------------------------------ cuobjdump
def _arch_sections(text: str):
    """(arch, section text) per cubin of a cuobjdump listing."""
    parts = re.split(r"^arch = sm_(\d+)\s*$", text, flags=re.M)
    for i in range(1, len(parts) - 1, 2):
        yield int(parts[i]), parts[i + 1]


def read_kernels(so_path: str, cuobjdump: str) -> list:
    """Every babygpt::cuda kernel in the extension, per arch, with resources and SASS counts."""
    run = lambda flag: subprocess.run([cuobjdump, flag, so_path], capture_output=True, text=True, check=True).stdout
    found = {}
    for arch, sec in _arch_sections(run("-res-usage")):
        for m in re.finditer(r"Function (\S+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+) LOCAL:(\d+)", sec):
            parsed = parse_name(m.group(1))
            if parsed is None:
                continue
            kernel, dtype, hd = parsed
            found[(m.group(1), arch)] = CudaKernel(
                m.group(1), kernel, arch, dtype, hd, regs=int(m.group(2)), stack_bytes=int(m.group(3)),
                local_bytes=int(m.group(5)),
                smem=int(m.group(4)) + smem_bytes(kernel, dtype, hd or 64))
    for arch, sec in _arch_sections(run("-sass")):
        for fm in re.finditer(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", sec, flags=re.S):
            k = found.get((fm.group(1), arch))
            if k is None:
                continue
            ops = {}
            for op in TENSOR_CORE.findall(fm.group(2)):
                ops[op] = ops.get(op, 0) + 1
            k.sass_ops = ops
            k.tensor_core_instrs = sum(ops.values())
    return sorted(found.values(), key=lambda k: (k.kernel, k.arch, k.dtype, k.head_dim))


def cuda_missing() -> Optional[str]:
    """Why there are no CUDA rows here, or None."""
    so = extension_path()
    if so is None or not os.path.exists(so):
        return f"babygpt_ext._C is not built ({so or 'not found'})"
    if not os.environ.get("BABYGPT_CUDA_SO"):
        from babygpt_ext._C import build_info
        if not build_info().get("cuda"):
            return ("babygpt_ext._C was built without CUDA (no torch CUDA build, no nvcc, or BABYGPT_EXT_CUDA=0 "
                    "at build time)")
    if find_cuobjdump() is None:
        return "cuobjdump not found (CUDA toolkit bin/ or triton's backends/nvidia/bin)"
    return None


def cuda_rows(all_configs: bool = False) -> list:
    """gpu_report Rows for every CUDA kernel × arch × dtype (× benchmark shape for attention/LoRA).

    all_configs is accepted for symmetry with the Triton rows; the CUDA kernels have one tile
    configuration per (dtype, head-dim bucket), so it changes nothing."""
    from .gpu_report import Row, predict, shapes_for
    if (why := cuda_missing()) is not None:
        return [Row(kernel="(all)", backend="cuda", arch=0, dtype="-", regs=0, smem=0, spill_bytes=0,
                    tensor_core_instrs=0, predicted_ms=None, error=why)]
    kernels = read_kernels(extension_path(), find_cuobjdump())
    head_dims = {k.head_dim for k in kernels if k.head_dim}
    rows = []
    for k in kernels:
        base = dict(kernel=k.kernel, backend="cuda", arch=k.arch, dtype=k.dtype, regs=k.regs, smem=k.smem,
                    spill_bytes=k.local_bytes, tensor_core_instrs=k.tensor_core_instrs, head_dim=k.head_dim,
                    config=k.mangled, extra={"sass_tensor_ops": k.sass_ops, "stack_bytes": k.stack_bytes})
        shapes = shapes_for(k.kernel, k.head_dim, head_dims)
        if k.kernel == "attn_bwd_preprocess":
            shapes = shapes_for("attn_fwd", 64, {64})  # one delta kernel for every D
        if not shapes:
            rows.append(Row(**base, predicted_ms=None))
        for shape in shapes:
            ms, tflops, bound, dev = predict(k.kernel, shape, k.dtype, k.arch, k.tensor_core_instrs > 0)
            rows.append(Row(**base, predicted_ms=ms, predicted_tflops=tflops, shape=shape.name, bound=bound,
                            device=dev))
    return rows
