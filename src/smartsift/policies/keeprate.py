"""Keep rates users can state: ``RelativeProbabilistic(keep=0.3)`` adapts its beta online.

The reference rule keeps a sample with probability ``percentile ** beta``. On stationary losses
that keeps ``1 / (1 + beta)`` of them, but when losses drift (they fall as the model learns, or
jump when the data changes) the percentiles of new losses against the recent history are no
longer uniform and the kept fraction wanders away from ``1 / (1 + beta)``. A stated ``keep``
is held by feedback instead: after each decision, ``log(beta)`` moves by the error of what was
just kept,

    ``log_beta += (kept - keep * decided) / (keep * (1 - keep) * horizon)``

(``keep * (1 - keep)`` is how fast the kept fraction falls per unit of ``log(beta)`` near the
stationary point, so one horizon of samples corrects a persistent error). Summed over any run,
the steps give an exact bound on the kept count:

    ``|kept_total - keep * decided_total| = keep * (1 - keep) * horizon * |log_beta - log_beta0|``

(with rounds of at most ``horizon / 2`` samples; larger rounds use twice their size as horizon),
so the cumulative kept fraction converges to ``keep`` at rate ``1 / decided_total`` as long as
beta stays within its clip range ``[BETA_MIN, BETA_MAX]`` (it leaves it only when no beta can
hold the target, e.g. losses that are all equal rank at percentile 1 and are always kept).

Example:
    >>> rate = KeepRate(target=0.25, horizon=100)
    >>> round(rate.beta, 6)
    3.0
    >>> rate.update(kept=40, decided=100)   # kept too many: beta rises
    >>> rate.beta > 3.0
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smartsift.engine.history import LossHistory
from smartsift.policies.base import Policy, PolicyState, Proposal

__all__ = ["BETA_MAX", "BETA_MIN", "KEEP_HORIZON", "KeepRate", "KeepRateState", "adapt_log_beta"]

KEEP_HORIZON = 256
"""How many decided samples a stated keep rate takes to correct a persistent error (at most):
short enough to follow a loss distribution that jumps faster than a long history turns over."""

BETA_MIN = 1e-3
BETA_MAX = 1e3
_LOG_MIN = math.log(BETA_MIN)
_LOG_MAX = math.log(BETA_MAX)


def adapt_log_beta(log_beta: float, kept: int, decided: int, target: float, horizon: int) -> float:
    """One feedback step on ``log(beta)`` after ``kept`` of ``decided`` samples were kept.

    Example:
        >>> adapt_log_beta(0.0, kept=5, decided=10, target=0.5, horizon=10)
        0.0
        >>> round(adapt_log_beta(0.0, kept=10, decided=10, target=0.5, horizon=10), 6)
        2.0
    """
    step = (kept - target * decided) / (target * (1.0 - target) * horizon)
    return min(_LOG_MAX, max(_LOG_MIN, log_beta + step))


class KeepRate:
    """The adaptation state of a stated keep rate: the current ``beta`` and the counts so far.

    Held by a :class:`KeepRateState` (the policy stays a frozen value) and saved in its
    ``state_dict``.

    Args:
        target: the fraction of samples to keep, in (0, 1).
        horizon: how many decided samples a persistent error takes to be corrected; the
            bound state uses ``min(history, KEEP_HORIZON)``. A round of more than
            ``horizon / 2`` samples is corrected over twice its size instead, so that large
            rounds do not overshoot.
    """

    def __init__(self, target: float, horizon: int) -> None:
        if not 0.0 < target < 1.0:
            raise ValueError(f"Expected `target` to be a float in (0, 1), but got {target!r}.")
        if horizon < 1:
            raise ValueError(f"Expected `horizon` to be a positive int, but got {horizon!r}.")
        self.target = float(target)
        self.horizon = int(horizon)
        self.log_beta = math.log(1.0 / self.target - 1.0)
        self.kept = 0
        self.decided = 0

    @property
    def beta(self) -> float:
        """The beta the next decision uses."""
        return math.exp(self.log_beta)

    @property
    def realised(self) -> float:
        """The kept fraction of every sample decided so far (NaN before the first)."""
        return self.kept / self.decided if self.decided else float("nan")

    def update(self, kept: int, decided: int) -> None:
        """Moves beta by the error of one decision: ``kept`` of ``decided`` samples kept."""
        if decided <= 0:
            return
        self.kept += int(kept)
        self.decided += int(decided)
        # A round larger than the horizon would overshoot: correct at most half of it at once.
        horizon = max(self.horizon, 2 * decided)
        self.log_beta = adapt_log_beta(self.log_beta, kept, decided, self.target, horizon)

    def state_dict(self) -> dict[str, Any]:
        """The state as plain values."""
        return {"log_beta": self.log_beta, "kept": self.kept, "decided": self.decided}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        self.log_beta = float(state["log_beta"])
        self.kept = int(state["kept"])
        self.decided = int(state["decided"])


class KeepRateState(PolicyState):
    """The bound state of a rule with a stated keep rate (``RelativeProbabilistic(keep=...)``).

    One beta decides a whole round (every rank), then one feedback step moves it by what the
    round kept. The policy must accept ``beta=`` in ``keep_mask`` and ``keep_probabilities``.

    Example:
        >>> import numpy as np, torch
        >>> import smartsift as ss
        >>> state = ss.RelativeProbabilistic(keep=0.25, history=8).bind()
        >>> round(state.beta, 6)
        3.0
        >>> _ = state.decide([np.arange(8.0)], None, torch.Generator().manual_seed(0))
        >>> state.rate.decided
        8
    """

    def __init__(self, policy: Policy) -> None:
        super().__init__(policy)
        self.target = float(policy.keep)  # type: ignore[attr-defined]
        self.horizon = min(policy.history, KEEP_HORIZON)
        self.rate = KeepRate(self.target, self.horizon)

    @property
    def beta(self) -> float:
        return self.rate.beta

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        beta = self.rate.beta
        policy: Any = self.policy
        out: list[Proposal] = []
        for x in losses:
            if x.size == 0:
                out.append((np.zeros(0, dtype=bool), np.zeros(0) if probabilities else None))
                continue
            mask = policy.keep_mask(x, history, generator, beta=beta)
            probs = policy.keep_probabilities(x, history, beta=beta) if probabilities else None
            out.append((mask, probs))
        return out

    def feedback(self, kept: int, decided: int) -> None:
        self.rate.update(kept, decided)

    key = "keep_rate"

    def state_dict(self) -> dict[str, Any]:
        return self.rate.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rate.load_state_dict(state)
