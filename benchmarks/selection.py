"""The selection study for loss reuse: which choice of samples decides best, and a lossless
setting.

Loss reuse (:class:`smartsift.ReuseSampler`) decides each epoch, before loading, from the
per-sample losses its training steps recorded; with no scoring pass, its compute is exactly
the samples it trains. This study compares ways of choosing, each against a random subset of
the same size, on two tasks of :mod:`benchmarks.frontier` (``mnist1d``, the demo's setting,
and ``unsaturated``, a task still improving at its full budget), each in its full setting.

Per task and seed, from the same initial weights in the same first data order, interleaved:
plain; the train-less control (plain at about 0.35x, 0.5x and 0.7x of the epochs, each with its
own complete schedule); at keep 0.3 and 0.5, loss-reuse arms with ``max_age=3``:

- ``loss``: ``RelativeProbabilistic(keep=k)`` on the last loss (the baseline);
- ``Uniform``: ``Uniform(keep=k)``, a fresh random subset each epoch (the control);
- ``TopK``: ``TopK(keep=k)``, a hard cut instead of a soft one;
- ``change``: ``RelativeProbabilistic(keep=k)`` on how far the loss moved (``score="change"``);
- ``trend``: ``RelativeProbabilistic(keep=k)`` on which way the loss moved (``score="trend"``:
  rising losses, samples being forgotten, first);
- ``class``: ``RelativeProbabilistic(keep=k)`` on the loss over its class's median
  (``score=ss.ClassNormalised(labels)``);
- ``explore``: ``loss`` with an exploration share: a random fifth of the decided candidates is
  trained undecided each epoch (``explore=0.2``), so some randomness is never sifted away;
- ``keep early`` and ``keep late``: ``loss`` with a keep schedule, an exploration share ramping
  from 0.6 down to 0 over the run (more kept early) or from 0 up to 0.6 (more kept late);

the lossless candidates: ``RelativeProbabilistic`` at keep 0.3 and 0.4 with ``anneal=0.1``,
``InfoBatch(prune=0.7)`` with its own sampler settings (``InfoBatch.reuse_kwargs``: ``1/p``
weights, ``anneal=0.125``, ``max_age=None``), ``TopK`` and ``change`` at keep 0.4 (the choices
that came closest to plain at keep 0.5), and ``TopK`` at keep 0.4 again with ``max_age=None``;
and after those, plain at the matched work of every arm (the whole number of
epochs nearest its work units; a control run of that length serves).

Work units = samples trained / training-set size (a plain epoch is 1). Reported per task: every
arm's final test accuracy, work units and gain over the frontier at its work against the seed
spread (the range of plain's final over seeds); per keep, each choice less ``Uniform`` and less
``loss``, paired per seed; a figure (seed 0); then across tasks, a verdict per choice and the
best one, and the lossless table (each candidate's work as a share of plain's and its final
less plain's).

Run it from the repository root (``python -m benchmarks.selection [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only selection``) or call :func:`run`. With the environment
variable ``SMARTSIFT_SELECTION_RESULTS`` naming a file, the measurements are saved there, and a
later run with the file present renders the report from them without training.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pickle
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

import smartsift as ss
from benchmarks.common import (
    IMG_DIR,
    Section,
    Target,
    benchmark_main,
    fmt_per_seed,
    fmt_points,
    fmt_spread,
    main_as_module,
    markdown_table,
    run_jobs,
)
from benchmarks.frontier import BENCHES, PLAIN, Setting, control_name, frontier_at, work_curve
from benchmarks.harness import Reuse, RunResult, Task, TrainingRun, runs_figure, train_side_by_side
from benchmarks.reuse_study import MATCHED, matched_control, on_frontier, paired_differences

__all__ = [
    "ARMS",
    "CHOICES",
    "KEEPS",
    "TASKS",
    "Arm",
    "arms_for",
    "best_candidate",
    "best_choice",
    "cross_task",
    "in_spreads",
    "is_lossless",
    "load_results",
    "lossless_share",
    "run",
    "seed_runs",
    "train_labels",
]

TASKS = ("mnist1d", "unsaturated")
SEEDS = (0, 1, 2)
KEEPS = (0.3, 0.5)
BASE = "loss"
UNIFORM = "Uniform"
CHOICES = (BASE, "TopK", "change", "trend", "class", "explore", "keep early", "keep late")
"""The ways of choosing compared with ``Uniform`` and with each other; the first is the
baseline. ``explore``, ``keep early`` and ``keep late`` decide on the last loss as ``loss``
does, with an exploration share (:data:`EXPLORE`, :data:`RAMP`) trained undecided."""
EXPLORE = 0.2  # the exploration share of `explore`: decided candidates trained at random
RAMP = 0.6  # `keep early` trains this share undecided in its first sifted epoch, down to 0;
# `keep late` from 0 up to it in the last epoch
INFOBATCH = "InfoBatch"
LOSSLESS_SHARE = 0.5  # a lossless candidate trains at most this share of plain's samples
RESULTS_ENV = "SMARTSIFT_SELECTION_RESULTS"
GAIN = "above"
"""What choices are compared on: each run's final less the train-less frontier at its own work
(the ``above`` measure), so that arms of unequal work compare fairly."""


@dataclass(frozen=True)
class Arm:
    """One loss-reuse run of a seed: how it chooses (``kind``), its keep and sampler settings.

    ``kind`` is one of :data:`CHOICES`, ``"Uniform"`` or ``"InfoBatch"`` (whose ``keep`` is
    ``1 - prune``, the share of below-mean samples kept); ``lossless`` marks a candidate for
    the lossless setting.

    Example:
        >>> Arm.choice("TopK", 0.3).name, Arm.choice("TopK", 0.3).policy(1000)
        ('TopK, keep=0.3', TopK(keep=0.3))
    """

    name: str
    kind: str
    keep: float
    anneal: float = 0.0
    max_age: int | None = 3
    lossless: bool = False

    def __post_init__(self) -> None:
        kinds = (*CHOICES, UNIFORM, INFOBATCH)
        if self.kind not in kinds:
            raise ValueError(
                f"Expected `kind` to be one of {kinds}, but got {self.kind!r}; name a choice "
                "this study runs."
            )
        if not 0.0 < self.keep <= 1.0:
            raise ValueError(f"Expected `keep` in (0, 1], but got {self.keep!r}.")

    @classmethod
    def choice(cls, kind: str, keep: float) -> Arm:
        """The arm of a choice (or ``Uniform``) at ``keep``, named ``"kind, keep=k"``."""
        return cls(f"{kind}, keep={keep:g}", kind, keep)

    def policy(self, history: int) -> ss.Policy:
        """The sampler's policy; ``history`` is the loss history of the relative policies."""
        if self.kind == UNIFORM:
            return ss.Uniform(keep=self.keep)
        if self.kind == "TopK":
            return ss.TopK(keep=self.keep)
        if self.kind == INFOBATCH:
            return ss.InfoBatch(prune=round(1.0 - self.keep, 6), history=history)
        return ss.RelativeProbabilistic(keep=self.keep, history=history)

    def reuse(self, labels: torch.Tensor, epochs: int) -> Reuse:
        """The sampler's settings for a run of ``epochs``; ``labels`` (the training set's)
        feed ``ClassNormalised``."""
        if self.kind == INFOBATCH:
            kwargs = ss.InfoBatch.reuse_kwargs(epochs=epochs)
            kwargs.pop("epochs")  # the run passes its own
            return Reuse(**kwargs)
        score: Any = "loss"
        if self.kind in ("change", "trend"):
            score = self.kind
        elif self.kind == "class":
            score = ss.ClassNormalised(labels)
        explore: Any = 0.0
        if self.kind == "explore":
            explore = EXPLORE
        elif self.kind in ("keep early", "keep late"):
            start, end = (RAMP, 0.0) if self.kind == "keep early" else (0.0, RAMP)
            explore = Ramp(start, end, epochs)
        return Reuse(max_age=self.max_age, anneal=self.anneal, score=score, explore=explore)


@dataclass(frozen=True)
class Ramp:
    """An exploration share by epoch, linear from ``start`` at epoch 1 (the first that decides)
    to ``end`` at the last epoch: a keep schedule for ``ReuseSampler(explore=...)``.

    Example:
        >>> [round(Ramp(0.6, 0.0, 4)(e), 2) for e in range(1, 4)]
        [0.6, 0.3, 0.0]
    """

    start: float
    end: float
    epochs: int

    def __call__(self, epoch: int) -> float:
        span = max(1, self.epochs - 2)
        return self.start + (self.end - self.start) * min(1.0, max(0, epoch - 1) / span)


ARMS: tuple[Arm, ...] = (
    *(Arm.choice(kind, k) for k in KEEPS for kind in (BASE, UNIFORM, *CHOICES[1:])),
    Arm("RelativeProbabilistic(keep=0.3), anneal=0.1", BASE, 0.3, anneal=0.1, lossless=True),
    Arm("RelativeProbabilistic(keep=0.4), anneal=0.1", BASE, 0.4, anneal=0.1, lossless=True),
    Arm("InfoBatch(prune=0.7)", INFOBATCH, 0.3, lossless=True),
    Arm("TopK, keep=0.4", "TopK", 0.4, lossless=True),
    Arm("change, keep=0.4", "change", 0.4, lossless=True),
    Arm("TopK, keep=0.4, max_age=None", "TopK", 0.4, max_age=None, lossless=True),
)
"""Every arm: the choices and ``Uniform`` at each keep, then the lossless candidates."""
NEVER_STALE = ARMS[-1]
NEVER_STALE_OF = next(
    a.name for a in ARMS[:-1] if a == dataclasses.replace(NEVER_STALE, name=a.name, max_age=3)
)  # the candidate the never-stale arm repeats


def _first_three(candidates: Sequence[Lossless]) -> list[Lossless]:
    return [c for c in candidates if c.name != NEVER_STALE.name]


def arms_for(lossless: bool | None = None) -> list[Arm]:
    """The arms, all or only the lossless candidates (True) or only the others (False)."""
    return [a for a in ARMS if lossless is None or a.lossless == lossless]


def train_labels(dataset: Any) -> torch.Tensor:
    """The class of every training sample: the last tensor of a ``TensorDataset``, else each
    sample's second field.

    Example:
        >>> from torch.utils.data import TensorDataset
        >>> train_labels(TensorDataset(torch.zeros(3, 2), torch.tensor([2, 0, 1]))).tolist()
        [2, 0, 1]
    """
    tensors = getattr(dataset, "tensors", None)
    if tensors is not None:
        return torch.as_tensor(tensors[-1]).long()
    return torch.tensor([int(dataset[i][1]) for i in range(len(dataset))])


# ----------------------------------------------------------------------------- running
@dataclass
class SeedRuns:
    """One seed of one task: every run's result, and each arm's plain run at matched work."""

    key: str
    seed: int
    results: list[RunResult]
    matched: dict[str, str] = field(default_factory=dict)  # arm -> its matched plain run

    def by_name(self) -> dict[str, RunResult]:
        return {r.name: r for r in self.results}


def _run(
    name: str,
    task: Task,
    setting: Setting,
    seed: int,
    epochs: int | None = None,
    arm: Arm | None = None,
    labels: torch.Tensor | None = None,
) -> TrainingRun:
    n = len(task.train_set)  # type: ignore[arg-type]
    policy = reuse = None
    if arm is not None:
        history = n if arm.kind == INFOBATCH else setting.history
        policy = arm.policy(history)
        labels = train_labels(task.train_set) if labels is None else labels
        reuse = arm.reuse(labels, epochs or setting.epochs)
    return TrainingRun(
        name,
        task,
        epochs=epochs or setting.epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        policy=policy,
        reuse=reuse,
        seed=seed,
        evals_per_epoch=setting.evals_per_epoch,
        schedule=setting.schedule,
        clock=time.process_time,
    )


def seed_runs(key: str, seed: int, smoke: bool, arms: Sequence[Arm] = ARMS) -> SeedRuns:
    """Every run of one task for one seed: plain, the control and the arms side by side, then
    the plain runs at the arms' matched work."""
    torch.set_num_threads(1)
    bench = BENCHES[key]
    task, setting = bench.build(smoke), bench.setting_for(smoke)
    labels = train_labels(task.train_set)
    runs = [_run(PLAIN, task, setting, seed)]
    controls = setting.control_epochs()
    runs += [_run(control_name(e, setting.epochs), task, setting, seed, e) for e in controls]
    runs += [_run(a.name, task, setting, seed, arm=a, labels=labels) for a in arms]
    results = train_side_by_side(runs)
    n = len(task.train_set)  # type: ignore[arg-type]
    matched: dict[str, str] = {}
    extra: dict[str, int] = {}
    for arm in arms:
        work = next(r for r in results if r.name == arm.name).samples_backpropagated / n
        name, epochs = matched_control(work, setting.epochs, controls)
        matched[arm.name] = name
        if name.endswith(MATCHED):
            extra[name] = epochs
    more = [_run(name, task, setting, seed, epochs) for name, epochs in sorted(extra.items())]
    results += train_side_by_side(more)
    return SeedRuns(key, seed, results, matched)


def _job(args: tuple[str, int, bool]) -> SeedRuns:
    return seed_runs(*args)


def run_all(
    tasks: Sequence[str], seeds: Sequence[int], smoke: bool, jobs: int
) -> dict[str, list[SeedRuns]]:
    """Every seed of every task, in ``jobs`` worker processes (1: in this process)."""
    work = [(k, s, smoke) for k in tasks for s in seeds]
    out: dict[str, list[SeedRuns]] = {k: [] for k in tasks}
    for runs in run_jobs(
        _job, work, jobs, done=lambda r: f"[selection] {r.key}, seed {r.seed} done"
    ):
        out[runs.key].append(runs)
    return out


# ----------------------------------------------------------------------------- analysis
@dataclass
class Measures:
    """One run of one seed, against that seed's train-less frontier."""

    final: float
    work: float
    frontier: float  # the frontier's metric at this run's work units
    above: float  # final less the frontier
    keep: float  # the decided keep (NaN for plain)
    matched_final: float = math.nan  # the plain run at the matched work (NaN: none)
    matched_work: float = math.nan


def measure_seed(seed: SeedRuns) -> dict[str, Measures]:
    runs = seed.by_name()
    plain = runs[PLAIN]
    n = plain.planned_samples // max(1, len(plain.epoch_ends))
    points = [(work_curve(r, 0.0, n)[-1], r.final) for name, r in runs.items() if on_frontier(name)]
    out = {}
    for name, r in runs.items():
        work = work_curve(r, 0.0, n)[-1]
        front = frontier_at(points, work)
        matched = runs.get(seed.matched.get(name, ""))
        out[name] = Measures(
            final=r.final,
            work=work,
            frontier=front,
            above=r.final - front,
            keep=r.decided_keep,
            matched_final=math.nan if matched is None else matched.final,
            matched_work=math.nan if matched is None else work_curve(matched, 0.0, n)[-1],
        )
    return out


@dataclass
class Summary:
    """Each run's measures over seeds (run name, then measure), and the seed spread."""

    per: dict[str, dict[str, list[float]]]
    spread: float

    def median(self, name: str, key: str) -> float:
        values = [v for v in self.per[name][key] if not math.isnan(v)]
        return float(statistics.median(values)) if values else math.nan

    def less(self, name: str, other: str, key: str = "final") -> list[float]:
        """``name``'s measure less ``other``'s, seed by seed."""
        return paired_differences(self.per[name][key], self.per[other][key])


def summarise(seeds: Sequence[SeedRuns]) -> Summary:
    per: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        for name, m in measure_seed(seed).items():
            rec = per.setdefault(name, {})
            for key, value in dataclasses.asdict(m).items():
                rec.setdefault(key, []).append(value)
    finals = per[PLAIN]["final"]
    return Summary(per, max(finals) - min(finals) if len(finals) > 1 else 0.0)


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else math.nan


def compare_word(difference: float, spread: float) -> str:
    """``difference`` against the seed spread, in a word.

    Example:
        >>> compare_word(0.01, 0.004), compare_word(-0.001, 0.004), compare_word(-0.01, 0.004)
        ('better', 'within the spread', 'worse')
    """
    if difference > spread:
        return "better"
    if difference < -spread:
        return "worse"
    return "within the spread"


def cross_task(wins: int, tasks: int = len(TASKS)) -> str:
    """The cross-task verdict from the number of tasks a choice won by more than the spread.

    Example:
        >>> cross_task(2), cross_task(1), cross_task(0)
        ('on both tasks', 'on one', 'on none')
    """
    if not 0 <= wins <= tasks:
        raise ValueError(f"Expected `wins` from 0 to {tasks} tasks, but got {wins!r}.")
    if wins == tasks:
        return "on both tasks" if tasks == 2 else "on every task"
    return "on none" if wins == 0 else "on one" if wins == 1 else f"on {wins}"


def lossless_share(work: float, plain_work: float) -> float:
    """A run's work as a share of plain's.

    Example:
        >>> lossless_share(6.0, 12.0)
        0.5
    """
    if not plain_work > 0:
        raise ValueError(f"Expected `plain_work` > 0 work units, but got {plain_work!r}.")
    return work / plain_work


def is_lossless(share: float, difference: float, spread: float) -> bool:
    """At most :data:`LOSSLESS_SHARE` of plain's work, and a final within plain's seed spread
    (or better): ``difference`` is the median paired final less plain's.

    Example:
        >>> is_lossless(0.45, -0.002, 0.004), is_lossless(0.45, -0.006, 0.004)
        (True, False)
        >>> is_lossless(0.55, 0.01, 0.004)
        False
    """
    return share <= LOSSLESS_SHARE and difference >= -spread


def best_choice(leads: Mapping[str, Sequence[float]]) -> str:
    """The choice with the largest mean lead over ``Uniform`` (one value per task and keep, in
    each task's seed spreads: see :func:`in_spreads`); ties go to the first.

    Example:
        >>> best_choice({"loss": [2.0, 1.0], "TopK": [3.0, -0.5]})
        'loss'
    """
    means = {c: statistics.fmean(v) for c, v in leads.items() if v}
    if not means:
        raise ValueError("Expected at least one choice with a lead, but got none.")
    return max(means, key=lambda c: (means[c], -list(means).index(c)))


def in_spreads(difference: float, spread: float) -> float:
    """A difference in units of the task's seed spread (of one point, 0.01, where the spread
    is 0: a single seed), so that tasks of different noise weigh alike.

    Example:
        >>> in_spreads(0.006, 0.004), in_spreads(0.02, 0.0)
        (1.5, 2.0)
    """
    return difference / (spread if spread > 0 else 0.01)


def _name(kind: str, keep: float) -> str:
    return Arm.choice(kind, keep).name


# ----------------------------------------------------------------------------- report
def arms_table(summary: Summary) -> str:
    """Every run: final, work units, gain over the frontier, plain at the matched work."""
    rows = []
    for name, rec in summary.per.items():
        above = summary.median(name, "above")
        rows.append(
            [
                name,
                fmt_spread([100 * v for v in rec["final"]]),
                fmt_spread(rec["work"], "{:.2f}"),
                "(plain)" if name.startswith(PLAIN) else fmt_spread(rec["keep"], "{:.3f}"),
                "(on it)"
                if on_frontier(name)
                else fmt_spread([100 * v for v in rec["above"]], "{:+.2f}"),
                "" if on_frontier(name) else "**yes**" if above > summary.spread else "no",
                "" if name.startswith(PLAIN) else fmt_spread(rec["matched_work"], "{:.0f}"),
                fmt_per_seed(summary.less(name, PLAIN)),
                fmt_per_seed(paired_differences(rec["final"], rec["matched_final"])),
            ]
        )
    headers = [
        "run",
        "final test accuracy (%)",
        "work units",
        "decided keep",
        "gain over the frontier at its work (points)",
        f"above by more than the spread ({fmt_points(summary.spread, False)})?",
        "plain at the matched work: epochs",
        "less plain, per seed (points)",
        "less plain at the matched work, per seed (points)",
    ]
    return markdown_table(headers, rows)


def versus_table(summary: Summary) -> str:
    """Per keep, each choice less ``Uniform`` and less ``loss``, paired per seed."""
    rows = []
    for keep in KEEPS:
        for kind in CHOICES:
            name = _name(kind, keep)
            if name not in summary.per:
                continue
            cells = [f"{keep:g}", f"`{kind}`"]
            for other in (UNIFORM, BASE):
                if other == kind:
                    cells += ["", "", ""]
                    continue
                d = summary.less(name, _name(other, keep), GAIN)
                cells += [
                    f"{100 * _median(d) + 0.0:+.2f}",
                    fmt_per_seed(d),
                    compare_word(_median(d), summary.spread),
                ]
            rows.append(cells)
    headers = [
        "keep",
        "choice",
        "less `Uniform`: median (points)",
        "per seed",
        f"against the spread ({fmt_points(summary.spread, False)})",
        "less `loss`: median (points)",
        "per seed",
        "against the spread",
    ]
    return markdown_table(headers, rows)


def figure(seed: SeedRuns, title: str, path: Path) -> Path:
    """One seed's curves against work units, with the train-less frontier."""
    plain = seed.by_name()[PLAIN]
    n = plain.planned_samples // max(1, len(plain.epoch_ends))
    curves = [dataclasses.replace(r, times=work_curve(r, 0.0, n)) for r in seed.results]
    fig = runs_figure(
        curves,
        scale=100.0,
        ylabel="test accuracy (%)",
        xlabel="work units (samples trained / training-set size)",
        title=f"{title}, seed {seed.seed}",
        reference=PLAIN,
    )
    from matplotlib import colormaps

    ax = fig.axes[0]
    light = colormaps["tab20"]
    palette: list[Any] = [f"C{i}" for i in range(10) if i != 7]  # C7 is the controls' grey
    colours = iter(palette + [light(2 * i + 1) for i in range(10) if i != 7] * 2)
    for line in ax.get_lines():
        label = str(line.get_label())
        if label.startswith(PLAIN + ","):
            line.set(color="grey", linestyle=":" if on_frontier(label) else "--", linewidth=1.0)
        else:
            line.set_color(next(colours))
            if "keep=0.5" in label:
                line.set_linestyle("--")
    ends = sorted((c.times[-1], 100 * c.final) for c in curves if on_frontier(c.name))
    ax.plot(
        [x for x, _ in ends], [y for _, y in ends], color="black", marker="s", linewidth=2.2,
        alpha=0.6, label="train-less frontier",
    )  # fmt: skip
    finals = [100 * c.final for c in curves]
    ax.set_ylim(min(finals) - 4, max(finals) + 1)  # the end game; the first epochs run low
    fig.set_size_inches(11, 5)
    fig.tight_layout()
    # Many curves: the legend goes below the axes, in columns (after the layout, which would
    # shrink the axes to make room for it; the saved figure's bounds include it).
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


@dataclass(frozen=True)
class Lossless:
    """A lossless candidate on one task: work share of plain's, final less plain's."""

    name: str
    share: float
    difference: list[float]  # per seed
    spread: float

    @property
    def median(self) -> float:
        return _median(self.difference)

    @property
    def lossless(self) -> bool:
        return is_lossless(self.share, self.median, self.spread)

    def describe(self) -> str:
        return (
            f"`{self.name}` {100 * self.share:.0f} % of plain's work, {fmt_points(self.median)} "
            f"(per seed {fmt_per_seed(self.difference)})"
        )


def lossless_of(summary: Summary) -> list[Lossless]:
    """Each lossless candidate that ran, against plain."""
    plain_work = summary.median(PLAIN, "work")
    return [
        Lossless(
            a.name,
            lossless_share(summary.median(a.name, "work"), plain_work),
            summary.less(a.name, PLAIN),
            summary.spread,
        )
        for a in arms_for(lossless=True)
        if a.name in summary.per
    ]


def lossless_table(key: str, candidates: Sequence[Lossless], summary: Summary) -> str:
    rows = [
        [
            BENCHES[key].title,
            f"`{c.name}`",
            f"{100 * c.share:.0f} %",
            f"{100 * c.median + 0.0:+.2f}",
            fmt_per_seed(c.difference),
            fmt_points(summary.spread, False),
            "**lossless**" if c.lossless else "no",
        ]
        for c in candidates
    ]
    headers = [
        "task",
        "candidate",
        "work, share of plain's",
        "final less plain's: median (points)",
        "per seed",
        "seed spread",
        f"lossless (<= {LOSSLESS_SHARE:.0%} of the work, within the spread)?",
    ]
    return markdown_table(headers, rows)


def leads_over_uniform(
    summaries: Mapping[str, Summary], spreads: bool = False
) -> dict[str, list[float]]:
    """Each choice's median paired gain over the frontier less ``Uniform``'s, per task and keep
    (in points, or
    with ``spreads`` in each task's seed spreads)."""
    leads: dict[str, list[float]] = {c: [] for c in CHOICES}
    for summary in summaries.values():
        for keep in KEEPS:
            for kind in CHOICES:
                if _name(kind, keep) in summary.per:
                    d = _median(summary.less(_name(kind, keep), _name(UNIFORM, keep), GAIN))
                    leads[kind].append(in_spreads(d, summary.spread) if spreads else d)
    return leads


def cross_task_table(summaries: Mapping[str, Summary]) -> tuple[str, dict[str, list[int]]]:
    """Per choice and keep: the tasks it beats ``loss`` on (and loses to it on)."""
    rows: list[list[str]] = []
    wins: dict[str, list[int]] = {}
    for kind in CHOICES[1:]:
        cells, wins[kind] = [f"`{kind}`"], []
        for keep in KEEPS:
            name, base = _name(kind, keep), _name(BASE, keep)
            present = [s for s in summaries.values() if name in s.per]
            won = sum(_median(s.less(name, base, GAIN)) > s.spread for s in present)
            lost = sum(_median(s.less(name, base, GAIN)) < -s.spread for s in present)
            wins[kind].append(won)
            per = ", ".join(
                f"{100 * _median(s.less(name, base, GAIN)) + 0.0:+.2f}" for s in present
            )
            note = f"; worse on {lost}" if lost else ""
            cells.append(f"{cross_task(won, len(present))} ({per}{note})")
        rows.append(cells)
    headers = ["choice", *(f"beats `loss` by more than the spread, keep {k:g}" for k in KEEPS)]
    return markdown_table(headers, rows), wins


def default_sentence(summaries: Mapping[str, Summary], wins: Mapping[str, list[int]]) -> str:
    """Which choice is best overall, and whether to make it the default, from the numbers."""
    leads = leads_over_uniform(summaries, spreads=True)
    points = leads_over_uniform(summaries)
    best = best_choice(leads)
    text = (
        f"**Best overall:** `{best}`, with the largest mean lead over `Uniform` across tasks "
        "and keeps, each in its task's seed spreads (mean over tasks and keeps: "
        + ", ".join(
            f"`{c}` {statistics.fmean(v):+.2f} spreads ({fmt_points(statistics.fmean(points[c]))})"
            for c, v in leads.items()
            if v
        )
        + "). "
    )
    tasks = len(summaries)
    if best == BASE:
        return text + f"`{BASE}` stays the default: no other choice leads it."
    if max(wins[best]) >= tasks:
        return text + (
            f"It beats `{BASE}` by more than the seed spread on every task at some keep: "
            f"make `{best}` the default."
        )
    return text + (
        f"It does not beat `{BASE}` by more than the seed spread on every task at any keep: "
        f"`{BASE}` stays the default."
    )


def report_task(key: str, seeds: Sequence[SeedRuns], img_dir: Path) -> tuple[str, Summary]:
    summary = summarise(seeds)
    bench = BENCHES[key]
    image = figure(seeds[0], bench.title, img_dir / f"selection_{key}.png")
    text = [
        f"### {bench.title}",
        f"{bench.about} Setting: {bench.setting_for(False).epochs} epochs in the full run, "
        f"steps of {bench.setting_for(False).batch_size} samples. Seed spread (range of "
        f"plain's final): {fmt_points(summary.spread, False)}.",
        arms_table(summary),
        "Each choice less `Uniform` (the same sampler keeping a random subset of the same "
        "size) and less `loss`, paired per seed, in gain over the train-less frontier at each "
        "run's own work (so that a run that trains more, as `explore` and the keep schedules "
        "do, is judged at its work; for runs of equal work it is the difference of the finals):",
        versus_table(summary),
        f"![{bench.title}: accuracy against work units](img/{image.name})",
    ]
    return "\n\n".join(text), summary


def chance_target(keep: float, summaries: Mapping[str, Summary]) -> Target:
    """Some choice beats ``Uniform`` at ``keep`` by more than the spread on every task."""
    margins = {}
    for kind in CHOICES:
        name, twin = _name(kind, keep), _name(UNIFORM, keep)
        if all(name in s.per for s in summaries.values()):
            margins[kind] = [_median(s.less(name, twin, GAIN)) for s in summaries.values()]
    spreads = [s.spread for s in summaries.values()]
    best = max(margins, key=lambda c: min(d - s for d, s in zip(margins[c], spreads, strict=True)))
    met = all(d > s for d, s in zip(margins[best], spreads, strict=True))
    measured = "; ".join(
        f"{BENCHES[k].title}: `{best}` {fmt_points(d)} (spread {fmt_points(s, False)})"
        for k, d, s in zip(summaries, margins[best], spreads, strict=True)
    )
    winners = [c for c, m in margins.items() if all(d > s for d, s in zip(m, spreads, strict=True))]
    measured += "; met by " + (", ".join(f"`{c}`" for c in winners) or "none")
    return Target(
        f"A loss-reuse choice beats its random-subset control on both tasks, keep {keep:g} "
        "(median paired gain over the frontier at its own work)",
        "by more than the seed spread on each task",
        f"best: {measured}",
        met=met,
    )


def best_candidate(candidates: Sequence[Lossless]) -> Lossless:
    """The best lossless candidate: a lossless one with the least work, else the one whose
    median final is nearest plain's (or above it).

    Example:
        >>> a, b = Lossless("a", 0.45, [-0.01], 0.004), Lossless("b", 0.6, [0.0], 0.004)
        >>> best_candidate([a, b]).name
        'b'
    """
    if not candidates:
        raise ValueError("Expected at least one lossless candidate, but got none.")
    winners = [c for c in candidates if c.lossless]
    if winners:
        return min(winners, key=lambda c: c.share)
    return max(candidates, key=lambda c: c.median)


def lossless_sentence(key: str, candidates: Sequence[Lossless], spread: float) -> str:
    """On one task: the lossless candidates, or plainly that there are none, with figures."""
    winners = [c for c in candidates if c.lossless]
    best = best_candidate(candidates)
    title = BENCHES[key].title
    if winners:
        return (
            f"On {title}: lossless "
            + "; ".join(c.describe() for c in winners)
            + f" (spread {fmt_points(spread, False)}); the least work: `{best.name}`."
        )
    return (
        f"On {title}: **no candidate is lossless** (at most {LOSSLESS_SHARE:.0%} of plain's "
        f"work and within the spread, {fmt_points(spread, False)}); the nearest to plain's final: "
        f"{best.describe()}."
    )


def lossless_target(key: str, candidates: Sequence[Lossless], spread: float) -> Target:
    winners = [c for c in candidates if c.lossless]
    shown = winners or list(candidates)
    return Target(
        f"Lossless loss reuse on {BENCHES[key].title}",
        f">= {1 - LOSSLESS_SHARE:.0%} of plain's work saved, final within plain's seed spread",
        ("lossless: " if winners else "none lossless: ")
        + "; ".join(c.describe() for c in shown)
        + f" (spread {fmt_points(spread, False)})",
        met=bool(winners),
    )


def load_results(path: Path) -> tuple[dict[str, list[SeedRuns]], float]:
    """The measurements a run saved (see :data:`RESULTS_ENV`) and its minutes of training."""
    with open(path, "rb") as f:
        results, minutes = pickle.load(f)
    return results, minutes


def run(smoke: bool = False, img_dir: Path | None = None, jobs: int | None = None) -> Section:
    """Trains every run of every seed of both tasks and returns the report's section."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    seeds = SEEDS[:1] if smoke else SEEDS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    saved = os.environ.get(RESULTS_ENV)
    try:
        if saved and Path(saved).is_file():
            results, minutes = load_results(Path(saved))
        else:
            results = run_all(TASKS, seeds, smoke, jobs)
            minutes = (time.perf_counter() - start) / 60
            if saved:
                with open(saved, "wb") as f:
                    pickle.dump((results, minutes), f)
    finally:
        torch.set_num_threads(threads)
    shown: list[int] = [s.seed for s in results[TASKS[0]]]
    titles = ", ".join(BENCHES[k].title for k in TASKS)
    intro = [
        "Which choice of samples makes loss reuse work, and is there a setting that saves half "
        f"of plain's work without losing accuracy? Two tasks ({titles}), "
        "each in its full setting (AdamW, a cosine schedule following the data: a reuse "
        "run's schedule ends where its training ends). Per seed, from the same weights in "
        "the same first data order, interleaved: plain; the train-less control (plain at "
        "about 0.35x, 0.5x and 0.7x of the epochs, each with its own complete schedule); at "
        f"keep {' and '.join(f'{k:g}' for k in KEEPS)}, loss-reuse arms with `max_age=3`: "
        "`loss` (`RelativeProbabilistic(keep=k)` on the last loss, the baseline), `Uniform` "
        "(`Uniform(keep=k)`, a fresh random subset each epoch: the control for the choice "
        "itself), `TopK` (`TopK(keep=k)`, a hard cut), `change` (`RelativeProbabilistic` on "
        '|last - previous| loss, `score="change"`), `trend` (on last - previous, '
        '`score="trend"`: rising losses first), `class` (`RelativeProbabilistic` on '
        "the loss over its class's median, `score=ss.ClassNormalised(labels)`), `explore` "
        f"(`loss` with a random {EXPLORE:.0%} of the decided candidates trained undecided, "
        f"`explore={EXPLORE:g}`), `keep early` and `keep late` (`loss` with an exploration "
        f"share ramping from {RAMP:g} to 0 over the run, or from 0 to {RAMP:g}: keep "
        "schedules); the lossless candidates "
        + ", ".join(f"`{a.name}`" for a in arms_for(lossless=True))
        + " (InfoBatch through `InfoBatch.reuse_kwargs`: `1/p` weights, `anneal=0.125`, "
        "`max_age=None`; its history is the training set); and after those, plain at the "
        "matched work of every arm (the whole number of epochs nearest its work units; a "
        "control run of that length serves).",
        "Work units = samples trained / training-set size (a plain epoch is 1; no arm has a "
        "scoring pass). The frontier joins the end points (work units, final accuracy) of "
        "plain and the control. The seed spread is the range of plain's final accuracy over "
        f"the seeds; median (min–max) over seeds {', '.join(map(str, shown))}; figures: seed "
        f"{shown[0]} (keep 0.5 arms dashed).",
    ]
    body = list(intro)
    summaries: dict[str, Summary] = {}
    for key in TASKS:
        text, summaries[key] = report_task(key, results[key], img_dir)
        body.append(text)
    table, wins = cross_task_table(summaries)
    body += [
        "### Across tasks",
        "Each choice against `loss` at the same keep (median paired gain over the frontier at "
        "its own work, per task: "
        + ", ".join(BENCHES[k].title for k in TASKS)
        + "), counted where it is better by more than that task's seed spread:",
        table,
        default_sentence(summaries, wins),
        f"**Lossless:** work as a share of plain's, final less plain's (paired per seed); "
        f"lossless when the share is at most {LOSSLESS_SHARE:.0%} and the median difference "
        "is within the seed spread or better.",
    ]
    candidates = {k: lossless_of(summaries[k]) for k in TASKS}
    body.append(
        lossless_table(TASKS[0], candidates[TASKS[0]], summaries[TASKS[0]])
        + "\n"
        + "\n".join(
            lossless_table(k, candidates[k], summaries[k]).split("\n", 2)[2] for k in TASKS[1:]
        )
    )
    body += [lossless_sentence(k, candidates[k], summaries[k].spread) for k in TASKS]
    body.append(
        f"`{NEVER_STALE.name}` repeats `{NEVER_STALE_OF}` with `max_age=None` (a skipped "
        "sample keeps its last score). The best of the three other candidates (lossless with "
        "the least work, else the median final nearest plain's): "
        + ", ".join(
            f"{BENCHES[k].title}: `{best_candidate(_first_three(candidates[k])).name}`"
            for k in TASKS
        )
        + "."
    )
    body.append(f"The study's training took {minutes:.1f} min of wall time.")
    targets = [chance_target(k, summaries) for k in KEEPS]
    targets += [lossless_target(k, candidates[k], summaries[k].spread) for k in TASKS]
    return Section(
        "Loss reuse: which selection decides best, and a lossless setting",
        "\n\n".join(body),
        tuple(targets),
    )


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv, smoke_figures="selection")


if __name__ == "__main__":
    main_as_module("benchmarks.selection")
