"""The Triton kernels compile for real GPUs here, without one (docs/design.md §9.2).

Every kernel — fp16 and bf16, D in {64, 128} for attention, every configuration of its autotune
list at the head dims the list keeps it for (configs.head_dims), and for the attention kernels the
same with dropout compiled in where the list keeps it (configs.dropout_dims) — is compiled for sm_80 and sm_90
with triton.compile(ASTSource(...), target=GPUTarget(...)) (babygpt_ext/gpu_report/triton_aot.py),
so whatever the autotuner picks on a GPU has been compiled here. The cubin is read back with
cuobjdump (babygpt_ext/gpu_report/cubin.py). A test fails on any spill (LOCAL or STACK bytes, or STL/LDL
in the SASS) and when a matmul kernel's SASS has no tensor-core instruction (HMMA; HGMMA, wgmma,
on sm_90).

Cost: 150 compiles of ~2-5 s, run by 2 worker subprocesses (the interpreter mode set by conftest
makes @triton.jit kernels uncompilable in this process); Triton's on-disk cache makes reruns take
seconds.
"""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (it comes with CUDA builds of torch)")

if importlib.util.find_spec("triton") is not None:
    from babygpt_ext.gpu_report import cubin, triton_aot as aot
    SPECS = aot.default_specs(all_configs=True)
else:  # collected but skipped
    cubin, aot, SPECS = None, None, []


def _id(s):
    return (f"{s.kernel}-sm{s.arch}-{s.dtype}" + (f"-D{s.head_dim}" if s.head_dim else "") + f"-cfg{s.config_index}"
            + ("-dropout" if s.dropout else ""))


@pytest.fixture(scope="module")
def compiled():
    if cubin.find_cuobjdump() is None:
        pytest.skip("cuobjdump not found (CUDA toolkit bin/, triton's backends/nvidia/bin, or PATH)")
    return {_id(r.spec): r for r in aot.compile_many(SPECS, workers=2)}


@pytest.mark.parametrize("spec", SPECS, ids=_id)
def test_compiles_without_spills_and_with_tensor_cores(compiled, spec):
    r = compiled[_id(spec)]
    assert r.error is None, f"{_id(spec)} failed to compile: {r.error}"
    assert r.regs > 0 and r.regs <= 255
    assert r.spill_bytes == 0 and r.local_mem_instrs == 0, (
        f"{_id(spec)} spills: {r.spill_bytes} B local/stack per thread, {r.local_mem_instrs} STL/LDL "
        f"({r.regs} registers, config {r.meta})")
    if spec.kernel in aot.USES_TENSOR_CORES:
        want = ("HMMA", "HGMMA") if spec.arch >= 90 else ("HMMA",)
        assert any(r.tensor_core_ops.get(op, 0) > 0 for op in want), (
            f"{_id(spec)} has no tensor-core instruction ({' or '.join(want)}) in its SASS: {r.tensor_core_ops}")


def test_inspection_detects_spills_and_tensor_cores():
    """The checks above can fail: a kernel forced to 32 registers must show spills."""
    import subprocess
    import sys
    code = ("import triton\n"
            "from triton.backends.compiler import GPUTarget\n"
            "from babygpt_ext.gpu_report import triton_aot as aot\n"
            "from babygpt_ext.kernels.triton import configs as C\n"
            "fn, fam, build, _ = aot.kernel_table()['attn_fwd']\n"
            "sig, const = build('fp16', 128, fn.arg_names)\n"
            "const.update(C.configs(fam, 80)[0].kwargs)\n"
            "sig.update({n: 'constexpr' for n in const})\n"
            "k = triton.compile(triton.compiler.ASTSource(fn, sig, constexprs=const), target=GPUTarget('cuda', 80, 32),"
            " options={'num_warps': 8, 'num_stages': 2, 'maxnreg': 32})\n"
            "c = aot.inspect_cubin(k.asm['cubin'])\n"
            "assert c.regs <= 32 and c.spill_bytes > 0 and c.local_mem_instrs > 0, c\n"
            "assert c.tensor_core_ops.get('HMMA', 0) > 0, c\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
