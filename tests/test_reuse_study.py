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

from benchmarks import reuse_study as rs
from benchmarks.demo import ConvNet
from benchmarks.frontier import BENCHES, PLAIN
from benchmarks.harness import RunResult


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
    assert (tmp_path / "reuse_study_clean.png").is_file()
    assert (tmp_path / "reuse_study_noisy.png").is_file()
    assert len(section.targets) == 1


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


def _result(
    name: str, epochs: int, final: float, trained: int, keep: float = math.nan
) -> RunResult:
    return RunResult(
        name,
        values=[final],
        trained=[trained],
        scored=[0],
        epoch_ends=[0.0] * epochs,
        planned_samples=epochs * 100,
        decided_keep=keep,
    )


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
