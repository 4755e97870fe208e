"""Counters and timers of a sifting loader, as a snapshot users can log.

Example:
    >>> stats = SiftStats(samples_seen=10, samples_kept=4, samples_sifted=6)
    >>> stats.keep_rate
    0.4
    >>> stats.as_dict()["samples_kept"]
    4
"""

from __future__ import annotations

import dataclasses
from collections import deque
from dataclasses import dataclass, field
from typing import Any

__all__ = ["SiftStats"]

_COUNTERS = (
    "samples_seen",
    "samples_kept",
    "samples_sifted",
    "samples_dropped",
    "samples_trained",
    "samples_nonfinite",
    "samples_buffered",
    "raw_batches",
    "steps",
    "epochs",
)
_TIMERS = ("data_s", "scoring_s", "selection_s", "comm_s")


@dataclass
class SiftStats:
    """What a :class:`~smartsift.SiftingDataLoader` has done so far.

    Counts are per process (per rank under DDP; see ``SiftingDataLoader.global_stats``).
    ``samples_seen == samples_kept + samples_sifted`` and, per process in a single process and
    summed over ranks under DDP, ``samples_kept == samples_trained + samples_dropped +
    samples_buffered``.

    Attributes:
        samples_seen: samples of raw batches the loader pulled.
        samples_kept: samples the policy kept (or that passed through during ``sift_delay``).
        samples_sifted: samples the policy dropped, including non-finite losses dropped.
        samples_dropped: kept samples discarded at an epoch end (``drop_last``, or an epoch the
            caller abandoned) instead of being trained on.
        samples_trained: samples in the batches the loader yielded.
        samples_nonfinite: samples whose scored loss was NaN or infinite.
        samples_buffered: kept samples waiting for the next refined batch.
        raw_batches: raw batches pulled; steps: batches yielded; epochs: epochs completed.
        recent_keep_rate: kept fraction over the last ``recent_window`` scored raw batches.
        loss_quantiles: the 10th, 50th and 90th percentiles of the loss history.
        data_s, scoring_s, selection_s, comm_s: seconds spent waiting for raw batches, in the
            scoring pass, in decisions, history, slicing and joining, and in collectives.
    """

    samples_seen: int = 0
    samples_kept: int = 0
    samples_sifted: int = 0
    samples_dropped: int = 0
    samples_trained: int = 0
    samples_nonfinite: int = 0
    samples_buffered: int = 0
    raw_batches: int = 0
    steps: int = 0
    epochs: int = 0
    recent_keep_rate: float = float("nan")
    loss_quantiles: dict[str, float] = field(default_factory=dict)
    data_s: float = 0.0
    scoring_s: float = 0.0
    selection_s: float = 0.0
    comm_s: float = 0.0

    @property
    def keep_rate(self) -> float:
        """The kept fraction of all samples seen so far (NaN before any)."""
        return self.samples_kept / self.samples_seen if self.samples_seen else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Returns a flat dict of numbers, ready for any logger."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _COUNTERS + _TIMERS}
        out["keep_rate"] = self.keep_rate
        out["recent_keep_rate"] = self.recent_keep_rate
        out.update({f"loss_{k}": v for k, v in self.loss_quantiles.items()})
        return out

    def __str__(self) -> str:
        return (
            f"seen={self.samples_seen} kept={self.samples_kept} ({self.keep_rate:.1%}) "
            f"sifted={self.samples_sifted} trained={self.samples_trained} steps={self.steps} "
            f"recent_keep={self.recent_keep_rate:.1%} scoring={self.scoring_s:.2f}s "
            f"selection={self.selection_s:.2f}s"
        )


class _Tally:
    """The loader's running counters; :meth:`snapshot` gives users a :class:`SiftStats`."""

    def __init__(self, recent_window: int = 50) -> None:
        self.counts = dict.fromkeys(_COUNTERS, 0)
        self.times = dict.fromkeys(_TIMERS, 0.0)
        self.recent: deque[tuple[int, int]] = deque(maxlen=recent_window)

    def add(self, **counts: int) -> None:
        for key, value in counts.items():
            self.counts[key] += value

    def snapshot(self, loss_quantiles: dict[str, float]) -> SiftStats:
        seen = sum(s for s, _ in self.recent)
        recent = sum(k for _, k in self.recent) / seen if seen else float("nan")
        values: dict[str, Any] = {**self.counts, **self.times}
        return SiftStats(**values, recent_keep_rate=recent, loss_quantiles=loss_quantiles)

    def state_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "times": dict(self.times),
            "recent": [list(x) for x in self.recent],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.counts.update({k: int(v) for k, v in state["counts"].items()})
        self.times.update({k: float(v) for k, v in state["times"].items()})
        self.recent.clear()
        self.recent.extend((int(s), int(k)) for s, k in state["recent"])


def counter_fields() -> tuple[str, ...]:
    """Names of the counting (integer) fields of :class:`SiftStats`, in a fixed order."""
    return _COUNTERS


def stats_fields() -> tuple[str, ...]:
    """Names of the summable fields of :class:`SiftStats`, in a fixed order."""
    return _COUNTERS + _TIMERS


def from_sums(sums: list[float], recent_keep_rate: float, quantiles: dict[str, float]) -> SiftStats:
    """Builds a :class:`SiftStats` from summed fields in :func:`stats_fields` order."""
    values: dict[str, Any] = dict(zip(stats_fields(), sums, strict=True))
    for key in _COUNTERS:
        values[key] = int(values[key])
    return dataclasses.replace(
        SiftStats(), **values, recent_keep_rate=recent_keep_rate, loss_quantiles=quantiles
    )
