"""Tests of ``smartsift.policies.rules``: the rules' math, as pure functions and as classes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import smartsift as ss
from smartsift.policies import (
    quantile_threshold_mask,
    relative_probabilistic_mask,
    topk_mask,
    uniform_mask,
)


def _run_stationary(policy: ss.Policy, batches: int = 400, batch: int = 64) -> float:
    rng = np.random.default_rng(1)
    history = policy.make_history()
    gen = torch.Generator().manual_seed(0)
    kept = seen = 0
    for _ in range(batches):
        losses = rng.exponential(size=batch)
        if history is not None:
            history.extend(losses)
        kept += int(policy.keep_mask(losses, history, gen).sum())
        seen += batch
    return kept / seen


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0, 3.0, 10.0])
def test_relative_probabilistic_keeps_one_over_one_plus_beta(beta: float) -> None:
    rate = _run_stationary(ss.RelativeProbabilistic(beta=beta, history=1000))
    assert rate == pytest.approx(1 / (1 + beta), abs=0.02)


def test_relative_probabilistic_prefers_high_losses() -> None:
    history = np.sort(np.arange(1, 101, dtype=float))
    draws = np.random.default_rng(0).random(20000)
    low = relative_probabilistic_mask(np.full(20000, 10.0), history, 1.0, draws).mean()
    high = relative_probabilistic_mask(np.full(20000, 90.0), history, 1.0, draws).mean()
    assert low == pytest.approx(0.10, abs=0.01)
    assert high == pytest.approx(0.90, abs=0.01)


def test_quantile_threshold_drops_exactly_the_bottom_quantile() -> None:
    history = np.arange(1, 101, dtype=float)
    losses = np.arange(1, 101, dtype=float)
    mask = quantile_threshold_mask(losses, history, 0.25)
    assert not mask[:25].any()
    assert mask[25:].all()
    assert quantile_threshold_mask(losses, history, 0.0).all()


@pytest.mark.parametrize("exclude", [0.1, 0.25, 0.5, 0.9])
def test_quantile_threshold_stationary_rate(exclude: float) -> None:
    rate = _run_stationary(ss.QuantileThreshold(exclude=exclude, history=1000))
    assert rate == pytest.approx(1 - exclude, abs=0.03)


@pytest.mark.parametrize(
    ("keep", "n", "expected"),
    [(0.5, 10, 5), (0.3, 10, 3), (0.01, 10, 1), (1.0, 7, 7), (0.34, 3, 2)],
)
def test_topk_keeps_ceil_of_the_highest(keep: float, n: int, expected: int) -> None:
    losses = np.random.default_rng(n).random(n)
    mask = topk_mask(losses, keep)
    assert mask.sum() == expected == math.ceil(keep * n - 1e-9)
    assert losses[mask].min() >= losses[~mask].max(initial=-np.inf)


def test_topk_breaks_ties_by_position() -> None:
    assert topk_mask(np.array([1.0, 1.0, 1.0]), 0.34).tolist() == [True, True, False]


def test_uniform_ignores_losses() -> None:
    draws = np.random.default_rng(0).random(10000)
    assert uniform_mask(draws, 0.3).mean() == pytest.approx(0.3, abs=0.02)
    rate = _run_stationary(ss.Uniform(keep=0.3))
    assert rate == pytest.approx(0.3, abs=0.02)


def test_same_generator_state_gives_same_mask() -> None:
    policy = ss.RelativeProbabilistic(beta=1.0, history=50)
    losses = np.random.default_rng(3).random(50)
    masks = []
    for _ in range(2):
        history = policy.make_history()
        assert history is not None
        history.extend(losses)
        masks.append(policy.keep_mask(losses, history, torch.Generator().manual_seed(7)))
    assert np.array_equal(masks[0], masks[1])


def test_expected_keep() -> None:
    assert ss.RelativeProbabilistic(beta=3.0).expected_keep == pytest.approx(0.25)
    assert ss.QuantileThreshold(exclude=0.25).expected_keep == pytest.approx(0.75)
    assert ss.TopK(keep=0.2).expected_keep == pytest.approx(0.2)
    assert ss.Uniform(keep=0.6).expected_keep == pytest.approx(0.6)


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: ss.RelativeProbabilistic(beta=0), "`beta` to be a positive float, but got 0"),
        (lambda: ss.RelativeProbabilistic(beta=-1.0), "got -1.0"),
        (lambda: ss.RelativeProbabilistic(beta=float("nan")), "got nan"),
        (lambda: ss.RelativeProbabilistic(history=0), "`history` to be a positive int"),
        (
            lambda: ss.QuantileThreshold(exclude=1.0),
            r"`exclude` to be a float in \[0, 1\), but got 1.0",
        ),
        (lambda: ss.QuantileThreshold(exclude=-0.1), "got -0.1"),
        (lambda: ss.TopK(keep=0.0), r"`keep` to be a float in \(0, 1\], but got 0.0"),
        (lambda: ss.TopK(keep=1.5), "got 1.5"),
        (lambda: ss.Uniform(keep=0), "got 0"),
        (lambda: ss.QuantileThreshold(history=2.5), "got 2.5"),  # type: ignore[arg-type]
    ],
)
def test_invalid_parameters_are_rejected(factory, message: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=message):
        factory()


def test_policies_are_frozen() -> None:
    policy = ss.TopK(keep=0.5)
    with pytest.raises(AttributeError):
        policy.keep = 0.1  # type: ignore[misc]


# ---------------------------------------------------------------- keep rates users can state


def test_relative_probabilistic_takes_beta_or_keep_and_defaults_to_beta_one() -> None:
    default = ss.RelativeProbabilistic()
    assert (default.beta, default.keep, default.adaptive) == (1.0, None, False)
    assert repr(default) == "RelativeProbabilistic(beta=1.0, history=500)"
    assert default.describe() == {
        "type": "RelativeProbabilistic",
        "fields": {"beta": 1.0, "history": 500},
    }
    stated = ss.RelativeProbabilistic(keep=0.2, history=64)
    assert (stated.beta, stated.keep, stated.adaptive) == (None, 0.2, True)
    assert repr(stated) == "RelativeProbabilistic(history=64, keep=0.2)"
    assert stated.expected_keep == 0.2 and stated.initial_beta == pytest.approx(4.0)
    assert not stated.matches(ss.RelativeProbabilistic(beta=4.0, history=64).describe())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"beta": 1.0, "keep": 0.3}, r"exactly one of `beta` and `keep`.*beta=1.0 and keep=0.3"),
        ({"keep": 0.0}, r"`keep` to be a float in \(0, 1\), but got 0.0"),
        ({"keep": 1.0}, r"`keep` to be a float in \(0, 1\), but got 1.0"),
        ({"keep": float("nan")}, r"`keep`.*got nan"),
        ({"keep": True}, r"`keep`.*got True"),
    ],
)
def test_a_stated_keep_is_validated(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ss.RelativeProbabilistic(**kwargs)


def test_a_stated_keep_alone_decides_with_its_stationary_beta() -> None:
    # Without a selector to adapt it, keep=0.25 is the rule with beta = 1 / 0.25 - 1 = 3.
    losses = np.random.default_rng(5).random(64)
    masks = []
    for policy in (
        ss.RelativeProbabilistic(keep=0.25, history=64),
        ss.RelativeProbabilistic(3.0, 64),
    ):
        history = policy.make_history()
        assert history is not None
        history.extend(losses)
        masks.append(policy.keep_mask(losses, history, torch.Generator().manual_seed(2)))
    assert np.array_equal(masks[0], masks[1])


def test_beta_keeps_exactly_the_pure_rule() -> None:
    losses = np.random.default_rng(7).random(100)
    policy = ss.RelativeProbabilistic(beta=1, history=100)
    history = policy.make_history()
    assert history is not None
    history.extend(losses)
    mask = policy.keep_mask(losses, history, torch.Generator().manual_seed(3))
    draws = torch.rand(100, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected = relative_probabilistic_mask(losses, np.sort(losses), 1, draws.numpy())
    assert np.array_equal(mask, expected)


def test_keep_probabilities_are_exposed_for_probabilistic_policies_only() -> None:
    losses = np.array([1.0, 2.0, 3.0, 4.0])
    policy = ss.RelativeProbabilistic(beta=2.0, history=4)
    history = policy.make_history()
    assert history is not None
    history.extend(losses)
    assert policy.keep_probabilities(losses, history).tolist() == [0.0625, 0.25, 0.5625, 1.0]
    assert ss.Uniform(keep=0.3).keep_probabilities(losses, None).tolist() == [0.3] * 4
    assert ss.TopK(keep=0.5).keep_probabilities(losses, None) is None
    assert ss.QuantileThreshold(0.5).keep_probabilities(losses, None) is None
