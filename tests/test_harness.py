"""Tests of the side-by-side training harness: curves, time to target, interleaving, same init."""

from __future__ import annotations

import dataclasses
import functools
import math
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

import smartsift as ss
from benchmarks.harness import (
    Reuse,
    RunResult,
    Task,
    TrainingRun,
    plot_runs,
    run_at_step_size,
    runs_figure,
    seeded,
    speedup_to_target,
    time_to_target,
    train_side_by_side,
)

N, FEATURES = 128, 6


def _data() -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, FEATURES, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())


def _loss_fn(model: torch.nn.Module, batch: list[torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _task(higher_is_better: bool = True) -> Task:
    data = _data()
    x, y = data.tensors

    def metric(model: torch.nn.Module) -> float:
        if higher_is_better:
            return float((model(x).argmax(1) == y).float().mean())
        return float(_loss_fn(model, [x, y]).mean())

    return Task(lambda: torch.nn.Linear(FEATURES, 2), data, _loss_fn, metric, higher_is_better)


def _run(name: str, task: Task, **kwargs: object) -> TrainingRun:
    settings: dict[str, object] = {"epochs": 2, "batch_size": 32, "lr": 0.1}
    return TrainingRun(name, task, **{**settings, **kwargs})  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- time to target
def test_time_to_target_higher_is_better() -> None:
    times, values = [1.0, 2.0, 3.0, 4.0], [0.2, 0.6, 0.5, 0.9]
    assert time_to_target(times, values, 0.6) == 2.0  # reaching it exactly counts
    assert time_to_target(times, values, 0.7) == 4.0  # the first time, not a dip after
    assert time_to_target(times, values, 0.95) == math.inf


def test_time_to_target_lower_is_better() -> None:
    times, values = [1.0, 2.0, 3.0], [3.0, 1.5, 2.0]
    assert time_to_target(times, values, 2.0, higher_is_better=False) == 2.0
    assert time_to_target(times, values, 1.5, higher_is_better=False) == 2.0
    assert time_to_target(times, values, 1.0, higher_is_better=False) == math.inf
    # The same curve read as higher-is-better reaches 2.0 at once.
    assert time_to_target(times, values, 2.0) == 1.0


def test_time_to_target_rejects_curves_of_different_lengths() -> None:
    with pytest.raises(ValueError, match="same length"):
        time_to_target([1.0, 2.0], [0.5], 0.4)


@pytest.mark.parametrize("higher", [True, False])
def test_target_and_speedup_follow_the_metric_direction(higher: bool) -> None:
    values = [0.5, 0.85, 0.9] if higher else [2.0, 1.05, 1.0]
    plain = RunResult("plain", higher, times=[1.0, 2.0, 3.0], values=values)
    target = plain.target(0.1)
    assert target == pytest.approx(0.8 if higher else 1.1)
    assert plain.time_to(target) == 2.0
    faster = RunResult("sifted", higher, times=[0.5, 1.0, 1.5], values=values)
    assert speedup_to_target(plain, faster, target) == pytest.approx(2.0)
    never = RunResult("sifted", higher, times=[1.0], values=[values[0]])
    assert speedup_to_target(plain, never, target) == 0.0


# ----------------------------------------------------------------------------- runs
def test_runs_of_one_seed_start_from_the_same_weights_and_leave_the_global_rng() -> None:
    task = _task()
    before = torch.random.get_rng_state()
    plain = _run("plain", task, seed=3)
    sifted = _run("sifted", task, seed=3, policy=ss.TopK(0.5))
    other = _run("other", task, seed=4)
    assert torch.equal(torch.random.get_rng_state(), before)
    for a, b in zip(plain.model.parameters(), sifted.model.parameters(), strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(plain.model.weight, other.model.weight)
    assert torch.equal(seeded(task.build_model, 3).weight, plain.model.weight)


def test_another_data_seed_keeps_the_weights_and_changes_only_the_order() -> None:
    task = _task()
    runs = [_run("plain", task, seed=3), _run("again", task, seed=3),
            _run("reordered", task, seed=3, data_seed=9)]  # fmt: skip
    orders = [[tuple(b[1].tolist()) for b in r.raw] for r in runs]
    assert orders[0] == orders[1] != orders[2]
    assert sorted(sum(orders[0], ())) == sorted(sum(orders[2], ()))  # the same samples
    assert all(torch.equal(runs[0].model.weight, r.model.weight) for r in runs)


def test_a_sifted_run_still_in_its_delay_trains_exactly_like_the_plain_run() -> None:
    # Same init, same data order: while every raw batch passes through the delay unsifted,
    # the two runs take the very same steps, so their curves are identical.
    task = _task()
    plain = _run("plain", task, seed=1)
    delayed = _run("sifted", task, seed=1, policy=ss.TopK(0.5), sift_delay=100)
    plain_result, delayed_result = train_side_by_side([plain, delayed])
    assert delayed_result.values == plain_result.values
    assert delayed_result.steps == plain_result.steps == 2 * N // 32
    assert delayed_result.keep_rate == 1.0


def test_runs_are_interleaved_one_evaluation_interval_at_a_time() -> None:
    task = _task()
    short = _run("short", task, epochs=1, evals_per_epoch=2)
    long = _run("long", task, epochs=2, evals_per_epoch=2)
    order: list[str] = []
    results = train_side_by_side([short, long], on_segment=lambda run: order.append(run.name))
    # 4 raw batches an epoch, an evaluation every 2 steps and at each epoch's end: 3 segments.
    assert order == ["short", "long"] * 3 + ["long"] * 3
    assert [r.name for r in results] == ["short", "long"]
    assert len(results[1].times) == len(results[1].values) == 6
    assert len(results[1].epoch_ends) == 2
    assert results[1].epoch_ends[-1] == results[1].times[-1] == results[1].train_seconds


def test_a_sifted_run_counts_its_work_and_keeps_the_metric_direction() -> None:
    task = _task(higher_is_better=False)
    (result,) = train_side_by_side([_run("sifted", task, policy=ss.TopK(0.5))])
    assert not result.higher_is_better
    assert result.samples_seen == 2 * N and result.samples_backpropagated == N
    assert result.keep_rate == 0.5 and result.steps == N // 32
    assert result.times == sorted(result.times) and all(math.isfinite(v) for v in result.values)
    assert result.time_to(result.target(0.0)) <= result.train_seconds


def test_evaluation_runs_without_gradients_in_eval_mode_and_restores_the_mode() -> None:
    seen: list[tuple[bool, bool]] = []

    def metric(model: torch.nn.Module) -> float:
        seen.append((torch.is_grad_enabled(), model.training))
        return 0.0

    task = Task(lambda: torch.nn.Linear(FEATURES, 2), _data(), _loss_fn, metric)
    run = _run("plain", task, epochs=1)
    while run.advance():
        assert run.model.training
    assert seen and set(seen) == {(False, False)}


def test_the_default_training_loss_is_the_mean_of_loss_fn() -> None:
    task = _task()
    x, y = _data().tensors
    model = task.build_model()
    assert torch.equal(task.step_loss()(model, [x, y]), _loss_fn(model, [x, y]).mean())


@pytest.mark.parametrize("arg", ["epochs", "batch_size"])
def test_bad_settings_are_refused(arg: str) -> None:
    with pytest.raises(ValueError, match=f"`{arg}`.*got 0"):
        _run("plain", _task(), **{arg: 0})


# ----------------------------------------------------------------------------- schedules
def _epoch_end_lrs(result: RunResult) -> list[float]:
    """The learning rate recorded at each epoch's end (where all of an epoch's data is seen)."""
    at = {seen: lr for lr, seen in zip(result.lrs, result.seen, strict=True) if seen % N == 0}
    return [at[seen] for seen in sorted(at)]


@pytest.mark.parametrize("schedule", ["cosine", "warmup_cosine"])
@pytest.mark.parametrize(
    ("policy", "delay", "raw"),
    [(ss.TopK(0.5), 0, 32), (ss.RelativeProbabilistic(beta=1.0, history=64), 4, 64)],
)
def test_every_run_s_schedule_ends_exactly_where_its_training_ends(
    schedule: str, policy: ss.Policy, delay: int, raw: int
) -> None:
    task = _task()
    plain = _run("plain", task, epochs=3, schedule=schedule)
    sifted = _run(
        "sifted", task, epochs=3, schedule=schedule, policy=policy, sift_delay=delay,
        batch_size=raw, refined_batch_size=32,
    )  # fmt: skip
    plain_result, sifted_result = train_side_by_side([plain, sifted])
    assert plain.total_steps == sifted.total_steps == 3 * N // 32
    assert sifted_result.steps < plain_result.steps == plain.total_steps
    assert plain.scheduler is not None and sifted.scheduler is not None
    assert plain.scheduler.last_epoch == sifted.scheduler.last_epoch == plain.total_steps
    # The schedule's end value: a cosine to 0.
    assert plain_result.final_lr == sifted_result.final_lr == 0.0
    # On the way, at every epoch's end, the sifted run is where the plain schedule is.
    assert _epoch_end_lrs(sifted_result) == pytest.approx(_epoch_end_lrs(plain_result))
    assert _epoch_end_lrs(plain_result)[0] > 0.0


def test_a_schedule_stepped_per_optimizer_step_leaves_a_sifted_run_unannealed() -> None:
    task = _task()
    plain = _run("plain", task, epochs=3, schedule="cosine")
    naive = _run("naive", task, epochs=3, schedule="cosine", policy=ss.TopK(0.5), follow_data=False)
    plain_result, naive_result = train_side_by_side([plain, naive])
    assert naive.data_schedule is None and plain_result.final_lr == 0.0
    # Half the steps: the cosine stopped half-way, at half the initial rate.
    assert naive_result.final_lr == pytest.approx(0.05)


def test_without_a_schedule_the_rate_is_constant_and_unknown_names_are_refused() -> None:
    (result,) = train_side_by_side([_run("plain", _task(), schedule=None)])
    assert set(result.lrs) == {0.1}
    with pytest.raises(ValueError, match=r"`schedule`.*'linear'"):
        _run("plain", _task(), schedule="linear")


def test_a_run_records_the_data_it_consumed_scored_and_trained_at_each_evaluation() -> None:
    task = _task()
    plain = _run("plain", task, epochs=2)
    sifted = _run("sifted", task, epochs=2, policy=ss.TopK(0.5), sift_delay=2)
    plain_result, sifted_result = train_side_by_side([plain, sifted])
    # An evaluation every 2 of the 4 steps of an epoch, and one at each epoch's end.
    assert plain_result.seen == plain_result.trained == [64, 128, 128, 192, 256, 256]
    assert set(plain_result.scored) == {0} and plain_result.progress[-1] == 1.0
    assert sifted_result.seen[-1] == 2 * N == sifted_result.planned_samples
    # The two delayed raw batches pass unscored; every other sample is scored.
    assert sifted_result.scored[-1] == 2 * N - 2 * 32
    assert (
        sifted_result.trained[-1] == sifted_result.samples_backpropagated == 64 + (2 * N - 64) // 2
    )
    assert sifted_result.seen == sorted(sifted_result.seen)


# ----------------------------------------------------------------------------- loss reuse
def test_a_reuse_run_trains_everything_first_then_skips_before_loading() -> None:
    task = _task(higher_is_better=False)  # the mean loss: any change in order shows
    plain = _run("plain", task, epochs=3, schedule="cosine")
    reuse = _run(
        "reuse", task, epochs=3, schedule="cosine",
        policy=ss.TopK(0.5), reuse=Reuse(max_age=None),
    )  # fmt: skip
    plain_result, result = train_side_by_side([plain, reuse])
    # Epoch 0 has no scores: all 128 trained; epochs 1 and 2 train the top half.
    assert result.samples_backpropagated == N + 2 * (N // 2)
    assert result.steps == 4 + 2 * 2 and plain_result.steps == 12
    assert result.scored == [0] * len(result.scored)  # no scoring pass
    assert result.decided_keep == 0.5
    # The same first data order as the plain run: epoch 0 trains the same batches, so its
    # evaluations (after 2 and 4 steps, and at its end) are identical.
    assert result.values[:3] == plain_result.values[:3]
    # The schedule follows the data: at each epoch's end where plain's is, and ends at 0.
    assert reuse.scheduler is not None and reuse.scheduler.last_epoch == plain.total_steps
    assert result.final_lr == plain_result.final_lr == 0.0
    assert _epoch_end_lrs(result) == pytest.approx(_epoch_end_lrs(plain_result))
    assert result.seen[-1] == result.planned_samples == 3 * N
    assert result.seen == sorted(result.seen)


def test_a_reuse_run_records_the_training_step_s_losses_and_rescales() -> None:
    task = _task()
    run = _run(
        "reuse", task, epochs=2, policy=ss.RelativeProbabilistic(beta=1.0, history=64),
        reuse=Reuse(rescale=True),
    )  # fmt: skip
    train_side_by_side([run])
    assert run.table is not None and run.sampler is not None
    # Every sample was trained in epoch 0, so every one has a recorded loss.
    assert bool(torch.isfinite(torch.from_numpy(run.table.losses)).all())
    weights = run.sampler.weights(torch.arange(N))
    assert float(weights.min()) >= 1.0 and float(weights.max()) > 1.0


def test_reuse_needs_a_policy() -> None:
    with pytest.raises(ValueError, match="`policy`"):
        _run("reuse", _task(), reuse=Reuse())


def test_a_policy_function_reads_the_run_s_own_model() -> None:
    """``Auto(validate=...)`` evaluates the model a run trains: a function of it builds it."""
    task, checked = _task(higher_is_better=False), []

    def held_out_auto(model: torch.nn.Module) -> ss.Auto:
        def validate() -> float:
            checked.append(model)
            return task.evaluate(model)

        return ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1, validate=validate)

    run = _run("auto", task, policy=held_out_auto, batch_size=16, epochs=3)
    train_side_by_side([run])
    assert checked and all(m is run.model for m in checked)
    assert isinstance(run.loader, ss.SiftingDataLoader)
    assert isinstance(run.loader.policy, ss.Auto)
    with pytest.raises(TypeError, match="`policy` function to return a smartsift Policy"):
        _run("bad", task, policy=lambda model: "TopK")
    with pytest.raises(TypeError, match="a function of the model returning one"):
        _run("bad", task, policy=0.5)


def test_the_default_optimizer_is_adamw_with_the_task_s_weight_decay() -> None:
    task = dataclasses.replace(_task(), weight_decay=0.05)
    run = _run("plain", task, lr=0.02)
    assert type(run.optimizer) is torch.optim.AdamW
    assert run.optimizer.param_groups[0]["lr"] == 0.02
    assert run.optimizer.param_groups[0]["weight_decay"] == 0.05


def test_a_run_trains_with_the_optimizer_its_factory_builds() -> None:
    task, built = _task(), []

    def sgd(params: Iterable[torch.nn.Parameter], lr: float) -> torch.optim.Optimizer:
        optimizer = torch.optim.SGD(params, lr, momentum=0.9)
        built.append(optimizer)
        return optimizer

    run = _run("sgd", task, optimizer=sgd, lr=0.05)
    assert run.optimizer is built[0] and run.optimizer.param_groups[0]["lr"] == 0.05
    assert [p for g in run.optimizer.param_groups for p in g["params"]] == list(
        run.model.parameters()
    )
    (result,) = train_side_by_side([run])
    assert len(built) == 2  # the run's own, and the untimed warm-up's on a copy of the model
    assert result.steps == 2 * N // 32 and result.final > 0.5
    # A torch optimizer class is a factory as it is.
    assert type(_run("plain", task, optimizer=torch.optim.SGD).optimizer) is torch.optim.SGD


def test_runs_at_one_step_size_read_raw_batches_only_when_they_sift() -> None:
    at_step = functools.partial(
        run_at_step_size, task=_task(), epochs=2, step_batch_size=16, raw_batch_size=32,
        sift_delay_epochs=1, lr=0.1,
    )  # fmt: skip
    plain = at_step("plain")
    sifted = at_step("sifted", policy=ss.TopK(0.5))
    reuse = at_step("reuse", policy=ss.TopK(0.5), reuse=Reuse())
    assert [r.raw.batch_size for r in (plain, sifted, reuse)] == [16, 32, 16]
    assert [r.step_batch_size for r in (plain, sifted, reuse)] == [16, 16, 16]
    assert isinstance(sifted.loader, ss.SiftingDataLoader)
    assert sifted.loader.sift_delay == N // 32  # one epoch of raw batches
    assert reuse.sampler is not None and plain.loader is plain.raw
    # The same weights and, for the plain and loss-reuse runs, the same first-epoch order.
    assert torch.equal(plain.model.weight, sifted.model.weight)
    assert [b[1].tolist() for b in plain.raw] == [b[2].tolist() for b in reuse.raw]


# ----------------------------------------------------------------------------- plots
def test_the_figure_shows_whole_curves_the_target_events_and_when_each_run_reached_it() -> None:
    plain = RunResult("plain", times=[1.0, 2.0, 3.0], values=[0.1, 0.8, 0.9])
    sifted = RunResult("sifted", times=[0.8, 1.6, 2.4], values=[0.2, 0.85, 0.88])
    never = RunResult("uniform", times=[1.0, 2.0], values=[0.3, 0.5])
    fig = runs_figure(
        [plain, sifted, never],
        target=0.85,
        target_label="target 85%",
        events=[(0.8, "sifting starts")],
        scale=100.0,
    )
    ax, near = fig.axes
    low, high = ax.get_ylim()
    assert low < 10.0 and high > 90.0  # nothing cropped: the start of every curve shows
    low, high = near.get_ylim()  # the second panel zooms in on the target
    assert low < 85.0 < high and high - low < 20.0
    labels = ax.get_legend().get_texts()
    assert [t.get_text() for t in labels] == [
        "plain: target reached at 3 s",
        "sifted: target reached at 1.6 s",
        "uniform: target never reached",
        "target 85%",
        "sifting starts",
    ]
    markers = [line for line in ax.get_lines() if line.get_marker() == "o"]
    assert sorted((float(m.get_xdata()[0]), float(m.get_ydata()[0])) for m in markers) == [
        (1.6, 85.0),
        (3.0, 90.0),
    ]


def test_plot_runs_writes_a_png_without_pyplot(tmp_path: Path) -> None:
    had_pyplot = "matplotlib.pyplot" in sys.modules
    result = RunResult("plain", False, times=[1.0, 2.0], values=[2.0, 1.0])
    path = plot_runs([result], tmp_path / "sub" / "curves.png", target=1.5)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if not had_pyplot:  # pyplot holds global state (the backend, open figures): not used
        assert "matplotlib.pyplot" not in sys.modules


def test_a_figure_of_many_runs_gives_each_its_own_colour_and_style() -> None:
    runs = [RunResult(f"run {i}", times=[1.0, 2.0], values=[0.1 * i, 0.2 * i]) for i in range(12)]
    fig = runs_figure(runs, styles={"run 3": {"linestyle": "--"}})
    lines = [line for line in fig.axes[0].get_lines() if line.get_label().startswith("run")]
    assert len(lines) == 12
    assert len({tuple(line.get_color()) for line in lines}) == 12
    assert [line.get_linestyle() for line in lines].count("--") == 1
    assert lines[3].get_linestyle() == "--"
