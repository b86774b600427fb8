"""The gradient fuzzer (tests/fuzz_gradients.py) with a small fixed budget per backend: seeded random
shapes, dtypes, GQA, Tq <= Tk, scales and strided layouts, every output and gradient within the
tolerance rule of the float64 reference. Larger runs: `python tests/fuzz_gradients.py --cases 2000`."""

import io

import pytest

from conftest import CPU_BACKENDS, SLOW_BACKENDS
from fuzz_gradients import fuzz

CASES = {"fast": 12, "slow": 3}  # a few seconds per backend here


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_fuzzed_cases_are_within_the_tolerance_rule(backend):
    report = io.StringIO()
    n, worst, worst_case, failures = fuzz(backend, CASES["slow" if backend in SLOW_BACKENDS else "fast"], seed=0,
                                          out=report)
    assert not failures, report.getvalue()
    assert n > 0 and 0.0 < worst <= 1.0, f"worst ratio {worst} ({worst_case})"
