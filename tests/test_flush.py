"""Tests of ``smartsift.engine.flush``: an epoch's leftovers dealt out over simulated ranks."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.flush import flush_epoch


class Pair(NamedTuple):
    x: torch.Tensor
    id: torch.Tensor


def _batcher(rank: int, count: int, batch_size: int, chunk: int = 3) -> RefinedBatcher:
    """A rank's batcher holding ``count`` samples with ids ``1000 * rank + i``, in chunks."""
    batcher = RefinedBatcher(batch_size)
    for start in range(0, count, chunk):
        ids = torch.arange(start, min(count, start + chunk)) + 1000 * rank
        batcher.push(Pair(ids.float().unsqueeze(1), ids), len(ids))
    return batcher


def _ids(batch: Any) -> list[int]:
    return batch.id.tolist()


class _Sent(Exception):
    pass


def _flush_ranks(
    counts: list[int], batch_size: int, drop_last: bool
) -> tuple[list[RefinedBatcher], list[list[tuple[Any, int]]], int]:
    """Runs ``flush_epoch`` on every simulated rank; returns their batchers, what each dropped
    and how many ranks called the gather.

    The gather is a collective, so the ranks run twice: first each rank runs until it calls the
    gather, which records what it sends; then, on fresh batchers, the gather hands every rank
    the objects of all ranks, checking that each rank sends what it sent the first time.
    """
    sent: list[Any] = [None] * len(counts)
    calls = 0
    for rank, count in enumerate(counts):

        def record(mine: Any, rank: int = rank) -> list[Any]:
            sent[rank] = mine
            raise _Sent

        try:
            flush_epoch(_batcher(rank, count, batch_size), counts, rank, drop_last, record, None)
        except _Sent:
            calls += 1
    batchers, dropped = [], []
    for rank, count in enumerate(counts):

        def gather(mine: Any, rank: int = rank) -> list[Any]:
            assert (mine is None) == (sent[rank] is None)
            if mine is not None:
                assert _ids(mine) == _ids(sent[rank])
            return list(sent)

        batcher = _batcher(rank, count, batch_size)
        dropped.append(flush_epoch(batcher, counts, rank, drop_last, gather, None))
        batchers.append(batcher)
    return batchers, dropped, calls


def test_one_rank_forms_full_batches_then_a_smaller_one_without_a_gather() -> None:
    batchers, dropped, calls = _flush_ranks([10], batch_size=4, drop_last=False)
    ready = batchers[0].ready
    assert [r.size for r in ready] == [4, 4, 2]
    assert [_ids(r.batch) for r in ready] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert dropped == [[]]
    assert calls == 0
    assert batchers[0].buffered == 0


def test_one_rank_with_drop_last_returns_the_tail_it_drops() -> None:
    batchers, dropped, _ = _flush_ranks([10], batch_size=4, drop_last=True)
    assert [r.size for r in batchers[0].ready] == [4, 4]
    # The tail, as the buffered pieces it was left in (the last chunks, 8 and 9, here).
    assert [(_ids(piece), n) for piece, n in dropped[0]] == [([8], 1), ([9], 1)]
    assert batchers[0].buffered == 0


def test_a_multiple_of_the_batch_size_drops_nothing() -> None:
    batchers, dropped, _ = _flush_ranks([8], batch_size=4, drop_last=True)
    assert [r.size for r in batchers[0].ready] == [4, 4]
    assert dropped == [[]]


def test_ranks_that_can_form_as_many_batches_each_form_their_own() -> None:
    batchers, dropped, calls = _flush_ranks([6, 5], batch_size=4, drop_last=False)
    assert calls == 0
    assert [_ids(r.batch) for r in batchers[0].ready] == [[0, 1, 2, 3], [4, 5]]
    assert [_ids(r.batch) for r in batchers[1].ready] == [[1000, 1001, 1002, 1003], [1004]]
    assert dropped == [[], []]


def test_uneven_ranks_pool_their_leftovers_in_rank_order() -> None:
    # 5 and 1 leftovers, batches of 4: locally rank 0 would yield two batches and rank 1 one,
    # so the six samples are pooled and dealt three to each rank.
    batchers, dropped, calls = _flush_ranks([5, 1], batch_size=4, drop_last=False)
    assert calls == 2
    assert [_ids(r.batch) for r in batchers[0].ready] == [[0, 1, 2]]
    assert [_ids(r.batch) for r in batchers[1].ready] == [[3, 4, 1000]]
    assert dropped == [[], []]


def test_a_rank_with_no_leftovers_sends_nothing_and_still_gets_its_share() -> None:
    batchers, dropped, calls = _flush_ranks([0, 5], batch_size=4, drop_last=False)
    assert calls == 2
    assert [_ids(r.batch) for r in batchers[0].ready] == [[1000, 1001, 1002]]
    assert [_ids(r.batch) for r in batchers[1].ready] == [[1003, 1004]]
    assert dropped == [[], []]


def test_pooled_samples_that_cannot_be_shared_evenly_are_dropped_from_the_last_rank() -> None:
    # 4 and 3 leftovers, batches of 2 with drop_last: locally two batches against one, so the
    # 7 are pooled; one full batch per rank uses the pool's first 4, the tail (all of rank 1's
    # own samples) is dropped, by rank 1, which owns it.
    batchers, dropped, _ = _flush_ranks([4, 3], batch_size=2, drop_last=True)
    assert [_ids(r.batch) for r in batchers[0].ready] == [[0, 1]]
    assert [_ids(r.batch) for r in batchers[1].ready] == [[2, 3]]
    assert dropped[0] == []
    assert [(_ids(piece), n) for piece, n in dropped[1]] == [([1000, 1001, 1002], 3)]


def test_dealt_batches_keep_the_batches_own_container_type() -> None:
    batchers, _, calls = _flush_ranks([5, 1], batch_size=4, drop_last=False)
    assert calls == 2
    assert all(type(r.batch) is Pair for b in batchers for r in b.ready)


def test_dealt_batches_move_to_the_given_device() -> None:
    counts = [5, 1]
    pieces = [_batcher(r, c, 4).take(c) for r, c in enumerate(counts)]
    batcher = _batcher(1, 1, 4)
    flush_epoch(batcher, counts, 1, False, lambda mine: pieces, torch.device("meta"))
    (ready,) = batcher.ready
    assert ready.batch.x.device.type == "meta"


@settings(max_examples=150, deadline=None)
@given(
    counts=st.lists(st.integers(0, 20), min_size=1, max_size=5),
    batch_size=st.integers(1, 8),
    drop_last=st.booleans(),
)
def test_every_rank_yields_as_many_batches_and_no_sample_is_lost_or_duplicated(
    counts: list[int], batch_size: int, drop_last: bool
) -> None:
    batchers, dropped, calls = _flush_ranks(counts, batch_size, drop_last)
    assert calls in (0, len(counts))  # every rank pools, or none does
    assert len({len(b.ready) for b in batchers}) == 1
    sizes = [r.size for b in batchers for r in b.ready]
    assert all(0 < s <= batch_size for s in sizes)
    if drop_last:
        assert all(s == batch_size for s in sizes)
    assert [len(_ids(r.batch)) for b in batchers for r in b.ready] == sizes
    ready = [i for b in batchers for r in b.ready for i in _ids(r.batch)]
    lost = [i for pieces in dropped for piece, _ in pieces for i in _ids(piece)]
    assert all(n == len(_ids(piece)) for pieces in dropped for piece, n in pieces)
    everything = [1000 * r + i for r, c in enumerate(counts) for i in range(c)]
    assert sorted(ready + lost) == everything  # each sample trained or dropped, exactly once
    assert all(b.buffered == 0 for b in batchers)
    if not drop_last:
        assert len(lost) < len(counts)
