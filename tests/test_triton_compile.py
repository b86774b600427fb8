"""The Triton kernels compile for real GPUs here, without one (docs/design.md §9.2).

Every kernel — fp16 and bf16, D in {64, 128} for attention, every configuration of its autotune
list at the head dims the list keeps it for (configs.head_dims) — is compiled for sm_80 and sm_90
with triton.compile(ASTSource(...), target=GPUTarget(...)) (babygpt_ext/kernels/triton/aot.py),
so whatever the autotuner picks on a GPU has been compiled here. The cubin is read back with the
cuobjdump shipped in the triton wheel. A test fails on any spill (LOCAL or STACK bytes, or STL/LDL
in the SASS) and when a matmul kernel's SASS has no tensor-core instruction (HMMA; HGMMA, wgmma,
on sm_90).

Cost: 92 compiles of ~2-5 s, run by 2 worker subprocesses (the interpreter mode set by conftest
makes @triton.jit kernels uncompilable in this process); Triton's on-disk cache makes reruns take
seconds.
"""

import importlib.util
import os

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (it comes with CUDA builds of torch)")

if importlib.util.find_spec("triton") is not None:
    from babygpt_ext.kernels.triton import aot
    SPECS = aot.default_specs(all_configs=True)
else:  # collected but skipped
    aot, SPECS = None, []


def _id(s):
    return f"{s.kernel}-sm{s.arch}-{s.dtype}" + (f"-D{s.head_dim}" if s.head_dim else "") + f"-cfg{s.config_index}"


@pytest.fixture(scope="module")
def compiled():
    if not os.path.exists(aot._cuobjdump()):
        pytest.skip(f"cuobjdump is missing from the triton wheel ({aot._cuobjdump()})")
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
        assert any(r.sass_tensor_ops.get(op, 0) > 0 for op in want), (
            f"{_id(spec)} has no tensor-core instruction ({' or '.join(want)}) in its SASS: {r.sass_tensor_ops}")


def test_inspection_detects_spills_and_tensor_cores():
    """The checks above can fail: a kernel forced to 32 registers must show spills."""
    import subprocess
    import sys
    code = ("import triton\n"
            "from triton.backends.compiler import GPUTarget\n"
            "from babygpt_ext.kernels.triton import aot, configs as C\n"
            "fn, fam, build, _ = aot.kernel_table()['attn_fwd']\n"
            "sig, const = build('fp16', 128, fn.arg_names)\n"
            "const.update(C.configs(fam, 80)[0].kwargs)\n"
            "sig.update({n: 'constexpr' for n in const})\n"
            "k = triton.compile(triton.compiler.ASTSource(fn, sig, constexprs=const), target=GPUTarget('cuda', 80, 32),"
            " options={'num_warps': 8, 'num_stages': 2, 'maxnreg': 32})\n"
            "regs, smem, spill, local_instrs, ops = aot.inspect_cubin(k.asm['cubin'])\n"
            "assert regs <= 32 and spill > 0 and local_instrs > 0 and ops.get('HMMA', 0) > 0, (regs, spill, ops)\n")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr[-3000:]


def test_gpu_report_rows_roofline_and_json():
    """Roofline arithmetic and the JSON contract of `babygpt gpu-report --json` (no compile here)."""
    import json
    from babygpt_ext.bench import gpu_report as G
    from babygpt_ext.bench.shapes import AttnShape
    long = AttnShape("long", B=1, H=8, T=2048, D=64)
    ms, tflops, bound, dev = G.predict("attn_fwd", long, "bf16", 90)
    flops = 4 * 8 * 2048 * 2048 * 64 / 2
    assert bound == "compute" and dev == "H100-SXM"
    assert abs(ms - flops / 790e12 * 1e3) < 1e-9 and abs(tflops - 790.0) < 1e-6
    ms_dq, *_ = G.predict("attn_bwd_dq", long, "bf16", 90)
    assert abs(ms_dq / ms - 1.5) < 1e-9  # dQ does 3 of the forward's 2 matmuls
    tiny = AttnShape("babygpt", B=16, H=4, T=32, D=4)
    assert G.predict("attn_fwd", tiny, "fp16", 90)[2] == "memory"
    row = G.Row("attn_fwd", "triton", 90, "bf16", 122, 32768, 0, 16, ms, tflops, shape="long", head_dim=64)
    data = json.loads(G.to_json([row]))
    assert {"kernel", "backend", "arch", "dtype", "regs", "smem", "spill_bytes", "tensor_core_instrs",
            "predicted_ms"} <= set(data[0])
    assert "attn_fwd" in G.format_table([row]) and data[0]["predicted_ms"] == ms
