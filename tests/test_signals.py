"""Tests of ``smartsift.policies.signals``: the loss statistics the profiler and ``Auto`` read."""

from __future__ import annotations

import math

import numpy as np
import pytest

from smartsift.policies.signals import loss_concentration, relative_trend, trend_t


def test_concentration_separates_even_from_concentrated_losses() -> None:
    rng = np.random.default_rng(0)
    even = 2.3 + 0.05 * rng.standard_normal(1000)  # an untrained classifier: all near log(10)
    learnt = np.where(rng.random(1000) < 0.1, 3.0, 0.01)  # a tenth still wrong
    assert loss_concentration(even) < 0.52 < 0.95 < loss_concentration(learnt)


def test_relative_trend_reads_the_change_from_a_fitted_line() -> None:
    assert relative_trend(np.array([2.0, 1.8, 1.6, 1.4])) == pytest.approx(-0.3)
    assert relative_trend(np.array([1.0, np.nan, 1.5])) == pytest.approx(0.5)
    assert math.isnan(relative_trend(np.array([1.0])))
    assert math.isnan(relative_trend(np.array([-1.0, -2.0])))  # no positive start


def test_trend_t_tells_a_sure_fall_from_noise() -> None:
    rng = np.random.default_rng(1)
    steps = np.arange(20)
    falling = 2.0 - 0.05 * steps + 0.02 * rng.standard_normal(20)
    flat = 1.0 + 0.1 * rng.standard_normal(20)
    assert trend_t(falling) < -10
    assert abs(trend_t(flat)) < 3
    assert trend_t(np.array([1.0, 1.0, 1.0])) == 0.0
    assert math.isnan(trend_t(np.array([1.0, 2.0])))
