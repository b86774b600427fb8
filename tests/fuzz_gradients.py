"""Gradient fuzzer: random attention calls on one backend — shapes, dtypes, GQA/MQA, Tq <= Tk, causal or
not, scales (default, random, zero, negative), strided layouts — each output and gradient compared with
the float64 reference on the same (rounded) inputs under the tolerance rule of tests/tolerance.py.

    PYTHONPATH=$PWD .venv/bin/python tests/fuzz_gradients.py --backend cpu --cases 2000 [--seed 0]
    PYTHONPATH=$PWD .venv/bin/python tests/fuzz_gradients.py --backend cpu --seed 0 --only 137   # one case again

prints each failing case (with the command that reruns it) and a summary line: cases, the worst ratio
of an error to the error the rule allows (<= 1 passes), failures. Exit status 1 when a case fails.
tests/test_fuzz_gradients.py runs a small fixed budget of it per backend inside the suite.
"""

import argparse
import os
import random
import sys
import time
from dataclasses import dataclass

import torch

from rounding_floor import floors
from tolerance import FWD_FACTOR, GRAD_FACTOR, bound_ratio

# The interpreter and the emulator run kernels thread by thread: their cases are kept small.
SLOW = {"triton", "cuda_emu"}
LAYOUTS = ("contiguous", "bthd", "padded_rows", "strided_cols")


@dataclass(frozen=True)
class Case:
    seed: int
    index: int
    b: int
    h: int
    hkv: int
    tq: int
    tk: int
    d: int
    causal: bool
    dtype: torch.dtype
    scale: float
    layouts: tuple  # one of LAYOUTS for each of q, k, v, dout

    def __str__(self):
        return (f"case {self.index} (seed {self.seed}): B{self.b} H{self.h} Hkv{self.hkv} Tq{self.tq} Tk{self.tk} "
                f"D{self.d} {'causal' if self.causal else 'full'} {str(self.dtype)[6:]} scale {self.scale:.4g} "
                f"layouts {'/'.join(self.layouts)}")


def dtypes_of(backend: str) -> list:
    from babygpt_ext import ops
    from babygpt_ext.ops.spec import Call
    return [dt for dt in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
            if ops.BACKENDS[backend].refuses(Call("attention", "cpu", dt, 8)) is None]


def draw(seed: int, index: int, backend: str, dtypes: list) -> Case:
    """Case `index` of a seeded run: drawn from its own generator, so it can be rerun alone."""
    rng = random.Random(seed * 1_000_003 + index)
    slow = backend in SLOW
    t_max, d_max = (40, 64) if slow else (128, 256)
    hkv = rng.randint(1, 2)
    h = hkv * rng.choice((1, 1, 2, 3, 4))
    causal = rng.random() < 0.7
    tq = max(1, int(t_max ** rng.random()))  # log-uniform: short sequences and edges often
    tk = tq + (int(t_max ** rng.random()) if rng.random() < 0.5 else 0) if causal else max(1, int(t_max ** rng.random()))
    d = rng.choice((rng.randint(1, 16), rng.randint(1, d_max), 2 ** rng.randint(3, d_max.bit_length() - 1)))
    u = rng.random()
    scale = d ** -0.5 if u < 0.5 else rng.uniform(0.01, 2.0) if u < 0.7 else 0.0 if u < 0.8 else -rng.uniform(0.01, 2.0)
    return Case(seed, index, rng.randint(1, 2), h, hkv, tq, tk, d, causal, rng.choice(dtypes), scale,
                tuple(rng.choice(LAYOUTS) for _ in range(4)))


def tensor(g: torch.Generator, layout: str, b: int, n: int, t: int, d: int):
    """Draws (b, n, t, d) values in a memory layout; returns dtype -> that view of the values rounded to dtype."""
    if layout == "bthd":  # a model's head split: (B, T, H, D) viewed as (B, H, T, D)
        base, view = torch.randn(b, t, n, d, generator=g, dtype=torch.float64), lambda x: x.transpose(1, 2)
    elif layout == "padded_rows":  # rows further apart than D (a slice of a fused projection)
        base, view = torch.randn(b, n, t, d + 3, generator=g, dtype=torch.float64), lambda x: x[..., :d]
    elif layout == "strided_cols":  # the head dim itself strided
        base, view = torch.randn(b, n, t, 2 * d, generator=g, dtype=torch.float64), lambda x: x[..., ::2]
    else:
        base, view = torch.randn(b, n, t, d, generator=g, dtype=torch.float64), lambda x: x
    return lambda dtype: view(base.to(dtype))


def run_case(case: Case, backend: str):
    """(worst ratio over o, dq, dk, dv, what failed or None)."""
    from babygpt_ext import ops
    from babygpt_ext.ops import reference

    g = torch.Generator().manual_seed(case.seed * 1_000_003 + case.index)
    shapes = ((case.h, case.tq), (case.hkv, case.tk), (case.hkv, case.tk), (case.h, case.tq))
    q, k, v, dout = (tensor(g, lay, case.b, n, t, case.d) for lay, (n, t) in zip(case.layouts, shapes))

    def fwd_bwd(fn, dtype, widen=False):
        # widen: the inputs rounded to the case's dtype, then computed in float64 (the reference).
        leaves = [(t(dtype).double() if widen else t(dtype)).detach().requires_grad_() for t in (q, k, v)]
        o = fn(*leaves)
        return (o.detach(), *torch.autograd.grad(o, leaves, dout(dtype).double() if widen else dout(dtype)))

    # The reference takes the inputs the backend gets (§13.2): the error of rounding them to the
    # case's dtype is the problem's, not the kernel's.
    ref = fwd_bwd(lambda *t: reference.attention(*t, case.scale, case.causal), case.dtype, widen=True)
    eager = fwd_bwd(lambda *t: reference.attention(*t, case.scale, case.causal), case.dtype)
    got = fwd_bwd(lambda *t: ops.causal_attention(*t, causal=case.causal, scale=case.scale, backend=backend),
                  case.dtype)
    floor = floors(*(t(case.dtype) for t in (q, k, v, dout)), case.scale, case.causal)
    worst, failed = 0.0, None
    for name, out, r, e, factor, fl in zip(("o", "dq", "dk", "dv"), got, ref, eager, (FWD_FACTOR,) + (GRAD_FACTOR,) * 3,
                                           floor):
        if out.shape != r.shape or out.dtype != case.dtype:
            return float("inf"), f"{name}: {tuple(out.shape)} {out.dtype}, expected {tuple(r.shape)} {case.dtype}"
        if not torch.isfinite(out).all():
            return float("inf"), f"{name}: non-finite values"
        ratio, why = bound_ratio(out, r, e, factor, fl)
        if ratio > worst:
            worst = ratio
        if ratio > 1.0 and failed is None:
            failed = f"{name}: {why}"
    return worst, failed


def fuzz(backend: str, cases: int, seed: int, only=None, out=sys.stdout, every=0):
    """Runs the cases (a progress line every `every` cases, if > 0); returns (cases run, worst ratio,
    its case, failures as (case, why))."""
    dtypes = dtypes_of(backend)
    worst, worst_case, failures = 0.0, None, []
    indices = [only] if only is not None else range(cases)
    for i in indices:
        case = draw(seed, i, backend, dtypes)
        ratio, failed = run_case(case, backend)
        if ratio > worst:
            worst, worst_case = ratio, case
        if failed:
            failures.append((case, failed))
            print(f"FAIL {case}: {failed}\n  rerun: tests/fuzz_gradients.py --backend {backend} --seed {seed} --only {i}",
                  file=out, flush=True)
        if every and (i + 1) % every == 0:
            print(f"  {i + 1} cases, worst ratio {worst:.3f}, {len(failures)} failures", file=out, flush=True)
    return len(indices), worst, worst_case, failures


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", required=True, help="a backend that takes CPU tensors (cpu, eager, sdpa, triton, cuda_emu)")
    parser.add_argument("--cases", type=int, default=200, help="how many random cases (default 200)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--only", type=int, default=None, help="run only this case index of the seed")
    args = parser.parse_args(argv)
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: CPU tensors need the interpreter
    from babygpt_ext import ops
    if args.backend not in ops.available_backends("cpu"):
        sys.exit(f"fuzz_gradients: backend {args.backend!r} is not usable on CPU tensors here "
                 f"(usable: {', '.join(ops.available_backends('cpu'))})")
    start = time.perf_counter()
    n, worst, worst_case, failures = fuzz(args.backend, args.cases, args.seed, args.only, every=100)
    print(f"{args.backend}: {n} cases, worst ratio to the tolerance {worst:.3f} ({worst_case}), "
          f"{len(failures)} failures, {time.perf_counter() - start:.0f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
