"""The score table: each dataset index's last training loss, fed by the training step itself.

Loss reuse (:mod:`smartsift.modes.reuse`) sifts without a scoring pass: the per-sample losses
that the training step computes anyway are written into a :class:`ScoreTable`, keyed by dataset
index, and the next epoch's :class:`~smartsift.modes.reuse.ReuseSampler` decides from them which
indices to skip before they are loaded. Feeding it is one line after the forward pass::

    per_sample = loss_fn(model(x), y)            # reduction="none", shape (B,)
    table.update(ids, per_sample)                # ids: the batch's dataset indices

Per index the table records the last finite or non-finite loss, the epoch it was recorded in
(``table.epoch``, which the sampler sets when it decides an epoch), the finite loss recorded
before the latest one (``previous``) and, if set, a reference model's loss (``reference``, set
with :meth:`ScoreTable.set_reference`). It is compact: 12 bytes per index (float32 losses and
previous losses, an int32 epoch), 4 more once a reference is set, 4 more with
``track_updates=True`` (which :meth:`ScoreTable.update` call made each record); values read back
have float32 precision.

Under DDP, with a process group of more than one rank, every rank must hold the same table, so
that the ranks decide alike. :meth:`ScoreTable.update` then only appends the rows to a local
pending buffer, stamped with the epoch and the call; :meth:`ScoreTable.sync` (a collective) and
``update`` itself every ``sync_every`` calls (256 by default) all-gather every rank's pending rows
and apply them in the order of the calls, rank by rank within a call, so every rank ends with the
same table. The sampler syncs when it decides an epoch, so an epoch is decided from the whole
table. :meth:`ScoreTable.set_reference` all-gathers at once (two collectives per call).

The sampler decides from a *score* per index, read from the table (:data:`SCORES`): the last
loss (``"loss"``); how much it moved since the loss before (``"change"``, :func:`loss_change`),
which is small both for learnt samples and for samples the model cannot learn (mislabeled
ones), and large for samples being learnt or forgotten; its sign (``"trend"``,
:func:`loss_trend`), high for samples being forgotten and low for those being learnt; or the last
loss less the reference model's (``"reducible"``, :func:`reducible_loss`, RHO-LOSS's reducible
holdout loss).

Example:
    >>> import torch
    >>> table = ScoreTable(5)
    >>> table.epoch = 0
    >>> table.update(torch.tensor([3, 1]), torch.tensor([0.5, 2.0]))
    >>> table.losses.tolist()
    [nan, 2.0, nan, 0.5, nan]
    >>> table.scored_epoch.tolist(), table.updates, table.nbytes // table.size
    ([-1, 0, -1, 0, -1], 1, 12)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from smartsift.engine.checks import check_int
from smartsift.engine.distributed import PaddedGather

__all__ = [
    "SCORES",
    "ScoreFn",
    "ScoreTable",
    "fold_records",
    "ids_array",
    "loss_change",
    "loss_trend",
    "reducible_loss",
    "repeated_records",
]

_NO_HEADER = np.zeros(0, dtype=np.float64)
_COUNTED_EPOCHS = 8  # how many of the latest epochs epoch_counts() remembers


def ids_array(value: Any) -> np.ndarray:
    """Sample ids given as a tensor (any device), an array or a sequence, as a CPU array.

    Example:
        >>> ids_array(torch.tensor([3, 1])).tolist(), ids_array([2]).tolist()
        ([3, 1], [2])
    """
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu").numpy()
    return np.asarray(value)


def _float32_losses(value: Any) -> np.ndarray:
    """``value`` as a new float32 array; integer, bool or other non-float values refused."""
    if isinstance(value, torch.Tensor):
        if not value.dtype.is_floating_point:
            _refuse_losses(value.dtype)
        return value.detach().to("cpu", torch.float32).numpy().copy()
    array = np.asarray(value)
    if not np.issubdtype(array.dtype, np.floating):
        _refuse_losses(array.dtype)
    return array.astype(np.float32)


def _refuse_losses(dtype: Any) -> None:
    raise ValueError(
        f"Expected `losses` to hold floating-point per-sample losses, but got dtype {dtype}; "
        "pass the float per-sample losses of the step (reduction='none'), not labels, "
        "predictions or a mask."
    )


def loss_change(last: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """How far each loss moved between its last two records: ``|last - previous|``.

    A sample whose loss no longer moves is learnt, or cannot be learnt (a mislabeled sample
    stays high); one whose loss falls is being learnt and one whose loss rises is being
    forgotten. NaN where either record is missing.

    Example:
        >>> loss_change(np.array([0.1, 2.0, 0.5, 1.0]), np.array([0.1, 2.1, 1.5, np.nan])).round(6)
        array([0. , 0.1, 1. , nan])
    """
    return np.abs(np.asarray(last, np.float64) - np.asarray(previous, np.float64))


def loss_trend(last: np.ndarray, previous: np.ndarray) -> np.ndarray:
    """Which way each loss moved between its last two records: ``last - previous``.

    Positive where the loss rose (the sample is being forgotten), negative where it fell (it is
    being learnt); NaN where either record is missing.

    Example:
        >>> loss_trend(np.array([0.5, 1.0, 2.0]), np.array([1.5, 0.25, np.nan])).tolist()
        [-1.0, 0.75, nan]
    """
    return np.asarray(last, np.float64) - np.asarray(previous, np.float64)


def reducible_loss(last: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The loss a sample still has beyond what a reference model has on it: ``last - reference``.

    RHO-LOSS's selection score: the reference model (trained on held-out data) has a high loss
    on samples that are noisy or ambiguous whatever the training, so subtracting it leaves the
    part that training can still reduce. Negative where the model already beats the reference;
    NaN where either is missing.

    Example:
        >>> reducible_loss(np.array([2.0, 2.0, 0.1]), np.array([1.9, 0.2, np.nan])).round(6)
        array([0.1, 1.8, nan])
    """
    return np.asarray(last, np.float64) - np.asarray(reference, np.float64)


def _by_id(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rows grouped by id, each group in row order: ``(order, group starts in order)``."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    return order, starts[: ids.size]  # no rows: no group


def fold_records(ids: np.ndarray, losses: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Folds records applied in row order into each id's last record and the finite record
    before it, as if applied one row at a time.

    Returns:
        ``(unique ids, row of each one's last record, row of the last finite record before
        it)``, the latter -1 where the rows hold none (the table's own latest loss is then the
        previous one).

    Example:
        >>> u, last, prior = fold_records(np.array([4, 2, 4, 4]), np.array([1.0, 2.0, np.nan, 3.0]))
        >>> u.tolist(), last.tolist(), prior.tolist()
        ([2, 4], [1, 3], [-1, 0])
    """
    if ids.size == 0:
        return ids[:0], np.zeros(0, np.int64), np.zeros(0, np.int64)
    order, starts = _by_id(ids)
    ends = np.r_[starts[1:], ids.size] - 1
    eligible = np.isfinite(losses[order])
    eligible[ends] = False  # a record is never its own previous
    positions = np.where(eligible, np.arange(ids.size), -1)
    best = np.maximum.reduceat(positions, starts)
    prior = np.where(best >= 0, order[np.maximum(best, 0)], -1)
    return ids[order[starts]], order[ends], prior


def repeated_records(ids: np.ndarray, epochs: np.ndarray, known: np.ndarray) -> np.ndarray:
    """Which records repeat an id already recorded in the same epoch: stamped as the id's
    latest record before these rows (``known``, per row) or as an earlier row of the same id.

    Example:
        >>> ids, known = np.array([1, 2, 1, 3]), np.array([-1, 5, -1, 4])
        >>> repeated_records(ids, np.full(4, 5), known).tolist()
        [False, True, True, False]
    """
    order, starts = _by_id(ids)
    stamps = epochs[order]
    same = np.ones(ids.size, dtype=bool)
    same[starts] = False
    same[1:] &= stamps[1:] == stamps[:-1]
    out = np.empty(ids.size, dtype=bool)
    out[order] = same | (known[order] == stamps)
    return out


@dataclass(frozen=True)
class _Rows:
    """One :meth:`ScoreTable.update` call's rows, waiting for the next exchange."""

    ids: np.ndarray  # int64
    losses: np.ndarray  # float32
    epoch: int
    update: int


class ScoreTable:
    """Each dataset index's last per-sample training loss, and when it was recorded.

    Args:
        size: the number of dataset indices (``len(dataset)``); ids are ``0 .. size-1``.
        distributed: whether the ranks share the table; default: when a ``torch.distributed``
            process group with more than one rank is initialised (checked on each call). Pass
            False to keep a table per rank.
        group: the process group to gather over (default: the world).
        sync_every: under DDP, :meth:`update` exchanges the rows of every rank every
            ``sync_every`` calls (and :meth:`sync` whenever asked); 1: at every call. The same
            on every rank.
        track_updates: keep :attr:`scored_update` (4 bytes per index).

    Attributes:
        losses: each index's last recorded loss (NaN if never recorded), float32.
        previous: each index's last finite loss recorded before its latest record (NaN until
            there is one), float32.
        scored_epoch: the epoch of each index's last record (-1 if none), int32.
        scored_update: with ``track_updates``, the :meth:`update` call that made each index's
            last record (-1 if none), int32; else None. The sampler does not read it.
        epoch: the epoch that new losses are stamped with; the :class:`~smartsift.modes.reuse.
            ReuseSampler` sets it when it decides an epoch (-1 before).
        updates: how many :meth:`update` calls have been made (every rank counts alike).

    :attr:`nbytes` gives the memory held (12 bytes per index by default). Under DDP the
    attributes show the rows applied at the last exchange; reading them never runs a
    collective. Call :meth:`update` on every rank at every step (the exchanges happen at the
    same call on every rank) and :meth:`sync` on every rank alike.

    Example:
        >>> table = ScoreTable(4, track_updates=True)
        >>> table.epoch = 2
        >>> table.update([2, 0], [0.5, 1.5])
        >>> table.update([2], [0.25])
        >>> table.losses.tolist(), table.previous.tolist(), table.scored_update.tolist()
        ([1.5, nan, 0.25, nan], [nan, nan, 0.5, nan], [0, -1, 1, -1])
    """

    def __init__(
        self,
        size: int,
        distributed: bool | None = None,
        group: Any = None,
        *,
        sync_every: int = 256,
        track_updates: bool = False,
    ) -> None:
        check_int("size", size, 1, "the dataset's length")
        check_int("sync_every", sync_every, 1, "update calls between exchanges under DDP")
        if not isinstance(track_updates, bool):
            raise ValueError(f"Expected `track_updates` to be a bool, but got {track_updates!r}.")
        self.size = size
        self.distributed = distributed
        self.group = group
        self.sync_every = sync_every
        self.epoch = -1
        self.updates = 0
        self.losses = np.full(size, np.nan, dtype=np.float32)
        self.previous = np.full(size, np.nan, dtype=np.float32)
        self.scored_epoch = np.full(size, -1, dtype=np.int32)
        self.scored_update: np.ndarray | None = (
            np.full(size, -1, dtype=np.int32) if track_updates else None
        )
        self._reference: np.ndarray | None = None  # allocated by the first set_reference
        self._pending: list[_Rows] = []
        self._synced = 0  # `updates` at the last exchange (the same on every rank)
        self._counts: dict[int, tuple[int, int]] = {}  # epoch -> (records, repeats)
        self._widest: dict[int, int] = {}  # epoch -> this rank's largest update call
        # One message per exchange: no header; ids, losses, epoch and call stamps as four rows.
        self._messages = PaddedGather(group)

    # ------------------------------------------------------------ feeding
    def update(self, ids: Any, losses: Any) -> None:
        """Records the per-sample training losses of one step (call it after the forward pass).

        Without a process group (or with ``distributed=False``) the rows are applied at once.
        Under DDP they wait in this rank's pending buffer, stamped with :attr:`epoch`, until the
        next exchange: every ``sync_every``-th call is a collective that exchanges them (so call
        it on every rank at every step), and so is :meth:`sync`.

        Args:
            ids: the batch's dataset indices (a tensor, array or list of ints), shape ``(B,)``;
                :class:`~smartsift.IndexedDataset` puts them in every batch.
            losses: the unweighted per-sample losses of the same samples, shape ``(B,)``
                (``reduction="none"``), of a float dtype on any device; detached here. A NaN or
                infinite loss is stored, and the sample counts as never scored.

        Raises:
            ValueError: if the shapes differ, an id is out of range, ids are not integers, or
                losses are not floating-point.
        """
        ids_np, loss_np = self._check(ids, losses)
        call = self.updates
        self.updates += 1
        widest = self._widest
        widest[self.epoch] = max(widest.get(self.epoch, 0), ids_np.size)
        if len(widest) > _COUNTED_EPOCHS:
            del widest[min(widest)]
        if not self.shared:
            if self._pending:
                self.sync()  # rows that a loaded state left pending go first
            self._apply(ids_np, loss_np, np.array(self.epoch), np.array(call))
            self._synced = self.updates
            return
        self._pending.append(_Rows(ids_np, loss_np, self.epoch, call))
        if self.updates - self._synced >= self.sync_every:
            self.sync()

    def sync(self) -> None:
        """Applies the pending rows of every rank, so that every rank holds the same table.

        Under DDP a collective: call it on every rank alike. It runs one only when
        :meth:`update` calls are pending (decided from the call count, the same on every rank),
        and a rank with no rows pending takes part too. Rows keep the epoch they were recorded
        under. Without a process group rows are applied at once, so it only applies rows that
        a loaded state left pending, and runs no collective.

        Example:
            >>> table = ScoreTable(3)
            >>> table.sync()  # no process group: a no-op
            >>> table.collectives
            0
        """
        if self.shared:
            if self.updates == self._synced:
                return
            ids, losses, epochs, calls = self._take_pending()
            message = np.stack([ids, losses, epochs, calls]).astype(np.float64)
            _, rows = self._messages.gather(_NO_HEADER, message)
            gathered = np.concatenate(rows, axis=1)
            # rank by rank within a call, call by call: the order of an exchange at every call
            order = np.argsort(gathered[3], kind="stable")
            ids, losses = gathered[0, order].astype(np.int64), gathered[1, order]
            epochs, calls = gathered[2, order], gathered[3, order]
        elif self._pending:
            ids, losses, epochs, calls = self._take_pending()
        else:
            return
        self._apply(ids, losses.astype(np.float32), epochs.astype(np.int64), calls.astype(np.int64))
        self._synced = self.updates

    def _take_pending(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This rank's pending rows (as :meth:`_pending_rows`), the buffer emptied."""
        rows = self._pending_rows()
        self._pending = []
        return rows

    def _pending_rows(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """This rank's pending rows in call order: ids, losses, epoch and call stamps."""
        pending = self._pending
        counts = [r.ids.size for r in pending]
        return (
            np.concatenate([r.ids for r in pending] or [np.zeros(0, np.int64)]),
            np.concatenate([r.losses for r in pending] or [np.zeros(0, np.float32)]),
            np.repeat(np.array([r.epoch for r in pending], dtype=np.int64), counts),
            np.repeat(np.array([r.update for r in pending], dtype=np.int64), counts),
        )

    def _apply(
        self, ids: np.ndarray, losses: np.ndarray, epochs: np.ndarray, calls: np.ndarray
    ) -> None:
        """Applies rows in their order, as one row at a time would. ``epochs`` and ``calls``
        are the rows' stamps, or one stamp (a 0-d array) for all."""
        if ids.size == 0:
            return
        known = self.scored_epoch[ids]
        sorted_ids = np.sort(ids)
        if (sorted_ids[1:] != sorted_ids[:-1]).all():
            # One record per id (a batch's rows): nothing to fold.
            self._tally(epochs, known == epochs)
            before = self.losses[ids]
            self.previous[ids] = np.where(np.isfinite(before), before, self.previous[ids])
            self.losses[ids] = losses
            self.scored_epoch[ids] = epochs
            if self.scored_update is not None:
                self.scored_update[ids] = calls
            return
        epochs, calls = np.broadcast_to(epochs, ids.shape), np.broadcast_to(calls, ids.shape)
        self._tally(epochs, repeated_records(ids, epochs, known))
        unique, last, prior = fold_records(ids, losses)
        before = self.losses[unique]
        carried = np.where(np.isfinite(before), before, self.previous[unique])
        self.previous[unique] = np.where(prior >= 0, losses[np.maximum(prior, 0)], carried)
        self.losses[unique] = losses[last]
        self.scored_epoch[unique] = epochs[last]
        if self.scored_update is not None:
            self.scored_update[unique] = calls[last]

    def _tally(self, epochs: np.ndarray, repeats: np.ndarray) -> None:
        """Adds the rows (stamped ``epochs``, repeats where ``repeats``) to the epoch counts."""
        if epochs.ndim == 0 or epochs.min() == epochs.max():
            first = int(epochs.flat[0])
            tallies = [(first, repeats.size, int(np.count_nonzero(repeats)))]
        else:
            stamps, inverse = np.unique(epochs, return_inverse=True)
            records = np.bincount(inverse).tolist()
            repeated = np.bincount(inverse, weights=repeats).astype(np.int64).tolist()
            tallies = list(zip(stamps.tolist(), records, repeated, strict=True))
        for stamp, n, r in tallies:
            had = self._counts.get(stamp, (0, 0))
            self._counts[stamp] = (had[0] + n, had[1] + r)
        if len(self._counts) > _COUNTED_EPOCHS:
            for stamp in sorted(self._counts)[:-_COUNTED_EPOCHS]:
                del self._counts[stamp]

    def set_reference(self, ids: Any, losses: Any) -> None:
        """Records a reference model's per-sample losses (RHO-LOSS's "irreducible" losses).

        The reference is a model trained on held-out data (never on these samples); its loss
        on a training sample estimates the part of the loss that training cannot remove (label
        noise, ambiguity). Indices left out keep their reference (NaN if never set), and
        ``score="reducible"`` passes them undecided. Call it again to replace values.

        Under DDP (a process group initialised and ``distributed`` not False) it is a
        collective, run at once: call it on every rank, each with its share of the indices
        (e.g. its ``DistributedSampler`` shard) or each with all of them; every rank ends with
        the union of what the ranks passed. Two ``all_gather`` calls.

        Args:
            ids: dataset indices, shape ``(N,)``.
            losses: the reference model's per-sample losses on them, shape ``(N,)``.

        Raises:
            ValueError: as :meth:`update`.

        Example:
            >>> table = ScoreTable(3)
            >>> table.set_reference([0, 2], [0.5, 1.0])
            >>> table.reference.tolist()
            [0.5, nan, 1.0]
        """
        ids_np, loss_np = self._check(ids, losses)
        if self.shared:
            _, rows = self._messages.gather_once(_NO_HEADER, np.stack([ids_np, loss_np]))
            ids_np = np.concatenate([r[0] for r in rows]).astype(np.int64)
            loss_np = np.concatenate([r[1] for r in rows]).astype(np.float32)
        if self._reference is None:
            self._reference = np.full(self.size, np.nan, dtype=np.float32)
        self._reference[ids_np] = loss_np

    def _check(self, ids: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(ids as a new int64 array, values as a new float32 array)``."""
        ids_np = ids_array(ids)
        loss_np = _float32_losses(values)
        if ids_np.ndim != 1 or loss_np.shape != ids_np.shape:
            raise ValueError(
                f"Expected `ids` and `losses` to be 1-D and of the same length (one loss per "
                f"sample, reduction='none'), but got shapes {ids_np.shape} and {loss_np.shape}."
            )
        return self._checked_ids(ids_np), loss_np

    def _checked_ids(self, ids_np: np.ndarray) -> np.ndarray:
        if ids_np.size and not np.issubdtype(ids_np.dtype, np.integer):
            raise ValueError(
                f"Expected `ids` to hold integer dataset indices, but got dtype {ids_np.dtype}."
            )
        ids_np = ids_np.astype(np.int64)
        if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.size):
            bad = ids_np[(ids_np < 0) | (ids_np >= self.size)][0]
            raise ValueError(
                f"Expected `ids` in [0, {self.size}) (the table's size), but got {int(bad)}; "
                "build the table with ScoreTable(len(dataset))."
            )
        return ids_np

    @property
    def shared(self) -> bool:
        """Whether the ranks share this table: a ``torch.distributed`` process group of more
        than one rank is initialised, and ``distributed`` is not False."""
        if self.distributed is False or not (dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.group) > 1

    @property
    def sync_seconds(self) -> float:
        """Seconds spent in the all-gathers of the exchanges and :meth:`set_reference`."""
        return self._messages.seconds

    @property
    def collectives(self) -> int:
        """How many collectives the exchanges and :meth:`set_reference` have run."""
        return self._messages.collectives

    @property
    def pending(self) -> int:
        """How many of this rank's rows wait for the next exchange (0 without DDP)."""
        return sum(r.ids.size for r in self._pending)

    @property
    def nbytes(self) -> int:
        """Bytes this rank holds: the arrays and the pending rows.

        Example:
            >>> table = ScoreTable(1000)
            >>> table.nbytes, ScoreTable(1000, track_updates=True).nbytes
            (12000, 16000)
        """
        arrays = [self.losses, self.previous, self.scored_epoch, self._reference]
        arrays.append(self.scored_update)
        held = sum(a.nbytes for a in arrays if a is not None)
        return held + sum(r.ids.nbytes + r.losses.nbytes for r in self._pending)

    # ------------------------------------------------------------ reading
    @property
    def reference(self) -> np.ndarray:
        """Each index's reference loss, float32: NaN unless set by :meth:`set_reference`
        (before the first call, a read-only all-NaN view that holds no memory)."""
        if self._reference is None:
            return np.broadcast_to(np.float32(np.nan), (self.size,))
        return self._reference

    def scored(self) -> np.ndarray:
        """A boolean mask over indices: holds a finite loss.

        Example:
            >>> table = ScoreTable(3)
            >>> table.update([0, 2], [1.0, float("nan")])
            >>> table.scored().tolist()
            [True, False, False]
        """
        return np.isfinite(self.losses)

    def scores(self, score: str | ScoreFn, indices: Any) -> np.ndarray:
        """The scores of ``indices``: a name in :data:`SCORES` or ``score(table, indices)``.

        Example:
            >>> table = ScoreTable(3)
            >>> table.update([0, 1], [2.0, 1.0])
            >>> table.update([0, 1], [1.5, 1.0])
            >>> table.set_reference([0], [1.0])
            >>> [table.scores(s, np.array([0, 1, 2])).tolist() for s in ("change", "reducible")]
            [[0.5, 0.0, nan], [0.5, nan, nan]]
        """
        fn = SCORES[score] if isinstance(score, str) else score
        idx = np.asarray(indices, dtype=np.int64)
        out = np.asarray(fn(self, idx), dtype=np.float64)
        if out.shape != idx.shape:
            raise ValueError(
                f"Expected the score function {score!r} to return one score per index, shape "
                f"{idx.shape}, but got shape {out.shape}."
            )
        return out

    def epoch_counts(self, epoch: int) -> tuple[int, int]:
        """``(records, repeats)`` of the rows stamped ``epoch`` applied so far, over all ranks:
        ``repeats`` counts the rows whose id already had a record stamped ``epoch``.

        Under an unsharded base sampler on ``W`` ranks each sample is trained on every rank, so
        about ``(W - 1) / W`` of the records are repeats; correctly sharded, only the few
        padding rows that even out the ranks' shares are. Kept for the last 8 epochs recorded
        ((0, 0) for the others); under DDP it counts the rows exchanged so far.

        Example:
            >>> table = ScoreTable(4)
            >>> table.epoch = 1
            >>> table.update([0, 1], [1.0, 1.0])
            >>> table.update([1, 2], [1.0, 1.0])
            >>> table.epoch_counts(1), table.epoch_counts(0)
            ((4, 1), (0, 0))
        """
        return self._counts.get(epoch, (0, 0))

    def widest(self, epoch: int) -> int:
        """The most rows one :meth:`update` call on this rank recorded under ``epoch`` (its
        batch size); 0 if none, or if the epoch is older than the last 8.

        Padding that evens out the ranks' shares (accelerate's ``even_batches``) repeats fewer
        than ``world_size * widest`` samples an epoch, which tells it from unsharded training.

        Example:
            >>> table = ScoreTable(4)
            >>> table.update([0, 1, 2], [1.0, 1.0, 1.0])
            >>> table.update([3], [1.0])
            >>> table.widest(-1), table.widest(0)
            (3, 0)
        """
        return self._widest.get(epoch, 0)

    def recorded(self, ids: Any, epoch: int) -> np.ndarray:
        """Whether each id's latest record is stamped ``epoch``, this rank's pending rows
        counted (no collective). Exact for the latest epoch recorded; an id recorded in
        ``epoch`` and again in a later one reads False.

        Example:
            >>> table = ScoreTable(4)
            >>> table.epoch = 3
            >>> table.update([2], [0.5])
            >>> table.recorded([1, 2], 3).tolist(), table.recorded([2], 2).tolist()
            ([False, True], [False])
        """
        ids_np = self._checked_ids(ids_array(ids).reshape(-1))
        out = self.scored_epoch[ids_np] == epoch
        waiting = [r.ids for r in self._pending if r.epoch == epoch]
        if waiting:
            out |= np.isin(ids_np, np.concatenate(waiting))
        return out

    # ------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, Any]:
        """The table as tensors and plain values (``torch.load(weights_only=True)`` loadable),
        this rank's pending rows included.

        Under DDP each rank saves its own state (its pending rows differ), or calls
        :meth:`sync` on every rank first, after which the ranks' states are equal.
        """
        ids, losses, epochs, calls = self._pending_rows()
        counts = [[e, n, r] for e, (n, r) in sorted(self._counts.items())]
        return {
            "size": self.size,
            "epoch": self.epoch,
            "updates": self.updates,
            "synced": self._synced,
            "losses": torch.from_numpy(self.losses.copy()),
            "scored_epoch": torch.from_numpy(self.scored_epoch.copy()),
            "previous": torch.from_numpy(self.previous.copy()),
            "reference": _tensor(self._reference),
            "scored_update": _tensor(self.scored_update),
            "pending": {
                "ids": torch.from_numpy(ids),
                "losses": torch.from_numpy(losses),
                "epochs": torch.from_numpy(epochs),
                "updates": torch.from_numpy(calls),
            },
            "epoch_counts": torch.tensor(counts, dtype=torch.int64).reshape(-1, 3),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output, its pending rows as pending. A state saved by
        an older table loads too (float64 arrays, ``scored_update`` kept only with
        ``track_updates``, ``previous`` and ``reference`` NaN if it has none).

        Raises:
            ValueError: if the state was saved by a table of another size.
        """
        if int(state["size"]) != self.size:
            raise ValueError(
                f"The score table state holds {state['size']} indices but this table holds "
                f"{self.size}; build the table with the same dataset length to resume."
            )
        self.epoch = int(state["epoch"])
        self.updates = int(state["updates"])
        self._synced = int(state.get("synced", self.updates))
        # Every rank loads, fresh or not: agree on the message length anew, all alike.
        self._messages.capacity = 0
        self.losses = _array(state["losses"], np.float32, self.size, np.nan)
        self.scored_epoch = _array(state["scored_epoch"], np.int32, self.size, -1)
        self.previous = _array(state.get("previous"), np.float32, self.size, np.nan)
        reference = state.get("reference")
        self._reference = None
        if reference is not None and bool(torch.isfinite(reference).any()):
            self._reference = _array(reference, np.float32, self.size, np.nan)
        if self.scored_update is not None:
            self.scored_update = _array(state.get("scored_update"), np.int32, self.size, -1)
        pending = state.get("pending")
        self._pending = []
        if pending is not None:
            self._pending = _segments(
                pending["ids"].numpy().astype(np.int64),
                pending["losses"].numpy().astype(np.float32),
                pending["epochs"].numpy().astype(np.int64),
                pending["updates"].numpy().astype(np.int64),
            )
        counts = state.get("epoch_counts")
        rows = [] if counts is None else counts.tolist()
        self._counts = {int(e): (int(n), int(r)) for e, n, r in rows}


def _tensor(array: np.ndarray | None) -> torch.Tensor | None:
    return None if array is None else torch.from_numpy(array.copy())


def _array(saved: torch.Tensor | None, dtype: Any, size: int, fill: float) -> np.ndarray:
    """A saved tensor as a new array of ``dtype``; ``fill`` everywhere if none was saved."""
    if saved is None:
        return np.full(size, fill, dtype=dtype)
    return saved.numpy().astype(dtype)


def _segments(
    ids: np.ndarray, losses: np.ndarray, epochs: np.ndarray, calls: np.ndarray
) -> list[_Rows]:
    """Pending rows back as one :class:`_Rows` per call (runs of equal stamps)."""
    if ids.size == 0:
        return []
    bounds = np.flatnonzero((np.diff(calls) != 0) | (np.diff(epochs) != 0)) + 1
    starts = np.r_[0, bounds]
    ends = np.r_[bounds, ids.size]
    return [
        _Rows(ids[a:b].copy(), losses[a:b].copy(), int(epochs[a]), int(calls[a]))
        for a, b in zip(starts.tolist(), ends.tolist(), strict=True)
    ]


def _last_loss(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return table.losses[indices]


def _change(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return loss_change(table.losses[indices], table.previous[indices])


def _trend(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return loss_trend(table.losses[indices], table.previous[indices])


def _reducible(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return reducible_loss(table.losses[indices], table.reference[indices])


ScoreFn = Callable[[ScoreTable, np.ndarray], np.ndarray]
"""``score(table, indices) -> np.ndarray``: one real score per index (higher: more worth
training); a non-finite score leaves the sample undecided (trained)."""

SCORES: dict[str, ScoreFn] = {
    "loss": _last_loss,
    "change": _change,
    "trend": _trend,
    "reducible": _reducible,
}
"""The scores a :class:`~smartsift.modes.reuse.ReuseSampler` accepts by name."""
