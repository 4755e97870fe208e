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

from smartsift.engine.checks import check_optional_int

__all__ = [
    "Lockstep",
    "PaddedGather",
    "PeerRound",
    "RankInfo",
    "RemoteRankError",
    "comm_device",
    "resolve_ranks",
]

_HEADER = 4  # size, buffered, exhausted, error; then the scalars


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
    check_optional_int("rank", rank, minimum=None)
    check_optional_int("world_size", world_size, minimum=None)
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


def comm_device(group: Any) -> torch.device:
    """The device the collectives of ``group`` run on: the current CUDA device under NCCL,
    else (another backend, or no process group at all) the CPU.

    Example:
        >>> comm_device(None)  # no process group here
        device(type='cpu')
    """
    initialized = dist.is_available() and dist.is_initialized()
    if initialized and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _world_size(group: Any) -> int:
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size(group)


def _pad(rows: np.ndarray, capacity: int) -> np.ndarray:
    """``rows`` of shape ``(k, n)``, cut or padded with zeros to ``(k, capacity)``."""
    out = np.zeros((rows.shape[0], capacity), dtype=np.float64)
    n = min(rows.shape[1], capacity)
    out[:, :n] = rows[:, :n]
    return out


class PaddedGather:
    """An all-gather of a fixed-length float64 message per rank, at a capacity the ranks agree on.

    Each rank sends a header of ``h`` numbers and ``k`` rows of ``n`` values (``n`` may differ
    between ranks; ``h`` and ``k`` may not). The rows travel padded to :attr:`capacity`, so that
    a call is one ``all_gather``; a rank whose ``n`` outgrew it raises an overflow flag, and then
    every rank agrees on the largest ``n`` as the new capacity and resends the rows (a second
    ``all_gather``). Float64 carries integer ids exactly up to 2**53.

    Without a process group, or in a group of one rank, nothing is sent: each call returns this
    rank's own header and rows.

    Args:
        group: the process group (default: the world).
        capacity: the agreed row length; 0: not agreed yet, in which case the first
            :meth:`gather` agrees on one as :meth:`gather_once` does (two collectives).

    Attributes:
        capacity: the row length every rank sends.
        seconds: seconds spent in :meth:`gather` and :meth:`gather_once`, summed.
        collectives: how many ``all_gather`` calls they have run.

    Example:
        >>> messages = PaddedGather(None)            # no process group: one rank
        >>> headers, rows = messages.gather(np.array([7.0]), np.array([[1.0, 2.0], [3.0, 4.0]]))
        >>> headers.tolist(), [r.tolist() for r in rows], messages.collectives
        ([[7.0]], [[[1.0, 2.0], [3.0, 4.0]]], 0)
    """

    def __init__(self, group: Any = None, capacity: int = 0) -> None:
        self.group = group
        self.capacity = capacity
        self.seconds = 0.0
        self.collectives = 0
        self._device: torch.device | None = None

    def gather(self, header: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Every rank's ``header`` and ``rows``, in rank order.

        One ``all_gather``; a second only when some rank's rows are longer than the capacity
        (or, on the first call of a gather built with capacity 0, to agree on one).

        Args:
            header: this rank's ``h`` numbers (the same ``h`` on every rank).
            rows: this rank's values, shape ``(k, n)`` (the same ``k`` on every rank).

        Returns:
            ``(headers, rows)``: the headers as shape ``(W, h)``, and each rank's rows as
            shape ``(k, n_r)``.
        """
        header, rows = _as_message(header, rows)
        if _world_size(self.group) == 1:
            return header[None], [rows]
        if self.capacity == 0:
            headers, parts, self.capacity = self._agree(header, rows)
            return headers, parts
        start = time.perf_counter()
        try:
            n, h, cap = rows.shape[1], header.size, self.capacity
            msg = np.concatenate([[n, n > cap], header, _pad(rows, cap).ravel()])
            out = self._all_gather(msg)
            sizes = out[:, 0].astype(np.int64)
            if out[:, 1].any():
                # Some rank's rows outgrew the agreed capacity: agree on a new one and resend.
                self.capacity = cap = int(sizes.max())
                bodies = self._all_gather(_pad(rows, cap).ravel())
            else:
                bodies = out[:, 2 + h :]
            return out[:, 2 : 2 + h], _split(bodies, rows.shape[0], cap, sizes)
        finally:
            self.seconds += time.perf_counter() - start

    def gather_once(
        self, header: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray]]:
        """As :meth:`gather`, at a row length agreed for this call alone (the capacity stays):
        always two ``all_gather`` calls, one for the headers and lengths, one for the rows.

        Example:
            >>> headers, rows = PaddedGather(None).gather_once(np.zeros(0), np.ones((1, 3)))
            >>> headers.shape, rows[0].tolist()
            ((1, 0), [[1.0, 1.0, 1.0]])
        """
        header, rows = _as_message(header, rows)
        if _world_size(self.group) == 1:
            return header[None], [rows]
        headers, parts, _ = self._agree(header, rows)
        return headers, parts

    def _agree(
        self, header: np.ndarray, rows: np.ndarray
    ) -> tuple[np.ndarray, list[np.ndarray], int]:
        """The headers and rows of every rank, and the row length agreed for them."""
        start = time.perf_counter()
        try:
            heads = self._all_gather(np.concatenate([[rows.shape[1]], header]))
            sizes = heads[:, 0].astype(np.int64)
            cap = max(1, int(sizes.max()))
            bodies = self._all_gather(_pad(rows, cap).ravel())
            return heads[:, 1:], _split(bodies, rows.shape[0], cap, sizes), cap
        finally:
            self.seconds += time.perf_counter() - start

    def _all_gather(self, msg: np.ndarray) -> np.ndarray:
        if self._device is None:
            self._device = comm_device(self.group)
        tensor = torch.from_numpy(np.ascontiguousarray(msg, dtype=np.float64)).to(self._device)
        out = [torch.empty_like(tensor) for _ in range(dist.get_world_size(self.group))]
        dist.all_gather(out, tensor, group=self.group)
        self.collectives += 1
        return torch.stack(out).cpu().numpy()


def _as_message(header: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    header = np.asarray(header, dtype=np.float64).reshape(-1)
    rows = np.asarray(rows, dtype=np.float64)
    if rows.ndim != 2:
        raise ValueError(f"Expected `rows` of shape (k, n), but got shape {rows.shape}.")
    return header, rows


def _split(bodies: np.ndarray, k: int, cap: int, sizes: np.ndarray) -> list[np.ndarray]:
    """Each rank's ``(k, n_r)`` rows out of the gathered padded bodies."""
    padded = bodies.reshape(len(bodies), k, cap)
    return [padded[r, :, :n] for r, n in enumerate(sizes.tolist())]


class Lockstep:
    """The collectives of one loader: a round exchange, leftover exchange, seed and stats sync."""

    def __init__(self, info: RankInfo, capacity: int) -> None:
        self.info = info
        self.seconds = 0.0
        self._messages = PaddedGather(info.group, capacity=max(1, capacity))
        self._device = comm_device(info.group) if info.distributed else torch.device("cpu")

    @property
    def capacity(self) -> int:
        """The agreed length of a round's losses (a raw batch's size), saved with the loader."""
        return self._messages.capacity

    @capacity.setter
    def capacity(self, value: int) -> None:
        self._messages.capacity = value

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
        neither, the message is exactly the header and the losses. One :class:`PaddedGather`
        call: one ``all_gather``, a second only when a raw batch outgrew the capacity.
        """
        if channels is None:
            channels = _no_channels()
        if scalars is None:
            scalars = _no_scalars()
        if not self.info.distributed:
            return [PeerRound(size, buffered, exhausted, error, losses, channels, scalars)]
        start = time.perf_counter()
        try:
            header = np.concatenate([[size, buffered, exhausted, error], scalars])
            k = channels.shape[0]
            rows = np.empty((1 + k, losses.size), dtype=np.float64)
            rows[0] = losses
            if k:
                rows[1:] = channels
            headers, parts = self._messages.gather(header, rows)
        finally:
            self.seconds += time.perf_counter() - start
        return [
            PeerRound(
                size=int(head[0]),
                buffered=int(head[1]),
                exhausted=bool(head[2]),
                error=bool(head[3]),
                losses=part[0],
                channels=part[1:],
                scalars=head[_HEADER:],
            )
            for head, part in zip(headers, parts, strict=True)
        ]

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
