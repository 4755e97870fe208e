"""The ledger: the one place where what happens to every sample is recorded.

Each outcome of a sample — pulled, passed through the sift delay, kept or sifted by the policy
(non-finite losses counted too), trained, dropped at an epoch end — goes through one method that
updates the counters and, when an audit is attached, the audit together, so that the
conservation laws (:func:`smartsift.engine.stats.conservation_errors`) follow from this
module alone. Both modes write their audit here: the scoring-pass loader by raw batch
(:meth:`Ledger.scored`, ...), loss reuse by sample id (:meth:`Ledger.scored_ids`, ...).
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
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift.engine.audit import SiftAudit
from smartsift.engine.stats import SiftStats, counter_fields, timer_fields

__all__ = ["Ledger", "SiftTrace"]

_TRACE_LOSSES = 64  # scored raw batches whose losses the trace keeps


@dataclass(frozen=True)
class SiftTrace:
    """What sifting did over training, for plots and reports.

    Attributes:
        steps: the training steps taken before each scored raw batch.
        seen, kept: the samples of each scored raw batch, and how many the policy kept.
        kept_losses, sifted_losses: the losses of the kept and the sifted samples of the last
            scored raw batches (up to 64 of them).
    """

    steps: np.ndarray
    seen: np.ndarray
    kept: np.ndarray
    kept_losses: np.ndarray
    sifted_losses: np.ndarray


class Ledger:
    """Counters, timers and the optional audit of one loader (or one reuse sampler).

    Args:
        audit: a :class:`~smartsift.SiftAudit` to record sample ids in, or None.
        recent_window: how many recent scored raw batches ``recent_keep_rate`` covers.
    """

    def __init__(self, audit: SiftAudit | None = None, recent_window: int = 50) -> None:
        self.audit = audit
        self.counts = dict.fromkeys(counter_fields(), 0)
        self.times = dict.fromkeys(timer_fields(), 0.0)
        self.recent: deque[tuple[int, int]] = deque(maxlen=recent_window)
        self._trace: list[tuple[int, int, int]] = []
        self._losses: deque[tuple[np.ndarray, np.ndarray]] = deque(maxlen=_TRACE_LOSSES)

    def pulled(self, size: int) -> None:
        """A raw batch of ``size`` samples was pulled."""
        if size > 0:
            self.counts["samples_seen"] += size
            self.counts["raw_batches"] += 1

    def passed(self, epoch: int, batch: Any, size: int) -> None:
        """``size`` samples of ``batch`` passed through unscored (the sift delay)."""
        if size > 0:
            self._passed(size)
            if self.audit is not None:
                self.audit.record_passed(epoch, batch, size)

    def passed_ids(self, epoch: int, ids: np.ndarray) -> None:
        """As :meth:`passed`, by sample id: the samples ``ids`` were trained undecided."""
        self._passed(int(np.size(ids)))
        if self.audit is not None:
            self.audit.record_passed_ids(epoch, ids)

    def _passed(self, size: int) -> None:
        self.counts["samples_passed"] += size
        self.counts["samples_kept"] += size

    def scored(
        self, epoch: int, batch: Any, losses: np.ndarray, mask: np.ndarray, nonfinite: int
    ) -> None:
        """The policy decided on the samples of ``batch``: keep where ``mask``."""
        size = int(mask.size)
        if size == 0:
            return
        kept = self._decided(mask, nonfinite)
        self.recent.append((size, kept))
        self._trace.append((self.counts["steps"], size, kept))
        self._losses.append((losses, mask))
        if self.audit is not None:
            self.audit.record_scored(epoch, batch, losses, mask)

    def scored_ids(
        self, epoch: int, ids: np.ndarray, losses: np.ndarray, mask: np.ndarray, nonfinite: int = 0
    ) -> None:
        """As :meth:`scored`, for a caller that knows the sample ids without a batch (loss
        reuse decides on indices before loading); not in :meth:`trace`, which follows raw
        batches. The audit records the call even when it holds no sample.

        Example:
            >>> from smartsift.engine.audit import SiftAudit
            >>> ledger = Ledger(SiftAudit(id_key=0))
            >>> mask = np.array([False, True])
            >>> ledger.scored_ids(0, np.array([3, 5]), np.array([0.2, 0.9]), mask)
            >>> ledger.counts["samples_sifted"], ledger.audit.epoch(0).kept.tolist()
            (1, [5])
        """
        self._decided(mask, nonfinite)
        if self.audit is not None:
            self.audit.record_scored_ids(epoch, ids, losses, mask)

    def _decided(self, mask: np.ndarray, nonfinite: int) -> int:
        """Counts a decision's kept, sifted and non-finite samples; returns the kept count."""
        kept = int(np.count_nonzero(mask))
        self.counts["samples_kept"] += kept
        self.counts["samples_sifted"] += int(mask.size) - kept
        self.counts["samples_nonfinite"] += nonfinite
        return kept

    def dropped(self, epoch: int, pieces: Sequence[tuple[Any, int]]) -> None:
        """Kept samples were dropped at an epoch end, as ``(batch, size)`` pairs."""
        n = sum(size for _, size in pieces)
        if n:
            self.counts["samples_dropped"] += n
            if self.audit is not None:
                self.audit.record_dropped(epoch, pieces)

    def dropped_ids(self, epoch: int, ids: np.ndarray) -> None:
        """As :meth:`dropped`, by sample id: the kept or passed samples ``ids`` were cut."""
        self.counts["samples_dropped"] += int(np.size(ids))
        if self.audit is not None:
            self.audit.record_dropped_ids(epoch, ids)

    def trained(self, size: int) -> None:
        """A batch of ``size`` samples was handed to the training step."""
        self.counts["steps"] += 1
        self.counts["samples_trained"] += size

    def epoch_done(self) -> None:
        """An epoch was completed."""
        self.counts["epochs"] += 1

    def trace(self) -> SiftTrace:
        """The keep counts of every scored raw batch and the latest losses, kept and sifted."""
        rows = np.array(self._trace, dtype=np.int64).reshape(-1, 3)
        losses = [np.asarray(x, dtype=np.float64) for x, _ in self._losses]
        masks = [np.asarray(m, dtype=bool) for _, m in self._losses]
        flat = np.concatenate(losses) if losses else np.empty(0)
        mask = np.concatenate(masks) if masks else np.empty(0, dtype=bool)
        return SiftTrace(rows[:, 0], rows[:, 1], rows[:, 2], flat[mask], flat[~mask])

    def recent_rate(self) -> tuple[int, int]:
        """Samples seen and kept over the recent scored raw batches."""
        return sum(s for s, _ in self.recent), sum(k for _, k in self.recent)

    def snapshot(
        self,
        buffered: int,
        comm_s: float,
        quantiles: dict[str, float],
        auto: tuple[str, str] | None = None,
    ) -> SiftStats:
        """The counters as :class:`~smartsift.SiftStats` (nothing is changed); ``auto`` is
        :class:`~smartsift.Auto`'s state and reason, when the policy is one."""
        seen, kept = self.recent_rate()
        values: dict[str, Any] = {**self.counts, **self.times}
        values["samples_buffered"] = buffered
        values["comm_s"] = comm_s
        if auto is not None:
            values["auto_state"], values["auto_reason"] = auto
        rate = kept / seen if seen else float("nan")
        return SiftStats(**values, recent_keep_rate=rate, loss_quantiles=quantiles)

    def state_dict(self) -> dict[str, Any]:
        """Counters, timers and the recent window as plain values."""
        losses = [torch.from_numpy(np.asarray(x, dtype=np.float64)) for x, _ in self._losses]
        masks = [torch.from_numpy(np.asarray(m, dtype=bool)) for _, m in self._losses]
        return {
            "counts": dict(self.counts),
            "times": dict(self.times),
            "recent": [list(x) for x in self.recent],
            "trace": torch.tensor(self._trace, dtype=torch.int64).reshape(-1, 3),
            "trace_losses": losses,
            "trace_masks": masks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (keys it lacks stay at zero)."""
        self.counts = dict.fromkeys(counter_fields(), 0)
        self.times = dict.fromkeys(timer_fields(), 0.0)
        self.counts.update({k: int(v) for k, v in state["counts"].items() if k in self.counts})
        self.times.update({k: float(v) for k, v in state["times"].items() if k in self.times})
        self.recent.clear()
        self.recent.extend((int(s), int(k)) for s, k in state["recent"])
        trace = state.get("trace")
        self._trace = [] if trace is None else [tuple(r) for r in trace.tolist()]
        self._losses.clear()
        pairs = zip(state.get("trace_losses", []), state.get("trace_masks", []), strict=True)
        self._losses.extend((x.numpy(), m.numpy()) for x, m in pairs)
