"""Tests of ``smartsift.policies.keeprate``: a stated keep rate held by feedback on beta."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
import torch

import smartsift as ss
from smartsift.engine.selector import Selector
from smartsift.policies.keeprate import (
    BETA_MAX,
    BETA_MIN,
    KEEP_HORIZON,
    KeepRate,
    KeepRateState,
    adapt_log_beta,
)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("target", [0.1, 0.25, 0.5, 0.8])
def test_the_rate_starts_at_the_beta_that_keeps_the_target_of_stationary_losses(
    target: float,
) -> None:
    rate = KeepRate(target, horizon=100)
    assert rate.beta == pytest.approx(1.0 / target - 1.0)
    assert 1.0 / (1.0 + rate.beta) == pytest.approx(target)  # the rule's stationary keep
    assert math.isnan(rate.realised)


@pytest.mark.parametrize("target", [0.0, 1.0, -0.2, 1.5])
def test_a_target_outside_the_open_unit_interval_is_refused(target: float) -> None:
    with pytest.raises(ValueError, match=r"Expected `target` to be a float in \(0, 1\)"):
        KeepRate(target, horizon=10)


def test_a_horizon_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="Expected `horizon` to be a positive int"):
        KeepRate(0.5, horizon=0)


def test_one_step_moves_log_beta_by_the_error_over_its_sensitivity_and_horizon() -> None:
    # (kept - target * decided) / (target * (1 - target) * horizon)
    assert adapt_log_beta(0.0, kept=5, decided=10, target=0.5, horizon=10) == 0.0
    assert adapt_log_beta(0.0, kept=10, decided=10, target=0.5, horizon=10) == pytest.approx(2.0)
    assert adapt_log_beta(1.0, kept=0, decided=8, target=0.25, horizon=16) == pytest.approx(
        1.0 - 2.0 / (0.25 * 0.75 * 16)
    )


def test_log_beta_is_clipped_to_the_beta_range() -> None:
    assert adapt_log_beta(0.0, kept=10**6, decided=10**6, target=0.5, horizon=1) == math.log(
        BETA_MAX
    )
    assert adapt_log_beta(0.0, kept=0, decided=10**6, target=0.5, horizon=1) == math.log(BETA_MIN)


def test_keeping_too_many_raises_beta_and_too_few_lowers_it() -> None:
    high, low = KeepRate(0.25, horizon=100), KeepRate(0.25, horizon=100)
    high.update(kept=40, decided=100)
    low.update(kept=10, decided=100)
    assert high.beta > 3.0 > low.beta
    assert (high.kept, high.decided, high.realised) == (40, 100, 0.4)


def test_an_empty_round_changes_nothing() -> None:
    rate = KeepRate(0.3, horizon=50)
    rate.update(kept=0, decided=0)
    assert (rate.kept, rate.decided, rate.beta) == (0, 0, pytest.approx(1 / 0.3 - 1))


def test_a_round_larger_than_half_the_horizon_is_corrected_over_twice_its_size() -> None:
    rate = KeepRate(0.5, horizon=10)
    rate.update(kept=20, decided=20)  # horizon 10 < 2 * 20: corrected over 40 samples
    assert rate.log_beta == pytest.approx(0.0 + (20 - 10) / (0.25 * 40))


def test_the_kept_count_is_bound_exactly_by_how_far_beta_moved() -> None:
    # |kept - target * decided| = target * (1 - target) * horizon * |log_beta - log_beta0| for
    # rounds of at most horizon / 2 samples, as long as beta stays inside its clip range.
    rng = np.random.default_rng(0)
    target, horizon = 0.3, 64
    rate = KeepRate(target, horizon)
    start = rate.log_beta
    for _ in range(500):
        decided = int(rng.integers(1, horizon // 2 + 1))
        # Each sample kept with the rule's stationary probability 1 / (1 + beta), plus a drift.
        kept = int(rng.binomial(decided, min(1.0, 1.0 / (1.0 + rate.beta) + 0.05)))
        rate.update(kept, decided)
        assert math.log(BETA_MIN) + 0.1 < rate.log_beta < math.log(BETA_MAX) - 0.1
        error = rate.kept - target * rate.decided
        assert error == pytest.approx(target * (1 - target) * horizon * (rate.log_beta - start))


def test_the_state_round_trips_through_a_weights_only_load() -> None:
    rate = KeepRate(0.2, horizon=32)
    rate.update(kept=9, decided=16)
    restored = KeepRate(0.2, horizon=32)
    restored.load_state_dict(_roundtrip(rate.state_dict()))
    assert (restored.log_beta, restored.kept, restored.decided) == (
        rate.log_beta,
        rate.kept,
        rate.decided,
    )


def test_the_bound_state_takes_the_policys_keep_and_a_horizon_of_its_history() -> None:
    short = ss.RelativeProbabilistic(keep=0.25, history=8).bind()
    long = ss.RelativeProbabilistic(keep=0.25, history=5000).bind()
    assert isinstance(short, KeepRateState) and isinstance(long, KeepRateState)
    assert (short.target, short.horizon, short.rate.horizon) == (0.25, 8, 8)
    assert long.horizon == KEEP_HORIZON
    assert short.beta == pytest.approx(3.0)
    assert short.key == "keep_rate"


def test_one_beta_decides_the_whole_round_then_one_step_moves_it() -> None:
    policy = ss.RelativeProbabilistic(keep=0.25, history=64)
    state = policy.bind()
    assert isinstance(state, KeepRateState)
    history = policy.make_history()
    assert history is not None
    losses = [np.linspace(0.1, 2.0, 10), np.linspace(0.5, 1.5, 6), np.empty(0)]
    history.extend(np.concatenate(losses))
    beta = state.beta
    proposals = state.decide(losses, history, torch.Generator().manual_seed(2), probabilities=True)
    same = torch.Generator().manual_seed(2)
    for x, (mask, probs) in zip(losses[:2], proposals, strict=False):
        assert mask.tolist() == policy.keep_mask(x, history, same, beta=beta).tolist()
        assert probs is not None
        assert probs.tolist() == policy.keep_probabilities(x, history, beta=beta).tolist()
    assert proposals[2][0].shape == (0,)
    kept = sum(int(m.sum()) for m, _ in proposals)
    assert (state.rate.kept, state.rate.decided) == (kept, 16)
    expected = adapt_log_beta(math.log(3.0), kept, 16, 0.25, 64)
    assert state.rate.log_beta == pytest.approx(expected)


@pytest.mark.parametrize("keep", [0.2, 0.5, 0.7])
def test_the_realised_fraction_converges_to_the_target_on_stationary_losses(keep: float) -> None:
    selector = Selector(ss.RelativeProbabilistic(keep=keep, history=500), seed=0)
    state = selector.state
    assert isinstance(state, KeepRateState)
    rng = np.random.default_rng(1)
    start = state.rate.log_beta
    for _ in range(400):
        selector.decide([rng.exponential(size=50)])
    rate = state.rate
    assert rate.decided == 20_000
    # The bound: the cumulative error is what beta's walk says, and beta stayed near its start
    # (the percentiles of stationary losses are uniform: beta = 1 / keep - 1 keeps `keep`).
    moved = abs(rate.log_beta - start)
    bound = keep * (1 - keep) * state.horizon * moved
    assert abs(rate.kept - keep * rate.decided) == pytest.approx(bound)
    assert moved < 0.5
    assert abs(rate.realised - keep) == pytest.approx(bound / rate.decided)
    assert bound / rate.decided < 0.01


def test_losses_no_beta_can_sift_drive_beta_to_its_clip_and_stop_there() -> None:
    # Equal losses rank at percentile 1: every sample is kept whatever beta.
    selector = Selector(ss.RelativeProbabilistic(keep=0.5, history=64), seed=0)
    for _ in range(200):
        decision = selector.decide([np.ones(16)])
        assert decision.kept == [16]
    assert selector.beta == pytest.approx(BETA_MAX)


def test_the_bound_state_is_saved_and_restored_by_the_selector() -> None:
    policy = ss.RelativeProbabilistic(keep=0.3, history=32)
    selector = Selector(policy, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(5):
        selector.decide([rng.exponential(size=8)])
    saved = _roundtrip(selector.state_dict())
    assert set(saved["keep_rate"]) == {"log_beta", "kept", "decided"}
    restored = Selector(policy, seed=0)
    restored.load_state_dict(saved)
    assert restored.beta == selector.beta
    x = rng.exponential(size=8)
    assert restored.decide([x]).masks[0].tolist() == selector.decide([x]).masks[0].tolist()
    assert restored.beta == selector.beta
