"""`babygpt info`: versions, what was built, which backends are usable here (and why not), and the
engine's state: measuring on or off, the static policy, and the tuning cache's path and decisions."""

import importlib.metadata
import platform
import re
import shutil
import subprocess

import torch

from .. import ops
from ..ops import duration, engine, measure, tuning_cache
from ..ops.registry import decide
from ..ops.spec import Call


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _nvcc_on_path() -> str:
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return "not found on PATH"
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout
    m = re.search(r"release (\d+\.\d+)", out)
    return f"{m.group(1) if m else 'unknown version'} ({nvcc})"


def _build_info() -> dict:
    try:
        from .. import _C
    except ImportError as e:
        return {"error": str(e)}
    return _C.build_info()


def report() -> str:
    info = _build_info()
    lines = [
        f"babygpt_ext  {_version('babygpt_ext')}   python {platform.python_version()}   {platform.machine()}",
        f"torch        {torch.__version__} (CUDA {torch.version.cuda or 'none: CPU-only build'})",
        f"triton       {_version('triton')} (not imported)",
        f"nvcc         {_nvcc_on_path()}",
        f"GPU          {torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none visible'}",
    ]
    if "error" in info:
        lines.append(f"extension    babygpt_ext._C not importable: {info['error']}")
    else:
        cuda = (f"CUDA {info['nvcc_version']} for archs {info['cuda_archs']}, runtime {info['cuda_runtime_version']}"
                if info["cuda"] else "CPU only")
        lines.append(f"extension    babygpt_ext._C built with {info['compiler']}, torch {info['torch_version']}; {cuda}")
        lines.append(f"threads      {info['parallel_threads']} (at::parallel_for)")
        lines.append(f"CPU kernels  attention {info['cpu_attention_isa']}, LoRA {info['cpu_lora_isa']}; "
                     "BABYGPT_CPU_ISA=avx2|base forces a narrower copy")
        lines.append(f"  fp32       on the FMA units; attention forward at head size >= "
                     f"{info['cpu_attention_gemm_min_head_dim']}: Q·Kᵀ and P·V on oneDNN's brgemm (JIT for this CPU)")
        if info["cpu_attention_bf16"] == "fp32":
            lines.append("  bf16       attention computed in fp32 (this CPU has no bf16 units), forward and backward "
                         "reading bf16 in place")
        else:
            lines.append(f"  bf16       attention forward at even head sizes >= {info['cpu_attention_bf16_min_head_dim']}: "
                         f"Q·Kᵀ and P·V on the bf16 units ({info['cpu_attention_bf16']}), softmax in fp32; the "
                         "backward in fp32, reading bf16 in place")
        lines.append("  fp16, LoRA bf16/fp16  converted to fp32 while packing (LoRA: MKL above 2^28 multiply-adds)")
    lines += ["", "backends:"]
    width = max(map(len, ops.BACKENDS))
    for name, b in ops.BACKENDS.items():
        why = b.why_unavailable()
        status = "usable" if why is None else f"not usable: {why}"
        lines.append(f"  {name:<{width}}  {status}")
        lines.append(f"  {'':<{width}}  {b.description}")
    lines += ["", _engine_state(), "static policy (causal_attention, D=64; where the engine does not measure):"]
    for device in ("cpu", "cuda"):
        for dtype in (torch.float32, torch.bfloat16):
            try:
                chosen, _, how = decide(Call("attention", device, dtype, 64), None)
                lines.append(f"  {device:<4} {str(dtype):<15} -> {chosen.name}  ({how})")
            except RuntimeError as e:
                lines.append(f"  {device:<4} {str(dtype):<15} -> none: {e}")
    return "\n".join(lines + [""] + _cache_lines())


def _engine_state() -> str:
    if not engine.tuning_enabled():
        return f"measured choice: off ({engine.TUNE_VAR}=0): every call takes the static policy below"
    return (f"measured choice: on (the first call of each call key times the candidates, about "
            f"{measure.BUDGET_S * 1e3:.0f} ms; {engine.TUNE_VAR}=0 turns it off)")


def _cache_lines() -> list:
    entries, status = tuning_cache.entries(), tuning_cache.status()
    head = f"tuning cache: {tuning_cache.path()}"
    if status != "ok":
        return [f"{head}  (ignored: {status})"]
    if not entries:
        return [f"{head}  (no decisions yet; `babygpt tune` measures ahead of time)"]
    lines = [f"{head}  ({len(entries)} decisions for this machine and build)"]
    for label, e in sorted(entries.items()):
        times = "  ".join(f"{n} {duration(t / 1e6)}" for n, t in sorted(e["times_us"].items(), key=lambda x: x[1]))
        lines.append(f"  {label}\n      -> {e['backend']}   {times}")
    return lines


def run(args) -> int:
    print(report())
    return 0


def register(sub) -> None:
    p = sub.add_parser("info", help="versions, build facts, and which backends are usable here",
                       description="Print the versions of torch, CUDA, nvcc and triton, what the compiled "
                                   "extension was built with, and for every backend whether it can run "
                                   "here and, if not, why and how to get it.",
                       epilog="example:\n  babygpt info\n  BABYGPT_BACKEND=sdpa babygpt info   # see the env override")
    p.set_defaults(func=run)
