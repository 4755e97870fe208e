"""Loss reuse on the five frontier tasks (``benchmarks/reuse_tasks.py``).

A smoke run of the whole benchmark (its tables, figures, targets, and its saved results read
back without training), and the measures computed as stated from made-up runs. It times
nothing and asserts no speed.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

pytest.importorskip("mnist1d")

from _results import made_up_result

import smartsift as ss
from benchmarks import reuse_tasks as rt
from benchmarks.frontier import BENCHES, PLAIN, Costs
from benchmarks.harness import RunResult

FT = Costs(scoring_s=1.0, step_s=2.0, advice="")  # F/T = 0.5
CONTROL = "plain, 2/4 epochs (0.50x)"
R3, U3, H3, R5, U5, H5 = (
    rt.Arm(kind, keep).name for keep in (0.3, 0.5) for kind in ("reuse", "uniform", "hybrid")
)


def test_smoke_run_reports_every_task_and_arm_and_reads_its_results_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "results.pkl"
    monkeypatch.setenv(rt.RESULTS_ENV, str(saved))
    section = rt.run(smoke=True, img_dir=tmp_path)
    text = section.markdown()
    parts = text.split("\n### ")[1:]
    assert [p.splitlines()[0] for p in parts] == [b.title for b in BENCHES.values()]
    for part in parts:
        for arm in rt.ARMS:
            assert f"| {arm.name} |" in part
        assert "| plain |" in part
        for keep in ("0.3", "0.5"):
            assert sum(line.startswith(f"| {keep} |") for line in part.splitlines()) == 2
    for key in BENCHES:
        assert (tmp_path / f"reuse_tasks_{key}.png").is_file()
        assert f"(img/reuse_tasks_{key}.png)" in text
    names = [t.name for t in section.targets]
    assert len(names) == 4 and "keep 0.3" in names[0] and "keep 0.5" in names[1]
    assert "hybrid" in names[2] and "still-improving" in names[3]
    # one seed: no seed spread, so every target is judged and the misses are named
    for target in section.targets:
        assert target.measured and (target.met or target.name in text.split("### ")[0])
    assert saved.is_file()

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("trained again instead of reading the saved results")

    monkeypatch.setattr(rt, "run_all", no_training)
    again = rt.run(smoke=True, img_dir=tmp_path)
    assert again.targets == section.targets
    assert "rendered again from the saved measurements" in again.body


def test_arms_name_their_policy_and_pair_up_by_keep() -> None:
    assert [a.name for a in rt.ARMS] == [R3, U3, H3, R5, U5, H5]
    assert R3 == "Reuse: RelativeProbabilistic(keep=0.3)" and U5 == "Reuse: Uniform(keep=0.5)"
    for arm in rt.ARMS:
        policy = arm.policy(1000)
        if arm.kind == "uniform":
            assert policy == ss.Uniform(keep=arm.keep)
        else:
            assert isinstance(policy, ss.RelativeProbabilistic)
            assert policy.expected_keep == pytest.approx(arm.keep)
        assert arm.reuse().hybrid == (arm.kind == "hybrid") and arm.reuse().max_age == 3
    assert [(a.name, u.name) for a, u in rt.chance_pairs(rt.ARMS)] == [(R3, U3), (R5, U5)]
    assert [(h.name, r.name) for h, r in rt.hybrid_pairs(rt.ARMS)] == [(H3, R3), (H5, R5)]
    assert rt.chance_pairs([rt.Arm("reuse", 0.3)]) == []
    with pytest.raises(ValueError, match=r"`kind`.*'random'"):
        rt.Arm("random", 0.3)
    with pytest.raises(ValueError, match=r"`keep`.*1\.5"):
        rt.Arm("reuse", 1.5)


def test_reuse_curve_interpolates_extends_below_and_holds_beyond() -> None:
    pts = [(9.0, 0.93), (6.0, 0.90), (12.0, 0.94)]  # any order
    assert rt.reuse_curve_at(pts, 7.5) == (pytest.approx(0.915), "")
    assert rt.reuse_curve_at(pts, 12.0) == (pytest.approx(0.94), "")
    value, where = rt.reuse_curve_at(pts, 5.0)  # the line through the two cheapest, extended
    assert value == pytest.approx(0.89) and where == "below"
    assert rt.reuse_curve_at(pts, 14.0) == (0.94, "beyond")
    # not better with more work: flat below, in either direction of the metric
    assert rt.reuse_curve_at([(6.0, 0.95), (9.0, 0.93)], 5.0) == (0.95, "below")
    assert rt.reuse_curve_at([(6.0, 2.0), (9.0, 2.1)], 5.0, higher_is_better=False) == (
        2.0,
        "below",
    )
    value, _ = rt.reuse_curve_at([(6.0, 2.1), (9.0, 2.0)], 3.0, higher_is_better=False)
    assert value == pytest.approx(2.2)  # a loss falls with work: higher below
    assert math.isnan(rt.reuse_curve_at([], 5.0)[0])
    assert math.isnan(rt.reuse_curve_at(pts, math.nan)[0])


def _result(name: str, epochs: int, final: float, trained: int, scored: int = 0) -> RunResult:
    keep = math.nan if name.startswith(PLAIN) else 0.4
    return made_up_result(name, epochs, final, trained, keep=keep, scored=scored)


def _seed(key: str, seed: int, plain: float, chance: float, hybrid: float) -> rt.SeedRuns:
    """A seed of 100 samples: plain 4 epochs, the control 2; loss reuse ahead of Uniform by
    ``chance``; the hybrid ``hybrid`` above the loss-reuse curve (accuracy; a loss task
    gets ``3 - accuracy``)."""
    higher = BENCHES[key].higher_is_better

    def metric(acc: float) -> float:
        return acc if higher else 3.0 - acc

    runs = [
        (PLAIN, 4, plain, 400, 0),
        (CONTROL, 2, 0.80, 200, 0),
        (R3, 4, 0.84, 200, 0),
        (U3, 4, 0.84 - chance, 200, 0),
        # 120 trained + 100 scored at F/T 0.5: 1.7 work units, below the curve's (2, 0.84)
        (H3, 4, 0.828 + hybrid, 120, 100),
        (R5, 4, 0.88, 300, 0),
        (U5, 4, 0.88 - chance / 2, 300, 0),
        (H5, 4, 0.86 + hybrid, 200, 100),  # 2.5 work units: between reuse's 2 and 3
        ("plain, 3/4 epochs, matched work", 3, 0.87, 300, 0),
    ]
    results = [_result(n, e, metric(f), t, s) for n, e, f, t, s in runs]
    for r in results:
        r.higher_is_better = higher
    matched = {R5: "plain, 3/4 epochs, matched work", R3: CONTROL}
    return rt.SeedRuns(key, seed, results, matched)


def test_measures_charge_the_scoring_pass_and_place_the_hybrid_on_the_reuse_curve() -> None:
    m = rt.measure_seed(_seed("mnist1d", 0, 0.90, 0.02, 0.01), FT.f_over_t, rt.ARMS)
    assert m[PLAIN].work == 4.0 and m[PLAIN].above == 0.0
    # loss reuse at 3 work units: the frontier halfway from (2, 0.80) to (4, 0.90)
    assert m[R5].work == 3.0 and m[R5].frontier == pytest.approx(0.85)
    assert m[R5].above == pytest.approx(0.03) and m[R5].scoring == 0.0
    assert m[R5].matched_final == 0.87 and m[R5].matched_epochs == 3
    assert m[R3].matched_epochs == 2 and math.isnan(m[U3].matched_final)
    # the hybrid pays its pass: 100 scored x 0.5 over 100 samples
    assert m[H3].work == pytest.approx(1.7) and m[H3].scoring == pytest.approx(0.5)
    # below the reuse curve's cheapest point: the line through (2, 0.84) and (3, 0.88)
    assert m[H3].curve == pytest.approx(0.828) and m[H3].curve_where == "below"
    assert math.isnan(m[H3].above)  # cheaper than the cheapest control
    assert m[H5].curve == pytest.approx(0.86) and m[H5].curve_where == ""
    assert math.isnan(m[R5].curve)


@pytest.mark.parametrize("key", ["mnist1d", "charlm"])
def test_paired_comparisons_are_in_the_better_direction(key: str) -> None:
    seeds = [_seed(key, 0, 0.90, 0.02, 0.01), _seed(key, 1, 0.915, 0.04, 0.03)]
    s = rt.summarise(BENCHES[key], seeds, FT)
    assert s.spread == pytest.approx(0.015)
    c3, c5 = s.chance
    assert (c3.arm, c3.other, c3.keep) == (R3, U3, 0.3)
    assert c3.diffs == pytest.approx([0.02, 0.04]) and c3.beats  # 0.03 > 0.015
    assert c5.diffs == pytest.approx([0.01, 0.02]) and not c5.beats  # 0.015: not more
    h3, h5 = s.hybrid
    assert (h3.arm, h3.other) == (H3, R3) and h3.notes == ("below", "below")
    assert h3.diffs == pytest.approx([0.01, 0.03]) and h3.median == pytest.approx(0.02)
    assert h5.beats and h5.verdict == "ahead by more than the seed spread"
    # the hybrid at keep 0.5 ends furthest above the frontier
    assert s.best_reuse()[0] == H5


def test_targets_count_the_tasks_from_the_numbers() -> None:
    # loss reuse well ahead of chance on three tasks at keep 0.3, on none at keep 0.5; the
    # hybrid within the spread on every task but one
    chance = {"mnist1d": 0.06, "charlm": 0.06, "unsaturated": 0.06, "charlm_long": 0.0}
    hybrid = {"redundant": 0.05}
    summaries = {
        key: rt.summarise(
            BENCHES[key],
            [
                _seed(key, s, 0.90 + 0.04 * s, chance.get(key, 0.0), hybrid.get(key, 0.0))
                for s in (0, 1)
            ],
            FT,
        )
        for key in BENCHES
    }
    t03, t05, t_hybrid, t_gain = rt.targets(summaries)
    assert t03.met and t03.measured.startswith("3 (mnist1d, charlm, unsaturated)")
    assert not t05.met and t05.measured.startswith("0 (none)")  # 0.03: within the spread, 0.04
    assert not t_hybrid.met and t_hybrid.measured.startswith("1 (redundant)")
    # best arm: loss reuse at keep 0.3, 0.84 at 2 work units against the frontier's 0.80
    assert (
        t_gain.met
        and t_gain.measured == f"mnist1d: {R3} +4.00 points; unsaturated: {R3} +4.00 points"
    )
    assert rt.tasks_above({"x": [_paired(0.05)], "y": [_paired(0.0)]}) == ["x"]
    paragraph = rt.missed([t03, t05, t_hybrid, t_gain])
    assert paragraph.startswith("**Missed:**") and t05.name in paragraph
    assert t_hybrid.measured in paragraph and t03.name not in paragraph
    assert rt.missed([t03]) == "**Every target is met.**"


def _paired(median: float) -> rt.Paired:
    return rt.Paired("a", "b", 0.3, [median], 0.01)
