"""What ranks share about a round besides the exchange: errors, timings, a held-out metric.

- :func:`raise_errors`: a rank that failed raises its own error; the others raise
  :class:`~smartsift.engine.distributed.RemoteRankError`, so that no rank waits for one that
  stopped.
- :class:`RoundClock`: the loader's own time, the user's steps and data loading since the
  previous round, as the :class:`~smartsift.policies.base.RoundTimes` a policy may ask for.
- :class:`RankContext`: the collectives a policy's state may run at the end of a round
  (:class:`~smartsift.policies.base.RunContext`).

Example:
    >>> clock = RoundClock()
    >>> clock.overhead(0.5)
    >>> clock.lap(scored=8, data_s=0.1, raw=8).overhead_s
    0.5
    >>> clock.lap(scored=0, data_s=0.0, raw=0).overhead_s
    0.0
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from smartsift.engine.distributed import PeerRound, RemoteRankError
from smartsift.policies.base import RoundTimes

__all__ = ["RankContext", "RoundClock", "annotate", "raise_errors"]


def annotate(err: BaseException, where: str) -> BaseException:
    """Adds a note saying where smartsift met ``err``; returns it."""
    if hasattr(err, "add_note"):
        err.add_note(f"smartsift: raised {where}.")
    return err


def raise_errors(peers: Sequence[PeerRound], local: BaseException | None, rank: int) -> None:
    """Raises this rank's error, or :class:`RemoteRankError` if another rank failed."""
    if local is not None:
        raise local
    failed = [r for r, p in enumerate(peers) if p.error]
    if failed:
        raise RemoteRankError(
            f"smartsift: rank(s) {failed} failed in this round (see their error); rank {rank} "
            "stops too so that the job does not hang."
        )


class RoundClock:
    """Accumulates a rank's timings between rounds; :meth:`lap` hands them over and restarts."""

    def __init__(self) -> None:
        self._overhead_s = 0.0
        self._step_s = 0.0
        self._trained = 0

    def overhead(self, seconds: float) -> None:
        """Time the loader spent on sifting (the scoring pass, the decision, buffering)."""
        self._overhead_s += seconds

    def step(self, seconds: float, samples: int) -> None:
        """Time the user's training step took on a refined batch of ``samples``."""
        self._step_s += seconds
        self._trained += samples

    def lap(self, scored: int, data_s: float, raw: int) -> RoundTimes:
        """The timings since the previous lap, with this round's scoring and loading."""
        out = RoundTimes(self._overhead_s, scored, self._step_s, self._trained, data_s, raw)
        self._overhead_s = self._step_s = 0.0
        self._trained = 0
        return out


class RankContext:
    """The :class:`~smartsift.policies.base.RunContext` of a loader: collectives over its ranks.

    Args:
        model: the model, put back in the training mode it was in after a held-out call.
        sum_over_ranks: sums a vector of numbers over ranks (every rank calls it).
        rank, world_size: this rank and the number of ranks.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        sum_over_ranks: Callable[[list[float]], list[float]],
        rank: int,
        world_size: int,
    ) -> None:
        self.model = model
        self.sum_over_ranks = sum_over_ranks
        self.rank = rank
        self.world_size = world_size

    def held_out(self, fn: Callable[[], Any], what: str) -> float:
        """``fn()`` under ``torch.no_grad()`` on every rank, averaged over ranks; a failure on
        any rank stops every rank instead of hanging the others."""
        was_training = self.model.training
        error: BaseException | None = None
        value = 0.0
        try:
            with torch.no_grad():
                value = float(fn())
        except Exception as err:  # reported to the other ranks before it is raised
            error = annotate(err, what)
        finally:
            self.model.train(was_training)
        total, failed = self.sum_over_ranks([value, float(error is not None)])
        if error is not None:
            raise error
        if failed:
            raise RemoteRankError(
                f"smartsift: {what.removeprefix('in ')} failed on {int(failed)} rank(s) (see "
                f"their error); rank {self.rank} stops too so that the job does not hang."
            )
        return total / self.world_size
