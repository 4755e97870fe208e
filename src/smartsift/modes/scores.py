"""Scores for loss reuse beyond the built-in names: callables ``score(table, indices)``.

:class:`~smartsift.ReuseSampler` takes ``score=`` as a name (``"loss"``, ``"change"``,
``"reducible"``) or as a callable of the table and the candidates' indices. This module holds
the callables the library ships:

- :class:`ClassNormalised`: each sample's last loss over the median last loss of its class
  among the epoch's candidates, so that a class the model finds hard as a whole is not kept
  wholesale while an easy class is skipped wholesale: within every class, the samples above
  their class's typical loss are the ones worth training.

Example:
    >>> import numpy as np, torch
    >>> from smartsift.modes.table import ScoreTable
    >>> table = ScoreTable(4)
    >>> table.update(torch.arange(4), torch.tensor([1.0, 3.0, 0.1, 0.3]))
    >>> score = ClassNormalised(labels=[0, 0, 1, 1])
    >>> score(table, np.arange(4)).round(2).tolist()
    [0.5, 1.5, 0.5, 1.5]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from smartsift.modes.table import ScoreTable

__all__ = ["ClassNormalised", "class_normalised"]


def class_normalised(losses: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each loss over the median of the finite losses of its label (NaN where that median is
    not positive or the loss is not finite).

    Example:
        >>> class_normalised(np.array([2.0, 4.0, 1.0]), np.array([0, 0, 1])).tolist()
        [0.6666666666666666, 1.3333333333333333, 1.0]
    """
    losses = np.asarray(losses, dtype=np.float64)
    out = np.full(losses.shape, np.nan)
    finite = np.isfinite(losses)
    for label in np.unique(labels[finite]):
        members = labels == label
        median = float(np.median(losses[members & finite]))
        if median > 0:
            out[members] = losses[members] / median
    out[~finite] = np.nan
    return out


class ClassNormalised:
    """``score=`` for :class:`~smartsift.ReuseSampler`: the last loss over its class's median.

    Args:
        labels: the class of every dataset index (a 1-D int tensor, array or sequence of
            ``len(dataset)`` entries).

    Raises:
        ValueError: if ``labels`` is not 1-D integers, or does not cover the table's indices
            when scored.

    Example:
        >>> import smartsift as ss
        >>> table = ss.ScoreTable(6)
        >>> sampler = ss.ReuseSampler(range(6), table, score=ClassNormalised([0, 1] * 3))
        >>> sampler.score.labels.tolist()
        [0, 1, 0, 1, 0, 1]
    """

    def __init__(self, labels: Any) -> None:
        if isinstance(labels, torch.Tensor):
            labels = labels.detach().cpu().numpy()
        array = np.asarray(labels)
        if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
            raise ValueError(
                "Expected `labels` to be a 1-D sequence of integer classes, one per dataset "
                f"index, but got an array of shape {array.shape} and dtype {array.dtype}. Pass "
                "e.g. torch.tensor([label for _, label in dataset])."
            )
        self.labels = array.astype(np.int64)

    def __call__(self, table: ScoreTable, indices: np.ndarray) -> np.ndarray:
        if self.labels.size < table.size:
            raise ValueError(
                f"`labels` has {self.labels.size} entries but the score table has {table.size} "
                "indices: give one label per dataset index."
            )
        return class_normalised(table.losses[indices], self.labels[indices])

    def __repr__(self) -> str:
        return f"ClassNormalised(labels of {self.labels.size} samples)"
