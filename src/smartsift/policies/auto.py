"""``Auto``: sift only where it pays, decided online from cheap signals, the reason in ``stats``.

Sifting pays only where a scoring pass is cheap against a training step *and* a few samples
carry most of the loss; while the model is still data-hungry every dropped sample is learning
forgone. :class:`Auto` wraps a policy and decides, as training goes, whether to run it or to
train plain (every sample kept and, between short probes, not even scored, so that plain costs
nothing extra). The decision is the :class:`AutoController`'s, the state ``Auto`` binds to a
run: it plans each round of the :class:`~smartsift.SiftingDataLoader`, which feeds it the
round's losses and timings through the policy protocol (:mod:`smartsift.policies.base`).

The signals, all global (summed or pooled over DDP ranks, so that every rank decides alike):

- ``f``: the scoring pass and the sifting machinery per sample, over ``T``, the user's training
  step per sample, and ``d``, data loading per sample over ``T``. By default a stated
  assumption, ``f = cost_ratio = 1/3`` and ``d = 0`` (:data:`ASSUMED_COST_RATIO`: a backward
  pass costs about twice a forward, so a no-grad scoring forward is about a third of a training
  step): no clock enters the decision, and identically seeded runs decide identically. With
  ``cost_ratio="measure"`` (:data:`MEASURE_COSTS`) they are timed instead (``T`` as the time
  between the loader handing over a batch and the next request, which is the user's step):
  medians over the last 32 rounds that measured them.
- ``keep``: the kept fraction of the recent sifted rounds (the policy's nominal one before).
- ``c``: the loss concentration (:func:`smartsift.policies.signals.loss_concentration`) of the last
  ``probe`` scored rounds' losses, and its rise since the previous judgement.
- progress: while sifting, every ``every`` rounds a window of ``probe`` rounds trains plain
  (scored, everything kept); the loss decrease per unit of compute (the slope of each round's
  mean loss against the compute spent, in training-step units: a plain round costs its samples,
  a sifted one ``f`` per sample plus its kept samples) of that window is compared with the
  sifted windows just before and after it.

The rule, judged after each probe (plain) or each cycle of ``every`` rounds (sifting); the
first gate that fails decides plain, with its reason:

1. cost: the predicted per-epoch speedup ``(1 + d) / (d + f + keep)``
   (:func:`smartsift.engine.costmodel.predicted_speedup`) must reach
   ``min_speedup`` (``min_speedup - 0.05`` to stay sifting);
2. concentration: ``c`` must reach ``min_concentration`` (``- 0.05`` to stay sifting);
3. held-out (only with ``validate=``): the validation metric must have set no new best in the
   last ``patience`` checks (one about every ``every`` rounds; training plain, before the probe,
   which is not even scored while the metric improves): while it still improves, every
   sample's compute buys held-out gains, and a run that sifts them away ends lower;
4. trend, to start sifting: ``c`` must not have risen by more than 0.05 since the previous
   judgement (the model is still learning its easier samples, which sifting would drop);
5. progress, to stay sifting: over at least 3 comparisons, plain windows must not lower the
   loss per unit of compute significantly faster (mean difference over two standard errors)
   and by more than 10 % than the sifted windows around them. After such a fallback the next
   attempt waits twice as long each time (up to 16 cycles).

Plain is the fallback and the start: Auto begins by measuring (``probe`` rounds scored, all
kept), then sifts or trains plain; training plain, it probes again every ``every`` rounds.

Loss reuse (a :class:`~smartsift.ReuseSampler`) runs no scoring pass and decides a whole epoch
at once: it asks :meth:`AutoController.judge_epoch` once per epoch, which applies
:func:`judge_reuse` to the losses the training steps recorded: the first epoch trains
everything (measuring), then the concentration gate and, with ``validate=``, the held-out gate
(one check per epoch after the first); the cost gate is moot (the predicted speedup is
``1 / keep``), and the trend and progress gates need rounds that loss reuse does not have.

Example:
    >>> import smartsift as ss
    >>> auto = ss.Auto(ss.RelativeProbabilistic(beta=1.0), cost_ratio=0.2)
    >>> sift, reason = judge(sifting=False, f=0.2, d=0.0, keep=0.5, c=0.95, rise=math.nan,
    ...                      comparison=None, auto=auto)
    >>> sift, reason[:50]
    (True, 'sift: predicted 1.43x faster per epoch at keep 0.5')
    >>> judge(sifting=False, f=0.2, d=0.0, keep=0.5, c=0.58, rise=math.nan,
    ...       comparison=None, auto=auto)[1][:40]
    'plain (even losses): the higher-loss hal'
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartsift.engine.checks import is_real
from smartsift.engine.costmodel import MIN_SPEEDUP, predicted_speedup
from smartsift.engine.history import LossHistory
from smartsift.policies.base import (
    MEASURE,
    SIFT,
    SKIP,
    Needs,
    Policy,
    PolicyState,
    Proposal,
    RoundReport,
    RoundTimes,
    RunContext,
)
from smartsift.policies.rules import RelativeProbabilistic
from smartsift.policies.signals import EVEN_LOSSES, loss_concentration

__all__ = [
    "ASSUMED_COST_RATIO",
    "MEASURE",
    "MEASURE_COSTS",
    "PLAIN",
    "SCALARS",
    "SIFT",
    "SKIP",
    "Auto",
    "AutoController",
    "HeldOut",
    "held_out_gate",
    "judge",
    "judge_reuse",
    "progress_rate",
    "track_best",
]

# States (what a round does, SKIP, MEASURE or SIFT, is the policy protocol's).
MEASURING, SIFTING, PLAIN_STATE = "measuring", "sift", "plain"
PLAIN = PLAIN_STATE

SCALARS = 6
"""Per-rank numbers a round sends: overhead s, scored n, step s, trained n, data s, raw n."""

TIMING_WINDOW = 32
SPEEDUP_HYSTERESIS = 0.05
CONCENTRATION_HYSTERESIS = 0.05
CONCENTRATING = 0.05
MIN_COMPARISONS = 3
COMPARISONS = 8
PROGRESS_MARGIN = 0.1
MAX_BACKOFF = 4

ASSUMED_COST_RATIO = 1 / 3
"""``Auto``'s default ``cost_ratio``: a backward pass costs about twice a forward, so a training
step is about three forwards and a no-grad scoring forward about a third of it."""

MEASURE_COSTS = "measure"
"""``cost_ratio=MEASURE_COSTS`` times the scoring pass, the step and data loading instead."""

REUSE_MEASURING = (
    "measuring: every candidate trained in the first epoch, to judge whether sifting pays"
)


@dataclass(frozen=True, repr=False)
class Auto(Policy):
    """Sift with ``policy`` where it pays, train plain where it does not (see the module).

    Args:
        policy: how to sift when sifting pays (a :class:`~smartsift.Guarded` policy too).
        every: raw batches (rounds) between judgements: a sifting cycle, or the plain stretch
            between probes.
        probe: rounds of a probe: scored with everything kept; also the length of the windows
            that compare progress.
        min_speedup: the predicted per-epoch speedup needed to sift.
        min_concentration: the loss concentration needed to sift (the share of the loss the
            higher-loss half of the samples carries).
        cost_ratio: the scoring pass over a training step, per sample (``F/T``, e.g. from
            ``ss.profile``: ``report.scoring_s / report.step_s``); by default 1/3, the usual
            assumption (:data:`ASSUMED_COST_RATIO`), with data loading taken as free. No clock
            enters the decision, so identically seeded runs decide identically.
            ``"measure"`` times the scoring pass, the training step and data loading as
            training goes instead: the decision then follows the machine, and two runs can
            differ.
        validate: ``validate() -> float``, the metric you judge the model by on held-out data
            (a validation loss, or accuracy with ``higher_is_better=True``; never the test
            set). Called about every ``every`` raw batches: training plain, before each probe
            (while it still improves, no probe is scored at all), otherwise at each judgement;
            under ``torch.no_grad()``; the loader puts the model back in the training mode it found,
            so call ``model.eval()`` inside if the model has dropout or batch norm. Under DDP
            every rank calls it at the same raw batch and the value is averaged over ranks.
            With it, Auto sifts only once the metric has stopped improving: the one signal
            that sees the harm of sifting away compute a model still turns into held-out gains.
            Under loss reuse it is called once per epoch after the first, and must itself put
            back the training mode it found.
        higher_is_better: whether a larger ``validate()`` is better.
        patience: checks without a new best before the metric counts as stalled.
        min_delta: how much a value must beat the best by to count as a new best.

    Example:
        >>> import smartsift as ss
        >>> ss.Auto(ss.TopK(0.5), cost_ratio=0.2)
        Auto(TopK(keep=0.5), cost_ratio=0.2)
        >>> ss.Auto(ss.TopK(0.5), cost_ratio="measure")  # time the passes: follows the clock
        Auto(TopK(keep=0.5), cost_ratio='measure')
        >>> ss.Auto().expected_keep
        0.5
        >>> def val_accuracy() -> float:
        ...     return 0.9  # evaluate the model on a held-out set here
        >>> ss.Auto(ss.TopK(0.5), validate=val_accuracy, higher_is_better=True)
        Auto(TopK(keep=0.5), validate='val_accuracy', higher_is_better=True)
    """

    policy: Policy = field(default_factory=RelativeProbabilistic)
    every: int = 100
    probe: int = 5
    min_speedup: float = MIN_SPEEDUP
    min_concentration: float = EVEN_LOSSES
    cost_ratio: float | str = ASSUMED_COST_RATIO
    validate: Callable[[], float] | None = None
    higher_is_better: bool = False
    patience: int = 3
    min_delta: float = 0.0

    outermost = True  # a class attribute, not a field: no policy may wrap Auto

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy) or self.policy.outermost:
            raise TypeError(
                f"Expected `policy` to be a smartsift Policy other than Auto, but got "
                f"{self.policy!r}."
            )
        p = self.probe
        if not isinstance(p, int) or isinstance(p, bool) or p < 2:
            raise ValueError(f"Expected `probe` to be an int of at least 2, but got {p!r}.")
        e = self.every
        if not isinstance(e, int) or isinstance(e, bool) or e < 3 * p:
            raise ValueError(
                f"Expected `every` to be an int of at least 3 * probe = {3 * p}, but got {e!r}."
            )
        s = self.min_speedup
        if not is_real(s) or s <= 0:
            raise ValueError(f"Expected `min_speedup` to be a positive float, but got {s!r}.")
        c = self.min_concentration
        if not is_real(c) or not 0.5 <= c <= 1:
            raise ValueError(
                f"Expected `min_concentration` to be a float in [0.5, 1], but got {c!r}."
            )
        r = self.cost_ratio
        if r != MEASURE_COSTS and not (is_real(r) and float(r) >= 0):
            raise ValueError(
                f"Expected `cost_ratio` to be a non-negative float (the scoring pass over a "
                f"training step, per sample; default 1/3) or {MEASURE_COSTS!r} (time them as "
                f"training goes, which makes the decision follow the clock), but got {r!r}."
            )
        self._check_held_out()

    def _check_held_out(self) -> None:
        v = self.validate
        if v is not None and not callable(v):
            raise TypeError(
                f"Expected `validate` to be None or a callable `validate() -> float` (the "
                f"held-out metric), but got {v!r}."
            )
        if not isinstance(self.higher_is_better, bool):
            raise TypeError(
                f"Expected `higher_is_better` to be a bool, but got {self.higher_is_better!r}."
            )
        p = self.patience
        if not isinstance(p, int) or isinstance(p, bool) or p < 1:
            raise ValueError(f"Expected `patience` to be a positive int, but got {p!r}.")
        m = self.min_delta
        if not is_real(m) or m < 0:
            raise ValueError(f"Expected `min_delta` to be a non-negative float, but got {m!r}.")
        if v is None:
            given = [n for n in HELD_OUT_FIELDS if getattr(self, n) != _DEFAULTS[n]]
            if given:
                raise ValueError(
                    f"{', '.join(f'`{n}`' for n in given)} only apply to the held-out metric, "
                    f"but `validate` is None: pass validate=... (a callable returning the "
                    "metric on held-out data), or leave them at their defaults."
                )

    def __repr__(self) -> str:
        return Policy.format_description(self.describe())

    @property
    def history(self) -> int:  # type: ignore[override]
        return self.policy.history

    @property
    def measures_costs(self) -> bool:
        """Whether Auto times the scoring pass and the step (``cost_ratio="measure"``)."""
        return isinstance(self.cost_ratio, str)

    @property
    def expected_keep(self) -> float:
        """The wrapped policy's: a planning figure (Auto may train plain, keeping everything)."""
        return self.policy.expected_keep

    def describe(self) -> dict[str, Any]:
        """The type and the fields that differ from their defaults, the policy's nested."""
        fields: dict[str, Any] = {"policy": self.policy.describe()}
        defaults = Auto.__dataclass_fields__
        for name in ("every", "probe", "min_speedup", "min_concentration", "cost_ratio"):
            value = getattr(self, name)
            if value != defaults[name].default:
                fields[name] = value
        if self.validate is not None:
            # A name, not the callable: descriptions are saved in checkpoints as plain values.
            fields["validate"] = _callable_name(self.validate)
            for name in HELD_OUT_FIELDS:
                if getattr(self, name) != defaults[name].default:
                    fields[name] = getattr(self, name)
        return {"type": "Auto", "fields": fields}

    def make_history(self) -> LossHistory | None:
        return self.policy.make_history()

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        """The wrapped policy's mask; whether it runs at all is the controller's decision."""
        return self.policy.keep_mask(losses, history, generator)

    def bind(self) -> AutoController:
        """The controller that plans this run's rounds (see :class:`AutoController`)."""
        return AutoController(self)


HELD_OUT_FIELDS = ("higher_is_better", "patience", "min_delta")
_DEFAULTS = {n: Auto.__dataclass_fields__[n].default for n in HELD_OUT_FIELDS}


def _callable_name(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    return str(getattr(inner, "__qualname__", type(inner).__name__))


@dataclass(frozen=True)
class HeldOut:
    """The held-out metric's record: checks so far, the best value, checks since it, the last.

    Example:
        >>> h = HeldOut()
        >>> for v in (0.9, 0.7, 0.72, 0.71):
        ...     h = track_best(h, v, higher_is_better=False, min_delta=0.0)
        >>> h.checks, h.best, h.since_best, h.last
        (4, 0.7, 2, 0.71)
    """

    checks: int = 0
    best: float = math.nan
    since_best: int = 0
    last: float = math.nan

    def stalled(self, patience: int) -> bool:
        """Whether the last ``patience`` checks set no new best."""
        return self.checks > patience and self.since_best >= patience


def track_best(held: HeldOut, value: float, *, higher_is_better: bool, min_delta: float) -> HeldOut:
    """``held`` after one more check of value ``value``; a non-finite value is no new best."""
    sign = 1.0 if higher_is_better else -1.0
    better = math.isfinite(value) and (
        not math.isfinite(held.best) or sign * (value - held.best) > min_delta
    )
    if better:
        return HeldOut(held.checks + 1, value, 0, value)
    return HeldOut(held.checks + 1, held.best, held.since_best + 1, value)


def progress_rate(costs: Sequence[float], losses: Sequence[float]) -> float:
    """How fast the loss fell per unit of compute over a window of rounds (NaN if unknown).

    ``losses[i]`` is round ``i``'s mean loss, measured before its training; ``costs[i]`` the
    compute round ``i`` spent, so round ``i``'s loss follows ``sum(costs[:i])`` of compute.
    Returns minus the least-squares slope: positive when the loss falls.

    Example:
        >>> progress_rate([1.0, 1.0, 1.0], [3.0, 2.0, 1.0])
        1.0
    """
    if len(losses) < 2:
        return math.nan
    x = np.concatenate([[0.0], np.cumsum(np.asarray(costs[:-1], dtype=np.float64))])
    y = np.asarray(losses, dtype=np.float64)
    xc = x - x.mean()
    denom = float((xc * xc).sum())
    if not denom > 0 or not np.isfinite(y).all():
        return math.nan
    return -float((xc * (y - y.mean())).sum() / denom)


def judge(
    *,
    sifting: bool,
    f: float,
    d: float,
    keep: float,
    c: float,
    rise: float,
    comparison: tuple[float, float, int] | None,
    auto: Auto,
    held_out: HeldOut | None = None,
) -> tuple[bool, str] | None:
    """The rule: whether to sift from here, and why; None when the signals cannot tell yet.

    Args:
        sifting: whether Auto sifts now (the thresholds to stay are lower, by a hysteresis).
        f: scoring and machinery over a training step, per sample.
        d: data loading over a training step, per sample.
        keep: the kept fraction when sifting.
        c: the loss concentration of the latest scored losses.
        rise: how much ``c`` rose since the previous judgement (NaN if unknown).
        comparison: ``(t, ratio, n)`` of the progress comparisons so far: the t statistic of
            plain-minus-sifted loss decrease per compute, the ratio of the mean decreases and
            their number; None before any.
        auto: the thresholds.
        held_out: the validation metric's record (with ``auto.validate`` only).
    """
    if math.isnan(f) or math.isnan(c):
        return None
    speedup = predicted_speedup(1.0, keep, f, d)
    need = auto.min_speedup - (SPEEDUP_HYSTERESIS if sifting else 0.0)
    if speedup < need:
        return False, (
            f"plain (cost): a scoring pass costs {f:.0%} of a training step, so sifting at keep "
            f"{keep:.2f} would be at most {speedup:.2f}x faster per epoch (needs {need:.2f}x)"
        )
    need_c = auto.min_concentration - (CONCENTRATION_HYSTERESIS if sifting else 0.0)
    if c < need_c:
        return False, _even_losses(c, need_c)
    improving = held_out_gate(held_out, auto) if held_out is not None else None
    if improving is not None:
        return False, improving
    if not sifting and math.isfinite(rise) and rise > CONCENTRATING:
        return False, (
            f"plain (still concentrating): the higher-loss half's share of the loss rose by "
            f"{rise:.0%} since the last check, to {c:.0%}: the model is still learning the "
            "samples sifting would drop"
        )
    if sifting and comparison is not None:
        t, ratio, n = comparison
        if n >= MIN_COMPARISONS and t > 2.0 and ratio > 1.0 + PROGRESS_MARGIN:
            return False, (
                f"plain (progress): per unit of compute, plain windows lowered the loss "
                f"{ratio:.2f}x as fast as the sifted windows around them ({n} comparisons)"
            )
    return True, _sifting(speedup, keep, c)


def judge_reuse(
    *, sifting: bool, keep: float, c: float, auto: Auto, held_out: HeldOut | None = None
) -> tuple[bool, str] | None:
    """Loss reuse's rule for one epoch: whether to sift it, and why; None when the losses
    cannot tell (fewer than two, or none positive).

    :func:`judge`'s gates that apply without a scoring pass, in its words: the loss
    concentration ``c`` of the recorded losses, then the held-out metric. The cost gate is
    moot (nothing is scored: the predicted speedup is ``1 / keep``), and the trend and progress
    gates compare rounds, which an epoch decided at once does not have.

    Args:
        sifting: whether the previous epoch sifted (the concentration needed to stay is lower).
        keep: the kept fraction when sifting.
        c: the loss concentration of the epoch's recorded losses.
        auto: the thresholds.
        held_out: the validation metric's record (with ``auto.validate`` only).

    Example:
        >>> sift, reason = judge_reuse(sifting=False, keep=0.5, c=0.9, auto=Auto())
        >>> sift, reason[:51]
        (True, 'sift: predicted 2.00x faster per epoch at keep 0.50')
        >>> judge_reuse(sifting=False, keep=0.5, c=0.6, auto=Auto())[1][:20]
        'plain (even losses):'
    """
    if math.isnan(c):
        return None
    need_c = auto.min_concentration - (CONCENTRATION_HYSTERESIS if sifting else 0.0)
    if c < need_c:
        return False, _even_losses(c, need_c)
    improving = held_out_gate(held_out, auto) if held_out is not None else None
    if improving is not None:
        return False, improving
    return True, _sifting(predicted_speedup(1.0, keep, 0.0), keep, c)


def _even_losses(c: float, need: float) -> str:
    return (
        f"plain (even losses): the higher-loss half of the samples carries {c:.0%} of the "
        f"loss (needs {need:.0%}): the model still learns from nearly every sample"
    )


def _sifting(speedup: float, keep: float, c: float) -> str:
    return (
        f"sift: predicted {speedup:.2f}x faster per epoch at keep {keep:.2f}; the higher-loss "
        f"half of the samples carries {c:.0%} of the loss"
    )


def held_out_gate(held_out: HeldOut, auto: Auto) -> str | None:
    """The reason to stay plain while the held-out metric still improves, or None if stalled.

    Example:
        >>> auto = Auto(validate=lambda: 0.0)
        >>> held_out_gate(HeldOut(checks=4, best=0.5, since_best=3, last=0.6), auto) is None
        True
    """
    if held_out.stalled(auto.patience):
        return None
    return (
        f"plain (held-out improving): the validation metric is {held_out.last:.4g}, its best "
        f"{held_out.best:.4g} set {held_out.since_best} check(s) ago (sifting waits for "
        f"{auto.patience} checks without a better one): the model still turns compute into "
        "held-out gains"
    )


class AutoController(PolicyState):
    """The bound state of one :class:`Auto`: what each round does, the signals, the decision.

    Every rank holds one and feeds it the same global figures, so all decide alike. Per round:
    :meth:`kind` says what the round does (``"skip"``: pass through unscored; ``"measure"``:
    score, keep everything; ``"sift"``: run the wrapped policy's state); then :meth:`observe`
    takes the round's losses, kept counts and timings and, at a judgement, applies
    :func:`judge`. A loader drives it through the policy protocol (:meth:`end_round`); loss
    reuse asks :meth:`judge_epoch` once per epoch instead, and then decides with the wrapped
    policy's state only in the epochs it sifts.

    Example:
        >>> import smartsift as ss
        >>> ctl = AutoController(ss.Auto(ss.TopK(0.5), probe=2, every=6, cost_ratio=0.1))
        >>> ctl.kind(), ctl.state
        ('measure', 'measuring')
        >>> concentrated = [np.array([0.0, 0.0, 0.0, 4.0])]
        >>> for _ in range(2):
        ...     _ = ctl.observe(concentrated, [4], [np.zeros(SCALARS)])
        >>> ctl.state, ctl.kind()
        ('sift', 'sift')
    """

    name = "auto"
    key = "auto"

    def __init__(self, auto: Auto) -> None:
        super().__init__(auto)
        self.auto = auto
        self.inner = auto.policy.bind()
        inner = self.inner.needs
        # No scoring pass needed: loss reuse drives Auto too, through judge_epoch.
        self.needs = Needs(ids=inner.ids, labels=inner.labels, held_out=auto.validate is not None)
        self.state = MEASURING
        self.reason = "measuring: every raw batch scored and kept, to judge whether sifting pays"
        self.position = 0  # rounds since the state began
        self.wait = 0  # plain: rounds passed through before the next probe
        self.backoff = 0
        self.f: deque[float] = deque(maxlen=TIMING_WINDOW)
        self.t: deque[float] = deque(maxlen=TIMING_WINDOW)
        self.d: deque[float] = deque(maxlen=TIMING_WINDOW)
        self.recent: deque[np.ndarray] = deque(maxlen=auto.probe)
        self.kept: deque[tuple[int, int]] = deque(maxlen=auto.every)
        self.last_c = math.nan
        self.window: list[tuple[float, float]] = []  # (cost, mean loss) of the current window
        self.rates: dict[str, float] = {}
        self.pairs: deque[tuple[float, float]] = deque(maxlen=COMPARISONS)  # (plain, sifted)
        self.judgements = 0
        self.held_out = HeldOut()
        self.per_epoch = False  # driven by loss reuse (judge_epoch), not by rounds
        self.judged_epoch = -1  # the epoch judge_epoch last judged (-1: none yet)

    # ------------------------------------------------------------------ the policy protocol
    @property
    def beta(self) -> float | None:
        return self.inner.beta

    def round_kind(self) -> str:
        return self.kind()

    def sample_inputs(self, batch: Any, size: int) -> np.ndarray | None:
        return self.inner.sample_inputs(batch, size)

    def round_scalars(self, times: RoundTimes) -> np.ndarray | None:
        """The timings :meth:`observe` decides from (:data:`SCALARS` numbers), with
        ``cost_ratio="measure"`` only: otherwise no clock reaches the state."""
        if not self.auto.measures_costs:
            return None
        return np.array(
            [times.overhead_s, times.scored, times.step_s, times.trained, times.data_s, times.raw],
            dtype=np.float64,
        )

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        """Everything kept in a measuring round, else the wrapped state's masks (always, under
        loss reuse: it decides only the epochs :meth:`judge_epoch` sifts)."""
        if not self.per_epoch and self.kind() == MEASURE:
            return [
                (np.ones(x.size, dtype=bool), np.ones(x.size) if probabilities else None)
                for x in losses
            ]
        return self.inner.propose(losses, history, generator, probabilities, ids, labels)

    def feedback(self, kept: int, decided: int) -> None:
        if self.per_epoch:
            if decided:
                self.kept.append((kept, decided))
            self.inner.feedback(kept, decided)
        elif self.kind() != MEASURE:
            self.inner.feedback(kept, decided)

    def end_round(self, report: RoundReport, context: RunContext) -> str | None:
        """Observes the round (with the held-out metric when one is due); returns the new
        reason when the state, or the kind of reason for it, changed."""
        held_out = None
        if self.validates_next():
            held_out = context.held_out(self._metric, "in Auto's validate()")
        changed = self.observe(report.losses, report.kept, report.scalars, held_out)
        return self.reason if changed else None

    def judge_epoch(
        self, epoch: int, losses: np.ndarray, context: RunContext | None
    ) -> tuple[bool, str]:
        """Loss reuse: whether to sift ``epoch``, and why (see :func:`judge_reuse`).

        The first epoch (0) trains everything. Every later one runs ``validate`` once, when
        given (through ``context``, or under ``torch.no_grad()`` in a single process), then
        judges ``losses``; when they cannot tell, the previous verdict stands. Asked again
        for the epoch it judged last, it answers as before without a second check.

        Example:
            >>> ctl = AutoController(Auto())
            >>> ctl.judge_epoch(0, np.zeros(0), None)[0]
            False
            >>> ctl.judge_epoch(1, np.array([0.0, 0.0, 0.1, 3.0]), None)[1][:46]
            'sift: predicted 2.00x faster per epoch at keep'
        """
        if self.per_epoch and epoch == self.judged_epoch:
            return self.state == SIFTING, self.reason
        # The wrapped policy follows the epochs too (SeTa's window); its answer is Auto's to
        # give, and no second held-out check runs.
        self.inner.judge_epoch(epoch, losses, None)
        self.per_epoch, self.judged_epoch = True, int(epoch)
        if epoch == 0:
            self.state, self.reason = MEASURING, REUSE_MEASURING
            return False, self.reason
        validating = self.auto.validate is not None
        if validating:
            self.held_out = track_best(
                self.held_out,
                self._held_out(context),
                higher_is_better=self.auto.higher_is_better,
                min_delta=self.auto.min_delta,
            )
        c = loss_concentration(np.asarray(losses, dtype=np.float64).ravel())
        verdict = judge_reuse(
            sifting=self.state == SIFTING,
            keep=self.keep,
            c=c,
            auto=self.auto,
            held_out=self.held_out if validating else None,
        )
        self.judgements += 1
        if math.isfinite(c):
            self.last_c = c
        if verdict is not None:
            self.state = SIFTING if verdict[0] else PLAIN_STATE
            self.reason = verdict[1]
        elif self.state == MEASURING:
            self.reason = REUSE_MEASURING
        return self.state == SIFTING, self.reason

    def _held_out(self, context: RunContext | None) -> float:
        if context is not None:
            return float(context.held_out(self._metric, "in Auto's validate()"))
        with torch.no_grad():
            return self._metric()

    def _metric(self) -> float:
        validate = self.auto.validate
        out: Any = validate() if validate is not None else math.nan
        if isinstance(out, torch.Tensor) and out.numel() == 1:
            out = out.item()
        if not isinstance(out, (int, float)) or isinstance(out, bool):
            raise TypeError(
                f"Expected `validate()` of Auto to return a number (the held-out metric), "
                f"but it returned {out!r}."
            )
        return float(out)

    def status(self) -> tuple[str, str]:
        return self.state, self.reason

    def inner_states(self) -> tuple[PolicyState, ...]:
        return (self.inner,)

    # ------------------------------------------------------------------ the round plan
    def kind(self) -> str:
        """What the next round does: ``"skip"``, ``"measure"`` or ``"sift"``."""
        if self.state == MEASURING:
            return MEASURE
        if self.state == PLAIN_STATE:
            return SKIP if self.position < self.wait else MEASURE
        return MEASURE if self._cycle() < self.auto.probe else SIFT

    def validates_next(self) -> bool:
        """Whether the next :meth:`observe` needs the held-out metric (``Auto(validate=...)``).

        Sifting or measuring, at each judgement. Training plain, before each probe instead:
        while the metric still improves, Auto stays plain without scoring a probe at all.
        """
        if self.auto.validate is None:
            return False
        if self.state == PLAIN_STATE:
            return self.position + 1 == self.wait
        return self._due(self.position + 1)

    def _cycle(self) -> int:
        return self.position % self.auto.every

    def _window_name(self) -> str | None:
        """Which comparison window a sifting-state round belongs to, if any."""
        if self.state != SIFTING:
            return None
        p, probe, every = self._cycle(), self.auto.probe, self.auto.every
        if p < probe:
            return "plain"
        if p < 2 * probe:
            return "after"
        if p >= every - probe:
            return "before"
        return None

    # ------------------------------------------------------------------ the signals
    @property
    def f_over_t(self) -> float:
        """The scoring pass and machinery over a training step, per sample: ``cost_ratio``, or
        measured with ``cost_ratio="measure"`` (NaN before a measurement)."""
        if not self.auto.measures_costs:
            return float(self.auto.cost_ratio)
        if not self.f or not self.t:
            return math.nan
        t = statistics.median(self.t)
        return statistics.median(self.f) / t if t > 0 else math.inf

    @property
    def d_over_t(self) -> float:
        if not self.auto.measures_costs or not self.d or not self.t:
            return 0.0
        t = statistics.median(self.t)
        return statistics.median(self.d) / t if t > 0 else 0.0

    @property
    def keep(self) -> float:
        """The kept fraction of the recent sifted rounds, or the policy's nominal one."""
        decided = sum(n for _, n in self.kept)
        if decided:
            return sum(k for k, _ in self.kept) / decided
        return self.auto.policy.expected_keep

    def concentration(self) -> float:
        """The loss concentration of the last ``probe`` scored rounds."""
        if not self.recent:
            return math.nan
        return loss_concentration(np.concatenate(list(self.recent)))

    def comparison(self) -> tuple[float, float, int] | None:
        """``(t, ratio, n)`` of the progress comparisons so far (see :func:`judge`)."""
        n = len(self.pairs)
        if n == 0:
            return None
        plain = np.array([p for p, _ in self.pairs])
        sifted = np.array([s for _, s in self.pairs])
        diff = float((plain - sifted).mean())
        sd = float((plain - sifted).std(ddof=1)) if n > 1 else math.inf
        # Identical differences: certain, or no difference at all.
        certain = math.copysign(math.inf, diff) if diff else 0.0
        t = diff / (sd / math.sqrt(n)) if sd > 0 else certain
        mean_plain, mean_sifted = float(plain.mean()), float(sifted.mean())
        # Sifted windows that made no progress: plain's is infinitely better, or no better.
        stalled = math.inf if mean_plain > 0 else 1.0
        ratio = mean_plain / mean_sifted if mean_sifted > 0 else stalled
        return t, ratio, n

    # ------------------------------------------------------------------ observing
    def observe(
        self,
        losses: Sequence[np.ndarray],
        kept: Sequence[int] | None,
        scalars: Sequence[np.ndarray],
        held_out: float | None = None,
    ) -> bool:
        """Takes one round's global figures; returns whether the state, or the kind of reason
        for it, changed.

        Args:
            losses: every rank's scored losses this round (empty arrays when skipped).
            kept: every rank's kept count in a sifted round, else None.
            scalars: every rank's :data:`SCALARS` timings (all zero when not measured).
            held_out: the validation metric, averaged over ranks, when this round judges and
                ``Auto`` has ``validate`` (see :meth:`validates_next`).
        """
        if held_out is not None:
            self.held_out = track_best(
                self.held_out,
                float(held_out),
                higher_is_better=self.auto.higher_is_better,
                min_delta=self.auto.min_delta,
            )
        kind = self.kind()
        window = self._window_name()
        self._timings(scalars)
        finite = [x[np.isfinite(x)] for x in losses]
        pooled = np.concatenate(finite) if finite else np.empty(0)
        n_raw = sum(x.size for x in losses)
        if kind != SKIP and pooled.size:
            self.recent.append(pooled)
        if kind == SIFT and kept is not None and n_raw:
            self.kept.append((int(sum(kept)), n_raw))
        if window is not None and pooled.size:
            cost = self._cost(kind, n_raw, kept)
            self._track(window, cost, float(pooled.mean()))
        self.position += 1
        if held_out is not None and self.state == PLAIN_STATE:
            return self._precheck()
        return self._maybe_judge()

    def _timings(self, scalars: Sequence[np.ndarray]) -> None:
        if not scalars or scalars[0].size < SCALARS:
            return
        total = np.sum(np.stack(list(scalars)), axis=0)
        over_s, scored, step_s, trained, data_s, raw = (float(v) for v in total[:SCALARS])
        if scored > 0:
            self.f.append(over_s / scored)
        if trained > 0:
            self.t.append(step_s / trained)
        if raw > 0:
            self.d.append(data_s / raw)

    def _cost(self, kind: str, n_raw: int, kept: Sequence[int] | None) -> float:
        """The compute of a round in training-step units, as the mode would spend it alone."""
        if kind == MEASURE:
            return float(n_raw)  # plain training: no scoring pass
        f = self.f_over_t
        return (f if math.isfinite(f) else 0.0) * n_raw + float(sum(kept or ()))

    def _track(self, window: str, cost: float, mean_loss: float) -> None:
        self.window.append((cost, mean_loss))
        if len(self.window) < self.auto.probe:
            return
        costs, means = zip(*self.window, strict=True)
        self.rates[window] = progress_rate(costs, means)
        self.window = []
        if window == "after" and "plain" in self.rates:
            sifted = [self.rates[w] for w in ("before", "after") if w in self.rates]
            pair = (self.rates["plain"], float(np.mean(sifted)))
            if all(math.isfinite(v) for v in pair):
                self.pairs.append(pair)
            self.rates = {}

    # ------------------------------------------------------------------ judging
    def _due(self, position: int) -> bool:
        probe, every = self.auto.probe, self.auto.every
        if self.state == MEASURING:
            return position >= probe and position % probe == 0
        if self.state == PLAIN_STATE:
            return position >= self.wait + probe
        return position % every == 0

    def _maybe_judge(self) -> bool:
        if not self._due(self.position):
            return False
        sifting = self.state == SIFTING
        c = self.concentration()
        verdict = judge(
            sifting=sifting,
            f=self.f_over_t,
            d=self.d_over_t,
            keep=self.keep,
            c=c,
            rise=c - self.last_c,
            comparison=self.comparison() if sifting else None,
            auto=self.auto,
            held_out=self.held_out if self.auto.validate is not None else None,
        )
        self.judgements += 1
        if math.isfinite(c):
            self.last_c = c
        if verdict is None:  # cannot tell yet: go on as now, judge again at the next due point
            if self.state == PLAIN_STATE:
                self._enter_plain(self.reason, progress=False)
            return False
        sift, reason = verdict
        before = (self.state, self.reason.split(":")[0])
        if sift:
            if not sifting:
                self._enter_sift()
        else:
            self._enter_plain(reason, progress=sifting and reason.startswith("plain (progress)"))
        self.reason = reason
        return (self.state, reason.split(":")[0]) != before

    def _precheck(self) -> bool:
        """Training plain, before a probe: a held-out metric still improving keeps it plain
        (a judgement of its own, without scoring); a stalled one lets the probe run."""
        reason = held_out_gate(self.held_out, self.auto)
        if reason is None:
            return False
        self.judgements += 1
        before = self.reason.split(":")[0]
        self.reason = reason
        self._enter_plain(self.reason, progress=False)
        return self.reason.split(":")[0] != before

    def _enter_sift(self) -> None:
        self.state = SIFTING
        self.position = self.auto.probe  # the probe just run stands for the cycle's first
        self.pairs.clear()
        self.rates, self.window = {}, []

    def _enter_plain(self, reason: str, progress: bool) -> None:
        if progress:
            self.backoff = min(MAX_BACKOFF, self.backoff + 1)
        if self.state != PLAIN_STATE or progress:
            self.kept.clear()
        self.state = PLAIN_STATE
        self.position = 0
        self.wait = self.auto.every * 2**self.backoff - self.auto.probe
        self.rates, self.window = {}, []

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict[str, Any]:
        """The state as plain values."""
        return {
            "state": self.state,
            "reason": self.reason,
            "position": self.position,
            "wait": self.wait,
            "backoff": self.backoff,
            "f": list(self.f),
            "t": list(self.t),
            "d": list(self.d),
            "recent": [torch.from_numpy(np.asarray(x, dtype=np.float64)) for x in self.recent],
            "kept": [list(x) for x in self.kept],
            "last_c": self.last_c,
            "window": [list(x) for x in self.window],
            "rates": dict(self.rates),
            "pairs": [list(x) for x in self.pairs],
            "judgements": self.judgements,
            "held_out": dataclasses.asdict(self.held_out),
            "per_epoch": self.per_epoch,
            "judged_epoch": self.judged_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        self.state = str(state["state"])
        self.reason = str(state["reason"])
        self.position = int(state["position"])
        self.wait = int(state["wait"])
        self.backoff = int(state["backoff"])
        for name in ("f", "t", "d"):
            getattr(self, name).clear()
            getattr(self, name).extend(float(v) for v in state[name])
        self.recent.clear()
        self.recent.extend(x.numpy() for x in state["recent"])
        self.kept.clear()
        self.kept.extend((int(k), int(n)) for k, n in state["kept"])
        self.last_c = float(state["last_c"])
        self.window = [(float(c), float(m)) for c, m in state["window"]]
        self.rates = {str(k): float(v) for k, v in state["rates"].items()}
        self.pairs.clear()
        self.pairs.extend((float(p), float(s)) for p, s in state["pairs"])
        self.judgements = int(state["judgements"])
        self.held_out = HeldOut(**state.get("held_out", {}))
        # States saved before loss reuse could drive Auto: round-driven, no epoch judged.
        self.per_epoch = bool(state.get("per_epoch", False))
        self.judged_epoch = int(state.get("judged_epoch", -1))
