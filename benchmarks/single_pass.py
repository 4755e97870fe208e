"""Single pass: sifting a stream that is read once, where loss reuse cannot work.

Large corpora and streams are read once: no sample comes back, so no loss recorded by a
training step can ever be reused, and the scoring pass (:class:`smartsift.SiftingDataLoader`)
is the only way to sift. This benchmark reads MNIST-1D as such a stream: one large pool is
generated (in chunks of distinct seeds), each seed draws a fixed order of it, sets its first
samples aside as the reference model's held-out slice, and every run reads a prefix of the
rest once, never repeating a sample. The task is clean, or has 20 % of the stream's labels
flipped (held-out slice included; the test labels stay clean).

Per task and seed, from the same initial weights, every run takes optimizer steps of one size
and follows a cosine schedule over its whole run (through :class:`smartsift.DataSchedule` for
the sifted runs, so it ends where the run ends):

- ``plain`` reading ``f`` times the full budget ``N`` of the stream, for ``f`` in
  :data:`FRACTIONS`: below 1 the train-less frontier; above 1, plain reading more of the
  stream, so that the frontier can be interpolated at the sifted runs' work;
- the scoring mode at raw-to-refined ratios ``r`` of :data:`RATIOS`: it reads ``r * N`` samples
  in raw batches of ``r`` steps, keeps ``1/r`` of each with ``ss.TopK(keep=1/r)`` and so trains
  ``N`` samples in as many steps as plain at the full budget; by the loss, by the reducible
  loss (``reference=`` a small model trained on the held-out slice first), and
  ``ss.Uniform(keep=1/r)`` as the random control (scored like the others, as the loader runs
  it).

Work units count every pass, in training steps of the main model per sample (``T``), over
``N``: ``(trained + scored * F/T + reference trained * T_ref/T + scored * F_ref/T) / N``, with
the four costs per sample measured once per run by :func:`smartsift.profile` (``F`` and
``F_ref`` at each ratio's raw batch size). Reported per arm: final clean test accuracy, work,
the gain over plain at the full budget and over the plain frontier at the same work
(interpolated linearly between the plain runs' end points), and the share of flipped samples
among those trained.

Run it from the repository root (``python -m benchmarks.single_pass [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only single_pass``) or call :func:`run`. With the environment
variable ``SMARTSIFT_SINGLE_PASS_RESULTS`` naming a file, the measurements are saved there,
and a later run with the file present renders the report from them without training.

Example:
    >>> [arm.name for arm in arms()][:2]
    ['plain 0.25x', 'plain 0.5x']
    >>> held, stream = stream_layout(10, held_out=2, seed=0)
    >>> len(held), len(stream), len(set(held.tolist()) | set(stream.tolist()))
    (2, 8, 10)
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pickle
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from benchmarks.common import (
    Section,
    Target,
    benchmark_main,
    fmt_spread,
    main_as_module,
    markdown_table,
    run_jobs,
)
from benchmarks.demo import ConvNet, evaluate, make_mnist1d
from benchmarks.frontier import frontier_at
from benchmarks.harness import Task, TrainingRun, seeded, train_side_by_side
from benchmarks.noise import NOISE, flip_labels
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.schedules import DataSchedule

__all__ = [
    "FRACTIONS",
    "RATIOS",
    "SEEDS",
    "Arm",
    "Costs",
    "Outcome",
    "Setting",
    "Stream",
    "arms",
    "chunks",
    "gains_over_frontier",
    "make_stream",
    "noisy_share",
    "run",
    "seed_runs",
    "stream_layout",
    "work_units",
]

FRACTIONS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
RATIOS = (2, 4)
SCORES = ("loss", "reducible", "uniform")
TASKS = ("clean", "noisy")
SEEDS = (0, 1, 2)
TEST_SEED = 1_000_000  # the test set's generation seed, apart from every chunk's
FLIP_SEED = 7_777  # which labels are flipped: apart from the seeds that order the stream
PLAIN_FULL = "plain 1x"
RESULTS_ENV = "SMARTSIFT_SINGLE_PASS_RESULTS"


@dataclass(frozen=True)
class Setting:
    """The stream, the models and how every run trains.

    Attributes:
        n_train: ``N``, the samples plain reads (and trains) at the full budget.
        held_out: the reference model's slice, set aside from the stream.
        n_test: clean test samples.
        chunk: samples per generated chunk of the pool (each with its own seed).
        width: the main ConvNet's width.
        ref_width: the reference ConvNet's width.
        ref_epochs: epochs the reference trains on the held-out slice.
        batch_size: every optimizer step (the sifted runs score ``ratio`` times that).
        lr: AdamW's initial rate, for both models.
        evals: evaluations per run.
    """

    n_train: int
    held_out: int
    n_test: int
    chunk: int
    width: int
    ref_width: int
    ref_epochs: int
    batch_size: int
    lr: float
    evals: int

    @property
    def pool(self) -> int:
        """Samples the longest run reads, plus the held-out slice."""
        longest = max(max(FRACTIONS), max(RATIOS))
        return self.held_out + math.ceil(longest * self.n_train)


FULL = Setting(40_000, 4_000, 10_000, 20_000, 64, 16, 5, 64, 5e-3, 4)
SMOKE = Setting(640, 128, 200, 1_000, 8, 4, 1, 32, 5e-3, 1)


# ----------------------------------------------------------------------------- the stream
@dataclass(frozen=True)
class Stream:
    """The generated pool (clean labels) and the clean test set."""

    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def labels(self, key: str) -> tuple[torch.Tensor, torch.Tensor]:
        """The pool's labels for task ``key`` and the mask of flipped ones."""
        if key == "clean":
            return self.y, torch.zeros(len(self.y), dtype=torch.bool)
        if key == "noisy":
            return flip_labels(self.y, NOISE, 10, seed=FLIP_SEED)
        raise ValueError(f"Expected `key` to be one of {TASKS}, but got {key!r}.")


def chunks(total: int, chunk: int, first_seed: int = 0) -> list[tuple[int, int]]:
    """``(seed, num_samples)`` of each generated chunk, ``total`` samples in all, distinct seeds.

    Example:
        >>> chunks(5, 2)
        [(0, 2), (1, 2), (2, 1)]
    """
    if total < 0 or chunk < 1:
        raise ValueError(
            f"Expected `total` >= 0 and `chunk` >= 1, but got total={total!r}, chunk={chunk!r}."
        )
    return [
        (first_seed + i, min(chunk, total - start))
        for i, start in enumerate(range(0, total, chunk))
    ]


def _generate(seed_and_size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """One chunk: every sample ``mnist1d`` generates for the seed (its train and test parts)."""
    seed, size = seed_and_size
    # mnist1d generates as many samples of each of its 10 classes: round up, then cut.
    train, (x_test, y_test) = make_mnist1d(10 * max(1, math.ceil(size / 10)), seed=seed)
    x = torch.cat([train.tensors[0], x_test])[:size]
    y = torch.cat([train.tensors[1], y_test])[:size]
    return x, y


def make_stream(setting: Setting, jobs: int = 1) -> Stream:
    """Generates the pool and the test set, chunks in ``jobs`` worker processes."""
    parts = run_jobs(
        _generate, [*chunks(setting.pool, setting.chunk), (TEST_SEED, setting.n_test)], jobs
    )
    *pool, (x_test, y_test) = parts
    return Stream(torch.cat([x for x, _ in pool]), torch.cat([y for _, y in pool]), x_test, y_test)


def stream_layout(size: int, held_out: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seed's fixed order of the pool: the held-out slice, then the stream every run reads
    a prefix of (disjoint, together the whole pool, each index once).

    Example:
        >>> held, stream = stream_layout(6, held_out=1, seed=3)
        >>> sorted(held.tolist() + stream.tolist())
        [0, 1, 2, 3, 4, 5]
    """
    if not 0 <= held_out <= size:
        raise ValueError(
            f"Expected `held_out` in [0, size={size}], but got {held_out!r}; generate a larger "
            "pool or set fewer samples aside."
        )
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    return order[:held_out], order[held_out:]


# ----------------------------------------------------------------------------- the arms
@dataclass(frozen=True)
class Arm:
    """One run of a seed: plain reading ``read`` times ``N``, or sifted at ratio ``read``.

    Example:
        >>> Arm("loss", read=4).keep, Arm("loss", read=4).name
        (0.25, 'loss, ratio 4')
    """

    score: str | None  # None: plain; else one of SCORES
    read: float

    def __post_init__(self) -> None:
        if self.score is not None and self.score not in SCORES:
            raise ValueError(f"Expected `score` None or one of {SCORES}, but got {self.score!r}.")
        if not self.read > 0 or (self.score is not None and self.read <= 1):
            raise ValueError(
                f"Expected `read` > 0 (a sifted arm: > 1, the raw-to-refined ratio), but got "
                f"{self.read!r}."
            )

    @property
    def name(self) -> str:
        return (
            f"plain {self.read:g}x" if self.score is None else f"{self.score}, ratio {self.read:g}"
        )

    @property
    def keep(self) -> float:
        """The share of the samples read that are trained."""
        return 1.0 if self.score is None else 1.0 / self.read

    def samples(self, n_train: int) -> int:
        """Samples of the stream this arm reads."""
        return round(self.read * n_train)


def arms() -> list[Arm]:
    """Every arm of a seed: plain at each fraction, then each score at each ratio."""
    return [Arm(None, f) for f in FRACTIONS] + [Arm(s, r) for s in SCORES for r in RATIOS]


# ----------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class Costs:
    """Seconds per sample: training steps ``T`` (main) and ``T_ref`` (reference) at the step
    size; scoring passes ``F`` and ``F_ref`` at each ratio's raw batch size."""

    step_s: float
    scoring_s: Mapping[int, float]
    ref_step_s: float
    ref_scoring_s: Mapping[int, float]

    def f_over_t(self, ratio: int) -> float:
        return self.scoring_s[ratio] / self.step_s

    def ref_f_over_t(self, ratio: int) -> float:
        return self.ref_scoring_s[ratio] / self.step_s

    @property
    def ref_t_over_t(self) -> float:
        return self.ref_step_s / self.step_s


def work_units(
    trained: int,
    scored: int,
    n_train: int,
    f_over_t: float = 0.0,
    ref_trained: int = 0,
    ref_t_over_t: float = 0.0,
    ref_f_over_t: float = 0.0,
) -> float:
    """Work in main-model training steps per sample, over ``n_train`` (plain at the full budget
    is 1): trained + scored * F/T, plus, with a reference, its training steps * T_ref/T and its
    forward passes on the scored samples * F_ref/T.

    Example:
        >>> work_units(100, 0, 100)
        1.0
        >>> work_units(100, 400, 100, f_over_t=0.25, ref_trained=50, ref_t_over_t=0.4,
        ...            ref_f_over_t=0.1)
        2.6
    """
    if n_train < 1:
        raise ValueError(f"Expected `n_train` to be a positive int, but got {n_train!r}.")
    total = trained + scored * (f_over_t + ref_f_over_t) + ref_trained * ref_t_over_t
    return round(total / n_train, 12)


def _loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    _, x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _mean_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    return _loss(model, batch).mean()


def _profile(
    model: torch.nn.Module, data: TensorDataset, batch_size: int, lr: float, steps: int
) -> ss.ProfileReport:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    loader = DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )
    return ss.profile(
        model, loader, _loss, optimizer, steps=steps, warmup=max(1, steps // 5),
        train_step=_mean_loss,
    )  # fmt: skip


def measure_costs(stream: Stream, setting: Setting, smoke: bool) -> Costs:
    """The four costs of :class:`Costs`, medians of 3 profiles each (1 in smoke mode), on one
    thread, on fresh models."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    steps, repeats = (3, 1) if smoke else (25, 3)
    try:
        n = min(len(stream.x), (steps + steps // 5 + 2) * max(RATIOS) * setting.batch_size)
        data = TensorDataset(torch.arange(n), stream.x[:n], stream.y[:n])

        def median(width: int, batch_size: int, field: str) -> float:
            model = seeded(functools.partial(ConvNet, width=width), 0)
            reports = [_profile(model, data, batch_size, setting.lr, steps) for _ in range(repeats)]
            return float(statistics.median(getattr(r, field) for r in reports))

        b = setting.batch_size
        return Costs(
            step_s=median(setting.width, b, "step_s"),
            scoring_s={r: median(setting.width, r * b, "scoring_s") for r in RATIOS},
            ref_step_s=median(setting.ref_width, b, "step_s"),
            ref_scoring_s={r: median(setting.ref_width, r * b, "scoring_s") for r in RATIOS},
        )
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- running
class _FlippedCount:
    """The training step's mean loss, counting the flipped samples the run's model trains."""

    def __init__(self, flipped: torch.Tensor) -> None:
        self.flipped = flipped
        self.model: torch.nn.Module | None = None  # warm-up copies are not counted
        self.trained = 0
        self.flipped_trained = 0

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        if model is self.model:
            ids = batch[0]
            self.trained += len(ids)
            self.flipped_trained += int(self.flipped[ids].sum())
        return _mean_loss(model, batch)


def noisy_share(flipped_trained: int, trained: int) -> float:
    """The share of flipped samples among those trained (NaN before any).

    Example:
        >>> noisy_share(30, 120), math.isnan(noisy_share(0, 0))
        (0.25, True)
    """
    return flipped_trained / trained if trained else math.nan


class _SiftedRun(TrainingRun):
    """A harness run whose sifting loader ranks ``loss - reference`` (``reference=``)."""

    def __init__(
        self, name: str, task: Task, *, policy: ss.Policy, reference: Any, seed: int, **kw: Any
    ) -> None:
        super().__init__(name, task, policy=policy, seed=seed, **kw)
        # The harness builds its loader without a reference: rebuild it (not yet iterated).
        self.loader = SiftingDataLoader(
            self.raw, self.model, task.loss_fn, policy=policy, seed=seed,
            batch_size=self.step_batch_size, reference=reference,
        )  # fmt: skip
        if self.scheduler is not None:
            self.data_schedule = DataSchedule(
                self.scheduler,
                self.loader,
                batch_size=self.step_batch_size,
                total_steps=self.total_steps,
            )


@dataclass(frozen=True)
class Outcome:
    """One arm of one seed: what it ended at and what it did."""

    task: str
    seed: int
    name: str
    score: str | None
    read: float
    final: float
    seen: int
    scored: int
    trained: int
    steps: int
    flipped_trained: int
    ref_trained: int
    ref_final: float


def _policy(score: str, keep: float) -> ss.Policy:
    return ss.Uniform(keep=keep) if score == "uniform" else ss.TopK(keep=keep)


def seed_runs(job: tuple[str, int, bool], stream: Stream) -> list[Outcome]:
    """Every arm of task ``job[0]`` for seed ``job[1]`` (``job[2]``: smoke), side by side."""
    key, seed, smoke = job
    torch.set_num_threads(1)
    setting = SMOKE if smoke else FULL
    labels, flipped = stream.labels(key)
    held, order = stream_layout(len(stream.x), setting.held_out, seed)
    evaluate_test = functools.partial(evaluate, x=stream.x_test, y=stream.y_test)

    def task(ids: torch.Tensor, width: int) -> Task:
        return Task(
            build_model=functools.partial(ConvNet, width=width),
            train_set=TensorDataset(ids, stream.x[ids], labels[ids]),
            loss_fn=_loss,
            evaluate=evaluate_test,
        )

    common: dict[str, Any] = dict(
        epochs=1, lr=setting.lr, seed=seed, evals_per_epoch=setting.evals, schedule="cosine",
        clock=time.process_time,
    )  # fmt: skip
    ref_run = TrainingRun(
        "reference", task(held, setting.ref_width), **{**common, "epochs": setting.ref_epochs},
        batch_size=setting.batch_size,
    )  # fmt: skip
    train_side_by_side([ref_run])
    reference = ref_run.model.eval()
    ref_trained = ref_run.result.samples_backpropagated

    runs: list[tuple[Arm, TrainingRun, _FlippedCount]] = []
    for arm in arms():
        counter = _FlippedCount(flipped)
        arm_task = dataclasses.replace(
            task(order[: arm.samples(setting.n_train)], setting.width), train_loss=counter
        )
        run: TrainingRun
        if arm.score is None:
            run = TrainingRun(arm.name, arm_task, batch_size=setting.batch_size, **common)
        else:
            raw = round(arm.read) * setting.batch_size
            args = dict(batch_size=raw, refined_batch_size=setting.batch_size, **common)
            policy = _policy(arm.score, arm.keep)
            if arm.score == "reducible":
                run = _SiftedRun(
                    arm.name, arm_task, policy=policy,
                    reference=functools.partial(_loss, reference), **args,
                )  # fmt: skip
            else:
                run = TrainingRun(arm.name, arm_task, policy=policy, **args)
        counter.model = run.model
        runs.append((arm, run, counter))
    train_side_by_side([run for _, run, _ in runs])
    return [
        Outcome(
            task=key,
            seed=seed,
            name=arm.name,
            score=arm.score,
            read=arm.read,
            final=run.result.final,
            seen=run.result.seen[-1],
            scored=run.result.scored[-1],
            trained=run.result.samples_backpropagated,
            steps=run.result.steps,
            flipped_trained=counter.flipped_trained,
            ref_trained=ref_trained if arm.score == "reducible" else 0,
            ref_final=ref_run.result.final,
        )
        for arm, run, counter in runs
    ]


def run_all(stream: Stream, smoke: bool, jobs: int) -> list[Outcome]:
    """Every seed of every task, in ``jobs`` worker processes (1: in this process)."""
    seeds = SEEDS[:1] if smoke else SEEDS
    work = [(key, seed, smoke) for key in TASKS for seed in seeds]
    done = run_jobs(
        functools.partial(seed_runs, stream=stream),
        work,
        jobs,
        done=lambda r: f"[single_pass] {r[0].task}, seed {r[0].seed} done",
    )
    return [o for outcomes in done for o in outcomes]


# ----------------------------------------------------------------------------- analysis
def outcome_work(o: Outcome, costs: Costs, n_train: int) -> float:
    """An outcome's work units (see :func:`work_units`)."""
    if o.score is None:
        return work_units(o.trained, 0, n_train)
    ratio = round(o.read)
    with_ref = o.score == "reducible"
    return work_units(
        o.trained,
        o.scored,
        n_train,
        f_over_t=costs.f_over_t(ratio),
        ref_trained=o.ref_trained,
        ref_t_over_t=costs.ref_t_over_t if with_ref else 0.0,
        ref_f_over_t=costs.ref_f_over_t(ratio) if with_ref else 0.0,
    )


def gains_over_frontier(
    points: Sequence[tuple[float, float]], runs: Sequence[tuple[float, float]]
) -> list[float]:
    """Each run's ``(work, final)`` less the frontier of ``points`` at its work (interpolated
    linearly; beyond the most expensive point, that point's metric; NaN below the cheapest).

    Example:
        >>> gains_over_frontier([(1.0, 0.90), (2.0, 0.92)], [(1.5, 0.93), (3.0, 0.91)])
        [0.02, -0.01]
    """
    return [round(final - frontier_at(points, work), 12) for work, final in runs]


@dataclass(frozen=True)
class Row:
    """One arm of one task over seeds (in seed order)."""

    name: str
    score: str | None
    read: float
    finals: list[float]
    works: list[float]
    vs_full: list[float]
    vs_frontier: list[float]
    noisy: list[float]
    steps: list[int]


def rows(outcomes: Sequence[Outcome], key: str, costs: Costs, n_train: int) -> list[Row]:
    """Every arm of task ``key``, measured against its seed's plain runs."""
    mine = [o for o in outcomes if o.task == key]
    seeds = sorted({o.seed for o in mine})
    by = {(o.seed, o.name): o for o in mine}
    work = {(o.seed, o.name): outcome_work(o, costs, n_train) for o in mine}
    out = []
    for arm in arms():
        runs = [by[(s, arm.name)] for s in seeds]
        vs_frontier = []
        for s in seeds:
            points = [(work[(s, a.name)], by[(s, a.name)].final) for a in arms() if a.score is None]
            vs_frontier += gains_over_frontier(
                points, [(work[(s, arm.name)], by[(s, arm.name)].final)]
            )
        out.append(
            Row(
                name=arm.name,
                score=arm.score,
                read=arm.read,
                finals=[o.final for o in runs],
                works=[work[(s, arm.name)] for s in seeds],
                vs_full=[round(o.final - by[(o.seed, PLAIN_FULL)].final, 12) for o in runs],
                vs_frontier=vs_frontier,
                noisy=[noisy_share(o.flipped_trained, o.trained) for o in runs],
                steps=[o.steps for o in runs],
            )
        )
    return out


def seed_spread(row: Row) -> float:
    """The range of a row's final accuracy over seeds."""
    return max(row.finals) - min(row.finals) if len(row.finals) > 1 else 0.0


def _pts(values: Sequence[float]) -> str:
    return fmt_spread([100 * v + 0.0 for v in values], "{:+.2f}")


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def task_table(table: Sequence[Row], noisy: bool) -> str:
    """The markdown table of one task: a row per arm."""
    headers = [
        "arm",
        "final clean test accuracy (%)",
        "per seed (%)",
        "work units",
        "steps",
        "vs plain 1x (points)",
        "vs plain frontier at its work (points)",
    ]
    if noisy:
        headers.append("flipped among trained")
    body = []
    for r in table:
        row = [
            r.name if r.score is None else f"`{r.score}`, ratio {r.name.rsplit(' ', 1)[1]}",
            fmt_spread([100 * v for v in r.finals], "{:.2f}"),
            ", ".join(f"{100 * v:.2f}" for v in r.finals),
            fmt_spread(r.works, "{:.2f}"),
            fmt_spread([float(s) for s in r.steps], "{:.0f}"),
            "" if r.name == PLAIN_FULL else _pts(r.vs_full),
            "" if r.score is None else _pts(r.vs_frontier),
        ]
        if noisy:
            row.append(fmt_spread([100 * v for v in r.noisy], "{:.1f}", " %"))
        body.append(row)
    return markdown_table(headers, body)


def best_sifted(table: Sequence[Row]) -> Row:
    """The scoring-mode arm (loss or reducible) with the highest median gain over the frontier."""
    sifted = [r for r in table if r.score in ("loss", "reducible")]
    return max(sifted, key=lambda r: _median(r.vs_frontier))


TITLES = {"clean": "Clean labels", "noisy": f"{NOISE:.0%} of the stream's labels flipped"}


def task_target(key: str, table: Sequence[Row]) -> Target:
    """Whether some scoring-mode arm ends above the plain frontier by more than the seed spread."""
    full = next(r for r in table if r.name == PLAIN_FULL)
    spread = seed_spread(full)
    best = best_sifted(table)
    gain = _median(best.vs_frontier)
    return Target(
        f"Single pass, scoring mode against the plain frontier at the same work "
        f"(MNIST-1D stream, {TITLES[key].lower()})",
        "some scoring-mode setting (loss or reducible, ratio 2 or 4) ends above the frontier by "
        "more than the seed spread",
        f"best `{best.score}`, ratio {best.read:g}: {100 * gain:+.2f} points median "
        f"(seeds {', '.join(f'{100 * v:+.2f}' for v in best.vs_frontier)}); spread "
        f"{100 * spread:.2f} points",
        met=gain > spread,
    )


def report_task(key: str, table: Sequence[Row], ref_finals: Sequence[float]) -> str:
    """One task's table and what it shows."""
    full = next(r for r in table if r.name == PLAIN_FULL)
    spread = seed_spread(full)
    best = best_sifted(table)

    def med(score: str, ratio: int) -> float:
        row = next(r for r in table if r.score == score and r.read == ratio)
        return _median(row.vs_frontier)

    lines = [
        f"### {TITLES[key]}",
        task_table(table, noisy=key == "noisy"),
        f"Seed spread (range of plain 1x's final accuracy): {100 * spread:.2f} points. "
        f"The reference model ends at {fmt_spread([100 * v for v in ref_finals], '{:.1f}')} % "
        "test accuracy. Median gain over the plain frontier at the same work (points), ratio "
        + ", ".join(
            f"{r}: loss {100 * med('loss', r):+.2f}, reducible {100 * med('reducible', r):+.2f}, "
            f"uniform {100 * med('uniform', r):+.2f}"
            for r in RATIOS
        )
        + f". Best scoring-mode setting: `{best.score}`, ratio {best.read:g}"
        + (
            " — above the frontier by more than the seed spread."
            if _median(best.vs_frontier) > spread
            else " — not above the frontier by more than the seed spread."
        ),
    ]
    if _median(best.vs_frontier) <= spread:
        lines.append(why_not(table, ref_finals))
    return "\n\n".join(lines)


def why_not(table: Sequence[Row], ref_finals: Sequence[float]) -> str:
    """Why no scoring-mode setting beat the frontier, from the task's own figures: how much
    plain still gains from more of the stream, how weak the reference is, and how much of
    what the loss ranking trained was mislabeled."""
    by = {r.name: r for r in table}
    full = by[PLAIN_FULL]
    more = [r for r in table if r.score is None and r.read > 1]
    hungry = max(more, key=lambda r: r.read) if more else None
    parts = ["**Why not.**"]
    if hungry is not None:
        gain = _median([a - b for a, b in zip(hungry.finals, full.finals, strict=True)])
        parts.append(
            f"Plain training still gains {100 * gain:+.2f} points from reading {hungry.read:g}x "
            "the stream instead of 1x: the model is data-hungry, so a fresh sample trained is "
            "worth more than the choice among samples. The sifted runs train as many samples "
            "as plain 1x and pay the scoring pass on every sample they read; at the same work, "
            "plain reads and trains that many more fresh samples."
        )
    ref, main = _median(ref_finals), _median(full.finals)
    pairs = [
        (r, next(q for q in table if q.score == "loss" and q.read == r.read))
        for r in table
        if r.score == "reducible"
    ]
    below = all(_median(r.vs_frontier) < _median(q.vs_frontier) for r, q in pairs)
    parts.append(
        f"The reference model reaches {100 * ref:.1f} % test accuracy against plain 1x's "
        f"{100 * main:.1f} %: too weak for `loss - reference` to separate what is learnable "
        "from what is not"
        + (", and the reducible score ends below the loss at every ratio." if below else ".")
    )
    loss_rows = [r for r in table if r.score == "loss"]
    if loss_rows and any(r.noisy and r.noisy[0] > 0 for r in loss_rows):
        worst = max(loss_rows, key=lambda r: _median(r.noisy))
        share = 100 * _median(worst.noisy)
        parts.append(
            f"With flipped labels, ranking by the loss chases them: {share:.1f} % of the "
            f"samples `loss`, ratio {worst.read:g} trained were flipped, against "
            f"{100 * _median(full.noisy):.1f} % for plain."
        )
    return " ".join(parts)


def intro(setting: Setting, costs: Costs, seeds: Sequence[int]) -> str:
    """What the benchmark runs and how it counts."""
    n = setting.n_train
    return (
        "Large corpora and streams are read once, so loss reuse cannot work there and only "
        "the scoring pass can sift. MNIST-1D read as a stream: a pool of "
        f"{setting.pool:,} samples generated in chunks of {setting.chunk:,} (each its own "
        f"seed), {setting.n_test:,} clean test samples from another seed; each seed orders "
        f"the pool, sets its first {setting.held_out:,} aside as the held-out slice and every "
        "run reads a prefix of the rest once, in that seed's order, never a sample twice. "
        f"The full budget N = {n:,} samples. Every run: a ConvNet of width {setting.width} "
        f"from the seed's weights, AdamW lr {setting.lr:g}, steps of {setting.batch_size} "
        "samples, one cosine schedule over the whole run (the sifted runs' through "
        "`DataSchedule`). Arms: plain reading "
        + ", ".join(f"{f:g}x" for f in FRACTIONS)
        + " of N (the points below 1x are the train-less frontier; those above, plain reading "
        "more of the stream, let the frontier be interpolated at the sifted runs' work rather "
        "than extrapolated flat); the scoring mode at raw-to-refined ratios "
        + " and ".join(str(r) for r in RATIOS)
        + " (raw batches of ratio x the step size, `ss.TopK(keep=1/ratio)`, so it reads "
        "ratio x N samples and trains N in as many steps as plain 1x; no sift delay), ranking "
        "the loss (`loss`) or the reducible loss (`reducible`: `reference=` a ConvNet of "
        f"width {setting.ref_width} trained {setting.ref_epochs} epochs on the held-out slice "
        "first, whose labels are as noisy as the stream's); and `ss.Uniform(keep=1/ratio)` "
        "(`uniform`, the random control, scored as the loader runs it, so it costs what "
        "`loss` costs). Work units: (trained + scored x F/T + reference trained x T_ref/T + "
        "scored x F_ref/T) / N, from `ss.profile` on fresh models, one thread, medians of "
        f"{1 if setting is SMOKE else 3} profiles: "
        f"T = {1e6 * costs.step_s:.1f} µs per sample; F/T = "
        + ", ".join(f"{costs.f_over_t(r):.3f} (raw batch {r * setting.batch_size})" for r in RATIOS)
        + f"; T_ref/T = {costs.ref_t_over_t:.3f}; F_ref/T = "
        + ", ".join(f"{costs.ref_f_over_t(r):.3f}" for r in RATIOS)
        + ". The reducible arms are each charged the whole reference training. Gains are in "
        "points of clean test accuracy, median (min–max) over seeds "
        + ", ".join(map(str, seeds))
        + "; 'vs plain frontier': the final accuracy less the plain runs' end points "
        "interpolated linearly at the run's work, seed by seed."
    )


def render(outcomes: Sequence[Outcome], costs: Costs, smoke: bool, minutes: float) -> Section:
    """The report's section from the measurements."""
    setting = SMOKE if smoke else FULL
    seeds = sorted({o.seed for o in outcomes})
    body = [intro(setting, costs, seeds)]
    targets = []
    for key in TASKS:
        table = rows(outcomes, key, costs, setting.n_train)
        refs = sorted(
            {(o.seed, o.ref_final) for o in outcomes if o.task == key}, key=lambda p: p[0]
        )
        body.append(report_task(key, table, [f for _, f in refs]))
        targets.append(task_target(key, table))
    body.append(
        f"The benchmark took {minutes:.1f} min of wall time (pool generation, profiles and "
        "training; seeds in two worker processes of one thread each)."
    )
    return Section(
        "Single pass: sifting a stream read once (scoring mode)", "\n\n".join(body), tuple(targets)
    )


def run(smoke: bool = False, jobs: int | None = None) -> Section:
    """Generates the stream, measures the costs, trains every arm and returns the section.

    With the environment variable ``SMARTSIFT_SINGLE_PASS_RESULTS`` naming a file, the
    measurements are saved there, and a later run with the file present renders from them.
    """
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    saved = os.environ.get(RESULTS_ENV)
    if saved and Path(saved).is_file():
        with open(saved, "rb") as f:
            outcomes, costs, minutes = pickle.load(f)
        return render(outcomes, costs, smoke, minutes)
    setting = SMOKE if smoke else FULL
    start = time.perf_counter()
    stream = make_stream(setting, jobs)
    costs = measure_costs(stream, setting, smoke)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        outcomes = run_all(stream, smoke, jobs)
    finally:
        torch.set_num_threads(threads)
    minutes = (time.perf_counter() - start) / 60
    if saved:
        with open(saved, "wb") as f:
            pickle.dump((outcomes, costs, minutes), f)
    return render(outcomes, costs, smoke, minutes)


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv)


if __name__ == "__main__":
    main_as_module("benchmarks.single_pass")
