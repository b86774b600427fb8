"""`babygpt gpu-report` without compiling anything: the cuobjdump parser on a fat-binary listing,
the roofline arithmetic, the JSON contract, and the shared-memory sizes the extension exports from
csrc/cuda/layout.h (the same constexpr layouts the kernels carve and the launchers size)."""

import importlib.util
import json

import pytest

from babygpt_ext.bench.shapes import AttnShape
from babygpt_ext.gpu_report import cubin, report
from babygpt_ext.gpu_report.roofline import predict

HAVE_EXT = importlib.util.find_spec("babygpt_ext._C") is not None
needs_ext = pytest.mark.skipif(not HAVE_EXT, reason="babygpt_ext._C is not built (pip install --no-build-isolation .)")



def listing(*cubins) -> str:
    """A cuobjdump listing of a fat binary: one section per (arch, text) cubin."""
    return "".join(f"\nFatbin elf code:\n================\narch = sm_{arch}\ncode version = [1,8]\n\n{text}"
                   for arch, text in cubins)


def res_line(name, regs, stack, shared, local):
    return f" Function {name}:\n  REG:{regs} STACK:{stack} SHARED:{shared} LOCAL:{local} CONSTANT[0]:400 TEXTURE:0\n"


def sass_line(address, instruction, predicate=""):
    return f"        /*{address:04x}*/ {predicate:>18} {instruction} ;   /* 0x000000342418723c */\n"


RES_USAGE = listing((80, "Resource usage:\n Common:\n  GLOBAL:0\n" + res_line("kern_a", 40, 8, 0, 16)
                     + res_line("kern_b", 32, 0, 1024, 0)),
                    (90, "Resource usage:\n" + res_line("kern_a", 48, 0, 0, 0)))
SASS = listing((80, "\t\tFunction : kern_a\n\t.headerflags\t@\"EF_CUDA_SM80\"\n"
                + sass_line(0, "HMMA.16816.F32.BF16 R28, R36, R52, R28")
                + sass_line(16, "HMMA.16816.F32.BF16 R24, R36, R52, R24", "@P0")
                + sass_line(32, "STL [R1], R2") + sass_line(48, "LDL R2, [R1]", "@!P1")
                + "\t\tFunction : kern_b\n" + sass_line(0, "FFMA R0, R1, R2, R3")),
               (90, "\t\tFunction : kern_a\n" + sass_line(0, "HGMMA.64x64x16.F32.BF16 gdesc[UR4], RZ, !UPT")))


def test_cuobjdump_listing_parses_per_arch_with_one_spill_definition():
    kernels = {(k.name, k.arch): k for k in cubin.parse(RES_USAGE, SASS)}
    assert set(kernels) == {("kern_a", 80), ("kern_b", 80), ("kern_a", 90)}
    a80 = kernels["kern_a", 80]
    assert (a80.regs, a80.local_bytes, a80.stack_bytes) == (40, 16, 8)
    assert a80.spill_bytes == 24 and a80.local_mem_instrs == 2  # LOCAL + STACK, and the STL/LDL
    assert a80.tensor_core_ops == {"HMMA": 2} and a80.tensor_core_instrs == 2
    b80 = kernels["kern_b", 80]
    assert b80.static_smem == 1024 and b80.spill_bytes == 0 and b80.tensor_core_instrs == 0
    assert kernels["kern_a", 90].tensor_core_ops == {"HGMMA": 1}


def test_gpu_report_rows_roofline_and_json():
    """Roofline arithmetic and the JSON contract of `babygpt gpu-report --json`."""
    long = AttnShape("long", B=1, H=8, T=2048, D=64)
    ms, tflops, bound, dev = predict("attn_fwd", long, "bf16", 90)
    flops = 4 * 8 * 2048 * 2048 * 64 / 2
    assert bound == "compute" and dev == "H100-SXM"
    assert abs(ms - flops / 790e12 * 1e3) < 1e-9 and abs(tflops - 790.0) < 1e-6
    ms_dq, *_ = predict("attn_bwd_dq", long, "bf16", 90)
    assert abs(ms_dq / ms - 1.5) < 1e-9  # dQ does 3 of the forward's 2 matmuls
    tiny = AttnShape("babygpt", B=16, H=4, T=32, D=4)
    assert predict("attn_fwd", tiny, "fp16", 90)[2] == "memory"
    row = report.Row("attn_fwd", "triton", 90, "bf16", 122, 32768, 0, 16, ms, tflops, shape="long", head_dim=64)
    data = json.loads(report.to_json([row]))
    assert {"kernel", "backend", "arch", "dtype", "regs", "smem", "spill_bytes", "tensor_core_instrs",
            "predicted_ms"} <= set(data[0])
    assert "attn_fwd" in report.format_table([row]) and data[0]["predicted_ms"] == ms


@needs_ext
def test_extension_exports_the_cuda_shared_memory_layouts():
    from babygpt_ext._C import build_info
    table = build_info()["cuda_smem_bytes"]
    assert set(table) == {"attn_fwd_kernel", "attn_dq_kernel", "attn_dkdv_kernel", "gemm_kernel"}
    for kernel, per_dtype in table.items():
        assert set(per_dtype) == {"fp32", "fp16", "bf16"}, kernel
        buckets = {0} if kernel == "gemm_kernel" else {64, 128, 256}
        assert all(set(per_d) == buckets for per_d in per_dtype.values()), kernel
    # By hand from layout.h, fp16 at D = 64 (BM = BN = 64, rows padded by 8 halves to 72):
    # forward: Q, K, V (64 rows each) and P (64 x 72); dQ adds a dO tile of 64 rows.
    assert table["attn_fwd_kernel"]["fp16"][64] == 2 * (3 * 64 * 72 + 64 * 72) == 36864
    assert table["attn_dq_kernel"]["fp16"][64] == 36864 + 2 * 64 * 72
    # GEMM: A 64 x (32 + 8), B 32 x (64 + 8) halves.
    assert table["gemm_kernel"]["bf16"][0] == 2 * (64 * 40 + 32 * 72)
    # fp32 at D = 256 takes 2 warps (BM = 32) and 32-key tiles to stay within sm_80's 163 KiB.
    assert table["attn_dq_kernel"]["fp32"][256] <= 166912


@needs_ext
def test_python_head_dim_limit_is_the_extensions():
    from babygpt_ext._C import build_info
    from babygpt_ext.ops.backends import KERNEL_MAX_HEAD_DIM
    assert KERNEL_MAX_HEAD_DIM == build_info()["max_head_dim"]
