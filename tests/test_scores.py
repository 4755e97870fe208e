"""Scores for loss reuse: ClassNormalised ranks each sample within its class."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smartsift as ss
from smartsift.modes.scores import class_normalised


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
