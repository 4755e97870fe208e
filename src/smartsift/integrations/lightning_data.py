"""Rebuilding a training ``DataLoader`` as Lightning would, for the sifted training loaders.

Lightning adds a ``DistributedSampler`` only to the ``DataLoader`` objects it is handed, so under
DDP the sifted loaders do it themselves: :func:`with_distributed_sampler` rebuilds a
``DataLoader`` with the sampler Lightning would add (:func:`lightning_sampler`:
``DistributedSampler(dataset, shuffle=True, seed=PL_GLOBAL_SEED or 0)``, this rank's shard),
keeping its other settings (:func:`loader_settings`, which loss reuse also uses to rebuild it
over the dataset with each sample's index). :func:`set_sampler_epoch` tells a loader's samplers
the epoch, as Lightning does for the loaders it sees. This module imports no Lightning.

Example:
    >>> import torch
    >>> data = torch.utils.data.TensorDataset(torch.arange(10))
    >>> shards = [with_distributed_sampler(DataLoader(data, batch_size=2), 2, r) for r in (0, 1)]
    >>> sorted(i for shard in shards for i in shard.sampler)  # every sample, on one rank each
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

__all__ = [
    "lightning_sampler",
    "loader_settings",
    "set_sampler_epoch",
    "with_distributed_sampler",
]

# DataLoader settings carried over when a loader is rebuilt (with a DistributedSampler, or over
# the dataset with its indices for loss reuse).
_DATALOADER_SETTINGS = (
    "batch_size",
    "num_workers",
    "collate_fn",
    "pin_memory",
    "drop_last",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "generator",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
)


def with_distributed_sampler(dataloader: Any, num_replicas: int, rank: int) -> Any:
    """``dataloader`` rebuilt with the ``DistributedSampler`` Lightning gives a training loader.

    The sampler shuffles (as Lightning's does for training) with seed ``PL_GLOBAL_SEED`` or 0;
    every other setting of the ``DataLoader`` is kept. Loaders Lightning would leave alone are
    returned as they are: those with a ``DistributedSampler`` already, over an
    ``IterableDataset``, or that are not ``DataLoader`` objects.

    Raises:
        TypeError: for a ``DataLoader`` subclass, a custom sampler or a custom batch sampler,
            which cannot be rebuilt faithfully from their settings.

    Example:
        >>> import torch
        >>> data = torch.utils.data.TensorDataset(torch.arange(10))
        >>> dl = with_distributed_sampler(DataLoader(data, batch_size=2), num_replicas=2, rank=1)
        >>> type(dl.sampler).__name__, len(dl.sampler), dl.batch_size
        ('DistributedSampler', 5, 2)
    """
    if not isinstance(dataloader, DataLoader):
        return dataloader
    if isinstance(dataloader.sampler, DistributedSampler) or isinstance(
        dataloader.dataset, IterableDataset
    ):
        return dataloader
    if (
        type(dataloader) is not DataLoader
        or dataloader.batch_size is None
        or not isinstance(dataloader.sampler, (RandomSampler, SequentialSampler))
    ):
        raise TypeError(
            "Expected a torch DataLoader with batch_size and a random or sequential sampler, "
            "which smartsift can rebuild with a DistributedSampler, but got "
            f"{type(dataloader).__name__} with {type(dataloader.sampler).__name__} and "
            f"batch_size={dataloader.batch_size}. Give it a DistributedSampler yourself "
            "(sampler=DistributedSampler(dataset)), or pass distributed_sampler=False if it "
            "already gives each rank its own shard."
        )
    sampler = lightning_sampler(dataloader.dataset, num_replicas, rank)
    return DataLoader(dataloader.dataset, sampler=sampler, **loader_settings(dataloader))


def lightning_sampler(dataset: Any, num_replicas: int, rank: int) -> DistributedSampler[int]:
    """The ``DistributedSampler`` Lightning gives a training loader.

    Example:
        >>> sampler = lightning_sampler(range(10), num_replicas=2, rank=1)
        >>> len(sampler), sampler.shuffle
        (5, True)
    """
    seed = int(os.environ.get("PL_GLOBAL_SEED", 0))
    return DistributedSampler(
        dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed
    )


def loader_settings(dataloader: DataLoader[Any], exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """The ``DataLoader``'s settings that a rebuild keeps (this torch's names only).

    Example:
        >>> loader_settings(DataLoader(range(4), batch_size=2))["batch_size"]
        2
    """
    accepted = inspect.signature(DataLoader).parameters
    return {
        name: getattr(dataloader, name)
        for name in _DATALOADER_SETTINGS
        if name in accepted and name not in exclude and hasattr(dataloader, name)
    }


def set_sampler_epoch(dataloader: Any, epoch: int) -> None:
    """Tells the loader's sampler(s) the epoch, as Lightning does for the loaders it sees.

    Example:
        >>> sampler = lightning_sampler(range(4), num_replicas=1, rank=0)
        >>> set_sampler_epoch(DataLoader(range(4), sampler=sampler), 2)
        >>> sampler.epoch
        2
    """
    samplers = {
        id(s): s
        for s in (
            getattr(dataloader, "sampler", None),
            getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
        )
        if s is not None
    }
    for sampler in samplers.values():
        set_epoch = getattr(sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
