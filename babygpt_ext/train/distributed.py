"""Distributed data parallel (DDP) under ``torchrun``: process-group setup and small helpers.

torchrun starts one process per worker and sets RANK, LOCAL_RANK and WORLD_SIZE; without those
variables this is a single process and every helper here is a no-op. The backend is gloo on the
CPU and nccl on CUDA (each process then owns GPU ``LOCAL_RANK``).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes logs, metrics, plots and checkpoints."""
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for but torch sees no CUDA GPU; use --device cpu")
    return device


def setup(device: str = "auto") -> DistInfo:
    """Join the process group if launched by torchrun (idempotent); return this process's place."""
    device = resolve_device(device)
    if not launched_by_torchrun():
        return DistInfo(device=device)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return DistInfo(rank=rank, local_rank=local_rank, world_size=world, device=device)


def teardown() -> None:
    """Leave the process group together: a rank that tears gloo down while its peer is still
    finishing (rank 0 writing the last checkpoint) can abort in gloo's connection threads
    ("terminate called without an active exception", seen once in CI here). No barrier while an
    exception is unwinding (teardown runs in `finally`): the peer may never arrive."""
    if dist.is_available() and dist.is_initialized():
        if sys.exc_info()[0] is None:
            dist.barrier()
        dist.destroy_process_group()


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Mean of a tensor over all ranks (a copy; the input is untouched). Identity when single-process."""
    if not info.enabled:
        return value
    out = value.detach().clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out / info.world_size


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
