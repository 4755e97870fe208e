"""The fine-tuning benchmark (``benchmarks/finetune.py``): its smoke run and its pure parts.

It times nothing and asserts no speed: that the section, a subsection per task with its
tables, figure, verdicts and targets, and the closing paragraph are there; that the variants,
the arms and the pretrained starting point are as stated; and that work units, the frontier,
the pairings and where the scoring pass paid are computed as stated.
"""

from __future__ import annotations

import dataclasses
import math
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("mnist1d")

from _results import made_up_result
from mnist1d.data import get_dataset_args, get_templates

import smartsift as ss
from benchmarks import finetune as ft
from benchmarks.harness import Reuse, RunResult


def test_smoke_run_reports_every_task_arm_pair_and_target(tmp_path: Path) -> None:
    section = ft.run(smoke=True, img_dir=tmp_path)
    text = section.markdown()
    tasks = text.split("### Fine-tuning on ")[1:]
    assert [t.split("\n", 1)[0] for t in tasks] == [s.label for s in ft.SHIFTS]
    for task_text in tasks:  # every task: every arm, every pair, its verdicts
        for arm in ft.arms(ft.SMOKE, n_train=240):
            assert f"| {arm.name} | {arm.mode} |" in task_text
        for arm, twin in ft.pairs(ft.arms(ft.SMOKE, n_train=240)):
            assert f"| `{arm.name}` less `{twin}` |" in task_text
        assert "The pretrained model starts at" in task_text
        assert "**The scoring pass:**" in task_text and "**Loss reuse:**" in task_text
        assert "**Against their controls" in task_text
    assert "on that variant's test set" in text and "**In all:**" in text
    closing = text.split("### Across the tasks")[1]
    assert all(f"On {s.label} (the pretrained model starts at" in closing for s in ft.SHIFTS)
    # every target, missed or met, in plain words in the body
    lines = [line for line in text.splitlines() if line.startswith("**Targets m")]
    assert sum(line.count(";") + 1 for line in lines) == len(section.targets)
    assert any(line.startswith("**Targets missed:**") for line in lines) == (
        not all(t.met for t in section.targets)
    )
    for task in ft.SHIFTS:
        assert (tmp_path / task.image).is_file() and f"(img/{task.image})" in text
    per_task = 2 + len(ft.KEEPS)
    assert len(section.targets) == len(ft.SHIFTS) * per_task
    for i, task in enumerate(ft.SHIFTS):
        names = [t.name for t in section.targets[i * per_task : (i + 1) * per_task]]
        assert all(task.label in n for n in names)
        assert "scoring pass against the train-less frontier" in names[0]
        assert "hybrid's scoring pass against loss reuse" in names[1]
        assert all(f"keep {k:g}" in n for k, n in zip(ft.KEEPS, names[2:], strict=True))


def test_saved_measurements_of_another_layout_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = tmp_path / "old.pkl"
    saved.write_bytes(pickle.dumps(([], ft.Costs(1.0, {}), 1.0)))  # one task's layout
    monkeypatch.setenv(ft.RESULTS_ENV, str(saved))
    with pytest.raises(ValueError, match=r"SMARTSIFT_FINETUNE_RESULTS=.*new one"):
        ft.run(smoke=True, img_dir=tmp_path)


# ----------------------------------------------------------------------------- the data
def test_the_pretraining_variant_is_mnist1d_s_default_and_the_strong_shift_differs() -> None:
    defaults = get_dataset_args().__dict__
    pre = ft.PRETRAIN.args(1000).__dict__
    assert {k: v for k, v in pre.items() if k != "num_samples"} == {
        k: v for k, v in defaults.items() if k != "num_samples"
    }
    shifted = ft.SHIFTED.args(1000).__dict__
    changed = {k for k in defaults if shifted[k] != defaults[k]}
    assert {"shear_scale", "max_translation", "corr_noise_scale", "iid_noise_scale"} <= changed
    assert ft.SHIFTED.seed != ft.PRETRAIN.seed and ft.SHIFTED.template_jitter > 0
    for name in ("shear_scale", "max_translation", "corr_noise_scale", "iid_noise_scale"):
        assert shifted[name] > defaults[name]  # more shear, translation and noise


def test_the_mild_shift_lies_between_the_defaults_and_the_strong_shift() -> None:
    defaults = get_dataset_args().__dict__
    mild, strong = ft.MILD.args(1000).__dict__, ft.SHIFTED.args(1000).__dict__
    changed = {k for k in defaults if mild[k] != defaults[k]} - {"num_samples", "seed"}
    assert {"shear_scale", "max_translation", "corr_noise_scale", "iid_noise_scale"} == changed
    for name in changed:  # a little more of each, less than the strong shift's
        assert defaults[name] < mild[name] < strong[name]
    assert ft.MILD.seed not in (ft.PRETRAIN.seed, ft.SHIFTED.seed)
    assert 0 < ft.MILD.template_jitter < ft.SHIFTED.template_jitter
    assert ft.MILD.template_seed != ft.SHIFTED.template_seed
    assert [s.variant for s in ft.SHIFTS] == [ft.SHIFTED, ft.MILD]
    assert ft.shift("mild").image == "finetune_mild.png"
    with pytest.raises(ValueError, match="'medium'"):
        ft.shift("medium")


def test_a_change_must_name_a_generation_argument() -> None:
    with pytest.raises(ValueError, match="shear"):
        ft.Variant(seed=0, changes=(("shears", 1.0),)).args(100)
    with pytest.raises(ValueError, match="'seed'"):
        ft.Variant(seed=0, changes=(("seed", 3),)).args(100)


def test_jittered_templates_are_seeded_and_start_at_zero() -> None:
    base = get_templates()["x"]
    assert np.array_equal(ft.jittered_templates(0.0, seed=5)["x"], base)
    a, b = ft.jittered_templates(0.4, seed=1)["x"], ft.jittered_templates(0.4, seed=1)["x"]
    assert np.array_equal(a, b) and not np.allclose(a, base)
    assert not np.allclose(a, ft.jittered_templates(0.4, seed=2)["x"])
    assert np.all(a[:, 0] == 0)
    # the jitter is relative to each template's spread
    moved = np.abs(np.diff(a - base, axis=1)).mean() / base.std(axis=1).mean()
    assert 0.1 < moved < 1.0
    with pytest.raises(ValueError, match="jitter"):
        ft.jittered_templates(-0.1, seed=0)


def test_make_variant_is_seeded_and_leaves_the_global_generators_alone() -> None:
    random.seed(3)
    np.random.seed(3)
    before = (random.random(), np.random.rand())
    random.seed(3)
    np.random.seed(3)
    (train, (x_test, y_test)) = ft.make_variant(ft.SHIFTED, 200)
    assert (random.random(), np.random.rand()) == before
    assert len(train) == 160 and x_test.shape == (40, 40) and y_test.dtype == torch.int64
    again, _ = ft.make_variant(ft.SHIFTED, 200)
    assert torch.equal(train.tensors[0], again.tensors[0])
    other, _ = ft.make_variant(ft.PRETRAIN, 200)
    assert not torch.allclose(train.tensors[0], other.tensors[0])


# ----------------------------------------------------------------------------- the arms
def test_the_arms_cover_every_mode_with_their_controls() -> None:
    arm_list = ft.arms(ft.FULL, n_train=12_000)
    names = [a.name for a in arm_list]
    assert len(names) == len(set(names))
    assert {a.mode for a in arm_list} == set(ft.MODES)
    plain = [a for a in arm_list if a.mode == "plain"]
    assert [a.epochs for a in plain] == [None, *ft.FULL.control_epochs]
    for arm, twin_name in ft.pairs(arm_list):
        twin = next(a for a in arm_list if a.name == twin_name)
        if arm.mode == "hybrid":  # loss reuse at the same keep: what the scoring pass adds
            assert twin.mode == "reuse" and twin.policy == arm.policy
            assert arm.reuse == Reuse(hybrid=True) and twin.sift_delay_epochs == 0
        else:  # a random control in the same mode, at the same keep and reuse settings
            assert twin.mode == arm.mode and twin.uniform and twin.reuse == arm.reuse
            assert twin.policy is not None and arm.policy is not None
            assert twin.policy.expected_keep == pytest.approx(arm.policy.expected_keep)
    reuse_twins = [twin for arm, twin in ft.pairs(arm_list) if arm.mode == "reuse"]
    assert reuse_twins == [f"reuse Uniform(keep={k:g})" for k in ft.KEEPS]
    info = next(a for a in arm_list if isinstance(a.policy, ss.InfoBatch))
    assert info.reuse == Reuse(rescale=True, max_weight=None, anneal=0.125, max_age=None)
    assert info.policy == ss.InfoBatch(prune=0.5, history=12_000)
    assert [a.scored_batch(ft.FULL) for a in arm_list if a.mode == "scoring"] == [128] * 3
    hybrid = [a for a in arm_list if a.mode == "hybrid"]
    assert [a.scored_batch(ft.FULL) for a in hybrid] == [64] * 4
    assert all(a.scored_batch(ft.FULL) is None for a in arm_list if a.mode in ("plain", "reuse"))
    # each keep with no sift delay and with one epoch's, told apart by name
    assert sorted((a.policy.keep, a.sift_delay_epochs) for a in hybrid) == [  # type: ignore[union-attr]
        (k, d) for k in ft.KEEPS for d in (0, 1)
    ]
    assert [a.name for a in hybrid if a.sift_delay_epochs] == [
        f"hybrid after 1 epoch RelativeProbabilistic(keep={k:g})" for k in ft.KEEPS
    ]
    assert all(a.sift_delay_epochs == 0 for a in arm_list if a.mode != "hybrid")


def test_an_arm_refuses_settings_its_mode_does_not_take() -> None:
    with pytest.raises(ValueError, match="mode"):
        ft.Arm("x", "sifted", ss.TopK(0.5))
    with pytest.raises(ValueError, match="policy"):
        ft.Arm("x", "scoring")
    with pytest.raises(ValueError, match="reuse"):
        ft.Arm("x", "scoring", ss.TopK(0.5), Reuse())
    with pytest.raises(ValueError, match="reuse"):
        ft.Arm("x", "reuse", ss.TopK(0.5))
    with pytest.raises(ValueError, match="sift_delay_epochs"):
        ft.Arm("x", "reuse", ss.TopK(0.5), Reuse(), sift_delay_epochs=1)
    with pytest.raises(ValueError, match="sift_delay_epochs"):
        ft.Arm("x", "hybrid", ss.TopK(0.5), Reuse(hybrid=True), sift_delay_epochs=-1)
    lonely = ft.Arm("x", "reuse", ss.TopK(0.5), Reuse(), twin="nobody")
    with pytest.raises(ValueError, match="nobody"):
        ft.pairs([lonely])
    with pytest.raises(ValueError, match="control"):
        dataclasses.replace(ft.SMOKE, control_epochs=(1, 3))


def test_every_arm_starts_from_the_pretrained_weights_and_steps_at_one_size() -> None:
    setting = ft.SMOKE
    data = ft.make_variant(ft.MILD, setting.samples)
    pretrained = ft.pretrain(0, smoke=True)
    assert 0.0 <= pretrained.accuracy_on(data, setting.width) <= 1.0
    task = ft.finetune_task(setting, data, pretrained)
    arm_list = ft.arms(setting, 240)
    runs = [ft._training_run(a, task, setting, seed=0) for a in arm_list]
    for run in runs:
        for key, value in run.model.state_dict().items():
            assert torch.equal(value, pretrained.state[key])
        assert run.step_batch_size == setting.batch_size
        assert run.raw.batch_size in (setting.batch_size, setting.raw_batch_size)
    scoring = [r for r, a in zip(runs, arm_list, strict=True) if a.mode == "scoring"]
    assert all(r.raw.batch_size == setting.raw_batch_size for r in scoring)
    hybrid = [(r, a) for r, a in zip(runs, arm_list, strict=True) if a.mode == "hybrid"]
    assert len(hybrid) == 4 and all(r.sampler is not None for r, _ in hybrid)
    one_epoch = math.ceil(len(data[0]) / setting.batch_size)  # the hybrid's loader batches
    for run, arm in [(r, None) for r in scoring] + hybrid:
        assert isinstance(run.loader, ss.SiftingDataLoader)
        delay = 0 if arm is None else arm.sift_delay_epochs
        assert run.loader.sift_delay == delay * one_epoch


# ----------------------------------------------------------------------------- analysis
def test_work_units_charge_the_scoring_passes() -> None:
    assert ft.work_units(300, 0, 100, 0.0) == 3.0
    assert ft.work_units(150, 300, 100, 0.2) == pytest.approx(2.1)
    costs = ft.Costs(100e-6, {32: 30e-6, 64: 20e-6})
    assert costs.f_over_t(64) == pytest.approx(0.2) and costs.f_over_t(None) == 0.0
    with pytest.raises(ValueError, match="n_train"):
        ft.work_units(1, 0, 0, 0.0)
    with pytest.raises(ValueError, match="f_over_t"):
        ft.work_units(1, 0, 1, math.nan)


def test_matched_plan_trains_only_runs_that_are_no_control() -> None:
    matched, extra = ft.matched_plan({"a": 2.2, "b": 4.6, "c": 5.1, "d": 5.9}, 6, [2, 3, 4])
    assert matched["a"] == "plain, 2/6 epochs (0.33x)" and matched["d"] == ft.PLAIN
    assert matched["b"] == matched["c"] == "plain, 5/6 epochs, matched work"
    assert extra == {"plain, 5/6 epochs, matched work": 5}


def _result(name: str, epochs: int, final: float, trained: int, scored: int = 0) -> RunResult:
    keep = math.nan if name.startswith(ft.PLAIN) else 0.5
    return made_up_result(name, epochs, final, trained, keep=keep, scored=scored)


def _seed(seed: int, plain: float, reuse: float, uniform: float) -> ft.SeedRuns:
    # SMOKE: 3 epochs, the control at 1 and 2; 100 training samples
    return ft.SeedRuns(
        seed,
        [
            _result(ft.PLAIN, 3, plain, 300),
            _result("plain, 1/3 epochs (0.33x)", 1, 0.70, 100),
            _result("plain, 2/3 epochs (0.67x)", 2, 0.78, 200),
            _result("reuse RelativeProbabilistic(keep=0.3)", 3, reuse, 150),
            _result("reuse Uniform(keep=0.3)", 3, uniform, 150),
            _result("scoring TopK(0.5)", 3, 0.79, 150, scored=300),
        ],
        matched={"reuse RelativeProbabilistic(keep=0.3)": "plain, 2/3 epochs (0.67x)"},
    )


def test_measures_against_the_frontier_and_the_random_control() -> None:
    arm_list = ft.arms(ft.SMOKE, 100)
    costs = ft.Costs(100e-6, {32: 10e-6, 64: 20e-6})  # F/T 0.2 at the raw batch of 64
    m = ft.measure_seed(_seed(0, 0.80, 0.78, 0.75), arm_list, ft.SMOKE, costs)
    reuse = m["reuse RelativeProbabilistic(keep=0.3)"]
    # 1.5 work units: halfway from (1, 0.70) to (2, 0.78)
    assert reuse.work == 1.5 and reuse.frontier == pytest.approx(0.74)
    assert reuse.above == pytest.approx(0.04)
    assert reuse.matched_epochs == 2 and reuse.matched_final == 0.78
    scoring = m["scoring TopK(0.5)"]  # charged its scoring passes: 1.5 + 3 x 0.2
    assert scoring.work == pytest.approx(2.1) and scoring.frontier == pytest.approx(0.782)
    seeds = [_seed(0, 0.80, 0.78, 0.75), _seed(1, 0.81, 0.80, 0.795), _seed(2, 0.805, 0.77, 0.77)]
    summary = ft.summarise(
        [ft.measure_seed(s, arm_list, ft.SMOKE, costs) for s in seeds], [0, 1, 2]
    )
    assert summary.spread == pytest.approx(0.01) and summary.seeds == [0, 1, 2]
    d = summary.paired("reuse RelativeProbabilistic(keep=0.3)", "reuse Uniform(keep=0.3)")
    assert d == pytest.approx([0.03, 0.005, 0.0])
    targets = ft.targets(summary, arm_list)
    # the scoring arm ends 0.008 above the frontier: within the 0.01 spread
    assert not targets[0].met and "scoring TopK(0.5)" in targets[0].measured
    assert [t.met for t in targets[1:]] == [False]  # keep 0.5 did not run here: no target
    assert "+0.50 points" in targets[1].measured  # median paired seed, not above the spread
    text = "\n".join(ft.verdicts(summary, arm_list))
    assert "**Beats training less:** `reuse RelativeProbabilistic(keep=0.3)`" in text
    assert "not above it by more than the seed spread" in text  # the scoring pass
    assert "+0.50 points (median paired seed; ahead in 2 of 3 seeds), within the spread" in text
    assert ft.target_sentences(targets) == [
        f"**Targets missed:** {targets[0].goal}; {targets[1].goal}."
    ]
    assert "keep 0.3" in targets[1].goal


def _hybrid_summary(hybrid_gain: float, spread: float = 0.01) -> ft.Summary:
    """A summary of one task's loss reuse and hybrid arms at keep 0.3 (three seeds)."""

    def rec(final: float, above: float, scored: float = 0.0) -> dict[str, list[float]]:
        return {"final": [final] * 3, "above": [above] * 3, "scored": [scored] * 3}

    reuse = "reuse RelativeProbabilistic(keep=0.3)"
    return ft.Summary(
        {
            ft.PLAIN: {"final": [0.92, 0.92 + spread, 0.925], "above": [0.0] * 3},
            reuse: rec(0.90, 0.002),
            ft.hybrid_name(0.3, 0): rec(0.90 + hybrid_gain, 0.002 + hybrid_gain, 1.5),
            ft.hybrid_name(0.3, 1): rec(0.90 - 0.003, -0.001, 0.5),
        },
        spread,
        [0, 1, 2],
    )


def test_the_hybrid_target_takes_its_best_pair_against_loss_reuse() -> None:
    arm_list = ft.arms(ft.FULL, 12_000)
    goals = ft.targets(_hybrid_summary(0.02), arm_list, "the mild shift")
    hybrid = [t for t in goals if "against loss reuse" in t.name]
    assert len(hybrid) == 1 and hybrid[0].met and "the mild shift" in hybrid[0].goal
    assert f"`{ft.hybrid_name(0.3, 0)}` less" in hybrid[0].measured
    assert "+2.00 points" in hybrid[0].measured
    behind = ft.targets(_hybrid_summary(-0.02), arm_list, "the mild shift")
    missed = next(t for t in behind if "against loss reuse" in t.name)
    assert not missed.met and f"`{ft.hybrid_name(0.3, 1)}` less" in missed.measured


def test_the_closing_paragraph_says_where_the_scoring_pass_paid() -> None:
    arm_list = ft.arms(ft.FULL, 12_000)
    seeds = [ft.SeedRuns(s, [], pre_shifted_accuracy=0.86) for s in (0, 1, 2)]
    paid = ft.paid("the mild shift", _hybrid_summary(0.02), seeds, arm_list)
    assert paid.start == 0.86 and paid.plain == pytest.approx(0.925)
    assert paid.paid_against_reuse == [ft.hybrid_name(0.3, 0)]
    assert paid.scored == {ft.hybrid_name(0.3, 0): 1.5, ft.hybrid_name(0.3, 1): 0.5}
    assert paid.first_epoch == {0.3: pytest.approx(0.023)}  # no delay less one epoch's
    assert paid.best_pass == (ft.hybrid_name(0.3, 0), pytest.approx(0.022))
    assert paid.paid_against_frontier
    lost = ft.paid("the strong shift", _hybrid_summary(-0.02), seeds, arm_list)
    assert lost.paid_against_reuse == [] and not lost.paid_against_frontier
    text = ft.closing([lost, paid])
    strong, mild, end = text.split("\n\n")
    assert strong.startswith("On the strong shift") and "it paid in no setting" in strong
    assert f"lost by more than the spread in `{ft.hybrid_name(0.3, 0)}`" in strong
    assert f"it paid in `{ft.hybrid_name(0.3, 0)}`" in mild
    assert "+2.30 points at keep 0.3" in mild
    assert f"`{ft.hybrid_name(0.3, 1)}` -0.30 points (scoring 0.50 training sets' worth)" in mild
    assert end == (
        "**In all:** the scoring pass beat loss reuse at the same keep by more than the seed "
        "spread on the mild shift; its best setting ended above the frontier by more than the "
        "seed spread on the mild shift, and further above it than loss reuse's best by more "
        "than the spread on the mild shift."
    )
    assert "on neither task" in ft.closing([lost])
