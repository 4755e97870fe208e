"""Know before you sift: a short pilot run that measures each pass and predicts the gain.

:func:`profile` times, on your model and your data, the stages of a training step (data
loading, forward, backward, optimizer step), the scoring pass that sifting adds, and the
sifting machinery itself (decision, loss history, slicing, joining), all per sample. The
:class:`ProfileReport` turns them into a predicted per-epoch speedup for any kept fraction.

The cost model, per sample seen (``data``, ``scoring``, ``selection``, ``forward``, ``backward``
and ``optimizer`` are the measured seconds per sample; ``keep`` is the kept fraction)::

    T       = forward + backward + optimizer           # one plain training step
    plain   = data + T
    sifted  = data + scoring + selection + keep * T
    predicted_speedup(keep) = plain / sifted
    break_even_keep         = (T - scoring - selection) / T   # where plain == sifted

It is a per-epoch figure: what sifting saves on the same number of epochs. Whether the model
reaches a given accuracy sooner also depends on how much the dropped samples would have taught
it, which a short pilot cannot measure; a model that still needs all of its data (early in
training, or a language model in its first epochs) can lose more accuracy than it saves time.
The report's ``loss_concentration`` is a hint: when the losses are spread evenly over the
samples, the recommendation says so. And the pilot reads how far training has got: when the
training loss is still near the chance level (``log(num_classes)``, given ``num_classes``) or
still falls fast across the pilot's steps (by :data:`FALLING_FAST` or more, surely), the
network is too early in training to judge (``report.too_early``): an untrained network's losses
say little about where sifting will pay later, so the advice is to train first (a
``sift_delay``, or :class:`~smartsift.Auto`) and profile again.

Which mode, if any: :func:`advise_mode` (and ``report.advise_mode(epochs=...)``) weighs the
scoring pass (``SiftingDataLoader``, per epoch at most ``1 / (F/T + keep)`` faster) against loss
reuse (``ReuseSampler`` with ``ScoreTable``, no scoring pass: ``1 / keep`` per epoch after the
first, which only records losses). Loss reuse needs a map-style dataset seen at least twice;
on data seen once the scoring pass is the only mode, and only where it pays.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> data = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    >>> model = torch.nn.Linear(8, 2)
    >>> def loss_fn(model, batch):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> report = ss.profile(model, DataLoader(data, batch_size=32), loss_fn, optimizer, steps=4)
    >>> report.predicted_speedup(1.0) < 1.0
    True
"""

from __future__ import annotations

import copy
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset

from smartsift.batches.structure import BatchTransform, IdKey, batch_size_of, to_device
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.checks import (
    check_dataloader,
    check_fraction,
    check_instance,
    check_int,
    check_loss_fn,
    check_model,
    check_optional_int,
    check_policy,
    check_real,
    check_transform,
)
from smartsift.engine.costmodel import MIN_SPEEDUP, predicted_speedup
from smartsift.engine.selector import Selector
from smartsift.engine.step import sift_step
from smartsift.modes.reference import Reference, ReferenceLike, reducible_scores, reducible_step
from smartsift.modes.scoring import LossFn, score
from smartsift.policies import Policy, RelativeProbabilistic
from smartsift.policies.signals import EVEN_LOSSES, loss_concentration, relative_trend, trend_t

__all__ = [
    "ADVICE_KEEP",
    "CANDIDATE_KEEPS",
    "EVEN_LOSSES",
    "FALLING_FAST",
    "GOOD_SPEEDUP",
    "MIN_SPEEDUP",
    "NEAR_CHANCE",
    "SIFTING_CAVEAT",
    "Mode",
    "ModeAdvice",
    "ProfileReport",
    "advise_mode",
    "loss_concentration",
    "profile",
    "reuse_run_speedup",
]

TrainStep = Callable[[torch.nn.Module, Any], torch.Tensor]
"""``train_step(model, batch) -> Tensor``: the scalar training loss of one batch."""

CANDIDATE_KEEPS: tuple[float, ...] = (0.5, 0.4, 1 / 3, 0.25)
"""The kept fractions a report may recommend, mildest first (0.25 is ``beta=3``)."""
GOOD_SPEEDUP = 1.2
"""The mildest candidate keep predicted to be at least this much faster is recommended."""
FALLING_FAST = 0.1
"""A training loss that fell by this share or more across the pilot (surely: a fitted line's
t statistic below -2) is still falling fast: too early in training to judge."""
NEAR_CHANCE = 0.8
"""A mean training loss of at least this share of the chance level ``log(num_classes)``: the
network has barely learnt; too early to judge."""


Mode = Literal["reuse", "scoring", "none"]
"""What :func:`advise_mode` can advise: loss reuse, the scoring pass, or plain training."""

ADVICE_KEEP = 0.3
"""The kept fraction the mode advice assumes unless told: the stated keep at which the
benchmarks (docs/benchmarks.md, the frontier) found loss reuse above training for fewer epochs
on four of five tasks."""

SIFTING_CAVEAT = (
    "Whichever mode, sifting trades final accuracy for compute: compare it against plain "
    "training given fewer epochs for the same compute, not against the full plain run (in the "
    "benchmarks loss reuse ended above the former on most tasks, and below the latter), "
    "and expect it to lose while the model is still data-hungry."
)
"""The caveat every :class:`ModeAdvice` carries."""


@dataclass(frozen=True)
class ModeAdvice:
    """Which mode to sift with, if any, and why (see :func:`advise_mode`).

    Attributes:
        mode: ``"reuse"`` (``ss.ReuseSampler`` with ``ss.ScoreTable``), ``"scoring"``
            (``ss.SiftingDataLoader``) or ``"none"`` (train plain).
        reason: one sentence with the figures behind the choice.
        scoring_speedup: the scoring pass's predicted per-epoch speedup at ``keep``,
            ``(D + 1) / (D + F/T + keep)`` with ``D`` the data loading over ``T``.
        reuse_speedup: loss reuse's per-epoch speedup at ``keep`` after the first epoch,
            ``1 / keep`` (an upper bound: stale scores are trained too); None where loss reuse
            cannot work (data seen once).
        reuse_run_speedup: loss reuse over the whole run, the first epoch trained in full,
            ``epochs / (1 + (epochs - 1) * keep)``; None where loss reuse cannot work.
        keep: the kept fraction assumed.
        epochs: the epochs of the run.
        caveat: what sifting costs in either mode (:data:`SIFTING_CAVEAT`).

    Example:
        >>> advice = advise_mode(0.25, epochs=10, map_style=True, keep=0.5)
        >>> advice.mode, round(advice.reuse_run_speedup, 2), round(advice.scoring_speedup, 2)
        ('reuse', 1.82, 1.33)
    """

    mode: Mode
    reason: str
    scoring_speedup: float
    reuse_speedup: float | None
    reuse_run_speedup: float | None
    keep: float
    epochs: int
    caveat: str = SIFTING_CAVEAT

    def __str__(self) -> str:
        return f"{self.reason} {self.caveat}"


def advise_mode(
    f_over_t: float,
    *,
    epochs: int,
    map_style: bool,
    keep: float = ADVICE_KEEP,
    samples: int | None = None,
    data_over_t: float = 0.0,
) -> ModeAdvice:
    """Advises loss reuse, the scoring pass or plain training, from the costs and the data.

    The rule: loss reuse decides an epoch from the losses the training step recorded, so it
    needs samples that come back: a map-style dataset (a sampler skips indices before loading)
    and at least 2 epochs (the first records every loss). Where it can work it is advised,
    since at the same ``keep`` it is faster per sifted epoch than the scoring pass
    (``1 / keep`` against ``1 / (F/T + keep)``), and in the benchmarks it beat training for
    fewer epochs where the scoring pass rarely did; unless ``1 / keep`` is below
    :data:`MIN_SPEEDUP`, when nothing pays. On data seen once, the scoring pass is advised
    only where its predicted per-epoch speedup reaches :data:`MIN_SPEEDUP`, else plain
    training. The hybrid mode (loss reuse whose undecided samples go through the scoring pass)
    is never advised: on the benchmarks' five tasks and two fine-tuning tasks it did not end
    above loss reuse at the same work, and sifting a fine-tuning run's first epoch lost to it.

    Args:
        f_over_t: the scoring pass (and the sifting machinery) per sample over a training step
            per sample, ``F/T`` (``report.scoring_s + report.selection_s`` over
            ``report.step_s``); at least 0.
        epochs: how many times training goes over the data, at least 1.
        map_style: whether the dataset is map-style (``len`` and indexing, not an
            ``IterableDataset`` or a stream).
        keep: the kept fraction, in (0, 1].
        samples: the dataset's size, if known: the reason then counts the sample-steps trained.
        data_over_t: data loading per sample over ``T``, at least 0 (the scoring pass loads
            every sample; loss reuse only the kept ones).

    Returns:
        A :class:`ModeAdvice`; ``str(advice)`` is its reason and its caveat.

    Raises:
        ValueError: for a number out of range or of the wrong type.
        TypeError: for a ``map_style`` that is not a bool.

    Example:
        >>> advise_mode(0.25, epochs=12, map_style=True, keep=0.3).mode
        'reuse'
        >>> advise_mode(0.25, epochs=1, map_style=True, keep=0.3).mode
        'scoring'
        >>> print(advise_mode(0.8, epochs=12, map_style=False, keep=0.3).reason)
        ... # doctest: +ELLIPSIS
        Train plain: loss reuse cannot work because the dataset is iterable, not map-style ...
    """
    _check_advice_args(f_over_t, epochs, map_style, keep, samples, data_over_t)
    scoring = predicted_speedup(1.0, keep, f_over_t, data_over_t)
    cost = (
        f"the scoring pass costs {f_over_t:.2f} of a training step per sample, so keeping "
        f"{keep:.0%} gives it a predicted {scoring:.2f}x per epoch"
    )
    threshold = f"below the {MIN_SPEEDUP:g}x that is worth sifting's risk"
    once = _seen_once(epochs, map_style)
    if once is not None:
        if scoring >= MIN_SPEEDUP:
            reason = (
                f"Use the scoring pass (ss.SiftingDataLoader): loss reuse cannot work because "
                f"{once}, and {cost}."
            )
            return ModeAdvice("scoring", reason, scoring, None, None, keep, epochs)
        reason = f"Train plain: loss reuse cannot work because {once}, and {cost}, {threshold}."
        return ModeAdvice("none", reason, scoring, None, None, keep, epochs)
    reuse = 1.0 / keep
    run = reuse_run_speedup(epochs, keep)
    if reuse < MIN_SPEEDUP:
        reason = (
            f"Train plain: keeping {keep:.0%} saves too little, loss reuse would be at most "
            f"{reuse:.2f}x faster per epoch and the scoring pass {scoring:.2f}x, {threshold}."
        )
        return ModeAdvice("none", reason, scoring, reuse, run, keep, epochs)
    work = ""
    if samples is not None:
        trained = samples * (1 + (epochs - 1) * keep)
        work = f", about {trained:,.0f} of {samples * epochs:,} sample-steps"
    reason = (
        f"Use loss reuse (ss.ReuseSampler with ss.ScoreTable): the data is map-style and seen "
        f"{epochs} times, so once the first epoch has recorded every sample's loss, keeping "
        f"{keep:.0%} makes each later epoch up to {reuse:.2f}x faster ({run:.2f}x over the "
        f"{epochs} epochs{work}), while the scoring pass, which costs {f_over_t:.2f} of a "
        f"training step per sample, would give only {scoring:.2f}x per epoch. The hybrid "
        "mode, which also scores the samples loss reuse leaves undecided, did no better than "
        "loss reuse at the same work in the benchmarks."
    )
    return ModeAdvice("reuse", reason, scoring, reuse, run, keep, epochs)


def reuse_run_speedup(epochs: int, keep: float) -> float:
    """Loss reuse's speedup over a whole run: ``epochs / (1 + (epochs - 1) * keep)``, the first
    epoch trained in full (it records the losses the later ones decide from).

    Example:
        >>> round(reuse_run_speedup(12, 0.3), 2), reuse_run_speedup(1, 0.3)
        (2.79, 1.0)
    """
    return epochs / (1 + (epochs - 1) * keep)


def _seen_once(epochs: int, map_style: bool) -> str | None:
    """Why loss reuse cannot work on this data, in words; None when it can."""
    reasons = []
    if not map_style:
        reasons.append(
            "the dataset is iterable, not map-style (no sampler can skip its samples before "
            "loading)"
        )
    if epochs < 2:
        reasons.append("the run is a single epoch (no sample comes back once its loss is known)")
    return " and ".join(reasons) if reasons else None


def _check_advice_args(
    f_over_t: Any, epochs: Any, map_style: Any, keep: Any, samples: Any, data_over_t: Any
) -> None:
    check_real("f_over_t", f_over_t, minimum=0)
    check_int("epochs", epochs, 1, "how many times training goes over the data")
    check_instance("map_style", map_style, bool, "a bool (True for a map-style dataset)")
    check_fraction("keep", keep, low_open=True)
    check_optional_int("samples", samples, 1)
    check_real("data_over_t", data_over_t, minimum=0)


@dataclass(frozen=True)
class ProfileReport:
    """What a pilot run measured, per sample, and what it predicts.

    All ``*_s`` figures are seconds per sample: the median over the measured steps of each
    batch's time divided by its number of samples.

    Attributes:
        data_s: waiting for the next batch (and moving it to ``device``).
        scoring_s: the scoring pass sifting adds: a gradient-free forward pass and the
            per-sample loss, as the sifting loader runs it.
        selection_s: the sifting machinery: decision, loss history, slicing and joining.
        forward_s: the training forward pass and loss.
        backward_s: the backward pass.
        optimizer_s: ``optimizer.step()`` and ``optimizer.zero_grad()``.
        batch_size: the median number of samples per batch.
        steps: how many batches were measured (warm-up excluded).
        device: where the batches were (``"cpu"``, ``"cuda:0"``, ...).
        loss_concentration: the share of the total loss that the highest-loss half of the
            scored samples carries: near 0.5 when losses are even (every sample still
            teaches, so dropping samples costs accuracy), near 1 when a few samples carry
            the loss (what sifting needs). NaN when unknown.
        train_loss: the mean training loss of the pilot's steps (each batch's before its
            update). NaN when unknown.
        loss_trend: how much the training loss changed across the pilot's steps, relative to
            where it started, from a fitted line (-0.2: it fell by 20 %); NaN when unknown.
        loss_trend_t: the t statistic of that line's slope (below -2: surely falling).
        chance_loss: ``log(num_classes)`` when ``num_classes`` was given, else NaN.
        dataset_size: ``len(dataloader.dataset)`` when the profiled loader tells it, else None.
        map_style: whether the profiled loader's dataset is map-style (not an
            ``IterableDataset``); None when the loader has no ``dataset``.
        epochs: the epochs the run will train, when given: ``str(report)`` then advises a mode
            (:meth:`advise_mode`).
        keep: the kept fraction the mode advice assumes (:data:`ADVICE_KEEP` by default).

    Example:
        >>> report = ProfileReport(data_s=0.0, scoring_s=1.0, selection_s=0.0, forward_s=1.0,
        ...                        backward_s=2.0, optimizer_s=1.0)
        >>> report.predicted_speedup(0.5), report.break_even_keep
        (1.3333333333333333, 0.75)
    """

    data_s: float
    scoring_s: float
    selection_s: float
    forward_s: float
    backward_s: float
    optimizer_s: float
    batch_size: int = 0
    steps: int = 0
    device: str = "cpu"
    loss_concentration: float = math.nan
    train_loss: float = math.nan
    loss_trend: float = math.nan
    loss_trend_t: float = math.nan
    chance_loss: float = math.nan
    dataset_size: int | None = None
    map_style: bool | None = None
    epochs: int | None = None
    keep: float = ADVICE_KEEP

    @property
    def too_early(self) -> bool:
        """Whether the network is too early in training for the pilot to judge sifting: its
        training loss is near the chance level or still falls fast (see :attr:`early_reason`).

        Example:
            >>> fresh = ProfileReport(0.0, 1.0, 0.0, 1.0, 2.0, 1.0, loss_trend=-0.3,
            ...                       loss_trend_t=-6.0)
            >>> fresh.too_early, fresh.recommended, fresh.recommended_keep
            (True, False, 0.5)
        """
        return self.early_reason is not None

    @property
    def early_reason(self) -> str | None:
        """Why the network is too early in training to judge, in words; None when it is not."""
        reasons = []
        if self.chance_loss > 0 and self.train_loss >= NEAR_CHANCE * self.chance_loss:
            reasons.append(
                f"the training loss ({self.train_loss:.3g}) is still near the chance level "
                f"({self.chance_loss:.3g} = log of the number of classes)"
            )
        if self.loss_trend <= -FALLING_FAST and self.loss_trend_t <= -2.0:
            reasons.append(
                f"the training loss fell by {-self.loss_trend:.0%} across the pilot's "
                f"{self.steps} measured steps and their warm-up"
            )
        return " and ".join(reasons) if reasons else None

    @property
    def step_s(self) -> float:
        """``T``: one plain training step per sample (forward + backward + optimizer)."""
        return self.forward_s + self.backward_s + self.optimizer_s

    @property
    def step_to_scoring_ratio(self) -> float:
        """How many scoring passes one training step costs (``T / scoring``)."""
        return self.step_s / self.scoring_s if self.scoring_s > 0 else math.inf

    def predicted_speedup(self, keep: float) -> float:
        """Predicted per-epoch speedup of sifting that keeps the fraction ``keep`` of samples.

        ``(data + T) / (data + scoring + selection + keep * T)``; below 1 sifting is slower.

        Example:
            >>> ProfileReport(0.0, 1.0, 0.0, 1.0, 2.0, 1.0).predicted_speedup(0.25)
            2.0
        """
        if not isinstance(keep, (int, float)) or isinstance(keep, bool) or not 0 <= keep <= 1:
            raise ValueError(f"Expected `keep` to be a float in [0, 1], but got {keep!r}.")
        overhead = self.scoring_s + self.selection_s
        return predicted_speedup(self.step_s, keep, overhead, self.data_s)

    @property
    def break_even_keep(self) -> float:
        """The kept fraction below which sifting is faster per epoch (0 when it never is)."""
        t = self.step_s
        if t <= 0:
            return 0.0
        return min(1.0, max(0.0, (t - self.scoring_s - self.selection_s) / t))

    @property
    def recommended_keep(self) -> float | None:
        """The mildest kept fraction predicted to pay well, or None when sifting does not pay.

        It is the largest of 1/2, 2/5, 1/3 and 1/4 with a predicted speedup of at least 1.2,
        else 1/4 when that still gives at least 1.1, else None.
        """
        for keep in CANDIDATE_KEEPS:
            if self.predicted_speedup(keep) >= GOOD_SPEEDUP:
                return keep
        last = CANDIDATE_KEEPS[-1]
        return last if self.predicted_speedup(last) >= MIN_SPEEDUP else None

    @property
    def recommended(self) -> bool:
        """Whether to sift now: sifting is predicted to pay on cost (``recommended_keep``) and
        the network is not :attr:`too_early` in training to judge."""
        return self.recommended_keep is not None and not self.too_early

    @property
    def recommendation(self) -> str:
        """The advice, in plain language, with a starting configuration when sifting pays."""
        ratio = self.step_to_scoring_ratio
        keep = self.recommended_keep
        overhead = (self.scoring_s + self.selection_s) / self.step_s if self.step_s > 0 else 1.0
        if keep is None:
            best = self.predicted_speedup(CANDIDATE_KEEPS[-1])
            hint = (
                " Loss reuse has no scoring pass: report.advise_mode(epochs=N) compares the modes."
                if self.epochs is None
                else ""
            )
            return (
                f"Do not sift with the scoring pass: it and the sifting machinery cost "
                f"{overhead:.0%} of a training step, so even keeping a quarter of the samples "
                f"would be at most {best:.2f}x faster per epoch (break-even below keep "
                f"{self.break_even_keep:.2f}). The scoring pass pays when the backward pass and "
                f"optimizer step dominate the forward pass.{hint}"
            )
        beta = 1.0 / keep - 1.0
        early = self.early_reason
        if early is not None:
            return (
                f"Too early to judge: {early}. An untrained network's losses say little about "
                "where sifting pays later (they look concentrated or even for reasons that "
                "pass), and while every batch still lowers the loss fast, dropping samples "
                "costs more learning than it saves time. On cost alone, a training step costs "
                f"{ratio:.1f}x a scoring pass, so keeping {keep:.0%} of the samples would be "
                f"{self.predicted_speedup(keep):.2f}x faster per epoch (break-even below keep "
                f"{self.break_even_keep:.2f}). Train plain first (a sift_delay of an epoch or "
                "more), or let ss.Auto(...) start sifting when the losses concentrate, and "
                "profile again after some training."
            )
        advice = (
            f"Sift: a training step costs {ratio:.1f}x a scoring pass, so keeping {keep:.0%} of "
            f"the samples is predicted {self.predicted_speedup(keep):.2f}x faster per epoch "
            f"(break-even below keep {self.break_even_keep:.2f}). Start with "
            f"ss.RelativeProbabilistic(beta={beta:.3g}) or ss.TopK(keep={keep:.3g}) and a "
            "sift_delay of about one epoch, and compare the time to your target accuracy "
            "against a plain run that trains on batches of the same size: a cheaper epoch "
            "gives a faster run only when the dropped samples had little left to teach, and "
            "this prediction is of the cost alone."
        )
        if self.loss_concentration < EVEN_LOSSES:
            advice += (
                f" Caution: the losses are spread evenly (the higher-loss half of the samples "
                f"carries {self.loss_concentration:.0%} of the loss), as early in training or "
                "for a model that is still data-hungry (a language model in its first "
                "epochs); then dropping samples usually costs more accuracy than it saves "
                "time. Profile again after some training."
            )
        return advice

    def advise_mode(
        self,
        epochs: int | None = None,
        keep: float | None = None,
        *,
        samples: int | None = None,
        map_style: bool | None = None,
    ) -> ModeAdvice:
        """Which mode to sift with, if any: :func:`advise_mode` with this pilot's costs.

        ``F/T`` is ``(scoring_s + selection_s) / step_s`` and data loading counts as in
        :meth:`predicted_speedup`. Each argument left out is the report's own: ``epochs`` and
        ``keep`` as given to :func:`profile`, ``samples`` and ``map_style`` read from the
        profiled loader's dataset.

        Args:
            epochs: how many times training goes over the data.
            keep: the kept fraction, in (0, 1].
            samples: the dataset's size.
            map_style: whether the dataset is map-style.

        Raises:
            ValueError: when ``epochs`` or ``map_style`` is neither given nor known, or an
                argument is out of range.

        Example:
            >>> report = ProfileReport(0.0, 1.0, 0.0, 1.0, 2.0, 1.0, dataset_size=1000,
            ...                        map_style=True)
            >>> report.advise_mode(epochs=10, keep=0.5).mode
            'reuse'
            >>> report.advise_mode(epochs=1, keep=0.5).mode  # 1 / (1/4 + 1/2) = 1.33x
            'scoring'
        """
        epochs = self.epochs if epochs is None else epochs
        if epochs is None:
            raise ValueError(
                "Expected `epochs` to be a positive int (how many times training goes over the "
                "data), but got None; pass report.advise_mode(epochs=N) or "
                "profile(..., epochs=N)."
            )
        map_style = self.map_style if map_style is None else map_style
        if map_style is None:
            raise ValueError(
                "Expected `map_style` to be a bool, but got None: the profiled dataloader has no "
                "`dataset` to read it from; pass map_style=True for a dataset indexed by "
                "position (len and __getitem__), False for an IterableDataset or a stream."
            )
        if self.step_s <= 0:
            raise ValueError(
                f"Expected a training step time above 0 to compare the modes, but the report "
                f"has step_s={self.step_s!r}."
            )
        return advise_mode(
            (self.scoring_s + self.selection_s) / self.step_s,
            epochs=epochs,
            map_style=map_style,
            keep=self.keep if keep is None else keep,
            samples=self.dataset_size if samples is None else samples,
            data_over_t=self.data_s / self.step_s,
        )

    def as_dict(self) -> dict[str, Any]:
        """Returns the measured figures and the derived ones as a flat dict."""
        out = asdict(self)
        out.update(
            step_s=self.step_s,
            break_even_keep=self.break_even_keep,
            recommended=self.recommended,
            recommended_keep=self.recommended_keep,
            **{f"speedup_keep_{k:.2f}": self.predicted_speedup(k) for k in _TABLE_KEEPS},
        )
        known = self.epochs is not None and self.map_style is not None and self.step_s > 0
        advice = self.advise_mode() if known else None
        out.update(
            mode=None if advice is None else advice.mode,
            mode_reason=None if advice is None else str(advice),
        )
        return out

    def __str__(self) -> str:
        bs = max(1, self.batch_size)
        rows = [
            ("data loading", self.data_s),
            ("scoring pass (added)", self.scoring_s),
            ("sifting machinery (added)", self.selection_s),
            ("training forward", self.forward_s),
            ("training backward", self.backward_s),
            ("optimizer step", self.optimizer_s),
            ("training step T", self.step_s),
        ]
        lines = [
            f"smartsift profile: {self.steps} steps, batch {self.batch_size}, {self.device}",
            f"{'stage':<27}{'us/sample':>12}{'ms/batch':>12}",
        ]
        lines += [f"{name:<27}{s * 1e6:>12.2f}{s * bs * 1e3:>12.3f}" for name, s in rows]
        lines.append(f"{'keep':<27}{'beta':>12}{'speedup':>12}")
        for k in _TABLE_KEEPS:
            beta = f"{1 / k - 1:.3g}" if k < 1 else "-"
            lines.append(f"{k:<27.2f}{beta:>12}{self.predicted_speedup(k):>11.2f}x")
        lines.append(f"break-even keep: {self.break_even_keep:.2f}")
        if not math.isnan(self.loss_concentration):
            lines.append(
                f"loss concentration: the higher-loss half of the samples carries "
                f"{self.loss_concentration:.0%} of the loss"
            )
        if not math.isnan(self.loss_trend):
            chance = (
                f" (chance level {self.chance_loss:.3g})"
                if not math.isnan(self.chance_loss)
                else ""
            )
            lines.append(
                f"training loss: {self.train_loss:.3g}{chance}, {self.loss_trend:+.0%} across "
                "the pilot"
            )
        lines.append(self.recommendation)
        if self.epochs is not None:
            lines.append(self._mode_line())
        return "\n".join(lines)

    def _mode_line(self) -> str:
        head = f"Which mode, over {self.epochs} epoch(s) at keep {self.keep:.2f}: "
        if self.step_s <= 0:
            return head + "unknown: the pilot measured no training step time."
        if self.map_style is None:
            return head + (
                "unknown: the dataloader has no `dataset` to tell whether it is map-style; "
                "call report.advise_mode(map_style=True or False)."
            )
        advice = self.advise_mode()
        return f"{head}{advice.mode}. {advice}"


_TABLE_KEEPS = (1.0, 2 / 3, 0.5, 1 / 3, 0.25)


def profile(
    model: torch.nn.Module,
    dataloader: Iterable[Any],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    steps: int = 20,
    warmup: int = 3,
    train_step: TrainStep | None = None,
    device: torch.device | str | None = None,
    *,
    policy: Policy | None = None,
    transform: BatchTransform | None = None,
    score_in_train_mode: bool = False,
    autocast_dtype: torch.dtype | None = None,
    num_classes: int | None = None,
    epochs: int | None = None,
    keep: float = ADVICE_KEEP,
    reference: ReferenceLike | None = None,
    id_key: IdKey | None = None,
) -> ProfileReport:
    """Runs a short pilot of real training steps and scoring passes; returns the costs.

    For each batch it times, in order: loading it, the training forward pass (model in train
    mode), the backward pass, the optimizer step, the scoring pass (as the sifting loader runs
    it) and the sifting machinery with ``policy``. The first ``warmup`` batches are not
    measured. The pilot consumes ``steps + warmup`` batches from a fresh iterator of
    ``dataloader`` (``iter(dataloader)``); if it runs out sooner, the batches it had are used
    and a warning says so.

    The pilot leaves no trace: the model's parameters and buffers (``copy.deepcopy`` of its
    ``state_dict``), their gradients, every submodule's train/eval mode, the optimizer's
    ``state_dict`` and the global torch random state (CPU and CUDA) are saved before and put
    back after, bit for bit, even when the pilot fails. Batches on CUDA are timed with
    ``torch.cuda.synchronize()`` around every timed region.

    Args:
        model: the model to train, already on its device.
        dataloader: the training data, a re-iterable of batches (a ``DataLoader``).
        loss_fn: ``loss_fn(model, batch) -> Tensor`` of shape ``(B,)``, as for the loader.
        optimizer: the optimizer that trains ``model``.
        steps: batches to measure, at least 1.
        warmup: batches to run first without measuring them, at least 0.
        train_step: ``train_step(model, batch) -> Tensor``, the scalar training loss of a
            batch; default ``loss_fn(model, batch).mean()``.
        device: if set, every batch is moved here (the time counts as data loading).
        policy: the policy whose machinery is timed; default ``RelativeProbabilistic()``.
        transform: a :class:`~smartsift.BatchTransform` for batches that cannot be sliced.
        score_in_train_mode: score in train mode, as the loader option of that name.
        autocast_dtype: score under ``torch.autocast`` with this dtype, as the loader option.
        num_classes: for a classifier trained with cross-entropy, the number of classes: the
            report then tells an untrained network (loss near ``log(num_classes)``) from one
            that has learnt.
        epochs: the epochs the run will train, if known: the report then advises a mode
            (loss reuse, the scoring pass or none; :meth:`ProfileReport.advise_mode`).
        keep: the kept fraction that advice assumes, in (0, 1].
        reference, id_key: the loader options of those names (a reducible score,
            ``loss - reference``): the reference's cost is timed as part of the scoring pass,
            and the machinery ranks the scores, as the loader does.

    Returns:
        A :class:`ProfileReport`; ``print(report)`` shows a table and the recommendation.

    Raises:
        ValueError: for invalid ``steps`` or ``warmup``, an empty ``dataloader``, or a
            ``train_step`` that returns no scalar tensor with a gradient.
        TypeError: for arguments of the wrong type.

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, TensorDataset
        >>> model = torch.nn.Linear(4, 3)
        >>> data = DataLoader(TensorDataset(torch.randn(64, 4), torch.randint(0, 3, (64,))), 16)
        >>> ce = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
        >>> before = model.weight.clone()
        >>> report = profile(model, data, ce, torch.optim.Adam(model.parameters()), 2, 1)
        >>> report.steps, torch.equal(model.weight, before)
        (2, True)
    """
    _validate(model, dataloader, loss_fn, optimizer, steps, warmup, train_step, policy, transform)
    if num_classes is not None:
        check_int("num_classes", num_classes, 2)
    check_optional_int("epochs", epochs, 1)
    check_fraction("keep", keep, low_open=True)
    ref = None if reference is None else Reference(reference, id_key)
    policy = RelativeProbabilistic() if policy is None else policy
    dev = torch.device(device) if device is not None else None
    step_fn: TrainStep = train_step if train_step is not None else _mean_loss(loss_fn)
    saved = _Snapshot(model, optimizer)
    try:
        samples = _pilot(
            model,
            dataloader,
            loss_fn,
            optimizer,
            steps + warmup,
            step_fn,
            dev,
            policy,
            transform,
            score_in_train_mode,
            autocast_dtype,
            ref,
        )
    finally:
        saved.restore()
    if len(samples) <= warmup:
        raise ValueError(
            f"`dataloader` gave {len(samples)} non-empty batch(es), fewer than warmup + 1 = "
            f"{warmup + 1}; profile needs at least one measured batch."
        )
    if len(samples) < steps + warmup:
        warnings.warn(
            f"`dataloader` ran out after {len(samples)} batches; measured "
            f"{len(samples) - warmup} step(s) instead of {steps}.",
            stacklevel=2,
        )
    measured = samples[warmup:]
    losses = np.concatenate([m["losses"] for m in measured])
    train_losses = np.array([m["train_loss"] for m in samples])

    def median(key: str) -> float:
        return statistics.median(m[key] / m["size"] for m in measured)

    return ProfileReport(
        data_s=median("data"),
        scoring_s=median("scoring"),
        selection_s=median("selection"),
        forward_s=median("forward"),
        backward_s=median("backward"),
        optimizer_s=median("optimizer"),
        batch_size=int(statistics.median(m["size"] for m in measured)),
        steps=len(measured),
        device=measured[0]["device"],
        loss_concentration=loss_concentration(losses),
        train_loss=float(np.mean(train_losses[warmup:])),
        loss_trend=relative_trend(train_losses),
        loss_trend_t=trend_t(train_losses),
        chance_loss=math.log(num_classes) if num_classes is not None else math.nan,
        dataset_size=_dataset_size(dataloader),
        map_style=_is_map_style(dataloader),
        epochs=epochs,
        keep=keep,
    )


def _dataset_size(dataloader: Any) -> int | None:
    """``len(dataloader.dataset)``, or None when the loader or its dataset does not tell."""
    dataset = getattr(dataloader, "dataset", None)
    try:
        size = len(dataset)  # type: ignore[arg-type]
    except TypeError:  # no dataset, or an IterableDataset without a length
        return None
    return size if size > 0 else None


def _is_map_style(dataloader: Any) -> bool | None:
    """Whether the loader's dataset is map-style; None when the loader has no ``dataset``."""
    dataset = getattr(dataloader, "dataset", None)
    if dataset is None:
        return None
    if isinstance(dataset, IterableDataset):
        return False
    return hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")


def _mean_loss(loss_fn: LossFn) -> TrainStep:
    def step(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(model, batch).mean()

    return step


class _Snapshot:
    """Everything the pilot may change, saved so that it can be put back bit for bit."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
        self.model, self.optimizer = model, optimizer
        self.model_state = copy.deepcopy(model.state_dict())
        self.optimizer_state = copy.deepcopy(optimizer.state_dict())
        self.modes = [(m, m.training) for m in model.modules()]
        # Non-persistent buffers are not in the state_dict: they are saved one by one.
        self.buffers = [(b, b.detach().clone()) for b in model.buffers()]
        self.grads = [
            (p, None if p.grad is None else p.grad.detach().clone()) for p in model.parameters()
        ]
        self.rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        self.model.load_state_dict(self.model_state)
        self.optimizer.load_state_dict(self.optimizer_state)
        with torch.no_grad():
            for buf, value in self.buffers:
                buf.copy_(value)
        for module, training in self.modes:
            module.training = training
        for param, grad in self.grads:
            param.grad = grad
        torch.set_rng_state(self.rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def _pilot(
    model: torch.nn.Module,
    dataloader: Iterable[Any],
    loss_fn: LossFn,
    optimizer: torch.optim.Optimizer,
    n_batches: int,
    step_fn: TrainStep,
    device: torch.device | None,
    policy: Policy,
    transform: BatchTransform | None,
    score_in_train_mode: bool,
    autocast_dtype: torch.dtype | None,
    reference: Reference | None = None,
) -> list[dict[str, Any]]:
    selector = Selector(policy, nonfinite="drop", seed=0)
    batcher = RefinedBatcher()
    on_cuda = any(p.is_cuda for p in model.parameters()) or (
        device is not None and device.type == "cuda"
    )
    clock = _Clock(on_cuda)
    out: list[dict[str, Any]] = []
    it = iter(dataloader)
    while len(out) < n_batches:
        t: dict[str, Any] = {}
        clock.start()
        try:
            batch = next(it)
        except StopIteration:
            break
        if device is not None:
            batch = to_device(batch, device)
        t["data"] = clock.stop()
        sliceable = transform.transform(batch) if transform is not None else batch
        size = batch_size_of(sliceable)
        if size == 0:
            continue
        t["size"] = size
        t["device"] = _device_of(batch)
        clock.on_cuda = on_cuda or t["device"].startswith("cuda")

        # The training step comes first: its forward pass follows the previous update, as in
        # plain training (the first forward after an update costs a little more).
        model.train()
        clock.start()
        loss = step_fn(model, batch)
        t["forward"] = clock.stop()
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            raise ValueError(
                "Expected the training loss (train_step(model, batch), by default "
                "loss_fn(model, batch).mean()) to be a scalar tensor that requires grad, but got "
                f"{_describe(loss)}."
            )
        clock.start()
        loss.backward()
        t["backward"] = clock.stop()
        clock.start()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        t["optimizer"] = clock.stop()
        t["train_loss"] = float(loss.detach())
        clock.start()
        losses = score(
            model,
            loss_fn,
            batch,
            size,
            train_mode=score_in_train_mode,
            autocast_dtype=autocast_dtype,
        ).numpy()
        scores = None
        if reference is not None:  # its pass is part of the scoring cost
            values = reference.values(batch, sliceable, size, autocast_dtype)
            scores = reducible_scores(losses, values)
        t["scoring"] = clock.stop()
        t["losses"] = losses  # the signals read the losses, as Auto does

        clock.start()
        _machinery(losses, sliceable, selector, batcher, size, scores)
        t["selection"] = clock.stop()

        out.append(t)
    return out


def _machinery(
    losses: np.ndarray,
    sliceable: Any,
    selector: Selector,
    batcher: RefinedBatcher,
    size: int,
    scores: np.ndarray | None = None,
) -> None:
    """What the loader does with a scored batch, with the loader's own parts: the sift step
    (history, decision, slicing, buffering; on the reducible scores with a reference), then
    joining into refined batches."""
    inputs = selector.state.sample_inputs(sliceable, size)
    rows = None if inputs is None else [inputs]
    if scores is None:
        sift_step(selector, batcher, sliceable, size, [losses], 0, rows)
    else:
        reducible_step(selector, batcher, sliceable, size, [scores], [losses], 0, rows)
    if batcher.batch_size is None:
        batcher.batch_size = size
    batcher.form_all()
    batcher.ready.clear()


class _Clock:
    def __init__(self, on_cuda: bool) -> None:
        self.on_cuda = on_cuda
        self._t0 = 0.0

    def start(self) -> None:
        if self.on_cuda:
            torch.cuda.synchronize()
        self._t0 = time.perf_counter()

    def stop(self) -> float:
        if self.on_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - self._t0


def _device_of(batch: Any) -> str:
    leaves, _ = torch.utils._pytree.tree_flatten(batch)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            return str(leaf.device)
    return "cpu"


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} (requires_grad={value.requires_grad})"
    return type(value).__name__


def _validate(
    model: Any,
    dataloader: Any,
    loss_fn: Any,
    optimizer: Any,
    steps: Any,
    warmup: Any,
    train_step: Any,
    policy: Any,
    transform: Any,
) -> None:
    check_model(model)
    check_dataloader(dataloader)
    check_loss_fn(loss_fn)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(
            f"Expected `optimizer` to be a torch.optim.Optimizer, but got "
            f"{type(optimizer).__name__}."
        )
    check_int("steps", steps, 1)
    check_int("warmup", warmup, 0)
    if train_step is not None and not callable(train_step):
        raise TypeError(
            "Expected `train_step` to be None or callable as train_step(model, batch) -> scalar "
            f"loss, but got {type(train_step).__name__}."
        )
    if policy is not None:
        check_policy(policy)
    check_transform(transform)
