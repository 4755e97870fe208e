"""The frontier benchmark: does sifting beat simply training less?

Sifting saves compute per epoch; so does training fewer epochs. For each task, every seed
trains, from the same initial weights in the same data order, interleaved:

- ``plain``: the full budget of epochs;
- the train-less control: plain runs of about 0.35x, 0.5x and 0.7x the epochs, each with its
  own complete schedule;
- every policy at the full budget: the reference rule ``RelativeProbabilistic(beta=1)``,
  ``TopK(0.5)``, ``RelativeProbabilistic(beta=3)`` and ``QuantileThreshold(0.5)``, all with the
  same sift delay and history; ``Auto`` over the reference rule, from its training signals
  alone and also reading a held-out metric (validation data that is neither training nor test
  data, ``Task.validate``);
- loss reuse (:class:`smartsift.ReuseSampler`) at stated keeps of 0.5 and 0.3: no scoring
  pass; each epoch skips, before loading, samples whose loss recorded by their last training
  step says they are learnt (never-scored samples, and scores older than 3 epochs, are
  trained);
- then ``Uniform`` at the kept fraction the reference rule realised in that seed.

A task may run a subset of these arms (the char-LM's long regime does, to fit the time).

Every run takes optimizer steps of one size (the sifted runs' refined batches are the plain
runs' batches) and follows a cosine learning-rate schedule sized as for plain training; the
sifted runs step it through :class:`smartsift.DataSchedule`, so every schedule ends where its
run's training ends. The runs are :mod:`benchmarks.harness` runs.

Compute is counted two ways: CPU seconds of the process on one thread (evaluation excluded),
and work units, ``(samples scored * F/T + samples trained) / samples per plain epoch``, with
``F`` (one scoring pass per sample, at the raw batch size the sifted runs score) and ``T``
(one training step per sample, at the step batch size) measured on the task by
:func:`smartsift.profile`. Work units are what no busy machine can blur; CPU seconds include
everything the loader costs.

Reported per task: the time (both measures) each run needs to reach the plain run's final
metric within a stated tolerance; the fixed-epoch saving with the final-metric difference; and
the final metric against the train-less frontier at matched compute (the frontier
interpolates the control runs' end points, and the plain run's, linearly in compute). Medians
and ranges over seeds; the seed spread (the range of the plain run's final metric over seeds)
is stated beside every difference, and a run counts as above the frontier only when its median
gain over it exceeds that spread.

Run it from the repository root (``python -m benchmarks.frontier [--smoke] [--jobs N]``) or
call :func:`run`. Seeds of the tasks run in parallel worker processes (one thread each) when
``jobs`` is above 1; CPU seconds are per process, so they are not blurred by it. With the
environment variable ``SMARTSIFT_FRONTIER_RESULTS`` naming a file, the measurements are saved
there, and a later run with the file present renders the report from them without training.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import os
import pickle
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import ConcatDataset, DataLoader, TensorDataset

import smartsift as ss
from benchmarks import charlm
from benchmarks.common import (
    IMG_DIR,
    Section,
    Target,
    benchmark_main,
    fmt_spread,
    main_as_module,
    markdown_table,
    run_jobs,
)
from benchmarks.demo import DemoConfig, MnistData, make_mnist1d, mnist1d_task
from benchmarks.harness import (
    PolicyFactory,
    Reuse,
    RunResult,
    Task,
    TrainingRun,
    run_at_step_size,
    runs_figure,
    seeded,
    time_to_target,
    train_side_by_side,
)

__all__ = [
    "BENCHES",
    "Bench",
    "Setting",
    "frontier_at",
    "redundant_mnist1d",
    "run",
    "seed_runs",
    "work_curve",
]

SEEDS = (0, 1, 2)
FRACTIONS = (0.35, 0.5, 0.7)
PLAIN = "plain"
# Plain again from the same weights, reading the data in another order: how far the order
# alone moves the time to the target (not a point of the frontier).
REPLICATE = "plain, another data order"
REFERENCE = "RelativeProbabilistic(beta=1)"
UNIFORM = "Uniform (reference's keep)"
TARGET_REFERENCE = 1.5
TARGET_BEST = 2.0
TARGET_REUSE = 2.0
TARGET_AUTO, TARGET_AUTO_SHARE = 0.97, 0.9
KEEP_TOLERANCE = 0.02
REUSE_PREFIX = "Reuse: "
AUTO = "Auto(RelativeProbabilistic(beta=1))"
AUTO_HELD_OUT = "Auto(RelativeProbabilistic(beta=1), validate=held-out metric)"
RESULTS_ENV = "SMARTSIFT_FRONTIER_RESULTS"


def policies(history: int, task: Task | None = None) -> dict[str, ss.Policy | PolicyFactory]:
    """The policies every task runs at the full budget, the reference rule first.

    With a ``task`` that has a held-out ``validate`` metric, also ``Auto`` reading it: a
    function of each run's model, which the metric evaluates.
    """
    arms: dict[str, ss.Policy | PolicyFactory] = {
        REFERENCE: ss.RelativeProbabilistic(beta=1.0, history=history),
        "TopK(0.5)": ss.TopK(0.5),
        "RelativeProbabilistic(beta=3)": ss.RelativeProbabilistic(beta=3.0, history=history),
        "QuantileThreshold(0.5)": ss.QuantileThreshold(exclude=0.5, history=history),
        # Sifts only where its online signals say it pays; plain training elsewhere. Timed
        # (cost_ratio="measure"): the published figures were measured so.
        AUTO: ss.Auto(ss.RelativeProbabilistic(beta=1.0, history=history), cost_ratio="measure"),
        # A stated keep rate, held by adapting beta online.
        "RelativeProbabilistic(keep=0.5)": ss.RelativeProbabilistic(keep=0.5, history=history),
    }
    if task is not None and task.validate is not None:
        arms[AUTO_HELD_OUT] = functools.partial(_held_out_auto, history, task)
    return arms


def _held_out_auto(history: int, task: Task, model: torch.nn.Module) -> ss.Auto:
    """Auto that also reads the task's held-out metric of ``model`` (a picklable factory)."""
    assert task.validate is not None
    return ss.Auto(
        ss.RelativeProbabilistic(beta=1.0, history=history),
        cost_ratio="measure",
        validate=functools.partial(task.validate, model),
        higher_is_better=task.higher_is_better,
    )


def reuse_arms(history: int) -> dict[str, tuple[ss.Policy, Reuse]]:
    """The loss-reuse runs: a stated keep, decided from the training steps' own losses."""
    return {
        f"{REUSE_PREFIX}RelativeProbabilistic(keep={k})": (
            ss.RelativeProbabilistic(keep=k, history=history),
            Reuse(max_age=3),
        )
        for k in (0.5, 0.3)
    }


def stated_keep(name: str) -> float | None:
    """The keep an arm's name states (``keep=0.3``), if any.

    Example:
        >>> stated_keep("Reuse: RelativeProbabilistic(keep=0.3)"), stated_keep("TopK(0.5)")
        (0.3, None)
    """
    if "keep=" not in name:
        return None
    return float(name.split("keep=", 1)[1].split(")", 1)[0])


# ----------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class Setting:
    """How every run of a task trains: one step size, one schedule, one sift delay."""

    epochs: int
    batch_size: int  # every optimizer step: the plain batches, the sifted refined batches
    raw_batch_size: int  # the raw batches the sifted runs score
    lr: float
    delay_epochs: int
    history: int
    evals_per_epoch: int = 4
    schedule: str | None = "cosine"

    @classmethod
    def from_demo(cls, config: DemoConfig) -> Setting:
        """The demo's setting (``python -m benchmarks.demo``)."""
        return cls(
            epochs=config.epochs,
            batch_size=config.plain_batch_size,
            raw_batch_size=config.batch_size,
            lr=config.lr,
            delay_epochs=config.sift_delay_epochs,
            history=config.history,
            evals_per_epoch=config.evals_per_epoch,
            schedule=config.schedule,
        )

    def control_epochs(self) -> list[int]:
        """The train-less control's epoch budgets: about 0.35x, 0.5x and 0.7x, distinct."""
        budgets = {max(1, round(f * self.epochs)) for f in FRACTIONS}
        return sorted(e for e in budgets if e < self.epochs)

    def run(
        self,
        name: str,
        task: Task,
        seed: int,
        *,
        policy: ss.Policy | PolicyFactory | None = None,
        epochs: int | None = None,
        reuse: Reuse | None = None,
        data_seed: int | None = None,
    ) -> TrainingRun:
        """A plain run (of ``epochs``, default the full budget), a sifted or a loss-reuse one.

        A loss-reuse run reads batches of the step size: it skips samples before loading (see
        :func:`~benchmarks.harness.run_at_step_size`).
        """
        return run_at_step_size(
            name,
            task,
            epochs=epochs or self.epochs,
            step_batch_size=self.batch_size,
            raw_batch_size=self.raw_batch_size,
            sift_delay_epochs=self.delay_epochs,
            lr=self.lr,
            policy=policy,
            seed=seed,
            data_seed=data_seed,
            evals_per_epoch=self.evals_per_epoch,
            schedule=self.schedule,
            reuse=reuse,
            clock=time.process_time,
        )

    def describe(self) -> str:
        return (
            f"{self.epochs} epochs, AdamW lr {self.lr:g} with a {self.schedule} schedule "
            f"following the data; steps of {self.batch_size} samples (the sifted runs score raw "
            f"batches of {self.raw_batch_size} and refine them to {self.batch_size}); sift delay "
            f"{self.delay_epochs} epoch(s), history {self.history}"
        )


# ----------------------------------------------------------------------------- data and tasks
@functools.lru_cache(maxsize=2)
def _mnist(num_samples: int) -> MnistData:
    return make_mnist1d(num_samples)


VALIDATION_SEED, VALIDATION_SAMPLES, LM_HELD_OUT = 7, 1000, 8_000


@functools.lru_cache(maxsize=2)
def mnist1d_validation(smoke: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out MNIST-1D samples for ``Auto``'s ``validate``: drawn with another seed, so
    neither training nor test samples (1000; 200 in the smoke configuration)."""
    n = 200 if smoke else VALIDATION_SAMPLES
    train, _ = make_mnist1d(round(n / 0.8), seed=VALIDATION_SEED)
    x, y = train.tensors
    return x[:n], y[:n]


def subset_mnist1d(n_train: int, num_samples: int = 10_000) -> MnistData:
    """The first ``n_train`` training samples of MNIST-1D, with the whole test set."""
    (train, test) = _mnist(num_samples)
    x, y = train.tensors
    return TensorDataset(x[:n_train], y[:n_train]), test


def redundant_mnist1d(
    n_real: int,
    duplicate_share: float,
    prototypes_per_class: int = 3,
    noise: float = 0.1,
    num_samples: int = 10_000,
    seed: int = 0,
) -> MnistData:
    """MNIST-1D where a share of the training set is small-noise copies of a few prototypes.

    ``n_real`` distinct training samples, plus as many near-duplicates as make them
    ``duplicate_share`` of the whole: copies of ``prototypes_per_class`` other training samples
    of each class, each with Gaussian noise of ``noise`` times the data's standard deviation,
    shuffled in. The test set is MNIST-1D's, untouched: the copies teach little beyond
    themselves once learnt, as near-duplicates and easy samples in real data do.

    Example:
        >>> train, _ = redundant_mnist1d(60, 0.5, num_samples=400)
        >>> len(train)
        120
    """
    if not 0 <= duplicate_share < 1:
        raise ValueError(f"Expected `duplicate_share` in [0, 1), but got {duplicate_share!r}.")
    (train, test) = _mnist(num_samples)
    x, y = train.tensors
    g = torch.Generator().manual_seed(seed)
    rest_x, rest_y = x[n_real:], y[n_real:]
    picks = [(rest_y == c).nonzero().flatten()[:prototypes_per_class] for c in range(10)]
    proto_x, proto_y = rest_x[torch.cat(picks)], rest_y[torch.cat(picks)]
    n_dup = round(n_real * duplicate_share / (1 - duplicate_share))
    which = torch.randint(len(proto_x), (n_dup,), generator=g)
    copies = proto_x[which] + noise * x.std() * torch.randn(n_dup, x.shape[1], generator=g)
    xs, ys = torch.cat([x[:n_real], copies]), torch.cat([y[:n_real], proto_y[which]])
    order = torch.randperm(len(xs), generator=g)
    return TensorDataset(xs[order], ys[order]), test


@dataclass(frozen=True)
class Bench:
    """One task of the benchmark: how it is built, trained and judged."""

    key: str
    title: str
    about: str
    build: Callable[[bool], Task]
    setting: Setting
    smoke_setting: Setting
    tolerance: float
    metric: str
    scale: float = 100.0  # shown in points (accuracy) or as is (a loss)
    unit: str = "points"
    arms: tuple[str, ...] | None = None  # the sifted arms run (None: every one)
    uniform: bool = True  # whether the Uniform control runs

    def runs_arm(self, name: str) -> bool:
        return self.arms is None or name in self.arms

    def setting_for(self, smoke: bool) -> Setting:
        return self.smoke_setting if smoke else self.setting

    @property
    def higher_is_better(self) -> bool:
        """Accuracy (shown in points) rises; a loss (shown as is) falls."""
        return self.scale != 1.0


DEMO = DemoConfig()
SMOKE_SAMPLES = DemoConfig.smoke().num_samples
SMOKE_MNIST = Setting(2, 32, 64, 5e-3, 1, 100, evals_per_epoch=2)
LM_CORPUS, LM_CONTEXT, LM_MODEL = 80_000, 64, {"dim": 64, "layers": 2, "heads": 4}
LM_LONG_CORPUS, LM_LONG_EPOCHS = 30_000, 16
# The arms the language models run (fewer than the others, to fit the time).
LM_ARMS = (
    REFERENCE,
    AUTO,
    AUTO_HELD_OUT,
    f"{REUSE_PREFIX}RelativeProbabilistic(keep=0.5)",
    f"{REUSE_PREFIX}RelativeProbabilistic(keep=0.3)",
)


def _demo_task(smoke: bool) -> Task:
    config = DemoConfig.smoke() if smoke else DEMO
    return mnist1d_task(_mnist(config.num_samples), config.width, mnist1d_validation(smoke))


def _lm_task(smoke: bool, corpus: int = LM_CORPUS) -> Task:
    size, context = (4_000, 16) if smoke else (corpus, LM_CONTEXT)
    text, _ = charlm.corpus(size + LM_HELD_OUT)
    windows = charlm.make_windows(text[:size], context)
    n_val = max(8, len(windows) // 10)
    kwargs = {"dim": 16, "layers": 1, "heads": 2} if smoke else LM_MODEL
    # Auto's held-out metric reads the text after the corpus, not its validation tenth.
    held_out = charlm.make_windows(text[size:], context)
    return charlm.lm_task(windows[:-n_val], windows[-n_val:], kwargs, held_out)


def _lm_long_task(smoke: bool) -> Task:
    return _lm_task(smoke, LM_LONG_CORPUS)


NS_TRAIN, NS_WIDTH = 3000, 32
RED_REAL, RED_SHARE, RED_WIDTH = 2000, 0.75, 32


def _unsaturated_task(smoke: bool) -> Task:
    if smoke:
        return mnist1d_task(subset_mnist1d(300, SMOKE_SAMPLES), 8, mnist1d_validation(smoke))
    return mnist1d_task(subset_mnist1d(NS_TRAIN), NS_WIDTH, mnist1d_validation(smoke))


def _redundant_task(smoke: bool) -> Task:
    validation = mnist1d_validation(smoke)
    if smoke:
        data = redundant_mnist1d(100, RED_SHARE, num_samples=SMOKE_SAMPLES)
        return mnist1d_task(data, 8, validation)
    return mnist1d_task(redundant_mnist1d(RED_REAL, RED_SHARE), RED_WIDTH, validation)


BENCHES: dict[str, Bench] = {
    b.key: b
    for b in (
        Bench(
            "mnist1d",
            "MNIST-1D, the demo's setting",
            f"MNIST-1D {DEMO.num_samples} samples (80% for training), the demo's ConvNet of "
            f"width {DEMO.width}; metric: test accuracy.",
            _demo_task,
            Setting.from_demo(DEMO),
            SMOKE_MNIST,
            tolerance=DEMO.tolerance,
            metric="test accuracy (%)",
        ),
        Bench(
            "charlm",
            "Character-level transformer language model",
            f"A byte-level transformer ({LM_MODEL['layers']} layers, width {LM_MODEL['dim']}, "
            f"{LM_MODEL['heads']} heads) over the first {LM_CORPUS // 1000} KB of the Python "
            f"standard library's source, windows of {LM_CONTEXT + 1} bytes, the last tenth "
            "held out; the short regime: a few epochs over a small corpus, where the model "
            "still needs all of its data; metric: validation loss (nats per byte, lower is "
            "better). TopK, beta=3 and QuantileThreshold do not run here, to fit the time (in "
            "earlier runs, like every fixed policy, none reached plain's final loss).",
            _lm_task,
            Setting(6, 32, 64, 2e-3, 1, 1000, evals_per_epoch=4),
            Setting(2, 16, 32, 2e-3, 1, 100, evals_per_epoch=2),
            tolerance=0.02,
            metric="validation loss (nats per byte)",
            scale=1.0,
            unit="nats",
            arms=(*LM_ARMS[:3], "RelativeProbabilistic(keep=0.5)", *LM_ARMS[3:]),
        ),
        Bench(
            "charlm_long",
            "Character-level language model, long regime",
            f"The same transformer over a smaller corpus, the first {LM_LONG_CORPUS // 1000} KB "
            f"of the same source, for {LM_LONG_EPOCHS} epochs: every window is seen many times, "
            "so the model learns its easy windows long before training ends; metric: "
            "validation loss (nats per byte). Only the reference rule, Auto and loss reuse run "
            "here, and no Uniform control, to fit the time.",
            _lm_long_task,
            Setting(LM_LONG_EPOCHS, 32, 64, 2e-3, 1, 1000, evals_per_epoch=2),
            Setting(3, 16, 32, 2e-3, 1, 100, evals_per_epoch=2),
            tolerance=0.02,
            metric="validation loss (nats per byte)",
            scale=1.0,
            unit="nats",
            arms=LM_ARMS,
            uniform=False,
        ),
        Bench(
            "unsaturated",
            "A task that keeps improving with training",
            f"MNIST-1D with only {NS_TRAIN} training samples (the whole test set of 2000), a "
            f"narrow ConvNet (width {NS_WIDTH}) and many epochs: chosen so that plain accuracy "
            "still rises between half and all of the budget (shown below); metric: test "
            "accuracy.",
            _unsaturated_task,
            Setting(30, 64, 128, 5e-3, 1, 1000, evals_per_epoch=2),
            SMOKE_MNIST,
            tolerance=0.005,
            metric="test accuracy (%)",
        ),
        Bench(
            "redundant",
            "A task with the redundancy of real data",
            f"MNIST-1D with {RED_REAL} distinct training samples and, making up "
            f"{RED_SHARE:.0%} of the training set, small-noise copies of 3 prototypes per "
            f"class (noise 0.1 of the data's standard deviation): near-duplicates that every "
            f"plain epoch spends compute on long after they are learnt. ConvNet of width "
            f"{RED_WIDTH}; metric: test accuracy on MNIST-1D's own test set.",
            _redundant_task,
            Setting(20, 32, 64, 5e-3, 1, 1000, evals_per_epoch=2),
            SMOKE_MNIST,
            tolerance=0.005,
            metric="test accuracy (%)",
        ),
    )
}


# ----------------------------------------------------------------------------- running
@dataclass
class SeedRuns:
    """One seed of one task: every run's result, in order, and Uniform's kept fraction."""

    seed: int
    results: list[RunResult]
    uniform_keep: float

    def by_name(self) -> dict[str, RunResult]:
        return {r.name: r for r in self.results}


def is_frontier_point(name: str) -> bool:
    """The plain run and the train-less control's runs (not the reordered replicate)."""
    return name == PLAIN or (name.startswith("plain,") and name != REPLICATE)


def control_name(epochs: int, full: int) -> str:
    return f"plain, {epochs}/{full} epochs ({epochs / full:.2f}x)"


def seed_runs(key: str, seed: int, smoke: bool) -> SeedRuns:
    """Every run of one task for one seed: plain, the control, the policies, then Uniform."""
    torch.set_num_threads(1)
    bench = BENCHES[key]
    task, setting = bench.build(smoke), bench.setting_for(smoke)
    runs = [setting.run(PLAIN, task, seed)]
    runs.append(setting.run(REPLICATE, task, seed, data_seed=seed + 1000))
    runs += [
        setting.run(control_name(e, setting.epochs), task, seed, epochs=e)
        for e in setting.control_epochs()
    ]
    sifted = [
        setting.run(n, task, seed, policy=p)
        for n, p in policies(setting.history, task).items()
        if bench.runs_arm(n)
    ]
    sifted += [
        setting.run(n, task, seed, policy=p, reuse=r)
        for n, (p, r) in reuse_arms(setting.history).items()
        if bench.runs_arm(n)
    ]
    results = train_side_by_side(runs + sifted)
    keep = sifted[0].result.decided_keep
    keep = 0.5 if math.isnan(keep) else keep
    if bench.uniform:
        uniform = setting.run(UNIFORM, task, seed, policy=ss.Uniform(keep))
        results += train_side_by_side([uniform])
    return SeedRuns(seed, results, keep)


@dataclass(frozen=True)
class Costs:
    """F and T per sample on a task, from the profiler, and what it advises."""

    scoring_s: float
    step_s: float
    advice: str

    @property
    def f_over_t(self) -> float:
        return self.scoring_s / self.step_s


def measure_costs(key: str, smoke: bool, repeats: int = 3) -> Costs:
    """F (scoring, at the raw batch size) and T (training step, at the step size) per sample.

    The median over ``repeats`` profiles of each, on the task's model as built for seed 0.
    """
    torch.set_num_threads(1)
    bench = BENCHES[key]
    task, setting = bench.build(smoke), bench.setting_for(smoke)
    model = seeded(task.build_model, 0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr)
    steps, warmup = (3, 1) if smoke else (25, 5)
    reports: dict[int, list[ss.ProfileReport]] = {}
    for bs in (setting.raw_batch_size, setting.batch_size):
        # A small training set is repeated, so that every profile measures all its steps.
        n = len(task.train_set)  # type: ignore[arg-type]
        data: ConcatDataset[Any] = ConcatDataset(
            [task.train_set] * math.ceil((steps + warmup + 1) * bs / n)
        )
        loader = DataLoader(
            data, batch_size=bs, shuffle=True, generator=torch.Generator().manual_seed(0)
        )
        reports[bs] = [
            ss.profile(
                model,
                loader,
                task.loss_fn,
                optimizer,
                steps=steps,
                warmup=warmup,
                train_step=task.step_loss(),
            )
            for _ in range(1 if smoke else repeats)
        ]
    f = statistics.median(r.scoring_s for r in reports[setting.raw_batch_size])
    t = statistics.median(r.step_s for r in reports[setting.batch_size])
    at_step = reports[setting.batch_size][0]
    advice = (
        f"The profiler (`ss.profile` at the step size, fresh model) says "
        f"{'sift' if at_step.recommended else 'do not sift'}: "
        f"{at_step.predicted_speedup(0.5):.2f}x per epoch predicted at keep 0.5, break-even "
        f"keep {at_step.break_even_keep:.2f}."
    )
    return Costs(f, t, advice)


def _job(args: tuple[str, int, bool]) -> tuple[str, SeedRuns]:
    key, seed, smoke = args
    return key, seed_runs(key, seed, smoke)


def run_all(
    keys: Sequence[str], seeds: Sequence[int], smoke: bool, jobs: int
) -> dict[str, list[SeedRuns]]:
    """Every seed of every task, in ``jobs`` worker processes (1: in this process)."""
    work = [(k, s, smoke) for k in keys for s in seeds]
    out: dict[str, list[SeedRuns]] = {k: [] for k in keys}
    for key, runs in run_jobs(
        _job, work, jobs, done=lambda r: f"[frontier] {r[0]}, seed {r[1].seed} done"
    ):
        out[key].append(runs)
    for task_runs in out.values():
        task_runs.sort(key=lambda r: r.seed)
    return out


# ----------------------------------------------------------------------------- analysis
def work_curve(result: RunResult, f_over_t: float, samples_per_epoch: int) -> list[float]:
    """Work units at each evaluation: (scored * F/T + trained) / samples per plain epoch.

    Example:
        >>> r = RunResult("sifted", scored=[0, 100], trained=[100, 150])
        >>> work_curve(r, 0.4, 100)
        [1.0, 1.9]
    """
    return [
        (s * f_over_t + t) / samples_per_epoch
        for s, t in zip(result.scored, result.trained, strict=True)
    ]


def frontier_at(points: Sequence[tuple[float, float]], x: float) -> float:
    """The frontier's metric at compute ``x``: linear between the end points ``(compute, metric)``.

    NaN below the cheapest point; beyond the most expensive one, that point's metric.

    Example:
        >>> pts = [(4.0, 0.90), (6.0, 0.94), (12.0, 0.97)]
        >>> round(frontier_at(pts, 5.0), 3), frontier_at(pts, 14.0), frontier_at(pts, 3.0)
        (0.92, 0.97, nan)
    """
    pts = sorted(points)
    if not pts or x < pts[0][0]:
        return math.nan
    for (x0, y0), (x1, y1) in itertools.pairwise(pts):
        if x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return pts[-1][1]


@dataclass
class Measures:
    """One run of one seed, measured against that seed's plain run and control."""

    final: float
    gain: float  # final minus plain's final, in the better direction
    cpu: float
    work: float
    cpu_to_target: float
    work_to_target: float
    keep: float
    above_work: float  # final minus the frontier's metric at this run's work, better direction
    above_cpu: float
    dominates: float  # 1.0: better than a control (or plain) run that used at least its work


def beats_outright(
    points: Sequence[tuple[float, float]], work: float, final: float, sign: float
) -> bool:
    """Whether ``final`` beats some end point ``(work, metric)`` that used at least ``work``.

    No interpolation: a run that ends better than a plain run given more compute beats
    training less outright, whatever shape the frontier has between its points.

    Example:
        >>> pts = [(4.0, 0.90), (6.0, 0.94), (12.0, 0.97)]
        >>> beats_outright(pts, 5.2, 0.95, 1.0), beats_outright(pts, 5.2, 0.93, 1.0)
        (True, False)
    """
    return any(w >= work and sign * (final - m) > 0 for w, m in points)


def measure_seed(bench: Bench, seed: SeedRuns, costs: Costs, n: int) -> dict[str, Measures]:
    """Every run of one seed measured against the plain run and the frontier."""
    runs = seed.by_name()
    plain = runs[PLAIN]
    sign = 1.0 if plain.higher_is_better else -1.0
    target = plain.target(bench.tolerance)
    ft = costs.f_over_t
    frontier = [r for name, r in runs.items() if is_frontier_point(name)]
    work_pts = [(work_curve(r, ft, n)[-1], r.final) for r in frontier]
    cpu_pts = [(r.train_seconds, r.final) for r in frontier]
    out = {}
    for name, r in runs.items():
        work = work_curve(r, ft, n)
        keep = r.decided_keep if not math.isnan(r.decided_keep) else 1.0
        out[name] = Measures(
            final=r.final,
            gain=sign * (r.final - plain.final),
            cpu=r.train_seconds,
            work=work[-1],
            cpu_to_target=r.time_to(target),
            work_to_target=time_to_target(work, r.values, target, r.higher_is_better),
            keep=keep,
            above_work=sign * (r.final - frontier_at(work_pts, work[-1])),
            above_cpu=sign * (r.final - frontier_at(cpu_pts, r.train_seconds)),
            dominates=float(beats_outright(work_pts, work[-1], r.final, sign)),
        )
    return out


def _ratio(a: float, b: float) -> float:
    """``a / b`` for times to target: 0 when ``b`` never reached it."""
    return a / b if 0 < b < math.inf and math.isfinite(a) else 0.0


def _spread(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return max(finite) - min(finite) if len(finite) > 1 else 0.0


def _median(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(statistics.median(finite)) if finite else math.nan


@dataclass
class TaskSummary:
    """Each run's measures over seeds (run name, then measure), and the seed spread."""

    per: dict[str, dict[str, list[float]]]
    spread: float

    def median(self, name: str, key: str) -> float:
        return _median(self.per[name][key])

    @property
    def names(self) -> list[str]:
        return list(self.per)

    def policies(self) -> list[str]:
        """The loss-based policies' runs (neither plain nor the Uniform control)."""
        return [n for n in self.per if not n.startswith(PLAIN) and n != UNIFORM]


def summarise(bench: Bench, seeds: Sequence[SeedRuns], costs: Costs) -> TaskSummary:
    """Every run's measures over the seeds, with speedups and savings against plain."""
    per: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        plain = seed.by_name()[PLAIN]
        n = plain.planned_samples // max(1, len(plain.epoch_ends))
        measures = measure_seed(bench, seed, costs, n)
        base = measures[PLAIN]
        for name, m in measures.items():
            values = {
                **dataclasses.asdict(m),
                "speedup_cpu": _ratio(base.cpu_to_target, m.cpu_to_target),
                "speedup_work": _ratio(base.work_to_target, m.work_to_target),
                "saving_cpu": 1.0 - m.cpu / base.cpu,
                "saving_work": 1.0 - m.work / base.work,
                "reached": float(math.isfinite(m.cpu_to_target)),
            }
            rec = per.setdefault(name, {})
            for key, value in values.items():
                rec.setdefault(key, []).append(value)
    return TaskSummary(per, _spread(per[PLAIN]["final"]))


def _x(values: Sequence[float]) -> str:
    return fmt_spread(values, "{:.2f}", "x")


def _pct(values: Sequence[float]) -> str:
    return fmt_spread([100 * v for v in values], "{:.0f}", "%")


def _metric(bench: Bench, values: Sequence[float], signed: bool = False) -> str:
    scaled = [bench.scale * v + 0.0 for v in values]  # + 0.0: no "-0.000"
    fmt = (
        ("{:+.2f}" if signed else "{:.2f}")
        if bench.higher_is_better
        else ("{:+.3f}" if signed else "{:.3f}")
    )
    return fmt_spread(scaled, fmt)


def _amount(bench: Bench, value: float, signed: bool = True) -> str:
    """A metric difference with its unit: ``+0.40 points`` or ``-0.012 nats``."""
    v = bench.scale * value
    fmt = "{:+.2f}" if bench.higher_is_better else "{:+.3f}"
    text = (fmt if signed else fmt.replace("+", "")).format(v + 0.0)
    return f"{text} {bench.unit}"


def time_table(bench: Bench, summary: TaskSummary) -> str:
    """Time to the plain run's final metric within the tolerance, both measures."""
    rows = []
    for name in summary.names:
        rec = summary.per[name]
        reached = int(sum(rec["reached"]))
        rows.append(
            [
                name,
                _pct(rec["keep"]),
                fmt_spread(rec["cpu_to_target"], "{:.3g}"),
                _x(rec["speedup_cpu"]),
                fmt_spread(rec["work_to_target"], "{:.2f}"),
                _x(rec["speedup_work"]),
                f"{reached}/{len(rec['reached'])}",
            ]
        )
    return markdown_table(
        [
            "run",
            "kept (of decided)",
            "CPU s to target",
            "speedup (CPU s)",
            "work units to target",
            "speedup (work)",
            "seeds reaching it",
        ],
        rows,
    )


def budget_table(bench: Bench, summary: TaskSummary) -> str:
    """The fixed-epoch saving, the final metric, and the gain over the frontier."""
    spread = _amount(bench, summary.spread, signed=False)
    rows = []
    for name in summary.names:
        rec = summary.per[name]
        above = _median(rec["above_work"])
        verdict = (
            "(on it)"
            if is_frontier_point(name)
            else "(a replicate)"
            if name == REPLICATE
            else "n/a (cheaper than the cheapest control)"
            if math.isnan(above)
            else "**yes**"
            if above > summary.spread
            else "no"
        )
        on_it = name.startswith(PLAIN)
        rows.append(
            [
                name,
                _metric(bench, rec["final"]),
                _metric(bench, rec["gain"], signed=True),
                fmt_spread(rec["work"], "{:.2f}"),
                f"{_pct(rec['saving_cpu'])} / {_pct(rec['saving_work'])}",
                _metric(bench, rec["above_work"], signed=True),
                _metric(bench, rec["above_cpu"], signed=True),
                verdict,
                "" if on_it else f"{int(sum(rec['dominates']))}/{len(rec['dominates'])}",
            ]
        )
    return markdown_table(
        [
            "run",
            f"final {bench.metric}",
            f"better than plain by (seed spread {spread})",
            "work units used",
            "saving vs plain (CPU s / work)",
            f"above the frontier at its work (spread {spread})",
            f"above the frontier at its CPU s (spread {spread})",
            "above by more than the spread?",
            "seeds better than a plain run given more work",
        ],
        rows,
    )


def frontier_figure(bench: Bench, seed: SeedRuns, costs: Costs, path: Path) -> Path:
    """One seed's curves against work units, the target and the train-less frontier."""
    plain = seed.by_name()[PLAIN]
    n = plain.planned_samples // max(1, len(plain.epoch_ends))
    curves = [dataclasses.replace(r, times=work_curve(r, costs.f_over_t, n)) for r in seed.results]
    target = plain.target(bench.tolerance)
    tol = f"{bench.scale * bench.tolerance:g} {bench.unit}"
    fig = runs_figure(
        curves,
        target=target,
        target_label=f"target: plain final {'-' if bench.higher_is_better else '+'} {tol}",
        scale=bench.scale,
        ylabel=bench.metric,
        xlabel="compute (work units: plain epochs' worth of training steps)",
        title=f"{bench.title}: metric against compute, seed {seed.seed}",
        reference=PLAIN,
        x_unit="",
        styles={
            c.name: {"linestyle": ":" if c.name.startswith(PLAIN + ",") else "--"}
            for c in curves
            if c.name.startswith((PLAIN + ",", REUSE_PREFIX))
        },
    )
    ends = sorted((c.times[-1], bench.scale * c.final) for c in curves if is_frontier_point(c.name))
    for ax in fig.axes:
        ax.plot(
            [x for x, _ in ends], [y for _, y in ends], color="black", marker="s",
            linewidth=2.2, linestyle="-", alpha=0.6, label="train-less frontier (plain end points)",
        )  # fmt: skip
    # Below the plots: with every arm listed, a legend inside would hide the curves.
    fig.axes[0].legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=3, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def verdict(bench: Bench, summary: TaskSummary) -> tuple[str, str, float]:
    """A plain sentence: does sifting beat training less here? Also the best policy, its gain.

    The best policy is the one furthest above the frontier in work units; its standing in CPU
    seconds, which also count the sifting loader's own cost, is given beside it.
    """
    gains = {n: summary.median(n, "above_work") for n in summary.policies()}
    finite = {n: g for n, g in gains.items() if not math.isnan(g)}
    spread = _amount(bench, summary.spread, signed=False)
    if not finite:
        return "No policy's compute falls within the frontier's range.", "", math.nan
    best = max(finite, key=finite.__getitem__)
    gain, gain_cpu = finite[best], summary.median(best, "above_cpu")
    shown, shown_cpu = _amount(bench, gain), _amount(bench, gain_cpu)
    uniform = summary.median(UNIFORM, "above_work") if UNIFORM in summary.per else math.nan
    control = (
        f" `Uniform` at the reference rule's kept fraction: {_amount(bench, uniform)} against "
        "the frontier in work units."
        if not math.isnan(uniform)
        else ""
    )
    where = (
        f"The best policy, {best}, ends {shown} against the train-less frontier at the same "
        f"work (median seed) and {shown_cpu} at the same CPU seconds; the seed spread is "
        f"{spread}."
    )
    if gain > summary.spread and gain_cpu > summary.spread:
        text = f"**Sifting beats training less here**, in both measures of compute. {where}"
    elif gain > summary.spread:
        text = (
            f"**Sifting beats training less here in work units, but not in CPU seconds.** "
            f"{where} CPU seconds also count the sifting loader's own cost per scored sample "
            "(selection, slicing, joining, Python per raw batch), which work units leave out: on "
            "a model this small it takes back the gain that the choice of samples makes."
        )
    elif gain > 0:
        text = (
            f"**Sifting does not clearly beat training less here.** {where} The gain in work "
            "units is within the seed spread: a plain run given that compute as fewer epochs "
            "does as well, to within what the seed alone changes."
        )
    else:
        text = (
            f"**Sifting does not beat training less here.** {where} A plain run given that "
            "compute as fewer epochs does better."
        )
    return text + control, best, gain


def saturation(bench: Bench, summary: TaskSummary, setting: Setting) -> tuple[str, str, bool]:
    """Plain's final metric at about 0.5x and at 1x of the budget: does it still rise?

    Returns the sentence, the rise (with the seed spread) and whether it exceeds the spread.
    """
    half = control_name(max(1, round(0.5 * setting.epochs)), setting.epochs)
    if half not in summary.per:
        return "", "n/a", False
    rise = -summary.median(half, "gain")  # the half run's gain over plain is negative
    rises = rise > summary.spread
    measured = (
        f"{_amount(bench, rise)} (median seed; seed spread "
        f"{_amount(bench, summary.spread, signed=False)})"
    )
    text = (
        f"Plain {bench.metric} at 0.5x of the budget (its own complete schedule): "
        f"{_metric(bench, summary.per[half]['final'])}; at 1x: "
        f"{_metric(bench, summary.per[PLAIN]['final'])}; the full budget is better by "
        f"{measured}: "
        + ("still improving." if rises else "saturated, or nearly, within the budget.")
    )
    return text, measured, rises


def keep_target(bench: Bench, summary: TaskSummary) -> Target:
    """Every arm with a stated keep realises it within :data:`KEEP_TOLERANCE` (median seed)."""
    misses = {
        n: summary.median(n, "keep") - k for n in summary.names if (k := stated_keep(n)) is not None
    }
    worst = max(misses, key=lambda n: abs(misses[n]))
    shown = ", ".join(f"{n} {summary.median(n, 'keep'):.3f}" for n in misses)
    return Target(
        f"{bench.title}: a stated keep is realised (kept fraction of the samples decided on, "
        "median seed)",
        f"within {100 * KEEP_TOLERANCE:.0f} points of the stated keep",
        f"{shown}; worst {100 * misses[worst]:+.1f} points",
        met=all(abs(m) <= KEEP_TOLERANCE for m in misses.values()),
    )


def auto_targets(bench: Bench, summary: TaskSummary) -> list[Target]:
    """Auto never much slower than plain to plain's final metric; where a fixed scoring policy
    is faster than plain, Auto gets most of its gain (CPU s, median seed)."""
    autos = [n for n in (AUTO_HELD_OUT, AUTO) if n in summary.per]
    if not autos:
        return []
    speed = {n: summary.median(n, "speedup_cpu") for n in summary.policies()}
    seeds = {
        n: f"{int(sum(summary.per[n]['reached']))}/{len(summary.per[n]['reached'])}" for n in autos
    }
    main = autos[0]
    shown = "; ".join(
        f"{'with' if n == AUTO_HELD_OUT else 'without'} a held-out metric {speed[n]:.2f}x "
        f"({seeds[n]} seeds reach it)"
        for n in autos
    )
    if REPLICATE in summary.per:
        again = summary.per[REPLICATE]
        shown += (
            f"; plain itself in another data order {summary.median(REPLICATE, 'speedup_cpu'):.2f}x "
            f"({int(sum(again['reached']))}/{len(again['reached'])} seeds)"
        )
    fixed = [n for n in speed if n not in autos and not n.startswith(REUSE_PREFIX)]
    best = max(fixed, key=speed.__getitem__) if fixed else None
    targets = [
        Target(
            f"{bench.title}, Auto: time to the plain run's final metric within the tolerance, "
            "against plain's (CPU s, median seed)",
            f"at least {TARGET_AUTO:.2f}x",
            shown,
            met=speed[main] >= TARGET_AUTO,
        )
    ]
    if best is not None:
        pays = speed[best] > 1.0
        share = (speed[main] - 1.0) / (speed[best] - 1.0) if pays else math.nan
        targets.append(
            Target(
                f"{bench.title}, Auto: share of the best fixed scoring policy's speedup gain "
                "(over plain, to plain's final metric, CPU s, median seed) where one pays",
                f"at least {TARGET_AUTO_SHARE:.0%}",
                f"{best} {speed[best]:.2f}x, {main} {speed[main]:.2f}x: {share:.0%} of its gain"
                if pays
                else f"no fixed scoring policy pays here (best: {best} {speed[best]:.2f}x)",
                met=not pays or share >= TARGET_AUTO_SHARE,
            )
        )
    return targets


def reuse_names(summary: TaskSummary) -> list[str]:
    return [n for n in summary.names if n.startswith(REUSE_PREFIX)]


def reuse_target(bench: Bench, summary: TaskSummary) -> Target:
    """Loss reuse: at least 2x to plain's final metric (CPU s) and above the frontier."""
    names = reuse_names(summary)
    best = max(names, key=lambda n: summary.median(n, "speedup_cpu"))
    speedup, above = summary.median(best, "speedup_cpu"), summary.median(best, "above_work")
    return Target(
        f"{bench.title}, loss reuse: speedup to the plain run's final metric within the "
        "tolerance (CPU s, median seed), and final metric above the train-less frontier at "
        "matched work",
        f"at least {TARGET_REUSE:.1f}x and above by more than the seed spread",
        f"{best} {speedup:.2f}x, {_amount(bench, above)} against the frontier (seed spread "
        f"{_amount(bench, summary.spread, signed=False)})",
        met=speedup >= TARGET_REUSE and above > summary.spread,
    )


def reuse_sentence(bench: Bench, summary: TaskSummary) -> str:
    """How loss reuse did here, in one generated paragraph."""
    names = reuse_names(summary)
    if not names:
        return ""
    parts = []
    for n in names:
        above = summary.median(n, "above_work")
        speedup = summary.median(n, "speedup_cpu")
        reached = int(sum(summary.per[n]["reached"]))
        parts.append(
            f"{n} ends {_amount(bench, summary.median(n, 'gain'))} against plain using "
            f"{summary.median(n, 'work'):.2f} work units, "
            + (
                "cheaper than the cheapest control"
                if math.isnan(above)
                else f"{_amount(bench, above)} against the train-less frontier"
            )
            + f"; better than a plain run given more work in "
            f"{int(sum(summary.per[n]['dominates']))}/{len(summary.per[n]['dominates'])} seeds; "
            f"it reaches plain's final metric in {reached}/{len(summary.per[n]['reached'])} "
            f"seeds ({speedup:.2f}x, CPU s, median)"
        )
    return "Loss reuse (no scoring pass; work units are exactly the samples trained): " + (
        "; ".join(parts) + "."
    )


def report_task(
    bench: Bench, seeds: Sequence[SeedRuns], costs: Costs, smoke: bool, img_dir: Path
) -> tuple[str, list[Target]]:
    """The task's subsection (setting, tables, verdict, plot) and its targets."""
    setting = bench.setting_for(smoke)
    summary = summarise(bench, seeds, costs)
    image = frontier_figure(bench, seeds[0], costs, img_dir / f"frontier_{bench.key}.png")
    text, best, gain = verdict(bench, summary)
    sat_text, sat_measured, rises = saturation(bench, summary, setting)
    keep = fmt_spread([s.uniform_keep for s in seeds], "{:.2f}")
    tol = f"{bench.scale * bench.tolerance:g} {bench.unit}"
    uniform = (
        f"`Uniform` keeps {keep} (the reference rule's realised kept fraction of scored "
        "samples, per seed). "
        if bench.uniform
        else ""
    )
    parts = [
        f"### {bench.title}",
        f"{bench.about} Setting: {setting.describe()}. Train-less control: plain at "
        f"{', '.join(str(e) for e in setting.control_epochs())} of {setting.epochs} epochs. "
        f"{uniform}F/T = {costs.f_over_t:.3f} (F {1e6 * costs.scoring_s:.1f} us, "
        f"T {1e6 * costs.step_s:.1f} us per sample). {costs.advice}",
        f"Target: the plain run's final {bench.metric.split(' (')[0]} within {tol}. "
        "Time to it (evaluation excluded; 0.00x: never reached):",
        time_table(bench, summary),
        "The fixed budget, and the frontier: each run's final metric against plain's, what it "
        "saved, and its final metric against the train-less frontier at the same compute "
        "(positive: better than a plain run given that compute as fewer epochs).",
        budget_table(bench, summary),
        text,
        *([sat_text] if sat_text else []),
        f"![{bench.title}: metric against compute](img/{image.name})",
    ]
    reuse = reuse_sentence(bench, summary)
    if reuse:
        parts.insert(-1, reuse)
    targets = [keep_target(bench, summary)] if any(map(stated_keep, summary.names)) else []
    targets += auto_targets(bench, summary)
    if bench.key == "mnist1d":
        targets.append(reuse_target(bench, summary))
    if bench.key == "mnist1d":
        ref = summary.median(REFERENCE, "speedup_cpu")
        held = {
            n: summary.median(n, "speedup_cpu")
            for n in summary.policies()
            if summary.median(n, "gain") >= -bench.tolerance
        }
        top = max(held, key=held.__getitem__) if held else None
        targets += [
            Target(
                "MNIST-1D (demo setting), reference rule: speedup to the plain run's final "
                "accuracy within 0.5 points (CPU s, median seed)",
                f"at least {TARGET_REFERENCE:.1f}x",
                f"{ref:.2f}x",
                met=ref >= TARGET_REFERENCE,
            ),
            Target(
                "MNIST-1D (demo setting), best policy with final accuracy held (within 0.5 "
                "points of plain): speedup to the target (CPU s, median seed)",
                f"at least {TARGET_BEST:.1f}x",
                f"{top} {held[top]:.2f}x" if top else "no policy held the final accuracy",
                met=top is not None and held[top] >= TARGET_BEST,
            ),
        ]
    if bench.key in ("unsaturated", "redundant"):
        measured = (
            f"{best} {_amount(bench, gain)} (at matched CPU s: "
            f"{_amount(bench, summary.median(best, 'above_cpu'))}); seed spread "
            f"{_amount(bench, summary.spread, signed=False)}"
            if best
            else "no policy within the frontier's range"
        )
        targets.append(
            Target(
                f"{bench.title}: best policy above the train-less frontier at matched compute "
                "(work units, median seed)",
                "by more than the seed spread",
                measured,
                met=bool(best) and gain > summary.spread,
            )
        )
    if bench.key == "unsaturated":
        targets.append(
            Target(
                f"{bench.title}: not saturated (plain's 1x budget better than 0.5x)",
                "by more than the seed spread",
                sat_measured,
                met=rises,
            )
        )
    return "\n\n".join(parts), targets


def run(smoke: bool = False, img_dir: Path | None = None, jobs: int | None = None) -> Section:
    """Runs every task and returns the report's section; plots go to ``img_dir``."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(smoke, img_dir, jobs)
    finally:
        torch.set_num_threads(threads)


def _run(smoke: bool, img_dir: Path, jobs: int) -> Section:
    seeds = SEEDS[:1] if smoke else SEEDS
    keys = list(BENCHES)
    # Training takes most of an hour of CPU; a file named here keeps what it measured, so
    # that the report can be rendered again from it without training again.
    saved = os.environ.get(RESULTS_ENV)
    rendered = ""
    if saved and Path(saved).is_file():
        with open(saved, "rb") as f:
            costs, results, seconds = pickle.load(f)
        rendered = (
            f" This report was rendered again from the saved measurements of a run whose "
            f"training took {seconds / 60:.1f} min."
        )
    else:
        start = time.perf_counter()
        costs = {key: measure_costs(key, smoke) for key in keys}
        results = run_all(keys, seeds, smoke, jobs)
        if saved:
            with open(saved, "wb") as f:
                pickle.dump((costs, results, time.perf_counter() - start), f)
    out = [
        "Does sifting beat simply training less? Every seed trains, from the same weights in "
        "the same data order: plain at the full budget; plain again from the same weights in "
        f"another data order (`{REPLICATE}`: how far the order alone moves a result, not a "
        "point of the frontier); the train-less control, plain at about "
        "0.35x, 0.5x and 0.7x of the epochs, each with its own complete schedule; every policy "
        f"at the full budget ({', '.join(policies(1))}, with the same delay and history); "
        f"{AUTO_HELD_OUT}, Auto reading a held-out metric: accuracy on "
        f"{VALIDATION_SAMPLES} MNIST-1D samples drawn with another seed, or the loss on the "
        f"{LM_HELD_OUT // 1000} KB of text after the language models' corpus (neither training "
        "nor test data), checked about every 100 raw batches (training plain, before each "
        "probe), its cost counted in the CPU "
        "seconds but not in the work units; loss "
        f"reuse ({', '.join(reuse_arms(1))}: no scoring pass, samples skipped before loading "
        "from the losses their last training step recorded; never-scored samples and scores "
        "older than 3 epochs are trained); and `Uniform` at the kept fraction the reference "
        "rule realised. All take optimizer steps of one size and follow a cosine schedule sized "
        "as for plain training, the sifted runs' stepped through `ss.DataSchedule` and the "
        "loss-reuse runs' through `ss.ReuseSchedule`, so that every schedule ends where its "
        "training ends. A task that runs only some of these says so.",
        "Compute, two ways: CPU seconds of the process on one thread (evaluation excluded; "
        f"{'one process' if jobs == 1 else f'{jobs} worker processes, one per seed at a time'}), "
        "and work units = (samples scored x F/T + samples trained) / samples per plain epoch, "
        "F and T measured on each task by `ss.profile`. The frontier joins the end points "
        "(compute, final metric) of the control runs and of the plain run; a run is above it "
        "when its final metric beats the frontier's at the same compute by more than the seed "
        "spread (the range of the plain run's final metric over the seeds). Differences are "
        "in the better direction (positive: better). Median (min–max) over seeds "
        f"{', '.join(map(str, seeds))}; the plots show seed {seeds[0]}. Between two control "
        "points the straight line lies below a frontier whose returns diminish, which favours a "
        "run there a little; the last column needs no line: the seeds in which a run ended "
        f"better than a plain run (control or full) that used at least its work.{rendered}",
    ]
    targets: list[Target] = []
    for key in keys:
        text, found = report_task(BENCHES[key], results[key], costs[key], smoke, img_dir)
        out.append(text)
        targets += found
    return Section("The frontier: sifting against training less", "\n\n".join(out), tuple(targets))


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv)


if __name__ == "__main__":
    main_as_module("benchmarks.frontier")
