"""The ledger: the one place where what happens to every sample is recorded.

Each outcome of a sample — pulled, passed through the sift delay, kept or sifted by the policy
(non-finite losses counted too), trained, dropped at an epoch end — goes through one method that
updates the counters and, when an audit is attached, the audit together, so that the
conservation laws (:func:`smartsift.stats.conservation_errors`) follow from this module alone.
:meth:`Ledger.snapshot` is a pure read.

Example:
    >>> import numpy as np
    >>> ledger = Ledger()
    >>> ledger.pulled(4)
    >>> ledger.scored(0, None, np.zeros(4), np.array([True, False, True, False]), 0)
    >>> ledger.trained(2)
    >>> stats = ledger.snapshot(buffered=0, comm_s=0.0, quantiles={})
    >>> stats.samples_kept, stats.samples_sifted, stats.keep_rate
    (2, 2, 0.5)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import numpy as np

from smartsift.audit import SiftAudit
from smartsift.stats import SiftStats, counter_fields, timer_fields

__all__ = ["Ledger"]


class Ledger:
    """Counters, timers and the optional audit of one loader.

    Args:
        audit: a :class:`~smartsift.SiftAudit` to record sample ids in, or None.
        recent_window: how many recent scored raw batches ``recent_keep_rate`` covers.
    """

    def __init__(self, audit: SiftAudit | None = None, recent_window: int = 50) -> None:
        self.audit = audit
        self.counts = dict.fromkeys(counter_fields(), 0)
        self.times = dict.fromkeys(timer_fields(), 0.0)
        self.recent: deque[tuple[int, int]] = deque(maxlen=recent_window)

    def pulled(self, size: int) -> None:
        """A raw batch of ``size`` samples was pulled."""
        if size > 0:
            self.counts["samples_seen"] += size
            self.counts["raw_batches"] += 1

    def passed(self, epoch: int, batch: Any, size: int) -> None:
        """``size`` samples of ``batch`` passed through unscored (the sift delay)."""
        if size > 0:
            self.counts["samples_passed"] += size
            self.counts["samples_kept"] += size
            if self.audit is not None:
                self.audit.record_passed(epoch, batch, size)

    def scored(
        self, epoch: int, batch: Any, losses: np.ndarray, mask: np.ndarray, nonfinite: int
    ) -> None:
        """The policy decided on the samples of ``batch``: keep where ``mask``."""
        size = int(mask.size)
        if size == 0:
            return
        kept = int(np.count_nonzero(mask))
        counts = self.counts
        counts["samples_kept"] += kept
        counts["samples_sifted"] += size - kept
        counts["samples_nonfinite"] += nonfinite
        self.recent.append((size, kept))
        if self.audit is not None:
            self.audit.record_scored(epoch, batch, losses, mask)

    def dropped(self, epoch: int, pieces: Sequence[tuple[Any, int]]) -> None:
        """Kept samples were dropped at an epoch end, as ``(batch, size)`` pairs."""
        n = sum(size for _, size in pieces)
        if n:
            self.counts["samples_dropped"] += n
            if self.audit is not None:
                self.audit.record_dropped(epoch, pieces)

    def trained(self, size: int) -> None:
        """A batch of ``size`` samples was handed to the training step."""
        self.counts["steps"] += 1
        self.counts["samples_trained"] += size

    def epoch_done(self) -> None:
        """An epoch was completed."""
        self.counts["epochs"] += 1

    def recent_rate(self) -> tuple[int, int]:
        """Samples seen and kept over the recent scored raw batches."""
        return sum(s for s, _ in self.recent), sum(k for _, k in self.recent)

    def snapshot(self, buffered: int, comm_s: float, quantiles: dict[str, float]) -> SiftStats:
        """The counters as :class:`~smartsift.SiftStats` (nothing is changed)."""
        seen, kept = self.recent_rate()
        values: dict[str, Any] = {**self.counts, **self.times}
        values["samples_buffered"] = buffered
        values["comm_s"] = comm_s
        rate = kept / seen if seen else float("nan")
        return SiftStats(**values, recent_keep_rate=rate, loss_quantiles=quantiles)

    def state_dict(self) -> dict[str, Any]:
        """Counters, timers and the recent window as plain values."""
        return {
            "counts": dict(self.counts),
            "times": dict(self.times),
            "recent": [list(x) for x in self.recent],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (keys it lacks stay at zero)."""
        self.counts = dict.fromkeys(counter_fields(), 0)
        self.times = dict.fromkeys(timer_fields(), 0.0)
        self.counts.update({k: int(v) for k, v in state["counts"].items() if k in self.counts})
        self.times.update({k: float(v) for k, v in state["times"].items() if k in self.times})
        self.recent.clear()
        self.recent.extend((int(s), int(k)) for s, k in state["recent"])
