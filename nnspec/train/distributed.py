"""Multi-process data parallelism: ``torchrun --nproc_per_node=N -m nnspec train SPEC``.

The model is wrapped in DistributedDataParallel (gloo on CPU, NCCL on CUDA).
``train.batch_size`` stays the *global* batch: every rank draws the same
permutation (same seed) and takes its own contiguous slice of each global
batch, so N processes take the same optimization steps as one process would,
up to float rounding. Only rank 0 writes files.

Everything here is a no-op for a single process, so the trainer calls it
unconditionally and reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "Dist",
    "from_env",
    "setup",
    "teardown",
    "device_for",
    "shard",
    "all_reduce_sum",
    "all_reduce_min",
    "all_reduce_max",
    "all_gather",
    "broadcast_text",
    "barrier",
    "wrap",
]


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (rank 0 of 1 when not launched by torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialized the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def from_env() -> Dist:
    """Read the rank and world size torchrun puts in the environment."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return Dist(int(os.environ.get("RANK", "0")), world, int(os.environ.get("LOCAL_RANK", "0")))


def setup(device_type: str) -> Dist:
    """Join the process group if launched with several processes (gloo on CPU, NCCL on CUDA)."""
    info = from_env()
    if not info.enabled or dist.is_initialized():
        return info
    if device_type == "cuda":
        torch.cuda.set_device(info.local_rank)
    dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")
    return Dist(info.rank, info.world_size, info.local_rank, owns_group=True)


def teardown(info: Dist) -> None:
    if info.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def device_for(info: Dist, device_type: str) -> torch.device:
    """Each rank gets its own GPU (``cuda:LOCAL_RANK``); on CPU all share the host."""
    if device_type == "cuda":
        return torch.device("cuda", info.local_rank if info.enabled else torch.cuda.current_device())
    return torch.device("cpu")


def shard(indices: torch.Tensor, info: Dist) -> torch.Tensor:
    """This rank's contiguous slice of a global batch (sizes differ by at most one)."""
    if not info.enabled:
        return indices
    return indices.tensor_split(info.world_size)[info.rank]


def all_reduce_sum(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    """Sum ``tensor`` over ranks, in place (identity for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_reduce_max(tensor: torch.Tensor, info: Dist) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tensor


def broadcast_text(text: str | None, info: Dist) -> str | None:
    """Rank 0's string on every rank (e.g. the timestamped run directory)."""
    if not info.enabled:
        return text
    box = [text]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather(obj: Any, info: Dist) -> list[Any]:
    """Every rank's ``obj``, in rank order (used to checkpoint per-rank RNG streams on rank 0)."""
    if not info.enabled:
        return [obj]
    gathered: list[Any] = [None] * info.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def barrier(info: Dist) -> None:
    if info.enabled:
        dist.barrier()


def wrap(model: nn.Module, info: Dist, device: torch.device) -> nn.Module:
    """DDP-wrap ``model`` when several processes train it; the module itself otherwise."""
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)
