"""Published dynamic-pruning rules as smartsift policies: InfoBatch and SeTa.

Both rules were published as data-set wrappers that prune each epoch from the losses the
training step recorded, which is what loss reuse (:class:`~smartsift.ReuseSampler`) does; here
each rule is a frozen policy over pure mask functions, so it runs in loss reuse, in the scoring
mode (:class:`~smartsift.SiftingDataLoader`) and under DDP like every other policy.

- :class:`InfoBatch` (Qin et al., "InfoBatch: Lossless Training Speed Up by Unbiased Dynamic
  Data Pruning", ICLR 2024): below-mean samples are pruned at random with probability
  ``prune``; the kept ones weigh ``1 / (1 - prune)`` with ``rescale=True``.
- :class:`SeTa` (Zhou, Gao and Wang, "Scale Efficient Training for Large Datasets", CVPR 2025):
  random pruning, then the survivors are grouped by loss and a window of adjacent groups,
  sliding from easy to hard one step per epoch, is trained.

Both rules read the loss *distribution* of an epoch (its mean, its loss groups). A loss reuse
epoch is decided in chunks of ``chunk_size`` scores, so the policies take the distribution
from their loss history, which holds the chunk and the scores decided before it: with
``history`` at least the data set's size that is the current epoch's scores so far and the
end of the previous epoch's, and with ``chunk_size=len(dataset)`` it is exactly the epoch's
recorded scores, as in the papers.

Example:
    >>> import numpy as np, torch
    >>> policy = InfoBatch(prune=0.5, history=4)
    >>> history = policy.make_history()
    >>> losses = np.array([0.1, 0.2, 0.9, 1.0])
    >>> history.extend(losses)
    >>> policy.keep_probabilities(losses, history).tolist()
    [0.5, 0.5, 1.0, 1.0]
    >>> InfoBatch.reuse_kwargs(epochs=8)["anneal"]
    0.125
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift.engine.checks import is_int, is_real
from smartsift.engine.history import LossHistory
from smartsift.policies.base import Policy, PolicyState, Proposal, RunContext

__all__ = [
    "ANNEAL",
    "EPOCH_HISTORY",
    "GROUPINGS",
    "InfoBatch",
    "SeTa",
    "SeTaState",
    "group_of",
    "history_mean",
    "infobatch_mask",
    "infobatch_probabilities",
    "kmeans_boundaries",
    "quantile_boundaries",
    "seta_mask",
    "seta_window",
]

ANNEAL = 0.125
"""The share of the last epochs both papers train without the loss rule (InfoBatch's
``delta = 0.875``): the sampler's ``anneal``."""

EPOCH_HISTORY = 50_000
"""The default history: an epoch of a small or mid-sized data set. Set ``history`` to the data
set's size so that the mean (InfoBatch) or the groups (SeTa) are the epoch's."""

GROUPINGS = ("kmeans", "quantile")
"""How :class:`SeTa` groups losses: 1-D k-means (the paper's) or groups of equal size."""

_BELOW_MEAN = 0.5  # the share of losses below their mean that expected_keep assumes


# ---------------------------------------------------------------------------- pure functions
def history_mean(history: LossHistory | None, losses: np.ndarray) -> float:
    """The mean of the loss history (which holds ``losses``), or of ``losses`` without one.

    Example:
        >>> history = LossHistory(8)
        >>> history.extend(np.array([1.0, 2.0, 6.0]))
        >>> history_mean(history, np.array([6.0])), history_mean(None, np.array([1.0, 3.0]))
        (3.0, 2.0)
    """
    if history is not None and len(history) > 0:
        return float(np.mean(history.sorted()))
    return float(np.mean(losses))


def infobatch_mask(losses: np.ndarray, mean: float, prune: float, draws: np.ndarray) -> np.ndarray:
    """InfoBatch's rule: a loss below ``mean`` is dropped when its draw is below ``prune``.

    Losses at or above the mean are always kept.

    Args:
        losses: the losses, shape ``(B,)``.
        mean: the mean they are compared with.
        prune: the probability of dropping a below-mean loss.
        draws: ``B`` uniform random numbers in [0, 1).

    Example:
        >>> infobatch_mask(
        ...     np.array([0.1, 0.2, 3.0]), 1.0, 0.5, np.array([0.2, 0.7, 0.1])
        ... ).tolist()
        [False, True, True]
    """
    return (losses >= mean) | (draws >= prune)


def infobatch_probabilities(losses: np.ndarray, mean: float, prune: float) -> np.ndarray:
    """Each loss's keep probability under :func:`infobatch_mask`: ``1 - prune`` below the
    mean, 1 at or above it.

    Example:
        >>> infobatch_probabilities(np.array([0.1, 1.0, 3.0]), 1.0, 0.25).tolist()
        [0.75, 1.0, 1.0]
    """
    return np.where(losses < mean, 1.0 - prune, 1.0)


def quantile_boundaries(sorted_values: np.ndarray, groups: int) -> np.ndarray:
    """The ``groups - 1`` boundaries that cut ``sorted_values`` into groups of equal size.

    Example:
        >>> quantile_boundaries(np.arange(8.0), 4).tolist()
        [2.0, 4.0, 6.0]
    """
    n = sorted_values.size
    if n == 0:
        return np.zeros(0)
    return sorted_values[(np.arange(1, groups) * n) // groups].astype(np.float64)


def kmeans_boundaries(sorted_values: np.ndarray, groups: int, max_iter: int = 100) -> np.ndarray:
    """The ``groups - 1`` boundaries of a 1-D k-means clustering of ``sorted_values``.

    Lloyd's algorithm from the quantile centres: in one dimension every cluster is a run of
    the sorted values, so each step costs ``O(groups log n)`` with prefix sums, and it stops
    when no value changes cluster. A boundary is the midpoint of two adjacent centres.

    Example:
        >>> values = np.sort(np.array([0.1, 0.2, 0.3, 5.0, 5.1, 9.0, 9.2]))
        >>> bounds = kmeans_boundaries(values, 3)
        >>> bounds.round(1).tolist(), group_of(values, bounds).tolist()
        ([2.6, 7.1], [0, 0, 0, 1, 1, 2, 2])
    """
    n = sorted_values.size
    if n == 0 or groups < 2:
        return np.zeros(0)
    values = sorted_values.astype(np.float64)
    sums = np.concatenate([[0.0], np.cumsum(values)])
    centres = values[((np.arange(groups) + 0.5) * n / groups).astype(np.int64)]
    splits: np.ndarray | None = None
    bounds = (centres[:-1] + centres[1:]) / 2
    for _ in range(max_iter):
        new = np.searchsorted(values, bounds, side="left")
        if splits is not None and np.array_equal(new, splits):
            break
        splits = new
        edges = np.concatenate([[0], splits, [n]])
        counts = np.diff(edges)
        means = (sums[edges[1:]] - sums[edges[:-1]]) / np.maximum(counts, 1)
        # An empty cluster keeps its centre; the running maximum keeps the centres in order.
        centres = np.maximum.accumulate(np.where(counts > 0, means, centres))
        bounds = (centres[:-1] + centres[1:]) / 2
    return bounds


def group_of(losses: np.ndarray, boundaries: np.ndarray) -> np.ndarray:
    """Each loss's group, 0 (lowest losses) to ``len(boundaries)``; a loss equal to a
    boundary belongs to the group above it.

    Example:
        >>> group_of(np.array([0.5, 2.0, 9.0]), np.array([2.0, 4.0])).tolist()
        [0, 1, 2]
    """
    return np.searchsorted(boundaries, losses, side="right")


def seta_window(step: int, groups: int, window: int) -> tuple[int, int]:
    """The groups ``[start, stop)`` that SeTa trains at ``step`` (epoch): all at step 0, then
    a window of ``window`` adjacent groups sliding from the easiest to the hardest, one group
    per step, and back to the easiest.

    Example:
        >>> [seta_window(s, groups=5, window=3) for s in range(5)]
        [(0, 5), (1, 4), (2, 5), (0, 3), (1, 4)]
    """
    if step <= 0:
        return 0, groups
    start = step % (groups - window + 1)
    return start, start + window


def seta_mask(
    group: np.ndarray, start: int, stop: int, prune: float, draws: np.ndarray
) -> np.ndarray:
    """SeTa's rule: random pruning (a draw below ``prune`` drops a sample), then only the
    samples whose loss group is in the window ``[start, stop)`` are kept.

    Example:
        >>> seta_mask(
        ...     np.array([0, 1, 2, 1]), 1, 3, 0.25, np.array([0.9, 0.9, 0.1, 0.5])
        ... ).tolist()
        [False, True, False, True]
    """
    return (group >= start) & (group < stop) & (draws >= prune)


# ---------------------------------------------------------------------------- checks
def _check_prune(value: Any, what: str, example: str) -> None:
    if not is_real(value) or not 0 <= value < 1:
        raise ValueError(
            f"Expected `prune` ({what}) to be a float in [0, 1), but got {value!r}; "
            f"pass e.g. {example}."
        )


def _check_history(value: Any) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(
            "Expected `history` (how many recent scores the rule reads its loss distribution "
            f"from) to be a positive int, but got {value!r}; pass history=len(dataset)."
        )


def _check_epochs(value: Any) -> None:
    if not is_int(value) or value < 1:
        raise ValueError(
            "Expected `epochs` (the run's number of epochs, which the annealing tail is "
            f"counted from) to be a positive int, but got {value!r}; pass e.g. epochs=200."
        )


def _uniform(generator: torch.Generator, n: int) -> np.ndarray:
    return torch.rand(n, generator=generator, dtype=torch.float64).numpy()


# ---------------------------------------------------------------------------- InfoBatch
@dataclass(frozen=True)
class InfoBatch(Policy):
    """InfoBatch (Qin et al., ICLR 2024): prune below-mean samples at random, rescale the rest.

    A sample whose score is below the mean score is dropped with probability ``prune``; every
    other sample is kept. A kept below-mean sample was kept with probability ``1 - prune``, so
    a :class:`~smartsift.ReuseSampler` with ``rescale=True`` weighs it ``1 / (1 - prune)`` (the
    paper's rescaling, which keeps the epoch's expected gradient that of all samples) and an
    above-mean one 1. The paper also trains every sample in the last 12.5 % of the epochs
    (``delta = 0.875``): that is the sampler's ``anneal=0.125``. :meth:`reuse_kwargs` gives the
    paper's sampler settings.

    The mean is taken over the policy's loss history, which holds the chunk being decided and
    the scores decided before it (see the module documentation): set ``history`` to the data
    set's size for the mean of an epoch's scores.

    ``prune`` is the share of the *below-mean* samples dropped, not of all samples: an epoch
    keeps ``1 - prune * b`` of its decided samples, ``b`` the share below the mean (about
    half for symmetric losses, more for skewed ones: 63 % for exponential losses).

    Args:
        prune: the probability of dropping a below-mean sample, in [0, 1) (the paper's 0.5).
        history: how many recent scores the mean is taken over.

    Example:
        >>> policy = InfoBatch(prune=0.5)
        >>> policy.expected_keep
        0.75
        >>> kwargs = InfoBatch.reuse_kwargs(epochs=100)
        >>> kwargs["rescale"], kwargs["anneal"], kwargs["max_weight"]
        (True, 0.125, None)
    """

    prune: float = 0.5
    history: int = EPOCH_HISTORY

    def __post_init__(self) -> None:
        _check_prune(self.prune, "the share of below-mean samples dropped", "prune=0.5")
        _check_history(self.history)

    @property
    def expected_keep(self) -> float:
        """``1 - prune / 2``: the kept fraction when half the losses lie below their mean.

        A planning figure (the loader's length, ``max_weight="auto"``): the realised fraction is
        ``1 - prune * b`` for a share ``b`` of losses below the mean.
        """
        return 1.0 - float(self.prune) * _BELOW_MEAN

    @property
    def weight_bound(self) -> float:
        """The largest weight ``1 / p`` a kept sample can take: ``1 / (1 - prune)``.

        Example:
            >>> InfoBatch(prune=0.5).weight_bound
            2.0
        """
        return 1.0 / (1.0 - float(self.prune))

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        mean = history_mean(history, losses)
        return infobatch_mask(losses, mean, float(self.prune), _uniform(generator, losses.size))

    def keep_probabilities(self, losses: np.ndarray, history: LossHistory | None) -> np.ndarray:
        return infobatch_probabilities(losses, history_mean(history, losses), float(self.prune))

    @staticmethod
    def reuse_kwargs(epochs: int) -> dict[str, Any]:
        """The :class:`~smartsift.ReuseSampler` settings of the paper's InfoBatch.

        ``rescale=True`` with ``max_weight=None`` (the weights are exactly ``1 / (1 - prune)``;
        the default ``"auto"`` bound, ``1 / expected_keep``, would cut them), ``anneal=0.125``
        over ``epochs`` (every sample trained in the last 12.5 % of epochs), and
        ``max_age=None`` (a pruned sample keeps its last score, as in the paper).

        Example:
            >>> InfoBatch.reuse_kwargs(epochs=8)["max_weight"] is None
            True
        """
        _check_epochs(epochs)
        return {
            "rescale": True,
            "max_weight": None,
            "anneal": ANNEAL,
            "epochs": epochs,
            "max_age": None,
        }


# ---------------------------------------------------------------------------- SeTa
@dataclass(frozen=True)
class SeTa(Policy):
    """SeTa (Zhou, Gao and Wang, "Scale Efficient Training for Large Datasets", CVPR 2025).

    Each epoch, a sample is first dropped at random with probability ``prune`` (removing
    redundancy); the samples are grouped by loss into ``groups`` clusters, ordered from the
    easiest (lowest losses) to the hardest, and only the samples in a window of ``window``
    adjacent groups are kept. The window slides one group per epoch from easy to hard and
    starts over (a curriculum that drops the hardest groups early in each cycle and the
    easiest late). The first epoch keeps every group.

    The groups are clusters of the policy's loss history (as for :class:`InfoBatch`, set
    ``history`` to the data set's size), found by 1-D k-means as in the paper
    (``grouping="kmeans"``) or cut at quantiles into groups of equal size
    (``grouping="quantile"``). The paper clusters the random survivors only; random pruning
    does not change the loss distribution, so the history's clusters are the same in
    expectation.

    The window moves with the epoch: loss reuse tells the bound state each epoch
    (:meth:`SeTaState.judge_epoch`); in the scoring mode, which has no epochs, it moves every
    ``history`` decided samples. The paper trains unweighted (``rescale=False``); with
    ``rescale=True`` a kept sample weighs ``1 / (1 - prune)``, which corrects the random part
    only. The paper's last 12.5 % of the epochs train a random ``1 - prune`` of all samples
    ("partial annealing"); the sampler's ``anneal=0.125`` trains all of them
    (:meth:`reuse_kwargs`).

    Args:
        prune: the probability of dropping a sample at random, in [0, 1) (the paper: 0.1 on
            CIFAR, 0 to 0.3 on ImageNet).
        groups: how many loss groups (the paper's 5).
        window: how many adjacent groups each epoch keeps, 1 to ``groups`` (the paper's
            ``window_scale`` times ``groups``, rounded: 0.9 of 5 groups is 4).
        grouping: ``"kmeans"`` (the paper's) or ``"quantile"`` (groups of equal size).
        history: how many recent scores the groups are formed from.

    Example:
        >>> SeTa(prune=0.1, groups=5, window=4).expected_keep
        0.72
    """

    prune: float = 0.1
    groups: int = 5
    window: int = 4
    grouping: str = "kmeans"
    history: int = EPOCH_HISTORY

    def __post_init__(self) -> None:
        _check_prune(self.prune, "the share of samples dropped at random", "prune=0.1")
        if not is_int(self.groups) or self.groups < 1:
            raise ValueError(
                "Expected `groups` (how many loss groups the window slides over) to be a "
                f"positive int, but got {self.groups!r}; pass e.g. groups=5 (the paper's)."
            )
        if not is_int(self.window) or not 1 <= self.window <= self.groups:
            raise ValueError(
                "Expected `window` (how many adjacent loss groups an epoch keeps) to be an int "
                f"from 1 to groups={self.groups!r}, but got {self.window!r}; pass "
                "window=round(window_scale * groups), e.g. 4 for 0.9 of 5 groups."
            )
        if self.grouping not in GROUPINGS:
            raise ValueError(
                f"Expected `grouping` to be one of {GROUPINGS}, but got {self.grouping!r}; "
                "pass 'kmeans' (clusters of the losses, as in the paper) or 'quantile' "
                "(groups of equal size)."
            )
        _check_history(self.history)

    @property
    def expected_keep(self) -> float:
        """``(1 - prune) * window / groups``: exact for ``grouping="quantile"`` on stationary
        losses after the first epoch; a planning figure for k-means groups, whose sizes
        follow the losses."""
        return (1.0 - float(self.prune)) * self.window / self.groups

    @property
    def weight_bound(self) -> float:
        """The largest weight ``1 / p`` a kept sample can take: ``1 / (1 - prune)``.

        Example:
            >>> SeTa(prune=0.2).weight_bound
            1.25
        """
        return 1.0 / (1.0 - float(self.prune))

    def bind(self) -> SeTaState:
        """A state that knows the epoch, hence the window (:class:`SeTaState`)."""
        return SeTaState(self)

    def boundaries(self, losses: np.ndarray, history: LossHistory | None) -> np.ndarray:
        """The loss groups' boundaries, from the history (or ``losses`` without one)."""
        ranked = history.sorted() if history is not None and len(history) else np.sort(losses)
        if self.grouping == "quantile":
            return quantile_boundaries(ranked, self.groups)
        return kmeans_boundaries(ranked, self.groups)

    def keep_mask(
        self,
        losses: np.ndarray,
        history: LossHistory | None,
        generator: torch.Generator,
        step: int = 0,
    ) -> np.ndarray:
        """The keep mask at ``step`` (the epoch; 0 keeps every group), given by the state."""
        draws = _uniform(generator, losses.size)
        start, stop = seta_window(step, self.groups, self.window)
        group = group_of(losses, self.boundaries(losses, history))
        return seta_mask(group, start, stop, float(self.prune), draws)

    def keep_probabilities(
        self, losses: np.ndarray, history: LossHistory | None, step: int = 0
    ) -> np.ndarray:
        """``1 - prune`` in the window at ``step``, 0 outside it."""
        start, stop = seta_window(step, self.groups, self.window)
        group = group_of(losses, self.boundaries(losses, history))
        inside = (group >= start) & (group < stop)
        return np.where(inside, 1.0 - float(self.prune), 0.0)

    @staticmethod
    def reuse_kwargs(epochs: int) -> dict[str, Any]:
        """The :class:`~smartsift.ReuseSampler` settings closest to the paper's SeTa.

        Unweighted (``rescale=False``), ``anneal=0.125`` over ``epochs`` (the paper trains a
        random ``1 - prune`` of all samples then; the sampler trains all of them), and
        ``max_age=None`` (a skipped sample keeps its last score).

        Example:
            >>> SeTa.reuse_kwargs(epochs=8)["rescale"]
            False
        """
        _check_epochs(epochs)
        return {"rescale": False, "anneal": ANNEAL, "epochs": epochs, "max_age": None}


class SeTaState(PolicyState):
    """The bound state of :class:`SeTa`: the step (epoch) that places the window.

    Loss reuse calls :meth:`judge_epoch` before deciding each epoch, so the step is the epoch
    (the same on every rank). Driven without epochs (the scoring mode), the step is the
    number of samples decided so far over ``history``. Saved in the selector's state.

    Example:
        >>> state = SeTa(groups=5, window=3, history=4).bind()
        >>> state.window
        (0, 5)
        >>> _ = state.decide([np.arange(4.0)], None, torch.Generator().manual_seed(0))
        >>> state.window
        (1, 4)
        >>> _ = state.judge_epoch(2, np.zeros(0), None)
        >>> state.step, state.window
        (2, (2, 5))
    """

    key = "seta"

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self.epoch: int | None = None  # the epoch loss reuse is deciding (None: no epochs)
        self.decided = 0  # samples decided so far

    @property
    def step(self) -> int:
        """The window's step: the epoch, or the decided samples over ``history``."""
        if self.epoch is not None:
            return self.epoch
        return self.decided // int(self.policy.history)

    @property
    def window(self) -> tuple[int, int]:
        """The groups ``[start, stop)`` the next decision keeps."""
        policy: Any = self.policy
        return seta_window(self.step, policy.groups, policy.window)

    def judge_epoch(
        self, epoch: int, losses: np.ndarray, context: RunContext | None
    ) -> tuple[bool, str]:
        """Takes the epoch loss reuse decides next; every epoch sifts."""
        self.epoch = int(epoch)
        return True, ""

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        policy: Any = self.policy
        step = self.step
        out: list[Proposal] = []
        for x in losses:
            if x.size == 0:  # draws nothing: the random stream does not depend on empty ranks
                out.append((np.zeros(0, dtype=bool), np.zeros(0) if probabilities else None))
                continue
            mask = policy.keep_mask(x, history, generator, step=step)
            probs = policy.keep_probabilities(x, history, step=step) if probabilities else None
            out.append((mask, probs))
        return out

    def feedback(self, kept: int, decided: int) -> None:
        self.decided += int(decided)

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": -1 if self.epoch is None else self.epoch, "decided": self.decided}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        epoch = int(state["epoch"])
        self.epoch = None if epoch < 0 else epoch
        self.decided = int(state["decided"])
