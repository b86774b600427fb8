"""Reading cubins with cuobjdump: one locator, one parser of `-res-usage` and `-sass`, one
definition of spill bytes, for the Triton and the CUDA C++ kernels alike.

A file may hold one cubin (a Triton compile) or a fat binary with one cubin per arch (the
extension); every listing is split by its `arch = sm_NN` headers when it has them.
"""

import importlib.util
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

# SASS mnemonics of tensor-core instructions: HMMA is mma.sync (sm_80, sm_90), HGMMA wgmma (sm_90).
TENSOR_CORE_OPS = ("HMMA", "HGMMA", "IMMA", "BMMA", "DMMA")
LOCAL_MEMORY_OPS = ("STL", "LDL")  # where spilled registers go and come back from

_RES = re.compile(r"Function (\S+):\s*\n\s*REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)")
_SASS_FUNCTION = re.compile(r"Function : (\S+)\n(.*?)(?=\n\s*Function : |\Z)", re.S)
_SASS_MNEMONIC = re.compile(r"^\s+/\*[0-9a-f]+\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9_]*)", re.M)


@dataclass
class Kernel:
    """One function of one cubin, as cuobjdump describes it."""
    name: str  # mangled
    arch: Optional[int]  # from the fat binary's header; None for a lone cubin
    regs: int = 0
    stack_bytes: int = 0
    static_smem: int = 0  # __shared__ declared in the code; dynamic shared memory is sized at launch
    local_bytes: int = 0
    tensor_core_ops: dict = field(default_factory=dict)  # mnemonic -> count in the SASS
    local_mem_instrs: int = 0  # STL/LDL in the SASS

    @property
    def spill_bytes(self) -> int:
        """Per-thread bytes of spilled registers. ptxas reports a spill as LOCAL or (seen on a Triton
        kernel with REG:32 STACK:3128 LOCAL:0 and 3839 STL/LDL) as STACK, so both count; the
        STL/LDL count (local_mem_instrs) shows a spill either way."""
        return self.local_bytes + self.stack_bytes

    @property
    def tensor_core_instrs(self) -> int:
        return sum(self.tensor_core_ops.values())


def find_cuobjdump() -> Optional[str]:
    """The CUDA toolkit's cuobjdump, else the copy shipped in triton's wheel, else PATH's."""
    candidates = [Path("/usr/local/cuda/bin/cuobjdump")]
    spec = importlib.util.find_spec("triton")
    if spec and spec.origin:
        candidates.append(Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "cuobjdump")
    for c in candidates:
        if c.exists():
            return str(c)
    return shutil.which("cuobjdump")


def _by_arch(text: str):
    """(arch or None, text) per cubin of a cuobjdump listing."""
    parts = re.split(r"^arch = sm_(\d+)\s*$", text, flags=re.M)
    if len(parts) == 1:
        yield None, text
    for i in range(1, len(parts) - 1, 2):
        yield int(parts[i]), parts[i + 1]


def parse(res_usage: str, sass: str) -> list:
    """Kernels from the outputs of `cuobjdump -res-usage` and `cuobjdump -sass` of one file."""
    found = {}
    for arch, text in _by_arch(res_usage):
        for m in _RES.finditer(text):
            regs, stack, smem, local = (int(g) for g in m.groups()[1:])
            found[(m.group(1), arch)] = Kernel(m.group(1), arch, regs, stack, smem, local)
    for arch, text in _by_arch(sass):
        for fm in _SASS_FUNCTION.finditer(text):
            k = found.get((fm.group(1), arch))
            if k is None:
                continue
            for mnemonic in _SASS_MNEMONIC.findall(fm.group(2)):
                base = mnemonic.split(".")[0]
                if base in TENSOR_CORE_OPS:
                    k.tensor_core_ops[base] = k.tensor_core_ops.get(base, 0) + 1
                k.local_mem_instrs += base in LOCAL_MEMORY_OPS
    return list(found.values())


def read(path: str, cuobjdump: Optional[str] = None) -> list:
    """Every kernel of the cubin or fat binary at `path`."""
    tool = cuobjdump or find_cuobjdump()
    if tool is None:
        raise FileNotFoundError("cuobjdump not found (CUDA toolkit bin/, triton's backends/nvidia/bin, or PATH)")
    run = lambda flag: subprocess.run([tool, flag, path], capture_output=True, text=True, check=True).stdout  # noqa: E731
    return parse(run("-res-usage"), run("-sass"))
