"""The CUDA C++ kernels (csrc/cuda) as compiled into the built extension babygpt_ext._C.

No GPU and no recompilation: the kernels are already in babygpt_ext/_C*.so as cubins for every
arch of TORCH_CUDA_ARCH_LIST; cubin.py reads their registers, spills and tensor-core instructions.
Their shared memory is dynamic, sized at launch from D by the layouts of csrc/cuda/layout.h, which
the extension exports through build_info()["cuda_smem_bytes"] for the largest D of each head-dim
bucket: the report shows the bytes the launcher asks for, from the same constexpr description.
"""

import importlib.util
import os
import re
from dataclasses import dataclass
from typing import Optional

from . import cubin

# C++ kernel name -> the kernel names of roofline.kernel_work
KERNELS = {
    "attn_fwd_kernel": "attn_fwd",
    "attn_delta_kernel": "attn_bwd_preprocess",
    "attn_dq_kernel": "attn_bwd_dq",
    "attn_dkdv_kernel": "attn_bwd_dkdv",
    "gemm_kernel": "lora_matmul",
    "colsum_kernel": "lora_colsum",
}
DTYPES = {"f": "fp32", "6__half": "fp16", "13__nv_bfloat16": "bf16"}
_MANGLED = re.compile(r"_ZN7babygpt4cuda\d+(\w+?)I(f|6__half|13__nv_bfloat16)(?:Li(\d+)E)?E")


@dataclass
class CudaKernel:
    """One kernel instance of one arch."""
    cubin: cubin.Kernel
    kernel: str  # roofline name, e.g. "attn_fwd"
    cxx_name: str  # e.g. "attn_fwd_kernel"
    dtype: str
    head_dim: int  # DMAX bucket (attention), 0 otherwise
    smem: int  # static + dynamic shared memory of a launch at D = head_dim, bytes


def extension_path(module: str = "babygpt_ext._C") -> Optional[str]:
    """The built extension; BABYGPT_CUDA_SO names another build of it to inspect instead (e.g. one
    built out of tree with `setup.py build_ext --build-lib DIR`)."""
    if os.environ.get("BABYGPT_CUDA_SO"):
        return os.environ["BABYGPT_CUDA_SO"]
    spec = importlib.util.find_spec(module)
    return spec.origin if spec and spec.origin else None


def parse_name(mangled: str):
    """(C++ kernel name, dtype, head_dim) of a babygpt::cuda kernel, or None for anything else."""
    m = _MANGLED.match(mangled)
    if not m or m.group(1) not in KERNELS:
        return None
    return m.group(1), DTYPES[m.group(2)], int(m.group(3) or 0)


def dynamic_smem_table() -> dict:
    """(C++ kernel name, dtype, head-dim bucket or 0) -> dynamic shared memory bytes of a launch at
    the bucket's largest D, as the imported extension's layouts compute it."""
    from babygpt_ext._C import build_info
    return {(k, dt, d): n for k, per_dtype in build_info()["cuda_smem_bytes"].items()
            for dt, per_d in per_dtype.items() for d, n in per_d.items()}


def read_kernels(so_path: str, cuobjdump: Optional[str] = None) -> list:
    """Every babygpt::cuda kernel in the extension, per arch."""
    dyn = dynamic_smem_table()
    found = []
    for k in cubin.read(so_path, cuobjdump):
        parsed = parse_name(k.name)
        if parsed is None:
            continue
        name, dtype, hd = parsed
        found.append(CudaKernel(k, KERNELS[name], name, dtype, hd, k.static_smem + dyn.get((name, dtype, hd), 0)))
    return sorted(found, key=lambda c: (c.kernel, c.cubin.arch, c.dtype, c.head_dim))


def cuda_missing() -> Optional[str]:
    """Why there are no CUDA kernels to read here, or None."""
    so = extension_path()
    if so is None or not os.path.exists(so):
        return f"babygpt_ext._C is not built ({so or 'not found'})"
    if not os.environ.get("BABYGPT_CUDA_SO"):
        from babygpt_ext._C import build_info
        if not build_info().get("cuda"):
            return ("babygpt_ext._C was built without CUDA (no torch CUDA build, no nvcc, or BABYGPT_EXT_CUDA=0 "
                    "at build time)")
    if cubin.find_cuobjdump() is None:
        return "cuobjdump not found (CUDA toolkit bin/, triton's backends/nvidia/bin, or PATH)"
    return None
