"""Autotune configurations for the Triton kernels, per GPU generation.

Each list is ordered best-guess first: `babygpt gpu-report` treats the first entry of a list
as "the" configuration of a kernel, so it must suit every head dim. The compile test
(tests/test_triton_compile.py) compiles every entry for its arch at the head dims it is kept
for, with and without attention dropout, and fails on any spill or missing tensor-core
instruction. An entry measured to spill at one head dim (`babygpt gpu-report --all-configs`) says
so with head_dims=..., and dropout_dims=... names the head dims where it is also kept with dropout
(whose Philox rounds hold registers of their own): the autotuner's early prune
(prune_for_head_dim) offers an entry only where it was measured spill-free.

Under TRITON_INTERPRET=1 every kernel gets one small configuration: the interpreter runs each
`tl` operation as a numpy call, so autotuning there would only multiply the (slow) test time.
The other configurations are still exercised in the interpreter by tests/test_triton_kernels.py,
which runs each of them once on a small shape, so a block size that breaks a mask is caught here.
"""

import os

import triton

# Kernel families. Every kernel of a family shares the same meta-parameter names.
ATTN_FWD = "attn_fwd"  # BLOCK_M query rows x BLOCK_N keys per step
ATTN_BWD_DKDV = "attn_bwd_dkdv"  # BLOCK_N keys held, BLOCK_M query rows per step
ATTN_BWD_DQ = "attn_bwd_dq"  # BLOCK_M query rows held, BLOCK_N keys per step
LORA = "lora"  # BLOCK_M x BLOCK_N output tile, BLOCK_K reduction step, GROUP_M swizzle



def _C(kwargs: dict, num_warps: int, num_stages: int, head_dims: "tuple | None" = None,
       dropout_dims: "tuple | None" = None, maxnreg: "int | None" = None) -> triton.Config:
    """A triton.Config, plus the BLOCK_D values it is measured spill-free at (None: 64 and 128) and
    those of them it is spill-free at with dropout (None: all of them)."""
    c = triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages, maxnreg=maxnreg)
    c.head_dims = head_dims
    c.dropout_dims = dropout_dims
    return c


# Ampere (sm_80, 164 KiB smem/SM, 65536 regs/SM). Attention tiles of 128x64 with 4 warps are
# FlashAttention-2's choice for D <= 64; D = 128 halves the key tile to stay spill-free.
# head_dims/dropout_dims restrictions below: spills measured with the compile test (fp16 and
# bf16), per thread, at the head dim the entry is NOT kept for. (16, 64, 4 warps) is left out of
# dK/dV: 8-48 B at D = 64 since the non-finite path (attention.py _any_nonfinite) is compiled in.
AMPERE = {
    ATTN_FWD: [
        _C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2, dropout_dims=(64,)),  # 240 B at 128
        _C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=2, head_dims=(64,)),  # 72 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3, head_dims=(64,)),  # 8 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    ],
    # dK/dV holds K, V and two fp32 accumulators per key row: (32, 64, 4 warps) spills 24 B/thread at
    # D = 64; 8 warps over 32 x 32 tiles are the ones spill-free at D = 128 with dropout.
    ATTN_BWD_DKDV: [
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2, dropout_dims=(64,)),  # 24 B at 128
        _C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2, head_dims=(128,),  # 8 B at 64
           dropout_dims=()),  # 8-24 B
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    ],
    # Without .maxnreg, ptxas stops the (64, 32) and (64, 16) dQ kernels at 168 registers at D = 64 (three
    # blocks per SM) and spills 8 B; given 255 it uses ~200 and spills nothing.
    ATTN_BWD_DQ: [
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2, maxnreg=255),
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=2, maxnreg=255),
    ],
    LORA: [
        _C({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=8, num_stages=3),
        _C({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        _C({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
        _C({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=3),
        _C({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=2, num_stages=3),
    ],
}

# Hopper (sm_90, 228 KiB smem/SM). Triton lowers tl.dot to wgmma when a warpgroup (4 warps)
# owns at least 64 rows, so every first entry keeps BLOCK_M >= 64 with 4 or 8 warps; deeper
# pipelines pay off with the larger shared memory.
HOPPER = {
    ATTN_FWD: [
        _C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=3),
        _C({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2, dropout_dims=()),  # 32-152 B
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3, dropout_dims=(64,)),  # 16 B at 128
    ],
    # (32, 64, 4 warps) spills 48 B/thread at D = 128; 8 warps split the accumulators spill-free.
    # (64, 64, 8 warps) is left out: 32 B at D = 64 with the non-finite path, 100+ B with dropout.
    ATTN_BWD_DKDV: [
        _C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2, dropout_dims=(64,)),  # 64 B at 128
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2, head_dims=(64,)),  # 16 B at 128
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=8, num_stages=2),
    ],
    ATTN_BWD_DQ: [
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3),
        _C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2, dropout_dims=(64,)),  # 8 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=2, head_dims=(64,)),  # 48 B at 128
    ],
    # (128 x 256, 8 warps) is left out: it spills 776 B/thread.
    LORA: [
        _C({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        _C({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ],
}

# One small configuration per family for the interpreter (tiles >= 16: tl.dot's minimum on GPU,
# kept here so the interpreter runs the same code shape a GPU would).
INTERPRETER = {
    ATTN_FWD: [_C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)],
    ATTN_BWD_DKDV: [_C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)],
    ATTN_BWD_DQ: [_C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)],
    LORA: [_C({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)],
}

BY_ARCH = {80: AMPERE, 90: HOPPER}


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def arch_of(capability: tuple) -> int:
    """The table to use for a compute capability: Hopper for 9.x and newer, Ampere otherwise."""
    return 90 if capability[0] >= 9 else 80


def configs(family: str, arch: "int | None" = None) -> list:
    """The autotune list for `family` on `arch` (80/90), or the interpreter's single config."""
    if arch is None and interpreting():
        return INTERPRETER[family]
    return BY_ARCH[arch or 80][family]


def kept_for_head_dim(config: triton.Config, block_d: int, dropout: bool = False) -> bool:
    """Whether `config` is offered at BLOCK_D = block_d (with dropout compiled in, if `dropout`).
    head_dims and dropout_dims (see _C) name the measured buckets: 64 stands for BLOCK_D <= 64 and
    128 for 128; at 256 only unrestricted tiles of at most 64 x 64 are offered."""
    dims = getattr(config, "head_dims", None)
    drop_dims = getattr(config, "dropout_dims", None) if dropout else None
    if block_d > 128:
        return dims is None and drop_dims is None and config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] <= 64 * 64
    bucket = 64 if block_d <= 64 else 128
    return (dims is None or bucket in dims) and (drop_dims is None or bucket in drop_dims)


def prune_for_head_dim(configs_, named_args, **kwargs):
    """The configs kept for this launch's BLOCK_D and DROPOUT: those measured spill-free there, and
    for wide heads (BLOCK_D = 256) only tiles of at most 64 x 64.

    Used as triton.autotune's early_config_prune, which passes positional arguments in named_args
    and keyword ones (our constexprs, BLOCK_D among them) in kwargs. Keeps at least one config.
    """
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    dropout = bool(kwargs.get("DROPOUT", named_args.get("DROPOUT", False)))
    kept = [c for c in configs_ if kept_for_head_dim(c, block_d, dropout)]
    return kept or [_C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
