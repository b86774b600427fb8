"""Rules the CUDA kernel sources must keep so the emulator can prove them.

cudaemu poisons dynamic shared memory before every block (a read-before-write then reads NaN and
fails the reference check), but it cannot reach static `__shared__` variables (the macro never
sees their address), so those would keep the previous block's values. Until it can, the
project's kernels use dynamic shared memory only, and this test keeps it that way.
"""

import re
from pathlib import Path

CUDA = Path(__file__).resolve().parents[1] / "csrc" / "cuda"


def code_without_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", lambda m: "\n" * m.group(0).count("\n"), text, flags=re.S)  # keep line numbers
    return re.sub(r"//[^\n]*", "", text)


def test_kernels_use_only_dynamic_shared_memory():
    sources = sorted(CUDA.glob("*.cu*")) + sorted(CUDA.glob("*.h"))
    assert sources, f"no CUDA sources under {CUDA}"
    offenders = [f"{p.name}:{i}" for p in sources
                 for i, line in enumerate(code_without_comments(p.read_text()).splitlines(), 1)
                 if re.search(r"\b__shared__\b", line)]
    assert not offenders, ("static __shared__ is not poisoned by cudaemu; use CUDAEMU_DYNAMIC_SHARED: "
                           + ", ".join(offenders))
    assert any("CUDAEMU_DYNAMIC_SHARED" in p.read_text() for p in sources)
