"""The CUDA C++ kernels as compiled into babygpt_ext._C for real GPUs (sm_80, sm_90), read back from
the extension's cubins with cuobjdump: every kernel instance is present for every built arch, none
spills, the fp16/bf16 matmul kernels use tensor cores (HMMA) and the fp32 ones do not (plain FMA,
no TF32), and every launch fits sm_80's shared memory. No GPU needed; skipped, with the reason,
when the extension was built without CUDA or cuobjdump is missing. BABYGPT_CUDA_SO=path inspects
another build of _C (e.g. an out-of-tree `setup.py build_ext --build-lib DIR`)."""

import pytest

from babygpt_ext.gpu_report import cuda as gr
from babygpt_ext.gpu_report import report

MISSING = gr.cuda_missing()
pytestmark = pytest.mark.skipif(MISSING is not None,
                                reason=f"no CUDA kernels to inspect: {MISSING}")

# Instances per arch: attention fwd, dQ and dK/dV for 3 dtypes x 3 head-dim buckets, and the delta,
# LoRA GEMM and column-sum kernels for 3 dtypes (csrc/cuda/launchers.cuh).
EXPECTED = {(k, dt, hd) for k in ("attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv")
            for dt in ("fp32", "fp16", "bf16") for hd in (64, 128, 256)}
EXPECTED |= {(k, dt, 0) for k in ("attn_bwd_preprocess", "lora_matmul", "lora_colsum") for dt in ("fp32", "fp16", "bf16")}
MATMUL_KERNELS = {"attn_fwd", "attn_bwd_dq", "attn_bwd_dkdv", "lora_matmul"}
SM80_MAX_SMEM = 166912  # bytes per block with the opt-in (cudaFuncAttributeMaxDynamicSharedMemorySize)


@pytest.fixture(scope="module")
def kernels():
    return gr.read_kernels(gr.extension_path())


def test_every_kernel_is_built_for_every_arch(kernels):
    archs = sorted({k.cubin.arch for k in kernels})
    assert archs, "no babygpt::cuda kernel in the extension's cubins"
    for arch in archs:
        have = {(k.kernel, k.dtype, k.head_dim) for k in kernels if k.cubin.arch == arch}
        assert have == EXPECTED, f"sm_{arch}: missing {sorted(EXPECTED - have)}, unexpected {sorted(have - EXPECTED)}"


def test_no_kernel_spills(kernels):
    spilled = [f"{k.kernel} sm_{k.cubin.arch} {k.dtype} D{k.head_dim}: {k.cubin.spill_bytes} B local+stack, "
               f"{k.cubin.local_mem_instrs} STL/LDL, {k.cubin.regs} regs"
               for k in kernels if k.cubin.spill_bytes or k.cubin.local_mem_instrs]
    assert not spilled, "register spills:\n" + "\n".join(spilled)


def test_16bit_matmuls_use_tensor_cores_and_fp32_does_not(kernels):
    for k in kernels:
        ops = k.cubin.tensor_core_ops
        what = f"{k.kernel} sm_{k.cubin.arch} {k.dtype} D{k.head_dim} ({ops})"
        if k.kernel in MATMUL_KERNELS and k.dtype in ("fp16", "bf16"):
            assert ops.get("HMMA", 0) + ops.get("HGMMA", 0) > 0, f"no tensor-core instruction in {what}"
        else:
            assert not ops, f"unexpected tensor-core instructions in {what}"


def test_shared_memory_fits_sm80_at_the_largest_head_dim(kernels):
    for k in kernels:
        assert k.smem <= SM80_MAX_SMEM, f"{k.kernel} {k.dtype} D{k.head_dim}: {k.smem} B of shared memory"


def test_gpu_report_rows_cover_every_kernel(kernels):
    rows = report.cuda_rows(kernels)
    assert all(r.backend == "cuda" and r.error is None for r in rows)
    assert {(r.kernel, r.arch, r.dtype, r.head_dim) for r in rows} == {(k.kernel, k.cubin.arch, k.dtype, k.head_dim)
                                                                       for k in kernels}
    predicted = [r for r in rows if r.predicted_ms is not None]
    assert predicted and all(r.predicted_ms > 0 for r in predicted)
