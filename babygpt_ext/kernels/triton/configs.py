"""Autotune configurations for the Triton kernels, per GPU generation.

Each list is ordered best-guess first: `babygpt gpu-report` treats the first entry of a list
as "the" configuration of a kernel, so it must suit every head dim. The compile test
(tests/test_triton_compile.py) compiles every entry for its arch at the head dims it is kept
for, and fails on any spill or missing tensor-core instruction. An entry measured to spill at
one head dim (`babygpt gpu-report --all-configs`) says so with head_dims=...: the autotuner's
early prune (prune_for_head_dim) then only offers it at those head dims.

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



def _C(kwargs: dict, num_warps: int, num_stages: int, head_dims: "tuple | None" = None) -> triton.Config:
    """A triton.Config, plus the BLOCK_D values it is measured spill-free at (None: 64 and 128)."""
    c = triton.Config(kwargs, num_warps=num_warps, num_stages=num_stages)
    c.head_dims = head_dims
    return c


# Ampere (sm_80, 164 KiB smem/SM, 65536 regs/SM). Attention tiles of 128x64 with 4 warps are
# FlashAttention-2's choice for D <= 64; D = 128 halves the key tile to stay spill-free.
# head_dims restrictions below: spills measured with `babygpt gpu-report --all-configs` (fp16
# and bf16 alike), per thread, at the head dim the entry is NOT kept for.
AMPERE = {
    ATTN_FWD: [
        _C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=4, num_stages=2, head_dims=(64,)),  # 72 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3, head_dims=(64,)),  # 8 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
    ],
    # dK/dV holds K, V and two fp32 accumulators per key row: measured with the compile test,
    # (32, 64, 4 warps) spills 24 B/thread at D = 64; (32, 32, 4 warps) is spill-free up to D = 128.
    ATTN_BWD_DKDV: [
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        _C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2, head_dims=(128,)),  # 8 B at 64
        _C({"BLOCK_M": 16, "BLOCK_N": 64}, num_warps=4, num_stages=2, head_dims=(64,)),  # 8 B at 128
    ],
    ATTN_BWD_DQ: [
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=2),
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 128, "BLOCK_N": 32}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 64, "BLOCK_N": 16}, num_warps=4, num_stages=2),
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
        _C({"BLOCK_M": 128, "BLOCK_N": 128}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=4, num_stages=3),
    ],
    # (32, 64, 4 warps) spills 48 B/thread at D = 128; 8 warps split the accumulators spill-free.
    ATTN_BWD_DKDV: [
        _C({"BLOCK_M": 32, "BLOCK_N": 64}, num_warps=8, num_stages=2),
        _C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=2, head_dims=(64,)),  # 16 B at 128
        _C({"BLOCK_M": 64, "BLOCK_N": 64}, num_warps=8, num_stages=2, head_dims=(64,)),  # 32 B at 128
    ],
    ATTN_BWD_DQ: [
        _C({"BLOCK_M": 64, "BLOCK_N": 32}, num_warps=4, num_stages=3),
        _C({"BLOCK_M": 128, "BLOCK_N": 64}, num_warps=8, num_stages=2),
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


def kept_for_head_dim(config: triton.Config, block_d: int) -> bool:
    """Whether `config` is offered at BLOCK_D = block_d. head_dims (see _C) name the measured
    buckets: 64 stands for BLOCK_D <= 64 and 128 for 128; at 256 only unrestricted tiles of at
    most 64 x 64 are offered."""
    dims = getattr(config, "head_dims", None)
    if block_d > 128:
        return dims is None and config.kwargs["BLOCK_M"] * config.kwargs["BLOCK_N"] <= 64 * 64
    return dims is None or (64 if block_d <= 64 else 128) in dims


def prune_for_head_dim(configs_, named_args, **kwargs):
    """The configs kept for this launch's BLOCK_D: those measured spill-free there, and for wide
    heads (BLOCK_D = 256) only tiles of at most 64 x 64.

    Used as triton.autotune's early_config_prune, which passes positional arguments in named_args
    and keyword ones (our constexprs, BLOCK_D among them) in kwargs. Keeps at least one config.
    """
    block_d = kwargs.get("BLOCK_D", named_args.get("BLOCK_D", 64))
    kept = [c for c in configs_ if kept_for_head_dim(c, block_d)]
    return kept or [_C({"BLOCK_M": 32, "BLOCK_N": 32}, num_warps=4, num_stages=1)]
