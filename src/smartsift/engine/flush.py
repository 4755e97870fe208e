"""The epoch's end: hand out every rank's leftovers so that all ranks yield as many batches.

The arithmetic is :func:`~smartsift.engine.leftovers.plan_leftovers`'s; this module carries it
out on a rank's :class:`~smartsift.engine.batcher.RefinedBatcher`: form locally when the plan
allows, else pool every rank's leftovers (one object gather, once per epoch at most) and deal
them out.

Example:
    >>> import torch
    >>> from smartsift.engine.batcher import RefinedBatcher
    >>> batcher = RefinedBatcher(4)
    >>> batcher.push(torch.arange(6), 6)
    >>> flush_epoch(batcher, [6], 0, drop_last=False, gather=lambda mine: [mine], device=None)
    []
    >>> [b.size for b in batcher.ready]
    [4, 2]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from smartsift.batches.structure import narrow, to_device
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.leftovers import plan_leftovers

__all__ = ["flush_epoch"]

_CPU = torch.device("cpu")


def flush_epoch(
    batcher: RefinedBatcher,
    counts: Sequence[int],
    rank: int,
    drop_last: bool,
    gather: Callable[[Any], list[Any]],
    device: torch.device | None,
) -> list[tuple[Any, int]]:
    """Queues this rank's share of the epoch's leftovers; returns the pieces dropped.

    Args:
        batcher: this rank's batcher, holding its leftovers.
        counts: every rank's buffered count, in rank order.
        rank: this rank's position in ``counts``.
        drop_last: drop what cannot form a full batch on every rank.
        gather: gathers one picklable object from every rank (called only to pool).
        device: where dealt batches go (None: where they are).
    """
    bs = batcher.batch_size or 1
    plan = plan_leftovers(list(counts), bs, drop_last)
    if plan.local:
        batcher.form(batcher.buffered // bs)
        if not batcher.buffered:
            return []
        if drop_last:
            return batcher.clear(ready=False)
        rest = batcher.buffered
        batcher.queue(batcher.take(rest), rest)
        return []
    # Pool on the CPU for the transfer, but in the batch's own types (to_plain would turn named
    # tuples and dict subclasses into plain containers in the dealt batches).
    mine = to_device(batcher.take(batcher.buffered), _CPU) if batcher.buffered else None
    pieces = gather(mine)
    lost = plan.dropped[rank]
    dropped = []
    if lost and mine is not None:  # what is dropped is the tail of mine
        dropped.append((narrow(mine, counts[rank] - lost, lost), lost))
    sizes = plan.sizes[rank]
    if sizes:
        pool = batcher.join([p for p in pieces if p is not None])
        start = plan.starts[rank]
        for size in sizes:
            batch = narrow(pool, start, size)
            batcher.queue(to_device(batch, device) if device else batch, size)
            start += size
    return dropped
