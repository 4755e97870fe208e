"""Loss reuse on the five tasks of the frontier: against chance, against training less, and
the hybrid mode against loss reuse at the same work.

Each task of :data:`benchmarks.frontier.BENCHES` trains in its own full setting (the same
model, data, step size, schedule and sift delay as the frontier benchmark), for seeds 0, 1 and
2; per seed, from the same initial weights in the same first data order, interleaved:

- ``plain`` at the full budget, and the train-less control: plain at about 0.35x, 0.5x and
  0.7x of the epochs (:data:`benchmarks.frontier.FRACTIONS`), each with its own complete
  schedule;
- loss reuse (:class:`smartsift.ReuseSampler`, ``Reuse()``: ``max_age=3``) deciding with
  ``RelativeProbabilistic(keep=k)``, for k = 0.3 and 0.5;
- its random-subset control, the same sampler with ``Uniform(keep=k)`` (repeated random
  sampling) at the same k;
- the hybrid mode, ``Reuse(hybrid=True)`` with ``RelativeProbabilistic(keep=k)``: the first
  ``delay_epochs`` of the setting train whole, then the samples the sampler cannot decide
  (never scored, or stale) go through the scoring pass and are sifted by the same policy;
- after those, plain at the matched work of each arm: the whole number of epochs nearest its
  work units (:func:`benchmarks.reuse_study.matched_epochs`; a control run of that length
  serves).

Work units = (samples trained + samples scored x F/T) / training-set size, with F/T measured
on the task (:func:`benchmarks.frontier.measure_costs`): the hybrid arms pay their scoring
pass, the others score nothing (a plain epoch is 1).

Reported per task: every arm's final metric, work units and gain over the train-less frontier
at its work, against the seed spread (the range of plain's final metric over seeds); per keep,
loss reuse less its Uniform twin, seed by seed (:func:`paired_differences`); the hybrid arm
less loss reuse at the same work, the loss-reuse curve interpolated through its own arms'
(work, final) points and plain's end point, seed by seed (:func:`reuse_curve_at`); each arm
against plain at its matched work; and a figure (seed 0). Then a summary over the tasks and
the targets.

Run it from the repository root (``python -m benchmarks.reuse_tasks [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only reuse_tasks``) or call :func:`run`. With the environment
variable ``SMARTSIFT_REUSE_TASKS_RESULTS`` naming a file, the measurements are saved there,
and a later run with the file present renders the report from them without training.
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
    fmt_spread,
    main_as_module,
    markdown_table,
    run_jobs,
)
from benchmarks.frontier import (
    BENCHES,
    FRACTIONS,
    PLAIN,
    Bench,
    Costs,
    control_name,
    frontier_at,
    measure_costs,
    work_curve,
)
from benchmarks.harness import Reuse, RunResult, TrainingRun, runs_figure, train_side_by_side
from benchmarks.reuse_study import matched_control, on_frontier, paired_differences

__all__ = [
    "ARMS",
    "KEEPS",
    "Arm",
    "Paired",
    "arms_for",
    "chance_pairs",
    "hybrid_pairs",
    "reuse_curve_at",
    "run",
    "seed_runs",
    "tasks_above",
]

SEEDS = (0, 1, 2)
KEEPS = (0.3, 0.5)
KINDS = ("reuse", "uniform", "hybrid")
RESULTS_ENV = "SMARTSIFT_REUSE_TASKS_RESULTS"
TARGET_CHANCE_TASKS = 3  # of the five tasks, at each keep
TARGET_HYBRID_TASKS = 2
TARGET_GAIN = 0.01  # +1.0 point of accuracy above the train-less frontier
GAIN_TASKS = ("mnist1d", "unsaturated")
# The longest first keeps two workers even.
ORDER = ("mnist1d", "redundant", "charlm_long", "charlm", "unsaturated")


@dataclass(frozen=True)
class Arm:
    """One run of a seed besides the plain ones: loss reuse (``kind="reuse"``), its random
    subset control (``"uniform"``) or the hybrid mode (``"hybrid"``), at a stated keep.

    Example:
        >>> arm = Arm("hybrid", 0.3)
        >>> arm.name, arm.reuse().hybrid, arm.reuse().max_age
        ('Hybrid: RelativeProbabilistic(keep=0.3)', True, 3)
        >>> Arm("uniform", 0.5).policy(1000)
        Uniform(keep=0.5)
    """

    kind: str
    keep: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(
                f"Expected `kind` to be one of {KINDS}, but got {self.kind!r}; pick one of them."
            )
        if not 0.0 < self.keep < 1.0:
            raise ValueError(
                f"Expected `keep` in (0, 1), but got {self.keep!r}; state the kept fraction."
            )

    @property
    def name(self) -> str:
        if self.kind == "uniform":
            return f"Reuse: Uniform(keep={self.keep:g})"
        prefix = "Hybrid" if self.kind == "hybrid" else "Reuse"
        return f"{prefix}: RelativeProbabilistic(keep={self.keep:g})"

    def policy(self, history: int) -> ss.Policy:
        """``Uniform(keep)`` for the control, ``RelativeProbabilistic(keep)`` otherwise."""
        if self.kind == "uniform":
            return ss.Uniform(keep=self.keep)
        return ss.RelativeProbabilistic(keep=self.keep, history=history)

    def reuse(self) -> Reuse:
        """The sampler's settings: ``Reuse()``, with ``hybrid=True`` for the hybrid mode."""
        return Reuse(hybrid=self.kind == "hybrid")


ARMS: tuple[Arm, ...] = tuple(Arm(kind, k) for k in KEEPS for kind in KINDS)
"""Every arm of every task: per keep, loss reuse, its Uniform twin, the hybrid mode."""

TASK_ARMS: dict[str, tuple[str, ...]] = {}
"""The arms a task runs, by name, where it runs fewer than :data:`ARMS` (none does now)."""


def arms_for(key: str) -> list[Arm]:
    """The arms task ``key`` runs: all of :data:`ARMS` unless :data:`TASK_ARMS` names fewer.

    Example:
        >>> len(arms_for("charlm")) == len(ARMS)
        True
    """
    names = TASK_ARMS.get(key)
    return [a for a in ARMS if names is None or a.name in names]


def _find(arms: Sequence[Arm], kind: str, keep: float) -> Arm | None:
    return next((a for a in arms if a.kind == kind and a.keep == keep), None)


def chance_pairs(arms: Sequence[Arm]) -> list[tuple[Arm, Arm]]:
    """Each loss-reuse arm with its Uniform twin at the same keep, by keep.

    Example:
        >>> [(a.name, u.name) for a, u in chance_pairs(ARMS)][0]
        ('Reuse: RelativeProbabilistic(keep=0.3)', 'Reuse: Uniform(keep=0.3)')
    """
    pairs = []
    for arm in (a for a in arms if a.kind == "reuse"):
        twin = _find(arms, "uniform", arm.keep)
        if twin is not None:
            pairs.append((arm, twin))
    return pairs


def hybrid_pairs(arms: Sequence[Arm]) -> list[tuple[Arm, Arm]]:
    """Each hybrid arm with the loss-reuse arm of the same keep, by keep.

    Example:
        >>> [(h.keep, r.kind) for h, r in hybrid_pairs(ARMS)]
        [(0.3, 'reuse'), (0.5, 'reuse')]
    """
    pairs = []
    for arm in (a for a in arms if a.kind == "hybrid"):
        base = _find(arms, "reuse", arm.keep)
        if base is not None:
            pairs.append((arm, base))
    return pairs


# ----------------------------------------------------------------------------- running
@dataclass
class SeedRuns:
    """One seed of one task: every run's result, and the plain run at each arm's matched
    work (arm name -> run name)."""

    key: str
    seed: int
    results: list[RunResult]
    matched: dict[str, str] = field(default_factory=dict)

    def by_name(self) -> dict[str, RunResult]:
        return {r.name: r for r in self.results}


def samples_per_epoch(result: RunResult) -> int:
    """The training-set size, from a run's planned samples and its epochs."""
    return result.planned_samples // max(1, len(result.epoch_ends))


def seed_runs(key: str, seed: int, smoke: bool, f_over_t: float) -> SeedRuns:
    """Every run of one task for one seed: plain, the control and the arms side by side, then
    plain at each arm's matched work (its length is the arm's measured work)."""
    torch.set_num_threads(1)
    bench = BENCHES[key]
    task, setting = bench.build(smoke), bench.setting_for(smoke)
    arms = arms_for(key)
    runs: list[TrainingRun] = [setting.run(PLAIN, task, seed)]
    runs += [
        setting.run(control_name(e, setting.epochs), task, seed, epochs=e)
        for e in setting.control_epochs()
    ]
    runs += [
        setting.run(a.name, task, seed, policy=a.policy(setting.history), reuse=a.reuse())
        for a in arms
    ]
    results = train_side_by_side(runs)
    n = len(task.train_set)  # type: ignore[arg-type]
    matched: dict[str, str] = {}
    extra: dict[str, int] = {}
    for arm, result in zip(arms, results[-len(arms) :], strict=True):
        work = work_curve(result, f_over_t, n)[-1]
        name, epochs = matched_control(work, setting.epochs, setting.control_epochs())
        matched[arm.name] = name
        if name not in extra and name not in {r.name for r in results}:
            extra[name] = epochs
    more = [setting.run(name, task, seed, epochs=e) for name, e in extra.items()]
    results += train_side_by_side(more)
    return SeedRuns(key, seed, results, matched)


def _job(args: tuple[str, int, bool, float]) -> SeedRuns:
    return seed_runs(*args)


def run_all(
    keys: Sequence[str], seeds: Sequence[int], smoke: bool, jobs: int, costs: Mapping[str, Costs]
) -> dict[str, list[SeedRuns]]:
    """Every seed of every task, in ``jobs`` worker processes (1: in this process)."""
    work = [(k, s, smoke, costs[k].f_over_t) for k in keys for s in seeds]
    out: dict[str, list[SeedRuns]] = {k: [] for k in keys}
    for runs in run_jobs(
        _job, work, jobs, done=lambda r: f"[reuse_tasks] {r.key}, seed {r.seed} done"
    ):
        out[runs.key].append(runs)
    for task_runs in out.values():
        task_runs.sort(key=lambda r: r.seed)
    return out


# ----------------------------------------------------------------------------- analysis
def reuse_curve_at(
    points: Sequence[tuple[float, float]], x: float, higher_is_better: bool = True
) -> tuple[float, str]:
    """The loss-reuse curve's metric at work ``x``: linear between its points ``(work,
    metric)``, and where ``x`` falls: ``""`` (between points), ``"below"`` or ``"beyond"``.

    Below the cheapest point, the line through the two cheapest is extended (flat if it does
    not improve with work): on a curve whose returns diminish this lies above the curve, so a
    run there is judged against more than the curve gives. Beyond the last point, its metric.

    Example:
        >>> pts = [(6.0, 0.90), (9.0, 0.93), (12.0, 0.94)]
        >>> [(round(v, 3), w) for v, w in (reuse_curve_at(pts, x) for x in (7.5, 5.0, 13.0))]
        [(0.915, ''), (0.89, 'below'), (0.94, 'beyond')]
        >>> reuse_curve_at([(6.0, 0.95), (9.0, 0.93)], 5.0)    # no better with work: flat
        (0.95, 'below')
    """
    pts = sorted(p for p in points if not math.isnan(p[0]) and not math.isnan(p[1]))
    if not pts or math.isnan(x):
        return math.nan, ""
    if x > pts[-1][0]:
        return pts[-1][1], "beyond"
    if x >= pts[0][0]:
        return frontier_at(pts, x), ""
    (x0, y0), (x1, y1) = pts[0], pts[min(1, len(pts) - 1)]
    slope = (y1 - y0) / (x1 - x0) if x1 > x0 else 0.0
    sign = 1.0 if higher_is_better else -1.0
    if sign * slope <= 0:
        return y0, "below"
    return y0 + slope * (x - x0), "below"


@dataclass
class Measures:
    """One run of one seed, against that seed's train-less frontier."""

    final: float
    work: float
    scoring: float  # the work units of its scoring pass
    above: float  # final less the frontier's metric at its work, in the better direction
    frontier: float  # the frontier's metric at its work
    decided_keep: float
    matched_final: float = math.nan  # plain at the matched work (NaN: none)
    matched_epochs: float = math.nan
    curve: float = math.nan  # a hybrid arm: the loss-reuse curve's metric at its work
    curve_where: str = ""


def measure_seed(seed: SeedRuns, f_over_t: float, arms: Sequence[Arm]) -> dict[str, Measures]:
    """Every run of one seed measured against the frontier; each hybrid arm also against
    the loss-reuse curve (its arms' end points and plain's)."""
    runs = seed.by_name()
    plain = runs[PLAIN]
    n = samples_per_epoch(plain)
    sign = 1.0 if plain.higher_is_better else -1.0
    ends = {name: (work_curve(r, f_over_t, n)[-1], r.final) for name, r in runs.items()}
    points = [ends[name] for name in runs if on_frontier(name)]
    reuse_pts = [ends[a.name] for a in arms if a.kind == "reuse" and a.name in ends]
    reuse_pts.append(ends[PLAIN])
    out = {}
    for name, r in runs.items():
        work = ends[name][0]
        at = frontier_at(points, work)
        matched = runs.get(seed.matched.get(name, ""))
        curve, where = math.nan, ""
        if name.startswith("Hybrid"):
            curve, where = reuse_curve_at(reuse_pts, work, plain.higher_is_better)
        out[name] = Measures(
            final=r.final,
            work=work,
            scoring=r.scored[-1] * f_over_t / n if r.scored else 0.0,
            above=sign * (r.final - at),
            frontier=at,
            decided_keep=r.decided_keep,
            matched_final=math.nan if matched is None else matched.final,
            matched_epochs=math.nan if matched is None else len(matched.epoch_ends),
            curve=curve,
            curve_where=where,
        )
    return out


@dataclass(frozen=True)
class Paired:
    """``arm`` less ``other`` seed by seed, in the better direction, against the seed spread.

    Example:
        >>> p = Paired("a", "b", 0.3, [0.02, 0.01, 0.03], 0.015)
        >>> p.median, p.beats, p.verdict
        (0.02, True, 'ahead by more than the seed spread')
    """

    arm: str
    other: str
    keep: float
    diffs: list[float]
    spread: float
    notes: tuple[str, ...] = ()  # per seed, where a hybrid's work fell on the reuse curve

    @property
    def median(self) -> float:
        """The median paired difference (NaN without a pair)."""
        return float(statistics.median(self.diffs)) if self.diffs else math.nan

    @property
    def beats(self) -> bool:
        """Whether ``arm`` is ahead by more than the seed spread."""
        return self.median > self.spread

    @property
    def verdict(self) -> str:
        if self.beats:
            return "ahead by more than the seed spread"
        if self.median < -self.spread:
            return "behind by more than the seed spread"
        if math.isnan(self.median):
            return "not comparable"
        return "no different, within the seed spread"


@dataclass
class TaskSummary:
    """One task: each run's measures over seeds (run, then measure), the seed spread, and
    the paired comparisons."""

    bench: Bench
    per: dict[str, dict[str, list[Any]]]
    spread: float
    chance: list[Paired]
    hybrid: list[Paired]
    arms: list[Arm]

    def median(self, name: str, key: str) -> float:
        values = [v for v in self.per[name][key] if not math.isnan(v)]
        return float(statistics.median(values)) if values else math.nan

    def best_reuse(self) -> tuple[str | None, float]:
        """The loss-reuse or hybrid arm furthest above the frontier (median seed), and by
        how much (a random subset is no loss reuse)."""
        above = {
            a.name: self.median(a.name, "above")
            for a in self.arms
            if a.kind != "uniform" and a.name in self.per
        }
        finite = {n: v for n, v in above.items() if not math.isnan(v)}
        if not finite:
            return None, math.nan
        best = max(finite, key=finite.__getitem__)
        return best, finite[best]


def summarise(bench: Bench, seeds: Sequence[SeedRuns], costs: Costs) -> TaskSummary:
    arms = arms_for(seeds[0].key)
    per: dict[str, dict[str, list[Any]]] = {}
    for seed in seeds:
        for name, m in measure_seed(seed, costs.f_over_t, arms).items():
            rec = per.setdefault(name, {})
            for key, value in dataclasses.asdict(m).items():
                rec.setdefault(key, []).append(value)
    finals = per[PLAIN]["final"]
    spread = max(finals) - min(finals) if len(finals) > 1 else 0.0
    sign = 1.0 if bench.higher_is_better else -1.0

    def diffs(a: Sequence[float], b: Sequence[float]) -> list[float]:
        return [sign * d for d in paired_differences(a, b)]

    chance = [
        Paired(a.name, u.name, a.keep, diffs(per[a.name]["final"], per[u.name]["final"]), spread)
        for a, u in chance_pairs(arms)
    ]
    hybrid = [
        Paired(
            h.name,
            r.name,
            h.keep,
            diffs(per[h.name]["final"], per[h.name]["curve"]),
            spread,
            tuple(per[h.name]["curve_where"]),
        )
        for h, r in hybrid_pairs(arms)
    ]
    return TaskSummary(bench, per, spread, chance, hybrid, arms)


def tasks_above(pairs: Mapping[str, Sequence[Paired]], keep: float | None = None) -> list[str]:
    """The tasks where some pair (at ``keep``, or any keep) is ahead by more than the spread.

    Example:
        >>> up, flat = Paired("a", "b", 0.3, [0.05], 0.01), Paired("a", "b", 0.5, [0.0], 0.01)
        >>> tasks_above({"x": [up, flat], "y": [flat]}), tasks_above({"x": [up]}, keep=0.5)
        (['x'], [])
    """
    return [
        key
        for key, found in pairs.items()
        if any(p.beats for p in found if keep is None or p.keep == keep)
    ]


# ----------------------------------------------------------------------------- report
def _amount(bench: Bench, value: float, signed: bool = True) -> str:
    """A metric difference with its unit: ``+0.40 points`` or ``-0.012 nats``."""
    fmt = "{:+.2f}" if bench.higher_is_better else "{:+.3f}"
    text = (fmt if signed else fmt.replace("+", "")).format(bench.scale * value + 0.0)
    return f"{text} {bench.unit}"


def _values(bench: Bench, values: Sequence[float], signed: bool = False) -> str:
    finite = [bench.scale * v + 0.0 for v in values if not math.isnan(v)]
    fmt = "{:.2f}" if bench.higher_is_better else "{:.3f}"
    return fmt_spread(finite, fmt.replace("{:", "{:+") if signed else fmt) if finite else "n/a"


def _per_seed(bench: Bench, values: Sequence[float]) -> str:
    fmt = "{:+.2f}" if bench.higher_is_better else "{:+.3f}"
    return ", ".join(fmt.format(bench.scale * v + 0.0) for v in values) or "n/a"


def arms_table(summary: TaskSummary) -> str:
    """Every run: final metric, work units, the gain over the frontier at its work."""
    bench = summary.bench
    rows = []
    for name, rec in summary.per.items():
        above = summary.median(name, "above")
        verdict = (
            "(on it)"
            if on_frontier(name)
            else "n/a (cheaper than the cheapest control)"
            if math.isnan(above)
            else "**yes**"
            if above > summary.spread
            else "no"
        )
        keep = [k for k in rec["decided_keep"] if not math.isnan(k)]
        rows.append(
            [
                name,
                _values(bench, rec["final"]),
                fmt_spread(rec["work"], "{:.2f}"),
                fmt_spread(rec["scoring"], "{:.2f}") if any(rec["scoring"]) else "",
                fmt_spread(keep, "{:.3f}") if keep else "",
                _values(bench, rec["above"], signed=True),
                verdict,
            ]
        )
    spread = _amount(bench, summary.spread, signed=False)
    return markdown_table(
        [
            "run",
            f"final {bench.metric}",
            "work units",
            "of which scoring",
            "decided keep",
            f"above the train-less frontier at its work (spread {spread})",
            "above by more than the spread?",
        ],
        rows,
    )


def chance_table(summary: TaskSummary) -> str:
    """Per keep: loss reuse less its Uniform twin, seed by seed."""
    bench = summary.bench
    rows = [
        [
            f"{p.keep:g}",
            _values(bench, summary.per[p.arm]["final"]),
            _values(bench, summary.per[p.other]["final"]),
            _per_seed(bench, p.diffs),
            _amount(bench, p.median),
            "**yes**" if p.beats else "no: Uniform ahead" if p.median < -p.spread else "no",
        ]
        for p in summary.chance
    ]
    return markdown_table(
        [
            "keep",
            "loss reuse final",
            "Uniform final",
            "loss reuse less Uniform, per seed",
            "median",
            f"beats chance by more than the spread ({_amount(bench, summary.spread, False)})?",
        ],
        rows,
    )


def hybrid_table(summary: TaskSummary) -> str:
    """Per keep: the hybrid arm against the loss-reuse curve at its own work, seed by seed."""
    bench = summary.bench
    rows = []
    for p in summary.hybrid:
        rec = summary.per[p.arm]
        where = [w for w in p.notes if w]
        rows.append(
            [
                f"{p.keep:g}",
                fmt_spread(rec["work"], "{:.2f}"),
                _values(bench, rec["final"]),
                _values(bench, rec["curve"]),
                _per_seed(bench, p.diffs),
                _amount(bench, p.median),
                "**yes**" if p.beats else "no: loss reuse ahead" if p.median < -p.spread else "no",
                ", ".join(f"{w} in {where.count(w)}/{len(p.notes)}" for w in sorted(set(where)))
                or "within it",
            ]
        )
    return markdown_table(
        [
            "keep",
            "hybrid work units",
            "hybrid final",
            "loss-reuse curve at that work",
            "hybrid less the curve, per seed",
            "median",
            f"above by more than the spread ({_amount(bench, summary.spread, False)})?",
            "where its work falls on the curve",
        ],
        rows,
    )


def matched_table(summary: TaskSummary) -> str:
    """Each arm beside plain for the whole number of epochs nearest its work."""
    bench = summary.bench
    sign = 1.0 if bench.higher_is_better else -1.0
    rows = []
    for arm in summary.arms:
        rec = summary.per[arm.name]
        d = [sign * v for v in paired_differences(rec["final"], rec["matched_final"])]
        rows.append(
            [
                arm.name,
                fmt_spread(rec["work"], "{:.2f}"),
                fmt_spread(rec["matched_epochs"], "{:.0f}"),
                _values(bench, rec["matched_final"]),
                _per_seed(bench, d),
                _amount(bench, float(statistics.median(d))) if d else "n/a",
            ]
        )
    return markdown_table(
        [
            "arm",
            "work units",
            "plain at the matched work: epochs",
            "its final",
            "arm less it, per seed",
            "median",
        ],
        rows,
    )


def verdicts(summary: TaskSummary) -> list[str]:
    """Plain sentences from the numbers: against chance, the hybrid, the frontier."""
    bench = summary.bench
    spread = _amount(bench, summary.spread, signed=False)
    chance = "; ".join(
        f"at keep {p.keep:g}, loss reuse less Uniform is {_amount(bench, p.median)} (median "
        f"paired seed): {p.verdict}"
        for p in summary.chance
    )
    hybrid = "; ".join(
        f"at keep {p.keep:g}, the hybrid less loss reuse at its work is "
        f"{_amount(bench, p.median)}: {p.verdict}"
        for p in summary.hybrid
    )
    best, gain = summary.best_reuse()
    frontier = (
        f"the best loss-reuse arm, {best}, ends {_amount(bench, gain)} against the train-less "
        f"frontier at its work (median seed)"
        if best
        else "no loss-reuse arm falls within the frontier's range"
    )
    out = []
    if chance:
        out.append(f"**Against chance** (seed spread {spread}): {chance}.")
    if hybrid:
        out.append(f"**Hybrid against loss reuse at the same work:** {hybrid}.")
    out.append(f"**Against training less:** {frontier}.")
    return out


def figure(summary: TaskSummary, seed: SeedRuns, costs: Costs, path: Path) -> Path:
    """One seed's curves against work units, every arm, with the train-less frontier."""
    bench = summary.bench
    n = samples_per_epoch(seed.by_name()[PLAIN])
    curves = [dataclasses.replace(r, times=work_curve(r, costs.f_over_t, n)) for r in seed.results]
    styles: dict[str, dict[str, Any]] = {}
    for c in curves:
        if c.name.startswith(PLAIN + ","):
            styles[c.name] = {"color": "grey", "linestyle": ":" if on_frontier(c.name) else "--"}
        elif c.name.startswith("Reuse: Uniform"):
            styles[c.name] = {"linestyle": "--"}
    fig = runs_figure(
        curves,
        scale=bench.scale,
        ylabel=bench.metric,
        xlabel="work units ((samples trained + samples scored x F/T) / training-set size)",
        title=f"{bench.title}: loss reuse, seed {seed.seed}",
        reference=PLAIN,
        styles=styles,
    )
    ends = sorted((c.times[-1], bench.scale * c.final) for c in curves if on_frontier(c.name))
    ax = fig.axes[0]
    ax.plot(
        [x for x, _ in ends], [y for _, y in ends], color="black", marker="s", linewidth=2.2,
        alpha=0.6, label="train-less frontier",
    )  # fmt: skip
    finals = [bench.scale * c.final for c in curves]
    if bench.higher_is_better:  # the end game; the first epochs run low
        ax.set_ylim(min(finals) - 4, max(finals) + 1)
    else:
        span = max(finals) - min(finals)
        ax.set_ylim(min(finals) - 0.2 * span - 0.01, max(finals) + 2 * span + 0.05)
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.16), ncol=2, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    return path


def report_task(
    summary: TaskSummary, seeds: Sequence[SeedRuns], costs: Costs, smoke: bool, img_dir: Path
) -> str:
    bench = summary.bench
    setting = bench.setting_for(smoke)
    image = figure(summary, seeds[0], costs, img_dir / f"reuse_tasks_{bench.key}.png")
    fewer = (
        f" This task runs only {', '.join(a.name for a in summary.arms)}, to fit the time."
        if len(summary.arms) < len(ARMS)
        else ""
    )
    parts = [
        f"### {bench.title}",
        f"Setting: {setting.describe()}. Train-less control: plain at "
        f"{', '.join(str(e) for e in setting.control_epochs())} of {setting.epochs} epochs. "
        f"F/T = {costs.f_over_t:.3f} (F {1e6 * costs.scoring_s:.1f} us, T "
        f"{1e6 * costs.step_s:.1f} us per sample).{fewer}",
        arms_table(summary),
        "Against chance: loss reuse less its `Uniform` twin at the same keep, seed by seed "
        "(the final metric, in the better direction).",
        chance_table(summary),
        "The hybrid mode against loss reuse at the same work: the loss-reuse curve joins, seed "
        "by seed, the (work units, final) points of its own arms and plain's end point; "
        "below its cheapest point the line through the two cheapest is extended (flat where "
        "it does not improve with work).",
        hybrid_table(summary),
        "Each arm beside plain for the whole number of epochs nearest its work units (its own "
        "complete schedule; a control run of that length serves):",
        matched_table(summary),
        *verdicts(summary),
        f"![{bench.title}: loss reuse, metric against work units](img/{image.name})",
    ]
    return "\n\n".join(parts)


def summary_table(summaries: Mapping[str, TaskSummary]) -> str:
    """One row per task: the paired comparisons and the best arm against the frontier."""
    rows = []
    for s in summaries.values():
        b = s.bench
        cells = [b.title, _amount(b, s.spread, signed=False)]
        for keep in KEEPS:
            p = next((p for p in s.chance if p.keep == keep), None)
            cells.append("n/a" if p is None else _amount(b, p.median) + (" **yes**" * p.beats))
        for keep in KEEPS:
            p = next((p for p in s.hybrid if p.keep == keep), None)
            cells.append("n/a" if p is None else _amount(b, p.median) + (" **yes**" * p.beats))
        best, gain = s.best_reuse()
        cells.append(f"{best} {_amount(b, gain)}" if best else "n/a")
        rows.append(cells)
    headers = ["task", "seed spread"]
    headers += [f"loss reuse less Uniform, keep {k:g}" for k in KEEPS]
    headers += [f"hybrid less loss reuse at its work, keep {k:g}" for k in KEEPS]
    headers.append("best loss-reuse arm against the train-less frontier")
    return markdown_table(headers, rows)


def targets(summaries: Mapping[str, TaskSummary]) -> list[Target]:
    """The study's targets, each met or not from the numbers (median paired seed)."""
    out = []
    chance = {k: s.chance for k, s in summaries.items()}
    for keep in KEEPS:
        won = tasks_above(chance, keep)
        shown = "; ".join(
            f"{s.bench.key} {_amount(s.bench, p.median)} (spread "
            f"{_amount(s.bench, s.spread, False)})"
            for s in summaries.values()
            for p in s.chance
            if p.keep == keep
        )
        out.append(
            Target(
                f"Loss reuse beats its random-subset control (Uniform, same sampler) by more than "
                f"the seed spread, paired final metric, keep {keep:g}",
                f"on at least {TARGET_CHANCE_TASKS} of the {len(summaries)} tasks",
                f"{len(won)} ({', '.join(won) or 'none'}): {shown}",
                met=len(won) >= TARGET_CHANCE_TASKS,
            )
        )
    hybrid = {k: s.hybrid for k, s in summaries.items()}
    won = tasks_above(hybrid)
    shown = "; ".join(
        f"{s.bench.key} "
        + ", ".join(f"keep {p.keep:g} {_amount(s.bench, p.median)}" for p in s.hybrid)
        for s in summaries.values()
    )
    out.append(
        Target(
            "The hybrid mode ends above loss reuse at the same work (median paired difference "
            "greater than the seed spread, at either keep)",
            f"on at least {TARGET_HYBRID_TASKS} of the {len(summaries)} tasks",
            f"{len(won)} ({', '.join(won) or 'none'}): {shown}",
            met=len(won) >= TARGET_HYBRID_TASKS,
        )
    )
    gains = {k: summaries[k].best_reuse() for k in GAIN_TASKS if k in summaries}
    if gains:
        out.append(
            Target(
                "The best loss-reuse arm (loss reuse or hybrid) above the train-less frontier "
                "at its work (median seed), on MNIST-1D and on the still-improving task",
                f"at least +{100 * TARGET_GAIN:.1f} points on each",
                "; ".join(
                    f"{k}: {best} {_amount(summaries[k].bench, gain)}"
                    for k, (best, gain) in gains.items()
                ),
                met=all(not math.isnan(g) and g >= TARGET_GAIN for _, g in gains.values()),
            )
        )
    return out


def missed(found: Sequence[Target]) -> str:
    """A plain paragraph naming every missed target with its figures."""
    misses = [t for t in found if not t.met]
    if not misses:
        return "**Every target is met.**"
    return "**Missed:** " + " ".join(
        f"{t.name}: {t.goal}, but measured {t.measured}." for t in misses
    )


def _load_or_train(
    keys: Sequence[str], seeds: Sequence[int], smoke: bool, jobs: int
) -> tuple[dict[str, Costs], dict[str, list[SeedRuns]], float, bool]:
    saved = os.environ.get(RESULTS_ENV)
    if saved and Path(saved).is_file():
        with open(saved, "rb") as f:
            costs, results, minutes = pickle.load(f)
        return costs, results, minutes, True
    start = time.perf_counter()
    # F and T are measured in one process each, so a ratio is blurred by neither.
    measured = run_jobs(functools.partial(measure_costs, smoke=smoke), keys, jobs)
    costs = dict(zip(keys, measured, strict=True))
    results = run_all(keys, seeds, smoke, jobs, costs)
    minutes = (time.perf_counter() - start) / 60
    if saved:
        with open(saved, "wb") as f:
            pickle.dump((costs, results, minutes), f)
    return costs, results, minutes, False


def run(smoke: bool = False, img_dir: Path | None = None, jobs: int | None = None) -> Section:
    """Trains every seed of every task (or reads them back) and returns the report's section."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    seeds = SEEDS[:1] if smoke else SEEDS
    keys = [k for k in ORDER if k in BENCHES] + [k for k in BENCHES if k not in ORDER]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        costs, results, minutes, again = _load_or_train(keys, seeds, smoke, jobs)
    finally:
        torch.set_num_threads(threads)
    summaries = {k: summarise(BENCHES[k], results[k], costs[k]) for k in BENCHES}
    found = targets(summaries)
    intro = [
        "Does loss reuse choose well, and does it beat training less, beyond the demo's task? "
        "Each of the five tasks of the frontier benchmark, in its full setting (the same model, "
        "data, step size, schedule and sift delay), for seeds "
        f"{', '.join(map(str, seeds))}; per seed, from the same weights in the same first data "
        "order, interleaved: plain; the train-less control, plain at about "
        f"{', '.join(f'{f:g}x' for f in FRACTIONS)} of the epochs, each with its own complete "
        "schedule; loss reuse (`ReuseSampler`, `max_age=3`) deciding with "
        "`RelativeProbabilistic(keep=k)` (the task's history); its random-subset control, the "
        "same sampler with `Uniform(keep=k)` (repeated random sampling); and the hybrid mode "
        "(`Reuse(hybrid=True)`: after the setting's sift delay, the samples the sampler cannot "
        "decide, never scored or stale, go through the scoring pass and are sifted by the same "
        f"policy), each at k = {' and '.join(f'{k:g}' for k in KEEPS)}. After those, plain at "
        "the matched work of each arm.",
        "Work units = (samples trained + samples scored x F/T) / training-set size (a plain "
        "epoch is 1), F/T measured on each task by `ss.profile`: the hybrid arms pay their "
        "scoring pass, the others score nothing. The train-less frontier joins the end points "
        "(work, final metric) of plain and its control. The seed spread is the range of "
        "plain's final metric over seeds; a difference counts only beyond it. Differences are "
        "in the better direction (positive: better; the language models' metric is a loss). "
        f"Median (min–max) over seeds; figures: seed {seeds[0]}.",
        "Summary over the tasks (median paired seed; **yes**: by more than the seed spread):",
        summary_table(summaries),
        missed(found),
    ]
    body = list(intro)
    for key in BENCHES:
        body.append(report_task(summaries[key], results[key], costs[key], smoke, img_dir))
    body.append(
        f"Training took {minutes:.1f} min of wall time"
        + (f" with {jobs} worker processes" if jobs > 1 else "")
        + (" (this report was rendered again from the saved measurements)." if again else ".")
    )
    return Section(
        "Loss reuse on the five tasks: against chance, training less and the hybrid mode",
        "\n\n".join(body),
        tuple(found),
    )


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv, smoke_figures="reuse-tasks")


if __name__ == "__main__":
    main_as_module("benchmarks.reuse_tasks")
