"""Self-tests of csrc/emu/cudaemu.h, the harness that runs CUDA C++ kernels on the CPU.

The C++/CUDA programs in this folder are compiled once per session (in parallel, into a tmp
dir) and run as subprocesses:
  selftest.cu   correct kernels vs float64 references, in forward/reverse/random order and
                in every mode (fibers, ucontext fibers, std::thread, AddressSanitizer)
  broken.cu     deliberately broken kernels; each test FAILS if the harness stays silent;
                spin-waits that must finish when released and be reported when not
  tsan.cu       ThreadSanitizer (thread mode): clean on the reduction, flags a racy kernel
  dlopen_driver.cpp  runs a shared-object build of broken.cu through dlopen
  torch_include.cpp  cudaemu.h next to <torch/extension.h>; selftest.cu through nvcc
Subprocess timeouts are only a safety net: the harness itself must report deadlocks.
"""
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
EMU = ROOT / "csrc" / "emu"
CUDA_HOME = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda"))
CUDA_INC = CUDA_HOME / "include"
CXX = os.environ.get("CXX", "g++")
NVCC = shutil.which("nvcc") or (str(CUDA_HOME / "bin" / "nvcc") if (CUDA_HOME / "bin" / "nvcc").exists() else None)
ORDERS = ["forward", "reverse", "random"]
TIMEOUT = 60  # seconds; a hang is a harness bug, the harness must report deadlocks itself

if shutil.which(CXX) is None:
    pytest.skip(f"no C++ compiler '{CXX}' on PATH (set CXX)", allow_module_level=True)
if not (CUDA_INC / "cuda_fp16.h").exists():
    pytest.skip(f"CUDA toolkit headers not found in {CUDA_INC} (set CUDA_HOME)", allow_module_level=True)

# The self-tests exercise every part of the emulator, the opt-in ones too (cudaemu.h's switches).
SWITCHES = ["-DCUDAEMU_STATIC_SHARED", "-DCUDAEMU_SPIN_WAITS"]
BASE = ["-std=c++20", "-pthread", f"-I{CUDA_INC}", f"-I{EMU}", f"-I{HERE}", *SWITCHES, "-x", "c++"]
SAN = ["-O1", "-g", "-fno-omit-frame-pointer"]
# name -> (source, extra flags). -O2 for speed, -O1 -g under sanitizers for useful reports.
PROGRAMS = {
    "selftest": ("selftest.cu", ["-O2"]),
    "selftest_ucontext": ("selftest.cu", ["-O2", "-DCUDAEMU_UCONTEXT"]),
    "selftest_threads": ("selftest.cu", ["-O2", "-DCUDAEMU_THREADS"]),
    "selftest_asan": ("selftest.cu", SAN + ["-fsanitize=address"]),
    "broken": ("broken.cu", ["-O1", "-g"]),
    "broken_threads": ("broken.cu", ["-O1", "-g", "-DCUDAEMU_THREADS"]),
    "broken_asan": ("broken.cu", SAN + ["-fsanitize=address"]),
    # static __shared__ is a plain 'static' in thread mode, which ASan pads with redzones
    "broken_threads_asan": ("broken.cu", SAN + ["-fsanitize=address", "-DCUDAEMU_THREADS"]),
    "tsan": ("tsan.cu", SAN + ["-fsanitize=thread", "-DCUDAEMU_THREADS"]),
    # broken.cu as a dlopen'ed shared object, the way Python loads babygpt_ext._C_emu
    "libbroken.so": ("broken.cu", ["-O1", "-g", "-fPIC", "-shared", "-DBROKEN_AS_LIBRARY"]),
    "dlopen_driver": ("dlopen_driver.cpp", ["-O1", "-ldl"]),
}


def _torch_include_cmd(out_dir):
    """g++ -fsyntax-only over torch_include.cpp, or None when torch is not importable."""
    try:
        import sysconfig

        import torch.utils.cpp_extension as cpp
    except ImportError:
        return None
    incs = [f"-I{p}" for p in cpp.include_paths()] + [f"-I{sysconfig.get_paths()['include']}"]
    return [CXX, "-fsyntax-only", *BASE[:-2], *incs, "-x", "c++", str(HERE / "torch_include.cpp")]


def _nvcc_cmd(out_dir):
    if NVCC is None:
        return None
    return [NVCC, "-c", "-arch=sm_80", "-std=c++17", "-x", "cu", f"-I{EMU}", f"-I{HERE}",
            str(HERE / "selftest.cu"), "-o", str(out_dir / "selftest_nvcc.o")]


@pytest.fixture(scope="session")
def builds(tmp_path_factory):
    """Compiles every program once, two at a time (the machine is shared). name -> result."""
    out = tmp_path_factory.mktemp("cudaemu")
    jobs = {name: [CXX, *BASE, *flags, str(HERE / src), "-o", str(out / name)]
            for name, (src, flags) in PROGRAMS.items()}
    jobs["torch_include"] = _torch_include_cmd(out)
    jobs["nvcc"] = _nvcc_cmd(out)

    def build(item):
        name, cmd = item
        if cmd is None:
            return name, None
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        return name, p

    # Slowest first (torch headers, nvcc) so they overlap with the small ones.
    order = ["torch_include", "nvcc"] + list(PROGRAMS)
    with ThreadPoolExecutor(max_workers=2) as pool:
        done = dict(pool.map(build, [(n, jobs[n]) for n in order]))
    return {"dir": out, "results": done}


def binary(builds, name):
    p = builds["results"][name]
    assert p.returncode == 0, f"building {name} failed:\n{p.stderr[-4000:]}"
    return str(builds["dir"] / name)


def run(builds, name, *args, **env):
    e = {k: v for k, v in os.environ.items() if not k.startswith("CUDAEMU_")}
    e.update({k: str(v) for k, v in env.items()})
    return subprocess.run([binary(builds, name), *args], capture_output=True, text=True, timeout=TIMEOUT, env=e)


def marker_line(source, marker):
    """Line number of the '// @marker' comment in a test source (so tests survive edits)."""
    for i, line in enumerate((HERE / source).read_text().splitlines(), 1):
        if re.search(rf"//\s*@{marker}\b", line):
            return i
    raise AssertionError(f"marker @{marker} not found in {source}")


SELFTESTS = ["reduce", "matmul", "scan", "half", "atomics", "votes", "template", "launch_errors"]
LINE = re.compile(r"^(\w+) (PASS|FAIL) ms=([\d.]+) err=(\S+)$", re.M)


def check_selftest(p):
    results = {m[0]: m for m in LINE.findall(p.stdout)}
    assert set(results) == set(SELFTESTS), f"missing results:\n{p.stdout}\n{p.stderr}"
    failed = [n for n, m in results.items() if m[1] != "PASS"]
    assert not failed and p.returncode == 0, f"failed: {failed}\n{p.stdout}\n{p.stderr[-4000:]}"
    return results


# ------------------------------------------------------------------ correct kernels
@pytest.mark.parametrize("order", ORDERS)
def test_selftest_kernels_match_float64(builds, order):
    results = check_selftest(run(builds, "selftest", CUDAEMU_ORDER=order, CUDAEMU_SEED=7))
    # Shown with -s / in the log: per-kernel launch time and error vs the float64 reference.
    print("\n" + " ".join(f"{n}:{float(m[2]):.1f}ms/err={m[3]}" for n, m in results.items()))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_selftest_random_order_seeds(builds, seed):
    check_selftest(run(builds, "selftest", CUDAEMU_ORDER="random", CUDAEMU_SEED=seed))


@pytest.mark.parametrize("order", ORDERS)
def test_preempted_threads_compute_exactly(builds, order):
    """With a 1 ms quantum the watchdog preempts threads in the middle of their arithmetic; the
    (exact, integer) result must not change, and preemptions must really have happened."""
    p = run(builds, "selftest", "preempt", CUDAEMU_PREEMPT_MS=1, CUDAEMU_ORDER=order, CUDAEMU_SEED=3)
    assert p.returncode == 0 and "preempt PASS" in p.stdout, p.stdout + p.stderr[-4000:]
    count = re.search(r"preemptions=(\d+)", p.stdout)
    assert count and int(count.group(1)) > 0, f"the watchdog never preempted, so this proved nothing:\n{p.stdout}"


def test_selftest_one_worker_no_poison(builds):
    check_selftest(run(builds, "selftest", CUDAEMU_WORKERS=1, CUDAEMU_POISON=0))


@pytest.mark.parametrize("mode", ["selftest_ucontext", "selftest_threads", "selftest_asan"])
def test_selftest_other_modes(builds, mode):
    p = run(builds, mode, CUDAEMU_ORDER="reverse")
    check_selftest(p)
    assert "Sanitizer" not in p.stderr, p.stderr[-4000:]


# ------------------------------------------------------------------ broken kernels
def verdict(p):
    lines = [l for l in p.stdout.splitlines() if l.split(" ")[0] in ("DETECTED", "WRONG", "SILENT")]
    assert p.returncode == 0 and len(lines) == 1, f"rc={p.returncode}\n{p.stdout}\n{p.stderr[-4000:]}"
    return lines[0]


@pytest.mark.parametrize("prog", ["broken", "broken_threads"])
def test_missing_barrier_fails_in_some_order(builds, prog):
    verdicts = {o: verdict(run(builds, prog, "missing_barrier", CUDAEMU_ORDER=o, CUDAEMU_SEED=3)) for o in ORDERS}
    assert any(not v.startswith("SILENT") for v in verdicts.values()), f"missing __syncthreads unnoticed: {verdicts}"
    if prog == "broken":  # fibers: deterministic; forward order runs warp 0 before the writers
        assert verdicts["forward"].startswith("WRONG"), verdicts


# case -> markers whose source lines the message must name
REPORTED = {
    "divergent_barrier": ["div_a", "div_b"],
    "exit_before_barrier": ["exit_bar"],
    "deadlock": ["dl_shfl", "dl_bar"],
    "shuffle_outside_mask": ["mask_read"],
    "shuffle_exited_lane": ["exited_shfl"],
}


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("case", sorted(REPORTED))
def test_broken_kernel_is_reported_with_lines(builds, case, order):
    v = verdict(run(builds, "broken", case, CUDAEMU_ORDER=order, CUDAEMU_SEED=5))
    assert v.startswith("DETECTED cudaErrorLaunchFailure"), v
    for m in REPORTED[case]:
        assert f"broken.cu:{marker_line('broken.cu', m)}" in v, f"@{m} line not named: {v}"


@pytest.mark.parametrize("case", sorted(REPORTED))
def test_broken_kernel_is_reported_in_thread_mode(builds, case):
    v = verdict(run(builds, "broken_threads", case))
    assert v.startswith("DETECTED cudaErrorLaunchFailure"), v
    for m in REPORTED[case]:
        assert f"broken.cu:{marker_line('broken.cu', m)}" in v, f"@{m} line not named: {v}"


@pytest.mark.parametrize("order", ORDERS)
def test_uninitialised_shared_memory_reads_poison(builds, order):
    assert verdict(run(builds, "broken", "uninit_smem", CUDAEMU_ORDER=order)).startswith("WRONG")


@pytest.mark.parametrize("prog", ["broken", "broken_threads", "broken_asan"])
@pytest.mark.parametrize("case", ["uninit_static_smem", "uninit_static_smem_device"])
def test_uninitialised_static_shared_memory_reads_poison(builds, prog, case):
    """Static __shared__ (in the kernel, and 'static __shared__' in a template __device__ function)
    is poisoned before every block. One worker runs all blocks, so without the poison the later
    blocks would read the previous block's values and the first one zeros: both finite."""
    assert verdict(run(builds, prog, case, CUDAEMU_WORKERS=1)).startswith("WRONG")
    assert verdict(run(builds, prog, case, CUDAEMU_WORKERS=1, CUDAEMU_POISON=0)).startswith("SILENT")


@pytest.mark.parametrize("case,expected", [("uninit_static_smem", "WRONG"), ("uninit_static_smem_device", "WRONG"),
                                           ("uninit_smem", "WRONG"), ("spin_volatile", "SILENT")])
def test_dlopened_module_poisons_and_preempts(builds, case, expected):
    """In a dlopen'ed module (like _C_emu) static __shared__ lives in dynamically allocated TLS,
    reached through __tls_get_addr, and the watchdog runs inside the host process."""
    v = verdict(run(builds, "dlopen_driver", binary(builds, "libbroken.so"), case, CUDAEMU_WORKERS=1))
    assert v.split(" ")[0] == expected, v


def test_stripped_program_says_static_shared_may_not_be_poisoned(builds, tmp_path):
    """The static __shared__ variables are found in the ELF symbol table; without one, say so."""
    strip = shutil.which("strip")
    if strip is None:
        pytest.skip("no 'strip' on PATH (binutils)")
    stripped = tmp_path / "broken_stripped"
    shutil.copy(binary(builds, "broken"), stripped)
    subprocess.run([strip, str(stripped)], check=True)
    p = subprocess.run([str(stripped), "uninit_static_smem"], capture_output=True, text=True, timeout=TIMEOUT)
    assert p.returncode == 0 and "has no symbol table (stripped?)" in p.stderr, p.stdout + p.stderr


# ------------------------------------------------------------------ spin-waits
@pytest.mark.parametrize("prog,case", [("broken", "spin_lock"), ("broken_threads", "spin_lock"),
                                       ("broken_asan", "spin_lock"), ("broken", "spin_volatile"),
                                       ("broken_threads", "spin_volatile")])
def test_released_spin_wait_finishes(builds, prog, case):
    """Polling memory another thread of the block writes is legal since Volta. Atomics, fences and
    __nanosleep are spin points where the other threads run; a spin on a plain volatile load is
    preempted by the watchdog (fiber mode) or by the OS (thread mode)."""
    assert verdict(run(builds, prog, case)) == "SILENT"


@pytest.mark.parametrize("prog", ["broken", "broken_asan"])
def test_unreleased_spin_lock_is_reported_with_line(builds, prog):
    v = verdict(run(builds, prog, "spin_lock_unreleased", CUDAEMU_TIMEOUT=1))
    assert v.startswith("DETECTED cudaErrorLaunchFailure: stall in kernel 'spin_lock_kernel'"), v
    assert re.search(rf"spin at atomicCAS at \S*broken\.cu:{marker_line('broken.cu', 'spin_lock')}\b", v), v


def test_unreleased_volatile_spin_is_preempted_and_reported(builds):
    v = verdict(run(builds, "broken", "spin_volatile_unreleased", CUDAEMU_TIMEOUT=1))
    assert v.startswith("DETECTED cudaErrorLaunchFailure: stall in kernel 'spin_volatile_kernel'"), v
    assert "1 thread(s) were preempted while running" in v, v


@pytest.mark.parametrize("prog,case,says", [
    # ASan builds cannot preempt a fiber: past CUDAEMU_TIMEOUT the watchdog names it and aborts
    ("broken_asan", "spin_volatile_unreleased", "Aborting instead of hanging"),
    # thread mode cannot cancel std::threads: it reports the stall, then aborts
    ("broken_threads", "spin_lock_unreleased", "Thread mode cannot stop the spinning threads"),
])
def test_unstoppable_spin_aborts_instead_of_hanging(builds, prog, case, says):
    p = run(builds, prog, case, CUDAEMU_TIMEOUT=1)
    assert p.returncode != 0 and says in p.stderr, (p.returncode, p.stderr[-2000:])
    kernel = case.replace("_unreleased", "_kernel")
    assert f"kernel '{kernel}'" in p.stderr and re.search(r"thread \(\d+,0,0\)", p.stderr), p.stderr[-2000:]


def test_abort_mode_aborts_with_message(builds):
    p = run(builds, "broken", "divergent_barrier", CUDAEMU_ABORT=1)
    assert p.returncode != 0 and "divergent barrier" in p.stderr, (p.returncode, p.stderr)


@pytest.mark.parametrize("prog,case,kind", [("broken_asan", "oob_global", "heap-buffer-overflow"),
                                            ("broken_asan", "oob_smem", "heap-buffer-overflow"),
                                            ("broken_threads_asan", "oob_static_smem", "global-buffer-overflow")])
def test_out_of_bounds_caught_by_asan(builds, prog, case, kind):
    p = run(builds, prog, case)
    assert p.returncode != 0, f"ASan stayed silent:\n{p.stdout}"
    assert kind in p.stderr, p.stderr[-4000:]
    assert f"broken.cu:{marker_line('broken.cu', case)}" in p.stderr, p.stderr[-4000:]


@pytest.mark.parametrize("case", sorted(REPORTED))
def test_error_paths_are_clean_under_asan(builds, case):
    """Cancelling fibers after an error unwinds their stacks: no ASan report, no leak."""
    p = run(builds, "broken_asan", case)
    assert verdict(p).startswith("DETECTED"), p.stdout
    assert "Sanitizer" not in p.stderr, p.stderr[-4000:]


# ------------------------------------------------------------------ ThreadSanitizer
def test_tsan_is_quiet_on_correct_reduction(builds):
    p = run(builds, "tsan", "reduce")
    assert p.returncode == 0 and "reduce PASS" in p.stdout, p.stdout + p.stderr[-4000:]
    assert "ThreadSanitizer" not in p.stderr, p.stderr[-4000:]


def test_tsan_flags_missing_barrier_race(builds):
    p = run(builds, "tsan", "racy")
    assert "WARNING: ThreadSanitizer: data race" in p.stderr, f"TSan stayed silent:\n{p.stdout}"
    lines = {f"tsan.cu:{marker_line('tsan.cu', m)}" for m in ("racy_write", "racy_read")}
    assert any(l in p.stderr for l in lines), p.stderr[-4000:]


# ------------------------------------------------------------------ real CUDA + torch
def test_same_source_compiles_with_nvcc(builds):
    p = builds["results"]["nvcc"]
    if p is None:
        pytest.skip("nvcc not found (set CUDA_HOME or put nvcc on PATH)")
    assert p.returncode == 0, p.stderr[-4000:]


def test_header_compiles_after_torch_extension(builds):
    p = builds["results"]["torch_include"]
    if p is None:
        pytest.skip("torch is not importable in this interpreter")
    assert p.returncode == 0, p.stderr[-4000:]


# ------------------------------------------------------------------ the opt-in parts
CORE_KERNEL = """#include "cudaemu.h"
__global__ void k(float* x) {
  extern_dynamic_or_static
  t[threadIdx.x] = 1.f;
  __syncthreads();
  x[threadIdx.x] = t[31 - threadIdx.x];
}
"""


@pytest.mark.parametrize("decl,switch,ok", [
    ("CUDAEMU_DYNAMIC_SHARED(float, t);", None, True),   # the core: what the project's kernels use
    ("__shared__ float t[32];", None, False),            # refused, naming the switch
    ("__shared__ float t[32];", "-DCUDAEMU_STATIC_SHARED", True),
])
def test_static_shared_memory_is_behind_its_switch(tmp_path, decl, switch, ok):
    src = tmp_path / "k.cu"
    src.write_text(CORE_KERNEL.replace("extern_dynamic_or_static", decl))
    core = [a for a in BASE if a not in SWITCHES] + ([switch] if switch else [])
    p = subprocess.run([CXX, "-fsyntax-only", *core, str(src)], capture_output=True, text=True, timeout=TIMEOUT)
    assert (p.returncode == 0) == ok, p.stderr[-3000:]
    if not ok:
        assert "-DCUDAEMU_STATIC_SHARED" in p.stderr, p.stderr[-3000:]
