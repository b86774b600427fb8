"""The CPU attention, LoRA, LayerNorm and decoding kernels exist in one copy per instruction set (AVX-512, AVX2+FMA,
baseline x86-64; decode.cpp runs its AVX2 copy on AVX-512 too), and each process uses the widest its CPU
has (csrc/cpu/attention.cpp, lora.cpp, decode.cpp). The shared suite therefore only sees one copy; this file
re-runs the CPU attention, LoRA, LayerNorm and decoding tests in a subprocess for every copy this CPU can execute,
forced with BABYGPT_CPU_ISA."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NEEDS = {"avx512": ("avx512f", "avx512vl", "avx512dq"), "avx2": ("avx2", "fma"), "base": ()}


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    line = next((ln for ln in text.splitlines() if ln.startswith("flags")), "")
    return set(line.partition(":")[2].split())


@pytest.mark.parametrize("isa", list(NEEDS))
def test_attention_suite_on_each_instruction_set(isa):
    if platform.machine() != "x86_64":
        pytest.skip(f"the per-instruction-set copies are x86-64 only (this is {platform.machine()})")
    missing = [f for f in NEEDS[isa] if f not in cpu_flags()]
    if missing:
        pytest.skip(f"this CPU lacks {', '.join(missing)} (from /proc/cpuinfo), so the {isa} copy cannot run here")
    env = {**os.environ, "BABYGPT_CPU_ISA": isa}
    used = subprocess.run([sys.executable, "-c", "import babygpt_ext._C as C; i = C.build_info(); "
                           "print(i['cpu_attention_isa'], i['cpu_lora_isa'], i['cpu_attention_bf16'])"],
                          capture_output=True, text=True, env=env, cwd=ROOT)
    # bf16 runs on the bf16 units only from the AVX-512 copy, and only where the CPU has them; oneDNN
    # takes AMX tiles where the CPU has those too (the kernels ask Linux for them: csrc/cpu/isa.h).
    flags = cpu_flags()
    bf16 = ("fp32" if isa != "avx512" or "avx512_bf16" not in flags else
            "brgemm/amx" if {"amx_bf16", "amx_tile"} <= flags else "brgemm/avx512_bf16")
    assert used.returncode == 0 and used.stdout.split() == [isa, isa, bf16], (used.stdout, used.stderr[-2000:])
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "tests/test_attention.py",
                        "tests/test_properties.py", "tests/test_lora.py", "tests/test_decode_step.py", "tests/test_cpu_attention.py",
                        "tests/test_nan_contract.py", "tests/test_layer_norm.py", "-k", "cpu"], capture_output=True, text=True,
                       env=env, cwd=ROOT)
    assert r.returncode == 0, f"the {isa} copy failed:\n{r.stdout[-4000:]}\n{r.stderr[-2000:]}"


@pytest.mark.parametrize("isa,chosen", [("base", "sdpa"), ("avx2", "cpu")])
def test_policy_prefers_sdpa_over_the_baseline_copy(isa, chosen):
    """The baseline copy is slower than torch's SDPA, so the automatic policy passes it over (with
    a warning naming why); backend='cpu' still runs it."""
    missing = [f for f in NEEDS[isa] if f not in cpu_flags()]
    if platform.machine() != "x86_64" or missing:
        pytest.skip(f"this CPU cannot run the {isa} copy (lacks {', '.join(missing) or 'x86-64'})")
    code = ("import warnings, torch\n"
            "from babygpt_ext import ops\n"
            "from babygpt_ext.ops.registry import Call, decide\n"
            "b, skipped, _ = decide(Call('attention', 'cpu', torch.float32, 64), None)\n"
            "print(b.name, [n for n, _ in skipped])\n"
            "q = torch.randn(1, 1, 5, 8)\n"
            "ops.causal_attention(q, q, q, backend='cpu')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "BABYGPT_CPU_ISA": isa}, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split()[0] == chosen, r.stdout


@pytest.mark.parametrize("head_dim", [59, 16, 64])
def test_bf16_attention_as_a_fresh_process_first_call(head_dim):
    """The first bf16 product of a process may be on AMX tiles, which Linux grants only on request:
    the kernels must ask before oneDNN's first bf16 brgemm (an AMX instruction before that is
    SIGILL). A subprocess, so nothing earlier in the test session has asked already."""
    code = ("import torch\n"
            "from babygpt_ext import ops\n"
            f"q = torch.randn(2, 4, 17, {head_dim}).bfloat16().requires_grad_()\n"
            "o = ops.causal_attention(q, q, q, backend='cpu')\n"
            "o.sum().backward()\n"
            "print(bool(torch.isfinite(o).all() and torch.isfinite(q.grad).all()))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and r.stdout.split() == ["True"], (r.returncode, r.stdout, r.stderr[-2000:])
