"""``IndexedDataset``: every sample carries its dataset index, for loss reuse and the audit.

Example:
    >>> IndexedDataset([(10, "a")])[0]
    (0, 10, 'a')
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch.utils.data import Dataset

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset[Any]):
    """Wraps a map-style dataset so that every sample carries its index, for :class:`SiftAudit`.

    A tuple sample ``(x, y)`` becomes ``(index, x, y)`` (audit with ``id_key=0``); a dict sample
    gains the entry ``key`` (audit with ``id_key="index"``); any other sample ``s`` becomes
    ``(index, s)``. With ``default_collate`` the ids arrive as an int64 tensor per batch.

    Args:
        dataset: a map-style dataset (``__getitem__`` and ``__len__``).
        key: the key added to dict samples.

    Example:
        >>> data = IndexedDataset([(10, "a"), (11, "b")])
        >>> data[1], len(data)
        ((1, 11, 'b'), 2)
        >>> IndexedDataset([{"x": 5}])[0]
        {'x': 5, 'index': 0}
    """

    def __init__(self, dataset: Any, key: str = "index") -> None:
        self.dataset = dataset
        self.key = key

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        sample = self.dataset[index]
        if type(sample) is tuple:  # the common case first: it is on every sample's path
            return (index, *sample)
        if isinstance(sample, Mapping):
            if self.key in sample:
                raise ValueError(
                    f"IndexedDataset cannot add key {self.key!r}: the sample already has it; "
                    "pass another `key`."
                )
            return {**sample, self.key: index}
        return (index, sample)
