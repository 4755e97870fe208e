"""A reference model's losses for the scoring pass: selecting by the reducible loss (RHO-LOSS).

With ``SiftingDataLoader(..., reference=...)`` the policy ranks every sample by its *score*,
``loss - reference``: the loss the model still has on it beyond what a small reference model,
trained on held-out data, has (Mindermann et al., ICML 2022). A sample the reference also gets
wrong (a flipped label, an ambiguous input) has a high loss but a low score, so it is no longer
chased. The reference comes in two forms (:class:`Reference`):

- a callable ``reference(batch) -> Tensor (B,)``, run on the same raw batch under
  ``torch.no_grad()`` (:func:`~smartsift.modes.scoring.score_reference`);
- a 1-D tensor or array of reference losses indexed by sample id, looked up with the ids the
  batch holds at the loader's ``id_key`` (:func:`lookup_reference`).

A non-finite reference value (NaN: an id the reference never saw) leaves the sample without a
score: it passes unsifted (:func:`unreferenced`, :func:`reducible_step`), trained and counted
as passed, never entering the history. Each rank computes its own scores before the round's
exchange, and the losses travel beside them (:func:`attach_losses`), so every rank knows every
rank's unreferenced samples.

Example:
    >>> import numpy as np
    >>> losses = np.array([2.0, 2.0, 0.1, 1.0])
    >>> reference = np.array([1.9, 0.2, 0.0, np.nan])
    >>> reducible_scores(losses, reference).round(6).tolist()
    [0.1, 1.8, 0.1, nan]
    >>> unreferenced(losses, reducible_scores(losses, reference)).tolist()
    [False, False, False, True]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import IdKey, per_sample_ints
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.selector import Decision, Selector
from smartsift.engine.step import push_kept, sift_step
from smartsift.modes.scoring import score_reference

__all__ = [
    "Reference",
    "ReferenceLike",
    "attach_losses",
    "check_id_key",
    "lookup_reference",
    "reducible_scores",
    "reducible_step",
    "unreferenced",
]

ReferenceLike = Callable[[Any], torch.Tensor] | torch.Tensor | np.ndarray
"""What ``SiftingDataLoader(reference=...)`` takes: ``reference(batch) -> Tensor (B,)``, or a
1-D tensor/array of reference losses indexed by sample id."""


def reducible_scores(losses: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """The policy's scores: ``losses - reference``, NaN where the reference is not finite.

    Example:
        >>> reducible_scores(np.array([1.0, 1.0]), np.array([0.25, np.inf])).tolist()
        [0.75, nan]
    """
    ref = np.asarray(reference, dtype=np.float64)
    scores = np.asarray(losses, dtype=np.float64) - ref
    scores[~np.isfinite(ref)] = np.nan
    return scores


def unreferenced(losses: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """Where a finite loss has no score: the samples whose reference is unknown.

    A non-finite loss is not counted here: it stays under the loader's ``nonfinite`` setting.

    Example:
        >>> unreferenced(np.array([1.0, np.nan, 1.0]), np.array([np.nan, np.nan, 0.5])).tolist()
        [True, False, False]
    """
    return np.isfinite(losses) & ~np.isfinite(scores)


def lookup_reference(table: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """The reference losses of the samples ``ids`` in ``table`` (indexed by sample id).

    Raises:
        ValueError: naming the ids that lie outside ``[0, len(table))`` and the fix.

    Example:
        >>> lookup_reference(np.array([0.5, np.nan, 2.0]), np.array([2, 0, 1])).tolist()
        [2.0, 0.5, nan]
    """
    bad = (ids < 0) | (ids >= table.size)
    if bad.any():
        shown = ids[bad][:5].tolist()
        raise ValueError(
            f"The `reference` holds losses for sample ids 0 to {table.size - 1}, but the batch "
            f"holds the id(s) {shown}{' ...' if bad.sum() > 5 else ''}. Pass a reference with "
            "one loss per sample id of the dataset (NaN where unknown), or point `id_key` at the "
            "entry that holds the dataset indices."
        )
    return table[ids]


def attach_losses(side: np.ndarray | None, losses: np.ndarray) -> np.ndarray:
    """The round's per-sample side rows with the losses appended as the last row, so that
    they travel to every rank beside the scores (strip them with ``channels[:-1]``).

    Example:
        >>> attach_losses(None, np.array([1.0, 2.0])).tolist()
        [[1.0, 2.0]]
        >>> attach_losses(np.array([[7.0, 8.0]]), np.array([1.0, 2.0])).tolist()
        [[7.0, 8.0], [1.0, 2.0]]
    """
    row = np.asarray(losses, dtype=np.float64).reshape(1, -1)
    return row if side is None else np.concatenate([np.asarray(side, np.float64), row])


def reducible_step(
    selector: Selector,
    batcher: RefinedBatcher,
    sliceable: Any,
    size: int,
    scores: Sequence[np.ndarray],
    losses: Sequence[np.ndarray],
    rank: int = 0,
    inputs: Sequence[np.ndarray] | None = None,
) -> tuple[Decision, list[np.ndarray]]:
    """The sift step on scores, with the unreferenced samples passed unsifted.

    Runs :func:`~smartsift.engine.step.sift_step` when every finite loss has a score. Otherwise
    the selector decides on the scored samples alone (the others never enter the history nor
    a stated keep rate's count) and the unreferenced ones are kept.

    Args:
        selector, batcher, sliceable, size, rank, inputs: as for ``sift_step``.
        scores: every rank's scores (``loss - reference``), in rank order.
        losses: every rank's losses, in rank order.

    Returns:
        The decision (masks and kept counts over all the samples; ``nonfinite`` counts the
        non-finite losses among the decided ones) and every rank's unreferenced mask.

    Example:
        >>> import smartsift as ss
        >>> batcher = RefinedBatcher(8)
        >>> batch = (torch.arange(5.0),)
        >>> scores = [np.array([0.1, np.nan, 0.9, 0.2, 0.5])]
        >>> decision, unknown = reducible_step(
        ...     Selector(ss.TopK(0.5)), batcher, batch, 5, scores, [np.ones(5)]
        ... )
        >>> decision.masks[0].astype(int).tolist(), decision.kept, unknown[0].astype(int).tolist()
        ([0, 1, 1, 0, 1], [3], [0, 1, 0, 0, 0])
    """
    unknown = [unreferenced(x, s) for x, s in zip(losses, scores, strict=True)]
    if not any(u.any() for u in unknown):
        return sift_step(selector, batcher, sliceable, size, scores, rank, inputs), unknown
    known = [~u for u in unknown]
    ids = labels = None
    if inputs is not None:
        rows = [np.asarray(r)[:, k] for r, k in zip(inputs, known, strict=True)]
        ids, labels = selector.split_inputs(rows)
    sub = selector.decide(
        [s[k] for s, k in zip(scores, known, strict=True)], ids=ids, labels=labels
    )
    masks = []
    for u, k, mask in zip(unknown, known, sub.masks, strict=True):
        full = u.copy()
        full[k] = mask
        masks.append(full)
    if size > 0:
        push_kept(batcher, sliceable, size, masks[rank])
    kept = [int(np.count_nonzero(m)) for m in masks]
    return Decision(masks, kept, sub.nonfinite), unknown


class Reference:
    """The loader's reference losses: a function of the raw batch, or a table by sample id.

    Args:
        reference: ``reference(batch) -> Tensor (B,)``, run under ``torch.no_grad()`` on each
            raw batch; or a 1-D floating-point tensor or array of reference losses indexed by
            sample id (NaN where unknown).
        id_key: where each batch holds its sample ids (as :class:`~smartsift.SiftAudit`'s
            ``id_key``); needed by a tensor or array reference.

    Raises:
        TypeError: for a reference of another type.
        ValueError: for a tensor or array that is not 1-D, not floating-point or holds no
            finite value, or that comes without ``id_key``.

    Example:
        >>> table = Reference(torch.tensor([0.5, 1.0, 2.0]), id_key=0)
        >>> batch = (torch.tensor([2, 0]), torch.zeros(2, 3))
        >>> table.values(batch, batch, 2).tolist()
        [2.0, 0.5]
    """

    def __init__(self, reference: ReferenceLike, id_key: IdKey | None = None) -> None:
        self.fn: Callable[[Any], torch.Tensor] | None = None
        self.table: np.ndarray | None = None
        self.id_key = check_id_key(id_key)
        if isinstance(reference, (torch.Tensor, np.ndarray)):
            self.table = _checked_table(reference, id_key)
        elif callable(reference):
            self.fn = reference
        else:
            raise TypeError(
                "Expected `reference` to be a callable reference(batch) -> Tensor of shape (B,), "
                "or a 1-D tensor or array of reference losses indexed by sample id, but got "
                f"{type(reference).__name__}. E.g. reference=lambda batch: loss_fn(small_model, "
                "batch), or reference=losses_by_id with id_key=..."
            )

    def values(
        self, raw: Any, sliceable: Any, size: int, autocast_dtype: torch.dtype | None = None
    ) -> np.ndarray:
        """The reference losses of a raw batch of ``size`` samples, float64 (NaN: unknown).

        The callable gets the raw batch; the ids are read from the sliceable form, as the
        audit reads them.
        """
        if self.fn is not None:
            return score_reference(self.fn, raw, size, autocast_dtype=autocast_dtype).numpy()
        assert self.table is not None and self.id_key is not None  # set together in __init__
        name = f"`id_key`={self.id_key!r} (for the tensor `reference`)"
        ids = per_sample_ints(sliceable, self.id_key, size, name, "integer sample ids")
        return lookup_reference(self.table, ids)


def check_id_key(id_key: Any) -> IdKey | None:
    """Returns ``id_key`` if it is None, a str, an int or a non-empty tuple of those.

    Example:
        >>> check_id_key(("meta", "id"))
        ('meta', 'id')
        >>> check_id_key(1.5)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Expected `id_key` to be a str (a key of dict batches), ... but got 1.5.
    """
    if id_key is None:
        return None
    path = id_key if isinstance(id_key, tuple) else (id_key,)
    if not path or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in path):
        raise TypeError(
            "Expected `id_key` to be a str (a key of dict batches), an int (a position in tuple "
            f"batches), a non-empty tuple of those or None, but got {id_key!r}."
        )
    return id_key


def _checked_table(reference: torch.Tensor | np.ndarray, id_key: IdKey | None) -> np.ndarray:
    """A tensor or array reference as a float64 array, if it can serve as one."""
    kind = type(reference).__name__
    if id_key is None:
        raise ValueError(
            f"A {kind} `reference` is indexed by sample id, but `id_key` is None. Pass "
            "id_key=... naming where each batch holds its sample ids (e.g. id_key=0 with "
            "smartsift.IndexedDataset), or pass a callable reference(batch)."
        )
    if isinstance(reference, torch.Tensor):
        floating = reference.is_floating_point()
        table = reference.detach().to("cpu", torch.float64).numpy()
    else:
        floating = np.issubdtype(reference.dtype, np.floating)
        table = reference.astype(np.float64) if floating else reference
    if table.ndim != 1:
        raise ValueError(
            f"Expected `reference` to be a 1-D {kind} with one loss per sample id, but got "
            f"shape {tuple(table.shape)}. Flatten it, or pass a callable reference(batch)."
        )
    if not floating:
        raise ValueError(
            f"Expected `reference` to hold floating-point losses, but got dtype "
            f"{reference.dtype}. Pass the reference model's per-sample losses as floats."
        )
    if not np.isfinite(table).any():
        raise ValueError(
            f"`reference` holds no finite loss (all {table.size} are NaN or infinite), so no "
            "sample could be scored. Fill it with the reference model's loss of every sample."
        )
    return np.ascontiguousarray(table)
