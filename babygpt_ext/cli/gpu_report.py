"""`babygpt gpu-report`: registers, shared memory, spills and tensor-core use of every GPU kernel,
compiled here for sm_80 and sm_90 (no GPU needed), with roofline predictions for the benchmark shapes."""

EPILOG = """\
what it does:
  Compiles each Triton kernel (fp16 and bf16; attention at head dims 64 and 128) for sm_80 (A100)
  and sm_90 (H100) with triton.compile, reads the cubin back with cuobjdump, and prints per
  kernel x arch x dtype: registers per thread, shared memory per block, spilled bytes (must be 0),
  tensor-core instructions in the SASS (HMMA, or HGMMA = wgmma on sm_90), and the roofline time
  max(FLOPs / peak, bytes / bandwidth) for the benchmark shapes of docs/design.md §14.2.
  CUDA C++ kernels join the table from the built extension's cubins (babygpt_ext._C with CUDA).
  The first run compiles ~40 kernels (92 with --all-configs) in 2 processes (~1-2 min here);
  Triton's cache makes reruns fast. --all-configs shows each configuration at the head dims its
  autotune list offers it at (configs that spill elsewhere are restricted, see configs.py).

examples:
  babygpt gpu-report                   first autotune configuration of each kernel
  babygpt gpu-report --all-configs     every configuration of the Ampere and Hopper lists
  babygpt gpu-report --json > r.json   rows as a JSON list (kernel, backend, arch, dtype, regs,
                                       smem, spill_bytes, tensor_core_instrs, predicted_ms, ...)
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("gpu-report", help="static register/smem/spill/tensor-core report of the GPU kernels",
                              description=__doc__, epilog=EPILOG)
    p.add_argument("--json", action="store_true", help="print the rows as a JSON list instead of a table")
    p.add_argument("--all-configs", action="store_true",
                   help="one row per autotune configuration (default: the first, which the autotuner tries first)")
    p.add_argument("--backend", action="append", choices=("triton", "cuda"),
                   help="only these backends' kernels (repeatable; default both)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..gpu_report.report import collect_rows, format_table, to_json
    rows, notes = collect_rows(args.all_configs, tuple(args.backend or ("triton", "cuda")))
    if args.json:
        print(to_json(rows))
    else:
        print(format_table(rows, with_config=args.all_configs))
        for n in notes:
            print("note:", n)
    failed = [r for r in rows if r.error]
    return 1 if failed else 0
