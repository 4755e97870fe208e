"""Audit mode: which samples each epoch trained on, and which it sifted out, with their losses.

A :class:`SiftAudit` given to :class:`~smartsift.SiftingDataLoader` (``audit=``) records, per
epoch, the ids of the samples the policy kept (with their losses), of those it sifted out (with
their losses), of those passed through unscored during ``sift_delay``, and of kept samples
dropped at an epoch end (``drop_last``, or an epoch the caller abandoned). Then
:meth:`SiftAudit.never_trained` answers "what did my model never train on?".

Sample ids come from the batch itself: ``id_key`` names the entry that holds them, a key of dict
batches (``batch["index"]``), a position of tuple batches (``batch[0]``) or, for nested batches,
a tuple of those (``("meta", "id")`` for ``batch["meta"]["id"]``). Wrapping a map-style
dataset in :class:`IndexedDataset` adds the dataset index to every sample, so the sampler's
indices become the ids.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> data = ss.IndexedDataset(TensorDataset(torch.randn(40, 3), torch.randint(0, 2, (40,))))
    >>> def loss_fn(model, batch):
    ...     _, x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> audit = ss.SiftAudit(id_key=0)
    >>> loader = ss.SiftingDataLoader(
    ...     DataLoader(data, batch_size=8), torch.nn.Linear(3, 2), loss_fn,
    ...     policy=ss.TopK(keep=0.5), audit=audit,
    ... )
    >>> trained = [i for ids, x, y in loader for i in ids.tolist()]
    >>> record = audit.epoch(0)
    >>> len(record.kept), len(record.sifted)
    (20, 20)
    >>> sorted(audit.never_trained().tolist()) == sorted(set(range(40)) - set(trained))
    True
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import IdKey, per_sample_ints

__all__ = ["EpochRecord", "IdKey", "SiftAudit"]

_INT = np.empty(0, dtype=np.int64)
_FLOAT = np.empty(0, dtype=np.float64)
_FIELDS = ("ids", "losses", "mask", "passed", "dropped")


@dataclass(frozen=True)
class EpochRecord:
    """What one epoch did with its samples, by sample id (arrays in arrival order).

    Attributes:
        epoch: the epoch number (``SiftingDataLoader``'s epoch counter).
        kept, kept_losses: ids the policy kept and their scored losses.
        sifted, sifted_losses: ids the policy sifted out (non-finite losses dropped under
            ``nonfinite="drop"`` included) and their losses.
        passed: ids passed through unscored during ``sift_delay``.
        dropped: ids kept (or passed) but dropped at the epoch end instead of trained on.
    """

    epoch: int
    kept: np.ndarray
    kept_losses: np.ndarray
    sifted: np.ndarray
    sifted_losses: np.ndarray
    passed: np.ndarray
    dropped: np.ndarray

    @property
    def seen(self) -> np.ndarray:
        """Every id the epoch pulled: kept, sifted and passed through."""
        return np.concatenate([self.kept, self.sifted, self.passed])

    @property
    def trained(self) -> np.ndarray:
        """Sorted unique ids kept or passed through and not dropped.

        While an epoch runs this includes kept samples still waiting in the buffer.
        """
        return _multiset_minus(np.concatenate([self.kept, self.passed]), self.dropped)


@dataclass
class _EpochLog:
    """One epoch's raw records: a list of arrays per field, joined when read."""

    ids: list[np.ndarray] = field(default_factory=list)  # scored samples
    losses: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    passed: list[np.ndarray] = field(default_factory=list)
    dropped: list[np.ndarray] = field(default_factory=list)

    def joined(self, name: str, empty: np.ndarray) -> np.ndarray:
        parts: list[np.ndarray] = getattr(self, name)
        if len(parts) != 1:
            value = np.concatenate(parts) if parts else empty
            parts[:] = [value]  # join once; later reads are free
        return parts[0]


class SiftAudit:
    """Records, per epoch, which sample ids were trained on and which were sifted out.

    Pass it to :class:`~smartsift.SiftingDataLoader` as ``audit=``. Recording costs one array
    per raw batch for ids, losses and the keep mask; arrays are joined only when read. Under DDP
    each rank audits the samples it pulled; :meth:`merge` combines the ranks' audits (gather them
    with ``torch.distributed.all_gather_object``).

    Args:
        id_key: where each batch holds its sample ids: a key of dict batches, a position of
            tuple/list batches, or a tuple of those for a nested entry (``("meta", "id")``).
            The entry must hold one integer id per sample (a tensor, array or list).
            :class:`IndexedDataset` adds dataset indices as ids. With a ``transform``, ids are
            looked up in the transformed (sliceable) batch.

    Example:
        >>> import numpy as np
        >>> audit = SiftAudit(id_key="idx")
        >>> batch = {"idx": [4, 5, 6]}
        >>> audit.record_scored(0, batch, np.array([0.1, 0.9, 0.5]), np.array([False, True, True]))
        >>> audit.epoch(0).sifted.tolist(), audit.epoch(0).sifted_losses.tolist()
        ([4], [0.1])
        >>> audit.never_trained().tolist(), audit.never_trained(ids=8).tolist()
        ([4], [0, 1, 2, 3, 4, 7])
    """

    def __init__(self, id_key: IdKey) -> None:
        path = id_key if isinstance(id_key, tuple) else (id_key,)
        if not path or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in path):
            raise TypeError(
                "Expected `id_key` to be a str (a key of dict batches), an int (a position in "
                f"tuple batches) or a non-empty tuple of those, but got {id_key!r}."
            )
        self.id_key = id_key
        self._path = path
        self._epochs: dict[int, _EpochLog] = {}

    # ------------------------------------------------------------ recording (by the loader)
    def ids_of(self, batch: Any, size: int) -> np.ndarray:
        """Returns the ``size`` sample ids held in ``batch[id_key]`` as an int64 array.

        Raises:
            ValueError: if the batch has no such entry or it does not hold one int per sample.
        """
        return per_sample_ints(
            batch, self._path, size, f"SiftAudit(id_key={self.id_key!r})", "integer sample ids"
        )

    def record_scored(self, epoch: int, batch: Any, losses: np.ndarray, mask: np.ndarray) -> None:
        """Records a scored raw batch: its ids, losses and keep mask (called by the loader)."""
        self.record_scored_ids(epoch, self.ids_of(batch, len(losses)), losses, mask)

    def record_scored_ids(
        self, epoch: int, ids: np.ndarray, losses: np.ndarray, mask: np.ndarray
    ) -> None:
        """Records decided samples by id, with their losses and keep mask.

        For callers that know the ids without a batch: loss reuse, through
        :meth:`~smartsift.engine.ledger.Ledger.scored_ids`.
        """
        log = self._log(epoch)
        log.ids.append(np.asarray(ids, dtype=np.int64).copy())
        log.losses.append(np.asarray(losses, dtype=np.float64))
        log.mask.append(np.asarray(mask, dtype=bool))

    def record_passed_ids(self, epoch: int, ids: np.ndarray) -> None:
        """Records samples passed through undecided, by id."""
        self._log(epoch).passed.append(np.asarray(ids, dtype=np.int64).copy())

    def record_dropped_ids(self, epoch: int, ids: np.ndarray) -> None:
        """Records samples kept (or passed) but dropped at the epoch end, by id."""
        self._log(epoch).dropped.append(np.asarray(ids, dtype=np.int64).copy())

    def record_passed(self, epoch: int, batch: Any, size: int) -> None:
        """Records a raw batch passed through unscored during ``sift_delay``."""
        self._log(epoch).passed.append(self.ids_of(batch, size))

    def record_dropped(self, epoch: int, batches: Iterable[tuple[Any, int]]) -> None:
        """Records kept samples dropped at an epoch end, as ``(batch, size)`` pairs."""
        log = self._log(epoch)
        log.dropped.extend(self.ids_of(batch, size) for batch, size in batches if size)

    def _log(self, epoch: int) -> _EpochLog:
        log = self._epochs.get(epoch)
        if log is None:
            log = self._epochs[epoch] = _EpochLog()
        return log

    # ------------------------------------------------------------ reading
    @property
    def epochs(self) -> list[int]:
        """The epochs with records, in ascending order."""
        return sorted(self._epochs)

    def epoch(self, epoch: int) -> EpochRecord:
        """Returns what ``epoch`` did with its samples.

        Raises:
            KeyError: if nothing was recorded for that epoch.
        """
        log = self._epochs.get(epoch)
        if log is None:
            raise KeyError(f"SiftAudit has no records for epoch {epoch}; it has {self.epochs}.")
        ids = log.joined("ids", _INT)
        losses = log.joined("losses", _FLOAT)
        mask = log.joined("mask", np.empty(0, dtype=bool))
        return EpochRecord(
            epoch=epoch,
            kept=ids[mask],
            kept_losses=losses[mask],
            sifted=ids[~mask],
            sifted_losses=losses[~mask],
            passed=log.joined("passed", _INT),
            dropped=log.joined("dropped", _INT),
        )

    def never_trained(self, ids: int | Iterable[int] | None = None) -> np.ndarray:
        """Returns the sorted ids that no recorded epoch trained on.

        Args:
            ids: the ids to consider: ``n`` for ``range(n)`` (e.g. ``len(dataset)``), or an
                iterable of ids; default: every id the loader pulled in any epoch. With ``ids``,
                samples that were never even pulled (an epoch cut short) count as untrained.
        """
        records = [self.epoch(e) for e in self.epochs]
        if ids is None:
            universe = np.unique(np.concatenate([_INT, *(r.seen for r in records)]))
        elif isinstance(ids, int):
            universe = np.arange(ids, dtype=np.int64)
        else:
            universe = np.unique(np.fromiter(ids, dtype=np.int64))
        trained = np.concatenate([_INT, *(r.trained for r in records)])
        return np.setdiff1d(universe, trained)

    # ------------------------------------------------------------ saving and combining
    def to_dict(self) -> dict[str, Any]:
        """Returns the records as plain lists and numbers (ready for ``json.dump``).

        Example:
            >>> SiftAudit(id_key=0).to_dict()
            {'id_key': 0, 'epochs': {}}
        """
        epochs = {}
        for e in self.epochs:
            r = self.epoch(e)
            epochs[e] = {
                "kept": r.kept.tolist(),
                "kept_losses": r.kept_losses.tolist(),
                "sifted": r.sifted.tolist(),
                "sifted_losses": r.sifted_losses.tolist(),
                "passed": r.passed.tolist(),
                "dropped": r.dropped.tolist(),
            }
        return {"id_key": self.id_key, "epochs": epochs}

    def state_dict(self) -> dict[str, Any]:
        """Returns the records as tensors and plain values (``weights_only`` loadable)."""
        epochs = []
        for e in self.epochs:
            log = self._epochs[e]
            epochs.append(
                {
                    "epoch": e,
                    "ids": torch.from_numpy(log.joined("ids", _INT)),
                    "losses": torch.from_numpy(log.joined("losses", _FLOAT)),
                    "mask": torch.from_numpy(log.joined("mask", np.empty(0, dtype=bool))),
                    "passed": torch.from_numpy(log.joined("passed", _INT)),
                    "dropped": torch.from_numpy(log.joined("dropped", _INT)),
                }
            )
        return {"id_key": self.id_key, "epochs": epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Replaces the records with those of :meth:`state_dict`.

        Raises:
            ValueError: if the state was recorded with another ``id_key``.
        """
        if state["id_key"] != self.id_key:
            raise ValueError(
                f"The audit state was recorded with id_key={state['id_key']!r} but this audit "
                f"uses id_key={self.id_key!r}."
            )
        epochs: dict[int, _EpochLog] = {}
        for rec in state["epochs"]:
            epochs[int(rec["epoch"])] = _EpochLog(
                **{name: [rec[name].numpy().copy()] for name in _FIELDS}
            )
        self._epochs = epochs

    @classmethod
    def merge(cls, audits: Sequence[SiftAudit]) -> SiftAudit:
        """Returns one audit holding the records of several, e.g. of every DDP rank.

        Example:
            >>> a, b = SiftAudit(id_key=0), SiftAudit(id_key=0)
            >>> a.record_passed(0, ([1, 2],), 2); b.record_passed(0, ([3],), 1)
            >>> SiftAudit.merge([a, b]).epoch(0).passed.tolist()
            [1, 2, 3]
        """
        if not audits:
            raise ValueError("SiftAudit.merge needs at least one audit.")
        keys = {a.id_key for a in audits}
        if len(keys) > 1:
            raise ValueError(
                f"Cannot merge audits with different id_keys: {sorted(map(str, keys))}."
            )
        out = cls(audits[0].id_key)
        for audit in audits:
            for e, log in audit._epochs.items():
                mine = out._log(e)
                for name in _FIELDS:
                    getattr(mine, name).extend(getattr(log, name))
        return out


def _multiset_minus(items: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """Sorted unique values of ``items`` that occur more often in ``items`` than in ``removed``."""
    values, counts = np.unique(items, return_counts=True)
    if removed.size and values.size:
        gone, gone_counts = np.unique(removed, return_counts=True)
        pos = np.minimum(np.searchsorted(gone, values), gone.size - 1)
        counts = counts - np.where(gone[pos] == values, gone_counts[pos], 0)
    return values[counts > 0]
