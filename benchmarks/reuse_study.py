"""The loss-reuse study: what to skip, how stale a score may be, how much to anneal.

Loss reuse (:class:`smartsift.ReuseSampler`) decides each epoch, before loading, from the
per-sample losses the training steps recorded; it has no scoring pass, so its compute is
exactly the samples it trains. This study asks which variants of it beat the train-less
frontier (plain training for fewer epochs, each run with its own complete schedule), on the
MNIST-1D demo task and setting of :mod:`benchmarks.frontier` and on the same task with 20 % of
the training labels flipped (as :mod:`benchmarks.noise` flips them; test labels clean).

Per seed, from the same initial weights in the same first data order, interleaved: plain; the
train-less control (plain at about 0.35x, 0.5x and 0.7x of the epochs); and loss-reuse arms,
all ``RelativeProbabilistic(keep=0.5)`` unless named otherwise:

- what to skip: the last loss (``score="loss"``, ``max_age=3``: the baseline arm), the loss's
  change between its last two records (``"change"``), and the loss less a reference model's
  (``"reducible"``, RHO-LOSS; the reference model is a narrow ConvNet trained on a held-out
  tenth of the training set, see :func:`reference_losses`);
- how stale: ``max_age=1`` and ``max_age=None`` (never stale); the share of each epoch trained
  undecided (never scored, or stale) is the exploration budget this sets;
- ``rescale=True`` (``1/p`` weights), ``anneal=0.1`` (the last epochs on all data), and
  ``keep=0.3``;
- the control for the choice itself: the same sampler keeping a random subset each epoch,
  ``Uniform(keep=k)`` at each keep a loss-based arm of the same settings states (repeated
  random sampling), compared seed by seed with that arm (:func:`paired_differences`);

and, after those, the plain control at the matched work itself: for each loss-based arm that
has a Uniform twin, plain training for the whole number of epochs nearest the arm's work
units (:func:`matched_epochs`), with its own complete schedule (a control run of that length
serves if the study has one).

Compute is counted in work units: samples backpropagated / training-set size (a plain epoch is
1). The reducible arm is also charged its reference model (see :func:`reference_losses`).
Reported per arm: the final metric (clean test accuracy), the work units, the gain over the
frontier at the same work units with the seed spread (the range of plain's final metric over
seeds), the realised decided keep rate against the stated one, the share of each epoch
trained undecided, and, on the noisy task, the share of mislabeled samples among those
trained; then a verdict per question, from those numbers; per keep, the loss-based arm less
its Uniform twin, seed by seed, against the seed spread; and each such arm beside the
frontier at its work and the plain run at the matched work.

Run it from the repository root (``python -m benchmarks.reuse_study [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only reuse_study``) or call :func:`run`. With the environment
variable ``SMARTSIFT_REUSE_STUDY_RESULTS`` naming a file, the measurements are saved there, and
a later run with the file present renders the report from them without training.
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

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset, TensorDataset

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
from benchmarks.demo import ConvNet
from benchmarks.frontier import BENCHES, PLAIN, Setting, control_name, frontier_at, work_curve
from benchmarks.harness import Reuse, RunResult, Task, TrainingRun, runs_figure, train_side_by_side
from benchmarks.noise import NOISE, flip_labels

__all__ = [
    "ARMS",
    "TASKS",
    "Arm",
    "arms_for",
    "build_task",
    "matched_control",
    "matched_epochs",
    "paired_differences",
    "reference_losses",
    "run",
    "seed_runs",
    "uniform_pairs",
]

SEEDS = {"clean": (0, 1, 2), "noisy": (0, 1)}
KEEP = 0.5
HISTORY = 1000
REF_SHARE = 0.1  # the held-out slice of the training set the reference model trains on
REF_WIDTH = 16
REF_EPOCHS = 40
SMOKE_REF = (4, 2)  # width and epochs of the smoke setting's reference model
FORWARD_SHARE = 1 / 3  # a forward pass's share of a training step's arithmetic
KEEP_TOLERANCE = 0.02
TASKS = ("clean", "noisy")
BASE = "loss"
RESULTS_ENV = "SMARTSIFT_REUSE_STUDY_RESULTS"
UNIFORM = "Uniform"
MATCHED = "matched work"  # in the name of a plain run trained for an arm's work units


@dataclass(frozen=True)
class Arm:
    """One loss-reuse run of a seed: its sampler's settings, its stated keep rate, and whether
    it keeps a random subset (``Uniform``) instead of choosing by score.

    Example:
        >>> Arm("Uniform", Reuse(max_age=3), uniform=True).policy()
        Uniform(keep=0.5)
    """

    name: str
    reuse: Reuse
    keep: float = KEEP
    uniform: bool = False

    @property
    def uses_reference(self) -> bool:
        return self.reuse.score == "reducible" and not self.uniform

    def policy(self) -> ss.Policy:
        """The sampler's policy: ``Uniform(keep)``, or ``RelativeProbabilistic(keep)``."""
        if self.uniform:
            return ss.Uniform(keep=self.keep)
        return ss.RelativeProbabilistic(keep=self.keep, history=HISTORY)


ARMS: tuple[Arm, ...] = (
    Arm(BASE, Reuse(max_age=3)),
    Arm("change", Reuse(max_age=3, score="change")),
    Arm("reducible", Reuse(max_age=3, score="reducible")),
    Arm("max_age=1", Reuse(max_age=1)),
    Arm("max_age=None", Reuse(max_age=None)),
    Arm("rescale", Reuse(max_age=3, rescale=True, max_weight=None)),  # unbounded 1/p
    Arm("anneal=0.1", Reuse(max_age=3, anneal=0.1)),
    Arm("keep=0.3", Reuse(max_age=3), keep=0.3),
    Arm(UNIFORM, Reuse(max_age=3), uniform=True),
    Arm(f"{UNIFORM}, keep=0.3", Reuse(max_age=3), keep=0.3, uniform=True),
)
"""Every arm; the first is the baseline (``score="loss"``, ``max_age=3``, keep 0.5); the
``Uniform`` arms are the random-subset twins of ``loss`` and ``keep=0.3``."""

NOISY_ARMS = (BASE, "change", "reducible", UNIFORM)
"""The arms the noisy task runs: the learnability question is the one label noise asks, and
the baseline's random-subset twin."""


def arms_for(task: str) -> list[Arm]:
    """The arms a task runs: every arm on the clean task, the scores on the noisy one."""
    return [a for a in ARMS if task == "clean" or a.name in NOISY_ARMS]


def uniform_pairs(arms: Sequence[Arm]) -> list[tuple[Arm, Arm]]:
    """Each loss-based arm with its ``Uniform`` twin (the same sampler settings and keep), in
    the order of the twins.

    Example:
        >>> [(a.name, u.name) for a, u in uniform_pairs(ARMS)]
        [('loss', 'Uniform'), ('keep=0.3', 'Uniform, keep=0.3')]
    """
    pairs = []
    for twin in (a for a in arms if a.uniform):
        match = [a for a in arms if not a.uniform and a.reuse == twin.reuse and a.keep == twin.keep]
        if len(match) != 1:
            raise ValueError(
                f"Expected one loss-based arm with the settings and keep of `{twin.name}`, but "
                f"found {len(match)}: {[a.name for a in match]}. Give each Uniform arm exactly "
                "one loss-based twin."
            )
        pairs.append((match[0], twin))
    return pairs


# ----------------------------------------------------------------------------- tasks
class CountingLoss:
    """The per-sample cross-entropy of ``(ids, x, y)`` batches; counts, for the run's model
    only (not the warm-up's copies), the samples and the mislabeled ones it trains on."""

    def __init__(self, flipped: torch.Tensor) -> None:
        self.flipped = flipped
        self.model: torch.nn.Module | None = None
        self.trained = 0
        self.noisy = 0

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        ids, x, y = batch
        if model is self.model and torch.is_grad_enabled():
            self.trained += len(ids)
            self.noisy += int(self.flipped[ids].sum())
        return F.cross_entropy(model(x), y, reduction="none")

    @property
    def share(self) -> float:
        return self.noisy / self.trained if self.trained else math.nan


@functools.lru_cache(maxsize=2)
def _base(smoke: bool) -> Task:
    return BENCHES["mnist1d"].build(smoke)


def build_task(key: str, smoke: bool) -> tuple[Task, torch.Tensor]:
    """The demo task of :mod:`benchmarks.frontier`, clean or with :data:`NOISE` of its training
    labels flipped, with ``(ids, x, y)`` batches; returns it and the mask of flipped samples.

    Its ``loss_fn`` is a placeholder: each run gets its own :class:`CountingLoss`.
    """
    base = _base(smoke)
    x, y = base.train_set.tensors  # type: ignore[attr-defined]
    flipped = torch.zeros(len(y), dtype=torch.bool)
    if key == "noisy":
        y, flipped = flip_labels(y, NOISE, 10)
    task = dataclasses.replace(
        base,
        train_set=ss.IndexedDataset(TensorDataset(x, y)),
        loss_fn=CountingLoss(flipped),
        train_loss=None,
    )
    return task, flipped


def macs_per_sample(model: torch.nn.Module, sample: torch.Tensor) -> int:
    """The multiply-accumulates of one forward pass per sample, over the model's ``Conv1d``
    and ``Linear`` layers (the rest of a ConvNet's arithmetic is negligible).

    Example:
        >>> macs_per_sample(torch.nn.Linear(4, 3), torch.zeros(4))
        12
    """
    total = 0

    def count(layer: torch.nn.Module, _: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(layer, torch.nn.Conv1d):
            per_output = layer.in_channels // layer.groups * layer.kernel_size[0]
            total += out[0].numel() * per_output
        elif isinstance(layer, torch.nn.Linear):
            total += layer.in_features * layer.out_features

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv1d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    try:
        with torch.no_grad():
            model(sample.unsqueeze(0))
    finally:
        for hook in hooks:
            hook.remove()
    return total


@dataclass(frozen=True)
class Reference:
    """A reference model's per-sample losses and what they cost.

    Attributes:
        losses: by dataset index (NaN for the held-out slice the model trained on).
        cost: in work units: the model's training samples, plus its pass over the other
            samples at :data:`FORWARD_SHARE` of a training step each (forward only), weighed
            by its multiply-accumulates per sample relative to the main model's, over the
            training-set size.
        cpu_seconds: the CPU seconds its training and its pass took (one thread).
        accuracy: its own metric on the task's test set (how good a reference it is).
    """

    losses: np.ndarray
    cost: float
    cpu_seconds: float
    accuracy: float


def reference_losses(task: Task, setting: Setting, smoke: bool) -> Reference:
    """RHO-LOSS's reference losses: a narrow ConvNet trained on a held-out tenth of the
    training set, then its loss on every training sample.

    The held-out slice (a fixed random tenth) stays in the training set of every run, so its
    own samples get no reference (NaN: ``score="reducible"`` trains them undecided).
    """
    n = len(task.train_set)  # type: ignore[arg-type]
    held = torch.randperm(n, generator=torch.Generator().manual_seed(1234))[
        : max(1, round(REF_SHARE * n))
    ]
    width, epochs = SMOKE_REF if smoke else (REF_WIDTH, REF_EPOCHS)
    ref_task = dataclasses.replace(
        task,
        build_model=functools.partial(ConvNet, width=width),
        train_set=Subset(task.train_set, held.tolist()),
        evaluate=lambda model: 0.0,
    )
    run = TrainingRun(
        "reference",
        ref_task,
        epochs=epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        seed=0,
        evals_per_epoch=1,
        schedule="cosine",
        clock=time.process_time,
    )
    train_side_by_side([run])
    model = run.model.eval()
    losses = np.empty(n, dtype=np.float64)
    start = time.process_time()
    with torch.no_grad():
        for ids, x, y in DataLoader(task.train_set, batch_size=1024):
            losses[ids.numpy()] = F.cross_entropy(model(x), y, reduction="none").double().numpy()
    cpu = run.result.train_seconds + time.process_time() - start
    losses[held.numpy()] = np.nan
    samples = (epochs * held.numel() + FORWARD_SHARE * (n - held.numel())) / n
    sample = task.train_set[0][1]
    ratio = macs_per_sample(model, sample) / macs_per_sample(task.build_model(), sample)
    with torch.no_grad():
        accuracy = float(task.evaluate(model))
    return Reference(losses, ratio * samples, cpu, accuracy)


# ----------------------------------------------------------------------------- running
@dataclass
class SeedRuns:
    """One seed of one task: every run's result, and what the reuse runs' samplers did."""

    key: str
    seed: int
    results: list[RunResult]
    epoch_stats: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    noisy_share: dict[str, float] = field(default_factory=dict)
    reference_cost: float = 0.0  # work units (see Reference.cost)
    reference_cpu: float = 0.0  # CPU seconds
    reference_accuracy: float = math.nan  # its clean test accuracy
    matched: dict[str, str] = field(default_factory=dict)  # arm -> its matched plain run

    def by_name(self) -> dict[str, RunResult]:
        return {r.name: r for r in self.results}


def matched_epochs(work: float, full: int) -> int:
    """The whole number of plain epochs nearest ``work`` work units (halves round up), from 1
    to ``full``: the length of the plain run that matches a loss-reuse run's work.

    Example:
        >>> matched_epochs(6.86, 12), matched_epochs(5.5, 12), matched_epochs(0.2, 12)
        (7, 6, 1)
    """
    if full < 1:
        raise ValueError(f"Expected `full` to be a positive int of epochs, but got {full!r}.")
    if not math.isfinite(work) or work < 0:
        raise ValueError(
            f"Expected `work` to be a finite, non-negative number of work units, but got {work!r}."
        )
    return min(full, max(1, math.floor(work + 0.5)))


def matched_control(work: float, full: int, controls: Sequence[int]) -> tuple[str, int]:
    """The plain run at the matched work (see :func:`matched_epochs`) and its epochs: plain
    itself, the train-less control's run of that length, or a run of its own to train.

    Example:
        >>> matched_control(6.86, 12, [4, 6, 8])
        ('plain, 7/12 epochs, matched work', 7)
        >>> matched_control(7.9, 12, [4, 6, 8])
        ('plain, 8/12 epochs (0.67x)', 8)
    """
    epochs = matched_epochs(work, full)
    if epochs == full:
        return PLAIN, epochs
    if epochs in controls:
        return control_name(epochs, full), epochs
    return f"{PLAIN}, {epochs}/{full} epochs, {MATCHED}", epochs


def on_frontier(name: str) -> bool:
    """Whether a run is a point of the train-less frontier: plain, or the control's runs."""
    return name == PLAIN or (name.startswith(PLAIN + ",") and not name.endswith(MATCHED))


def _run(
    name: str,
    task: Task,
    flipped: torch.Tensor,
    setting: Setting,
    seed: int,
    epochs: int | None = None,
    arm: Arm | None = None,
    reference: np.ndarray | None = None,
) -> tuple[TrainingRun, CountingLoss]:
    counter = CountingLoss(flipped)
    reuse = None
    policy = None
    if arm is not None:
        ref = None if reference is None else torch.from_numpy(reference)
        reuse = dataclasses.replace(arm.reuse, reference=ref)
        policy = arm.policy()
    run = TrainingRun(
        name,
        dataclasses.replace(task, loss_fn=counter),
        epochs=epochs or setting.epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        policy=policy,
        reuse=reuse,
        seed=seed,
        evals_per_epoch=1,
        schedule=setting.schedule,
        clock=time.process_time,
    )
    counter.model = run.model
    return run, counter


def seed_runs(key: str, seed: int, smoke: bool) -> SeedRuns:
    """Every run of one task for one seed: plain, the control, then every arm, side by side."""
    torch.set_num_threads(1)
    setting = BENCHES["mnist1d"].setting_for(smoke)
    task, flipped = build_task(key, smoke)
    arms = arms_for(key)
    ref = None
    if any(a.uses_reference for a in arms):
        ref = reference_losses(task, setting, smoke)
    named: list[tuple[str, int | None, Arm | None]] = [(PLAIN, None, None)]
    named += [(control_name(e, setting.epochs), e, None) for e in setting.control_epochs()]
    named += [(a.name, None, a) for a in arms]
    built = [
        _run(
            name,
            task,
            flipped,
            setting,
            seed,
            epochs,
            arm,
            ref.losses if ref is not None and arm is not None and arm.uses_reference else None,
        )
        for name, epochs, arm in named
    ]
    results = train_side_by_side([run for run, _ in built])
    # The plain runs at the matched work: their length is the arms' measured work, so they
    # train after the arms (from the same weights in the same first data order).
    n = len(task.train_set)  # type: ignore[arg-type]
    matched: dict[str, str] = {}
    extra: dict[str, int] = {}
    for arm, _ in uniform_pairs(arms):
        work = next(r for r in results if r.name == arm.name).samples_backpropagated / n
        name, epochs = matched_control(work, setting.epochs, setting.control_epochs())
        matched[arm.name] = name
        if name.endswith(MATCHED):
            extra[name] = epochs
    more = [_run(name, task, flipped, setting, seed, epochs) for name, epochs in extra.items()]
    results += train_side_by_side([run for run, _ in more])
    built += more
    stats = {
        run.name: [s.as_dict() for s in run.sampler.epoch_stats.values()]
        for run, _ in built
        if run.sampler is not None
    }
    shares = {run.name: counter.share for run, counter in built}
    out = SeedRuns(key, seed, results, stats, shares, matched=matched)
    if ref is not None:
        out.reference_cost, out.reference_cpu = ref.cost, ref.cpu_seconds
        out.reference_accuracy = ref.accuracy
    return out


def _job(args: tuple[str, int, bool]) -> SeedRuns:
    return seed_runs(*args)


def run_all(
    seeds: Mapping[str, Sequence[int]], smoke: bool, jobs: int
) -> dict[str, list[SeedRuns]]:
    """Every seed of every task (``seeds`` by task), in ``jobs`` worker processes (1: in this
    process), the tasks in the order given (the longest first keeps the workers even)."""
    keys = list(seeds)
    work = [(k, s, smoke) for k in keys for s in seeds[k]]
    out: dict[str, list[SeedRuns]] = {k: [] for k in keys}
    for runs in run_jobs(
        _job, work, jobs, done=lambda r: f"[reuse_study] {r.key}, seed {r.seed} done"
    ):
        out[runs.key].append(runs)
    return out


# ----------------------------------------------------------------------------- analysis
@dataclass
class Measures:
    """One run of one seed, against that seed's train-less frontier."""

    final: float
    work: float
    above: float  # final minus the frontier's metric at this run's work units
    above_cpu_charge: float  # the same, the reference model charged by its CPU seconds
    decided_keep: float
    undecided: float  # mean share of an epoch trained undecided (decided epochs only)
    stale: float  # of which stale
    noisy: float
    frontier: float  # the frontier's metric at this run's work units
    matched_final: float = math.nan  # the plain run at the matched work (NaN: none)
    matched_work: float = math.nan


def _curve(result: RunResult, n: int, offset: float) -> list[float]:
    return [offset + w for w in work_curve(result, 0.0, n)]


def _epoch_shares(stats: Sequence[dict[str, Any]]) -> tuple[float, float]:
    """Mean share of an epoch passed undecided, and stale, over the epochs that decide
    (after the first, annealing epochs left out)."""
    rows = [s for s in stats if s["epoch"] > 0 and not s["annealing"] and s["candidates"]]
    if not rows:
        return math.nan, math.nan
    passed = statistics.fmean(s["passed"] / s["candidates"] for s in rows)
    stale = statistics.fmean(s["stale"] / s["candidates"] for s in rows)
    return passed, stale


def reference_epochs(seed: SeedRuns) -> float:
    """The reference model's CPU seconds in plain epochs of the seed's plain run (NaN if the
    plain run has no time)."""
    plain = seed.by_name()[PLAIN]
    per_epoch = plain.train_seconds / max(1, len(plain.epoch_ends))
    return seed.reference_cpu / per_epoch if per_epoch > 0 else math.nan


def measure_seed(seed: SeedRuns) -> dict[str, Measures]:
    runs = seed.by_name()
    plain = runs[PLAIN]
    n = plain.planned_samples // max(1, len(plain.epoch_ends))
    offsets = {a.name: seed.reference_cost for a in ARMS if a.uses_reference}
    by_cpu = reference_epochs(seed)
    extra = {a.name: by_cpu - seed.reference_cost for a in ARMS if a.uses_reference}
    frontier = [r for name, r in runs.items() if on_frontier(name)]
    points = [(_curve(r, n, 0.0)[-1], r.final) for r in frontier]
    out = {}
    for name, r in runs.items():
        work = _curve(r, n, offsets.get(name, 0.0))[-1]
        undecided, stale = _epoch_shares(seed.epoch_stats.get(name, []))
        matched = runs.get(seed.matched.get(name, ""))
        out[name] = Measures(
            final=r.final,
            work=work,
            above=r.final - frontier_at(points, work),
            above_cpu_charge=r.final - frontier_at(points, work + extra.get(name, 0.0)),
            decided_keep=r.decided_keep,
            undecided=undecided,
            stale=stale,
            noisy=seed.noisy_share.get(name, math.nan),
            frontier=frontier_at(points, work),
            matched_final=math.nan if matched is None else matched.final,
            matched_work=math.nan if matched is None else _curve(matched, n, 0.0)[-1],
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


def summarise(seeds: Sequence[SeedRuns]) -> Summary:
    per: dict[str, dict[str, list[float]]] = {}
    for seed in seeds:
        for name, m in measure_seed(seed).items():
            rec = per.setdefault(name, {})
            for key, value in dataclasses.asdict(m).items():
                rec.setdefault(key, []).append(value)
    finals = per[PLAIN]["final"]
    return Summary(per, max(finals) - min(finals) if len(finals) > 1 else 0.0)


def _pct(values: Sequence[float]) -> str:
    return fmt_spread([100 * v for v in values], "{:.0f}", " %")


def budget_table(key: str, summary: Summary, arms: Sequence[Arm]) -> str:
    stated = {a.name: a.keep for a in arms}
    rows = []
    for name, rec in summary.per.items():
        keep = summary.median(name, "decided_keep")
        if name in stated:
            held = abs(keep - stated[name]) <= KEEP_TOLERANCE
            keep_text = f"{fmt_spread(rec['decided_keep'], '{:.3f}')} ({stated[name]:g})" + (
                "" if math.isnan(keep) else ": yes" if held else ": **no**"
            )
        else:
            keep_text = "(plain)"
        above = summary.median(name, "above")
        verdict = (
            "(on it)"
            if on_frontier(name)
            else "n/a"
            if math.isnan(above)
            else "**yes**"
            if above > summary.spread
            else "no"
        )
        row = [
            name,
            fmt_spread([100 * v for v in rec["final"]]),
            fmt_spread(rec["work"], "{:.2f}"),
            fmt_spread([100 * v for v in rec["above"]], "{:+.2f}"),
            verdict,
            keep_text,
            _pct(rec["undecided"]) if name in stated else "",
            _pct(rec["stale"]) if name in stated else "",
        ]
        if key == "noisy":
            row.append(fmt_spread([100 * v for v in rec["noisy"]], "{:.1f}", " %"))
        rows.append(row)
    headers = [
        "run",
        "final clean test accuracy (%)",
        "work units",
        f"above the frontier at its work (points; spread {fmt_points(summary.spread, False)})",
        "above by more than the spread?",
        "decided keep (stated): within 2 points?",
        "trained undecided per epoch",
        "of which stale",
    ]
    if key == "noisy":
        headers.append("mislabeled among trained")
    return markdown_table(headers, rows)


def paired_differences(a: Sequence[float], b: Sequence[float]) -> list[float]:
    """``a - b`` seed by seed (both over the same seeds, in the same order); a seed with a
    NaN on either side is left out.

    Example:
        >>> paired_differences([0.5, 0.75, 1.0], [0.25, math.nan, 1.5])
        [0.25, -0.5]
    """
    if len(a) != len(b):
        raise ValueError(
            f"Expected `a` and `b` over the same seeds, but got {len(a)} and {len(b)} values; "
            "pair the runs of each seed."
        )
    return [x - y for x, y in zip(a, b, strict=True) if not (math.isnan(x) or math.isnan(y))]


def compare(summary: Summary, name: str, base: str = BASE) -> tuple[float, str]:
    """The median over seeds of ``name``'s gain over the frontier less ``base``'s (paired by
    seed), and the word for it against the seed spread: better, worse or no different."""
    diffs = paired_differences(summary.per[name]["above"], summary.per[base]["above"])
    if not diffs:
        return math.nan, "not comparable"
    d = float(statistics.median(diffs))
    word = (
        "better than"
        if d > summary.spread
        else "worse than"
        if d < -summary.spread
        else "no different, within the seed spread, from"
    )
    return d, word


def _versus(summary: Summary, name: str, label: str) -> str:
    d, word = compare(summary, name)
    return (
        f"{label} is {word} the last loss ({fmt_points(d)} against the frontier, median "
        "paired seed)"
    )


@dataclass(frozen=True)
class Versus:
    """A loss-based arm less its ``Uniform`` twin, seed by seed: the final metric, and the
    gain over the frontier (each at its own work units); against the seed spread."""

    arm: str
    twin: str
    keep: float
    final: list[float]
    above: list[float]
    spread: float

    @property
    def median(self) -> float:
        """The median paired difference of the final metric (NaN without a pair)."""
        return float(statistics.median(self.final)) if self.final else math.nan

    @property
    def beats(self) -> bool:
        """Whether the loss-based choice beat chance by more than the seed spread."""
        return self.median > self.spread

    @property
    def verdict(self) -> str:
        """The loss-based choice against chance, in words, from the median and the spread."""
        if self.beats:
            return "beat chance by more than the seed spread"
        if self.median < -self.spread:
            return "lost to chance by more than the seed spread"
        return "was no different from chance, within the seed spread"


def versus_chance(summary: Summary, arm: Arm, twin: Arm) -> Versus:
    """``arm`` against its Uniform twin ``twin``, paired by seed (see :func:`uniform_pairs`)."""
    per, other = summary.per[arm.name], summary.per[twin.name]
    return Versus(
        arm.name,
        twin.name,
        arm.keep,
        paired_differences(per["final"], other["final"]),
        paired_differences(per["above"], other["above"]),
        summary.spread,
    )


def chance_table(versus: Sequence[Versus], summary: Summary) -> str:
    """Per keep: the loss-based arm, its Uniform twin, and the paired differences."""
    rows = []
    for v in versus:
        a, u = summary.per[v.arm], summary.per[v.twin]
        rows.append(
            [
                f"{v.keep:g}",
                f"`{v.arm}` / `{v.twin}`",
                fmt_spread([100 * x for x in a["final"]]),
                fmt_spread([100 * x for x in u["final"]]),
                f"{fmt_spread(a['work'], '{:.2f}')} / {fmt_spread(u['work'], '{:.2f}')}",
                fmt_per_seed(v.final),
                fmt_spread([100 * x for x in v.final], "{:+.2f}"),
                "**yes**" if v.beats else "no" if v.median >= -v.spread else "no: Uniform ahead",
                fmt_spread([100 * x for x in v.above], "{:+.2f}"),
            ]
        )
    headers = [
        "keep",
        "loss-based / Uniform",
        "loss-based final (%)",
        "Uniform final (%)",
        "work units (loss-based / Uniform)",
        "loss-based less Uniform, per seed (points)",
        "median (min–max)",
        f"beats chance by more than the spread ({fmt_points(summary.spread, False)})?",
        "loss-based less Uniform, each against the frontier at its own work (points)",
    ]
    return markdown_table(headers, rows)


def matched_table(names: Sequence[str], summary: Summary) -> str:
    """Each arm beside the frontier at its work and the plain run at the matched work."""
    rows = []
    for name in names:
        rec = summary.per[name]
        rows.append(
            [
                f"`{name}`",
                fmt_spread(rec["work"], "{:.2f}"),
                fmt_spread([100 * x for x in rec["final"]]),
                fmt_spread([100 * x for x in rec["frontier"]]),
                fmt_spread(rec["matched_work"], "{:.0f}"),
                fmt_spread([100 * x for x in rec["matched_final"]]),
                fmt_per_seed(paired_differences(rec["final"], rec["matched_final"])),
                fmt_spread([100 * x for x in rec["above"]], "{:+.2f}"),
            ]
        )
    headers = [
        "arm",
        "work units",
        "final (%)",
        "frontier at its work, interpolated (%)",
        "plain at the matched work: epochs",
        "its final (%)",
        "arm less that plain run, per seed (points)",
        "arm less the frontier (points)",
    ]
    return markdown_table(headers, rows)


def chance_verdicts(versus: Sequence[Versus], summary: Summary) -> list[str]:
    """A plain sentence per keep on the loss-based choice against chance, and one on the plain
    runs at the matched work."""
    spread = fmt_points(summary.spread, False)
    parts = []
    for v in versus:
        above = statistics.median(v.above) if v.above else math.nan
        parts.append(
            f"at keep {v.keep:g}, `{v.arm}` ends {fmt_points(v.median)} against `{v.twin}` (median "
            f"paired seed; per seed {fmt_per_seed(v.final)}): the loss-based choice {v.verdict} "
            f"({spread}); each against the frontier at its own work, the difference is "
            f"{fmt_points(above)}"
        )
    out = ["**Against chance (Uniform at the same keep):** " + "; ".join(parts) + "."]
    matched = []
    for v in versus:
        rec = summary.per[v.arm]
        d = paired_differences(rec["final"], rec["matched_final"])
        if d:
            epochs = summary.median(v.arm, "matched_work")
            matched.append(
                f"`{v.arm}` ({summary.median(v.arm, 'work'):.2f} work units) ends "
                f"{fmt_points(float(statistics.median(d)))} against plain for {epochs:.0f} "
                f"epoch{'' if epochs == 1 else 's'} (median paired seed), "
                f"{fmt_points(summary.median(v.arm, 'above'))} against the interpolated frontier"
            )
    if matched:
        out.append("**Plain at the matched work:** " + "; ".join(matched) + ".")
    return out


def verdicts(key: str, summary: Summary) -> list[str]:
    """A plain sentence per question, from the numbers."""
    spread = fmt_points(summary.spread, False)
    above = {
        n: summary.median(n, "above")
        for n in summary.per
        if not n.startswith(PLAIN) and not math.isnan(summary.median(n, "above"))
    }  # the plain run at the matched work is no arm
    winners = [n for n, v in above.items() if v > summary.spread]
    best = max(above, key=above.__getitem__) if above else None
    out = []
    if winners:
        out.append(
            f"**Beats training less:** {', '.join(f'`{w}`' for w in winners)} (by more than "
            f"the seed spread, {spread})."
        )
    elif best is not None:
        out.append(
            f"**No arm beats training less by more than the seed spread ({spread}).** The best, "
            f"`{best}`, ends {fmt_points(above[best])} against the frontier at its work units."
        )
    parts = [_versus(summary, "change", "The change of the loss")]
    parts.append(_versus(summary, "reducible", "the reducible loss"))
    noisy = ""
    if key == "noisy":
        noisy = (
            f" Mislabeled among the trained: last loss "
            f"{100 * summary.median(BASE, 'noisy'):.1f} %, change "
            f"{100 * summary.median('change', 'noisy'):.1f} %, reducible "
            f"{100 * summary.median('reducible', 'noisy'):.1f} % (plain "
            f"{100 * summary.median(PLAIN, 'noisy'):.1f} %)."
        )
    out.append("**Learnability vs loss:** " + "; ".join(parts) + "." + noisy)
    if "max_age=1" in summary.per:
        shares = ", ".join(
            f"{n}: {100 * summary.median(n, 'undecided'):.0f} %"
            for n in ("max_age=1", BASE, "max_age=None")
        )
        out.append(
            "**Staleness and the exploration budget:** "
            + _versus(summary, "max_age=1", "max_age=1")
            + "; "
            + _versus(summary, "max_age=None", "max_age=None (never stale)")
            + f". Share of each epoch trained undecided ({BASE} has max_age=3): {shares}."
        )
    if "rescale" in summary.per:
        out.append("**Rescaling:** " + _versus(summary, "rescale", "rescale=True") + ".")
    if "anneal=0.1" in summary.per:
        out.append("**Annealing:** " + _versus(summary, "anneal=0.1", "anneal=0.1") + ".")
    if "keep=0.3" in summary.per:
        out.append("**Keep 0.3:** " + _versus(summary, "keep=0.3", "keep=0.3") + ".")
    return out


def figure(seed: SeedRuns, title: str, path: Path) -> Path:
    """One seed's curves against work units, with the train-less frontier."""
    plain = seed.by_name()[PLAIN]
    n = plain.planned_samples // max(1, len(plain.epoch_ends))
    offsets = {a.name: seed.reference_cost for a in ARMS if a.uses_reference}
    curves = [
        dataclasses.replace(r, times=_curve(r, n, offsets.get(r.name, 0.0))) for r in seed.results
    ]
    fig = runs_figure(
        curves,
        scale=100.0,
        ylabel="clean test accuracy (%)",
        xlabel="work units (samples trained / training-set size)",
        title=f"{title}, seed {seed.seed}",
        reference=PLAIN,
    )
    ends = sorted((c.times[-1], 100 * c.final) for c in curves if on_frontier(c.name))
    ax = fig.axes[0]
    from matplotlib import colormaps

    light = colormaps["tab20"]  # after the ten colours, their light shades: no colour twice
    palette: list[Any] = [f"C{i}" for i in range(10)]
    colours = iter(palette + [light(2 * i + 1) for i in range(10)] * 2)
    for line in ax.get_lines():  # the plain controls' curves in grey
        label = str(line.get_label())
        if label.startswith(PLAIN + ","):
            line.set(color="grey", linestyle=":" if on_frontier(label) else "--", linewidth=1.0)
        else:
            line.set_color(next(colours))
    ax.plot(
        [x for x, _ in ends], [y for _, y in ends], color="black", marker="s", linewidth=2.2,
        alpha=0.6, label="train-less frontier",
    )  # fmt: skip
    finals = [100 * c.final for c in curves]
    ax.set_ylim(min(finals) - 4, max(finals) + 1)  # the end game; the first epochs run low
    ax.legend(loc="lower right", fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


TITLES = {
    "clean": "MNIST-1D, the demo's setting",
    "noisy": f"The same with {NOISE:.0%} of the training labels flipped",
}


def report_task(key: str, seeds: Sequence[SeedRuns], img_dir: Path) -> tuple[str, Summary]:
    summary = summarise(seeds)
    image = figure(seeds[0], TITLES[key], img_dir / f"reuse_study_{key}.png")
    arms = arms_for(key)
    cpu = [s.reference_cpu for s in seeds]
    epochs = [reference_epochs(s) for s in seeds]
    text = [
        f"### {TITLES[key]}",
        f"Arms: {', '.join(f'`{a.name}`' for a in arms)}. The reference model of `reducible` "
        "reaches a clean test accuracy of "
        f"{fmt_spread([100 * s.reference_accuracy for s in seeds], '{:.1f}', ' %')} and "
        f"costs {fmt_spread([s.reference_cost for s in seeds], '{:.3f}')} work units by its "
        f"arithmetic, included in its work. It took {fmt_spread(cpu, '{:.1f}')} CPU s, "
        f"{fmt_spread(epochs, '{:.2f}')} plain epochs' worth (a narrow model uses a CPU less "
        "efficiently than its arithmetic says); charged so, `reducible` would end "
        f"{fmt_points(summary.median('reducible', 'above_cpu_charge'))} against the frontier "
        "(median seed) instead of "
        f"{fmt_points(summary.median('reducible', 'above'))}.",
        budget_table(key, summary, arms),
        *verdicts(key, summary),
    ]
    versus = [versus_chance(summary, a, u) for a, u in uniform_pairs(arms)]
    if versus:
        text += [
            "Against chance: each loss-based arm less its `Uniform` twin (the same sampler, "
            "`max_age` and keep, a random subset of the decided samples each epoch), seed by "
            "seed, from the same weights in the same first data order; and each beside the "
            "frontier at its work and plain training for the nearest whole number of epochs "
            "(its own complete schedule; a control run of that length serves where there is "
            "one).",
            chance_table(versus, summary),
            matched_table([v.arm for v in versus], summary),
            *chance_verdicts(versus, summary),
        ]
    text.append(f"![{TITLES[key]}: accuracy against work units](img/{image.name})")
    return "\n\n".join(text), summary


def run(smoke: bool = False, img_dir: Path | None = None, jobs: int | None = None) -> Section:
    """Trains every run of every seed and returns the report's section."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    seeds = {k: v[:1] for k, v in SEEDS.items()} if smoke else SEEDS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    saved = os.environ.get(RESULTS_ENV)
    try:
        if saved and Path(saved).is_file():
            with open(saved, "rb") as f:
                results, minutes = pickle.load(f)
        else:
            results = run_all(seeds, smoke, jobs)
            minutes = (time.perf_counter() - start) / 60
            if saved:
                with open(saved, "wb") as f:
                    pickle.dump((results, minutes), f)
    finally:
        torch.set_num_threads(threads)
    setting = BENCHES["mnist1d"].setting_for(smoke)
    ref_width, ref_epochs = SMOKE_REF if smoke else (REF_WIDTH, REF_EPOCHS)
    intro = [
        "Which loss-reuse variants beat simply training less? MNIST-1D in the demo's setting "
        f"({setting.epochs} epochs, steps of {setting.batch_size} samples, AdamW lr "
        f"{setting.lr:g}, a cosine schedule following the data: a reuse run's schedule ends "
        "where its training ends), clean and with "
        f"{NOISE:.0%} of the training labels flipped (test labels clean). Per seed, from the "
        "same weights in the same first data order: plain; the train-less control, plain at "
        f"{', '.join(str(e) for e in setting.control_epochs())} of {setting.epochs} epochs, "
        "each with its own complete schedule; and loss-reuse arms, "
        f"`RelativeProbabilistic(keep={KEEP:g}, history={HISTORY})` with `max_age=3` unless "
        "named otherwise: `loss` (the last loss, the baseline), `change` (|last - previous| "
        "loss), `reducible` (last loss less a reference model's: RHO-LOSS), `max_age=1`, "
        "`max_age=None`, `rescale` (1/p weights), `anneal=0.1`, `keep=0.3`; and the control "
        "for the choice itself, the same sampler keeping a random subset each epoch "
        "(repeated random sampling), `Uniform` (keep 0.5) and `Uniform, keep=0.3`, each "
        "with `max_age=3` like its loss-based twin. After those, plain at the matched work: "
        "for `loss` and `keep=0.3`, plain training for the whole number of epochs nearest "
        "their work units. To keep the study short on 2 cores, the noisy task runs only "
        f"{', '.join(f'`{n}`' for n in NOISY_ARMS)} and {len(seeds['noisy'])} seed(s), and "
        "the runs evaluate once per epoch.",
        "Compute: work units = samples backpropagated / training-set size (a plain epoch is "
        "1); a reuse run has no scoring pass, so this count is exact. The `reducible` arm is "
        f"also charged its reference model, a ConvNet of width {ref_width} trained "
        f"{ref_epochs} epochs on a fixed random {REF_SHARE:.0%} of the training set (which "
        "stays in every run's training set; its own samples have no reference and are "
        "trained undecided): its training samples plus its pass over the other samples at a "
        "third of a training step each (forward only), weighed by its multiply-accumulates "
        "per sample relative to the main model's (counted layer by layer). The frontier "
        "joins the end points (work units, final accuracy) "
        "of plain and the control; a run is above it when its final accuracy beats the "
        "frontier's at the same work by more than the seed spread (the range of plain's final "
        f"accuracy over seeds). Median (min–max) over seeds "
        f"{', '.join(map(str, seeds['clean']))} (the noisy task: "
        f"{', '.join(map(str, seeds['noisy']))}); figures: seed {seeds['clean'][0]}. "
        "'Decided keep' is kept / decided over the run (what "
        "`keep` states); 'trained undecided' is the mean share of an epoch's candidates "
        "passed without a decision (never scored, stale, or without a finite score), over "
        "the epochs that decide (after the first, annealing epochs left out): the exploration "
        "budget. Arms are compared with the baseline by the paired difference of their gains "
        "over the frontier, against the seed spread.",
    ]
    body = list(intro)
    summaries = {}
    for key in TASKS:
        text, summaries[key] = report_task(key, results[key], img_dir)
        body.append(text)
    body.append(f"The study's training took {minutes:.1f} min of wall time.")
    clean = summaries["clean"]
    chance = {a.name for a in ARMS if a.uniform}  # a random subset is no loss reuse
    above = {
        n: clean.median(n, "above")
        for n in clean.per
        if not n.startswith(PLAIN) and n not in chance
    }
    best = max(above, key=lambda n: -math.inf if math.isnan(above[n]) else above[n])
    targets = [
        Target(
            "Loss reuse above the train-less frontier (MNIST-1D demo setting, work units, "
            "median seed)",
            "some arm by more than the seed spread",
            f"{best} {fmt_points(above[best])} (seed spread {fmt_points(clean.spread, False)})",
            met=above[best] > clean.spread,
        )
    ]
    pairs = sorted(uniform_pairs(arms_for("clean")), key=lambda pair: pair[0].keep)
    for v in (versus_chance(clean, a, u) for a, u in pairs):
        targets.append(
            Target(
                f"Loss-based reuse beats Uniform at the same keep (keep {v.keep:g}, MNIST-1D "
                "demo setting, paired final accuracy, median seed)",
                "by more than the seed spread",
                f"`{v.arm}` less `{v.twin}` {fmt_points(v.median)} "
                f"(per seed {fmt_per_seed(v.final)}; "
                f"seed spread {fmt_points(clean.spread, False)})",
                met=v.beats,
            )
        )
    return Section(
        "Loss reuse: what to skip, how stale, how much to anneal",
        "\n\n".join(body),
        tuple(targets),
    )


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv, smoke_figures="reuse-study")


if __name__ == "__main__":
    main_as_module("benchmarks.reuse_study")
