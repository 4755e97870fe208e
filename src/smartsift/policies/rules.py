"""Selection policies: which samples of a raw batch go on to the training step.

Each policy is a small frozen dataclass, validated when built, over a pure decision function
of (losses, sorted history, random draws) that is tested on its own. History-based policies
rank a batch against the recent history *including the batch itself* (as Selective-Backprop
does), so they work from the first scored batch; their ranks are noisy until the history holds
a few hundred losses, which a ``sift_delay`` can cover.

Example:
    >>> import numpy as np, torch
    >>> policy = QuantileThreshold(exclude=0.5, history=4)
    >>> history = policy.make_history()
    >>> losses = np.array([1.0, 2.0, 3.0, 4.0])
    >>> history.extend(losses)
    >>> policy.keep_mask(losses, history, torch.Generator().manual_seed(0)).tolist()
    [False, False, True, True]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift.engine.checks import check_fraction
from smartsift.engine.history import LossHistory, weak_percentile
from smartsift.policies.base import Policy, PolicyState
from smartsift.policies.keeprate import KeepRateState

__all__ = [
    "QuantileThreshold",
    "RelativeProbabilistic",
    "TopK",
    "Uniform",
    "quantile_threshold_mask",
    "relative_probabilistic_mask",
    "topk_mask",
    "uniform_mask",
]


def relative_probabilistic_mask(
    losses: np.ndarray, sorted_history: np.ndarray, beta: float, draws: np.ndarray
) -> np.ndarray:
    """Keeps each loss with probability ``percentile ** beta`` (the Selective-Backprop rule).

    Args:
        losses: the batch's losses, shape ``(B,)``.
        sorted_history: the recent losses in ascending order (including this batch's).
        beta: selectivity; about ``1 / (1 + beta)`` of stationary losses are kept.
        draws: ``B`` uniform random numbers in [0, 1).

    Example:
        >>> relative_probabilistic_mask(
        ...     np.array([1.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]), 1.0, np.array([0.5, 0.99])
        ... ).tolist()
        [False, True]
    """
    return draws < weak_percentile(sorted_history, losses) ** beta


def quantile_threshold_mask(
    losses: np.ndarray, sorted_history: np.ndarray, exclude: float
) -> np.ndarray:
    """Drops the losses that lie in the bottom ``exclude`` fraction of the history.

    A loss is dropped when the fraction of history losses less than or equal to it is at most
    ``exclude``: with a history of 1..100 and ``exclude=0.25``, losses 1 to 25 are dropped.

    Example:
        >>> quantile_threshold_mask(
        ...     np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 3.0, 4.0]), 0.5
        ... ).tolist()
        [False, False, True]
    """
    return weak_percentile(sorted_history, losses) > exclude


def topk_mask(losses: np.ndarray, keep: float) -> np.ndarray:
    """Keeps the ``ceil(keep * B)`` highest losses; ties go to the earlier sample.

    Example:
        >>> topk_mask(np.array([0.1, 0.9, 0.5, 0.9]), 0.5).tolist()
        [False, True, False, True]
    """
    n = losses.size
    k = min(n, math.ceil(keep * n - 1e-9))
    mask = np.zeros(n, dtype=bool)
    if k > 0:
        order = np.argsort(-losses, kind="stable")
        mask[order[:k]] = True
    return mask


def uniform_mask(draws: np.ndarray, keep: float) -> np.ndarray:
    """Keeps each sample with probability ``keep``, whatever its loss.

    Example:
        >>> uniform_mask(np.array([0.1, 0.7]), 0.5).tolist()
        [True, False]
    """
    return draws < keep


def _check_history(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Expected `history` to be a positive int (how many recent losses to rank against), "
            f"but got {value!r}."
        )


def _draws(generator: torch.Generator, n: int) -> np.ndarray:
    return torch.rand(n, generator=generator, dtype=torch.float64).numpy()


@dataclass(frozen=True, repr=False)
class RelativeProbabilistic(Policy):
    """The reference rule: keep a sample with probability ``percentile ** beta``.

    A loss's percentile is its rank among the last ``history`` losses. On stationary losses the
    kept fraction is ``1 / (1 + beta)``: beta 0.5 keeps 67 %, 1 keeps 50 %, 3 keeps 25 %.

    Give either ``beta`` or ``keep``, not both (neither means ``beta=1``). With ``keep``, the
    kept fraction is stated instead: its bound state
    (:class:`~smartsift.policies.keeprate.KeepRateState`) starts from ``beta = 1 / keep - 1``
    and adapts it online so that the realised kept fraction tracks ``keep`` whatever the loss
    distribution does (see :mod:`smartsift.policies.keeprate`); the policy holds no state.

    Args:
        beta: positive selectivity; larger keeps fewer, more strongly the highest losses.
        history: how many recent losses to rank against.
        keep: the fraction of samples to keep, in (0, 1); mutually exclusive with ``beta``.

    Example:
        >>> RelativeProbabilistic(beta=1.0).expected_keep
        0.5
        >>> RelativeProbabilistic(keep=0.3)
        RelativeProbabilistic(history=500, keep=0.3)
        >>> round(RelativeProbabilistic(keep=0.25).initial_beta, 6)
        3.0
    """

    beta: float | None = None
    history: int = 500
    keep: float | None = None

    def __post_init__(self) -> None:
        b = self.beta
        if self.keep is not None:
            if b is not None:
                raise ValueError(
                    f"Expected exactly one of `beta` and `keep`, but got beta={b!r} and "
                    f"keep={self.keep!r}; pass keep= to state the kept fraction, or beta= for "
                    "the reference rule."
                )
            check_fraction("keep", self.keep, low_open=True, high_open=True)
        else:
            if b is None:
                object.__setattr__(self, "beta", 1.0)
            elif (
                not isinstance(b, (int, float))
                or isinstance(b, bool)
                or not math.isfinite(b)
                or b <= 0
            ):
                raise ValueError(f"Expected `beta` to be a positive float, but got {b!r}.")
        _check_history(self.history)

    def __repr__(self) -> str:
        return Policy.format_description(self.describe())

    def bind(self) -> PolicyState:
        """A state that adapts beta to a stated ``keep`` (:mod:`smartsift.policies.keeprate`),
        or the plain state for a fixed beta."""
        return KeepRateState(self) if self.keep is not None else _FixedBeta(self)

    @property
    def adaptive(self) -> bool:
        """Whether the kept fraction is stated (``keep``) and ``beta`` adapted online."""
        return self.keep is not None

    @property
    def initial_beta(self) -> float:
        """``beta``, or for ``keep`` the beta that keeps ``keep`` of stationary losses."""
        if self.keep is not None:
            return 1.0 / self.keep - 1.0
        return float(self.beta)  # type: ignore[arg-type]

    @property
    def expected_keep(self) -> float:
        if self.keep is not None:
            return float(self.keep)
        return 1.0 / (1.0 + self.beta)  # type: ignore[operator]

    def _beta(self, beta: float | None) -> float:
        if beta is not None:
            return beta
        return self.beta if self.beta is not None else self.initial_beta

    def keep_probabilities(
        self, losses: np.ndarray, history: LossHistory | None, beta: float | None = None
    ) -> np.ndarray:
        """Each loss's keep probability ``percentile ** beta`` (``beta`` overrides the field)."""
        ranked = history.sorted() if history is not None else np.sort(losses)
        return weak_percentile(ranked, losses) ** self._beta(beta)

    def keep_mask(
        self,
        losses: np.ndarray,
        history: LossHistory | None,
        generator: torch.Generator,
        beta: float | None = None,
    ) -> np.ndarray:
        """The keep mask; ``beta`` (given by an adapting state) overrides the field."""
        ranked = history.sorted() if history is not None else np.sort(losses)
        return relative_probabilistic_mask(
            losses, ranked, self._beta(beta), _draws(generator, losses.size)
        )


class _FixedBeta(PolicyState):
    """The state of the reference rule at a fixed beta: stateless, but it reports its beta."""

    @property
    def beta(self) -> float:
        return float(self.policy.initial_beta)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class QuantileThreshold(Policy):
    """Deterministic: drop samples whose loss is in the bottom ``exclude`` of the history.

    Args:
        exclude: the fraction of the loss distribution to drop, in [0, 1); 0.25 drops the
            bottom quartile.
        history: how many recent losses the quantile is taken over.

    Example:
        >>> QuantileThreshold(exclude=0.25).expected_keep
        0.75
    """

    exclude: float = 0.25
    history: int = 500

    def __post_init__(self) -> None:
        check_fraction("exclude", self.exclude, high_open=True)
        _check_history(self.history)

    @property
    def expected_keep(self) -> float:
        return 1.0 - self.exclude

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        ranked = history.sorted() if history is not None else np.sort(losses)
        return quantile_threshold_mask(losses, ranked, self.exclude)


@dataclass(frozen=True)
class TopK(Policy):
    """Keep the ``ceil(keep * B)`` highest-loss samples of every raw batch (no history).

    Args:
        keep: the fraction of each raw batch to keep, in (0, 1].

    Example:
        >>> TopK(keep=0.3).expected_keep
        0.3
    """

    keep: float = 0.5

    def __post_init__(self) -> None:
        check_fraction("keep", self.keep, low_open=True)

    @property
    def expected_keep(self) -> float:
        return float(self.keep)

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        return topk_mask(losses, self.keep)


@dataclass(frozen=True)
class Uniform(Policy):
    """Keep each sample with probability ``keep``, whatever its loss: the control experiment.

    Args:
        keep: the probability of keeping a sample, in (0, 1].

    Example:
        >>> Uniform(keep=0.5).expected_keep
        0.5
    """

    keep: float = 0.5

    def __post_init__(self) -> None:
        check_fraction("keep", self.keep, low_open=True)

    @property
    def expected_keep(self) -> float:
        return float(self.keep)

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        return uniform_mask(_draws(generator, losses.size), self.keep)

    def keep_probabilities(self, losses: np.ndarray, history: LossHistory | None) -> np.ndarray:
        return np.full(losses.size, float(self.keep))
