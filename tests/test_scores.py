"""Loss reuse's scores: the sampler's `score` (the table's own records: tests/test_table.py),
and ClassNormalised, which ranks each sample within its class."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import SequentialSampler

import smartsift as ss
from smartsift.modes.reuse import ReuseSampler
from smartsift.modes.scores import class_normalised
from smartsift.modes.table import ScoreTable


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _sampler(table: ScoreTable, policy: ss.Policy, **kwargs: Any) -> ReuseSampler:
    kwargs.setdefault("max_age", None)
    return ReuseSampler(SequentialSampler(range(table.size)), table, policy, **kwargs)


# ---------------------------------------------------------------- selection by score


def _two_epochs(table: ScoreTable, first: list[float], second: list[float]) -> None:
    n = table.size
    table.epoch = 0
    table.update(np.arange(n), first)
    table.epoch = 1
    table.update(np.arange(n), second)


def test_change_keeps_the_samples_whose_loss_moves() -> None:
    # 0: learnt (low, still); 1: mislabeled (high, still); 2: being learnt; 3: being forgotten
    table = ScoreTable(4)
    _two_epochs(table, [0.01, 3.0, 2.0, 0.1], [0.01, 3.0, 1.0, 0.9])
    by_loss = _sampler(table, ss.TopK(keep=0.5), chunk_size=4)
    by_change = _sampler(table, ss.TopK(keep=0.5), chunk_size=4, score="change")
    assert list(by_loss) == [1, 2]  # the high-loss rule keeps the mislabeled sample
    assert list(by_change) == [2, 3]


def test_reducible_skips_what_the_reference_cannot_learn_either() -> None:
    # 0 and 1 have the same high loss; the reference also fails on 1 (noise), not on 0.
    table = ScoreTable(4)
    table.epoch = 0
    table.update(np.arange(4), [2.0, 2.0, 0.3, 0.1])
    table.set_reference(np.arange(4), [0.2, 2.5, 0.1, 0.4])  # reducible: 1.8, -0.5, 0.2, -0.3
    sampler = _sampler(table, ss.TopK(keep=0.5), chunk_size=4, score="reducible")
    assert list(sampler) == [0, 2]


def test_a_callable_score_decides() -> None:
    table = ScoreTable(4)
    table.epoch = 0
    table.update(np.arange(4), [4.0, 3.0, 2.0, 1.0])
    low_first = _sampler(table, ss.TopK(keep=0.5), chunk_size=4, score=lambda t, i: -t.losses[i])
    assert list(low_first) == [2, 3]


def test_the_named_loss_score_is_the_default_rule_exactly() -> None:
    # "loss" takes the original path; a callable reading the same losses takes the general one.
    n = 200
    rng = np.random.default_rng(0)
    table = ScoreTable(n)
    table.epoch = 0
    table.update(np.arange(n), rng.exponential(size=n))
    runs = []
    for score in ("loss", lambda t, i: t.losses[i]):
        sampler = _sampler(table, ss.RelativeProbabilistic(keep=0.3), score=score, rescale=True)
        ids = list(sampler)
        runs.append((ids, sampler.weights(torch.tensor(ids)).tolist()))
    assert runs[0] == runs[1] and 0 < len(runs[0][0]) < n


def test_non_finite_scores_pass_undecided_and_are_counted() -> None:
    table = ScoreTable(6)
    table.epoch = 0
    table.update(np.arange(6), [1.0] * 6)
    table.epoch = 1
    table.update([0, 1, 2], [1.0, 0.2, 0.5])  # 3, 4, 5 have one record: no change yet
    sampler = _sampler(table, ss.TopK(keep=0.1), chunk_size=6, score="change")
    audit = ss.SiftAudit(id_key=0)
    sampler.audit = audit
    trained = list(sampler)
    stats = sampler.stats
    assert stats is not None
    assert {3, 4, 5} <= set(trained)
    assert (stats.decided, stats.unscorable, stats.passed) == (3, 3, 3)
    assert stats.as_dict()["unscorable"] == 3
    record = audit.epoch(sampler.epoch)  # type: ignore[arg-type]
    assert set(record.passed.tolist()) == {3, 4, 5}
    # the audit holds the scores the decision used, here the changes
    scores = np.concatenate([record.kept_losses, record.sifted_losses])
    assert sorted(scores.tolist()) == pytest.approx([0.0, 0.5, 0.8])


def test_reducible_without_any_reference_trains_everything_and_warns_once() -> None:
    table = ScoreTable(5)
    table.epoch = 0
    table.update(np.arange(5), [1.0, 2.0, 3.0, 4.0, 5.0])
    sampler = _sampler(table, ss.TopK(keep=0.2), score="reducible")
    sampler.set_epoch(1)
    with pytest.warns(UserWarning, match="no reference losses.*set_reference"):
        assert list(sampler) == list(range(5))
    stats = sampler.stats
    assert stats is not None and stats.unscorable == 5 and stats.decided == 0
    table.set_reference([0, 1], [0.0, 0.0])  # a partial reference: the rest pass, no warning
    sampler.set_epoch(2)
    assert list(sampler) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    "policy",
    [
        ss.RelativeProbabilistic(keep=0.4, history=64),
        ss.RelativeProbabilistic(beta=1.0, history=64),
        ss.TopK(keep=0.4),
        ss.QuantileThreshold(exclude=0.5, history=64),
        ss.Uniform(keep=0.4),
        ss.Guarded(ss.TopK(keep=0.5), exclude_top=0.1),
    ],
    ids=repr,
)
def test_every_policy_decides_negative_scores_as_their_shifted_positives(
    policy: ss.Policy,
) -> None:
    # Policies rank scores, so moving every score by a constant (here below zero) changes
    # nothing: reducible losses, often negative, are decided like any loss.
    n = 120
    rng = np.random.default_rng(1)
    losses = rng.exponential(size=n)
    decisions = []
    for shift in (0.0, -10.0):
        table = ScoreTable(n)
        table.epoch = 0
        table.update(np.arange(n), losses)
        table.set_reference(np.arange(n), np.full(n, -shift))
        sampler = _sampler(table, policy, score="reducible", chunk_size=32, seed=3)
        decisions.append([list(sampler) for _ in range(3)])
    assert decisions[0] == decisions[1]
    assert 0 < len(decisions[0][0]) < n


def test_sampler_state_round_trips_the_new_stats() -> None:
    table = ScoreTable(6)
    _two_epochs(table, [1.0] * 6, [1.0, 0.2, 0.5, 1.0, 1.0, 1.0])
    table.update([3, 4, 5], [np.nan] * 3)
    sampler = _sampler(table, ss.TopK(keep=0.5), score="change")
    list(sampler)
    other = _sampler(table, ss.TopK(keep=0.5), score="change")
    other.load_state_dict(_roundtrip(sampler.state_dict()))
    assert other.epoch_stats == sampler.epoch_stats
    state = sampler.state_dict()
    state["stats"] = [{k: v for k, v in s.items() if k != "unscorable"} for s in state["stats"]]
    other.load_state_dict(state)  # saved before the field existed
    assert all(s.unscorable == 0 for s in other.epoch_stats.values())


def test_an_unknown_score_is_refused() -> None:
    names = r"\['change', 'loss', 'reducible', 'trend'\]"
    with pytest.raises(ValueError, match=r"`score` to be one of " + names):
        _sampler(ScoreTable(4), ss.TopK(0.5), score="rho")
    with pytest.raises(ValueError, match="or a callable"):
        _sampler(ScoreTable(4), ss.TopK(0.5), score=3)  # type: ignore[arg-type]


# ---------------------------------------------------------------- ClassNormalised


def _table(losses: torch.Tensor) -> ss.ScoreTable:
    table = ss.ScoreTable(losses.numel())
    table.update(torch.arange(losses.numel()), losses)
    return table


def test_a_class_hard_as_a_whole_is_not_kept_wholesale() -> None:
    # Class 0 is hard (losses 1 to 2), class 1 easy (0.01 to 0.02): ranked by the loss, TopK(0.5)
    # keeps class 0 alone; ranked within its class, it keeps the harder half of each.
    n = 40
    labels = torch.arange(n) % 2
    spread = torch.linspace(1.0, 2.0, n)
    losses = torch.where(labels == 0, spread, spread / 100)
    kept = {}
    for name, score in (("loss", "loss"), ("class", ss.ClassNormalised(labels))):
        table = ss.ScoreTable(n)
        sampler = ss.ReuseSampler(range(n), table, ss.TopK(keep=0.5), score=score, chunk_size=n)
        table.update(torch.tensor(list(sampler)), losses)  # epoch 0 trains all, records losses
        kept[name] = sorted(sampler)  # epoch 1 decides from them
    assert set(labels[kept["loss"]].tolist()) == {0}
    by_class = labels[kept["class"]].bincount(minlength=2).tolist()
    assert by_class == [10, 10]
    # the harder half within each class: every kept sample above its class's median
    for i in kept["class"]:
        same = losses[labels == labels[i]]
        assert losses[i] > same.median()


def test_class_normalised_leaves_unusable_losses_without_a_score() -> None:
    out = class_normalised(np.array([1.0, np.nan, 0.0, 0.0, 3.0]), np.array([0, 0, 1, 1, 0]))
    assert out[0] == pytest.approx(0.5) and out[4] == pytest.approx(1.5)
    assert np.isnan(out[1])  # a missing loss
    assert np.isnan(out[2:4]).all()  # a class whose median loss is 0: nothing to compare with


def test_bad_labels_are_refused_with_the_fix() -> None:
    with pytest.raises(ValueError, match="1-D sequence of integer classes"):
        ss.ClassNormalised(np.zeros((2, 2), dtype=int))
    with pytest.raises(ValueError, match="integer classes"):
        ss.ClassNormalised([0.5, 1.5])
    score = ss.ClassNormalised([0, 1])
    with pytest.raises(ValueError, match="one label per dataset index"):
        score(_table(torch.ones(4)), np.arange(4))
