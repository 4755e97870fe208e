"""Loss reuse: the sampler, against torch's own loaders, DDP and resume (the score table
alone: tests/test_table.py)."""

from __future__ import annotations

import io
import itertools
from collections import Counter
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from _ddp import run_ranks
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    DistributedSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    TensorDataset,
)

import smartsift as ss
from smartsift.engine import checkpoint as ckpt
from smartsift.modes.reuse import ReuseSampler, annealing, fresh_scores, shard_evenly
from smartsift.modes.table import ScoreTable

N = 96
BS = 8

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")


def _data(n: int = N) -> ss.IndexedDataset:
    return ss.IndexedDataset(TensorDataset(torch.randn(n, 3), torch.zeros(n)))


def _losses(ids: torch.Tensor, epoch: int) -> torch.Tensor:
    """A deterministic per-sample 'training loss' that falls with the epochs."""
    base = (ids.double() * 37 % 101) / 101 + 0.01
    return base * 0.8**epoch


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


class CountingSampler(Sampler[int]):
    """A base sampler that counts how often it is iterated (the sampler decides once per
    iteration of its base)."""

    def __init__(self, inner: Sampler[int]) -> None:
        self.inner = inner
        self.iterations = 0

    def __iter__(self) -> Iterator[int]:
        self.iterations += 1
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)  # type: ignore[arg-type]


def _ids_of(batch: Any) -> torch.Tensor:
    return torch.as_tensor(batch[0]).reshape(-1)


def _train_epoch(loader: Any, table: ScoreTable, epoch: int) -> tuple[list[int], int]:
    """Iterates one epoch, feeding the table as a training step would; returns the trained ids
    and the batch count, failing if the epoch does not end."""
    trained: list[int] = []
    batches = 0
    for batch in itertools.islice(loader, 4 * N):
        ids = _ids_of(batch)
        table.update(ids, _losses(ids, epoch))
        trained += ids.tolist()
        batches += 1
    assert batches < 4 * N, "the epoch did not end"
    return trained, batches


# ---------------------------------------------------------------- the pure parts


def test_fresh_scores_mark_never_scored_nonfinite_and_stale() -> None:
    losses = np.array([0.1, np.nan, 0.3, 0.4, np.inf])
    scored = np.array([5, 5, 3, 2, 5])
    fresh, stale = fresh_scores(losses, scored, epoch=5, max_age=2)
    assert fresh.tolist() == [True, False, True, False, False]
    assert stale.tolist() == [False, False, False, True, False]
    fresh, stale = fresh_scores(losses, scored, epoch=5, max_age=None)
    assert fresh.tolist() == [True, False, True, True, False] and not stale.any()


def test_annealing_is_the_last_fraction_of_epochs() -> None:
    assert [e for e in range(10) if annealing(e, 10, 0.125)] == [8, 9]  # ceil(1.25) = 2
    assert [e for e in range(8) if annealing(e, 8, 0.125)] == [7]
    assert not any(annealing(e, 8, 0.0) for e in range(8))


@pytest.mark.parametrize("n", [0, 1, 5, 6, 7])
@pytest.mark.parametrize("drop_last", [False, True])
def test_shards_are_equal_and_cover_the_list_once_up_to_padding(n: int, drop_last: bool) -> None:
    w = 3
    shards = [shard_evenly(np.arange(n), w, r, drop_last) for r in range(w)]
    sizes = {s.size for s, _, _ in shards}
    assert len(sizes) == 1
    joined = Counter(np.concatenate([s for s, _, _ in shards]).tolist())
    _, padded, dropped = shards[0]
    assert sum(joined.values()) == n + padded - dropped
    assert set(joined) <= set(range(n)) and (drop_last or set(joined) == set(range(n)))
    assert (padded == 0) if drop_last else (dropped == 0 and padded < w)


# ---------------------------------------------------------------- against torch's loaders


def _loader(kind: str, data: Any, sampler: ReuseSampler) -> Any:
    if kind == "batch_size":
        return DataLoader(data, sampler=sampler, batch_size=BS)
    if kind == "batch_size_drop_last":
        return DataLoader(data, sampler=sampler, batch_size=BS, drop_last=True)
    if kind == "batch_sampler":
        return DataLoader(data, batch_sampler=BatchSampler(sampler, BS, drop_last=False))
    if kind == "batch_sampler_drop_last":
        return DataLoader(data, batch_sampler=BatchSampler(sampler, BS, drop_last=True))
    if kind == "workers":
        return DataLoader(data, sampler=sampler, batch_size=BS, num_workers=2)
    if kind == "workers_persistent_unbatched":
        # No auto-collation: torch calls iter() on the sampler itself, twice per epoch.
        return DataLoader(
            data, sampler=sampler, batch_size=None, num_workers=2, persistent_workers=True
        )
    if kind == "stateful":
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        return stateful.StatefulDataLoader(data, sampler=sampler, batch_size=BS)
    if kind == "stateful_workers":
        stateful = pytest.importorskip("torchdata.stateful_dataloader")
        return stateful.StatefulDataLoader(data, sampler=sampler, batch_size=BS, num_workers=2)
    raise AssertionError(kind)


KINDS = [
    "batch_size",
    "batch_size_drop_last",
    "batch_sampler",
    "batch_sampler_drop_last",
    "workers",
    "workers_persistent_unbatched",
    "stateful",
    "stateful_workers",
]


CASES = [(kind, False) for kind in KINDS] + [
    (kind, True) for kind in ("batch_size", "workers", "stateful")
]


@pytest.mark.parametrize(
    ("kind", "explicit"), CASES, ids=[f"{k}-{'set_epoch' if e else 'counter'}" for k, e in CASES]
)
def test_every_sample_is_trained_or_skipped_once_per_epoch_and_pruning_goes_on(
    kind: str, explicit: bool
) -> None:
    data = _data()
    table = ScoreTable(N)
    audit = ss.SiftAudit(id_key=0)
    base = CountingSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(0)))
    sampler = ReuseSampler(
        base, table, ss.RelativeProbabilistic(keep=0.5, history=64), chunk_size=16, audit=audit
    )
    loader = _loader(kind, data, sampler)
    drop_last = "drop_last" in kind
    epochs = 4
    for epoch in range(epochs):
        if explicit:
            sampler.set_epoch(epoch)
            expected_batches = len(loader)  # exact before the epoch with set_epoch
        trained, batches = _train_epoch(loader, table, epoch)
        assert sampler.epoch == epoch and base.iterations == epoch + 1  # one decision each
        if explicit:
            assert batches == expected_batches
        stats = sampler.stats
        assert stats is not None and stats.epoch == epoch
        skipped = audit.epoch(epoch).sifted.tolist()
        tail = len(sampler) % BS if drop_last else 0
        assert len(trained) == len(sampler) - tail == stats.trained - tail
        assert max(Counter(trained).values()) == 1 and not set(trained) & set(skipped)
        assert len(trained) + len(skipped) + tail == N
        if epoch == 0:
            assert stats.skipped == 0 and stats.passed == N
        else:  # pruning happens after the first epoch, and goes on
            assert stats.skipped > N // 4 and len(trained) < N
    assert sorted(sampler.epoch_stats) == list(range(epochs))


def test_iterators_decide_nothing_until_advanced() -> None:
    table = ScoreTable(N)
    base = CountingSampler(SequentialSampler(range(N)))
    sampler = ReuseSampler(base, table, ss.TopK(keep=0.5))
    unused = [iter(sampler) for _ in range(3)]  # e.g. discarded by a loader's machinery
    assert base.iterations == 0 and sampler.epoch is None and len(unused) == 3
    assert len(list(sampler)) == N and sampler.epoch == 0 and base.iterations == 1


def test_len_decides_the_epoch_that_the_next_iteration_runs() -> None:
    table = ScoreTable(N)
    table.epoch = 0
    table.update(torch.arange(N), _losses(torch.arange(N), 0))
    base = CountingSampler(SequentialSampler(range(N)))
    sampler = ReuseSampler(base, table, ss.TopK(keep=0.25), chunk_size=N, max_age=None)
    n = len(sampler)
    assert n == N // 4 and len(sampler) == n and base.iterations == 1
    assert len(list(sampler)) == n and base.iterations == 1  # the same decision
    list(sampler)  # without set_epoch, the next iteration is the next epoch
    assert sampler.epoch == 1 and base.iterations == 2


def test_set_epoch_replays_the_same_epoch_until_changed() -> None:
    table = ScoreTable(N)
    base = CountingSampler(RandomSampler(range(N), generator=torch.Generator().manual_seed(1)))
    sampler = ReuseSampler(base, table, ss.TopK(keep=0.5))
    sampler.set_epoch(3)
    first = list(sampler)
    assert list(sampler) == first and len(sampler) == N and base.iterations == 1
    sampler.set_epoch(3)
    assert list(sampler) == first and base.iterations == 1
    sampler.set_epoch(4)
    list(sampler)
    assert sampler.epoch == 4 and base.iterations == 2


def test_only_the_latest_iteration_advances_the_saved_position() -> None:
    sampler = ReuseSampler(SequentialSampler(range(N)), ScoreTable(N), ss.TopK(keep=0.5))
    sampler.set_epoch(0)
    first = iter(sampler)
    assert [next(first) for _ in range(5)] == [0, 1, 2, 3, 4]
    second = iter(sampler)
    assert next(second) == 0 and sampler.state_dict()["position"] == 1
    assert next(first) == 5 and sampler.state_dict()["position"] == 1
    state = sampler.state_dict()
    assert state["indices"] is sampler.state_dict()["indices"]  # built once per decision


def test_never_scored_samples_are_always_trained() -> None:
    table = ScoreTable(N)
    audit = ss.SiftAudit(id_key=0)
    sampler = ReuseSampler(SequentialSampler(range(N)), table, ss.TopK(keep=0.1), audit=audit)
    unscored = set(range(0, N, 3))
    for epoch in range(4):
        trained = list(sampler)
        scored = torch.tensor([i for i in trained if i not in unscored])
        table.update(scored, _losses(scored, epoch))
        assert unscored <= set(trained)
        assert set(audit.epoch(epoch).passed.tolist()) >= unscored


@pytest.mark.parametrize("max_age", [1, 2, None])
def test_a_sample_is_skipped_at_most_max_age_epochs_in_a_row(max_age: int | None) -> None:
    table = ScoreTable(N)
    audit = ss.SiftAudit(id_key=0)
    sampler = ReuseSampler(
        SequentialSampler(range(N)), table, ss.TopK(keep=0.1), max_age=max_age, audit=audit
    )
    epochs = 8
    for epoch in range(epochs):
        ids = torch.tensor(list(sampler))
        table.update(ids, _losses(ids, epoch))
    skipped = [set(audit.epoch(e).sifted.tolist()) for e in range(epochs)]
    runs = Counter[int]()
    longest = 0
    for e in range(epochs):
        for i in range(N):
            runs[i] = runs[i] + 1 if i in skipped[e] else 0
        longest = max(longest, max(runs.values()))
    if max_age is None:
        assert longest == epochs - 1  # the easiest samples are never refreshed
    else:
        assert longest == max_age
        assert sum(s.stale for s in sampler.epoch_stats.values()) > 0


def test_annealing_epochs_train_on_everything() -> None:
    table = ScoreTable(N)
    sampler = ReuseSampler(
        SequentialSampler(range(N)), table, ss.TopK(keep=0.5), epochs=8, anneal=0.25
    )
    for epoch in range(8):
        ids = torch.tensor(list(sampler))
        table.update(ids, _losses(ids, epoch))
        stats = sampler.stats
        assert stats is not None and stats.annealing == (epoch >= 6)
        assert (ids.numel() == N) == (epoch == 0 or epoch >= 6)
    with pytest.raises(ValueError, match=r"anneal=0\.25 needs `epochs`"):
        ReuseSampler(SequentialSampler(range(N)), table, anneal=0.25)


# ---------------------------------------------------------------- rescaling


def test_weights_are_one_over_the_keep_probability() -> None:
    table = ScoreTable(N)
    table.epoch = 0
    table.update(torch.arange(N), _losses(torch.arange(N), 0))
    sampler = ReuseSampler(
        SequentialSampler(range(N)), table, ss.Uniform(keep=0.25), rescale=True, max_age=None
    )
    kept = torch.tensor(list(sampler))
    assert sampler.weights(kept).tolist() == [4.0] * kept.numel()
    never = ReuseSampler(SequentialSampler(range(N)), ScoreTable(N), rescale=True)
    assert never.weights(torch.arange(3)).tolist() == [1.0] * 3  # before any decision
    ids = torch.tensor(list(never))
    assert never.weights(ids).tolist() == [1.0] * N  # never scored: weight 1
    capped = ReuseSampler(
        SequentialSampler(range(N)), table, ss.Uniform(keep=0.25), rescale=True, max_weight=3.0
    )
    assert set(capped.weights(torch.tensor(list(capped))).tolist()) == {3.0}
    plain = ReuseSampler(SequentialSampler(range(N)), table, ss.Uniform(keep=0.25))
    assert set(plain.weights(torch.tensor(list(plain))).tolist()) == {1.0}


def test_weights_are_bounded_by_one_over_the_stated_keep_by_default() -> None:
    # A sample kept against the odds (low percentile, small p) would weigh 1/p unbounded.
    table = ScoreTable(N)
    table.epoch = 0
    table.update(torch.arange(N), _losses(torch.arange(N), 0))
    policy = ss.RelativeProbabilistic(keep=0.3, history=N)

    def weights(**kw: Any) -> torch.Tensor:
        sampler = ReuseSampler(
            SequentialSampler(range(N)), table, policy, rescale=True, chunk_size=N, seed=3, **kw
        )
        return sampler.weights(torch.tensor(list(sampler)))

    bounded, unbounded = weights(), weights(max_weight=None)
    assert ReuseSampler([0], ScoreTable(1), policy).max_weight == pytest.approx(1 / 0.3)
    assert bounded.max().item() == pytest.approx(1 / 0.3)
    assert unbounded.max().item() > 3 * bounded.max().item()  # what the bound prevents
    torch.testing.assert_close(bounded, unbounded.clamp(max=1 / 0.3))
    with pytest.raises(ValueError, match=r'`max_weight` to be "auto".*got \'big\''):
        ReuseSampler([0], ScoreTable(1), policy, max_weight="big")


def test_rescaled_weights_make_epoch_sums_unbiased() -> None:
    # The weight of a kept sample is exactly 1 / its keep probability (percentile ** beta), so
    # summed over the trained samples with their weights, any per-sample quantity averages to
    # its sum over all candidates.
    table = ScoreTable(N)
    table.epoch = 0
    losses = _losses(torch.arange(N), 0)
    table.update(torch.arange(N), losses)
    percentile = (losses.argsort().argsort() + 1).double() / N  # all losses differ
    values = torch.linspace(1.0, 2.0, N)
    sums = []
    for seed in range(200):
        sampler = ReuseSampler(
            SequentialSampler(range(N)),
            table,
            ss.RelativeProbabilistic(beta=1.0, history=N),
            rescale=True,
            max_weight=None,  # unbounded: exactly 1/p
            chunk_size=N,
            seed=seed,
        )
        ids = torch.tensor(list(sampler))
        assert 0 < ids.numel() < N
        weights = sampler.weights(ids)
        torch.testing.assert_close(weights.double(), 1 / percentile[ids], rtol=1e-6, atol=0)
        sums.append(float((values[ids] * weights).sum()))
    assert np.mean(sums) == pytest.approx(float(values.sum()), rel=0.05)


# ---------------------------------------------------------------- keep rates, DDP


def test_a_stated_keep_rate_holds_in_the_reuse_mode() -> None:
    n = 3000
    table = ScoreTable(n)
    rng = np.random.default_rng(0)
    sampler = ReuseSampler(
        RandomSampler(range(n), generator=torch.Generator().manual_seed(0)),
        table,
        ss.RelativeProbabilistic(keep=0.3, history=512),
        max_age=None,
    )
    for epoch in range(6):
        ids = torch.tensor(list(sampler))
        # losses drift down, and half the data turns hard at epoch 3 (a bimodal shift)
        loss = rng.exponential(size=ids.numel()) * 0.7**epoch
        if epoch >= 3:
            loss = loss + 2.0 * (ids.numpy() % 2)
        table.update(ids, torch.from_numpy(loss))
        stats = sampler.stats
        assert stats is not None
        if epoch >= 1:
            assert stats.decided_keep_rate == pytest.approx(0.3, abs=0.02)


@pytest.mark.parametrize("drop_last", [False, True])
def test_simulated_ranks_decide_alike_and_yield_equal_batches(drop_last: bool) -> None:
    n, world = 90, 2
    data = _data(n)
    table = ScoreTable(n)  # one table: what every rank holds after the all-gather
    audits = [ss.SiftAudit(id_key=0) for _ in range(world)]
    samplers = [
        ReuseSampler(
            DistributedSampler(data, num_replicas=world, rank=r, seed=4, drop_last=drop_last),
            table,
            ss.RelativeProbabilistic(keep=0.5, history=64),
            audit=audits[r],
        )
        for r in range(world)
    ]
    loaders = [DataLoader(data, sampler=s, batch_size=BS) for s in samplers]
    for epoch in range(4):
        for s in samplers:
            s.set_epoch(epoch)
        trained: list[list[int]] = [[] for _ in range(world)]
        for batches in itertools.zip_longest(*loaders):
            assert None not in batches, "ranks yielded different numbers of batches"
            for r, batch in enumerate(batches):
                trained[r] += batch[0].tolist()
            ids = torch.cat([b[0] for b in batches])
            table.update(ids, _losses(ids, epoch))
        s0, s1 = (s.stats for s in samplers)
        assert s0 == s1 and s0 is not None
        merged = ss.SiftAudit.merge(audits).epoch(epoch)
        everyone = Counter(trained[0] + trained[1])
        skipped = merged.sifted.tolist()
        assert not set(everyone) & set(skipped)
        assert len(set(everyone)) + len(skipped) + s0.dropped == n
        assert sum(everyone.values()) == s0.trained + s0.padded - s0.dropped
        assert set(merged.trained.tolist()) == set(everyone)
        assert epoch == 0 or s0.skipped > 0


def _ddp_job(rank: int, world: int) -> dict[str, Any]:
    n = 64
    torch.manual_seed(0)
    data = _data(n)
    table = ScoreTable(n)
    sampler = ReuseSampler(
        DistributedSampler(data, seed=1),
        table,
        ss.RelativeProbabilistic(keep=0.5, history=64),
        chunk_size=16,
    )
    loader = DataLoader(data, sampler=sampler, batch_size=4)
    out: dict[str, Any] = {"batches": [], "trained": [], "skipped": []}
    for epoch in range(3):
        sampler.set_epoch(epoch)
        trained, batches = _train_epoch(loader, table, epoch)
        out["batches"].append(batches)
        out["trained"].append(trained)
        stats = sampler.stats
        assert stats is not None
        out["skipped"].append(stats.skipped)
    table.sync()  # the last epoch's losses: exchanged at the next decision, or now
    out["losses"] = table.losses.tolist()
    out["updates"], out["collectives"] = table.updates, table.collectives
    out["seconds_per_update"] = table.sync_seconds / table.updates
    return out


def test_real_ddp_ranks_share_one_table_and_step_alike() -> None:
    r0, r1 = run_ranks(_ddp_job, 2, timeout=60)
    assert r0["losses"] == r1["losses"]  # every rank holds the same table
    assert not np.isnan(r0["losses"]).any()
    assert r0["batches"] == r1["batches"]
    assert r0["updates"] == r1["updates"] == sum(r0["batches"])
    # the losses are exchanged when an epoch is decided (and by the last sync), not per step:
    # at most two collectives each time (the first agrees on the message length)
    assert r0["collectives"] == r1["collectives"] <= 2 * 3 < r0["updates"]
    for epoch in range(3):
        trained = r0["trained"][epoch] + r1["trained"][epoch]
        assert len(set(trained)) + r0["skipped"][epoch] == 64
    assert r0["skipped"][0] == 0 and min(r0["skipped"][1:]) > 0


# ---------------------------------------------------------------- resume


def _make(seed: int = 0, explicit: bool = False) -> tuple[ScoreTable, ReuseSampler]:
    table = ScoreTable(N)
    base = RandomSampler(range(N), generator=torch.Generator().manual_seed(seed))
    sampler = ReuseSampler(
        base,
        table,
        ss.RelativeProbabilistic(keep=0.4, history=64),
        chunk_size=16,
        rescale=True,
        audit=ss.SiftAudit(id_key=0),
    )
    return table, sampler


def _steps(table: ScoreTable, sampler: ReuseSampler, epoch: int, it: Iterator[int]) -> list:
    """The rest of an epoch from iterator ``it``, in steps of 5, with weights."""
    out = []
    while chunk := list(itertools.islice(it, 5)):
        ids = torch.tensor(chunk)
        table.update(ids, _losses(ids, epoch))
        out.append((chunk, sampler.weights(ids).tolist()))
    return out


@pytest.mark.parametrize("explicit", [False, True], ids=["counter", "set_epoch"])
@pytest.mark.parametrize("stop", [(0, 0), (1, 0), (1, 23), (2, 40), (2, 10_000)])
def test_a_resumed_sampler_yields_exactly_the_remaining_indices(
    stop: tuple[int, int], explicit: bool
) -> None:
    epochs = 4

    def run(table: ScoreTable, sampler: ReuseSampler, start: int, resume_it: Any) -> list:
        out = []
        for epoch in range(start, epochs):
            if explicit and resume_it is None:
                sampler.set_epoch(epoch)
            it = resume_it if resume_it is not None else iter(sampler)
            resume_it = None
            out.append(_steps(table, sampler, epoch, it))
        return out

    expected = run(*_make(), 0, None)
    table, sampler = _make()
    stop_epoch, stop_at = stop
    for epoch in range(stop_epoch):
        if explicit:
            sampler.set_epoch(epoch)
        _steps(table, sampler, epoch, iter(sampler))
    if explicit:
        sampler.set_epoch(stop_epoch)
    it = iter(sampler)
    head = list(itertools.islice(it, stop_at))
    if head:
        ids = torch.tensor(head)
        table.update(ids, _losses(ids, stop_epoch))
    states = _roundtrip({"table": table.state_dict(), "sampler": sampler.state_dict()})
    table2, sampler2 = _make(seed=99)  # the base generator comes from the state
    table2.load_state_dict(states["table"])
    sampler2.load_state_dict(states["sampler"])
    if explicit:
        sampler2.set_epoch(stop_epoch)  # the same epoch: the resume stands
    elif not head and stop_epoch > 0:
        # Saved between epochs, the counter resumes the (complete) last epoch: nothing left.
        assert list(sampler2) == [] and sampler2.epoch == stop_epoch - 1
    resumed = run(table2, sampler2, stop_epoch, iter(sampler2))
    flat = [i for chunk, _ in expected[stop_epoch] for i in chunk]
    assert [i for chunk, _ in resumed[0] for i in chunk] == flat[len(head) :]
    assert resumed[1:] == expected[stop_epoch + 1 :]
    assert sampler2.epoch_stats == _final_stats(explicit)


def _final_stats(explicit: bool) -> dict:
    table, sampler = _make()
    for epoch in range(4):
        if explicit:
            sampler.set_epoch(epoch)
        _steps(table, sampler, epoch, iter(sampler))
    return sampler.epoch_stats


@pytest.mark.parametrize("stop", [3, "last", "after"])
@pytest.mark.parametrize("workers", [0, 2])
def test_stateful_dataloader_resumes_mid_epoch_exactly(workers: int, stop: Any) -> None:
    # Saved after 3 batches of epoch 1, after its last batch (before the loader knows the
    # epoch ended), or after the epoch's loop: the resumed run trains exactly what is left.
    stateful = pytest.importorskip("torchdata.stateful_dataloader")
    data = _data()

    def make() -> tuple[ScoreTable, ReuseSampler, Any]:
        table, sampler = _make()
        loader = stateful.StatefulDataLoader(
            data, sampler=sampler, batch_size=BS, num_workers=workers
        )
        return table, sampler, loader

    def steps(table: ScoreTable, it: Any, epoch: int, limit: int | None = None) -> list:
        out = []
        for batch in itertools.islice(it, limit):
            ids = batch[0]
            table.update(ids, _losses(ids, epoch))
            out.append(ids.tolist())
        return out

    table, _, loader = make()
    expected = [steps(table, loader, e) for e in range(3)]
    table, _, loader = make()
    steps(table, loader, 0)
    it = iter(loader)
    if stop == "after":
        head = steps(table, it, 1)
    else:
        head = steps(table, it, 1, 3 if stop == 3 else len(expected[1]))
    state = _roundtrip({"loader": loader.state_dict(), "table": table.state_dict()})
    del it, loader
    table2, sampler2, loader2 = make()
    loader2.load_state_dict(state["loader"])
    table2.load_state_dict(state["table"])
    if stop != "after":
        assert head + steps(table2, loader2, 1) == expected[1]
    assert steps(table2, loader2, 2) == expected[2]
    assert sampler2.epoch == 2


# ---------------------------------------------------------------- argument checks


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_age": -1}, r"`max_age` to be an int >= 0 or None, but got -1"),
        ({"chunk_size": 0}, r"`chunk_size` to be an int >= 1, but got 0"),
        ({"anneal": 1.0}, r"`anneal` to be a float in \[0, 1\), but got 1.0"),
        ({"max_weight": 0.5}, r"`max_weight` to be a float >= 1 or None"),
        ({"policy": "topk"}, r"`policy` to be a smartsift Policy"),
        ({"num_replicas": 2, "rank": 2}, r"`rank` in \[0, 2\)"),
    ],
)
def test_bad_arguments_are_refused(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ReuseSampler(SequentialSampler(range(N)), ScoreTable(N), **kwargs)


def test_indices_outside_the_table_and_foreign_states_are_refused() -> None:
    sampler = ReuseSampler(SequentialSampler(range(N + 1)), ScoreTable(N))
    with pytest.raises(ValueError, match=rf"index {N}, outside.*\[0, {N}\)"):
        list(sampler)
    data = _data()
    ranks = [
        ReuseSampler(DistributedSampler(data, num_replicas=2, rank=r), ScoreTable(N))
        for r in range(2)
    ]
    with pytest.raises(ValueError, match="saved by rank 0 of 2, but this sampler is rank 1"):
        ranks[1].load_state_dict(ranks[0].state_dict())
    with pytest.raises(ValueError, match="match the DistributedSampler's"):
        ReuseSampler(DistributedSampler(data, num_replicas=2, rank=0), ScoreTable(N), rank=1)


def test_a_version_1_state_with_skipped_stats_loads_and_unknown_versions_are_refused() -> None:
    table, sampler = _make()
    for epoch in range(2):
        _steps(table, sampler, epoch, iter(sampler))
    state = sampler.state_dict()
    assert state["version"] == ckpt.VERSION and "sifted" in state["stats"][0]
    stats = sampler.stats
    assert stats is not None and stats.skipped == stats.sifted > 0
    assert stats.as_dict()["sifted"] == stats.sifted and "skipped" not in stats.as_dict()
    # as saved before the rename: version 1, the field named "skipped"
    renamed = [{"skipped" if k == "sifted" else k: v for k, v in s.items()} for s in state["stats"]]
    _, old = _make()
    old.load_state_dict(_roundtrip({**state, "version": 1, "stats": renamed}))
    assert old.epoch_stats == sampler.epoch_stats
    for version in (0, 3, None, "2"):
        with pytest.raises(
            ValueError,
            match=rf"not a ReuseSampler state.*got version {version!r}.*versions 1 and 2",
        ):
            old.load_state_dict({**state, "version": version})


def test_a_streak_guard_works_in_reuse_mode_with_dataset_indices_as_ids() -> None:
    # Every sample has the same fresh loss, so the wrapped policy would keep all of them every
    # epoch; max_streak=1 forbids keeping a sample in two decisions in a row.
    n = 32
    table = ScoreTable(n)
    policy = ss.Guarded(ss.TopK(1.0), max_streak=1, id_key=0)
    sampler = ReuseSampler(SequentialSampler(range(n)), table, policy, max_age=5)
    sampler.set_epoch(0)
    assert set(sampler) == set(range(n))  # never scored: all trained
    table.update(torch.arange(n), torch.ones(n))  # as the epoch's training steps would
    sampler.set_epoch(1)
    first = set(sampler)
    sampler.set_epoch(2)
    second = set(sampler)
    assert first == set(range(n))  # no streak yet: everything kept
    assert second == set()  # each was kept in the last decision: none twice in a row


def test_auto_judges_each_epoch_and_a_label_floor_is_refused() -> None:
    n = 16
    table = ScoreTable(n)
    sampler = ReuseSampler(SequentialSampler(range(n)), table, ss.Auto(ss.TopK(0.5)))
    assert list(sampler) == list(range(n))  # the first epoch measures: everything trained
    assert sampler.stats is not None and "measuring" in sampler.stats.auto_reason
    losses = torch.tensor([0.01] * (n - 2) + [5.0, 6.0])  # a few samples carry the loss
    table.update(torch.arange(n), losses)
    second = list(sampler)
    assert len(second) == n // 2 and {n - 2, n - 1} <= set(second)  # TopK(0.5) sifts
    assert sampler.stats.auto_reason.startswith("sift")
    even = ReuseSampler(SequentialSampler(range(n)), ScoreTable(n), ss.Auto(ss.TopK(0.5)))
    list(even)
    even.table.update(torch.arange(n), torch.ones(n))  # even losses: sifting would not pay
    assert list(even) == list(range(n))
    assert even.stats is not None and even.stats.auto_reason.startswith("plain")
    table = ScoreTable(8)
    floor = ss.Guarded(ss.TopK(0.5), class_floor=0.2, label_key=1)
    with pytest.raises(ValueError, match="sees no labels"):
        ReuseSampler(SequentialSampler(range(8)), table, floor)


# ---------------------------------------------------------------- silent no-ops, made loud


def test_max_age_zero_is_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match=r"`max_age`.*got 0.*max_age=1 or more"):
        ReuseSampler(SequentialSampler(range(N)), ScoreTable(N), max_age=0)


def test_a_distributed_sampler_without_a_shared_table_is_refused() -> None:
    data = _data()
    sampler = ReuseSampler(DistributedSampler(data, num_replicas=2, rank=0), ScoreTable(N))
    with pytest.raises(RuntimeError, match=r"num_replicas=2 ranks.*not shared.*init_process_group"):
        list(sampler)
    # Every rank's sampler over the one table in this process (simulated ranks): shared.
    table = ScoreTable(N)
    both = [ReuseSampler(DistributedSampler(data, num_replicas=2, rank=r), table) for r in (0, 1)]
    assert sum(len(list(s)) for s in both) == N


def test_an_epoch_without_table_updates_warns_once() -> None:
    table = ScoreTable(N)
    sampler = ReuseSampler(SequentialSampler(range(N)), table, ss.TopK(0.5))
    list(sampler)  # epoch 0: the loop forgets table.update
    with pytest.warns(UserWarning, match=r"epoch 0 ran: table.update.*never called"):
        assert len(list(sampler)) == N  # nothing could be sifted
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(sampler)  # once only
    fed = ReuseSampler(SequentialSampler(range(N)), ScoreTable(N), ss.TopK(0.5))
    for _ in range(3):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            ids = torch.tensor(list(fed))
        fed.table.update(ids, _losses(ids, 0))


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("stop", [1, 2, 3])
def test_a_plain_dataloader_with_workers_resumes_exactly(workers: int, stop: int) -> None:
    # A DataLoader with workers draws indices ahead of the batches trained; the sampler's saved
    # position is therefore past them. On resume it continues from the first index the table
    # has no loss for in this epoch: nothing lost, nothing twice.
    data = _data()

    def make() -> tuple[ScoreTable, ReuseSampler, DataLoader]:
        table, sampler = _make(explicit=True)
        return table, sampler, DataLoader(data, sampler=sampler, batch_size=BS, num_workers=workers)

    def epoch_ids(table: ScoreTable, sampler: ReuseSampler, loader: Any, e: int, limit=None):
        sampler.set_epoch(e)
        out = []
        for batch in itertools.islice(loader, limit):
            ids = batch[0]
            table.update(ids, _losses(ids, e))
            out += ids.tolist()
        return out

    table, sampler, loader = make()
    expected = [epoch_ids(table, sampler, loader, e) for e in range(3)]
    table, sampler, loader = make()
    epoch_ids(table, sampler, loader, 0)
    head = epoch_ids(table, sampler, loader, 1, stop)  # the loop is left mid-epoch
    state = _roundtrip({"sampler": sampler.state_dict(), "table": table.state_dict()})
    if workers:
        assert state["sampler"]["position"] > len(head)  # the workers had drawn ahead
    table2, sampler2, loader2 = make()
    table2.load_state_dict(state["table"])
    sampler2.load_state_dict(state["sampler"])
    assert head + epoch_ids(table2, sampler2, loader2, 1) == expected[1]
    assert epoch_ids(table2, sampler2, loader2, 2) == expected[2]


def test_a_resume_without_the_table_keeps_the_saved_position() -> None:
    # Without the table's records the sampler cannot tell what was trained: it never rewinds
    # (a sample trained twice is worse than the old position).
    table, sampler = _make(explicit=True)
    sampler.set_epoch(0)
    it = iter(sampler)
    drawn = [next(it) for _ in range(20)]
    table.update(torch.tensor(drawn[:8]), torch.ones(8))
    state = sampler.state_dict()
    _, again = _make(explicit=True)
    again.load_state_dict(state)
    again.set_epoch(0)
    assert len(list(again)) == N - 20
    table3, third = _make(explicit=True)
    table3.load_state_dict(table.state_dict())
    third.load_state_dict(state)
    third.set_epoch(0)
    assert len(list(third)) == N - 8  # with the table: back to the first untrained index


def _unsharded_job(rank: int, world: int, shard: bool) -> list[str]:
    import warnings

    n = 600
    data = _data(n)
    table = ScoreTable(n)
    base: Any = (
        DistributedSampler(data, seed=3)
        if shard
        else RandomSampler(data, generator=torch.Generator().manual_seed(3))
    )
    sampler = ReuseSampler(base, table, ss.TopK(0.5))
    loader = DataLoader(data, sampler=sampler, batch_size=20)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for epoch in range(3):
            sampler.set_epoch(epoch)
            for batch in loader:
                table.update(batch[0], _losses(batch[0], epoch))
    return [str(w.message) for w in caught if "more than one" in str(w.message)]


@pytest.mark.parametrize("shard", [False, True])
def test_an_unsharded_base_sampler_under_ddp_warns_once(shard: bool) -> None:
    for messages in run_ranks(_unsharded_job, 2, shard, timeout=90):
        if shard:
            assert messages == []
        else:
            assert len(messages) == 1 and "not sharded over the ranks" in messages[0]


def _fsdp_job(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.fsdp import fully_shard

    n = 96
    torch.manual_seed(0)
    x, y = torch.randn(n, 8), torch.randint(0, 2, (n,))
    data = ss.IndexedDataset(TensorDataset(x, y))
    model = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 2))
    fully_shard(model)  # each rank holds a shard of every parameter
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    table = ScoreTable(n)
    sampler = ReuseSampler(DistributedSampler(data, seed=0), table, ss.TopK(0.5))
    loader = DataLoader(data, sampler=sampler, batch_size=8)
    steps = []
    for epoch in range(3):
        sampler.set_epoch(epoch)
        count = 0
        for ids, xb, yb in loader:
            per_sample = torch.nn.functional.cross_entropy(model(xb), yb, reduction="none")
            table.update(ids, per_sample.detach())
            opt.zero_grad()
            per_sample.mean().backward()
            opt.step()
            count += 1
        steps.append(count)
    table.sync()
    return {"steps": steps, "losses": table.losses.tolist(), "trained": sampler.stats.trained}


def test_loss_reuse_trains_a_model_sharded_with_fsdp() -> None:
    # No scoring pass, so nothing needs the whole model: FSDP2's fully_shard on 2 gloo ranks.
    r0, r1 = run_ranks(_fsdp_job, 2, timeout=120)
    assert r0 == r1  # the same steps, table and decisions on both ranks
    assert r0["steps"][0] == 6 and r0["steps"][1] == r0["steps"][2] == 3  # half skipped


# ---------------------------------------------------------------- exploration and trend


def _explored_epoch(explore: Any, seed: int = 0) -> tuple[ReuseSampler, list[int]]:
    table = ScoreTable(N)
    sampler = ReuseSampler(
        SequentialSampler(range(N)), table, ss.TopK(keep=0.25), explore=explore, seed=seed
    )
    table.update(torch.tensor(list(sampler)), _losses(torch.arange(N), 0))  # epoch 0: all
    return sampler, list(sampler)  # epoch 1: decided from the table


def test_an_exploration_share_of_the_decided_is_trained_undecided() -> None:
    _, plain = _explored_epoch(0.0)
    sampler, explored = _explored_epoch(0.5)
    stats = sampler.stats
    assert stats is not None and stats.epoch == 1
    # About half of the candidates skip the decision and are trained; TopK(0.25) decides the
    # rest, so the epoch trains about 0.5 + 0.5 * 0.25 of them.
    assert 0.3 * N < stats.explored < 0.7 * N and stats.passed == stats.explored
    assert stats.decided == N - stats.explored and stats.trained == len(explored)
    assert len(plain) == N // 4 and len(explored) > len(plain) + stats.explored // 2
    # the same seed draws the same share: every rank decides alike
    assert _explored_epoch(0.5)[1] == explored and _explored_epoch(0.5, seed=1)[1] != explored


def test_a_keep_schedule_is_an_exploration_share_by_epoch() -> None:
    epochs_seen: list[int] = []

    def schedule(epoch: int) -> float:
        epochs_seen.append(epoch)
        return 0.0 if epoch < 1 else 0.9

    sampler, trained = _explored_epoch(schedule)
    assert len(trained) == sampler.stats.trained  # type: ignore[union-attr]
    assert epochs_seen == [1]  # asked only when something is decided
    assert sampler.stats is not None and sampler.stats.explored > 0.7 * N
    with pytest.raises(ValueError, match=r"explore\(1\)"):
        _explored_epoch(lambda epoch: 1.5)
    with pytest.raises(ValueError, match="explore"):
        ReuseSampler(range(4), ScoreTable(4), explore=1.0)


def test_the_trend_score_keeps_what_is_being_forgotten() -> None:
    table = ScoreTable(4)
    sampler = ReuseSampler(
        SequentialSampler(range(4)), table, ss.TopK(keep=0.5), score="trend", chunk_size=4
    )
    table.update(torch.tensor(list(sampler)), torch.tensor([1.0, 1.0, 1.0, 1.0]))
    table.update(torch.tensor(list(sampler)), torch.tensor([0.2, 1.5, 0.9, 3.0]))
    assert list(sampler) == [1, 3]  # the two whose loss rose
