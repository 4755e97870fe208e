"""The ledger: every sample's outcome recorded once, in the counters and the audit together."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _resume import canonical, roundtrip
from torch.utils.data import DataLoader

import smartsift as ss
from smartsift.engine.ledger import Ledger
from smartsift.engine.stats import conservation_errors


def _batch(ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(len(ids), 2), torch.tensor(ids)


def _check(ledger: Ledger, buffered: int) -> None:
    stats = ledger.snapshot(buffered=buffered, comm_s=0.0, quantiles={})
    assert conservation_errors(stats) == []


def test_every_method_updates_the_counters_and_the_audit_together() -> None:
    audit = ss.SiftAudit(id_key=1)
    ledger = Ledger(audit)
    c = ledger.counts
    ledger.pulled(4)
    ledger.passed(0, _batch([0, 1, 2, 3]), 4)
    assert [c[k] for k in ("samples_seen", "raw_batches", "samples_passed")] == [4, 1, 4]
    assert c["samples_kept"] == 4
    _check(ledger, buffered=4)
    ledger.pulled(5)
    losses = np.array([0.5, np.nan, 0.1, 0.9, 0.2])
    mask = np.array([True, False, False, True, True])
    ledger.scored(0, _batch([4, 5, 6, 7, 8]), losses, mask, nonfinite=1)
    assert (c["samples_kept"], c["samples_sifted"], c["samples_nonfinite"]) == (7, 2, 1)
    _check(ledger, buffered=7)
    ledger.trained(5)
    assert (c["steps"], c["samples_trained"]) == (1, 5)
    _check(ledger, buffered=2)
    ledger.dropped(0, [(_batch([7]), 1), (_batch([8]), 1)])
    assert c["samples_dropped"] == 2
    _check(ledger, buffered=0)
    ledger.epoch_done()
    assert c["epochs"] == 1
    record = audit.epoch(0)
    assert sorted(record.passed.tolist()) == [0, 1, 2, 3]
    assert sorted(record.kept.tolist()) == [4, 7, 8] and sorted(record.sifted.tolist()) == [5, 6]
    assert sorted(record.dropped.tolist()) == [7, 8]
    assert sorted(record.seen.tolist()) == list(range(9))


def test_empty_outcomes_change_nothing() -> None:
    ledger = Ledger(ss.SiftAudit(id_key=1))
    before = dict(ledger.counts)
    ledger.pulled(0)
    ledger.passed(0, _batch([]), 0)
    ledger.scored(0, _batch([]), np.empty(0), np.empty(0, dtype=bool), 0)
    ledger.dropped(0, [])
    assert ledger.counts == before and ledger.trace().seen.size == 0
    assert ledger.audit is not None and ledger.audit.epochs == []


def test_the_trace_records_each_scored_batch_and_its_losses() -> None:
    ledger = Ledger()
    ledger.scored(0, None, np.array([1.0, 2.0, 3.0]), np.array([False, True, True]), 0)
    ledger.trained(2)
    ledger.trained(2)
    ledger.scored(0, None, np.array([4.0, 5.0]), np.array([True, False]), 0)
    trace = ledger.trace()
    assert trace.steps.tolist() == [0, 2]  # training steps taken before each scored batch
    assert trace.seen.tolist() == [3, 2] and trace.kept.tolist() == [2, 1]
    assert trace.kept_losses.tolist() == [2.0, 3.0, 4.0]
    assert trace.sifted_losses.tolist() == [1.0, 5.0]
    restored = Ledger()
    restored.load_state_dict(roundtrip(ledger.state_dict()))
    again = restored.trace()
    for name in ("steps", "seen", "kept", "kept_losses", "sifted_losses"):
        np.testing.assert_array_equal(getattr(again, name), getattr(trace, name))


def test_the_state_roundtrips_counters_timers_and_the_recent_window() -> None:
    ledger = Ledger(recent_window=2)
    for kept in (1, 2, 3):
        ledger.pulled(4)
        ledger.scored(0, None, np.arange(4.0), np.arange(4) < kept, 0)
    ledger.times["scoring_s"] = 1.5
    restored = Ledger(recent_window=2)
    restored.load_state_dict(roundtrip(ledger.state_dict()))
    assert restored.counts == ledger.counts and restored.times == ledger.times
    assert restored.recent_rate() == ledger.recent_rate() == (8, 5)
    assert restored.snapshot(0, 0.0, {}) == ledger.snapshot(0, 0.0, {})


def _ids(n: int) -> list[tuple[torch.Tensor, int]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return [(x[i], i) for i in range(n)]


def _loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    return model(batch[0]).squeeze(1) ** 2


CONFIGS: dict[str, dict[str, Any]] = {
    "plain": {},
    "drop_last": {"drop_last": True, "batch_size": 7},
    "delay": {"sift_delay": 3, "batch_size": 5},
    "delay_per_epoch": {"sift_delay": 2, "repeat_delay_per_epoch": True, "drop_last": True},
    "bigger_batches": {"batch_size": 11},
    "uniform": {"policy": ss.Uniform(keep=0.3), "drop_last": True, "batch_size": 4},
}


def _factory(**kwargs: Any) -> Callable[[], ss.SiftingDataLoader]:
    policy = kwargs.pop("policy", ss.RelativeProbabilistic(beta=1.0, history=20))

    def make() -> ss.SiftingDataLoader:
        gen = torch.Generator().manual_seed(2)
        raw = DataLoader(_ids(53), batch_size=8, shuffle=True, generator=gen)
        model = torch.nn.Linear(3, 1)
        torch.nn.init.constant_(model.weight, 0.5)
        audit = ss.SiftAudit(id_key=1)
        return ss.SiftingDataLoader(raw, model, _loss, policy, seed=0, audit=audit, **kwargs)

    return make


@pytest.mark.parametrize("name", list(CONFIGS))
def test_nothing_is_lost_in_real_runs_and_after_a_resume(name: str) -> None:
    make = _factory(**CONFIGS[name])
    loader = make()
    for _ in range(3):
        it = iter(loader)
        for _ in it:
            assert conservation_errors(loader.stats) == []  # mid-epoch, samples buffered
        assert conservation_errors(loader.stats) == [] and loader.stats.samples_buffered == 0
    assert loader.stats.samples_seen == 3 * 53 and loader.stats.epochs == 3
    first = make()
    it = iter(first)
    next(it)
    next(it)
    resumed = make()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert conservation_errors(resumed.stats) == []
    for _ in range(3):
        list(resumed)
        assert conservation_errors(resumed.stats) == []
    assert resumed.stats.samples_seen == 3 * 53 and resumed.stats.epochs == 3


def test_the_loaders_trace_has_one_row_per_scored_raw_batch() -> None:
    loader = _factory(sift_delay=2, batch_size=5)()
    list(loader)
    list(loader)
    stats, trace = loader.stats, loader.trace
    assert trace.seen.size == stats.raw_batches - 2  # the delay's raw batches are not scored
    assert int(trace.seen.sum()) == stats.samples_seen - stats.samples_passed
    assert int(trace.kept.sum()) == stats.samples_kept - stats.samples_passed
    assert (np.diff(trace.steps) >= 0).all() and trace.steps[-1] <= stats.steps
    assert trace.kept_losses.size + trace.sifted_losses.size == int(trace.seen.sum())


def _key(stats: ss.SiftStats) -> dict[str, Any]:
    return {k: "nan" if v != v else v for k, v in stats.as_dict().items()}  # NaN != NaN


def test_reading_stats_changes_nothing() -> None:
    loader = _factory(**CONFIGS["delay"])()

    def reads_are_pure() -> None:
        before = canonical(loader.state_dict())
        first, second = loader.stats, loader.stats
        assert _key(first) == _key(second) and str(first) == str(second)
        assert canonical(loader.state_dict()) == before

    reads_are_pure()
    it = iter(loader)
    for _ in range(4):
        next(it)
        reads_are_pure()
    it.close()
    list(loader)
    reads_are_pure()
    assert conservation_errors(loader.stats) == []
