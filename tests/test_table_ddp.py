"""The score table on real DDP ranks (two spawned gloo processes): rows pend until an exchange,
every rank ends with the same table, exchanges come every ``sync_every`` calls, a checkpoint
between exchanges loses nothing, and ``epoch_counts`` tells a sharded loop from an unsharded one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from _ddp import run_ranks
from _resume import roundtrip
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler

from smartsift.modes.table import ScoreTable

N = 40
CALLS = 7
EPOCH_OF_CALL = [0, 0, 0, 0, 1, 1, 1]
ARRAYS = ("losses", "previous", "scored_epoch", "scored_update")


def _rows(rank: int, call: int) -> tuple[np.ndarray, np.ndarray]:
    """What ``rank`` records at ``call``: 2 rows on rank 0, 3 on rank 1 (none at call 5), ids
    that overlap between the ranks, and some NaN losses."""
    if rank == 1 and call == 5:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    rng = np.random.default_rng(100 * rank + call)
    ids = rng.choice(12, size=2 + rank, replace=False)
    losses = rng.random(ids.size).astype(np.float32)
    losses[rng.random(ids.size) < 0.2] = np.nan
    return ids, losses


def _arrays(table: ScoreTable) -> dict[str, list[Any]]:
    return {name: np.asarray(getattr(table, name)).tolist() for name in ARRAYS}


def _exchange_job(rank: int, world: int) -> dict[str, Any]:
    tables = {
        "every3": ScoreTable(N, sync_every=3, track_updates=True),
        "resumed": ScoreTable(N, sync_every=3, track_updates=True),
        "every_call": ScoreTable(N, sync_every=1, track_updates=True),
    }
    out: dict[str, Any] = {"collectives": [], "pending": []}
    for call in range(CALLS):
        ids, losses = _rows(rank, call)
        for table in tables.values():
            table.epoch = EPOCH_OF_CALL[call]
            table.update(torch.from_numpy(ids), torch.from_numpy(losses))
        out["collectives"].append(tables["every3"].collectives)
        out["pending"].append(tables["every3"].pending)
        if call == 4:  # a checkpoint between exchanges, resumed into a new table
            state = roundtrip(tables["resumed"].state_dict())
            tables["resumed"] = ScoreTable(N, sync_every=3, track_updates=True)
            tables["resumed"].load_state_dict(state)
    table = tables["every3"]
    last_ids = {r: _rows(r, CALLS - 1)[0] for r in range(world)}
    # the other rank's last ids that this rank has no record of in epoch 1 yet
    known = np.union1d(np.flatnonzero(table.scored_epoch == 1), last_ids[rank])
    other = np.setdiff1d(last_ids[1 - rank], known)
    out["before_sync"] = {
        "mine": table.recorded(last_ids[rank], 1).tolist(),
        "other": table.recorded(other, 1).tolist(),
    }
    for t in tables.values():
        t.sync()
    out["after_sync"] = table.recorded(other, 1).tolist()
    out["collectives"].append(table.collectives)
    table.sync()  # nothing pending on any rank: no collective
    out["collectives"].append(table.collectives)
    out["every_call_collectives"] = tables["every_call"].collectives
    out["tables"] = {name: _arrays(t) for name, t in tables.items()}
    out["counts"] = {name: [t.epoch_counts(e) for e in (0, 1)] for name, t in tables.items()}
    out["seconds"] = table.sync_seconds
    return out


def _expected() -> ScoreTable:
    """One process fed every call's rows, rank 0's then rank 1's: the old exchange per call."""
    table = ScoreTable(N, distributed=False, track_updates=True)
    for call in range(CALLS):
        parts = [_rows(r, call) for r in range(2)]
        table.epoch = EPOCH_OF_CALL[call]
        table.update(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return table


def test_real_ddp_ranks_exchange_every_n_calls_and_end_with_the_same_table() -> None:
    r0, r1 = run_ranks(_exchange_job, 2, timeout=90)
    expected = _arrays(_expected())
    for name in ("every3", "resumed", "every_call"):
        for array in ARRAYS:
            np.testing.assert_array_equal(r0["tables"][name][array], expected[array])
            np.testing.assert_array_equal(r1["tables"][name][array], expected[array])
        assert r0["counts"][name] == r1["counts"][name] == r0["counts"]["every_call"]
    # rows recorded under epoch 0 keep that stamp, though applied with epoch 1 set
    assert 0 in r0["tables"]["every3"]["scored_epoch"]
    expected_counts = [_expected().epoch_counts(e) for e in (0, 1)]
    assert r0["counts"]["every3"] == expected_counts
    assert [records for records, _ in expected_counts] == [4 * 5, 3 * 5 - 3]
    # exchanges at the 3rd and 6th call (the first agrees on the message length: two
    # collectives), then the explicit sync of the last call's rows; a sync with nothing
    # pending runs none
    for r in (r0, r1):
        assert r["collectives"] == [0, 0, 2, 2, 2, 3, 3, 4, 4]
        assert all(r["before_sync"]["mine"]) and r["before_sync"]["other"]
        assert not any(r["before_sync"]["other"]) and all(r["after_sync"])
        assert r["every_call_collectives"] == CALLS + 1  # the old behaviour: one per call
    assert (r0["pending"][:3], r1["pending"][:3]) == ([2, 4, 0], [3, 6, 0])
    assert r0["seconds"] > 0


def _reference_job(rank: int, world: int) -> dict[str, Any]:
    n = 10
    table = ScoreTable(n)
    mine = np.arange(rank, n, world)[: 3 + rank]  # shares of different lengths
    table.set_reference(mine, mine * 0.5)
    table.update([rank], [1.0])  # pending: the reference's own message length is not kept
    table.update([rank + 2], [2.0])
    before = table.collectives
    table.sync()
    return {
        "reference": table.reference.tolist(),
        "losses": table.losses.tolist(),
        "collectives": (before, table.collectives),
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
    assert np.isfinite(r0["losses"]).sum() == 4
    # two for the reference, at once; the updates wait for the sync, whose first exchange
    # agrees on its length: 2 + 2
    assert r0["collectives"] == (2, 4)


def _epoch_counts_job(rank: int, world: int, n: int) -> dict[str, Any]:
    data: Any = range(n)
    samplers = {
        "sharded": DistributedSampler(data, seed=3),
        # the same order on every rank, never sharded: every rank trains every sample
        "unsharded": RandomSampler(data, generator=torch.Generator().manual_seed(3)),
    }
    out = {}
    for name, sampler in samplers.items():
        table = ScoreTable(n)
        loader: DataLoader[Any] = DataLoader(data, sampler=sampler, batch_size=8)
        for epoch in range(2):
            if isinstance(sampler, DistributedSampler):
                sampler.set_epoch(epoch)
            table.epoch = epoch
            for ids in loader:
                table.update(ids, torch.rand(ids.numel()))
            table.sync()
        out[name] = [table.epoch_counts(e) for e in range(2)]
    return out


def test_epoch_counts_tell_a_sharded_loop_from_an_unsharded_one() -> None:
    n = 51  # odd: the DistributedSampler pads one rank's share with one repeated sample
    r0, r1 = run_ranks(_epoch_counts_job, 2, n, timeout=60)
    assert r0 == r1
    assert r0["sharded"] == [(n + 1, 1)] * 2
    assert r0["unsharded"] == [(2 * n, n)] * 2
