"""Which compute dtype a run uses, and why: `--dtype auto` resolved for the device at hand.

bf16 pays off only where the hardware multiplies bf16 natively: CUDA GPUs that support it, and
CPUs with AMX-BF16 or AVX512-BF16. Elsewhere (e.g. AVX2-only CPUs) bf16 GEMMs are emulated and
slower than fp32, so auto stays fp32 there; an explicit bf16 still runs, just slower.
"""

from pathlib import Path
from typing import Optional

import torch

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_bf16_units() -> Optional[str]:
    """The first native bf16 feature of this CPU (amx_bf16 or avx512_bf16), or None."""
    try:  # torch's cpuinfo view of the CPU: works on every OS torch runs on
        caps = torch._C._cpu._get_cpu_capability()
        found = [flag for flag in BF16_CPU_FLAGS if caps.get(flag)]
        return found[0] if found else None
    except (AttributeError, RuntimeError):  # older torch: Linux's own list of flags
        cpuinfo = Path("/proc/cpuinfo")
        flags = set(cpuinfo.read_text().split()) if cpuinfo.exists() else set()
        return next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)


def resolve_dtype(name: str, device_type: str) -> tuple:
    """(fp32 | bf16 | fp16, the reason in a few words) for a --dtype value on this device."""
    if name != "auto":
        return name, "requested"
    if device_type == "cuda":
        if torch.cuda.is_bf16_supported():
            return "bf16", "auto: this GPU supports bf16"
        return "fp32", "auto: this GPU has no bf16 support"
    unit = cpu_bf16_units()
    if unit is not None:
        return "bf16", f"auto: this CPU multiplies bf16 natively ({unit})"
    return "fp32", "auto: this CPU has no native bf16 units (amx_bf16 / avx512_bf16), where bf16 is slower"


ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def cpu_name() -> str:
    """The CPU's model name and the vector/matrix units it has, for benchmark headers (numbers
    mean little without them): e.g. "AMD EPYC [avx2, fma]"."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.exists() else []
    field = lambda key: next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith(key)), None)
    if (name := field("model name")) is None:
        import platform
        return platform.processor() or platform.machine()
    flags = set((field("flags") or "").split())
    return f"{name} [{', '.join(f for f in ISA_FLAGS if f in flags)}]"
