"""Compile the Triton kernels for real GPUs without one, and read back what ptxas made of them.

    python -m babygpt_ext.gpu_report.triton_aot            # every kernel, first config, sm_80 + sm_90
    python -m babygpt_ext.gpu_report.triton_aot --all-configs --json

`triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", cap, 32))`
runs Triton's whole pipeline (TTIR → TTGIR → LLVM → PTX → ptxas cubin) on the host. The cubin is
then read with cuobjdump (cubin.py): registers, shared memory, spills, and the tensor-core
instructions of the SASS.

Each compile takes seconds, and Triton's interpreter mode (TRITON_INTERPRET=1, set by the test
suite) replaces @triton.jit functions with Python objects that cannot be compiled, so `compile_many`
runs the work in at most 2 fresh subprocesses with TRITON_INTERPRET removed from their env.
Compiled kernels land in Triton's on-disk cache (~/.triton/cache), so a second run is fast.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Optional

from . import cubin

ARCHS = (80, 90)
DTYPES = ("fp16", "bf16")
HEAD_DIMS = (64, 128)


@dataclass
class Spec:
    """One compilation: a kernel, its dtype/head dim, a config of its autotune list, a target."""
    kernel: str  # key of KERNEL_TABLE
    dtype: str  # "fp16" | "bf16" | "fp32"
    arch: int  # 80 | 90
    head_dim: int = 0  # attention kernels only
    config_index: int = 0  # index into configs.configs(family, arch)
    dropout: bool = False  # attention kernels with DROPOUT compiled in


@dataclass
class Result:
    spec: Spec
    regs: int
    smem: int  # static + dynamic shared memory of one block, bytes
    spill_bytes: int  # cubin.Kernel.spill_bytes
    local_mem_instrs: int  # STL/LDL in the SASS (a spill shows up here even when counted as STACK)
    tensor_core_instrs: int
    tensor_core_ops: dict  # mnemonic -> count
    num_warps: int
    num_stages: int
    meta: dict  # the constexprs the kernel was compiled with
    error: Optional[str] = None


def kernel_table():
    """name -> (jit function, config family or None, builder of (signature, constexprs))."""
    from ..kernels.triton import attention, configs as C, lora

    def attn(n_ptrs):
        # Pointers first, then int strides/sizes, the float scale, the SEQ_BUCKET int, constexprs.
        def build(dtype, d, names):
            sig = {}
            for i, name in enumerate(names):
                if i < n_ptrs:
                    sig[name] = "*fp32" if name in ("LSE", "DELTA") else f"*{dtype}"
                elif name in ("scale", "keep_scale"):
                    sig[name] = "fp32"
                elif name.isupper() and name not in ("H", "HKV", "GROUP", "D", "SEQ_BUCKET"):
                    sig[name] = "constexpr"
                else:
                    sig[name] = "i32"
            const = {"CAUSAL": True, "PRECISION": "ieee" if dtype == "fp32" else "tf32",
                     "BLOCK_D": attention.block_d(d), "DROPOUT": False}
            if "HAS_LO" in names:  # the forward stores o's residual for fp16/bf16
                const["HAS_LO"] = dtype != "fp32"
            return sig, const
        return build

    def lora_build(dtype, d, names):
        # The forward's y-kernel: x, w, b, bmat in the input dtype, xa float32 (the epilogue path).
        ptr = {"X": dtype, "W": dtype, "XA": "fp32", "BM": dtype, "BIAS": dtype, "Y": dtype}
        sig = {}
        for name in names:
            if name in ptr:
                sig[name] = f"*{ptr[name]}"
            elif name in ("alpha", "scale"):
                sig[name] = "fp32"
            elif name.isupper() and name not in ("M", "N", "K", "R"):
                sig[name] = "constexpr"
            else:
                sig[name] = "i32"
        const = {"HAS_LORA": True, "HAS_BIAS": True, "DOT_F32": dtype == "fp32",
                 "PRECISION": "ieee" if dtype == "fp32" else "tf32", "BLOCK_R": 16}
        return sig, const

    def pre_build(dtype, d, names):
        sig = {n: ("*fp32" if n == "DELTA" else f"*{dtype}") if n in ("O", "O_LO", "DO", "DELTA") else
               ("constexpr" if n.startswith("BLOCK") or n == "HAS_LO" else "i32") for n in names}
        return sig, {"BLOCK_M": attention.PREPROCESS_BLOCK_M, "BLOCK_D": attention.block_d(d),
                     "HAS_LO": dtype != "fp32"}

    def colsum_build(dtype, d, names):
        sig = {n: f"*{dtype}" if n in ("X", "OUT") else ("constexpr" if n.startswith("BLOCK") else "i32")
               for n in names}
        return sig, dict(zip(("BLOCK_M", "BLOCK_N"), lora.COLSUM_BLOCK))

    return {
        "attn_fwd": (attention.attn_fwd_kernel, C.ATTN_FWD, attn(6), True),
        "attn_bwd_preprocess": (attention.attn_bwd_preprocess_kernel, None, pre_build, False),
        "attn_bwd_dkdv": (attention.attn_bwd_dkdv_kernel, C.ATTN_BWD_DKDV, attn(8), True),
        "attn_bwd_dq": (attention.attn_bwd_dq_kernel, C.ATTN_BWD_DQ, attn(7), True),
        "lora_matmul": (lora.lora_matmul_kernel, C.LORA, lora_build, True),
        "lora_colsum": (lora.colsum_kernel, None, colsum_build, False),
    }


ATTENTION_KERNELS = ("attn_fwd", "attn_bwd_preprocess", "attn_bwd_dkdv", "attn_bwd_dq")
DROPOUT_KERNELS = ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq")  # the ones with a DROPOUT constexpr
LORA_KERNELS = ("lora_matmul", "lora_colsum")
# Kernels whose fp16/bf16 form must contain tensor-core instructions (the others do no matmul).
USES_TENSOR_CORES = ("attn_fwd", "attn_bwd_dkdv", "attn_bwd_dq", "lora_matmul")


def default_specs(all_configs: bool = False) -> list:
    """fp16 + bf16 x sm_80 + sm_90 x (D in {64, 128} for attention) x (first config | all configs),
    each configuration only at the head dims its autotune list keeps it for (configs.head_dims); the
    attention kernels also with dropout compiled in, where the list keeps it for dropout
    (configs.dropout_dims)."""
    from ..kernels.triton import attention, configs as C
    table = kernel_table()
    specs = []
    for arch in ARCHS:
        for name, (_, family, _, _) in table.items():
            cfgs = C.configs(family, arch) if family else [None]
            for i, cfg in enumerate(cfgs if all_configs else cfgs[:1]):
                for dropout in ((False, True) if name in DROPOUT_KERNELS else (False,)):
                    for dtype in DTYPES:
                        for d in (HEAD_DIMS if name in ATTENTION_KERNELS else (0,)):
                            if cfg is None or not d or C.kept_for_head_dim(cfg, attention.block_d(d), dropout):
                                specs.append(Spec(name, dtype, arch, d, i, dropout))
    return specs


def _divisibility_attrs(fn, sig):
    """Tell the compiler what a real launch would: pointers (torch allocations) are 16-byte
    aligned, and so are the int arguments here (strides, sizes of the benchmark shapes are multiples
    of 16). Without this the compile would model misaligned, unvectorised loads."""
    return {(fn.arg_names.index(n),): [["tt.divisibility", 16]] for n, t in sig.items()
            if t.startswith("*") or (t == "i32" and n.startswith("stride") and not n.endswith(("k", "r", "n")))}


def inspect_cubin(data: bytes) -> cubin.Kernel:
    """The one kernel of a Triton-compiled cubin, read with cuobjdump."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(data)
        f.flush()
        kernels = cubin.read(f.name)
    if len(kernels) != 1:
        raise RuntimeError(f"expected one kernel in the cubin, cuobjdump lists {[k.name for k in kernels]}")
    return kernels[0]


def compile_one(spec: Spec) -> Result:
    """Compile one Spec in this process (TRITON_INTERPRET must be unset)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from ..kernels.triton import configs as C
    fn, family, build, _ = kernel_table()[spec.kernel]
    sig, const = build(spec.dtype, spec.head_dim, fn.arg_names)
    if "DROPOUT" in const:
        const["DROPOUT"] = spec.dropout
    options = {"num_warps": 4, "num_stages": 2}
    if family is not None:
        cfg = C.configs(family, spec.arch)[spec.config_index]
        const.update(cfg.kwargs)
        options = {n: v for n, v in cfg.all_kwargs().items() if n not in cfg.kwargs}  # num_warps, maxnreg, ...
    for name in const:
        sig[name] = "constexpr"
    src = triton.compiler.ASTSource(fn, sig, constexprs=const, attrs=_divisibility_attrs(fn, sig))
    kernel = triton.compile(src, target=GPUTarget("cuda", spec.arch, 32), options=options)
    k = inspect_cubin(kernel.asm["cubin"])
    smem = max(k.static_smem, int(kernel.metadata.shared))  # Triton's smem is dynamic: take its figure
    return Result(spec, k.regs, smem, k.spill_bytes, k.local_mem_instrs, k.tensor_core_instrs, k.tensor_core_ops,
                  options["num_warps"], options["num_stages"], {n: v for n, v in const.items() if n.isupper()})


def _safe_compile(spec: Spec) -> Result:
    try:
        return compile_one(spec)
    except Exception as e:  # report per kernel; the caller decides what fails
        return Result(spec, 0, 0, 0, 0, 0, {}, 0, 0, {}, error=f"{type(e).__name__}: {e}")


def compile_many(specs: list, workers: int = 2) -> list:
    """Compile `specs` in `workers` (<= 2) fresh subprocesses without TRITON_INTERPRET; keep order."""
    workers = max(1, min(workers, 2, len(specs)))
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    chunks = [specs[i::workers] for i in range(workers)]
    procs = [subprocess.Popen([sys.executable, "-m", "babygpt_ext.gpu_report.triton_aot", "--worker"], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
             for _ in chunks]
    outs = []
    for p, chunk in zip(procs, chunks):
        p.stdin.write(json.dumps([asdict(s) for s in chunk]))
        p.stdin.close()
    for p in procs:
        out, err = p.stdout.read(), p.stderr.read()
        if p.wait() != 0:
            raise RuntimeError(f"compile worker failed (exit {p.returncode}):\n{err[-4000:]}")
        outs.append(json.loads(out))
    results = {}
    for chunk, out in zip(chunks, outs):
        for s, r in zip(chunk, out):
            r["spec"] = Spec(**r["spec"])
            results[id(s)] = Result(**r)
    return [results[id(s)] for s in specs]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", action="store_true", help="internal: read Specs as JSON on stdin")
    ap.add_argument("--all-configs", action="store_true", help="every autotune configuration, not just the first")
    ap.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = ap.parse_args(argv)
    if args.worker:
        specs = [Spec(**s) for s in json.load(sys.stdin)]
        print(json.dumps([asdict(_safe_compile(s)) for s in specs]))
        return 0
    results = compile_many(default_specs(args.all_configs))
    if args.json:
        print(json.dumps([asdict(r) for r in results], indent=1))
    else:
        for r in results:
            s = r.spec
            print(f"{s.kernel:20s} sm_{s.arch} {s.dtype} D={s.head_dim:<3d} cfg{s.config_index} regs={r.regs:<3d} "
                  f"smem={r.smem:<6d} spill={r.spill_bytes}/{r.local_mem_instrs} tc={r.tensor_core_ops} {r.error or ''}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
