"""Tests of ``smartsift.modes.pull``: pulling, checking and scoring one raw batch for a round."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from smartsift.batches.structure import UnsupportedBatchError
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.cursor import EpochCursor
from smartsift.modes.pull import Pulled, pull


def _batch(n: int, width: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(n, width), torch.arange(n)


def _never() -> Iterator[Any]:
    raise AssertionError("the iterator was read")
    yield  # pragma: no cover


def _failing(err: Exception) -> Iterator[Any]:
    raise err
    yield  # pragma: no cover


class _Scorer:
    """A score function that records its calls and scores each sample by its id."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, int]] = []

    def __call__(self, raw: Any, size: int) -> np.ndarray:
        self.calls.append((raw, size))
        return raw[1].numpy().astype(np.float64)


def test_a_batch_is_pulled_counted_and_scored() -> None:
    cursor, scorer = EpochCursor(), _Scorer()
    batch = _batch(3)
    got = pull(iter([batch]), cursor, RefinedBatcher(4), score_fn=scorer)
    assert got.raw is batch and got.sliceable is batch
    assert got.size == 3
    assert got.losses.tolist() == [0.0, 1.0, 2.0]
    assert got.error is None and got.side is None
    assert scorer.calls == [(batch, 3)]
    assert cursor.raw_in_epoch == 1 and not cursor.exhausted


def test_an_exhausted_cursor_pulls_nothing() -> None:
    cursor = EpochCursor()
    cursor.exhausted = True
    got = pull(_never(), cursor, RefinedBatcher(4), score_fn=_Scorer())
    assert isinstance(got, Pulled)
    assert got.raw is None and got.sliceable is None and got.error is None
    assert got.size == 0 and got.losses.size == 0 and got.data_s == 0.0
    assert cursor.raw_in_epoch == 0


def test_the_end_of_the_loader_marks_the_cursor_exhausted() -> None:
    cursor, scorer = EpochCursor(), _Scorer()
    got = pull(iter([]), cursor, RefinedBatcher(4), score_fn=scorer)
    assert cursor.exhausted
    assert got.raw is None and got.size == 0 and got.error is None
    assert cursor.raw_in_epoch == 0
    assert scorer.calls == []


def test_a_loading_error_is_annotated_and_returned_not_raised() -> None:
    cursor = EpochCursor()
    cursor.raw_in_epoch = 4
    err = OSError("disk gone")
    got = pull(_failing(err), cursor, RefinedBatcher(4), score_fn=_Scorer())
    assert got.error is err
    assert err.__notes__ == ["smartsift: raised while loading raw batch 4 of the epoch."]
    assert got.raw is None and got.size == 0
    assert cursor.raw_in_epoch == 4 and not cursor.exhausted


def test_a_batch_that_cannot_join_the_first_ones_is_an_error_of_its_raw_batch() -> None:
    cursor, batcher, scorer = EpochCursor(), RefinedBatcher(4), _Scorer()
    pull(iter([_batch(3)]), cursor, batcher, score_fn=scorer)
    got = pull(iter([_batch(3, width=5)]), cursor, batcher, score_fn=scorer, inputs_fn=_ids)
    assert isinstance(got.error, ValueError)
    assert "cannot be joined with the samples of earlier raw batches" in str(got.error)
    assert got.error.__notes__ == ["smartsift: raised on raw batch 1 of the epoch."]
    assert got.size == 0 and got.losses.size == 0 and got.side is None
    assert len(scorer.calls) == 1  # the bad batch was refused before its scoring pass
    assert cursor.raw_in_epoch == 2


def test_a_batch_that_cannot_be_sliced_is_an_error_of_its_raw_batch() -> None:
    got = pull(iter([object()]), EpochCursor(), RefinedBatcher(4), score_fn=_Scorer())
    assert isinstance(got.error, UnsupportedBatchError)
    assert got.error.__notes__ == ["smartsift: raised on raw batch 0 of the epoch."]


def test_a_failing_scoring_pass_is_an_error_of_its_raw_batch() -> None:
    def score_fn(raw: Any, size: int) -> np.ndarray:
        raise RuntimeError("out of memory")

    got = pull(iter([_batch(2), _batch(2)]), EpochCursor(), RefinedBatcher(4), score_fn=score_fn)
    assert isinstance(got.error, RuntimeError)
    assert got.error.__notes__ == ["smartsift: raised on raw batch 0 of the epoch."]
    assert got.size == 0 and got.losses.size == 0


def _ids(sliceable: Any, size: int) -> np.ndarray:
    return sliceable[1].numpy().astype(np.float64).reshape(1, size)


def test_without_a_score_function_the_batch_passes_unscored() -> None:
    got = pull(iter([_batch(3)]), EpochCursor(), RefinedBatcher(4), score_fn=None, inputs_fn=_ids)
    assert got.size == 3
    assert got.losses.size == 0
    assert got.side is None
    assert got.error is None


def test_the_policys_inputs_are_read_from_the_sliceable_batch() -> None:
    got = pull(iter([_batch(3)]), EpochCursor(), RefinedBatcher(4), _Scorer(), inputs_fn=_ids)
    assert got.side is not None and got.side.tolist() == [[0.0, 1.0, 2.0]]


def test_an_empty_batch_is_neither_checked_nor_scored() -> None:
    scorer = _Scorer()
    got = pull(iter([_batch(0)]), EpochCursor(), RefinedBatcher(4), score_fn=scorer)
    assert got.size == 0 and got.error is None
    assert scorer.calls == []


class _Wrap:
    """A transform between a raw ``{"pair": (x, ids)}`` batch and the pair itself."""

    def transform(self, batch: Any) -> Any:
        return batch["pair"]

    def reverse_transform(self, data: Any) -> Any:
        return {"pair": data}


def test_a_transform_gives_the_sliceable_form_and_the_raw_batch_is_scored() -> None:
    raw = {"pair": _batch(2)}
    seen: list[Any] = []

    def score_fn(batch: Any, size: int) -> np.ndarray:
        seen.append(batch)
        return np.zeros(size)

    got = pull(iter([raw]), EpochCursor(), RefinedBatcher(4), score_fn, _ids, transform=_Wrap())
    assert got.raw is raw
    assert got.sliceable is raw["pair"]
    assert seen == [raw]
    assert got.side is not None and got.side.tolist() == [[0.0, 1.0]]


def test_the_raw_batch_moves_to_the_device_first() -> None:
    got = pull(
        iter([_batch(2)]), EpochCursor(), RefinedBatcher(4), lambda raw, n: np.zeros(n),
        device=torch.device("meta"),
    )  # fmt: skip
    assert got.error is None
    assert got.raw[0].device.type == "meta"


@pytest.mark.parametrize("size", [1, 4])
def test_pulling_the_rounds_of_an_epoch_counts_every_raw_batch(size: int) -> None:
    cursor, scorer = EpochCursor(), _Scorer()
    raw = iter([_batch(size) for _ in range(3)])
    sizes = [pull(raw, cursor, RefinedBatcher(4), scorer).size for _ in range(5)]
    assert sizes == [size, size, size, 0, 0]
    assert cursor.raw_in_epoch == 3 and cursor.exhausted


# ----------------------------------------------------------------------------- a reference
class _Reference:
    """A reference function that records its calls and gives each sample half its id."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, Any, int]] = []

    def __call__(self, raw: Any, sliceable: Any, size: int) -> np.ndarray:
        self.calls.append((raw, sliceable, size))
        return sliceable[1].numpy().astype(np.float64) / 2


def test_with_a_reference_the_scores_are_the_losses_less_the_reference() -> None:
    raw, reference = {"pair": _batch(4)}, _Reference()
    scorer = _Scorer()
    got = pull(
        iter([raw]), EpochCursor(), RefinedBatcher(4), lambda b, n: scorer(b["pair"], n),
        transform=_Wrap(), reference_fn=reference,
    )  # fmt: skip
    assert got.losses.tolist() == [0.0, 1.0, 2.0, 3.0]  # the losses stay the losses
    assert got.scores.tolist() == [0.0, 0.5, 1.0, 1.5]
    assert reference.calls == [(raw, raw["pair"], 4)]  # the raw batch and its sliceable form


def test_without_a_reference_the_scores_are_the_losses() -> None:
    got = pull(iter([_batch(3)]), EpochCursor(), RefinedBatcher(4), _Scorer())
    assert got.scores is got.losses


def test_the_reference_runs_only_on_scored_batches() -> None:
    reference = _Reference()
    got = pull(iter([_batch(3)]), EpochCursor(), RefinedBatcher(4), None, reference_fn=reference)
    empty = pull(iter([_batch(0)]), EpochCursor(), RefinedBatcher(4), _Scorer(), None, None,
                 None, reference)  # fmt: skip
    assert reference.calls == [] and got.scores.size == 0 and empty.scores.size == 0


def test_a_failing_reference_is_an_error_of_its_raw_batch() -> None:
    def reference(raw: Any, sliceable: Any, size: int) -> np.ndarray:
        raise ValueError("no such id")

    got = pull(iter([_batch(2)]), EpochCursor(), RefinedBatcher(4), _Scorer(), _ids,
               reference_fn=reference)  # fmt: skip
    assert isinstance(got.error, ValueError)
    assert got.error.__notes__ == ["smartsift: raised on raw batch 0 of the epoch."]
    assert got.size == 0 and got.losses.size == 0 and got.scores.size == 0 and got.side is None
