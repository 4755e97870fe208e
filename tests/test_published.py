"""Tests of ``smartsift.policies.published``: InfoBatch and SeTa, as pure rules, in loss reuse
(``ReuseSampler``), in the scoring mode (``SiftingDataLoader``) and across a checkpoint."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SequentialSampler, TensorDataset

import smartsift as ss
from smartsift.engine.selector import Selector
from smartsift.policies.published import (
    group_of,
    infobatch_mask,
    infobatch_probabilities,
    kmeans_boundaries,
    quantile_boundaries,
    seta_window,
)

N = 400


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _table(losses: torch.Tensor) -> ss.ScoreTable:
    """A table that recorded ``losses`` for every sample in epoch 0."""
    table = ss.ScoreTable(losses.numel())
    table.epoch = 0
    table.update(torch.arange(losses.numel()), losses)
    return table


def _distinct_losses(n: int = N) -> torch.Tensor:
    """Distinct, skewed per-sample losses in a scrambled order."""
    ranks = (torch.arange(n, dtype=torch.float64) * 37) % n
    return torch.exp(ranks / n * 3.0) / 10.0


# ---------------------------------------------------------------- InfoBatch: the rule


def test_the_infobatch_mask_drops_only_below_the_mean() -> None:
    losses = np.array([0.1, 0.5, 1.0, 2.0])
    # Every draw below `prune`: every below-mean loss goes, the mean itself and above stay.
    assert infobatch_mask(losses, 1.0, 0.5, np.zeros(4)).tolist() == [False, False, True, True]
    assert infobatch_mask(losses, 1.0, 0.5, np.full(4, 0.5)).all()
    assert infobatch_mask(losses, 1.0, 0.0, np.zeros(4)).all()  # prune=0 keeps everything
    probs = infobatch_probabilities(losses, 1.0, 0.3)
    np.testing.assert_allclose(probs, [0.7, 0.7, 1.0, 1.0])


@pytest.mark.parametrize("prune", [0.3, 0.5, 0.7])
@pytest.mark.parametrize("dist", ["normal", "exponential"])
def test_infobatch_never_drops_above_the_mean_and_drops_prune_of_the_rest(
    prune: float, dist: str
) -> None:
    policy = ss.InfoBatch(prune=prune, history=1000)
    history = policy.make_history()
    assert history is not None
    rng = np.random.default_rng(0)
    gen = torch.Generator().manual_seed(0)
    below = dropped = kept = seen = 0
    draw: Callable[[], np.ndarray] = (
        (lambda: rng.normal(2.0, 0.5, size=64))
        if dist == "normal"
        else (lambda: rng.exponential(size=64))
    )
    for _ in range(300):
        losses = draw()
        history.extend(losses)
        mean = float(np.mean(history.values()))
        mask = policy.keep_mask(losses, history, gen)
        probs = policy.keep_probabilities(losses, history)
        under = losses < mean
        assert mask[~under].all(), "an above-mean sample was dropped"
        np.testing.assert_allclose(probs[under], 1 - prune)
        np.testing.assert_allclose(probs[~under], 1.0)
        below += int(under.sum())
        dropped += int((~mask).sum())
        kept += int(mask.sum())
        seen += losses.size
    assert dropped / below == pytest.approx(prune, abs=0.02)
    if dist == "normal":  # symmetric: half below the mean, as expected_keep assumes
        assert kept / seen == pytest.approx(policy.expected_keep, abs=0.02)
    else:  # exponential: 1 - 1/e of the losses lie below their mean
        assert kept / seen == pytest.approx(1 - prune * (1 - math.exp(-1)), abs=0.02)


def test_infobatch_expected_keep_and_description() -> None:
    assert ss.InfoBatch().expected_keep == 0.75
    assert ss.InfoBatch(prune=0.3).expected_keep == pytest.approx(0.85)
    policy = ss.InfoBatch(prune=0.4, history=100)
    assert policy.describe() == {"type": "InfoBatch", "fields": {"prune": 0.4, "history": 100}}
    assert policy.matches(ss.InfoBatch(prune=0.4, history=100).describe())
    assert not policy.matches(ss.InfoBatch(prune=0.5, history=100).describe())


# ---------------------------------------------------------------- InfoBatch: loss reuse


def test_infobatch_in_reuse_weights_kept_below_mean_samples_by_one_over_one_minus_prune() -> None:
    losses = _distinct_losses()
    table = _table(losses)
    mean = float(losses.mean())
    sampler = ss.ReuseSampler(
        SequentialSampler(range(N)),
        table,
        ss.InfoBatch(prune=0.5, history=N),
        rescale=True,
        max_weight=None,
        max_age=None,
        chunk_size=N,  # one chunk: the mean is the epoch's, as in the paper
        seed=1,
    )
    sampler.set_epoch(1)
    ids = torch.tensor(list(sampler))
    under = losses < mean
    trained = torch.zeros(N, dtype=torch.bool)
    trained[ids] = True
    assert trained[~under].all(), "an above-mean sample was skipped"
    assert (~trained[under]).float().mean().item() == pytest.approx(0.5, abs=0.1)
    weights = sampler.weights(ids).double()
    expected = torch.where(under[ids], 2.0, 1.0).double()
    torch.testing.assert_close(weights, expected)
    assert sampler.stats.sifted == int((~trained).sum())


def test_infobatch_rescaled_epoch_sums_are_unbiased_over_seeds() -> None:
    losses = _distinct_losses()
    table = _table(losses)
    values = torch.linspace(1.0, 2.0, N, dtype=torch.float64)
    sums, sizes = [], []
    for seed in range(200):
        sampler = ss.ReuseSampler(
            SequentialSampler(range(N)),
            table,
            ss.InfoBatch(prune=0.6, history=N),
            rescale=True,
            max_weight=None,
            chunk_size=N,
            seed=seed,
        )
        ids = torch.tensor(list(sampler))
        sizes.append(ids.numel())
        sums.append(float((values[ids] * sampler.weights(ids).double()).sum()))
    assert max(sizes) < N  # every seed prunes
    # Within four standard errors of the sum over every sample (and within 1 %).
    error = abs(np.mean(sums) - float(values.sum()))
    assert error < 4 * np.std(sums) / math.sqrt(len(sums))
    assert np.mean(sums) == pytest.approx(float(values.sum()), rel=0.01)


def test_the_auto_weight_bound_is_infobatchs_own_and_reuse_kwargs_leave_it_unbounded() -> None:
    losses = _distinct_losses()
    policy = ss.InfoBatch(prune=0.5, history=N)
    auto = ss.ReuseSampler(
        SequentialSampler(range(N)), _table(losses), policy, rescale=True, chunk_size=N
    )
    # The default bound is the rule's own largest weight, not 1 / expected_keep (1.33 < 2).
    assert auto.max_weight == policy.weight_bound == 2.0
    paper = ss.ReuseSampler(
        SequentialSampler(range(N)),
        _table(losses),
        policy,
        chunk_size=N,
        **ss.InfoBatch.reuse_kwargs(epochs=8),
    )
    assert paper.max_weight is None and paper.rescale and paper.max_age is None
    assert policy.weight_bound == 2.0
    paper.set_epoch(1)
    ids = torch.tensor(list(paper))
    assert float(paper.weights(ids).max()) == pytest.approx(2.0)


def test_infobatch_reuse_kwargs_train_everything_in_the_last_eighth_of_epochs() -> None:
    epochs = 8
    losses = _distinct_losses()
    table = ss.ScoreTable(N)
    sampler = ss.ReuseSampler(
        SequentialSampler(range(N)),
        table,
        ss.InfoBatch(prune=0.5, history=N),
        chunk_size=64,
        **ss.InfoBatch.reuse_kwargs(epochs=epochs),
    )
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        ids = torch.tensor(list(sampler))
        table.update(ids, losses[ids])
        stats = sampler.stats
        if epoch == 0 or epoch == epochs - 1:  # nothing recorded yet / the annealing tail
            assert stats.trained == N and stats.sifted == 0
        else:
            assert not stats.annealing and stats.decided == N and stats.sifted > 0
    assert sampler.stats.annealing


def test_chunked_infobatch_with_an_epoch_long_history_uses_the_epoch_mean() -> None:
    # Chunks of 50 with a history of N: from the second sifting epoch on the history holds
    # exactly the N recorded scores, so the chunked decision is the epoch-mean rule.
    losses = _distinct_losses()
    table = _table(losses)
    mean = float(losses.mean())
    sampler = ss.ReuseSampler(
        SequentialSampler(range(N)),
        table,
        ss.InfoBatch(prune=0.5, history=N),
        max_age=None,
        chunk_size=50,
        seed=0,
    )
    dropped_below = []
    for epoch in (1, 2, 3):
        sampler.set_epoch(epoch)
        ids = torch.tensor(list(sampler))
        table.update(ids, losses[ids])
        if epoch == 1:
            continue
        trained = torch.zeros(N, dtype=torch.bool)
        trained[ids] = True
        assert trained[losses >= mean].all()
        dropped_below.append(float((~trained[losses < mean]).float().mean()))
    assert np.mean(dropped_below) == pytest.approx(0.5, abs=0.08)


# ---------------------------------------------------------------- the scoring mode


def _ce(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    _, x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _scored_epochs(policy: ss.Policy, epochs: int = 2) -> tuple[ss.SiftAudit, torch.Tensor]:
    """Runs a SiftingDataLoader over a fixed model (no training, so every sample's loss is
    the same in every epoch); returns the audit and the true per-sample losses."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(N, 6, generator=g), torch.randint(0, 3, (N,), generator=g)
    data = ss.IndexedDataset(TensorDataset(x, y))
    model = torch.nn.Linear(6, 3)
    with torch.no_grad():
        true = F.cross_entropy(model(x), y, reduction="none")
    audit = ss.SiftAudit(id_key=0)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=40), model, _ce, policy=policy, seed=0, audit=audit
    )
    for _ in range(epochs):
        for _batch in loader:
            pass
    return audit, true


def test_infobatch_through_the_sifting_data_loader() -> None:
    audit, true = _scored_epochs(ss.InfoBatch(prune=0.5, history=N))
    # Epoch 1: the history holds every sample's loss once, so its mean is the data's.
    record = audit.epoch(1)
    mean = float(true.double().mean())
    assert len(record.kept) + len(record.sifted) == N
    assert (true[torch.from_numpy(record.sifted)] < mean + 1e-6).all()
    below = int((true < mean).sum())
    assert len(record.sifted) / below == pytest.approx(0.5, abs=0.1)


def test_seta_through_the_sifting_data_loader_moves_its_window_every_history() -> None:
    policy = ss.SeTa(prune=0.0, groups=2, window=1, grouping="quantile", history=N)
    audit, true = _scored_epochs(policy)
    assert len(audit.epoch(0).kept) == N  # step 0: every group
    record = audit.epoch(1)  # step 1: the window is the upper group, the upper half
    assert len(record.kept) == N // 2
    assert record.kept_losses.min() >= record.sifted_losses.max()
    cut = float(torch.sort(true).values[N // 2])
    assert (true[torch.from_numpy(record.kept)] >= cut - 1e-6).all()


# ---------------------------------------------------------------- SeTa: the rule


def test_the_seta_window_slides_from_easy_to_hard_and_starts_over() -> None:
    assert seta_window(0, 5, 4) == (0, 5)  # the first epoch trains every group
    assert [seta_window(s, 5, 4) for s in range(1, 5)] == [(1, 5), (0, 4), (1, 5), (0, 4)]
    starts = [seta_window(s, 6, 2)[0] for s in range(1, 11)]
    assert starts == [1, 2, 3, 4, 0, 1, 2, 3, 4, 0]
    assert all(seta_window(s, 5, 5) == (0, 5) for s in range(6))  # window=groups: random only
    assert all(seta_window(s, 1, 1) == (0, 1) for s in range(3))


def test_quantile_boundaries_make_groups_of_equal_size() -> None:
    values = np.sort(np.random.default_rng(0).exponential(size=1000))
    counts = np.bincount(group_of(values, quantile_boundaries(values, 5)), minlength=5)
    assert counts.tolist() == [200] * 5


def test_kmeans_boundaries_are_a_fixed_point_of_lloyds_algorithm() -> None:
    rng = np.random.default_rng(3)
    for groups in (2, 3, 5, 8):
        values = np.sort(rng.exponential(size=2000))
        bounds = kmeans_boundaries(values, groups)
        assert bounds.shape == (groups - 1,) and np.all(np.diff(bounds) >= 0)
        group = group_of(values, bounds)
        means = np.array([values[group == g].mean() for g in range(groups)])
        np.testing.assert_allclose(bounds, (means[:-1] + means[1:]) / 2, rtol=1e-9)


def test_kmeans_groups_follow_the_modes_of_the_losses() -> None:
    rng = np.random.default_rng(0)
    losses = np.concatenate([rng.normal(0.1, 0.02, 700), rng.normal(3.0, 0.1, 300)])
    hard = losses > 1.0
    gen = torch.Generator().manual_seed(0)
    kmeans = ss.SeTa(prune=0.0, groups=2, window=1, history=1000)
    history = kmeans.make_history()
    assert history is not None
    history.extend(losses)
    assert (kmeans.keep_mask(losses, history, gen, step=1) == hard).all()  # the hard group
    assert (kmeans.keep_mask(losses, history, gen, step=2) == ~hard).all()  # then the easy
    # Groups of equal size cut the easy mode instead.
    quantile = ss.SeTa(prune=0.0, groups=2, window=1, grouping="quantile", history=1000)
    assert quantile.keep_mask(losses, history, gen, step=1).sum() == 500


@pytest.mark.parametrize(("prune", "groups", "window"), [(0.1, 5, 4), (0.3, 5, 2), (0.0, 4, 1)])
def test_seta_keeps_only_its_window_and_prunes_it_at_random(
    prune: float, groups: int, window: int
) -> None:
    policy = ss.SeTa(prune=prune, groups=groups, window=window, grouping="quantile", history=2000)
    history = policy.make_history()
    assert history is not None
    rng = np.random.default_rng(1)
    gen = torch.Generator().manual_seed(0)
    for step in range(0, 6):
        kept = inside = seen = 0
        start, stop = seta_window(step, groups, window)
        for _ in range(100):
            losses = rng.uniform(size=64)
            history.extend(losses)
            group = group_of(losses, quantile_boundaries(history.sorted(), groups))
            in_window = (group >= start) & (group < stop)
            mask = policy.keep_mask(losses, history, gen, step=step)
            probs = policy.keep_probabilities(losses, history, step=step)
            assert not mask[~in_window].any(), "a sample outside the window was kept"
            np.testing.assert_allclose(probs, np.where(in_window, 1 - prune, 0.0))
            kept += int(mask.sum())
            inside += int(in_window.sum())
            seen += losses.size
        assert 1 - kept / inside == pytest.approx(prune, abs=0.03)  # the random pruning
        expected = (1 - prune) * (stop - start) / groups
        assert kept / seen == pytest.approx(expected, abs=0.03)
        if step > 0:
            assert kept / seen == pytest.approx(policy.expected_keep, abs=0.03)


# ---------------------------------------------------------------- SeTa: loss reuse


def test_seta_in_reuse_slides_its_window_one_group_per_epoch() -> None:
    losses = _distinct_losses(100)
    rank = losses.argsort().argsort()
    table = ss.ScoreTable(100)
    sampler = ss.ReuseSampler(
        SequentialSampler(range(100)),
        table,
        ss.SeTa(prune=0.0, groups=5, window=4, grouping="quantile", history=100),
        max_age=None,
        chunk_size=100,
    )
    for epoch in range(5):
        sampler.set_epoch(epoch)
        ids = torch.tensor(list(sampler))
        table.update(ids, losses[ids])
        trained = set(ids.tolist())
        if epoch == 0:
            assert len(trained) == 100
        elif epoch % 2 == 1:  # window (1, 5): the easiest fifth is skipped
            assert trained == set(torch.nonzero(rank >= 20).flatten().tolist())
        else:  # window (0, 4): the hardest fifth is skipped
            assert trained == set(torch.nonzero(rank < 80).flatten().tolist())
    assert sampler.selector.state.step == 4  # type: ignore[attr-defined]


def test_seta_in_reuse_rescales_its_random_pruning_only() -> None:
    losses = _distinct_losses()
    sampler = ss.ReuseSampler(
        SequentialSampler(range(N)),
        _table(losses),
        ss.SeTa(prune=0.2, groups=5, window=4, history=N),
        rescale=True,
        max_weight=None,
        chunk_size=N,
        seed=2,
    )
    sampler.set_epoch(1)
    ids = torch.tensor(list(sampler))
    torch.testing.assert_close(sampler.weights(ids), torch.full((ids.numel(),), 1.25))
    assert sampler.policy.weight_bound == 1.25  # type: ignore[attr-defined]
    kwargs = ss.SeTa.reuse_kwargs(epochs=10)
    assert kwargs == {"rescale": False, "anneal": 0.125, "epochs": 10, "max_age": None}


# ---------------------------------------------------------------- checkpoints


@pytest.mark.parametrize(
    ("policy", "epoch"),
    [
        (ss.InfoBatch(prune=0.5, history=300), None),
        (ss.SeTa(prune=0.2, groups=4, window=2, history=300), None),  # steps by samples
        (ss.SeTa(prune=0.2, groups=4, window=2, history=300), 3),  # steps by epochs
    ],
)
def test_a_selector_checkpoint_resumes_the_same_decisions(
    policy: ss.Policy, epoch: int | None
) -> None:
    rng = np.random.default_rng(0)
    chunks = [rng.exponential(size=64) for _ in range(20)]
    first = Selector(policy, seed=5)
    for chunk in chunks[:10]:
        first.decide([chunk])
    if epoch is not None:
        first.state.judge_epoch(epoch, np.zeros(0), None)
    saved = _roundtrip(first.state_dict())
    resumed = Selector(policy, seed=99)
    resumed.load_state_dict(saved)
    if isinstance(policy, ss.SeTa):
        assert resumed.state.step == first.state.step  # type: ignore[attr-defined]
        assert resumed.state.step == (3 if epoch is not None else 2)  # type: ignore[attr-defined]
    for chunk in chunks[10:]:
        a = first.decide([chunk], probabilities=True)
        b = resumed.decide([chunk], probabilities=True)
        assert a.masks[0].tolist() == b.masks[0].tolist()
        assert a.probabilities is not None and b.probabilities is not None
        np.testing.assert_array_equal(a.probabilities[0], b.probabilities[0])


# ---------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: ss.InfoBatch(prune=1.0), r"`prune` \(the share of below-mean .*got 1\.0; pass"),
        (lambda: ss.InfoBatch(prune=-0.1), r"`prune`.*\[0, 1\), but got -0\.1; pass e\.g\."),
        (lambda: ss.InfoBatch(prune=True), r"`prune`.*but got True"),
        (lambda: ss.InfoBatch(prune="0.5"), r"`prune`.*but got '0\.5'"),
        (lambda: ss.InfoBatch(history=0), r"`history`.*but got 0; pass history=len\(dataset\)"),
        (lambda: ss.InfoBatch.reuse_kwargs(epochs=0), r"`epochs`.*but got 0; pass e\.g\."),
        (lambda: ss.SeTa(prune=1), r"`prune` \(the share of samples dropped at random\).*got 1"),
        (lambda: ss.SeTa(groups=0), r"`groups`.*but got 0; pass e\.g\. groups=5"),
        (lambda: ss.SeTa(groups=5, window=6), r"`window`.*groups=5, but got 6; pass window="),
        (lambda: ss.SeTa(window=0), r"`window`.*but got 0"),
        (lambda: ss.SeTa(window=2.0), r"`window`.*but got 2\.0"),
        (lambda: ss.SeTa(grouping="kmean"), r"`grouping`.*but got 'kmean'; pass 'kmeans'"),
        (lambda: ss.SeTa(history=-5), r"`history`.*but got -5"),
        (lambda: ss.SeTa.reuse_kwargs(epochs=None), r"`epochs`.*but got None"),  # type: ignore[arg-type]
    ],
)
def test_bad_arguments_are_refused_with_the_argument_the_value_and_the_fix(
    build: Callable[[], Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        build()
