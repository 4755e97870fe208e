"""The leftover plan: how DDP ranks share the last kept samples of an epoch.

At the end of an epoch every rank holds some kept samples that did not fill a refined batch.
:func:`plan_leftovers` decides, from every rank's count alone, how many batches each rank yields
and of what sizes, so that every rank yields the same number of batches, no rank is left with
an empty batch while others train, and as few samples as possible are dropped. It is pure
arithmetic (identical on every rank), tested in one process over simulated ranks.

Example:
    >>> plan = plan_leftovers([5, 1], batch_size=4, drop_last=False)
    >>> plan.local, plan.sizes, plan.dropped
    (False, [[3], [3]], [0, 0])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["LeftoverPlan", "plan_leftovers", "split_evenly"]


def split_evenly(total: int, parts: int) -> list[int]:
    """Splits ``total`` into ``parts`` sizes that differ by at most one, larger first.

    Example:
        >>> split_evenly(7, 3)
        [3, 2, 2]
    """
    q, r = divmod(total, parts)
    return [q + (1 if i < r else 0) for i in range(parts)]


@dataclass(frozen=True)
class LeftoverPlan:
    """What each rank does with its leftovers.

    Attributes:
        local: every rank can form its batches from its own samples alone (no exchange).
        sizes: the sizes of the batches each rank yields, in rank order.
        dropped: how many of each rank's own samples are dropped.
        starts: with ``local`` False, where each rank's share begins in the pool of every
            rank's samples joined in rank order.
    """

    local: bool
    sizes: list[list[int]]
    dropped: list[int]
    starts: list[int]


def plan_leftovers(counts: Sequence[int], batch_size: int, drop_last: bool) -> LeftoverPlan:
    """Plans the end of an epoch from every rank's count of leftover samples.

    With the same number of batches possible on every rank, each rank forms its own: full
    batches, then a smaller one (or, with ``drop_last``, it drops the rest). Otherwise the
    samples are pooled and dealt out evenly: with ``drop_last`` only full batches on every rank;
    without it, batches that differ by at most one sample, dropping the few samples (fewer than
    the world size) that cannot be shared out evenly.

    Args:
        counts: every rank's leftover samples, in rank order.
        batch_size: the refined batch size.
        drop_last: yield only full batches.
    """
    world, bs = len(counts), batch_size
    per_rank = [c // bs if drop_last else -(-c // bs) for c in counts]
    if len(set(per_rank)) == 1:
        sizes = [[bs] * (c // bs) + ([c % bs] if c % bs and not drop_last else []) for c in counts]
        dropped = [c % bs if drop_last else 0 for c in counts]
        return LeftoverPlan(True, sizes, dropped, [0] * world)
    total = sum(counts)
    if drop_last:
        n = total // (world * bs)
        share = [n * bs] * world
    else:
        share = split_evenly(total, world)
        if total < world or (share[0] != share[-1] and share[-1] < -(-share[0] // bs)):
            share = [total // world] * world  # the few left over are dropped
        n = -(-share[0] // bs) if share[-1] else 0
    used = sum(share) if n else 0
    # Pooled samples are in rank order; those past `used` are dropped, from the last ranks.
    dropped, start = [], 0
    for c in counts:
        dropped.append(max(0, min(c, start + c - used)))
        start += c
    if not n:
        return LeftoverPlan(False, [[] for _ in counts], dropped, [0] * world)
    sizes = [[bs] * n if drop_last else split_evenly(s, n) for s in share]
    starts = [sum(share[:r]) for r in range(world)]
    return LeftoverPlan(False, sizes, dropped, starts)
