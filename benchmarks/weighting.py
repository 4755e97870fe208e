"""Weighting in loss reuse: does ``rescale=True`` cost accuracy, and which bound makes it safe?

``ReuseSampler(..., rescale=True)`` weights each kept decided sample by ``1 / p``, ``p`` its keep
probability, so that the epoch's expected gradient is that of all candidates. Under
``RelativeProbabilistic(keep=k)`` a low-loss sample has ``p = percentile ** beta``, tiny at a
low percentile, and the rare one kept gets a weight in the hundreds or thousands: one sample
then steers a whole step. This benchmark measures, on MNIST-1D, what that costs and which bound
on the weights (``max_weight``) removes the cost.

Per seed, from the same initial weights in the same first data order: plain training, and loss
reuse with ``RelativeProbabilistic(keep=k)`` for ``k`` in 0.3 and 0.5, ``anneal`` 0 and 0.125,
each with every weighting of :data:`WEIGHTINGS`: no rescaling; ``1/p`` unbounded
(``max_weight=None``); constant bounds; bounds tied to the keep rate (``1/keep``,
``2/keep``); and ``1/p`` self-normalised to a mean of 1 over the epoch's kept decided samples,
then capped. The task is clean, or has 20 % of its training labels flipped (test labels
clean). A weighting is judged against no rescaling of the same keep and anneal, paired by seed:
it is *safe* where no seed ends lower by more than the seed spread (the range of plain's final
accuracy over seeds).

Run it from the repository root (``python -m benchmarks.weighting [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only weighting``) or call :func:`run`. With the environment
variable ``SMARTSIFT_WEIGHTING_RESULTS`` naming a file, the measurements are saved there, and a
later run with the file present renders the report from them without training.

Example:
    >>> WEIGHTINGS[DEFAULT].max_weight(keep=0.25)
    4.0
    >>> paired_differences([0.90, 0.92], [0.91, 0.90])
    [-0.01, 0.02]
"""

from __future__ import annotations

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

import numpy as np
import torch
from torch.utils.data import TensorDataset

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
from benchmarks.demo import make_mnist1d, mnist1d_task
from benchmarks.harness import Reuse, Task, TrainingRun, train_side_by_side
from benchmarks.noise import NOISE, flip_labels
from smartsift.modes.reuse import ReuseSampler

__all__ = [
    "ANNEALS",
    "DEFAULT",
    "KEEPS",
    "OFF",
    "WEIGHTINGS",
    "Outcome",
    "Setting",
    "WeightedRun",
    "Weighting",
    "normalised_weights",
    "paired_differences",
    "run",
    "safe",
    "seed_runs",
    "seed_spread",
]

KEEPS = (0.3, 0.5)
ANNEALS = (0.0, 0.125)
TASKS = ("clean", "noisy")
SEEDS = {"clean": (0, 1, 2, 3, 4), "noisy": (0, 1, 2)}
PLAIN = "plain"
RESULTS_ENV = "SMARTSIFT_WEIGHTING_RESULTS"


@dataclass(frozen=True)
class Setting:
    """The data, the model and how every run trains."""

    num_samples: int  # 80 % of them for training
    width: int
    epochs: int
    batch_size: int
    lr: float
    history: int
    max_age: int


FULL = Setting(6_000, 64, 16, 64, 5e-3, 1000, 3)
SMOKE = Setting(600, 8, 3, 32, 5e-3, 100, 3)


@dataclass(frozen=True)
class Weighting:
    """How a loss-reuse run weights its kept decided samples.

    Attributes:
        name: the arm's name in the report.
        rescale: whether to weight at all (``ReuseSampler(rescale=...)``).
        cap: a constant bound on the weights (after normalising, with ``normalise``).
        per_keep: a bound of ``per_keep / keep``, ``keep`` the policy's stated keep rate.
        normalise: divide the ``1/p`` weights by their mean over the epoch's kept decided
            samples (so that it is 1) before bounding them by ``cap``.

    Example:
        >>> Weighting("cap 2/keep", per_keep=2.0).max_weight(keep=0.5)
        4.0
        >>> Weighting("normalised, cap 2", cap=2.0, normalise=True).max_weight(keep=0.5) is None
        True
    """

    name: str
    rescale: bool = True
    cap: float | None = None
    per_keep: float | None = None
    normalise: bool = False

    def __post_init__(self) -> None:
        if self.cap is not None and self.per_keep is not None:
            raise ValueError(
                f"Expected one bound for weighting {self.name!r}, but got cap={self.cap} and "
                f"per_keep={self.per_keep}; give one of them."
            )
        for arg, value in (("cap", self.cap), ("per_keep", self.per_keep)):
            if value is not None and not value >= 1:
                raise ValueError(
                    f"Expected `{arg}` of weighting {self.name!r} to be at least 1 (a weight "
                    f"bound below 1 would shrink every kept sample), but got {value!r}."
                )
        if not self.rescale and (self.cap, self.per_keep, self.normalise) != (None, None, False):
            raise ValueError(
                f"Weighting {self.name!r} has rescale=False: a bound or normalise would do "
                "nothing; drop them or set rescale=True."
            )

    def signature(self, keep: float) -> tuple[bool, float | None, bool, float | None]:
        """What the run at ``keep`` does: weightings with the same signature train alike.

        Example:
            >>> Weighting("cap 2", cap=2.0).signature(0.5) == WEIGHTINGS[DEFAULT].signature(0.5)
            True
        """
        return (
            self.rescale,
            self.max_weight(keep),
            self.normalise,
            self.cap if self.normalise else None,
        )

    def max_weight(self, keep: float) -> float | None:
        """The sampler's ``max_weight`` for a policy keeping ``keep`` (None: no bound there;
        a normalising weighting bounds after normalising, in the training step)."""
        if not self.rescale or self.normalise:
            return None
        if self.per_keep is not None:
            return self.per_keep / keep
        return self.cap


OFF = "no rescale"
UNBOUNDED = "1/p, unbounded"
DEFAULT = "cap 1/keep"
WEIGHTINGS: dict[str, Weighting] = {
    w.name: w
    for w in (
        Weighting(OFF, rescale=False),
        Weighting(UNBOUNDED),
        Weighting("cap 2", cap=2.0),
        Weighting(DEFAULT, per_keep=1.0),
        Weighting("cap 2/keep", per_keep=2.0),
        Weighting("normalised, cap 2", cap=2.0, normalise=True),
    )
}
"""Every weighting a seed runs, at every keep and anneal; :data:`DEFAULT` is the bound
proposed as ``ReuseSampler``'s default, ``max_weight = 1 / policy.expected_keep``."""


def normalised_weights(raw: np.ndarray, kept: np.ndarray, cap: float | None) -> np.ndarray:
    """Weights by dataset index: ``raw`` divided by its mean over ``kept`` (the epoch's kept
    decided indices), then bounded by ``cap``, for the kept; 1 for every other index.

    Example:
        >>> raw = np.array([1.0, 2.0, 6.0, 1.0])
        >>> normalised_weights(raw, np.array([1, 2]), cap=1.2).tolist()
        [1.0, 0.5, 1.2, 1.0]
    """
    out = np.ones_like(raw, dtype=np.float64)
    if kept.size:
        scaled = raw[kept] / raw[kept].mean()
        out[kept] = scaled if cap is None else np.minimum(scaled, cap)
    return out


class WeightedRun(TrainingRun):
    """A loss-reuse :class:`~benchmarks.harness.TrainingRun` weighted by a :class:`Weighting`.

    The sampler's own ``max_weight`` bounds the weights, except for a normalising weighting,
    which the training step applies (:func:`normalised_weights`, from the epoch's audit).
    The step records the largest weight it trained with.
    """

    def __init__(self, *args: Any, weighting: Weighting, keep: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.sampler is None:
            raise ValueError(
                f"Expected a loss-reuse run for weighting {weighting.name!r}, but got no "
                "`reuse`; pass reuse=Reuse(...) and a policy."
            )
        self.reuse_sampler: ReuseSampler = self.sampler
        self.reuse_sampler.max_weight = weighting.max_weight(keep)
        self.weighting = weighting
        self.largest_weight = 1.0
        self._audit = ss.SiftAudit(id_key=0) if weighting.normalise else None
        self.reuse_sampler.audit = self._audit
        self._normalised: tuple[int | None, np.ndarray] | None = None  # (epoch, by index)

    def _weights(self, ids: torch.Tensor) -> torch.Tensor:
        sampler = self.reuse_sampler
        if self._audit is None:
            return sampler.weights(ids)
        epoch = sampler.epoch
        if self._normalised is None or self._normalised[0] != epoch:
            raw = sampler.weights(torch.arange(self.n_train)).double().numpy()
            kept = np.empty(0, dtype=np.int64)
            if epoch in self._audit.epochs:
                kept = self._audit.epoch(epoch).kept
            self._normalised = (epoch, normalised_weights(raw, kept, self.weighting.cap))
        return torch.from_numpy(self._normalised[1][ids.numpy()]).float()

    def _step_loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        # The harness's loss-reuse step, with this run's weights (and their largest recorded).
        ids, *rest = batch
        per_sample = self.task.loss_fn(self.model, rest)
        self.reuse_sampler.table.update(ids, per_sample)
        weights = self._weights(ids).to(per_sample.dtype)
        self.largest_weight = max(self.largest_weight, float(weights.max()))
        return (per_sample * weights).mean(), int(ids.numel())


# ----------------------------------------------------------------------------- running
@dataclass(frozen=True)
class Outcome:
    """One run of one seed: what it ended at and what it did.

    Attributes:
        final: the final model's test accuracy (clean labels).
        work: samples backpropagated / training-set size (a plain epoch is 1).
        decided_keep: kept / decided over the run (what ``keep`` states); NaN for plain.
        largest_weight: the largest weight any training step applied.
    """

    task: str
    seed: int
    name: str
    keep: float
    anneal: float
    final: float
    work: float
    decided_keep: float
    largest_weight: float


@functools.lru_cache(maxsize=2)
def _data(num_samples: int) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    return make_mnist1d(num_samples)


def build_task(key: str, setting: Setting) -> Task:
    """MNIST-1D with a ConvNet of the setting's width, its training labels clean or with
    :data:`~benchmarks.noise.NOISE` of them flipped (the test labels stay clean)."""
    train, test = _data(setting.num_samples)
    if key == "noisy":
        x, y = train.tensors
        train = TensorDataset(x, flip_labels(y, NOISE, 10)[0])
    return mnist1d_task((train, test), setting.width)


def seed_runs(key: str, seed: int, smoke: bool) -> list[Outcome]:
    """Every run of one task for one seed, side by side: plain, then each keep, anneal and
    weighting."""
    torch.set_num_threads(1)
    setting = SMOKE if smoke else FULL
    task = build_task(key, setting)
    common: dict[str, Any] = dict(
        epochs=setting.epochs,
        batch_size=setting.batch_size,
        lr=setting.lr,
        seed=seed,
        evals_per_epoch=1,
        schedule="cosine",
        clock=time.process_time,
    )
    plain = TrainingRun(PLAIN, task, **common)
    # One run per distinct signature: `cap 2` at keep 0.5 is `cap 1/keep` there.
    arms: list[tuple[str, float, float, TrainingRun]] = [(PLAIN, math.nan, math.nan, plain)]
    built: dict[tuple[Any, ...], TrainingRun] = {}
    for keep in KEEPS:
        for anneal in ANNEALS:
            for weighting in WEIGHTINGS.values():
                signature = (keep, anneal, *weighting.signature(keep))
                if signature not in built:
                    built[signature] = WeightedRun(
                        weighting.name,
                        task,
                        policy=ss.RelativeProbabilistic(keep=keep, history=setting.history),
                        reuse=Reuse(
                            max_age=setting.max_age, anneal=anneal, rescale=weighting.rescale
                        ),
                        weighting=weighting,
                        keep=keep,
                        **common,
                    )
                arms.append((weighting.name, keep, anneal, built[signature]))
    train_side_by_side([plain, *built.values()])
    return [
        Outcome(
            task=key,
            seed=seed,
            name=name,
            keep=keep,
            anneal=anneal,
            final=run.result.final,
            work=run.result.samples_backpropagated / run.n_train,
            decided_keep=run.result.decided_keep,
            largest_weight=run.largest_weight if isinstance(run, WeightedRun) else 1.0,
        )
        for name, keep, anneal, run in arms
    ]


def _job(args: tuple[str, int, bool]) -> tuple[list[Outcome], float]:
    start = time.process_time()
    outcomes = seed_runs(*args)
    return outcomes, time.process_time() - start


def run_all(
    seeds: Mapping[str, Sequence[int]], smoke: bool, jobs: int
) -> tuple[list[Outcome], float]:
    """Every seed of every task, in ``jobs`` worker processes (1: in this process); returns
    the outcomes and the CPU seconds the training took (one thread per process)."""
    work = [(key, seed, smoke) for key in seeds for seed in seeds[key]]
    done = run_jobs(
        _job, work, jobs, done=lambda r: f"[weighting] {r[0][0].task}, seed {r[0][0].seed} done"
    )
    return [o for outcomes, _ in done for o in outcomes], sum(cpu for _, cpu in done)


# ----------------------------------------------------------------------------- analysis
def paired_differences(runs: Sequence[float], baseline: Sequence[float]) -> list[float]:
    """``runs`` less ``baseline``, seed by seed (both in the same seed order).

    Example:
        >>> paired_differences([0.5, 0.7], [0.6, 0.6])
        [-0.1, 0.1]
    """
    if len(runs) != len(baseline):
        raise ValueError(
            f"Expected one baseline value per seed, but got {len(runs)} runs and "
            f"{len(baseline)} baseline values."
        )
    return [round(a - b, 12) for a, b in zip(runs, baseline, strict=True)]


def seed_spread(values: Sequence[float]) -> float:
    """The range of ``values`` over seeds (0 for fewer than two).

    Example:
        >>> seed_spread([0.91, 0.93, 0.92])
        0.02
    """
    return round(max(values) - min(values), 12) if len(values) > 1 else 0.0


def safe(differences: Sequence[float], spread: float) -> bool:
    """Whether no seed ended lower than its baseline by more than ``spread``.

    Example:
        >>> safe([-0.01, 0.02], spread=0.015), safe([-0.03, 0.02], spread=0.015)
        (True, False)
    """
    return bool(differences) and min(differences) >= -spread


@dataclass(frozen=True)
class Cell:
    """One weighting at one keep and anneal of one task, over seeds (in seed order)."""

    finals: list[float]
    works: list[float]
    keeps: list[float]
    largest: list[float]
    diffs: list[float]  # against no rescaling, by seed


def cells(outcomes: Sequence[Outcome], key: str) -> dict[tuple[float, float, str], Cell]:
    """Every (keep, anneal, weighting) of task ``key``, with its paired differences."""
    mine = sorted((o for o in outcomes if o.task == key), key=lambda o: o.seed)
    by: dict[tuple[float, float, str], list[Outcome]] = {}
    for o in mine:
        if o.name != PLAIN:
            by.setdefault((o.keep, o.anneal, o.name), []).append(o)
    out = {}
    for (keep, anneal, name), runs in by.items():
        base = [o.final for o in by[(keep, anneal, OFF)]]
        out[(keep, anneal, name)] = Cell(
            finals=[o.final for o in runs],
            works=[o.work for o in runs],
            keeps=[o.decided_keep for o in runs],
            largest=[o.largest_weight for o in runs],
            diffs=paired_differences([o.final for o in runs], base),
        )
    return out


def plain_spread(outcomes: Sequence[Outcome], key: str) -> float:
    """The seed spread of task ``key``: the range of plain's final accuracy over seeds."""
    return seed_spread([o.final for o in outcomes if o.task == key and o.name == PLAIN])


def _pts(value: float) -> str:
    return f"{100 * value + 0.0:+.1f}"


def _seeds(values: Sequence[float]) -> str:
    return ", ".join(_pts(v) for v in values)


def task_table(table: Mapping[tuple[float, float, str], Cell], spread: float) -> str:
    """The markdown table of one task: a row per keep, anneal and weighting."""
    rows = []
    for keep in KEEPS:
        for anneal in ANNEALS:
            for name in WEIGHTINGS:
                c = table[(keep, anneal, name)]
                verdict = (
                    "(baseline)" if name == OFF else "yes" if safe(c.diffs, spread) else "**no**"
                )
                rows.append(
                    [
                        f"{keep:g}",
                        f"{anneal:g}",
                        f"`{name}`",
                        fmt_spread([100 * v for v in c.finals], "{:.1f}"),
                        fmt_spread(c.works, "{:.2f}"),
                        fmt_spread(c.keeps, "{:.3f}"),
                        fmt_spread(c.largest, "{:.3g}"),
                        "" if name == OFF else _seeds(c.diffs),
                        "" if name == OFF else _pts(min(c.diffs)),
                        verdict,
                    ]
                )
    headers = [
        "keep",
        "anneal",
        "weighting",
        "final test accuracy (%)",
        "work units",
        "decided keep",
        "largest weight trained",
        "against no rescale, per seed (points)",
        "worst seed",
        f"within the spread ({100 * spread:.1f} points)?",
    ]
    return markdown_table(headers, rows)


def safe_weightings(table: Mapping[tuple[float, float, str], Cell], spread: float) -> list[str]:
    """The weightings safe at every keep and anneal of one task."""
    return [
        name
        for name in WEIGHTINGS
        if name != OFF
        and all(safe(table[(k, a, name)].diffs, spread) for k in KEEPS for a in ANNEALS)
    ]


def _worst(table: Mapping[tuple[float, float, str], Cell], name: str, anneal: float) -> str:
    return ", ".join(f"keep {k:g}: {_pts(min(table[(k, anneal, name)].diffs))}" for k in KEEPS)


def targets(outcomes: Sequence[Outcome]) -> tuple[Target, ...]:
    """The default bound against no rescaling at each anneal, and annealing under it, on the
    clean task; then the default bound on the noisy task."""
    out = []
    clean, spread = cells(outcomes, "clean"), plain_spread(outcomes, "clean")
    for anneal in ANNEALS:
        ok = all(safe(clean[(k, anneal, DEFAULT)].diffs, spread) for k in KEEPS)
        out.append(
            Target(
                f"Loss reuse, rescale=True with the default bound (max_weight = 1/keep), "
                f"anneal={anneal:g} (MNIST-1D, paired seeds)",
                "ends no lower than rescale=False by more than the seed spread, at keep 0.3 "
                "and 0.5",
                f"worst seed {_worst(clean, DEFAULT, anneal)} points (spread "
                f"{100 * spread:.1f} points)",
                met=ok,
            )
        )
    anneals = {
        k: paired_differences(
            clean[(k, ANNEALS[1], DEFAULT)].finals, clean[(k, ANNEALS[0], DEFAULT)].finals
        )
        for k in KEEPS
    }
    out.append(
        Target(
            f"Loss reuse, anneal={ANNEALS[1]:g} against anneal=0 under rescale=True with the "
            "default bound (MNIST-1D, paired seeds)",
            "ends no lower by more than the seed spread, at keep 0.3 and 0.5",
            "worst seed "
            + ", ".join(f"keep {k:g}: {_pts(min(d))}" for k, d in anneals.items())
            + f" points (spread {100 * spread:.1f} points)",
            met=all(safe(d, spread) for d in anneals.values()),
        )
    )
    noisy, n_spread = cells(outcomes, "noisy"), plain_spread(outcomes, "noisy")
    out.append(
        Target(
            f"The same with {NOISE:.0%} of the training labels flipped",
            "rescale=True with the default bound ends no lower than rescale=False by more "
            "than the seed spread, at keep 0.3 and 0.5, anneal 0 and 0.125",
            "worst seed "
            + "; ".join(f"anneal {a:g}: {_worst(noisy, DEFAULT, a)}" for a in ANNEALS)
            + f" points (spread {100 * n_spread:.1f} points)",
            met=all(safe(noisy[(k, a, DEFAULT)].diffs, n_spread) for k in KEEPS for a in ANNEALS),
        )
    )
    return tuple(out)


TITLES = {
    "clean": "MNIST-1D, clean labels",
    "noisy": f"The same with {NOISE:.0%} of the training labels flipped",
}


def _medians(table: Mapping[tuple[float, float, str], Cell], name: str) -> str:
    return ", ".join(
        f"keep {k:g} anneal {a:g}: {_pts(statistics.median(table[(k, a, name)].diffs))}"
        for k in KEEPS
        for a in ANNEALS
    )


def report_task(outcomes: Sequence[Outcome], key: str) -> str:
    """One task's table and its verdict."""
    table, spread = cells(outcomes, key), plain_spread(outcomes, key)
    plain = [o.final for o in outcomes if o.task == key and o.name == PLAIN]
    ok = safe_weightings(table, spread)
    verdict = (
        f"Plain training ends at {fmt_spread([100 * v for v in plain], '{:.1f}')} %. Against "
        f"no rescaling, median paired seed (points): `{UNBOUNDED}` {_medians(table, UNBOUNDED)}; "
        f"`{DEFAULT}` {_medians(table, DEFAULT)}. Safe at every keep and anneal (no seed lower "
        f"than no rescaling by more than the spread, {100 * spread:.1f} points): "
        + (", ".join(f"`{n}`" for n in ok) if ok else "none")
        + "."
    )
    return "\n\n".join([f"### {TITLES[key]}", task_table(table, spread), verdict])


def intro(seeds: Mapping[str, Sequence[int]], setting: Setting) -> str:
    """What the benchmark runs and how it judges."""
    n_train = round(0.8 * setting.num_samples)
    return (
        "Does weighting the kept samples by `1/p` (`ReuseSampler(rescale=True)`) cost "
        "accuracy, and which bound on the weights (`max_weight`) makes it safe? MNIST-1D, "
        f"{n_train} training samples, a ConvNet of width {setting.width}, {setting.epochs} "
        f"epochs, steps of {setting.batch_size} samples, AdamW lr {setting.lr:g}, a cosine "
        "schedule following the data. Per seed, from the same weights in the same first data "
        "order: plain, and loss reuse with "
        f"`RelativeProbabilistic(keep=k, history={setting.history})`, `max_age="
        f"{setting.max_age}`, at every keep, anneal and weighting: `{OFF}`; `{UNBOUNDED}` "
        "(`max_weight=None`); a constant bound, `cap 2` (`max_weight=2`: at keep 0.5 the "
        f"same as `{DEFAULT}`, so one run serves both); bounds tied to the keep, `{DEFAULT}` "
        "and `cap 2/keep` (`max_weight = c / keep`); and `normalised, cap 2` (the `1/p` "
        "weights divided by their mean over the epoch's kept decided samples, then capped at "
        "2). Each weighting is compared with no rescaling at the same keep and anneal, seed "
        "by seed; it is safe where no seed ends lower by more than the seed spread (the range "
        "of plain's final accuracy over the seeds). Seeds: "
        + "; ".join(f"{k} labels {', '.join(map(str, seeds[k]))}" for k in seeds)
        + ". Clean test accuracy, median (min–max) over seeds; differences in points, one "
        "per seed in seed order; work units = samples backpropagated / training-set size; "
        "'largest weight trained' is the largest weight any training step applied."
    )


def render(
    outcomes: Sequence[Outcome],
    seeds: Mapping[str, Sequence[int]],
    smoke: bool,
    minutes: float,
    cpu_minutes: float,
) -> Section:
    """The report's section from the measurements."""
    body = [intro(seeds, SMOKE if smoke else FULL)]
    body += [report_task(outcomes, key) for key in seeds]
    safe_all = [
        n
        for n in WEIGHTINGS
        if n != OFF
        and all(n in safe_weightings(cells(outcomes, k), plain_spread(outcomes, k)) for k in seeds)
    ]
    body.append(
        "**The default bound.** Safe on every task, keep and anneal: "
        + (", ".join(f"`{n}`" for n in safe_all) if safe_all else "none")
        + f". Proposed as `ReuseSampler`'s default: `{DEFAULT}`, `max_weight = 1 / "
        "policy.expected_keep`. The mean `1/p` of the kept samples is `1/keep`, so it bounds "
        "a sample kept against the odds at the weight of an average kept one; it leaves "
        "`Uniform(keep)`'s weights (all `1/keep`, InfoBatch's constant) as they are, and "
        "deterministic policies keep weights of 1. "
        f"The benchmark's training took {minutes:.1f} min of wall time, {cpu_minutes:.1f} "
        "CPU-minutes (one thread per worker process)."
    )
    return Section(
        "Loss reuse: weighting kept samples by 1/p, bounded", "\n\n".join(body), targets(outcomes)
    )


def run(smoke: bool = False, jobs: int | None = None) -> Section:
    """Trains every run of every seed and returns the report's section."""
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    seeds = {k: v[:1] for k, v in SEEDS.items()} if smoke else SEEDS
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    start = time.perf_counter()
    saved = os.environ.get(RESULTS_ENV)
    try:
        if saved and Path(saved).is_file():
            with open(saved, "rb") as f:
                outcomes, minutes, cpu_minutes = pickle.load(f)
        else:
            outcomes, cpu = run_all(seeds, smoke, jobs)
            minutes, cpu_minutes = (time.perf_counter() - start) / 60, cpu / 60
            if saved:
                with open(saved, "wb") as f:
                    pickle.dump((outcomes, minutes, cpu_minutes), f)
    finally:
        torch.set_num_threads(threads)
    return render(outcomes, seeds, smoke, minutes, cpu_minutes)


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv)


if __name__ == "__main__":
    main_as_module("benchmarks.weighting")
