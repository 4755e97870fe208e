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
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "SiftStats",
    "conservation_errors",
    "counter_fields",
    "from_sums",
    "stats_fields",
    "timer_fields",
]

_COUNTERS = (
    "samples_seen",
    "samples_passed",
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
        samples_passed: samples passed through unscored during ``sift_delay``.
        samples_kept: samples the policy kept, and those passed through during ``sift_delay``.
        samples_sifted: samples the policy dropped, including non-finite losses dropped.
        samples_dropped: kept samples discarded at an epoch end (``drop_last``, or an epoch the
            caller abandoned) instead of being trained on.
        samples_trained: samples in the batches the loader yielded.
        samples_nonfinite: samples whose scored loss was NaN or infinite.
        samples_buffered: kept samples waiting for the next refined batch.
        raw_batches: raw batches pulled; steps: batches yielded; epochs: epochs completed.
        recent_keep_rate: kept fraction over the last ``recent_window`` scored raw batches.
        sift_keep_rate (property): kept fraction of the scored samples only, the delay left out.
        loss_quantiles: the 10th, 50th and 90th percentiles of the loss history.
        data_s, scoring_s, selection_s, comm_s: seconds spent waiting for raw batches, in the
            scoring pass, in decisions, history, slicing and joining, and in collectives.
        auto_state: under :class:`~smartsift.Auto`, what it does now: ``"measuring"``,
            ``"sift"`` or ``"plain"`` (empty for other policies). Raw batches Auto trains
            plain pass through unscored and count in ``samples_passed``.
        auto_reason: why, in words (empty for other policies).
    """

    samples_seen: int = 0
    samples_passed: int = 0
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
    auto_state: str = ""
    auto_reason: str = ""

    @property
    def keep_rate(self) -> float:
        """The kept fraction of all samples seen so far (NaN before any)."""
        return self.samples_kept / self.samples_seen if self.samples_seen else float("nan")

    @property
    def sift_keep_rate(self) -> float:
        """The kept fraction of the samples the policy scored, leaving out the sift delay's
        pass-through (NaN before any scored sample).

        Example:
            >>> SiftStats(samples_seen=10, samples_passed=4, samples_kept=7).sift_keep_rate
            0.5
        """
        scored = self.samples_seen - self.samples_passed
        return (self.samples_kept - self.samples_passed) / scored if scored else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """Returns a flat dict of numbers, ready for any logger; under ``Auto``,
        ``auto_sifting`` is 1 while it sifts and 0 otherwise."""
        out: dict[str, Any] = {k: getattr(self, k) for k in _COUNTERS + _TIMERS}
        out["keep_rate"] = self.keep_rate
        out["sift_keep_rate"] = self.sift_keep_rate
        out["recent_keep_rate"] = self.recent_keep_rate
        out.update({f"loss_{k}": v for k, v in self.loss_quantiles.items()})
        if self.auto_state:
            out["auto_sifting"] = 1.0 if self.auto_state == "sift" else 0.0
        return out

    def __str__(self) -> str:
        text = (
            f"seen={self.samples_seen} kept={self.samples_kept} ({self.keep_rate:.1%}; "
            f"{self.sift_keep_rate:.1%} of scored) sifted={self.samples_sifted} "
            f"trained={self.samples_trained} dropped={self.samples_dropped} steps={self.steps} "
            f"recent_keep={self.recent_keep_rate:.1%} scoring={self.scoring_s:.2f}s "
            f"selection={self.selection_s:.2f}s"
        )
        return f"{text} auto={self.auto_reason}" if self.auto_state else text


def conservation_errors(stats: SiftStats) -> list[str]:
    """The conservation laws ``stats`` breaks (empty when every sample is accounted for).

    Every sample seen is kept or sifted; every kept sample is trained, dropped or buffered.
    Under DDP the second law holds for the sum over ranks (leftovers move between ranks).

    Example:
        >>> conservation_errors(SiftStats(samples_seen=3, samples_kept=2, samples_sifted=1,
        ...                               samples_trained=2))
        []
        >>> conservation_errors(SiftStats(samples_seen=3, samples_kept=2, samples_trained=2))
        ['samples_seen 3 != samples_kept 2 + samples_sifted 0']
    """
    s, errors = stats, []
    if s.samples_seen != s.samples_kept + s.samples_sifted:
        errors.append(
            f"samples_seen {s.samples_seen} != samples_kept {s.samples_kept} + "
            f"samples_sifted {s.samples_sifted}"
        )
    if s.samples_kept != s.samples_trained + s.samples_dropped + s.samples_buffered:
        errors.append(
            f"samples_kept {s.samples_kept} != samples_trained {s.samples_trained} + "
            f"samples_dropped {s.samples_dropped} + samples_buffered {s.samples_buffered}"
        )
    return errors


def counter_fields() -> tuple[str, ...]:
    """Names of the counting (integer) fields of :class:`SiftStats`, in a fixed order."""
    return _COUNTERS


def stats_fields() -> tuple[str, ...]:
    """Names of the summable fields of :class:`SiftStats`, in a fixed order."""
    return _COUNTERS + _TIMERS


def from_sums(
    sums: list[float],
    recent_keep_rate: float,
    quantiles: dict[str, float],
    auto_state: str = "",
    auto_reason: str = "",
) -> SiftStats:
    """Builds a :class:`SiftStats` from summed fields in :func:`stats_fields` order."""
    values: dict[str, Any] = dict(zip(stats_fields(), sums, strict=True))
    for key in _COUNTERS:
        values[key] = int(values[key])
    return dataclasses.replace(
        SiftStats(),
        **values,
        recent_keep_rate=recent_keep_rate,
        loss_quantiles=quantiles,
        auto_state=auto_state,
        auto_reason=auto_reason,
    )


def timer_fields() -> tuple[str, ...]:
    """Names of the timer (seconds) fields of :class:`SiftStats`, in a fixed order."""
    return _TIMERS
