"""The selection study (``benchmarks/selection.py``) runs in its smoke setting.

It times nothing and asserts no speed: only that the section, its tables, its figures and its
verdicts are there, and that the measures and verdicts are computed as stated.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch.utils.data import TensorDataset

pytest.importorskip("mnist1d")

from _results import made_up_result as _result

import smartsift as ss
from benchmarks import selection as sel
from benchmarks.frontier import BENCHES, PLAIN


def test_smoke_run_reports_every_arm_of_both_tasks(tmp_path: Path) -> None:
    section = sel.run(smoke=True, img_dir=tmp_path)
    text = section.markdown()
    first, second = (BENCHES[k].title for k in sel.TASKS)
    assert f"### {first}" in text and f"### {second}" in text
    tasks = text.split(f"### {second}", 1)
    for part in (tasks[0], tasks[1].split("### Across tasks", 1)[0]):
        for arm in sel.ARMS:
            assert f"| {arm.name} |" in part
        assert "| plain | " in part
        for keep in sel.KEEPS:
            for kind in sel.CHOICES:
                assert f"| {keep:g} | `{kind}` |" in part
    across = text.split("### Across tasks", 1)[1]
    for kind in sel.CHOICES[1:]:
        assert f"| `{kind}` | on " in across
    assert "**Best overall:**" in across and "default" in across
    for arm in sel.arms_for(lossless=True):
        assert across.count(f"| `{arm.name}` |") == 2  # one row per task
    for key in sel.TASKS:
        assert (tmp_path / f"selection_{key}.png").is_file()
    names = [t.name for t in section.targets]
    assert len(names) == 4
    assert "keep 0.3" in names[0] and "keep 0.5" in names[1]
    assert first in names[2] and second in names[3]


def test_arms_build_the_stated_policies_and_sampler_settings() -> None:
    labels = torch.tensor([0, 1, 1, 2])
    by_name = {a.name: a for a in sel.ARMS}
    assert len(by_name) == len(sel.ARMS)  # names are unique
    for keep in sel.KEEPS:
        assert by_name[f"Uniform, keep={keep:g}"].policy(100) == ss.Uniform(keep=keep)
        assert by_name[f"TopK, keep={keep:g}"].policy(100) == ss.TopK(keep=keep)
        loss = by_name[f"loss, keep={keep:g}"]
        assert loss.policy(100) == ss.RelativeProbabilistic(keep=keep, history=100)
        assert loss.reuse(labels, 12).score == "loss" and loss.reuse(labels, 12).max_age == 3
        assert by_name[f"change, keep={keep:g}"].reuse(labels, 12).score == "change"
        score = by_name[f"class, keep={keep:g}"].reuse(labels, 12).score
        assert isinstance(score, ss.ClassNormalised) and score.labels.tolist() == [0, 1, 1, 2]
    info = by_name["InfoBatch(prune=0.7)"]
    assert info.policy(500) == ss.InfoBatch(prune=0.7, history=500)
    reuse = info.reuse(labels, 8)
    assert reuse.rescale and reuse.max_weight is None and reuse.max_age is None
    assert reuse.anneal == ss.InfoBatch.reuse_kwargs(epochs=8)["anneal"]
    annealed = by_name["RelativeProbabilistic(keep=0.4), anneal=0.1"].reuse(labels, 8)
    assert annealed.anneal == 0.1 and annealed.max_age == 3
    never = by_name["TopK, keep=0.4, max_age=None"]
    assert never.reuse(labels, 8).max_age is None and never.lossless
    assert never.policy(100) == ss.TopK(keep=0.4) and sel.NEVER_STALE_OF == "TopK, keep=0.4"
    assert by_name["change, keep=0.4"].reuse(labels, 8).score == "change"
    assert [a.lossless for a in sel.ARMS].count(True) == len(sel.arms_for(lossless=True)) == 6
    with pytest.raises(ValueError, match=r"`kind`.*'Random'"):
        sel.Arm("x", "Random", 0.3)
    with pytest.raises(ValueError, match="`keep`"):
        sel.Arm.choice("TopK", 0.0)


def test_train_labels_reads_the_training_set() -> None:
    data = TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1]))
    assert sel.train_labels(data).tolist() == [2, 0, 1]
    samples = [(torch.zeros(2), 4), (torch.zeros(2), 1)]
    assert sel.train_labels(samples).tolist() == [4, 1]


def test_pure_verdicts() -> None:
    assert sel.cross_task(2) == "on both tasks"
    assert sel.cross_task(1) == "on one" and sel.cross_task(0) == "on none"
    with pytest.raises(ValueError, match="`wins`"):
        sel.cross_task(3)
    assert sel.compare_word(0.005, 0.004) == "better"
    assert sel.compare_word(0.004, 0.004) == "within the spread"  # not more than the spread
    assert sel.compare_word(-0.005, 0.004) == "worse"
    assert sel.lossless_share(5.0, 12.0) == pytest.approx(5 / 12)
    with pytest.raises(ValueError, match="`plain_work`"):
        sel.lossless_share(5.0, 0.0)
    assert sel.is_lossless(0.5, -0.004, 0.004)  # at the edges: half the work, the spread
    assert not sel.is_lossless(0.51, 0.02, 0.004)  # better, but too much work
    assert not sel.is_lossless(0.4, -0.0041, 0.004)
    assert sel.best_choice({"loss": [0.01, 0.0], "TopK": [0.02, -0.0]}) == "TopK"
    assert sel.best_choice({"loss": [0.01], "TopK": [0.01]}) == "loss"  # ties: the first
    with pytest.raises(ValueError, match="at least one"):
        sel.best_choice({"loss": []})
    assert sel.in_spreads(0.006, 0.004) == pytest.approx(1.5)
    assert sel.in_spreads(-0.02, 0.0) == pytest.approx(-2.0)  # a single seed: in points


def _seed(key: str, seed: int, plain: float, finals: dict[str, float]) -> sel.SeedRuns:
    """Plain (4 epochs of 100 samples), a control of 2, and every arm at 3 work units, with
    each arm's matched plain run (3 epochs) at 0.87."""
    matched = "plain, 3/4 epochs, matched work"
    results = [
        _result(PLAIN, 4, plain, 400),
        _result("plain, 2/4 epochs (0.50x)", 2, 0.80, 200),
    ]
    results += [_result(a.name, 4, finals.get(a.name, 0.85), 300, keep=a.keep) for a in sel.ARMS]
    results.append(_result(matched, 3, 0.87, 300))
    return sel.SeedRuns(key, seed, results, {a.name: matched for a in sel.ARMS})


def test_measures_against_the_frontier_plain_and_the_matched_run() -> None:
    m = sel.measure_seed(_seed("mnist1d", 0, 0.90, {"loss, keep=0.3": 0.88}))
    # 3 work units: the frontier is halfway from (2, 0.80) to (4, 0.90)
    assert m["loss, keep=0.3"].work == 3.0 and m["loss, keep=0.3"].frontier == pytest.approx(0.85)
    assert m["loss, keep=0.3"].above == pytest.approx(0.03)
    assert m["loss, keep=0.3"].matched_final == 0.87 and m["loss, keep=0.3"].matched_work == 3.0
    assert math.isnan(m[PLAIN].matched_final) and m[PLAIN].above == 0.0
    seeds = [
        _seed("mnist1d", 0, 0.90, {"TopK, keep=0.3": 0.88, "Uniform, keep=0.3": 0.84}),
        _seed("mnist1d", 1, 0.91, {"TopK, keep=0.3": 0.87, "Uniform, keep=0.3": 0.85}),
    ]
    summary = sel.summarise(seeds)
    assert summary.spread == pytest.approx(0.01)
    assert summary.less("TopK, keep=0.3", "Uniform, keep=0.3") == pytest.approx([0.04, 0.02])
    table = sel.versus_table(summary)
    # TopK less Uniform: +4, +2 (median +3, better); less loss (0.85): +3, +2
    assert (
        "| 0.3 | `TopK` | +3.00 | +4.00, +2.00 | better | +2.50 | +3.00, +2.00 | better |" in table
    )
    candidates = sel.lossless_of(summary)
    assert [c.name for c in candidates] == [a.name for a in sel.arms_for(lossless=True)]
    # 3 of plain's 4 work units; 0.85 less 0.90 and 0.91
    assert candidates[0].share == 0.75 and candidates[0].difference == pytest.approx([-0.05, -0.06])
    assert not candidates[0].lossless


def test_targets_and_the_default_sentence_follow_the_numbers() -> None:
    wins = {"TopK, keep=0.3": 0.90, "Uniform, keep=0.3": 0.84, "loss, keep=0.3": 0.86}
    summaries = {
        key: sel.summarise([_seed(key, 0, 0.90, wins), _seed(key, 1, 0.91, wins)])
        for key in sel.TASKS
    }
    target = sel.chance_target(0.3, summaries)
    assert target.met and "`TopK` +6.00 points (spread 1.00 points)" in target.measured
    assert target.measured.endswith("met by `loss`, `TopK`")  # change: +1.00, not more
    assert not sel.chance_target(0.5, summaries).met  # every arm ends at 0.85 there
    table, won = sel.cross_task_table(summaries)
    assert won["TopK"] == [2, 0] and won["change"] == [0, 0]
    assert "| `TopK` | on both tasks (+4.00, +4.00) | on none (+0.00, +0.00) |" in table
    sentence = sel.default_sentence(summaries, won)
    assert "**Best overall:** `TopK`" in sentence
    assert (
        "`TopK` +3.00 spreads (+3.00 points)" in sentence
    )  # (6 + 0) / 2 seed spreads and "make `TopK` the default" in sentence
    candidates = sel.lossless_of(summaries["mnist1d"])
    missed = sel.lossless_target("mnist1d", candidates, summaries["mnist1d"].spread)
    assert not missed.met and missed.measured.startswith("none lossless: ")
    cheap = [sel.Lossless("cheap", 0.45, [-0.005, 0.0], 0.01), *candidates]
    met = sel.lossless_target("mnist1d", cheap, 0.01)
    assert met.met and met.measured.startswith("lossless: `cheap` 45 % of plain's work")


def test_best_lossless_candidate_and_its_sentence() -> None:
    slow = sel.Lossless("slow", 0.6, [0.0, 0.001], 0.004)
    lossy = sel.Lossless("lossy", 0.4, [-0.01, -0.02], 0.004)
    assert sel.best_candidate([lossy, slow]).name == "slow"  # nearest plain's final
    cheap = sel.Lossless("cheap", 0.45, [-0.002, 0.0], 0.004)
    cheaper = sel.Lossless("cheaper", 0.42, [-0.003, -0.004], 0.004)
    assert sel.best_candidate([slow, cheap, cheaper]).name == "cheaper"  # lossless, least work
    with pytest.raises(ValueError, match="at least one"):
        sel.best_candidate([])
    missed = sel.lossless_sentence("mnist1d", [lossy, slow], 0.004)
    assert "**no candidate is lossless**" in missed and "`slow` 60 % of plain's work" in missed
    met = sel.lossless_sentence("unsaturated", [slow, cheap, cheaper], 0.004)
    assert "lossless `cheap` 45 %" in met and "the least work: `cheaper`" in met
    assert sel.NEVER_STALE.max_age is None
    assert sel.NEVER_STALE_OF in {a.name for a in sel.arms_for(lossless=True)}
