"""The leftover plan, checked in one process over simulated ranks and a fake exchange."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.leftovers import LeftoverPlan, plan_leftovers, split_evenly

counts_st = st.lists(st.integers(0, 50), min_size=1, max_size=6)


def _deal(plan: LeftoverPlan, counts: list[int]) -> tuple[list[list[list[int]]], list[int]]:
    """Runs the plan on every rank's sample ids (rank r's are ``(r, 0), (r, 1), ...`` encoded as
    ``1000 * r + i``); returns each rank's batches of ids and the ids no batch holds."""
    owned = [[1000 * r + i for i in range(c)] for r, c in enumerate(counts)]
    batches: list[list[list[int]]] = []
    for r, sizes in enumerate(plan.sizes):
        if plan.local:
            source, start = owned[r], 0  # each rank forms its own batches
        else:
            source = [i for ids in owned for i in ids]  # every rank's samples, in rank order
            start = plan.starts[r]
        mine = []
        for size in sizes:
            mine.append(source[start : start + size])
            start += size
        batches.append(mine)
    trained = {i for mine in batches for b in mine for i in b}
    return batches, [i for ids in owned for i in ids if i not in trained]


@settings(max_examples=200, deadline=None)
@given(counts=counts_st, batch_size=st.integers(1, 16), drop_last=st.booleans())
def test_every_rank_yields_the_same_number_of_batches_none_empty(
    counts: list[int], batch_size: int, drop_last: bool
) -> None:
    plan = plan_leftovers(counts, batch_size, drop_last)
    world, total = len(counts), sum(counts)
    assert len(plan.sizes) == len(plan.dropped) == len(plan.starts) == world
    assert len({len(sizes) for sizes in plan.sizes}) == 1
    assert all(0 < size <= batch_size for sizes in plan.sizes for size in sizes)
    yielded = sum(size for sizes in plan.sizes for size in sizes)
    assert yielded + sum(plan.dropped) == total
    assert all(0 <= d <= c for d, c in zip(plan.dropped, counts, strict=True))
    if drop_last:
        # Only full batches, as many as the pooled samples allow on every rank.
        assert all(size == batch_size for sizes in plan.sizes for size in sizes)
        assert len(plan.sizes[0]) == total // (world * batch_size)
    else:
        # Fewer than the world size are dropped: those that cannot be shared out evenly.
        assert sum(plan.dropped) < world
        assert sum(plan.dropped) == 0 or not plan.local
        if total % world == 0:
            assert sum(plan.dropped) == 0
    # As few samples as possible are dropped: no other choice of k batches per rank, each of
    # 1..batch_size samples (all full with drop_last), trains more of them.
    best = max(
        world * k * batch_size if drop_last else min(total, world * k * batch_size)
        for k in range(total + 1)
        if world * k * (batch_size if drop_last else 1) <= total
    )
    assert yielded == best
    if not plan.local and not drop_last:
        # Dealt batches differ by at most one sample.
        flat = [size for sizes in plan.sizes for size in sizes]
        assert not flat or max(flat) - min(flat) <= 1


@settings(max_examples=200, deadline=None)
@given(counts=counts_st, batch_size=st.integers(1, 16), drop_last=st.booleans())
def test_a_fake_exchange_trains_or_drops_every_sample_exactly_once(
    counts: list[int], batch_size: int, drop_last: bool
) -> None:
    plan = plan_leftovers(counts, batch_size, drop_last)
    batches, dropped = _deal(plan, counts)
    trained = [i for mine in batches for b in mine for i in b]
    assert len(trained) == len(set(trained))  # no sample twice
    assert len(trained) + len(dropped) == sum(counts)
    assert [[len(b) for b in mine] for mine in batches] == plan.sizes  # dealt as planned
    for r, c in enumerate(counts):  # what is dropped is the tail of its owner's samples
        lost = [i for i in dropped if i // 1000 == r]
        assert lost == [1000 * r + i for i in range(c - plan.dropped[r], c)]
    if not plan.local:
        assert plan.starts == sorted(plan.starts)  # shares follow each other in the pool


@settings(max_examples=200, deadline=None)
@given(counts=counts_st, batch_size=st.integers(1, 16), drop_last=st.booleans())
def test_a_local_plan_is_what_each_rank_forms_on_its_own(
    counts: list[int], batch_size: int, drop_last: bool
) -> None:
    plan = plan_leftovers(counts, batch_size, drop_last)
    formed, lost = [], []
    for c in counts:  # what a rank's batcher does with its leftovers alone
        batcher = RefinedBatcher(batch_size)
        batcher.push(torch.arange(c), c)
        batcher.form_all()
        sizes = [r.size for r in batcher.ready]
        rest = batcher.buffered
        if rest and not drop_last:
            sizes.append(rest)
        formed.append(sizes)
        lost.append(rest if drop_last else 0)
    assert plan.local == (len({len(sizes) for sizes in formed}) == 1)
    if plan.local:
        assert plan.sizes == formed and plan.dropped == lost


@pytest.mark.parametrize(
    ("counts", "batch_size", "drop_last", "sizes", "dropped"),
    [
        ([5, 1], 4, False, [[3], [3]], [0, 0]),  # pooled and dealt evenly
        ([5, 1], 4, True, [[], []], [5, 1]),  # 6 < 2 full batches: all dropped
        ([8, 8], 4, True, [[4, 4], [4, 4]], [0, 0]),
        ([0, 0, 0], 4, False, [[], [], []], [0, 0, 0]),  # nothing left anywhere
        ([1, 0, 0], 4, False, [[], [], []], [1, 0, 0]),  # fewer than the world size
        ([3, 0], 1, False, [[1], [1]], [1, 0]),  # the pool's tail goes: rank 0's last
        ([9, 1], 4, False, [[3, 2], [3, 2]], [0, 0]),
    ],
)
def test_plans_of_known_cases(
    counts: list[int],
    batch_size: int,
    drop_last: bool,
    sizes: list[list[int]],
    dropped: list[int],
) -> None:
    plan = plan_leftovers(counts, batch_size, drop_last)
    assert (plan.sizes, plan.dropped) == (sizes, dropped)


@given(total=st.integers(0, 200), parts=st.integers(1, 9))
def test_split_evenly_differs_by_at_most_one_larger_first(total: int, parts: int) -> None:
    sizes = split_evenly(total, parts)
    assert len(sizes) == parts and sum(sizes) == total
    assert sizes == sorted(sizes, reverse=True) and sizes[0] - sizes[-1] <= 1
