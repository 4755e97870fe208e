"""Tests of ``smartsift.engine.stats``: the stats snapshot, its conservation laws and its sums."""

from __future__ import annotations

import dataclasses
import math

import pytest

from smartsift.engine.stats import (
    SiftStats,
    conservation_errors,
    counter_fields,
    from_sums,
    stats_fields,
    timer_fields,
)

_NOT_SUMMED = {"recent_keep_rate", "loss_quantiles", "auto_state", "auto_reason"}


def _consistent() -> SiftStats:
    # 20 seen: 4 passed during the delay + 6 kept by the policy = 10 kept, 10 sifted;
    # the 10 kept: 7 trained, 1 dropped, 2 buffered.
    return SiftStats(
        samples_seen=20,
        samples_passed=4,
        samples_kept=10,
        samples_sifted=10,
        samples_dropped=1,
        samples_trained=7,
        samples_buffered=2,
        raw_batches=5,
        steps=2,
    )


def test_keep_rates_are_nan_before_any_sample() -> None:
    stats = SiftStats()
    assert math.isnan(stats.keep_rate)
    assert math.isnan(stats.sift_keep_rate)
    assert math.isnan(stats.recent_keep_rate)


def test_keep_rate_counts_the_delay_and_sift_keep_rate_leaves_it_out() -> None:
    stats = _consistent()
    assert stats.keep_rate == 10 / 20
    assert stats.sift_keep_rate == (10 - 4) / (20 - 4)


def test_sift_keep_rate_is_nan_when_every_sample_passed_through() -> None:
    stats = SiftStats(samples_seen=8, samples_passed=8, samples_kept=8)
    assert stats.keep_rate == 1.0
    assert math.isnan(stats.sift_keep_rate)


def test_every_field_is_summed_over_ranks_or_is_one_of_the_few_that_are_not() -> None:
    names = {f.name for f in dataclasses.fields(SiftStats)}
    assert stats_fields() == counter_fields() + timer_fields()
    assert len(set(stats_fields())) == len(stats_fields())
    assert set(stats_fields()) | _NOT_SUMMED == names
    assert not set(stats_fields()) & _NOT_SUMMED
    defaults = SiftStats()
    assert all(type(getattr(defaults, k)) is int for k in counter_fields())
    assert all(type(getattr(defaults, k)) is float for k in timer_fields())


def test_as_dict_is_flat_numbers_with_the_rates_and_prefixed_quantiles() -> None:
    stats = dataclasses.replace(
        _consistent(), recent_keep_rate=0.25, loss_quantiles={"p10": 0.1, "p90": 2.0}
    )
    out = stats.as_dict()
    assert set(stats_fields()) <= set(out)
    assert out["samples_kept"] == 10
    assert out["keep_rate"] == 0.5
    assert out["sift_keep_rate"] == 6 / 16
    assert out["recent_keep_rate"] == 0.25
    assert out["loss_p10"] == 0.1
    assert out["loss_p90"] == 2.0
    assert "auto_sifting" not in out
    assert all(isinstance(v, (int, float)) for v in out.values())


@pytest.mark.parametrize(("state", "flag"), [("sift", 1.0), ("plain", 0.0), ("measuring", 0.0)])
def test_as_dict_reports_whether_auto_sifts(state: str, flag: float) -> None:
    stats = SiftStats(auto_state=state, auto_reason="why")
    assert stats.as_dict()["auto_sifting"] == flag
    assert str(stats).endswith(" auto=why")


def test_str_names_the_counts_and_leaves_auto_out_for_other_policies() -> None:
    text = str(_consistent())
    assert text.startswith("seen=20 kept=10 (50.0%; 37.5% of scored) sifted=10 trained=7 ")
    assert "dropped=1 steps=2" in text
    assert "auto=" not in text


def test_consistent_stats_break_no_conservation_law() -> None:
    assert conservation_errors(_consistent()) == []
    assert conservation_errors(SiftStats()) == []


def test_each_broken_conservation_law_is_named_with_its_numbers() -> None:
    lost = dataclasses.replace(_consistent(), samples_sifted=9)
    assert conservation_errors(lost) == ["samples_seen 20 != samples_kept 10 + samples_sifted 9"]
    leaked = dataclasses.replace(_consistent(), samples_trained=8)
    assert conservation_errors(leaked) == [
        "samples_kept 10 != samples_trained 8 + samples_dropped 1 + samples_buffered 2"
    ]
    both = dataclasses.replace(_consistent(), samples_kept=11)
    assert len(conservation_errors(both)) == 2


def test_from_sums_round_trips_a_snapshot() -> None:
    stats = dataclasses.replace(
        _consistent(),
        data_s=0.5,
        scoring_s=1.25,
        comm_s=0.125,
        recent_keep_rate=0.4,
        loss_quantiles={"p50": 1.0},
        auto_state="sift",
        auto_reason="it pays",
    )
    sums = [float(getattr(stats, k)) for k in stats_fields()]
    rebuilt = from_sums(sums, 0.4, {"p50": 1.0}, "sift", "it pays")
    assert rebuilt == stats
    assert all(type(getattr(rebuilt, k)) is int for k in counter_fields())


def test_ranks_that_moved_leftovers_conserve_samples_only_in_their_sum() -> None:
    # Rank 0 kept 6 and trained 4; rank 1 kept 2 and trained 4: at the epoch end rank 0 gave two
    # of its leftovers to rank 1, so each rank alone breaks the second law, their sum does not.
    rank0 = SiftStats(samples_seen=8, samples_kept=6, samples_sifted=2, samples_trained=4)
    rank1 = SiftStats(samples_seen=8, samples_kept=2, samples_sifted=6, samples_trained=4)
    assert len(conservation_errors(rank0)) == len(conservation_errors(rank1)) == 1
    sums = [
        float(getattr(rank0, k)) + float(getattr(rank1, k)) for k in stats_fields()
    ]  # what global_stats gets from its all_reduce
    total = from_sums(sums, 0.5, {})
    assert conservation_errors(total) == []
    assert (total.samples_seen, total.samples_kept, total.samples_trained) == (16, 8, 8)


def test_from_sums_refuses_a_vector_of_the_wrong_length() -> None:
    with pytest.raises(ValueError):
        from_sums([0.0] * (len(stats_fields()) - 1), 0.0, {})
