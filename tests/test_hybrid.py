"""The hybrid mode: a SiftingDataLoader around a loss-reuse loader scores only the undecided."""

from __future__ import annotations

import io
import itertools
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _ddp import run_ranks
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, TensorDataset

import smartsift as ss
from smartsift.engine.stats import conservation_errors
from smartsift.modes.hybrid import default_id_key, find_reuse_sampler, score_rows

N = 160
BS = 16


def _data(n: int = N, seed: int = 0) -> ss.IndexedDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    return ss.IndexedDataset(TensorDataset(x, (x[:, 0] + 0.3 * x[:, 1] > 0).long()))


class Scorer:
    """``loss_fn(model, batch)``: the per-sample loss; remembers which ids the scoring pass
    (run without gradients) saw."""

    def __init__(self) -> None:
        self.scored: list[int] = []

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        ids, x, y = batch
        if not torch.is_grad_enabled():
            self.scored += ids.tolist()
        return F.cross_entropy(model(x), y, reduction="none")


def _build(
    data: Any,
    policy: ss.Policy | None = None,
    workers: int = 0,
    max_age: int = 1,
    **kwargs: Any,
) -> tuple[torch.nn.Module, torch.optim.Optimizer, ss.ScoreTable, ss.ReuseSampler, Any, Scorer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    table = ss.ScoreTable(len(data))
    base = RandomSampler(data, generator=torch.Generator().manual_seed(1))
    sampler = ss.ReuseSampler(
        base, table, policy or ss.RelativeProbabilistic(keep=0.4), max_age=max_age, **kwargs
    )
    raw = DataLoader(data, sampler=sampler, batch_size=BS, num_workers=workers)
    scorer = Scorer()
    loader = ss.SiftingDataLoader(raw, model, scorer, seed=0)
    return model, opt, table, sampler, loader, scorer


def _train(model, opt, table, loader, scorer, limit: int | None = None) -> list[list[int]]:
    """One epoch (or its first ``limit`` steps): the training step records its losses."""
    steps = []
    for batch in itertools.islice(loader, limit):
        ids = batch[0]
        per_sample = scorer(model, batch)
        table.update(ids, per_sample)
        opt.zero_grad()
        per_sample.mean().backward()
        opt.step()
        steps.append(ids.tolist())
    return steps


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


# ---------------------------------------------------------------- the pure parts


def test_score_rows_scores_only_the_undecided_rows_and_gives_the_others_no_score() -> None:
    batch = (torch.arange(4), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    seen: list[list[float]] = []

    def score_fn(part: Any, n: int) -> np.ndarray:
        seen.append(part[1].tolist())
        return part[1].double().numpy() * 10

    undecided = np.array([True, False, True, False])
    known = np.array([np.nan, 0.5, np.nan, np.inf])
    losses, scores = score_rows(batch, batch, 4, undecided, known, score_fn)
    assert seen == [[1.0, 3.0]]  # one call, on the undecided rows alone
    assert losses.tolist() == [10.0, 0.5, 30.0, 0.0]  # a non-finite known loss reads 0
    assert np.isnan(scores[[1, 3]]).all() and scores[[0, 2]].tolist() == [10.0, 30.0]
    ref = score_rows(batch, batch, 4, undecided, known, score_fn, lambda p, s, n: np.ones(n))[1]
    assert ref[[0, 2]].tolist() == [9.0, 29.0]  # with a reference, loss - reference
    seen.clear()
    assert np.isnan(score_rows(batch, batch, 4, ~undecided & False, known, score_fn)[1]).all()
    assert seen == []  # nothing undecided: no pass at all


def test_the_sampler_and_the_id_key_are_found_where_indexed_datasets_put_them() -> None:
    data = _data()
    sampler = ss.ReuseSampler(range(N), ss.ScoreTable(N))
    assert find_reuse_sampler(DataLoader(data, sampler=sampler, batch_size=4)) is sampler
    assert find_reuse_sampler(DataLoader(data, batch_size=4)) is None
    assert default_id_key({"index": 1}) == "index" and default_id_key([1, 2]) == 0


# ---------------------------------------------------------------- what an epoch does


def test_only_the_undecided_are_scored_and_every_sample_is_trained_or_sifted_once() -> None:
    data = _data()
    model, opt, table, sampler, loader, scorer = _build(data)
    for epoch in range(5):
        scorer.scored.clear()
        before = loader.stats
        steps = _train(model, opt, table, loader, scorer)
        after = loader.stats
        trained = [i for step in steps for i in step]
        stats = sampler.stats
        assert stats is not None and stats.epoch == epoch
        assert len(trained) == len(set(trained))  # nothing twice
        assert all(len(step) == BS for step in steps[:-1])  # refined batches of the normal size
        # The pass scored exactly the epoch's undecided samples, each once.
        undecided = sampler.undecided(torch.arange(N))
        assert sorted(scorer.scored) == np.flatnonzero(undecided).tolist()
        assert len(scorer.scored) == stats.passed
        # Trained: every sample the table kept (passed through unscored), and the scored ones
        # the policy kept; the loader's counts say which is which.
        from_table = set(sampler._current.indices.tolist()) - set(scorer.scored)
        assert len(from_table) == stats.kept and from_table <= set(trained)
        assert after.samples_passed - before.samples_passed == stats.kept
        assert after.samples_kept - before.samples_kept == len(trained)
        assert after.samples_seen - before.samples_seen == stats.kept + stats.passed
        # The pass's losses of what it sifted are in the table: decidable next epoch.
        sifted_now = set(scorer.scored) - set(trained)
        assert all(table.scored_epoch[i] == epoch for i in sifted_now)
        if epoch == 0:
            assert stats.decided == 0 and len(scorer.scored) == N  # nothing known yet
            assert len(sifted_now) > N // 2
        elif epoch == 1:  # every sample got a loss in epoch 0, trained or sifted by the pass
            assert stats.decided == N and scorer.scored == []
        else:  # those the table skipped last epoch went stale (max_age=1): scored again
            assert stats.decided > 0 and 0 < len(scorer.scored) < N
        assert 0.2 < len(trained) / N < 0.7  # about the stated keep of 0.4, every epoch
    assert conservation_errors(loader.stats) == []


def test_an_annealing_epoch_scores_nothing_and_trains_everything() -> None:
    data = _data()
    model, opt, table, sampler, loader, scorer = _build(data, epochs=3, anneal=0.34)
    for _ in range(2):
        _train(model, opt, table, loader, scorer)
    scorer.scored.clear()
    trained = [i for step in _train(model, opt, table, loader, scorer) for i in step]
    assert sampler.stats is not None and sampler.stats.annealing
    assert scorer.scored == [] and sorted(trained) == list(range(N))


def test_the_policy_defaults_to_the_samplers_and_bad_settings_are_refused() -> None:
    data = _data()
    policy = ss.TopK(keep=0.5)
    *_, loader, _ = _build(data, policy=policy)
    assert loader.policy is policy
    table = ss.ScoreTable(N)
    rescaled = ss.ReuseSampler(range(N), table, policy, rescale=True)
    with pytest.raises(ValueError, match="rescale=True"):
        ss.SiftingDataLoader(DataLoader(data, sampler=rescaled), torch.nn.Linear(6, 2), Scorer())
    from torchdata.stateful_dataloader import StatefulDataLoader

    sampler = ss.ReuseSampler(range(N), table, policy)
    with pytest.raises(ValueError, match="StatefulDataLoader"):
        ss.SiftingDataLoader(
            StatefulDataLoader(data, sampler=sampler), torch.nn.Linear(6, 2), Scorer()
        )
    bad = ss.SiftingDataLoader(
        DataLoader(data, sampler=sampler, batch_size=4), torch.nn.Linear(6, 2), Scorer(),
        id_key=5,
    )  # fmt: skip
    with pytest.raises(ValueError, match="id_key"):
        next(iter(bad))


# ---------------------------------------------------------------- resume


def _state(model, opt, table, loader) -> dict[str, Any]:
    return _roundtrip(
        {
            "model": model.state_dict(),
            "opt": opt.state_dict(),
            "table": table.state_dict(),
            "loader": loader.state_dict(),
        }
    )


@pytest.mark.parametrize(
    "workers, epoch, stop",
    # mid-epoch (all scored, or a few), with and without workers; and between epochs
    [(0, 0, 2), (0, 2, 1), (2, 2, 1), (0, 2, None)],
)
def test_a_resumed_hybrid_run_trains_what_the_uninterrupted_one_trains(
    workers: int, epoch: int, stop: int | None
) -> None:
    data = _data()
    run = _build(data, workers=workers)
    expected = [_train(*run[:3], run[4], run[5]) for _ in range(4)]

    model, opt, table, _, loader, scorer = _build(data, workers=workers)
    got = [_train(model, opt, table, loader, scorer) for _ in range(epoch)]
    got.append(_train(model, opt, table, loader, scorer, stop))
    state = _state(model, opt, table, loader)
    mid_epoch = not state["loader"]["hybrid"].get("complete", False)
    assert mid_epoch == (stop is not None)  # the case this parameter means to test
    model, opt, table, _, loader, scorer = _build(data, workers=workers)
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    table.load_state_dict(state["table"])
    loader.load_state_dict(state["loader"])
    if stop is not None:
        got[-1] += _train(model, opt, table, loader, scorer)
    while len(got) < 4:
        got.append(_train(model, opt, table, loader, scorer))
    assert got == expected
    assert conservation_errors(loader.stats) == []


def test_a_state_of_another_mode_is_refused() -> None:
    data = _data()
    *_, hybrid, _ = _build(data)
    plain = ss.SiftingDataLoader(
        DataLoader(data, batch_size=BS), torch.nn.Linear(6, 2), Scorer(), seed=0
    )
    with pytest.raises(ValueError, match="without a ReuseSampler"):
        hybrid.load_state_dict(plain.state_dict())
    with pytest.raises(ValueError, match="hybrid SiftingDataLoader"):
        plain.load_state_dict(hybrid.state_dict())


# ---------------------------------------------------------------- DDP


def _ddp_job(rank: int, world: int) -> dict[str, Any]:
    data = _data(96)
    torch.manual_seed(0)
    model = torch.nn.Linear(6, 2)
    table = ss.ScoreTable(len(data))
    sampler = ss.ReuseSampler(
        DistributedSampler(data, seed=1), table, ss.RelativeProbabilistic(keep=0.4), max_age=1
    )
    scorer = Scorer()
    loader = ss.SiftingDataLoader(DataLoader(data, sampler=sampler, batch_size=8), model, scorer)
    out: dict[str, Any] = {"steps": [], "trained": [], "scored": [], "stats": []}
    for epoch in range(4):
        loader.set_epoch(epoch)
        scorer.scored.clear()
        trained = []
        steps = 0
        for batch in loader:
            ids = batch[0]
            table.update(ids, scorer(model, batch).detach() * 0.7**epoch)  # a falling loss
            trained += ids.tolist()
            steps += 1
        out["steps"].append(steps)
        out["trained"].append(trained)
        out["scored"].append(list(scorer.scored))
        out["stats"].append(sampler.stats)
    return out


def test_ddp_ranks_take_equal_steps_and_share_out_the_undecided() -> None:
    r0, r1 = run_ranks(_ddp_job, 2, timeout=90)
    assert r0["steps"] == r1["steps"]
    for epoch in range(4):
        stats = r0["stats"][epoch]
        assert stats == r1["stats"][epoch]  # one decision on both ranks
        trained = r0["trained"][epoch] + r1["trained"][epoch]
        scored = r0["scored"][epoch] + r1["scored"][epoch]
        # Each undecided sample scored on one rank (padding may repeat one or two).
        assert stats.passed <= len(scored) <= stats.passed + 1
        assert len(set(trained)) >= len(trained) - 1  # nothing trained twice but padding
        assert set(trained) <= set(range(96))
        if epoch:
            assert stats.decided > 0 and len(scored) < 96


# ---------------------------------------------------------------- schedule


@pytest.mark.parametrize("follow_loader", [True, False])
def test_a_reuse_schedule_that_follows_the_hybrid_loader_ends_with_training(
    follow_loader: bool,
) -> None:
    data = _data()
    model, opt, table, sampler, loader, scorer = _build(data)
    epochs, steps_per_epoch = 4, -(-N // BS)
    cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    schedule = ss.ReuseSchedule(
        cosine, sampler, batch_size=BS, loader=loader if follow_loader else None
    )
    for _ in range(epochs):
        for batch in loader:
            table.update(batch[0], scorer(model, batch).detach())
            opt.step()
            schedule.step()
    last_lr = opt.param_groups[0]["lr"]
    if follow_loader:  # it ends where training ends, at the cosine's floor
        assert schedule.steps == epochs * steps_per_epoch and last_lr == pytest.approx(0.0)
    else:  # counted in yielded batches, the sifted epochs leave it short of its end
        assert schedule.steps < epochs * steps_per_epoch and last_lr > 1e-4
    with pytest.raises(TypeError, match="SiftingDataLoader"):
        ss.ReuseSchedule(cosine, sampler, batch_size=BS, loader=object())


def test_the_length_counts_the_decided_samples_whole_and_the_undecided_at_the_keep() -> None:
    data = _data()
    model, opt, table, sampler, loader, scorer = _build(data, max_age=None)
    loader.set_epoch(0)
    assert len(loader) == 4  # epoch 0: all undecided, keep 0.4 of 10 raw batches of 16
    _train(model, opt, table, loader, scorer)
    loader.set_epoch(1)
    second = len(loader)  # epoch 1: all decided from the table; every one of them passes
    stats = sampler.stats
    assert stats is not None and stats.epoch == 1 and stats.passed == 0
    steps = _train(model, opt, table, loader, scorer)
    assert second == len(steps) == -(-stats.kept // BS)


def test_the_exploration_share_is_trained_not_scored() -> None:
    data = _data()
    model, opt, table, sampler, loader, scorer = _build(data, max_age=None, explore=0.5)
    _train(model, opt, table, loader, scorer)  # epoch 0: all scored by the pass
    scorer.scored.clear()
    trained = [i for step in _train(model, opt, table, loader, scorer) for i in step]
    stats = sampler.stats
    assert stats is not None and stats.epoch == 1 and stats.explored > N // 4
    assert scorer.scored == []  # nothing stale or new; the explored pass through unscored
    assert len(trained) == stats.trained == stats.explored + stats.kept


def test_a_reference_ranks_the_scored_rows_and_unreferenced_ones_pass() -> None:
    data = _data()
    _, _, _, sampler, _, scorer = _build(data)
    raw = DataLoader(data, sampler=sampler, batch_size=BS)
    model = torch.nn.Linear(6, 2)

    def reference(batch: Any) -> torch.Tensor:  # known for even ids only
        ids = batch[0]
        return torch.where(ids % 2 == 0, torch.zeros(len(ids)), torch.full((len(ids),), np.nan))

    loader = ss.SiftingDataLoader(raw, model, scorer, reference=reference, seed=0)
    trained = [i for batch in loader for i in batch[0].tolist()]
    assert len(trained) == len(set(trained))
    odd = [i for i in range(N) if i % 2]
    assert set(odd) <= set(trained)  # no reference: passed unsifted
    assert loader.stats.samples_passed == len(odd)
    assert loader.stats.samples_sifted > 0  # the referenced (even) ones were sifted
