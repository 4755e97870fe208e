"""The loss history: the last ``capacity`` losses, kept both in arrival order and sorted.

Adding ``B`` losses re-sorts a short history in one call, or merges them into the sorted view of
a long one (``O(H + B log H)``); ranking ``B`` losses costs ``O(B log H)``, so the history never
dominates a training step, even at ``H = 10**5``.

Example:
    >>> import numpy as np
    >>> history = LossHistory(4)
    >>> history.extend(np.array([3.0, 1.0, 2.0, 5.0, 4.0]))
    >>> history.values().tolist(), history.sorted().tolist()
    ([1.0, 2.0, 5.0, 4.0], [1.0, 2.0, 4.0, 5.0])
    >>> history.percentile(np.array([2.0, 4.5])).tolist()
    [0.5, 0.75]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

__all__ = ["LossHistory", "weak_percentile"]

# Up to this many losses, sorting the whole ring (one vectorised call) beats merging the new
# losses into the sorted view (a dozen small calls); above it, the O(H) merge wins.
_RESORT_MAX = 16_384


def weak_percentile(sorted_history: np.ndarray, losses: np.ndarray) -> np.ndarray:
    """Returns, for each loss, the fraction of ``sorted_history`` that is less than or equal to it.

    Example:
        >>> weak_percentile(np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 2.0, 9.0])).tolist()
        [0.0, 0.5, 1.0]
    """
    if sorted_history.size == 0:
        return np.ones_like(losses, dtype=np.float64)
    ranks = np.searchsorted(sorted_history, losses, side="right")
    return ranks / sorted_history.size


class LossHistory:
    """A ring buffer of the most recent finite losses with an always-sorted view.

    Args:
        capacity: how many losses to keep; older ones are forgotten first.
    """

    def __init__(self, capacity: int) -> None:
        if not isinstance(capacity, int) or isinstance(capacity, bool) or capacity < 1:
            raise ValueError(f"Expected `capacity` to be a positive int, but got {capacity!r}.")
        self.capacity = capacity
        self._ring = np.empty(capacity, dtype=np.float64)
        self._sorted = np.empty(0, dtype=np.float64)
        self._next = 0  # ring slot that the next loss overwrites
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def extend(self, losses: np.ndarray) -> None:
        """Appends finite ``losses`` (1-D float array) in order, evicting the oldest."""
        losses = np.asarray(losses, dtype=np.float64).ravel()
        n = losses.size
        if n == 0:
            return
        cap = self.capacity
        if n >= cap:
            self._ring[:] = losses[n - cap :]
            self._sorted = np.sort(self._ring)
            self._next, self._count = 0, cap
            return
        evict = self._count + n - cap
        kept = self._sorted
        if evict > 0 and cap > _RESORT_MAX:
            oldest = _ring_slice(self._ring, (self._next - self._count) % cap, evict)
            kept = _remove_sorted(kept, np.sort(oldest))
        start = self._next
        if start + n <= cap:
            self._ring[start : start + n] = losses
        else:
            head = cap - start
            self._ring[start:] = losses[:head]
            self._ring[: n - head] = losses[head:]
        self._next = (self._next + n) % cap
        self._count = min(cap, self._count + n)
        if cap <= _RESORT_MAX:
            # Until full, the ring fills slots 0..count-1 in order.
            self._sorted = np.sort(self._ring[: self._count])
        else:
            self._sorted = _merge_sorted(kept, np.sort(losses))

    def sorted(self) -> np.ndarray:
        """Returns the losses in ascending order (a read-only view)."""
        view = self._sorted.view()
        view.flags.writeable = False
        return view

    def values(self) -> np.ndarray:
        """Returns the losses from oldest to newest (a copy)."""
        start = (self._next - self._count) % self.capacity
        return self._ring[(start + np.arange(self._count)) % self.capacity]

    def percentile(self, losses: np.ndarray) -> np.ndarray:
        """Returns each loss's weak percentile in [0, 1] among the history."""
        return weak_percentile(self._sorted, np.asarray(losses, dtype=np.float64))

    def quantile(self, q: float) -> float:
        """Returns the ``q`` quantile (lower) of the history, or NaN when it is empty."""
        if self._count == 0:
            return float("nan")
        return float(self._sorted[min(self._count - 1, int(q * self._count))])

    def state_dict(self) -> dict[str, Any]:
        """Returns the losses, oldest first, as a tensor."""
        return {"capacity": self.capacity, "values": torch.from_numpy(self.values())}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores the losses saved by :meth:`state_dict`."""
        if int(state["capacity"]) != self.capacity:
            raise ValueError(
                f"The saved loss history holds {state['capacity']} losses but this policy's "
                f"history holds {self.capacity}; load the state into a loader with the same policy."
            )
        self._ring = np.empty(self.capacity, dtype=np.float64)
        self._sorted = np.empty(0, dtype=np.float64)
        self._next = self._count = 0
        self.extend(state["values"].numpy())


def _ring_slice(ring: np.ndarray, start: int, n: int) -> np.ndarray:
    """Returns ``n`` ring entries from ``start`` on, wrapping around (a view when contiguous)."""
    end = start + n
    if end <= ring.size:
        return ring[start:end]
    return np.concatenate([ring[start:], ring[: end - ring.size]])


def _remove_sorted(sorted_values: np.ndarray, gone: np.ndarray) -> np.ndarray:
    """Removes the sorted values ``gone`` (each present, repeats allowed) from ``sorted_values``."""
    idx = np.searchsorted(sorted_values, gone, side="left")
    # Equal values in `gone` must remove distinct copies: shift each repeat one slot further.
    idx += np.arange(gone.size) - np.searchsorted(gone, gone, side="left")
    keep = np.ones(sorted_values.size, dtype=bool)
    keep[idx] = False
    return sorted_values[keep]


def _merge_sorted(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Merges two sorted arrays in one O(len(a) + len(b)) pass."""
    out = np.empty(a.size + b.size, dtype=np.float64)
    # Each value of b lands after the values of a that are <= it and after the earlier b's.
    pos = np.searchsorted(a, b, side="right") + np.arange(b.size)
    from_a = np.ones(out.size, dtype=bool)
    from_a[pos] = False
    out[pos] = b
    out[from_a] = a
    return out
