"""The epoch cursor: delay counting, epochs, and replaying a plain loader on resume."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch
from _resume import roundtrip
from torch.utils.data import DataLoader, RandomSampler

from smartsift.engine.cursor import EpochCursor, is_stateful, loader_generators


def _run_epoch(cursor: EpochCursor, rounds: int, data: Any = (1, 2, 3)) -> None:
    cursor.open(data)
    for _ in range(rounds):
        cursor.advance()
    cursor.finish()


def test_the_delay_counts_rounds_over_the_whole_run() -> None:
    cursor = EpochCursor()
    seen = []
    for _ in range(2):
        cursor.open([0] * 3)
        for _ in range(3):
            seen.append(cursor.in_delay(sift_delay=4, per_epoch=False))
            cursor.advance()
        cursor.finish()
    assert seen == [True] * 4 + [False] * 2
    assert cursor.rounds_total == 6 and cursor.epoch == 2


def test_the_delay_counts_rounds_of_each_epoch_per_epoch() -> None:
    cursor = EpochCursor()
    seen = []
    for _ in range(2):
        cursor.open([0] * 3)
        for _ in range(3):
            seen.append(cursor.in_delay(sift_delay=2, per_epoch=True))
            cursor.advance()
        cursor.finish()
    assert seen == [True, True, False] * 2


def test_delay_left_is_what_the_delay_covers_of_the_current_epoch() -> None:
    cursor = EpochCursor()
    assert cursor.delay_left(5, per_epoch=False, epoch_rounds=3) == 3
    assert cursor.delay_left(2, per_epoch=False, epoch_rounds=3) == 2
    _run_epoch(cursor, 3)
    assert cursor.delay_left(5, per_epoch=False, epoch_rounds=3) == 2  # 3 of 5 done
    assert cursor.delay_left(5, per_epoch=True, epoch_rounds=3) == 3
    cursor.open([0] * 3)
    cursor.advance()  # mid-epoch: the epoch as a whole, its rounds done included
    assert cursor.delay_left(5, per_epoch=False, epoch_rounds=3) == 2
    _run_epoch(cursor, 0)
    assert cursor.delay_left(5, per_epoch=False, epoch_rounds=3) == 1
    assert cursor.delay_left(0, per_epoch=True, epoch_rounds=3) == 0


def test_open_starts_an_epoch_and_records_the_generator_states() -> None:
    gen = torch.Generator().manual_seed(3)
    dl = DataLoader(list(range(10)), batch_size=4, shuffle=True, generator=gen)
    cursor = EpochCursor()
    cursor.rounds_in_epoch = cursor.raw_in_epoch = cursor.steps_in_epoch = 5
    cursor.exhausted = cursor.flushed = cursor.interrupted = True
    before = gen.get_state()
    it = cursor.open(dl)
    assert it is not None and len(next(it)) == 4
    assert cursor.in_epoch and not (cursor.exhausted or cursor.flushed or cursor.interrupted)
    assert (cursor.rounds_in_epoch, cursor.raw_in_epoch, cursor.steps_in_epoch) == (0, 0, 0)
    assert len(cursor.sampler_rng) == 1 and torch.equal(cursor.sampler_rng[0], before)
    assert not torch.equal(gen.get_state(), before)  # iter() drew the epoch's order


def test_loader_generators_finds_each_generator_once() -> None:
    g1, g2 = torch.Generator(), torch.Generator()
    assert loader_generators(DataLoader(range(4), shuffle=True, generator=g1)) == [g1]
    two = DataLoader(range(4), sampler=RandomSampler(range(4), generator=g2), generator=g1)
    assert loader_generators(two) == [g1, g2]
    assert loader_generators(DataLoader(range(4))) == []  # sequential: nothing to restore
    assert loader_generators([[1], [2]]) == []


class _Stateful:
    """An iterable that restores its own position, like torchdata's StatefulDataLoader."""

    generator = torch.Generator()

    def __init__(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[int]:
        while self.position < 6:
            self.position += 1
            yield self.position - 1

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.position = state["position"]


def test_a_stateful_loader_restores_its_own_position() -> None:
    assert is_stateful(_Stateful()) and not is_stateful(DataLoader(range(4)))
    assert loader_generators(_Stateful()) == []
    dl = _Stateful()
    cursor = EpochCursor()
    it = cursor.open(dl)
    assert it is not None
    for _ in range(2):
        next(it)
        cursor.raw_in_epoch += 1
    state, raw = roundtrip(cursor.state_dict(dl)), dl.state_dict()
    resumed, fresh = EpochCursor(), _Stateful()
    fresh.load_state_dict(raw)
    resumed.load_state_dict(state, fresh)
    it = resumed.open(fresh)
    assert it is not None and list(it) == [2, 3, 4, 5]  # nothing replayed on top


def _loader() -> DataLoader[int]:
    gen = torch.Generator().manual_seed(5)
    return DataLoader(list(range(20)), batch_size=3, shuffle=True, generator=gen)


@pytest.mark.parametrize("consumed", [0, 1, 4, 6])
def test_resume_replays_exactly_the_consumed_raw_batches(consumed: int) -> None:
    # Stopped in epoch 1, after `consumed` raw batches; the fresh loader's generator is at its
    # seed (epoch 0's order) until the cursor restores the state it had when epoch 1 began.
    reference = _loader()
    list(reference)
    expected = [b.tolist() for b in reference][consumed:]
    dl, cursor = _loader(), EpochCursor()
    for _ in range(2):  # epoch 0 whole, then epoch 1 up to the stop
        it = cursor.open(dl)
        assert it is not None
        if cursor.epoch == 1:
            break
        list(it)
        cursor.finish()
    for _ in range(consumed):
        next(it)
        cursor.raw_in_epoch += 1
        cursor.advance()
    state = roundtrip(cursor.state_dict(dl))
    fresh, resumed = _loader(), EpochCursor()
    resumed.load_state_dict(state, fresh)
    assert resumed.resume and resumed.in_epoch and resumed.epoch == 1
    replayed = resumed.open(fresh)
    assert replayed is not None and [b.tolist() for b in replayed] == expected
    assert resumed.raw_in_epoch == consumed and resumed.rounds_in_epoch == consumed


def test_between_epochs_the_state_holds_the_next_epochs_generator_state() -> None:
    reference = _loader()
    list(reference)
    expected = [b.tolist() for b in reference]  # epoch 1
    dl, cursor = _loader(), EpochCursor()
    it = cursor.open(dl)
    assert it is not None
    list(it)
    cursor.finish()
    fresh, resumed = _loader(), EpochCursor()
    resumed.load_state_dict(roundtrip(cursor.state_dict(dl)), fresh)
    assert not resumed.resume
    it = resumed.open(fresh)
    assert it is not None and [b.tolist() for b in it] == expected


def test_the_state_roundtrips_every_counter() -> None:
    cursor = EpochCursor()
    _run_epoch(cursor, 4)
    cursor.open([1, 2])
    cursor.advance()
    cursor.raw_in_epoch, cursor.steps_in_epoch, cursor.seeded = 1, 2, True
    cursor.exhausted = True
    state = roundtrip(cursor.state_dict([1, 2]))
    resumed = EpochCursor()
    resumed.load_state_dict(state, [1, 2])
    for key in ("epoch", "in_epoch", "rounds_in_epoch", "rounds_total", "raw_in_epoch"):
        assert getattr(resumed, key) == getattr(cursor, key)
    assert (resumed.steps_in_epoch, resumed.seeded, resumed.exhausted) == (2, True, True)
    assert resumed.open([1, 2]) is None  # the loaded epoch had exhausted its raw iterator
    assert resumed.in_epoch and not resumed.resume


def test_an_interrupted_epoch_is_not_resumed() -> None:
    cursor = EpochCursor()
    cursor.open([1, 2, 3])
    cursor.advance()
    cursor.interrupted = True
    resumed = EpochCursor()
    resumed.load_state_dict(roundtrip(cursor.state_dict([1, 2, 3])), [1, 2, 3])
    assert resumed.in_epoch and resumed.interrupted and not resumed.resume


def test_replaying_a_sampler_without_a_generator_warns() -> None:
    data = list(range(12))
    cursor = EpochCursor()
    it = cursor.open(DataLoader(data, batch_size=4, shuffle=True))
    assert it is not None
    next(it)
    cursor.raw_in_epoch = 1
    state = roundtrip(cursor.state_dict(None))
    resumed = EpochCursor()
    resumed.load_state_dict(state, None)
    with pytest.warns(UserWarning, match="first 1 batches.*no seeded generator"):
        resumed.open(DataLoader(data, batch_size=4, shuffle=True))
