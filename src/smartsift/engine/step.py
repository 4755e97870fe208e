"""The sift step: decide on a round's losses, then buffer this rank's kept samples.

The loader, the profiler and the machinery benchmark run this one function, so that what the
profiler times is what the loader does.

Example:
    >>> import numpy as np, torch
    >>> import smartsift as ss
    >>> from smartsift.engine.batcher import RefinedBatcher
    >>> from smartsift.engine.selector import Selector
    >>> batcher = RefinedBatcher(2)
    >>> batch = (torch.arange(4.0), torch.arange(4))
    >>> decision = sift_step(Selector(ss.TopK(0.5)), batcher, batch, 4, [np.arange(4.0)])
    >>> decision.kept, batcher.buffered
    ([2], 2)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import select
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.selector import Decision, Selector

__all__ = ["push_kept", "sift_step"]


def push_kept(batcher: RefinedBatcher, sliceable: Any, size: int, mask: np.ndarray) -> int:
    """Buffers the samples of ``sliceable`` (``size`` of them) that ``mask`` keeps; returns
    how many (a batch kept whole is buffered without a copy)."""
    kept = int(np.count_nonzero(mask))
    if kept == size:
        batcher.push(sliceable, size)
    elif kept:
        batcher.push(select(sliceable, torch.from_numpy(np.flatnonzero(mask))), kept)
    return kept


def sift_step(
    selector: Selector,
    batcher: RefinedBatcher,
    sliceable: Any,
    size: int,
    losses: Sequence[np.ndarray],
    rank: int = 0,
    inputs: Sequence[np.ndarray] | None = None,
) -> Decision:
    """Decides on every rank's ``losses`` and buffers this rank's kept samples.

    Args:
        selector: the selector (the same state on every rank).
        batcher: this rank's refined batcher.
        sliceable: this rank's raw batch in sliceable form (None when it has none).
        size: its number of samples.
        losses: every rank's losses, in rank order.
        rank: this rank's position in ``losses``.
        inputs: every rank's per-sample inputs (ids, labels) for a policy that needs them.
    """
    ids = labels = None
    if inputs is not None:
        ids, labels = selector.split_inputs(inputs)
    decision = selector.decide(losses, ids=ids, labels=labels)
    if size > 0:
        push_kept(batcher, sliceable, size, decision.masks[rank])
    return decision
