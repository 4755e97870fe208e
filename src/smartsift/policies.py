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
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from smartsift.history import LossHistory, weak_percentile

__all__ = [
    "Policy",
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


def _check_fraction(name: str, value: Any, low_open: bool, high_open: bool) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"Expected `{name}` to be a float in {interval}, but got {value!r}.")


def _check_history(value: Any) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(
            f"Expected `history` to be a positive int (how many recent losses to rank against), "
            f"but got {value!r}."
        )


def _draws(generator: torch.Generator, n: int) -> np.ndarray:
    return torch.rand(n, generator=generator, dtype=torch.float64).numpy()


class Policy(ABC):
    """Decides which samples of a raw batch to keep.

    Subclasses are frozen dataclasses. ``history`` is the length of the loss history the policy
    ranks against, or 0 for policies that look at one batch only.
    """

    history: int = 0

    @property
    @abstractmethod
    def expected_keep(self) -> float:
        """The fraction of samples the policy keeps on stationary losses."""

    @abstractmethod
    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        """Returns a boolean keep mask for ``losses``.

        ``history`` already holds ``losses``; ``generator`` is the loader's private generator.
        """

    def make_history(self) -> LossHistory | None:
        """Returns an empty loss history of the policy's length, or None if it needs none."""
        return LossHistory(self.history) if self.history > 0 else None

    def describe(self) -> dict[str, Any]:
        """The policy's type and field values, as plain values (saved in checkpoints).

        Example:
            >>> RelativeProbabilistic(beta=1).describe()
            {'type': 'RelativeProbabilistic', 'fields': {'beta': 1, 'history': 500}}
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        return {"type": type(self).__name__, "fields": values}

    def matches(self, description: dict[str, Any]) -> bool:
        """Whether :meth:`describe` of this policy equals ``description`` by value.

        Example:
            >>> RelativeProbabilistic(beta=1.0).matches(RelativeProbabilistic(beta=1).describe())
            True
        """
        mine = self.describe()
        return mine["type"] == description.get("type") and mine["fields"] == dict(
            description.get("fields", {})
        )

    @staticmethod
    def format_description(description: dict[str, Any]) -> str:
        """Formats :meth:`describe`'s output like a policy's repr.

        Example:
            >>> Policy.format_description(TopK(keep=0.5).describe())
            'TopK(keep=0.5)'
        """
        args = ", ".join(f"{k}={v!r}" for k, v in dict(description.get("fields", {})).items())
        return f"{description.get('type')}({args})"


@dataclass(frozen=True)
class RelativeProbabilistic(Policy):
    """The reference rule: keep a sample with probability ``percentile ** beta``.

    A loss's percentile is its rank among the last ``history`` losses. On stationary losses the
    kept fraction is ``1 / (1 + beta)``: beta 0.5 keeps 67 %, 1 keeps 50 %, 3 keeps 25 %.

    Args:
        beta: positive selectivity; larger keeps fewer, more strongly the highest losses.
        history: how many recent losses to rank against.

    Example:
        >>> RelativeProbabilistic(beta=1.0).expected_keep
        0.5
    """

    beta: float = 1.0
    history: int = 500

    def __post_init__(self) -> None:
        b = self.beta
        if not isinstance(b, (int, float)) or isinstance(b, bool) or not math.isfinite(b) or b <= 0:
            raise ValueError(f"Expected `beta` to be a positive float, but got {b!r}.")
        _check_history(self.history)

    @property
    def expected_keep(self) -> float:
        return 1.0 / (1.0 + self.beta)

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        ranked = history.sorted() if history is not None else np.sort(losses)
        return relative_probabilistic_mask(
            losses, ranked, self.beta, _draws(generator, losses.size)
        )


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
        _check_fraction("exclude", self.exclude, low_open=False, high_open=True)
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
        _check_fraction("keep", self.keep, low_open=True, high_open=False)

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
        _check_fraction("keep", self.keep, low_open=True, high_open=False)

    @property
    def expected_keep(self) -> float:
        return float(self.keep)

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        return uniform_mask(_draws(generator, losses.size), self.keep)
