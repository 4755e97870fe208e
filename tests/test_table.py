"""The score table of loss reuse, and the padded all-gather that shares it (and the loader's
rounds) between DDP ranks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _ddp import run_ranks
from _resume import roundtrip as _roundtrip

from smartsift.engine.distributed import Lockstep, PaddedGather, RankInfo
from smartsift.modes.table import SCORES, ScoreTable, loss_change, reducible_loss

# ---------------------------------------------------------------- recording


def test_the_table_records_loss_epoch_and_update_of_each_index() -> None:
    table = ScoreTable(6)
    table.epoch = 2
    table.update(torch.tensor([4, 1]), torch.tensor([0.5, 1.5], dtype=torch.bfloat16))
    table.epoch = 3
    table.update([1], torch.tensor([0.25], requires_grad=True))
    assert table.losses[[1, 4]].tolist() == [0.25, 0.5]
    assert table.scored_epoch.tolist() == [-1, 3, -1, -1, 2, -1]
    assert table.scored_update.tolist() == [-1, 1, -1, -1, 0, -1]
    assert table.scored().tolist() == [False, True, False, False, True, False]
    table.update([0], [float("nan")])
    assert not table.scored()[0] and table.updates == 3 and table.collectives == 0


@pytest.mark.parametrize(
    ("ids", "losses", "message"),
    [
        ([0, 1], [0.1], r"same length.*\(2,\) and \(1,\)"),
        ([0, 9], [0.1, 0.2], r"`ids` in \[0, 6\).*got 9.*ScoreTable\(len\(dataset\)\)"),
        ([0.0, 1.0], [0.1, 0.2], r"integer dataset indices.*float64"),
        ([[0, 1]], [[0.1, 0.2]], "1-D"),
    ],
)
def test_the_table_refuses_bad_updates(ids: Any, losses: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoreTable(6).update(ids, losses)


def test_the_table_saves_and_refuses_another_size() -> None:
    table = ScoreTable(5)
    table.epoch = 1
    table.update([2, 3], [1.0, 2.0])
    copy = ScoreTable(5)
    copy.load_state_dict(_roundtrip(table.state_dict()))
    np.testing.assert_array_equal(copy.losses, table.losses)
    assert (copy.epoch, copy.updates) == (1, 1)
    assert copy.scored_update.tolist() == table.scored_update.tolist()
    with pytest.raises(ValueError, match="holds 5 indices but this table holds 4"):
        ScoreTable(4).load_state_dict(table.state_dict())
    with pytest.raises(ValueError, match="`size` to be a positive int"):
        ScoreTable(0)


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


def test_previous_and_reference_are_saved_and_old_states_load_with_nan() -> None:
    table = ScoreTable(4)
    table.update([0, 1], [1.0, 2.0])
    table.update([0], [0.5])
    table.set_reference([1, 3], [0.25, 0.75])
    copy = ScoreTable(4)
    copy.load_state_dict(_roundtrip(table.state_dict()))
    np.testing.assert_array_equal(copy.previous, table.previous)
    np.testing.assert_array_equal(copy.reference, table.reference)
    old = {k: v for k, v in table.state_dict().items() if k not in ("previous", "reference")}
    older = ScoreTable(4)
    older.load_state_dict(old)
    np.testing.assert_array_equal(older.losses, table.losses)
    assert np.isnan(older.previous).all() and np.isnan(older.reference).all()


def test_the_pure_scores() -> None:
    assert loss_change(np.array([1.0, 0.5]), np.array([0.25, 0.5])).tolist() == [0.75, 0.0]
    assert reducible_loss(np.array([1.0, 0.5]), np.array([0.25, 0.75])).tolist() == [0.75, -0.25]
    table = ScoreTable(2)
    with pytest.raises(ValueError, match=r"one score per index, shape \(2,\).*\(1,\)"):
        table.scores(lambda t, i: np.zeros(1), np.arange(2))
    assert sorted(SCORES) == ["change", "loss", "reducible"]


# ---------------------------------------------------------------- DDP


def _reference_job(rank: int, world: int) -> dict[str, Any]:
    n = 10
    table = ScoreTable(n)
    mine = np.arange(rank, n, world)[: 3 + rank]  # shares of different lengths
    table.set_reference(mine, mine * 0.5)
    table.update([rank], [1.0])  # update's own agreed length is a batch's, not the reference's
    table.update([rank + 2], [2.0])
    return {
        "reference": table.reference.tolist(),
        "losses": table.losses.tolist(),
        "collectives": table.collectives,
    }


def test_real_ddp_ranks_share_the_reference() -> None:
    r0, r1 = run_ranks(_reference_job, 2, timeout=60)
    np.testing.assert_array_equal(r0["reference"], r1["reference"])
    shares = [np.arange(r, 10, 2)[: 3 + r] for r in range(2)]
    expected = np.full(10, np.nan)
    for share in shares:
        expected[share] = share * 0.5
    np.testing.assert_array_equal(r0["reference"], expected)
    np.testing.assert_array_equal(r0["losses"], r1["losses"])
    # two for the reference; then update's first call agrees on its length and sends: 2 + 1
    assert r0["collectives"] == 2 + 3


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
