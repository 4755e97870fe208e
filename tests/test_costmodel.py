"""Tests of ``smartsift.engine.costmodel``: the predicted speedup and its threshold."""

from __future__ import annotations

import math

import pytest

import smartsift as ss
from smartsift.engine.costmodel import MIN_SPEEDUP, predicted_speedup
from smartsift.policies.auto import judge
from smartsift.tools.profiling import ProfileReport


@pytest.mark.parametrize(
    ("step", "keep", "scoring", "data", "expected"),
    [
        # (data + step) / (data + scoring + keep * step), worked by hand.
        (1.0, 0.5, 0.25, 0.0, 1.0 / 0.75),
        (2.0, 0.25, 0.5, 1.0, 3.0 / 2.0),
        (4.0, 1.0, 1.0, 0.0, 4.0 / 5.0),  # keeping everything only adds the scoring pass
        (10.0, 0.1, 0.0, 0.0, 10.0),  # free scoring: the speedup is 1 / keep
        (1.0, 0.5, 0.5, 0.0, 1.0),  # break-even: scoring costs what the dropped half saves
    ],
)
def test_the_speedup_is_plain_over_sifted_cost_per_sample(
    step: float, keep: float, scoring: float, data: float, expected: float
) -> None:
    assert predicted_speedup(step, keep, scoring, data) == pytest.approx(expected, rel=1e-12)


def test_data_loading_is_paid_either_way_and_pulls_the_speedup_towards_one() -> None:
    speedups = [predicted_speedup(1.0, 0.25, 0.1, data) for data in (0.0, 1.0, 10.0, 1000.0)]
    assert speedups == sorted(speedups, reverse=True)
    assert speedups[0] > 2.0
    assert speedups[-1] == pytest.approx(1.0, abs=1e-3)


def test_the_speedup_falls_as_more_is_kept_or_scoring_costs_more() -> None:
    by_keep = [predicted_speedup(1.0, k, 0.2) for k in (0.1, 0.25, 0.5, 0.9)]
    by_scoring = [predicted_speedup(1.0, 0.5, s) for s in (0.0, 0.1, 0.3, 1.0)]
    assert by_keep == sorted(by_keep, reverse=True)
    assert by_scoring == sorted(by_scoring, reverse=True)


def test_without_sifting_cost_there_is_no_speedup() -> None:
    # Keeping everything with a free scoring pass costs exactly what plain training costs.
    assert predicted_speedup(step=3.0, keep=1.0, scoring=0.0, data=0.5) == 1.0


@pytest.mark.parametrize("step", [0.0, 1.0, 7.5])
def test_a_sifted_epoch_that_costs_nothing_predicts_an_infinite_speedup(step: float) -> None:
    # Nothing kept, nothing loaded, free scoring: the denominator is 0, never a ZeroDivisionError.
    assert predicted_speedup(step, keep=0.0, scoring=0.0, data=0.0) == math.inf


def test_the_threshold_is_ten_percent() -> None:
    assert MIN_SPEEDUP == 1.1
    assert predicted_speedup(step=1.0, keep=0.9, scoring=0.3) < MIN_SPEEDUP
    assert predicted_speedup(step=1.0, keep=0.25, scoring=0.1) >= MIN_SPEEDUP


def test_a_speedup_of_exactly_the_threshold_is_worth_sifting_for_the_profiler() -> None:
    # T = 8, data 3, scoring 5: at keep 1/4, (3 + 8) / (3 + 5 + 2) = 11 / 10, exactly MIN_SPEEDUP
    # in floating point (every operand and partial sum is an exact binary number).
    at = ProfileReport(3.0, 5.0, 0.0, 8.0, 0.0, 0.0)
    assert at.predicted_speedup(0.25) == MIN_SPEEDUP
    assert at.recommended_keep == 0.25  # milder keeps give less than 1.1
    below = ProfileReport(3.0, 5.5, 0.0, 8.0, 0.0, 0.0)  # 11 / 10.5 < 1.1
    assert below.predicted_speedup(0.25) < MIN_SPEEDUP
    assert below.recommended_keep is None


def test_a_speedup_of_exactly_the_threshold_is_worth_sifting_for_auto() -> None:
    auto = ss.Auto(ss.TopK(0.25))
    assert auto.min_speedup == MIN_SPEEDUP
    # Per unit of training step: data 3/8, scoring 5/8, keep 1/4: (3/8 + 1) / (3/8 + 5/8 + 1/4).
    at = judge(
        sifting=False, f=0.625, d=0.375, keep=0.25, c=0.99, rise=math.nan, comparison=None,
        auto=auto,
    )  # fmt: skip
    assert at is not None and at[0], at
    below = judge(
        sifting=False, f=0.7, d=0.375, keep=0.25, c=0.99, rise=math.nan, comparison=None,
        auto=auto,
    )  # fmt: skip
    assert below is not None
    assert not below[0]
    assert below[1].startswith("plain (cost)")
