"""The loss-reuse study (``benchmarks/reuse_study.py``) runs in its smoke setting.

It times nothing and asserts no speed: only that the section, its tables, its figures and its
verdicts are there, and that the measures are computed as stated.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mnist1d")

from _results import made_up_result as _result

import smartsift as ss
from benchmarks import reuse_study as rs
from benchmarks.demo import ConvNet
from benchmarks.frontier import BENCHES, PLAIN
from benchmarks.harness import Reuse


def test_smoke_run_reports_every_arm_of_both_tasks(tmp_path: Path) -> None:
    section = rs.run(smoke=True, img_dir=tmp_path)
    text = section.markdown()
    clean, noisy = text.split("### The same with", 1)
    for arm in rs.ARMS:
        assert f"| {arm.name} |" in clean
        assert (f"| {arm.name} |" in noisy) == (arm.name in rs.NOISY_ARMS)
    assert "| plain | " in noisy and "| 20.0 % |" in noisy  # plain trains on the set's share
    for question in ("Learnability vs loss", "Staleness", "Rescaling", "Annealing"):
        assert f"**{question}" in clean
    # Against chance: a row per keep on the clean task, the baseline's alone on the noisy one.
    for part, rows in (
        (clean, ("| 0.5 | `loss` / `Uniform` |", "| 0.3 | `keep=0.3` /")),
        (noisy, ("| 0.5 | `loss` / `Uniform` |",)),
    ):
        assert "**Against chance (Uniform at the same keep):**" in part
        assert "**Plain at the matched work:**" in part
        for row in rows:
            assert row in part
    assert "| 0.3 |" not in noisy
    # The Uniform arms hold their stated keep exactly as the loss-based ones do.
    uniform_row = next(r for r in clean.splitlines() if r.startswith("| Uniform |"))
    assert "(0.5): yes" in uniform_row
    assert (tmp_path / "reuse_study_clean.png").is_file()
    assert (tmp_path / "reuse_study_noisy.png").is_file()
    names = [t.name for t in section.targets]
    assert len(names) == 3 and "keep 0.3" in names[1] and "keep 0.5" in names[2]
    assert all("Uniform" in t.measured for t in section.targets[1:])


def test_reference_losses_leave_the_held_out_slice_without_a_reference() -> None:
    task, _ = rs.build_task("noisy", smoke=True)
    ref = rs.reference_losses(task, BENCHES["mnist1d"].smoke_setting, smoke=True)
    n = len(ref.losses)
    held = int(np.isnan(ref.losses).sum())
    assert held == round(rs.REF_SHARE * n) and np.isfinite(ref.losses).sum() == n - held
    width, epochs = rs.SMOKE_REF
    x = torch.zeros(40)
    ratio = rs.macs_per_sample(ConvNet(width), x) / rs.macs_per_sample(task.build_model(), x)
    assert 0 < ratio < 1
    samples = (epochs * held + rs.FORWARD_SHARE * (n - held)) / n
    assert ref.cost == pytest.approx(ratio * samples) and ref.cpu_seconds > 0
    assert 0.0 <= ref.accuracy <= 1.0


def test_macs_are_counted_layer_by_layer() -> None:
    # width 4: conv1 4x19 outputs x 5, conv2 4x10 x (4x3), conv3 4x5 x (4x3), head 20 x 10
    assert rs.macs_per_sample(ConvNet(4), torch.zeros(40)) == 380 + 480 + 240 + 200


def _seed(seed: int, plain_final: float, arm_final: float) -> rs.SeedRuns:
    stats = [
        {"epoch": 0, "annealing": False, "candidates": 100, "passed": 100, "stale": 0},
        {"epoch": 1, "annealing": False, "candidates": 100, "passed": 20, "stale": 10},
        {"epoch": 2, "annealing": False, "candidates": 100, "passed": 40, "stale": 30},
        {"epoch": 3, "annealing": True, "candidates": 100, "passed": 100, "stale": 0},
    ]
    return rs.SeedRuns(
        "clean",
        seed,
        [
            dataclasses.replace(_result(PLAIN, 4, plain_final, 400), train_seconds=8.0),
            _result("plain, 2/4 epochs (0.50x)", 2, 0.80, 200),
            _result(rs.BASE, 4, arm_final, 300, keep=0.5),
            _result("reducible", 4, arm_final, 200, keep=0.5),
        ],
        epoch_stats={rs.BASE: stats},
        reference_cost=0.5,
        reference_cpu=3.0,
    )


def test_measures_against_the_frontier_and_the_exploration_budget() -> None:
    m = rs.measure_seed(_seed(0, 0.90, 0.90))
    assert m[PLAIN].above == 0.0 and m[PLAIN].work == 4.0
    # 3 work units: the frontier is halfway from (2, 0.80) to (4, 0.90)
    assert m[rs.BASE].work == 3.0 and m[rs.BASE].above == pytest.approx(0.05)
    assert m["reducible"].work == 2.5  # charged its reference model
    # charged by CPU instead: 3 s of a plain epoch's 2 s, 1.5 work units: the frontier at 3.5
    assert rs.reference_epochs(_seed(0, 0.9, 0.9)) == 1.5
    assert m["reducible"].above_cpu_charge == pytest.approx(0.90 - 0.875)
    # epochs 1 and 2 decide; the first epoch and the annealing one are left out
    assert m[rs.BASE].undecided == pytest.approx(0.3) and m[rs.BASE].stale == pytest.approx(0.2)
    summary = rs.summarise([_seed(0, 0.90, 0.90), _seed(1, 0.92, 0.90)])
    assert summary.spread == pytest.approx(0.02)
    d, word = rs.compare(summary, "reducible")
    # the same final accuracy for less work: better by 0.025 (seed 0) and 0.03 (seed 1)
    assert d == pytest.approx(0.0275) and word == "better than"


def test_each_uniform_arm_has_one_loss_based_twin() -> None:
    pairs = [(a.name, u.name) for a, u in rs.uniform_pairs(rs.ARMS)]
    assert pairs == [(rs.BASE, "Uniform"), ("keep=0.3", "Uniform, keep=0.3")]
    for arm, twin in rs.uniform_pairs(rs.ARMS):
        assert arm.reuse == twin.reuse and arm.keep == twin.keep
        assert twin.policy() == ss.Uniform(keep=arm.keep)
        assert isinstance(arm.policy(), ss.RelativeProbabilistic)
        assert arm.policy().expected_keep == pytest.approx(arm.keep)
    # the noisy task runs the baseline's twin only
    assert [u.name for _, u in rs.uniform_pairs(rs.arms_for("noisy"))] == ["Uniform"]
    lonely = rs.Arm("Uniform, keep=0.2", Reuse(max_age=3), keep=0.2, uniform=True)
    with pytest.raises(ValueError, match=r"Uniform, keep=0\.2"):
        rs.uniform_pairs([*rs.ARMS, lonely])


def test_paired_differences_pair_seeds_and_skip_missing_ones() -> None:
    assert rs.paired_differences([0.5, 0.75, 1.0], [0.25, math.nan, 1.5]) == [0.25, -0.5]
    assert rs.paired_differences([], []) == []
    with pytest.raises(ValueError, match="same seeds"):
        rs.paired_differences([0.5, 0.75], [0.25])


def test_matched_work_plain_run_is_the_nearest_whole_epoch() -> None:
    assert rs.matched_epochs(6.86, 12) == 7  # the baseline at keep 0.5
    assert rs.matched_epochs(5.19, 12) == 5  # keep 0.3
    assert rs.matched_epochs(5.5, 12) == 6 and rs.matched_epochs(6.5, 12) == 7  # halves up
    assert rs.matched_epochs(0.2, 12) == 1 and rs.matched_epochs(13.0, 12) == 12
    for work, full in ((math.nan, 12), (-1.0, 12), (3.0, 0)):
        with pytest.raises(ValueError, match=r"`work`|`full`"):
            rs.matched_epochs(work, full)
    # a run of its own, unless plain or the control already trains that many epochs
    name, epochs = rs.matched_control(6.86, 12, [4, 6, 8])
    assert epochs == 7 and name.startswith(PLAIN + ",") and not rs.on_frontier(name)
    assert rs.matched_control(8.2, 12, [4, 6, 8]) == ("plain, 8/12 epochs (0.67x)", 8)
    assert rs.matched_control(11.6, 12, [4, 6, 8]) == (PLAIN, 12)
    assert rs.on_frontier(PLAIN) and rs.on_frontier("plain, 8/12 epochs (0.67x)")
    assert not rs.on_frontier("Uniform")


def _chance_seed(seed: int, plain_final: float, arm_final: float, twin_final: float) -> rs.SeedRuns:
    matched = "plain, 3/4 epochs, matched work"
    return rs.SeedRuns(
        "clean",
        seed,
        [
            _result(PLAIN, 4, plain_final, 400),
            _result("plain, 2/4 epochs (0.50x)", 2, 0.80, 200),
            _result(rs.BASE, 4, arm_final, 300, keep=0.5),
            _result("Uniform", 4, twin_final, 320, keep=0.5),
            _result(matched, 3, 0.87, 300),
        ],
        matched={rs.BASE: matched},
    )


def test_loss_based_arm_against_its_uniform_twin_and_the_matched_plain_run() -> None:
    m = rs.measure_seed(_chance_seed(0, 0.90, 0.88, 0.86))
    # the matched plain run is no point of the frontier: halfway from (2, 0.80) to (4, 0.90)
    assert m[rs.BASE].frontier == pytest.approx(0.85)
    assert m[rs.BASE].matched_final == 0.87 and m[rs.BASE].matched_work == 3.0
    assert math.isnan(m["Uniform"].matched_final)
    seeds = [_chance_seed(0, 0.90, 0.88, 0.86), _chance_seed(1, 0.91, 0.88, 0.88)]
    summary = rs.summarise(seeds)
    arm, twin = rs.uniform_pairs(rs.ARMS)[0]
    v = rs.versus_chance(summary, arm, twin)
    assert v.final == pytest.approx([0.02, 0.0]) and v.median == pytest.approx(0.01)
    # the twin's 3.2 work units put the frontier at 0.86 (seed 0) and 0.866 (seed 1), the
    # arm's 3 at 0.85 and 0.855: against the frontier the arm gains 0.01 more than above
    assert v.above == pytest.approx([0.03, 0.011])
    assert v.spread == pytest.approx(0.01) and not v.beats  # 0.01 is not more than 0.01
    table = rs.chance_table([v], summary)
    assert "| 0.5 | `loss` / `Uniform` |" in table and "+2.00, +0.00" in table
    matched = rs.matched_table([arm.name], summary)
    assert "| `loss` | 3.00 | 88.00 | 85.25 (85.00–85.50) | 3 | 87.00 | +1.00, +1.00 |" in matched
    text = " ".join(rs.chance_verdicts([v], summary))
    assert "was no different from chance" in text and "against plain for 3 epochs" in text
    lost = dataclasses.replace(v, final=[-0.02, -0.03])
    assert lost.verdict.startswith("lost to chance") and not lost.beats
    assert "| no: Uniform ahead |" in rs.chance_table([lost], summary)
    assert dataclasses.replace(v, final=[0.02, 0.03]).verdict.startswith("beat chance")
