"""Rank detection and the lockstep protocol that keeps DDP ranks at equal step counts.

Every round, each rank pulls at most one raw batch and scores it locally; then one
``all_gather`` carries from every rank a small header (batch size, buffered count, exhausted
and error flags) and its losses. With that message every rank knows every rank's losses, so all
ranks share one loss history and compute every rank's keep mask alike (with a generator seeded
the same everywhere), hence every rank's buffered count, and all yield the same number of
refined batches. The epoch's leftovers are balanced across ranks once, at the end.

Example:
    >>> info = resolve_ranks(None, None, None)   # no process group: a single process
    >>> info.rank, info.world_size, info.distributed
    (0, 1, False)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["PeerRound", "RankInfo", "RemoteRankError", "resolve_ranks"]

_HEADER = 5  # size, buffered, exhausted, error, overflow


class RemoteRankError(RuntimeError):
    """Another rank failed during a round; this rank stops too instead of hanging."""


@dataclass(frozen=True)
class RankInfo:
    """Where this process stands in the job."""

    rank: int
    world_size: int
    group: Any = None

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


@dataclass
class PeerRound:
    """One rank's part of a round, as every rank sees it."""

    size: int
    buffered: int
    exhausted: bool
    error: bool
    losses: np.ndarray


def resolve_ranks(rank: int | None, world_size: int | None, group: Any) -> RankInfo:
    """Detects rank and world size from ``torch.distributed``, or checks the given ones.

    Passing ``world_size=1`` under an initialised process group makes every rank sift on its
    own, with no collectives (step counts may then differ between ranks).
    """
    for name, value in (("rank", rank), ("world_size", world_size)):
        if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
            raise ValueError(f"Expected `{name}` to be an int or None, but got {value!r}.")
    initialized = dist.is_available() and dist.is_initialized()
    if world_size == 1:
        return RankInfo(0, 1, None)
    if not initialized:
        if (world_size or 1) > 1:
            raise ValueError(
                f"world_size={world_size} needs an initialised torch.distributed process group; "
                "call torch.distributed.init_process_group() (torchrun sets the environment) "
                "before building the loader."
            )
        if rank not in (None, 0):
            raise ValueError(f"rank={rank} given without a process group; expected 0 or None.")
        return RankInfo(0, 1, None)
    real_rank = dist.get_rank(group)
    real_world = dist.get_world_size(group)
    if rank is not None and rank != real_rank:
        raise ValueError(f"rank={rank} but the process group says this process is {real_rank}.")
    if world_size is not None and world_size != real_world:
        raise ValueError(f"world_size={world_size} but the process group has {real_world} ranks.")
    return RankInfo(real_rank, real_world, group)


def _comm_device(group: Any) -> torch.device:
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


class Lockstep:
    """The collectives of one loader: a round exchange, leftover exchange, seed and stats sync."""

    def __init__(self, info: RankInfo, capacity: int) -> None:
        self.info = info
        self.capacity = max(1, capacity)
        self.seconds = 0.0
        self._device = _comm_device(info.group) if info.distributed else torch.device("cpu")

    def exchange(
        self, size: int, losses: np.ndarray, buffered: int, exhausted: bool, error: bool
    ) -> list[PeerRound]:
        """Shares this rank's round with all ranks; returns every rank's, in rank order.

        ``losses`` is empty (a pass-through round) or holds ``size`` losses.
        """
        if not self.info.distributed:
            return [PeerRound(size, buffered, exhausted, error, losses)]
        start = time.perf_counter()
        try:
            return self._exchange(size, losses, buffered, exhausted, error)
        finally:
            self.seconds += time.perf_counter() - start

    def _exchange(
        self, size: int, losses: np.ndarray, buffered: int, exhausted: bool, error: bool
    ) -> list[PeerRound]:
        n = losses.size
        cap = self.capacity
        msg = np.zeros(_HEADER + cap, dtype=np.float64)
        msg[:_HEADER] = (size, buffered, exhausted, error, n > cap)
        msg[_HEADER : _HEADER + min(n, cap)] = losses[:cap]
        rows = self._gather(torch.from_numpy(msg))
        if rows[:, 4].any():
            # Someone's raw batch outgrew the agreed capacity: agree on a new one and resend.
            self.capacity = cap = int(rows[:, 0].max())
            padded = np.zeros(cap, dtype=np.float64)
            padded[:n] = losses
            loss_rows = self._gather(torch.from_numpy(padded))
        else:
            loss_rows = rows[:, _HEADER:]
        return [
            PeerRound(
                size=int(row[0]),
                buffered=int(row[1]),
                exhausted=bool(row[2]),
                error=bool(row[3]),
                losses=loss_rows[r, : int(row[0])],
            )
            for r, row in enumerate(rows)
        ]

    def _gather(self, tensor: torch.Tensor) -> np.ndarray:
        tensor = tensor.to(self._device)
        out = [torch.empty_like(tensor) for _ in range(self.info.world_size)]
        dist.all_gather(out, tensor, group=self.info.group)
        return torch.stack(out).cpu().numpy()

    def gather_objects(self, obj: Any) -> list[Any]:
        """Gathers one picklable object from every rank (used once per epoch at most)."""
        start = time.perf_counter()
        out: list[Any] = [None] * self.info.world_size
        dist.all_gather_object(out, obj, group=self.info.group)
        self.seconds += time.perf_counter() - start
        return out

    def agree_seed(self, seed: int) -> int:
        """Returns rank 0's ``seed`` on every rank."""
        if not self.info.distributed:
            return seed
        t = torch.tensor([seed], dtype=torch.int64, device=self._device)
        src = dist.get_global_rank(self.info.group, 0) if self.info.group is not None else 0
        dist.broadcast(t, src=src, group=self.info.group)
        return int(t.item())

    def sum(self, values: list[float]) -> list[float]:
        """Sums a vector of numbers over ranks."""
        if not self.info.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=self._device)
        dist.all_reduce(t, group=self.info.group)
        return [float(x) for x in t.cpu()]
