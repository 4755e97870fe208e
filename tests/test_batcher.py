"""The refined batcher: batches of exactly ``batch_size`` in arrival order, layouts, save/load."""

from __future__ import annotations

from collections import namedtuple
from typing import Any, NamedTuple

import pytest
import torch
from _resume import canonical, roundtrip
from hypothesis import given, settings
from hypothesis import strategies as st

import smartsift as ss
from smartsift.batches.structure import signature
from smartsift.engine.batcher import ReadyBatch, RefinedBatcher


class Sample(NamedTuple):
    x: torch.Tensor
    ids: torch.Tensor


class Fields(dict[str, Any]):
    """A dict subclass, as some collators return."""


def _chunks(sizes: list[int]) -> list[Sample]:
    """Raw-batch slices of consecutive ids: chunk k holds the next ``sizes[k]`` ids."""
    out, start = [], 0
    for n in sizes:
        ids = torch.arange(start, start + n)
        out.append(Sample(ids.float().unsqueeze(1).repeat(1, 2), ids))
        start += n
    return out


def _ids(batches: list[Any]) -> list[int]:
    return [i for b in batches for i in b.ids.tolist()]


@settings(max_examples=80, deadline=None)
@given(
    sizes=st.lists(st.integers(0, 12), max_size=10),
    batch_size=st.integers(1, 8),
    form_each=st.booleans(),
)
def test_batches_hold_exactly_batch_size_samples_in_arrival_order(
    sizes: list[int], batch_size: int, form_each: bool
) -> None:
    batcher = RefinedBatcher(batch_size)
    total = 0
    for chunk, n in zip(_chunks(sizes), sizes, strict=True):
        batcher.push(chunk, n)
        total += n
        if form_each:
            batcher.form_all()  # forming as samples arrive, or all at the end: the same
        assert batcher.pending == total
        assert batcher.buffered == total - sum(r.size for r in batcher.ready)
    batcher.form_all()
    ready = list(batcher.ready)
    assert len(ready) == total // batch_size and batcher.buffered == total % batch_size
    assert all(isinstance(r, ReadyBatch) and not r.raw for r in ready)
    assert all(r.size == batch_size == len(r.batch.ids) for r in ready)
    assert all(type(r.batch) is Sample and r.sliceable is r.batch for r in ready)
    rest = batcher.take(batcher.buffered) if batcher.buffered else None
    trained = _ids([r.batch for r in ready]) + (rest.ids.tolist() if rest is not None else [])
    assert trained == list(range(total))  # the order of arrival, slices split at batch ends
    for batch in [r.batch for r in ready] + ([rest] if rest is not None else []):
        assert batch.x[:, 0].tolist() == batch.ids.float().tolist()  # samples stay whole
    assert batcher.buffered == 0 and batcher.pending == len(ready) * batch_size


def test_form_takes_n_batches_and_nothing_without_a_batch_size() -> None:
    batcher = RefinedBatcher()
    batcher.push(torch.arange(5), 5)
    batcher.form(1)
    assert not batcher.ready and batcher.buffered == 5  # batch size not known yet
    batcher.batch_size = 2
    batcher.form(1)
    assert [r.batch.tolist() for r in batcher.ready] == [[0, 1]] and batcher.buffered == 3
    batcher.push(torch.arange(10, 10), 0)  # an empty slice is not buffered
    assert batcher.sizes == [3]


def test_raw_batches_queued_as_they_are_count_as_pending() -> None:
    batcher = RefinedBatcher(4)
    raw = Sample(torch.zeros(4, 2), torch.arange(4))
    batcher.push_ready(raw, 4, raw)
    batcher.push(torch.arange(3), 3)
    assert batcher.pending == 7 and batcher.buffered == 3
    assert batcher.ready[0].raw and batcher.ready[0].batch is raw


def test_check_layout_refuses_another_layout_at_the_first_raw_batch_after_the_reference() -> None:
    batcher = RefinedBatcher(4)
    first = (torch.zeros(8, 3), torch.arange(8))
    same = (torch.ones(2, 3), torch.arange(2))
    other = (torch.zeros(8, 5), torch.arange(8))

    def layout(b: Any) -> Any:
        return signature(b)

    batcher.check_layout(first, layout(first))
    batcher.check_layout(same, layout(same))
    assert batcher.buffered == 0  # nothing was buffered: the reference is the first raw batch
    with pytest.raises(ValueError, match="cannot be joined") as info:
        batcher.check_layout(other, layout(other))
    message = str(info.value)
    assert str(layout(other)) in message and str(layout(first)) in message
    assert "BatchTransform" in message and "Padding" in message


@pytest.mark.parametrize("ready", [True, False])
def test_clear_returns_every_sample_once(ready: bool) -> None:
    batcher = RefinedBatcher(3)
    sizes = [2, 5, 1, 4]
    for chunk, n in zip(_chunks(sizes), sizes, strict=True):
        batcher.push(chunk, n)
    batcher.form(2)
    assert batcher.take(1).ids.tolist() == [6]  # taken out: no longer in the buffer
    queued = list(batcher.ready)
    out = batcher.clear(ready=ready)
    assert batcher.buffered == 0 and batcher.chunks == []
    assert all(n == len(b.ids) for b, n in out)
    got = [i for b, _ in out for i in b.ids.tolist()]
    if ready:
        assert not batcher.ready and sorted(got) == [*range(6), *range(7, 12)]
    else:
        assert list(batcher.ready) == queued and got == list(range(7, 12))


def _state_roundtrip(make: Any, sizes: list[int], batch_size: int) -> None:
    """Saves a batcher with a batch ready and samples buffered; checks the restored one."""
    chunks = [make(c) for c in _chunks(sizes)]
    reference, saved = RefinedBatcher(batch_size), RefinedBatcher(batch_size)
    for b in (reference, saved):
        for chunk, n in zip(chunks, sizes, strict=True):
            b.push(chunk, n)
        b.form(1)
    state = roundtrip(saved.state_dict())  # torch.load(weights_only=True)
    moved: list[Any] = []

    def move(batch: Any) -> Any:
        moved.append(batch)
        return batch

    restored = RefinedBatcher(None)
    restored.load_state_dict(state, move=move)
    assert restored.batch_size == batch_size and restored.sizes == reference.sizes
    assert len(moved) == len(restored.chunks) + len(restored.ready)
    for batcher in (reference, restored):
        batcher.form_all()
    assert [r.size for r in restored.ready] == [r.size for r in reference.ready]
    for got, want in zip(restored.ready, reference.ready, strict=True):
        assert type(got.batch) is type(want.batch)
        assert canonical(got.batch) == canonical(want.batch)


def test_a_restored_buffer_gives_named_tuples_back_their_type() -> None:
    _state_roundtrip(lambda c: c, [3, 4, 2], batch_size=2)


def test_a_restored_buffer_gives_dict_subclasses_back_their_type() -> None:
    def make(c: Sample) -> Fields:
        return Fields(x=c.x, meta=Fields(ids=c.ids, names=[f"s{i}" for i in c.ids.tolist()]))

    _state_roundtrip(make, [3, 4, 2], batch_size=2)
    batcher = RefinedBatcher(2)
    batcher.push(make(_chunks([3])[0]), 3)
    restored = RefinedBatcher(2)
    restored.load_state_dict(roundtrip(batcher.state_dict()))
    assert type(restored.chunks[0]) is Fields and type(restored.chunks[0]["meta"]) is Fields
    assert restored.chunks[0]["meta"]["names"] == ["s0", "s1", "s2"]


def test_a_type_that_cannot_be_resolved_falls_back_to_plain_containers() -> None:
    Local = namedtuple("Local", ["x", "ids"])  # its qualified name cannot be looked up
    batcher = RefinedBatcher(2)
    batcher.push(Local(torch.zeros(3, 2), torch.arange(3)), 3)
    state = roundtrip(batcher.state_dict())
    restored = RefinedBatcher(2)
    restored.load_state_dict(state)
    assert type(restored.chunks[0]) is tuple
    assert restored.chunks[0][1].tolist() == [0, 1, 2]
    state["types"] = ["not_a_module_anyone_imported:Thing", [None, None]]
    restored.load_state_dict(state)  # a module that is not imported is never imported
    assert type(restored.chunks[0]) is tuple


def test_the_reference_layout_is_restored_with_the_buffer() -> None:
    batcher = RefinedBatcher(4)
    chunk = (torch.zeros(3, 2), torch.arange(3))
    batcher.check_layout(chunk, signature(chunk))
    batcher.push(chunk, 3)
    restored = RefinedBatcher(4)
    restored.load_state_dict(roundtrip(batcher.state_dict()))
    other = (torch.zeros(3, 7), torch.arange(3))
    with pytest.raises(ValueError, match="cannot be joined"):
        restored.check_layout(other, signature(other))


def test_a_joiner_joins_and_decides_the_layout() -> None:
    padding = ss.Padding({"tokens": 0})
    batcher = RefinedBatcher(3, joiner=padding)
    a = {"tokens": torch.tensor([[1, 2, 3], [4, 5, 0]]), "label": torch.tensor([0, 1])}
    b = {"tokens": torch.tensor([[6], [7]]), "label": torch.tensor([1, 0])}
    for batch in (a, b):  # padded to different lengths: the joiner's layout matches
        batcher.check_layout(batch, signature(batch))
        batcher.push(batch, 2)
    batcher.form_all()
    formed = batcher.ready.popleft().batch
    assert formed["tokens"].tolist() == [[1, 2, 3], [4, 5, 0], [6, 0, 0]]
    assert formed["label"].tolist() == [0, 1, 1]
    assert batcher.join([a, b])["tokens"].shape == (4, 3)
    wrong = {"tokens": torch.tensor([[1.0]]), "label": torch.tensor([0])}  # float tokens
    with pytest.raises(ValueError, match="cannot be joined"):
        batcher.check_layout(wrong, signature(wrong))
