"""Build babygpt_ext._C (and, on request, babygpt_ext._C_emu) against the installed torch.

Switches (environment variables):
  BABYGPT_EXT_CUDA=auto|0|1   CUDA sources: auto = when torch has CUDA and nvcc is found (default)
  TORCH_CUDA_ARCH_LIST        GPU architectures to compile for (default "8.0;9.0")
  MAX_JOBS                    parallel compile jobs (ninja)
  BABYGPT_EXT_EMU=1           also build _C_emu: the csrc/cuda kernels run on the CPU via csrc/emu
  CUDA_HOME                   the toolkit to use (found automatically otherwise, see find_cuda_home)

Install with `pip install --no-build-isolation .` after torch is installed.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent.resolve()
CSRC = ROOT / "csrc"


def fail(msg: str) -> "None":
    sys.exit(f"\nbabygpt_ext build error: {msg}\n")


def is_toolkit(path: Path) -> bool:
    return (path / "bin" / "nvcc").exists() and (path / "include" / "cuda_runtime.h").exists()


def find_cuda_home() -> "Path | None":
    """The CUDA toolkit directory, or None.

    torch's own lookup takes `dirname(dirname(which nvcc))`, which is wrong when `nvcc` on PATH is a
    wrapper script (here /usr/local/bin/nvcc execs /usr/local/cuda-13.0/bin/nvcc): it would yield
    /usr/local. So we only accept a directory that really holds bin/nvcc and include/cuda_runtime.h,
    and read the wrapper's target when PATH's nvcc is a script.
    """
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = Path(nvcc).resolve()
        candidates.append(str(real.parent.parent))
        try:  # a small shell wrapper: look for the absolute nvcc path it execs
            text = real.read_text(errors="ignore")[:4096]
            for m in re.finditer(r"(/\S+)/bin/nvcc\b", text):
                candidates.append(m.group(1))
        except OSError:
            pass
    candidates += ["/usr/local/cuda", *sorted(map(str, Path("/usr/local").glob("cuda-*")), reverse=True)]
    for c in candidates:
        if c and is_toolkit(Path(c)):
            return Path(c).resolve()
    return None


def nvcc_version(cuda_home: Path) -> str:
    out = subprocess.run([str(cuda_home / "bin" / "nvcc"), "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    if not m:
        fail(f"could not read the version of {cuda_home / 'bin' / 'nvcc'} (output: {out!r})")
    return m.group(1)


def want_cuda(torch_cuda: "str | None") -> "Path | None":
    mode = os.environ.get("BABYGPT_EXT_CUDA", "auto").lower()
    if mode not in ("auto", "0", "1"):
        fail(f"BABYGPT_EXT_CUDA must be auto, 0 or 1, got {mode!r}")
    if mode == "0":
        return None
    cuda_home = find_cuda_home()
    if torch_cuda is None or cuda_home is None:
        if mode == "1":
            why = "this torch is a CPU-only build" if torch_cuda is None else "no CUDA toolkit (bin/nvcc) was found"
            fail(f"BABYGPT_EXT_CUDA=1 but {why}. Install a CUDA build of torch and the CUDA toolkit, "
                 "set CUDA_HOME, or build without CUDA (BABYGPT_EXT_CUDA=0).")
        return None
    have = nvcc_version(cuda_home)
    if have.split(".")[0] != torch_cuda.split(".")[0]:
        fail(f"nvcc {have} (at {cuda_home}) and torch's CUDA {torch_cuda} differ in their major version, "
             "and an extension built that way will not load. Fix: point CUDA_HOME at a CUDA "
             f"{torch_cuda.split('.')[0]}.x toolkit, or install the torch build for CUDA {have.split('.')[0]}, "
             "or build the CPU-only extension with BABYGPT_EXT_CUDA=0.")
    return cuda_home


def import_torch():
    """torch, or a stop that says how to install: the extension compiles against the torch it will
    run with, which pip's default isolated build environment does not have."""
    try:
        import torch
    except ModuleNotFoundError:
        fail("torch is not importable here, and babygpt_ext compiles against the installed torch. "
             "Install torch first, then build without pip's isolated environment (which has no torch):\n"
             "    pip install torch\n"
             "    pip install --no-build-isolation .")
    return torch


def extensions():
    torch = import_torch()
    cuda_home = want_cuda(torch.version.cuda)
    if cuda_home is not None:
        # Must be set before torch.utils.cpp_extension is imported: it reads CUDA_HOME once.
        os.environ["CUDA_HOME"] = str(cuda_home)
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension

    # -fopenmp: at::parallel_for is a header template whose `omp parallel` pragma is compiled into
    # this extension; without the flag every parallel_for here silently runs on one thread. The
    # GOMP symbols bind to the libgomp.so.1 torch already loaded (same soname), so one thread pool.
    cxx = ["-O3", "-std=c++20", "-fvisibility=hidden", "-fopenmp"]
    sources = [str(p.relative_to(ROOT)) for p in [CSRC / "ops.cpp", *sorted((CSRC / "cpu").glob("*.cpp"))]]
    macros = []
    if cuda_home is not None:
        archs = os.environ["TORCH_CUDA_ARCH_LIST"]
        # The launchers, the glue and one translation unit per attention instance (csrc/cuda/instances.h),
        # so that ninja compiles the kernels in parallel.
        cuda_sources = [*sorted((CSRC / "cuda").glob("*.cu")), *sorted((CSRC / "cuda" / "instances").glob("*.cu"))]
        sources += [str(p.relative_to(ROOT)) for p in cuda_sources]
        macros += [("BABYGPT_WITH_CUDA", None), ("BABYGPT_CUDA_ARCHS", f'"{archs}"'),
                   ("BABYGPT_NVCC_VERSION", f'"{nvcc_version(cuda_home)}"')]
        nvcc = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo", "-Xptxas=-v,-warn-spills"]
        ext = CUDAExtension("babygpt_ext._C", sources, define_macros=macros,
                            extra_compile_args={"cxx": cxx, "nvcc": nvcc})
    else:
        ext = CppExtension("babygpt_ext._C", sources, define_macros=macros, extra_compile_args={"cxx": cxx})
    exts = [ext]

    if os.environ.get("BABYGPT_EXT_EMU", "0") == "1":
        emu_home = cuda_home or find_cuda_home()
        if emu_home is None:
            fail("BABYGPT_EXT_EMU=1 needs the CUDA toolkit's headers (cuda_fp16.h, vector_types.h); "
                 "none was found. Set CUDA_HOME.")
        # The csrc/cuda kernels compiled by g++: csrc/cuda/portable.cuh includes the emulator
        # (csrc/emu/cudaemu.h) in place of the CUDA runtime, the toolkit gives the types.
        exts.append(CppExtension(
            "babygpt_ext._C_emu", [str((CSRC / "cuda" / "ops_emu.cpp").relative_to(ROOT))],
            include_dirs=[str(emu_home / "include"), str(CSRC / "emu")],
            extra_compile_args={"cxx": ["-O2", "-std=c++20", "-fvisibility=hidden"]}))
    return exts, BuildExtension.with_options(use_ninja=True)


if __name__ == "__main__":  # pip's build backend runs this file as __main__; tests import it
    ext_modules, build_ext = extensions()
    setup(ext_modules=ext_modules, cmdclass={"build_ext": build_ext})
