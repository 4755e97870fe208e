"""Tests of ``smartsift.modes.epochs``: the rounds of a loader's epochs, in one process."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.engine.stats import SiftStats, conservation_errors
from smartsift.modes.epochs import EpochRunner


class _Loss:
    """Cross entropy of ``(ids, x, y)`` batches; counts its calls, fails on request."""

    def __init__(self, fail_on: int | None = None) -> None:
        self.calls = 0
        self.fail_on = fail_on

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("scoring failed")
        _, x, y = batch
        return F.cross_entropy(model(x), y, reduction="none")


def _loader(
    n: int = 50, raw: int = 10, policy: ss.Policy | None = None, loss: _Loss | None = None,
    audit: ss.SiftAudit | None = None, **kwargs: Any,
) -> ss.SiftingDataLoader:  # fmt: skip
    g = torch.Generator().manual_seed(0)
    data = ss.IndexedDataset(TensorDataset(torch.randn(n, 4, generator=g), torch.arange(n) % 3))
    torch.manual_seed(0)
    return ss.SiftingDataLoader(
        DataLoader(data, batch_size=raw), torch.nn.Linear(4, 3), loss or _Loss(),
        policy or ss.RelativeProbabilistic(beta=1.0, history=64), seed=1, audit=audit, **kwargs,
    )  # fmt: skip


def _ids(batches: list[Any]) -> list[int]:
    return [i for ids, _, _ in batches for i in ids.tolist()]


def test_the_runner_yields_refined_batches_of_the_loaders_batch_size() -> None:
    loader = _loader(n=120, raw=16, batch_size=8)
    sizes = [len(ids) for ids, _, _ in EpochRunner(loader).run()]
    assert sizes  # RelativeProbabilistic keeps about half
    assert all(s == 8 for s in sizes[:-1])
    assert 0 < sizes[-1] <= 8
    assert loader.stats.samples_trained == sum(sizes)


def test_with_drop_last_every_batch_is_full() -> None:
    loader = _loader(n=120, raw=16, batch_size=8, drop_last=True)
    for _ in range(2):
        sizes = [len(ids) for ids, _, _ in loader]
        assert sizes and all(s == 8 for s in sizes)


@pytest.mark.parametrize("drop_last", [False, True])
def test_every_sample_of_an_epoch_is_trained_sifted_or_dropped_exactly_once(
    drop_last: bool,
) -> None:
    audit = ss.SiftAudit(id_key=0)
    loader = _loader(n=53, raw=10, batch_size=7, drop_last=drop_last, audit=audit)
    for epoch in range(2):
        trained = _ids(list(loader))
        record = audit.epoch(epoch)
        assert len(trained) == len(set(trained))
        parts = [trained, record.sifted.tolist(), record.dropped.tolist()]
        assert sorted(i for part in parts for i in part) == list(range(53))
    stats = loader.stats
    assert conservation_errors(stats) == []
    assert stats.samples_buffered == 0
    assert (stats.samples_seen, stats.epochs, stats.raw_batches) == (106, 2, 12)


def test_delayed_raw_batches_pass_through_untouched_and_unscored() -> None:
    loss = _Loss()
    loader = _loader(n=40, raw=10, loss=loss, policy=ss.TopK(0.5), sift_delay=2)
    runner = EpochRunner(loader)
    batches = list(runner.run())
    assert [ids.tolist() for ids, _, _ in batches[:2]] == [list(range(10)), list(range(10, 20))]
    assert loss.calls == 2  # only the two raw batches after the delay were scored
    stats = loader.stats
    assert (stats.samples_passed, stats.samples_kept, stats.samples_sifted) == (20, 30, 10)
    assert sum(len(ids) for ids, _, _ in batches) == 30


def test_raw_batches_larger_than_the_refined_ones_are_cut_to_size_during_the_delay() -> None:
    loader = _loader(n=24, raw=8, batch_size=4, policy=ss.TopK(0.5), sift_delay=1)
    batches = [ids.tolist() for ids, _, _ in loader]
    assert batches[:2] == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert all(len(b) == 4 for b in batches)


def test_an_abandoned_epoch_counts_what_it_left_behind_as_dropped() -> None:
    audit = ss.SiftAudit(id_key=0)
    loader = _loader(n=60, raw=12, batch_size=4, policy=ss.TopK(0.5), audit=audit)
    it = iter(loader)
    first = next(it)
    it.close()  # the caller stops the epoch after one batch
    assert first[0].tolist() == audit.epoch(0).kept.tolist()[:4]
    stats = loader.stats
    assert stats.samples_trained == 4
    # The round that formed the first batch kept 6 of 12: the other 2 wait in the buffer.
    assert (stats.samples_kept, stats.samples_buffered) == (6, 2)
    after = list(loader)  # a new epoch: the leftovers are dropped, never carried over
    assert loader.stats.samples_dropped == 2
    assert audit.epoch(0).dropped.tolist() == audit.epoch(0).kept.tolist()[4:]
    assert loader.epoch == 2 and loader.stats.epochs == 1
    assert len(_ids(after)) == 30  # the new epoch trains only its own kept half
    assert conservation_errors(loader.stats) == []


def test_an_error_in_a_round_abandons_the_epoch_and_the_next_iteration_starts_afresh() -> None:
    loss = _Loss(fail_on=3)
    loader = _loader(n=40, raw=10, loss=loss, policy=ss.TopK(0.5), batch_size=5)
    with pytest.raises(RuntimeError, match="scoring failed") as info:
        list(loader)
    assert "smartsift: raised on raw batch 2 of the epoch." in info.value.__notes__
    kept_before = loader.stats.samples_kept
    assert kept_before == 10
    batches = list(loader)
    assert len(_ids(batches)) == 20  # a whole new epoch: 4 raw batches, half kept
    assert loader.epoch == 2
    stats = loader.stats
    assert stats.samples_dropped + stats.samples_trained == stats.samples_kept
    assert conservation_errors(stats) == []


def test_an_epoch_that_trains_on_nothing_warns_once() -> None:
    loader = _loader(n=16, raw=8, policy=ss.TopK(0.5), batch_size=20, drop_last=True)
    with pytest.warns(UserWarning, match="trained on nothing") as record:
        assert list(loader) == []
    assert len(record) == 1
    assert "with drop_last=True, batch_size=20" in str(record[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert list(loader) == []  # not again
    assert loader.stats.samples_dropped == 16


def test_stats_are_reported_every_log_interval_raw_batches() -> None:
    logged: list[tuple[int, int]] = []

    def log_fn(stats: SiftStats, step: int) -> None:
        logged.append((stats.raw_batches, step))

    loader = _loader(n=50, raw=5, policy=ss.TopK(0.6), log_interval=4, log_fn=log_fn)
    list(loader)
    assert [raw for raw, _ in logged] == [4, 8]
    # TopK keeps 3 of each raw batch of 5 and refined batches hold 5: batches form in the rounds
    # that reach 5, 10, 15, ... kept (rounds 2, 4, 5, 7, 9, 10), and the log runs at the end of
    # its round, before that round's batch is handed out: after round 4 one batch was trained,
    # after round 8 four were.
    assert [step for _, step in logged] == [1, 4]
