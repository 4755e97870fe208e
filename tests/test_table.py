"""The score table of loss reuse (its compact layout, pending rows and state), and the padded
all-gather that shares it (and the loader's rounds) between DDP ranks. The table's own
two-process tests are in ``test_table_ddp.py``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _ddp import run_ranks
from _resume import roundtrip as _roundtrip

from smartsift.engine.distributed import Lockstep, PaddedGather, RankInfo
from smartsift.modes.table import (
    SCORES,
    ScoreTable,
    fold_records,
    loss_change,
    loss_trend,
    reducible_loss,
    repeated_records,
)

# ---------------------------------------------------------------- recording


def test_the_table_records_loss_epoch_and_update_of_each_index() -> None:
    table = ScoreTable(6, track_updates=True)
    table.epoch = 2
    table.update(torch.tensor([4, 1]), torch.tensor([0.5, 1.5], dtype=torch.bfloat16))
    table.epoch = 3
    table.update([1], torch.tensor([0.25], requires_grad=True))
    assert table.losses[[1, 4]].tolist() == [0.25, 0.5]
    assert table.scored_epoch.tolist() == [-1, 3, -1, -1, 2, -1]
    assert table.scored_update is not None
    assert table.scored_update.tolist() == [-1, 1, -1, -1, 0, -1]
    assert table.scored().tolist() == [False, True, False, False, True, False]
    table.update([0], [float("nan")])
    assert not table.scored()[0] and table.updates == 3 and table.collectives == 0
    assert ScoreTable(6).scored_update is None  # kept only when asked for


def test_the_table_is_compact_and_reports_its_bytes() -> None:
    n = 1000
    table = ScoreTable(n)
    assert (table.losses.dtype, table.previous.dtype) == (np.float32, np.float32)
    assert table.scored_epoch.dtype == np.int32
    assert table.nbytes == 12 * n  # the default: at most 12 bytes per sample
    # no reference yet: an all-NaN read-only view that holds nothing
    assert np.isnan(table.reference).all() and table.reference.shape == (n,)
    assert table.reference.strides == (0,)
    with pytest.raises(ValueError, match="read-only"):
        table.reference[0] = 1.0
    table.set_reference([3], [0.5])
    assert table.reference.dtype == np.float32 and table.nbytes == 16 * n
    tracked = ScoreTable(n, track_updates=True)
    assert tracked.scored_update is not None and tracked.scored_update.dtype == np.int32
    assert tracked.nbytes == 16 * n
    # values read back have float32 precision
    table.update([0], torch.tensor([0.1], dtype=torch.float64))
    assert table.losses[0] == np.float32(0.1) and table.scores("loss", [0]).dtype == np.float64


@pytest.mark.parametrize(
    ("ids", "losses", "message"),
    [
        ([0, 1], [0.1], r"same length.*\(2,\) and \(1,\)"),
        ([0, 9], [0.1, 0.2], r"`ids` in \[0, 6\).*got 9.*ScoreTable\(len\(dataset\)\)"),
        ([0.0, 1.0], [0.1, 0.2], r"integer dataset indices.*float64"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
        ([0, 1], [1, 0], r"`losses`.*floating-point.*dtype int64.*reduction='none'"),
        ([0, 1], torch.tensor([1, 0]), r"`losses`.*dtype torch.int64.*per-sample losses"),
        ([0, 1], torch.tensor([True, False]), r"`losses`.*dtype torch.bool"),
        ([0, 1], np.array([True, False]), r"`losses`.*dtype bool"),
    ],
)
def test_the_table_refuses_bad_updates(ids: Any, losses: Any, message: str) -> None:
    table = ScoreTable(6)
    with pytest.raises(ValueError, match=message):
        table.update(ids, losses)
    with pytest.raises(ValueError, match=message):
        table.set_reference(ids, losses)
    assert table.updates == 0 and table.nbytes == 12 * 6  # nothing recorded, nothing allocated


def test_the_table_refuses_bad_settings() -> None:
    with pytest.raises(ValueError, match="`size` to be a positive int"):
        ScoreTable(0)
    with pytest.raises(ValueError, match=r"`sync_every` to be a positive int .*got 0"):
        ScoreTable(4, sync_every=0)
    with pytest.raises(ValueError, match="`track_updates` to be a bool"):
        ScoreTable(4, track_updates=1)  # type: ignore[arg-type]


def test_the_table_saves_and_refuses_another_size() -> None:
    table = ScoreTable(5, track_updates=True)
    table.epoch = 1
    table.update([2, 3], [1.0, 2.0])
    copy = ScoreTable(5, track_updates=True)
    copy.load_state_dict(_roundtrip(table.state_dict()))
    np.testing.assert_array_equal(copy.losses, table.losses)
    assert (copy.epoch, copy.updates, copy.epoch_counts(1)) == (1, 1, (2, 0))
    assert copy.scored_update is not None and table.scored_update is not None
    assert copy.scored_update.tolist() == table.scored_update.tolist()
    assert copy.nbytes == table.nbytes  # the unset reference stays unallocated
    with pytest.raises(ValueError, match="holds 5 indices but this table holds 4"):
        ScoreTable(4).load_state_dict(table.state_dict())


def _old_state(n: int) -> dict[str, Any]:
    """A state as the table saved it before the compact layout: float64 arrays, int64 epochs
    and updates, ``scored_update`` always, no pending rows."""
    losses = np.full(n, np.nan)
    losses[[1, 3]] = [0.1, 2.0]
    previous = np.full(n, np.nan)
    previous[3] = 3.0
    scored_epoch = np.full(n, -1, dtype=np.int64)
    scored_epoch[[1, 3]] = [4, 5]
    scored_update = np.full(n, -1, dtype=np.int64)
    scored_update[[1, 3]] = [40, 51]
    return {
        "size": n,
        "epoch": 5,
        "updates": 52,
        "losses": torch.from_numpy(losses),
        "scored_epoch": torch.from_numpy(scored_epoch),
        "scored_update": torch.from_numpy(scored_update),
        "previous": torch.from_numpy(previous),
        "reference": torch.full((n,), float("nan"), dtype=torch.float64),
    }


def test_a_state_saved_by_the_old_table_loads_compact() -> None:
    old = _roundtrip(_old_state(6))
    table = ScoreTable(6)
    table.load_state_dict(old)
    assert (table.epoch, table.updates, table.pending) == (5, 52, 0)
    assert table.losses.dtype == np.float32 and table.scored_epoch.dtype == np.int32
    np.testing.assert_array_equal(table.losses, old["losses"].numpy().astype(np.float32))
    np.testing.assert_array_equal(table.previous, old["previous"].numpy().astype(np.float32))
    assert table.scored_epoch.tolist() == [-1, 4, -1, 5, -1, -1]
    assert table.scored_update is None and table.nbytes == 12 * 6  # all-NaN reference: none
    tracked = ScoreTable(6, track_updates=True)
    tracked.load_state_dict(old)
    assert tracked.scored_update is not None
    assert tracked.scored_update.tolist() == [-1, 40, -1, 51, -1, -1]
    table.update([1], [0.5])  # and it goes on as usual
    assert table.previous[1] == np.float32(0.1) and table.scored_epoch[1] == 5
    older = {k: v for k, v in old.items() if k not in ("previous", "reference")}
    table.load_state_dict(older)  # saved before previous and reference existed
    assert np.isnan(table.previous).all() and np.isnan(table.reference).all()
    old["reference"][2] = 0.75
    table.load_state_dict(old)
    assert table.reference[2] == 0.75 and table.nbytes == 16 * 6


def test_previous_is_the_last_finite_loss_before_the_latest_record() -> None:
    table = ScoreTable(4)
    table.update([0, 1], [1.0, 5.0])
    assert np.isnan(table.previous).all()  # one record each: no previous yet
    table.update([0, 1], [float("nan"), 4.0])
    table.update([0], [2.0])
    # index 0: 1.0, NaN, 2.0 -> the NaN is skipped; index 1: 5.0, 4.0
    assert table.previous[:2].tolist() == [1.0, 5.0]
    assert table.losses[:2].tolist() == [2.0, 4.0]
    assert np.isnan(table.previous[2:]).all()
    # one call recording an index twice is applied row by row, as two calls would be
    table.update([3, 3, 3], [1.0, 0.5, float("nan")])
    assert (table.previous[3], np.isnan(table.losses[3])) == (0.5, True)


def test_folding_rows_gives_what_applying_them_one_by_one_gives() -> None:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 7, size=60)
    losses = rng.random(60)
    losses[rng.random(60) < 0.3] = np.nan
    folded, one_by_one = ScoreTable(7), ScoreTable(7)
    folded.update([0, 4], [9.0, float("nan")])
    one_by_one.update([0, 4], [9.0, float("nan")])
    folded.update(ids, losses)
    for i, loss in zip(ids, losses, strict=True):
        one_by_one.update([i], [loss])
    np.testing.assert_array_equal(folded.losses, one_by_one.losses)
    np.testing.assert_array_equal(folded.previous, one_by_one.previous)
    unique, last, prior = fold_records(np.array([5, 5]), np.array([1.0, 2.0]))
    assert (unique.tolist(), last.tolist(), prior.tolist()) == ([5], [1], [0])
    assert [a.size for a in fold_records(np.zeros(0, np.int64), np.zeros(0))] == [0, 0, 0]


def test_set_reference_sets_only_the_given_indices_and_is_checked() -> None:
    table = ScoreTable(5)
    table.set_reference(torch.tensor([4, 1]), torch.tensor([0.5, 1.5], dtype=torch.bfloat16))
    table.set_reference([1], [2.0])  # replaced
    assert table.reference[[1, 4]].tolist() == [2.0, 0.5]
    assert np.isnan(table.reference[[0, 2, 3]]).all()
    assert table.updates == 0 and (table.scored_epoch == -1).all()  # not a training record
    with pytest.raises(ValueError, match=r"`ids` in \[0, 5\).*got 7"):
        table.set_reference([7], [1.0])
    with pytest.raises(ValueError, match="same length"):
        table.set_reference([0, 1], [1.0])


def test_previous_and_reference_are_saved() -> None:
    table = ScoreTable(4)
    table.update([0, 1], [1.0, 2.0])
    table.update([0], [0.5])
    table.set_reference([1, 3], [0.25, 0.75])
    copy = ScoreTable(4)
    copy.load_state_dict(_roundtrip(table.state_dict()))
    np.testing.assert_array_equal(copy.previous, table.previous)
    np.testing.assert_array_equal(copy.reference, table.reference)


def test_the_pure_scores() -> None:
    assert loss_change(np.array([1.0, 0.5]), np.array([0.25, 0.5])).tolist() == [0.75, 0.0]
    assert reducible_loss(np.array([1.0, 0.5]), np.array([0.25, 0.75])).tolist() == [0.75, -0.25]
    table = ScoreTable(2)
    with pytest.raises(ValueError, match=r"one score per index, shape \(2,\).*\(1,\)"):
        table.scores(lambda t, i: np.zeros(1), np.arange(2))
    assert loss_trend(np.array([1.0, 0.5]), np.array([0.25, 0.75])).tolist() == [0.75, -0.25]
    assert sorted(SCORES) == ["change", "loss", "reducible", "trend"]


# ---------------------------------------------------------------- epochs and pending rows


def test_epoch_counts_count_records_and_repeats_per_epoch() -> None:
    table = ScoreTable(10)
    table.epoch = 0
    table.update([0, 1, 2], [1.0, 1.0, 1.0])
    table.update([2, 3, 3], [1.0, float("nan"), 1.0])  # NaN records count too
    table.epoch = 1
    table.update([0, 1], [1.0, 1.0])  # recorded in epoch 0, new in epoch 1
    assert [table.epoch_counts(e) for e in (0, 1, 2)] == [(6, 2), (2, 0), (0, 0)]
    repeats = repeated_records(np.array([4, 4]), np.array([1, 2]), np.array([1, 1]))
    assert repeats.tolist() == [True, False]
    for epoch in range(2, 12):  # only the latest epochs are kept
        table.epoch = epoch
        table.update([5], [1.0])
    assert table.epoch_counts(0) == (0, 0) and table.epoch_counts(11) == (1, 0)
    assert len(table.state_dict()["epoch_counts"]) == 8


@pytest.fixture
def exchanging(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tables behave as under DDP (rows pend until an exchange) in this one process: the
    padded gather of a single process returns its own rows, with no collective."""
    monkeypatch.setattr(ScoreTable, "shared", property(lambda self: self.distributed is not False))


@pytest.mark.usefixtures("exchanging")
def test_pending_rows_wait_and_keep_their_epoch() -> None:
    table = ScoreTable(8, sync_every=3, track_updates=True)
    table.epoch = 0
    table.update([1, 2], [1.0, 2.0])
    table.update([3], [3.0])
    assert table.pending == 3 and np.isnan(table.losses).all()  # reading never exchanges
    assert table.nbytes == 16 * 8 + 3 * (8 + 4)  # the pending ids and losses are counted
    table.epoch = 1
    table.sync()  # as the sampler does when it decides epoch 1
    assert table.pending == 0 and table.scored_epoch[1:4].tolist() == [0, 0, 0]
    assert table.epoch_counts(0) == (3, 0) and table.epoch_counts(1) == (0, 0)
    table.update([2], [0.5])
    table.update([4], [0.5])
    assert table.pending == 2
    table.update([5], [0.5])  # the third call since the last exchange: exchanged
    assert table.pending == 0
    assert table.scored_epoch[2:6].tolist() == [1, 0, 1, 1]
    assert table.scored_update is not None and table.scored_update[2:6].tolist() == [2, 1, 3, 4]
    assert table.previous[2] == 2.0 and table.epoch_counts(1) == (3, 0)
    table.sync()  # nothing pending: a no-op
    assert table.pending == 0 and table.updates == 5


@pytest.mark.usefixtures("exchanging")
def test_recorded_counts_this_ranks_pending_rows() -> None:
    table = ScoreTable(8)
    table.epoch = 2
    table.update([1, 2], [1.0, 2.0])
    table.sync()
    table.update([5], [1.0])
    assert np.flatnonzero(table.recorded(np.arange(8), 2)).tolist() == [1, 2, 5]
    assert not table.recorded([1, 5], 1).any()
    assert table.recorded(torch.tensor([5]), 2).tolist() == [True]
    with pytest.raises(ValueError, match=r"`ids` in \[0, 8\).*got 8"):
        table.recorded([8], 2)


@pytest.mark.usefixtures("exchanging")
def test_a_state_saved_between_exchanges_keeps_its_pending_rows() -> None:
    table = ScoreTable(8, sync_every=100, track_updates=True)
    table.epoch = 0
    table.update([1, 2], [1.0, 2.0])
    table.sync()
    table.epoch = 1
    table.update([2, 3], [0.5, 3.0])
    table.update([4], [4.0])
    state = _roundtrip(table.state_dict())
    assert table.pending == 3  # saving leaves the buffer as it was
    resumed = ScoreTable(8, sync_every=100, track_updates=True)
    resumed.load_state_dict(state)
    assert resumed.pending == 3
    assert resumed.recorded([2, 3, 4, 1], 1).tolist() == [True, True, True, False]
    for t in (table, resumed):
        t.epoch = 2
        t.sync()
    for name in ("losses", "previous", "scored_epoch", "scored_update"):
        np.testing.assert_array_equal(getattr(resumed, name), getattr(table, name), name)
    assert resumed.scored_epoch[2:5].tolist() == [1, 1, 1]  # stamped when recorded
    assert resumed.epoch_counts(1) == table.epoch_counts(1) == (3, 0)
    assert resumed.updates == 3
    # without a process group, rows left pending by a state are applied by the next sync
    alone = ScoreTable(8, distributed=False)
    alone.load_state_dict(state)
    assert alone.pending == 3
    alone.sync()
    assert alone.pending == 0 and alone.losses[4] == 4.0


def test_without_a_process_group_sync_runs_nothing() -> None:
    table = ScoreTable(4, sync_every=1)
    table.update([0], [1.0])
    assert not table.shared and table.pending == 0 and table.losses[0] == 1.0
    table.sync()
    assert (table.collectives, table.sync_seconds) == (0, 0.0)


# ---------------------------------------------------------------- the padded gather


def test_without_a_process_group_the_gather_returns_this_rank_alone() -> None:
    messages = PaddedGather(None, capacity=2)
    rows = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])  # longer than the capacity
    headers, parts = messages.gather(np.array([7, 8]), rows)
    assert headers.tolist() == [[7.0, 8.0]] and len(parts) == 1
    np.testing.assert_array_equal(parts[0], rows)
    headers, parts = messages.gather_once(np.zeros(0), np.zeros((1, 0)))
    assert headers.shape == (1, 0) and parts[0].shape == (1, 0)
    # nothing was sent, so nothing was agreed
    assert (messages.capacity, messages.collectives) == (2, 0)


def test_the_gather_refuses_rows_that_are_not_2d() -> None:
    with pytest.raises(ValueError, match=r"`rows` of shape \(k, n\), but got shape \(3,\)"):
        PaddedGather(None).gather(np.zeros(1), np.zeros(3))


def test_a_single_process_lockstep_returns_its_own_round_unchanged() -> None:
    lockstep = Lockstep(RankInfo(0, 1), capacity=0)
    losses, ids = np.array([0.5, 0.25]), np.array([[3.0, 4.0]])
    (peer,) = lockstep.exchange(2, losses, 1, False, False, ids, np.array([9.0]))
    assert (peer.size, peer.buffered, peer.exhausted, peer.error) == (2, 1, False, False)
    assert peer.losses is losses and peer.channels is ids and peer.scalars.tolist() == [9.0]
    assert lockstep.capacity == 1 and lockstep.seconds == 0.0


def _counting_all_gathers() -> list[int]:
    """Counts this process's ``dist.all_gather`` calls from now on (in a spawned rank)."""
    calls = [0]
    original = dist.all_gather

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return original(*args, **kwargs)

    dist.all_gather = counted  # type: ignore[assignment]
    return calls


def _gather_job(rank: int, world: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    messages = PaddedGather(None)

    def gather(n: int, once: bool = False) -> int:
        before = messages.collectives
        rows = np.stack([np.arange(n) + 100 * rank, np.full(n, rank + 0.5)])
        call = messages.gather_once if once else messages.gather
        headers, parts = call(np.array([rank, -rank]), rows)
        out.setdefault("headers", []).append(headers.tolist())
        out.setdefault("rows", []).append([p.tolist() for p in parts])
        out.setdefault("capacity", []).append(messages.capacity)
        return messages.collectives - before

    # first call: agree on a length (2); then one per call, two when a rank outgrows it
    out["counts"] = [gather(2 + rank), gather(1), gather(5 if rank else 0), gather(3)]
    out["counts"].append(gather(9, once=True))  # a one-off: two, capacity kept
    calls = _counting_all_gathers()
    lockstep = Lockstep(RankInfo(rank, world), capacity=3)
    rounds = []
    for size in (3, 2, 4 + rank, 1):
        losses = np.arange(size, dtype=np.float64) + rank
        ids = np.stack([np.arange(size) + 10 * rank])
        before = calls[0]
        peers = lockstep.exchange(size, losses, rank, False, False, ids, np.array([rank * 2.0]))
        rounds.append(
            {
                "all_gathers": calls[0] - before,
                "sizes": [p.size for p in peers],
                "buffered": [p.buffered for p in peers],
                "losses": [p.losses.tolist() for p in peers],
                "ids": [p.channels.tolist() for p in peers],
                "scalars": [p.scalars.tolist() for p in peers],
            }
        )
    out["rounds"], out["lockstep_capacity"] = rounds, lockstep.capacity
    out["seconds"] = (messages.seconds, lockstep.seconds)
    return out


def test_real_ddp_ranks_gather_padded_messages_with_the_documented_collectives() -> None:
    r0, r1 = run_ranks(_gather_job, 2, timeout=60)
    for key in ("headers", "rows", "capacity", "rounds"):
        assert r0[key] == r1[key], key
    assert r0["counts"] == [2, 1, 2, 1, 2]
    assert r0["capacity"] == [3, 3, 5, 5, 5]  # agreed as the longest rows, then grown
    assert all(h == [[0.0, 0.0], [1.0, -1.0]] for h in r0["headers"])
    assert r0["rows"][0] == [[[0.0, 1.0], [0.5, 0.5]], [[100.0, 101.0, 102.0], [1.5, 1.5, 1.5]]]
    assert r0["rows"][2] == [[[], []], [[100.0, 101.0, 102.0, 103.0, 104.0], [1.5] * 5]]
    # the loader's rounds: one all_gather each, two when a raw batch outgrew the capacity
    assert [r["all_gathers"] for r in r0["rounds"]] == [1, 1, 2, 1]
    assert r0["lockstep_capacity"] == 5
    third = r0["rounds"][2]
    assert third["sizes"] == [4, 5] and third["buffered"] == [0, 1]
    assert third["losses"] == [[0.0, 1.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0, 5.0]]
    assert third["ids"] == [[[0.0, 1.0, 2.0, 3.0]], [[10.0, 11.0, 12.0, 13.0, 14.0]]]
    assert third["scalars"] == [[0.0], [2.0]]
    assert all(s > 0 for s in r0["seconds"])
