"""The score table: each dataset index's last training loss, fed by the training step itself.

Loss reuse (:mod:`smartsift.modes.reuse`) sifts without a scoring pass: the per-sample losses
that the training step computes anyway are written into a :class:`ScoreTable`, keyed by dataset
index, and the next epoch's :class:`~smartsift.modes.reuse.ReuseSampler` decides from them which
indices to skip before they are loaded. Feeding it is one line after the forward pass::

    per_sample = loss_fn(model(x), y)            # reduction="none", shape (B,)
    table.update(ids, per_sample)                # ids: the batch's dataset indices

Per index the table records the last finite or non-finite loss, the epoch it was recorded in
(``table.epoch``, which the sampler sets when it decides an epoch), the update count
(``table.updates``, one per :meth:`ScoreTable.update` call), the finite loss recorded before the
latest one (``previous``) and, if set, a reference model's loss (``reference``, set with
:meth:`ScoreTable.set_reference`). Under DDP, with a process group initialised,
:meth:`ScoreTable.update` all-gathers every rank's ``(ids, losses)`` so that every rank holds the
same table: one ``all_gather`` per call, a second one only when some rank's batch is larger than
any before (on the first call, and rarely after). :meth:`ScoreTable.set_reference` all-gathers
likewise (two collectives per call).

The sampler decides from a *score* per index, read from the table (:data:`SCORES`): the last
loss (``"loss"``); how much it moved since the loss before (``"change"``, :func:`loss_change`),
which is small both for learnt samples and for samples the model cannot learn (mislabeled
ones), and large for samples being learnt or forgotten; or the last loss less the reference
model's (``"reducible"``, :func:`reducible_loss`, RHO-LOSS's reducible holdout loss).

Example:
    >>> import torch
    >>> table = ScoreTable(5)
    >>> table.update(torch.tensor([3, 1]), torch.tensor([0.5, 2.0]))
    >>> table.losses.tolist()
    [nan, 2.0, nan, 0.5, nan]
    >>> table.scored_update.tolist(), table.updates
    ([-1, 0, -1, 0, -1], 1)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from smartsift.engine.checks import check_int
from smartsift.engine.distributed import PaddedGather

__all__ = ["SCORES", "ScoreFn", "ScoreTable", "loss_change", "reducible_loss"]

_NO_HEADER = np.zeros(0, dtype=np.float64)


def _to_numpy(value: Any, float64: bool) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu")
        return (value.to(torch.float64) if float64 else value).numpy()
    return np.asarray(value, dtype=np.float64 if float64 else None)


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


class ScoreTable:
    """Each dataset index's last per-sample training loss, when it was recorded, and by which
    update.

    Args:
        size: the number of dataset indices (``len(dataset)``); ids are ``0 .. size-1``.
        distributed: whether :meth:`update` all-gathers every rank's ids and losses; default:
            when a ``torch.distributed`` process group with more than one rank is initialised
            (checked on each call). Pass False to keep a table per rank.
        group: the process group to gather over (default: the world).

    Attributes:
        losses: each index's last recorded loss (NaN if never recorded).
        previous: each index's last finite loss recorded before its latest record (NaN until
            there is one).
        reference: each index's reference loss (NaN unless set by :meth:`set_reference`).
        scored_epoch, scored_update: the epoch and the update of the last record (-1 if none).
        epoch: the epoch that new losses are stamped with; the :class:`~smartsift.modes.reuse.
            ReuseSampler` sets it when it decides an epoch (-1 before).
        updates: how many :meth:`update` calls have been made (every rank counts alike).
        sync_seconds: seconds spent in the all-gathers, summed (read-only).
        collectives: how many collectives :meth:`update` and :meth:`set_reference` have run
            (read-only).
    """

    def __init__(self, size: int, distributed: bool | None = None, group: Any = None) -> None:
        check_int("size", size, 1, "the dataset's length")
        self.size = size
        self.distributed = distributed
        self.group = group
        self.epoch = -1
        self.updates = 0
        self.losses = np.full(size, np.nan, dtype=np.float64)
        self.previous = np.full(size, np.nan, dtype=np.float64)
        self.reference = np.full(size, np.nan, dtype=np.float64)
        self.scored_epoch = np.full(size, -1, dtype=np.int64)
        self.scored_update = np.full(size, -1, dtype=np.int64)
        # One message per call: no header, the ids and the losses as two rows; the first call
        # agrees on the row length (capacity 0 until then).
        self._messages = PaddedGather(group)

    # ------------------------------------------------------------ feeding
    def update(self, ids: Any, losses: Any) -> None:
        """Records the per-sample training losses of one step (call it after the forward pass).

        Args:
            ids: the batch's dataset indices (a tensor, array or list of ints), shape ``(B,)``;
                :class:`~smartsift.IndexedDataset` puts them in every batch.
            losses: the unweighted per-sample losses of the same samples, shape ``(B,)``
                (``reduction="none"``); detached here, any float dtype or device. A NaN or
                infinite loss is stored, and the sample counts as never scored.

        Raises:
            ValueError: if the shapes differ, an id is out of range, or ids are not integers.
        """
        ids_np, loss_np = self._check(ids, losses)
        if self._syncs():
            _, rows = self._messages.gather(_NO_HEADER, np.stack([ids_np, loss_np]))
            ids_np, loss_np = _joined(rows)
        before = self.losses[ids_np]
        self.previous[ids_np] = np.where(np.isfinite(before), before, self.previous[ids_np])
        self.losses[ids_np] = loss_np
        self.scored_epoch[ids_np] = self.epoch
        self.scored_update[ids_np] = self.updates
        self.updates += 1

    def set_reference(self, ids: Any, losses: Any) -> None:
        """Records a reference model's per-sample losses (RHO-LOSS's "irreducible" losses).

        The reference is a model trained on held-out data (never on these samples); its loss
        on a training sample estimates the part of the loss that training cannot remove (label
        noise, ambiguity). Indices left out keep their reference (NaN if never set), and
        ``score="reducible"`` passes them undecided. Call it again to replace values.

        Under DDP (a process group initialised and ``distributed`` not False) it is a
        collective, like :meth:`update`: call it on every rank, each with its share of the
        indices (e.g. its ``DistributedSampler`` shard) or each with all of them; every rank
        ends with the union of what the ranks passed. Two ``all_gather`` calls.

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
        if self._syncs():
            _, rows = self._messages.gather_once(_NO_HEADER, np.stack([ids_np, loss_np]))
            ids_np, loss_np = _joined(rows)
        self.reference[ids_np] = loss_np

    def _check(self, ids: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
        """Validated ``(ids as int64, values as float64)``."""
        ids_np = _to_numpy(ids, float64=False)
        loss_np = _to_numpy(values, float64=True)
        if ids_np.ndim != 1 or loss_np.shape != ids_np.shape:
            raise ValueError(
                f"Expected `ids` and `losses` to be 1-D and of the same length (one loss per "
                f"sample, reduction='none'), but got shapes {ids_np.shape} and {loss_np.shape}."
            )
        if ids_np.size and not np.issubdtype(ids_np.dtype, np.integer):
            raise ValueError(
                f"Expected `ids` to hold integer dataset indices, but got dtype {ids_np.dtype}."
            )
        ids_np = ids_np.astype(np.int64, copy=False)
        if ids_np.size and (ids_np.min() < 0 or ids_np.max() >= self.size):
            bad = ids_np[(ids_np < 0) | (ids_np >= self.size)][0]
            raise ValueError(
                f"Expected `ids` in [0, {self.size}) (the table's size), but got {int(bad)}; "
                "build the table with ScoreTable(len(dataset))."
            )
        return ids_np, loss_np

    def _syncs(self) -> bool:
        if self.distributed is False or not (dist.is_available() and dist.is_initialized()):
            return False
        return dist.get_world_size(self.group) > 1

    @property
    def sync_seconds(self) -> float:
        """Seconds spent in the all-gathers of :meth:`update` and :meth:`set_reference`."""
        return self._messages.seconds

    @property
    def collectives(self) -> int:
        """How many collectives :meth:`update` and :meth:`set_reference` have run."""
        return self._messages.collectives

    # ------------------------------------------------------------ reading
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

    # ------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, Any]:
        """The table as tensors and plain values (``torch.load(weights_only=True)`` loadable)."""
        return {
            "size": self.size,
            "epoch": self.epoch,
            "updates": self.updates,
            "losses": torch.from_numpy(self.losses.copy()),
            "scored_epoch": torch.from_numpy(self.scored_epoch.copy()),
            "scored_update": torch.from_numpy(self.scored_update.copy()),
            "previous": torch.from_numpy(self.previous.copy()),
            "reference": torch.from_numpy(self.reference.copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output (a state saved before ``previous`` and
        ``reference`` existed loads with both NaN).

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
        self.losses = state["losses"].numpy().astype(np.float64, copy=True)
        self.scored_epoch = state["scored_epoch"].numpy().astype(np.int64, copy=True)
        self.scored_update = state["scored_update"].numpy().astype(np.int64, copy=True)
        for name in ("previous", "reference"):
            saved = state.get(name)
            values = (
                np.full(self.size, np.nan, dtype=np.float64)
                if saved is None
                else saved.numpy().astype(np.float64, copy=True)
            )
            setattr(self, name, values)


def _joined(rows: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Every rank's gathered ``(ids, values)`` rows, joined in rank order."""
    ids = np.concatenate([r[0] for r in rows]).astype(np.int64)
    return ids, np.concatenate([r[1] for r in rows])


def _last_loss(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return table.losses[indices]


def _change(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return loss_change(table.losses[indices], table.previous[indices])


def _reducible(table: ScoreTable, indices: np.ndarray) -> np.ndarray:
    return reducible_loss(table.losses[indices], table.reference[indices])


ScoreFn = Callable[[ScoreTable, np.ndarray], np.ndarray]
"""``score(table, indices) -> np.ndarray``: one real score per index (higher: more worth
training); a non-finite score leaves the sample undecided (trained)."""

SCORES: dict[str, ScoreFn] = {"loss": _last_loss, "change": _change, "reducible": _reducible}
"""The scores a :class:`~smartsift.modes.reuse.ReuseSampler` accepts by name."""
