"""The step plan: sizes add up, ranks share each step without overlap, the same numbers give the same plan."""

import math

import pytest
import torch

from covidnet.train.plan import Step, epoch_seed, loader_batches, step_plan

#: (n_samples, batch_size, micro_batch_size, world)
CASES = [
    (0, 4, None, 2),    # no samples: no steps
    (12, 4, None, 1),   # whole steps, one process
    (13, 4, 3, 1),      # a remainder step; micro-batches of 3 and 1
    (13, 5, 1, 2),      # one sample per forward pass, two processes
    (7, 3, None, 3),    # the last step has one sample: two empty shares
    (7, 2, 3, 3),       # more processes than a step has samples; micro-batch above a share
    (12, 8, 3, 2),
    (1, 4, None, 3),
]


@pytest.mark.parametrize("n,batch,micro,world", CASES)
def test_sizes_add_up(n, batch, micro, world):
    for rank in range(world):
        plan = step_plan(n, batch, micro, seed=1, epoch=2, rank=rank, world=world)
        assert len(plan) == math.ceil(n / batch)
        assert [s.size for s in plan] == [min(batch, n - i * batch) for i in range(len(plan))]
        for step in plan:
            share = [i for chunk in step.micro_batches for i in chunk]
            assert len(share) == len(range(rank, step.size, world))
            limit = micro or batch
            if share:
                assert len(step.micro_batches) == math.ceil(len(share) / limit)
                assert all(len(c) == limit for c in step.micro_batches[:-1])
                assert 1 <= len(step.micro_batches[-1]) <= limit
            else:
                assert step.micro_batches == [[]]


@pytest.mark.parametrize("n,batch,micro,world", CASES)
def test_ranks_are_disjoint_and_cover_each_step(n, batch, micro, world):
    plans = [step_plan(n, batch, micro, seed=3, epoch=1, rank=r, world=world) for r in range(world)]
    order = torch.randperm(n, generator=torch.Generator().manual_seed(epoch_seed(3, 1))).tolist()
    everything = []
    for k, steps in enumerate(zip(*plans)):
        shares = [[i for chunk in s.micro_batches for i in chunk] for s in steps]
        step = order[k * batch : (k + 1) * batch]
        assert {s.size for s in steps} == {len(step)}
        for rank, share in enumerate(shares):
            assert share == step[rank::world]  # rank r takes samples r, r + W, ... of the step
        merged = sorted(i for share in shares for i in share)
        assert merged == sorted(step) and len(set(merged)) == len(merged)
        everything += merged
    assert sorted(everything) == list(range(n))


def test_one_process_follows_the_epoch_permutation():
    """The plan is the permutation of ``seed * 100_003 + epoch``, cut into steps, then micro-batches."""
    order = torch.randperm(10, generator=torch.Generator().manual_seed(7 * 100_003 + 4)).tolist()
    plan = step_plan(10, batch_size=4, micro_batch_size=3, seed=7, epoch=4)
    assert plan == [Step(4, [order[0:3], order[3:4]]), Step(4, [order[4:7], order[7:8]]), Step(2, [order[8:10]])]
    assert loader_batches(plan) == [order[0:3], order[3:4], order[4:7], order[7:8], order[8:10]]


def test_an_empty_share_is_one_empty_micro_batch():
    """3 processes, a last step of 1 sample: ranks 1 and 2 still take part in the step (the all-reduce)."""
    plans = [step_plan(7, 3, None, seed=0, epoch=1, rank=r, world=3) for r in range(3)]
    assert [p[-1].micro_batches for p in plans[1:]] == [[[]], [[]]]
    assert [p[-1].size for p in plans] == [1, 1, 1]
    assert all(chunk for p in plans for chunk in loader_batches(p))


def test_deterministic_and_seeded_by_seed_and_epoch():
    a = step_plan(13, 4, 2, seed=5, epoch=3, rank=1, world=2)
    assert a == step_plan(13, 4, 2, seed=5, epoch=3, rank=1, world=2)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    step_plan(13, 4, 2, seed=5, epoch=3)
    assert torch.equal(before, torch.get_rng_state()), "the plan must not draw from the global RNG"
    assert a != step_plan(13, 4, 2, seed=5, epoch=4, rank=1, world=2)
    assert a != step_plan(13, 4, 2, seed=6, epoch=3, rank=1, world=2)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n_samples=-1), "n_samples must be >= 0"),
    (dict(batch_size=0), "batch_size must be >= 1"),
    (dict(micro_batch_size=0), "micro_batch_size must be >= 1"),
    (dict(rank=2, world=2), "rank 2 of world 2"),
    (dict(rank=0, world=0), "rank 0 of world 0"),
])
def test_bad_numbers_are_named(kwargs, message):
    args = dict(n_samples=8, batch_size=4, micro_batch_size=None, seed=0, epoch=1, rank=0, world=1)
    with pytest.raises(ValueError, match=message):
        step_plan(**{**args, **kwargs})
