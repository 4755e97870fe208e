"""The hybrid mode: loss reuse decides what it can, the scoring pass decides the rest.

A :class:`~smartsift.ReuseSampler` decides each epoch from the losses the training steps
recorded, and trains undecided what it cannot judge: samples never scored, and those whose
loss went stale. Wrap the ``DataLoader`` over such a sampler in a
:class:`~smartsift.SiftingDataLoader` and the loader runs in hybrid mode: each raw batch's
samples that the sampler decided pass straight through, and only its undecided ones go through
the scoring pass and are sifted by the same policy. The pass's losses of the samples it sifts
are written to the sampler's table, so they are decided from the table next epoch. See
``docs/hybrid.md``.

This module holds the pieces: finding the sampler (:func:`find_reuse_sampler`), scoring the
undecided rows of a raw batch (:func:`score_rows`) and :class:`Hybrid`, the loader's link to
its sampler (which rows to score, what to record, the sampler's state in the loader's).

Example:
    >>> import numpy as np, torch
    >>> batch = (torch.tensor([0, 1, 2]), torch.tensor([1.0, 2.0, 3.0]))
    >>> undecided = np.array([False, True, True])
    >>> losses, scores = score_rows(
    ...     batch, batch, 3, undecided, np.array([0.5, np.nan, np.nan]),
    ...     score_fn=lambda part, n: part[1].double().numpy(),
    ... )
    >>> losses.tolist(), scores.tolist()
    ([0.5, 2.0, 3.0], [nan, 2.0, 3.0])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import BatchTransform, IdKey, per_sample_ints, select
from smartsift.engine.cursor import is_stateful
from smartsift.modes.reference import reducible_scores
from smartsift.modes.reuse import ReuseSampler

__all__ = ["Hybrid", "default_id_key", "find_reuse_sampler", "score_rows"]

INDEX_KEY = "index"


def find_reuse_sampler(dataloader: Any) -> ReuseSampler | None:
    """The :class:`~smartsift.ReuseSampler` a data loader draws from (its ``sampler``, or its
    batch sampler's), or None.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> import smartsift as ss
        >>> sampler = ss.ReuseSampler(range(8), ss.ScoreTable(8))
        >>> find_reuse_sampler(DataLoader(range(8), sampler=sampler)) is sampler
        True
        >>> find_reuse_sampler(DataLoader(range(8))) is None
        True
    """
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    for owner in (getattr(dataloader, "sampler", None), getattr(batch_sampler, "sampler", None)):
        if isinstance(owner, ReuseSampler):
            return owner
    return None


def default_id_key(batch: Any) -> IdKey:
    """Where :class:`~smartsift.IndexedDataset` puts the ids: key ``"index"`` of dict batches,
    position 0 of the others.

    Example:
        >>> default_id_key({"x": 1, "index": 2}), default_id_key((1, 2))
        ('index', 0)
    """
    return INDEX_KEY if isinstance(batch, Mapping) else 0


def score_rows(
    raw: Any,
    sliceable: Any,
    size: int,
    undecided: np.ndarray,
    known: np.ndarray,
    score_fn: Callable[[Any, int], np.ndarray],
    reference_fn: Callable[[Any, Any, int], np.ndarray] | None = None,
    transform: BatchTransform | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Scores the ``undecided`` rows of a raw batch alone; the others keep their ``known`` loss.

    Args:
        raw, sliceable: the raw batch and its sliceable form.
        size: its number of samples.
        undecided: which rows to score (boolean, ``size`` entries).
        known: the losses of the other rows (the table's; only their finiteness matters).
        score_fn: ``score_fn(part, n) -> losses`` of a batch in the raw form.
        reference_fn: ``reference_fn(part, part_sliceable, n)``: the reference losses, for a
            score of ``loss - reference``.
        transform: the transform between the raw and the sliceable form, if any.

    Returns:
        ``(losses, scores)``: the scored rows' losses and scores; the other rows' scores are
        NaN (they pass unsifted) and their losses are ``known`` (0 where not finite).
    """
    losses = np.where(np.isfinite(known), known, 0.0).astype(np.float64)
    scores = np.full(size, np.nan)
    rows = np.flatnonzero(undecided)
    if rows.size == 0:
        return losses, scores
    part_raw, part = raw, sliceable
    if rows.size < size:
        part = select(sliceable, torch.from_numpy(rows))
        part_raw = transform.reverse_transform(part) if transform is not None else part
    fresh = np.asarray(score_fn(part_raw, int(rows.size)), dtype=np.float64)
    losses[rows] = fresh
    if reference_fn is None:
        scores[rows] = fresh
    else:
        scores[rows] = reducible_scores(fresh, reference_fn(part_raw, part, int(rows.size)))
    return losses, scores


class Hybrid:
    """A sifting loader's link to the :class:`~smartsift.ReuseSampler` its loader draws from.

    Args:
        sampler: the sampler.
        dataloader: the wrapped loader (a stateful one is refused: see Raises).
        id_key: where batches hold the sample ids; None: :func:`default_id_key`.

    Raises:
        ValueError: if the sampler reweights (``rescale=True``), or the loader restores its
            own position (a ``StatefulDataLoader``), which the hybrid mode cannot resume.
    """

    def __init__(self, sampler: ReuseSampler, dataloader: Any, id_key: IdKey | None) -> None:
        if sampler.rescale:
            raise ValueError(
                "The wrapped loader's ReuseSampler has rescale=True, but the hybrid mode (a "
                "SiftingDataLoader around a loss-reuse loader) keeps its scored samples "
                "unweighted, so an epoch's weights would mix two rules. Build the sampler with "
                "rescale=False, or train loss reuse without the SiftingDataLoader."
            )
        if is_stateful(dataloader):
            raise ValueError(
                f"The hybrid mode wraps a loader over a ReuseSampler, but got a "
                f"{type(dataloader).__name__}, which restores its own position on resume; the "
                "hybrid mode resumes from the sampler's decision instead. Wrap a "
                "torch.utils.data.DataLoader over the sampler."
            )
        self.sampler = sampler
        self.id_key = id_key
        self._ids = np.empty(0, dtype=np.int64)
        self._undecided = np.empty(0, dtype=bool)

    def rows(self, sliceable: Any, size: int) -> tuple[np.ndarray, np.ndarray]:
        """Which rows of a raw batch to score, and the table's losses of the others."""
        key = default_id_key(sliceable) if self.id_key is None else self.id_key
        ids = per_sample_ints(sliceable, key, size, f"The hybrid mode's `id_key`={key!r}", "ids")
        self._ids, self._undecided = ids, self.sampler.undecided(ids)
        return self._undecided, self.sampler.table.losses[ids]

    def record_sifted(self, losses: np.ndarray, kept: np.ndarray) -> None:
        """Writes the pass's losses of the rows it scored and sifted (finite ones) to the table,
        so that the next epoch decides them from it; the kept ones are trained and recorded by
        the training step."""
        # A rank without a raw batch this round has all three empty (rows() was not called).
        rows = self._undecided & ~kept & np.isfinite(losses)
        # Called on every rank in every sifted round, empty or not: under DDP the table's
        # exchange follows the count of update() calls, which must agree across ranks.
        self.sampler.table.update(torch.from_numpy(self._ids[rows]), torch.from_numpy(losses[rows]))
        self._ids, self._undecided = self._ids[:0], self._undecided[:0]

    def state_dict(self, in_epoch: bool) -> dict[str, Any]:
        """The sampler's state as the loader resumes it: mid-epoch, at the epoch's start (the
        loader replays the raw batches it consumed); between epochs, marked complete."""
        state = self.sampler.state_dict()
        return {**state, "position": 0} if in_epoch else {**state, "complete": True}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output into the sampler."""
        self.sampler.load_state_dict(state)
