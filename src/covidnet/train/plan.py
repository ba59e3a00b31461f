"""The step plan of one epoch: which samples each process runs in each optimiser step.

* ``batch_size`` is the *global* batch of one optimiser step. Each process takes its share
  of it (``torchrun``: rank ``r`` of ``W`` takes samples ``r, r + W, ...`` of the step) and
  runs it in micro-batches of ``micro_batch_size`` (gradient accumulation, for memory). The
  loop divides the per-sample loss sum by the step's global size, so one process, several
  micro-batches or several processes compute the same gradient (up to floating-point
  order); COVIDNet uses instance or group norm, which see one sample at a time, so no
  statistic changes with the split.
* The sample order of epoch ``e`` is a permutation drawn from ``seed`` and ``e`` alone (its
  own generator, never the global one), so a run resumed after epoch ``e - 1`` sees the same
  order as an uninterrupted run.

:func:`step_plan` is a pure function of these numbers: every process computes the whole
plan and keeps its own share.
"""

from __future__ import annotations

from typing import NamedTuple


class Step(NamedTuple):
    """One optimiser step of one process.

    Attributes:
        size: the step's global batch (all processes together): the loss divisor.
        micro_batches: this process's micro-batches, lists of sample indices; ``[[]]`` when
            its share is empty (it still joins the gradient all-reduce).
    """

    size: int
    micro_batches: list[list[int]]


def epoch_seed(seed: int, epoch: int) -> int:
    """The seed of epoch ``epoch``'s sample order."""
    return seed * 100_003 + epoch


def step_plan(n_samples: int, batch_size: int, micro_batch_size: int | None, seed: int, epoch: int,
              rank: int = 0, world: int = 1) -> list[Step]:
    """The steps of one epoch for process ``rank`` of ``world``.

    Args:
        n_samples: samples in the training split.
        batch_size: the global batch of one step; the last step holds the remainder.
        micro_batch_size: samples per forward pass, or None for a process's whole share.
        seed: the training seed.
        epoch: the epoch, from 1.
        rank: this process's rank.
        world: the number of processes.

    Returns:
        One :class:`Step` per ``ceil(n_samples / batch_size)`` steps: its global size and this
        process's micro-batches (samples ``rank, rank + world, ...`` of the step, in chunks of
        ``micro_batch_size``).

    Raises:
        ValueError: a count below its minimum, or ``rank`` outside ``[0, world)``.
    """
    import torch

    if n_samples < 0:
        raise ValueError(f"n_samples must be >= 0, got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if micro_batch_size is not None and micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be >= 1 or None, got {micro_batch_size}")
    if world < 1 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} of world {world}: need world >= 1 and 0 <= rank < world")
    micro = micro_batch_size or batch_size
    order = torch.randperm(n_samples, generator=torch.Generator().manual_seed(epoch_seed(seed, epoch)))
    plan = []
    for s in range(0, len(order), batch_size):
        step = order[s : s + batch_size]
        mine = step[rank::world].tolist()
        chunks = [mine[c : c + micro] for c in range(0, len(mine), micro)] or [[]]
        plan.append(Step(len(step), chunks))
    return plan


def loader_batches(plan: list[Step]) -> list[list[int]]:
    """The plan's non-empty micro-batches in order: the DataLoader's ``batch_sampler``."""
    return [chunk for step in plan for chunk in step.micro_batches if chunk]
