"""The weighting benchmark (``benchmarks/weighting.py``): its smoke run and its pure parts.

It times nothing and asserts no speed: only that the section, its tables and its targets are
there, that the weightings bound what they say, and that the comparisons are computed as
stated.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

pytest.importorskip("mnist1d")

import smartsift as ss
from benchmarks import run as bench_run
from benchmarks import weighting as wt
from benchmarks.harness import Reuse, Task, train_side_by_side


def _rows(body: str) -> dict[tuple[str, str, str], list[str]]:
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| 0.") and len(cells) > 3:
            rows[(cells[0], cells[1], cells[2].strip("`"))] = cells
    return rows


def test_smoke_run_reports_every_weighting_of_both_tasks() -> None:
    section = wt.run(smoke=True)
    clean, noisy = section.body.split("### The same with", 1)
    for text in (clean, noisy):
        rows = _rows(text)
        assert len(rows) == len(wt.KEEPS) * len(wt.ANNEALS) * len(wt.WEIGHTINGS)
        for keep in wt.KEEPS:
            for anneal in wt.ANNEALS:
                base = rows[(f"{keep:g}", f"{anneal:g}", wt.OFF)]
                assert base[-1] == "(baseline)" and base[6] == "1"  # weights of 1
                bounded = rows[(f"{keep:g}", f"{anneal:g}", wt.DEFAULT)]
                assert float(bounded[6]) <= 1 / keep + 1e-9  # never above its bound
                assert bounded[-1] in ("yes", "**no**")
        # At keep 0.5, `cap 2` is `cap 1/keep`: one run, the same figures.
        assert rows[("0.5", "0", "cap 2")][3:] == rows[("0.5", "0", wt.DEFAULT)][3:]
    assert "**The default bound.**" in section.body
    assert len(section.targets) == 4
    for target in section.targets:
        assert isinstance(target.met, bool) and str(target) in section.markdown()


def test_the_benchmark_is_registered() -> None:
    assert "weighting" in bench_run.BENCHMARKS and "weighting" in bench_run.available()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cap": 2.0, "per_keep": 1.0}, r"one bound .* cap=2.0 and per_keep=1.0"),
        ({"cap": 0.5}, r"`cap` of weighting 'w' to be at least 1 .* got 0.5"),
        ({"per_keep": 0.0}, r"`per_keep` of weighting 'w' to be at least 1 .* got 0.0"),
        ({"rescale": False, "cap": 2.0}, r"rescale=False: a bound or normalise would do"),
    ],
)
def test_bad_weightings_are_refused(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        wt.Weighting("w", **kwargs)  # type: ignore[arg-type]


def test_each_weighting_gives_the_sampler_its_bound() -> None:
    w = wt.WEIGHTINGS
    assert w[wt.OFF].max_weight(0.3) is None and w[wt.UNBOUNDED].max_weight(0.3) is None
    assert w["cap 2"].max_weight(0.3) == 2.0
    assert w[wt.DEFAULT].max_weight(0.3) == pytest.approx(1 / 0.3)
    assert w["cap 2/keep"].max_weight(0.5) == 4.0
    assert w["normalised, cap 2"].max_weight(0.3) is None  # bounded in the step instead
    # Runs that would train alike are run once.
    assert w["cap 2"].signature(0.5) == w[wt.DEFAULT].signature(0.5)
    assert w["cap 2"].signature(0.3) != w[wt.DEFAULT].signature(0.3)
    assert w["normalised, cap 2"].signature(0.5) != w["cap 2"].signature(0.5)


def test_normalised_weights_have_a_mean_of_one_over_the_kept_then_the_cap() -> None:
    raw = np.array([1.0, 10.0, 2.0, 3.0, 1.0])
    kept = np.array([1, 2, 3])
    free = wt.normalised_weights(raw, kept, cap=None)
    assert free[kept].mean() == pytest.approx(1.0)
    assert free[[0, 4]].tolist() == [1.0, 1.0]  # passed samples keep 1
    capped = wt.normalised_weights(raw, kept, cap=2.0)
    assert capped[1] == 2.0 and capped[2] == pytest.approx(0.4) and capped.max() == 2.0
    assert wt.normalised_weights(raw, np.empty(0, dtype=np.int64), 2.0).tolist() == [1.0] * 5


def test_paired_differences_spread_and_safety() -> None:
    assert wt.paired_differences([0.90, 0.85], [0.91, 0.80]) == [-0.01, 0.05]
    with pytest.raises(ValueError, match="one baseline value per seed, but got 2 runs and 1"):
        wt.paired_differences([0.9, 0.8], [0.9])
    assert wt.seed_spread([0.92, 0.90, 0.95]) == pytest.approx(0.05)
    assert wt.seed_spread([0.9]) == 0.0
    assert wt.safe([-0.02, 0.01], 0.02) and not wt.safe([-0.021, 0.01], 0.02)
    assert not wt.safe([], 1.0)


def _outcomes(task: str, seed: int, plain: float, off: float, default: float) -> list[wt.Outcome]:
    def outcome(name: str, keep: float, anneal: float, final: float) -> wt.Outcome:
        return wt.Outcome(task, seed, name, keep, anneal, final, 5.0, keep, 1.0)

    out = [outcome(wt.PLAIN, math.nan, math.nan, plain)]
    for keep in wt.KEEPS:
        for anneal in wt.ANNEALS:
            for name in wt.WEIGHTINGS:
                out.append(outcome(name, keep, anneal, default if name == wt.DEFAULT else off))
    return out


def test_targets_compare_paired_seeds_against_the_plain_spread() -> None:
    # Plain spans 0.90-0.93 (spread 3 points); the default bound ends 2 points below no
    # rescaling in seed 0 and 1 point above in seed 1: within the spread.
    outcomes = [
        *_outcomes("clean", 0, 0.90, 0.88, 0.86),
        *_outcomes("clean", 1, 0.93, 0.89, 0.90),
        *_outcomes("noisy", 0, 0.80, 0.70, 0.60),
        *_outcomes("noisy", 1, 0.81, 0.72, 0.75),
    ]
    table = wt.cells(outcomes, "clean")
    cell = table[(0.3, 0.0, wt.DEFAULT)]
    assert cell.diffs == pytest.approx([-0.02, 0.01]) and cell.finals == [0.86, 0.90]
    assert table[(0.3, 0.0, wt.OFF)].diffs == [0.0, 0.0]
    assert wt.plain_spread(outcomes, "clean") == pytest.approx(0.03)
    assert wt.DEFAULT in wt.safe_weightings(table, 0.03)
    rescale_0, rescale_anneal, anneal, noisy = wt.targets(outcomes)
    assert rescale_0.met and rescale_anneal.met and anneal.met
    assert "keep 0.3: -2.0" in rescale_0.measured and "spread 3.0 points" in rescale_0.measured
    # Noisy: seed 0 ends 10 points lower, far beyond its spread of 1 point.
    assert not noisy.met and "-10.0" in noisy.measured


def _tiny_task() -> Task:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 6, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()

    def loss_fn(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
        return F.cross_entropy(model(batch[0]), batch[1], reduction="none")

    return Task(lambda: torch.nn.Linear(6, 2), TensorDataset(x, y), loss_fn, lambda m: 0.0)


@pytest.mark.parametrize(
    ("name", "bound"), [(wt.DEFAULT, 1 / 0.3), ("cap 2", 2.0), ("normalised, cap 2", 2.0)]
)
def test_a_weighted_run_trains_within_its_bound(name: str, bound: float) -> None:
    weighting = wt.WEIGHTINGS[name]
    run = wt.WeightedRun(
        name,
        _tiny_task(),
        epochs=4,
        batch_size=32,
        lr=0.05,
        policy=ss.RelativeProbabilistic(keep=0.3, history=128),
        reuse=Reuse(max_age=3, rescale=True),
        weighting=weighting,
        keep=0.3,
    )
    assert run.reuse_sampler.max_weight == weighting.max_weight(0.3)
    train_side_by_side([run])
    assert 1.0 < run.largest_weight <= bound + 1e-6
    assert run.result.decided_keep == pytest.approx(0.3, abs=0.1)


def test_a_weighted_run_needs_loss_reuse() -> None:
    with pytest.raises(ValueError, match="Expected a loss-reuse run for weighting 'cap 2'"):
        wt.WeightedRun(
            "cap 2",
            _tiny_task(),
            epochs=1,
            batch_size=32,
            lr=0.05,
            weighting=wt.WEIGHTINGS["cap 2"],
            keep=0.3,
        )
