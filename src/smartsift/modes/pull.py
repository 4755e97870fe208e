"""Pulling one raw batch for a round: load, move, transform, inspect, check, score.

With a reference (``SiftingDataLoader(..., reference=...)``) the batch's scores are its losses
less the reference's (:func:`~smartsift.modes.reference.reducible_scores`); without one they
are the losses themselves.

Anything that can fail on one rank only happens here, before the round's exchange, and is
caught and annotated instead of raised, so that every rank learns of it in the exchange and
stops together (:func:`smartsift.engine.rounds.raise_errors`).

Example:
    >>> import numpy as np, torch
    >>> from smartsift.engine.batcher import RefinedBatcher
    >>> from smartsift.engine.cursor import EpochCursor
    >>> batches = iter([(torch.zeros(4, 2), torch.arange(4))])
    >>> got = pull(batches, EpochCursor(), RefinedBatcher(4), score_fn=lambda raw, n: np.ones(n))
    >>> got.size, got.losses.tolist(), got.error
    (4, [1.0, 1.0, 1.0, 1.0], None)
    >>> batches = iter([(torch.zeros(2, 2), torch.arange(2))])
    >>> got = pull(batches, EpochCursor(), RefinedBatcher(4), score_fn=lambda raw, n: np.ones(n),
    ...            reference_fn=lambda raw, sliceable, n: np.array([0.25, np.nan]))
    >>> got.losses.tolist(), got.scores.tolist()
    ([1.0, 1.0], [0.75, nan])
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import BatchTransform, inspect_batch, to_device
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.cursor import EpochCursor
from smartsift.engine.rounds import annotate
from smartsift.modes.hybrid import score_rows
from smartsift.modes.reference import reducible_scores

__all__ = ["Pulled", "pull"]


def _empty() -> np.ndarray:
    return np.empty(0, dtype=np.float64)


@dataclass
class Pulled:
    """What a rank pulled for a round.

    Attributes:
        raw: the raw batch (on ``device``), or None when the loader is exhausted or failed
            to load it (a batch that failed later is kept, and never used: the round raises).
        sliceable: its sliceable form (the transform's output).
        size: its number of samples (0 on failure).
        losses: its scored losses (empty when unscored).
        scores: what the policy ranks: ``losses`` less the reference's (NaN where that is
            unknown), or ``losses`` itself without a reference.
        side: the policy's per-sample inputs (ids, labels), or None.
        data_s: seconds spent waiting for it.
        error: what failed on this rank, annotated; None if nothing did.
    """

    raw: Any = None
    sliceable: Any = None
    size: int = 0
    losses: np.ndarray = field(default_factory=_empty)
    scores: np.ndarray = field(default_factory=_empty)
    side: np.ndarray | None = None
    data_s: float = 0.0
    error: BaseException | None = None


def pull(
    raw_iter: Iterator[Any] | None,
    cursor: EpochCursor,
    batcher: RefinedBatcher,
    score_fn: Callable[[Any, int], np.ndarray] | None = None,
    inputs_fn: Callable[[Any, int], np.ndarray | None] | None = None,
    device: torch.device | None = None,
    transform: BatchTransform | None = None,
    reference_fn: Callable[[Any, Any, int], np.ndarray] | None = None,
    rows_fn: Callable[[Any, int], tuple[np.ndarray, np.ndarray]] | None = None,
) -> Pulled:
    """Pulls the round's raw batch (none once ``cursor.exhausted``) and scores it.

    Args:
        raw_iter: the wrapped loader's iterator for the epoch.
        cursor: the epoch cursor (marked exhausted at the end; counts raw batches).
        batcher: checks the batch's layout against the first one's.
        score_fn: ``score_fn(raw, size) -> losses``; None passes the batch through unscored.
        inputs_fn: ``inputs_fn(sliceable, size)``, the policy's per-sample inputs.
        device: where the raw batch moves first.
        transform: a :class:`~smartsift.BatchTransform` to sliceable form.
        reference_fn: ``reference_fn(raw, sliceable, size) -> reference losses``, run after
            ``score_fn`` on scored batches; None scores by the losses alone.
        rows_fn: ``rows_fn(sliceable, size) -> (undecided, known)`` (the hybrid mode): only
            the ``undecided`` rows are scored; the others get NaN scores (they pass unsifted)
            and their ``known`` losses (:func:`~smartsift.modes.hybrid.score_rows`).
    """
    out = Pulled()
    if cursor.exhausted:
        return out
    t0 = time.perf_counter()
    try:
        out.raw = next(raw_iter)  # type: ignore[arg-type]
    except StopIteration:
        cursor.exhausted = True
    except Exception as err:  # reported to the other ranks before it is raised
        out.error = annotate(err, f"while loading raw batch {cursor.raw_in_epoch} of the epoch")
    out.data_s = time.perf_counter() - t0
    if out.raw is None:
        return out
    cursor.raw_in_epoch += 1
    try:
        raw = out.raw if device is None else to_device(out.raw, device, non_blocking=True)
        out.raw = raw
        out.sliceable = transform.transform(raw) if transform is not None else raw
        out.size, layout = inspect_batch(out.sliceable)
        if out.size > 0:
            batcher.check_layout(out.sliceable, layout)  # before the exchange
            if score_fn is not None and rows_fn is not None:
                undecided, known = rows_fn(out.sliceable, out.size)
                out.losses, out.scores = score_rows(
                    raw, out.sliceable, out.size, undecided, known, score_fn, reference_fn,
                    transform,
                )  # fmt: skip
            elif score_fn is not None:
                out.losses = out.scores = score_fn(raw, out.size)
                if reference_fn is not None:
                    ref = reference_fn(raw, out.sliceable, out.size)
                    out.scores = reducible_scores(out.losses, ref)
                if inputs_fn is not None:
                    out.side = inputs_fn(out.sliceable, out.size)
    except Exception as err:
        out.error = annotate(err, f"on raw batch {cursor.raw_in_epoch - 1} of the epoch")
        out.size, out.losses, out.scores, out.side = 0, _empty(), _empty(), None
    return out
