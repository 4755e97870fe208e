"""Rank detection and the lockstep protocol that keeps DDP ranks at equal step counts.

Every round, each rank pulls at most one raw batch and scores it locally; then one
``all_gather`` carries from every rank a small header (batch size, buffered count, exhausted
and error flags) and its losses, and, when the policy asks for them, per-sample side values
(sample ids and labels for :class:`~smartsift.Guarded`) and a few per-rank numbers (the
timings :class:`~smartsift.Auto` decides from). With that message every rank knows every
rank's losses, so all ranks share one loss history and compute every rank's keep mask alike
(with a generator seeded the same everywhere), hence every rank's buffered count, and all
yield the same number of refined batches. The epoch's leftovers are balanced across ranks
once, at the end.

Example:
    >>> info = resolve_ranks(None, None, None)   # no process group: a single process
    >>> info.rank, info.world_size, info.distributed
    (0, 1, False)
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

__all__ = ["PeerRound", "RankInfo", "RemoteRankError", "resolve_ranks"]

_HEADER = 5  # size, buffered, exhausted, error, overflow


def _no_channels() -> np.ndarray:
    return np.zeros((0, 0), dtype=np.float64)


def _no_scalars() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


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
    """One rank's part of a round, as every rank sees it.

    ``channels`` holds per-sample side values, shape ``(k, size)`` (ids, labels); ``scalars``
    a fixed number of per-rank values. Both are empty unless the round's caller sent some.
    """

    size: int
    buffered: int
    exhausted: bool
    error: bool
    losses: np.ndarray
    channels: np.ndarray = field(default_factory=_no_channels)
    scalars: np.ndarray = field(default_factory=_no_scalars)


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
        self,
        size: int,
        losses: np.ndarray,
        buffered: int,
        exhausted: bool,
        error: bool,
        channels: np.ndarray | None = None,
        scalars: np.ndarray | None = None,
    ) -> list[PeerRound]:
        """Shares this rank's round with all ranks; returns every rank's, in rank order.

        ``losses`` is empty (a pass-through round) or holds ``size`` losses. ``channels``, of
        shape ``(k, len(losses))``, travel with the losses (float64: integer ids are exact up
        to 2**53); ``scalars`` are ``m`` numbers of this rank. Every rank must send the same
        ``k`` and ``m`` (they follow from the policy, which is the same on every rank); with
        neither, the message is exactly the header and the losses.
        """
        if channels is None:
            channels = _no_channels()
        if scalars is None:
            scalars = _no_scalars()
        if not self.info.distributed:
            return [PeerRound(size, buffered, exhausted, error, losses, channels, scalars)]
        start = time.perf_counter()
        try:
            return self._exchange(size, losses, buffered, exhausted, error, channels, scalars)
        finally:
            self.seconds += time.perf_counter() - start

    def _exchange(
        self,
        size: int,
        losses: np.ndarray,
        buffered: int,
        exhausted: bool,
        error: bool,
        channels: np.ndarray,
        scalars: np.ndarray,
    ) -> list[PeerRound]:
        n = losses.size
        k, m = channels.shape[0], scalars.size
        cap = self.capacity
        head = _HEADER + m
        msg = np.zeros(head + (1 + k) * cap, dtype=np.float64)
        msg[:_HEADER] = (size, buffered, exhausted, error, n > cap)
        msg[_HEADER:head] = scalars
        body = msg[head:].reshape(1 + k, cap)
        body[0, : min(n, cap)] = losses[:cap]
        if k:
            body[1:, : min(n, cap)] = channels[:, :cap]
        rows = self._gather(torch.from_numpy(msg))
        if rows[:, 4].any():
            # Someone's raw batch outgrew the agreed capacity: agree on a new one and resend.
            self.capacity = cap = int(rows[:, 0].max())
            padded = np.zeros((1 + k, cap), dtype=np.float64)
            padded[0, :n] = losses
            if k:
                padded[1:, :n] = channels
            loss_rows = self._gather(torch.from_numpy(padded.ravel()))
        else:
            loss_rows = rows[:, head:]
        loss_rows = loss_rows.reshape(len(rows), 1 + k, cap)
        return [
            PeerRound(
                size=int(row[0]),
                buffered=int(row[1]),
                exhausted=bool(row[2]),
                error=bool(row[3]),
                losses=loss_rows[r, 0, : int(row[0])],
                channels=loss_rows[r, 1:, : int(row[0])],
                scalars=rows[r, _HEADER:head],
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
