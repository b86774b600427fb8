"""The backends of the op contract, registered in policy order, each with one implementation per op
of the table (ops/table.py).

Compiled backends are namespaces of torch ops with the schemas of csrc/schemas.h:
  cpu, cuda  -> torch.ops.babygpt       (babygpt_ext._C; one namespace, dispatched by device)
  cuda_emu   -> torch.ops.babygpt_emu   (babygpt_ext._C_emu: csrc/cuda kernels run through csrc/emu)
  triton     -> torch.ops.babygpt_triton (babygpt_ext.kernels.triton)
Each is loaded lazily on first use, so importing babygpt_ext imports neither the extension's
CUDA side nor anything Triton-related.
"""

import functools
import importlib
import importlib.util
import os

import torch
import torch.nn.functional as F

from . import reference
from .library import eager_ops, register_contract
from .qkv_attention_op import merge_heads, split_heads
from .registry import Backend, Call, limits, register
from .table import OPS

LOW_AND_FULL = (torch.float16, torch.bfloat16, torch.float32)
WITH_F64 = LOW_AND_FULL + (torch.float64,)
KERNEL_MAX_HEAD_DIM = 256
BUILD_HINT = "build it with `pip install --no-build-isolation .` (torch installed first; see README)"


# backend -> (module that defines the ops, op namespace)
COMPILED = {
    "cpu": ("babygpt_ext._C", "babygpt"),
    "cuda": ("babygpt_ext._C", "babygpt"),
    "triton": ("babygpt_ext.kernels.triton", "babygpt_triton"),
    "cuda_emu": ("babygpt_ext._C_emu", "babygpt_emu"),
}


def load(backend: str, hint: str):
    """Import a compiled backend's module and attach fakes + autograd to its ops.

    Returns None on success, else why the module is missing and how to get it. The registry calls
    this through the backend's probe, before the backend's first call: the calls themselves only
    look up torch.ops.<ns>, which torch.compile traces without a graph break.
    """
    module, ns = COMPILED[backend]
    try:
        importlib.import_module(module)
    except ImportError as e:
        return f"{module} is not importable ({e}); {hint}"
    register_contract(ns)
    return None


def compiled_ops(backend: str):
    """torch.ops.<ns> of a compiled backend (loaded by its probe)."""
    return getattr(torch.ops, COMPILED[backend][1])


def _run_compiled(spec, backend, *args):
    # Traced calls put the registered op into the graph; eager ones skip its Python autograd wrapper.
    ns = compiled_ops(backend) if torch.compiler.is_compiling() else eager_ops(COMPILED[backend][1])
    return spec.run_compiled(ns, *args)


# The ops every compiled namespace defines (BABYGPT_DEFINE_CONTRACT); the fused ops of the training
# step (BABYGPT_DEFINE_CPU_FUSED) have CPU kernels only, so other devices run their eager composition,
# except qkv_attention, which a backend without kernels for it runs through its own attention.
CONTRACT_OPS = ("attention", "lora")


def with_qkv_attention(impls: dict) -> dict:
    """impls plus qkv_attention composed from impls["attention"] when it has none of its own: the
    split views of qkv in, the heads re-assembled after (the copies the cpu kernels avoid)."""
    if "qkv_attention" in impls:
        return impls
    attention = impls["attention"]

    def qkv_attention(qkv, n_head, n_kv_head, scale, causal, dropout_p=0.0, seed=None):
        q, k, v = split_heads(qkv, n_head, n_kv_head)
        return merge_heads(attention(q, k, v, scale, causal, dropout_p, seed))
    return {**impls, "qkv_attention": qkv_attention}


def compiled_impls(backend: str, ops: tuple = CONTRACT_OPS) -> dict:
    """The given ops of the table, through the backend's namespace (qkv_attention composed when not given)."""
    return with_qkv_attention({name: functools.partial(_run_compiled, OPS[name], backend) for name in ops})


def compiled_limits(backend: str, dtypes: tuple, also=None, ops: tuple = CONTRACT_OPS):
    """The usual limits, plus: the namespace must define the op that runs the call (a build older
    than the table); for a composed qkv_attention, that is attention's."""
    def missing_op(call: Call):
        forward = OPS[call.op if call.op in ops else "attention"].forward
        if not hasattr(compiled_ops(backend), forward):
            return f"{COMPILED[backend][1]} has no {forward} (rebuild the extension)"
        return also(call) if also else None
    return limits(dtypes, KERNEL_MAX_HEAD_DIM, missing_op)


# -------------------------------------------------------------------------------- eager
register(Backend(
    "eager", "plain PyTorch composition; materialises the T×T scores (the readable reference)",
    devices=("cpu", "cuda"), impls={name: spec.reference for name, spec in OPS.items()},
    refuse=limits(WITH_F64)))


# --------------------------------------------------------------------------------- sdpa
def _sdpa(q, k, v, scale, causal, dropout_p=0.0, seed=None):  # dropout calls are refused below
    if scale <= 0:
        # torch's CPU flash kernel fills masked scores with -inf before it scales them, and
        # -inf · scale is NaN at 0, +inf below it (NaN rows, or rows that see the future): scale q
        # instead, one O(Tq·D) pass.
        q, scale = q * scale, 1.0
    if torch.compiler.is_compiling() or reference.finite_sum(q, k, v):
        return _sdpa_call(q, k, v, scale, causal)
    # SDPA does not follow §2.7 with NaN/Inf: its P·V and backward meet a masked pair's exact 0 with
    # whatever the key holds (0 · NaN = NaN), and its CPU flash kernel returns zeros for a row whose
    # scores are not finite. Such inputs take the reference, exactly masked when causal.
    return reference.exactly_masked_attention(q, k, v, scale) if causal else reference.attention(q, k, v, scale, False)


def _sdpa_call(q, k, v, scale, causal):
    tq, tk = q.shape[2], k.shape[2]
    # SDPA's is_causal is top-left aligned; the contract is bottom-right, so Tq != Tk needs a mask.
    mask = reference.causal_mask(tq, tk, q.device) if causal and tq != tk else None
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal and tq == tk, scale=scale,
                                          enable_gqa=k.shape[1] != q.shape[1])


def _sdpa_dropout(call: Call):
    if dict(call.dims).get("dropout"):
        return ("attention dropout: SDPA draws its own mask from torch's generator, not the op's "
                "counter-based one (ops.dropout_mask), and a post-softmax mask cannot be passed to it")
    return None


register(Backend(
    "sdpa", "torch.nn.functional.scaled_dot_product_attention (the peer baseline; attention only)",
    devices=("cpu", "cuda"), impls=with_qkv_attention({"attention": _sdpa}),
    refuse=limits(WITH_F64, also=_sdpa_dropout)))


# ---------------------------------------------------------------------------------- cpu
def _ext_missing():
    return load("cpu", BUILD_HINT)


def _cpu_slower_than_sdpa(call: Call):
    """Without AVX2+FMA the attention kernels run their baseline SSE2 copy, which measured 0.67-0.73x
    SDPA (whose own kernels are vectorised for the CPU at hand): let the policy take SDPA instead."""
    if call.op not in ("attention", "qkv_attention") or call.dtype == torch.float64:  # float64: no SIMD copy anyway
        return None
    import babygpt_ext._C as ext
    if ext.build_info()["cpu_attention_isa"] != "base":
        return None
    return ("its attention kernels run their baseline x86-64 copy on this CPU (no AVX2+FMA, or "
            "BABYGPT_CPU_ISA=base), slower than SDPA; backend='cpu' still uses them")


register(Backend(
    "cpu", "C++ kernels of csrc/cpu (torch.ops.babygpt on CPU tensors)",
    devices=("cpu",), impls=compiled_impls("cpu", tuple(OPS)), unavailable=_ext_missing,
    refuse=compiled_limits("cpu", WITH_F64, ops=tuple(OPS)), policy_skip=_cpu_slower_than_sdpa))


# --------------------------------------------------------------------------------- cuda
def _cuda_missing():
    if (why := _ext_missing()) is not None:
        return why
    from babygpt_ext._C import build_info
    if not build_info()["cuda"]:
        return ("babygpt_ext._C was built without CUDA; rebuild with a CUDA build of torch and nvcc "
                "(BABYGPT_EXT_CUDA=1 pip install --no-build-isolation .)")
    if not torch.cuda.is_available():
        return "no CUDA device is visible to torch (torch.cuda.is_available() is False)"
    if not torch._C._dispatch_has_kernel_for_dispatch_key("babygpt::attn_fwd", "CUDA"):
        return "babygpt_ext._C has no CUDA kernels registered for babygpt::attn_fwd"
    return None


register(Backend(
    "cuda", "CUDA C++ kernels of csrc/cuda (torch.ops.babygpt on CUDA tensors)",
    devices=("cuda",), impls=compiled_impls("cuda"), unavailable=_cuda_missing,
    refuse=compiled_limits("cuda", LOW_AND_FULL)))


# ------------------------------------------------------------------------------- triton
def _triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _triton_missing():
    if importlib.util.find_spec("triton") is None:
        return "the triton package is not installed (pip install triton; it comes with CUDA builds of torch)"
    if not (torch.cuda.is_available() or _triton_interpreting()):
        return "no CUDA device, and TRITON_INTERPRET=1 (Triton's CPU interpreter) is not set"
    return load("triton", "the Triton kernels are not part of this installation")


def _triton_device_check(call: Call):
    if call.device == "cpu" and not _triton_interpreting():
        return "CPU tensors run only under TRITON_INTERPRET=1"
    if call.device == "cpu" and call.dtype == torch.bfloat16:
        # numpy has no bfloat16: the interpreter's tl.dot on bf16 returns garbage (seen: error 2.5e10
        # on a 16x16 product). bf16 runs on CUDA devices only.
        return "Triton's interpreter (TRITON_INTERPRET=1) cannot do bfloat16 arithmetic; bfloat16 needs a CUDA device"
    return None


register(Backend(
    "triton", "Triton kernels of babygpt_ext/kernels/triton (CUDA tensors; CPU tensors under TRITON_INTERPRET=1)",
    devices=("cuda", "cpu"), impls=compiled_impls("triton"), unavailable=_triton_missing,
    refuse=compiled_limits("triton", LOW_AND_FULL, _triton_device_check)))


# ----------------------------------------------------------------------------- cuda_emu
register(Backend(
    "cuda_emu", "the csrc/cuda kernels run on the CPU through the csrc/emu harness (tests; slow)",
    devices=("cpu",), impls=compiled_impls("cuda_emu"), refuse=compiled_limits("cuda_emu", LOW_AND_FULL),
    unavailable=lambda: load(
        "cuda_emu", "build it with `BABYGPT_EXT_EMU=1 pip install --no-build-isolation -e .`")))
