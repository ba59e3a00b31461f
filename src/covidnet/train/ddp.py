"""The process group of a ``torchrun`` launch: this process's place in it, and the collectives training uses.

Launched by ``torchrun`` (``WORLD_SIZE`` > 1) every process joins the default process group
(NCCL on GPUs, gloo on CPUs); launched alone it is rank 0 of 1 and nothing here talks to
another process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(frozen=True)
class DistContext:
    """This process's place among the training processes.

    Attributes:
        rank: its global rank.
        world: the number of processes.
        local_rank: its rank on this node (its GPU index).
    """

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes checkpoints and outputs."""
        return self.rank == 0


def init_distributed(device_kind: str) -> DistContext:
    """Join the process group when launched by ``torchrun`` (``WORLD_SIZE`` > 1).

    Args:
        device_kind: ``cuda`` (NCCL) or ``cpu`` (gloo).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return DistContext(rank=dist.get_rank(), world=dist.get_world_size(),
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def wrap_model(model, dist: DistContext, device):
    """``model`` in ``DistributedDataParallel`` when there are several processes, else ``model`` itself."""
    if dist.world <= 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_mean(total: float, count: int, dist: DistContext) -> float:
    """``sum(total) / sum(count)`` over all processes (float64); ``total / count`` alone; 0 counts as 1."""
    if dist.world > 1:
        import torch
        import torch.distributed as tdist

        t = torch.tensor([total, float(count)], dtype=torch.float64)
        tdist.all_reduce(t)
        total, count = float(t[0]), int(t[1])
    return total / max(count, 1)


def barrier(dist: DistContext) -> None:
    """Wait for every process (nothing when alone)."""
    if dist.world > 1:
        import torch.distributed as tdist

        tdist.barrier()
