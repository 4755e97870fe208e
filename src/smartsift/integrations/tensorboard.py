"""Logging a sifting loader's stats to TensorBoard, or to any other logger.

:class:`~smartsift.SiftingDataLoader` calls ``log_fn(stats, step)`` every ``log_interval`` raw
batches, with its :class:`~smartsift.SiftStats` and the training steps taken so far (batches it
yielded). :func:`tensorboard_logger` makes such a ``log_fn`` for a
``torch.utils.tensorboard.SummaryWriter``; :func:`stats_scalars` is the pure function under it,
the stats (any with ``as_dict()``, :class:`LoggableStats`) as ``{prefix + name: value}`` with
NaN and infinite values left out, ready for any other logger. This module imports no
TensorBoard: the writer is yours.

Without ``log_fn`` the stats go through Python's ``smartsift`` logger at INFO level. Any callable
taking ``(stats, step)`` works as ``log_fn``, for example for Weights & Biases or MLflow::

    log_fn=lambda stats, step: wandb.log(stats_scalars(stats), step=step)
    log_fn=lambda stats, step: mlflow.log_metrics(stats_scalars(stats), step=step)

Under DDP each rank's loader logs its own stats; give a writer to rank 0 only (or log
``loader.global_stats()`` yourself, which is a collective every rank must call).

Example:
    >>> import os, tempfile, torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from torch.utils.tensorboard import SummaryWriter
    >>> import smartsift as ss
    >>> data = TensorDataset(torch.randn(64, 3), torch.randint(0, 2, (64,)))
    >>> def loss_fn(model, batch):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> log_dir = tempfile.mkdtemp()
    >>> writer = SummaryWriter(log_dir)
    >>> loader = ss.SiftingDataLoader(
    ...     DataLoader(data, batch_size=8), torch.nn.Linear(3, 2), loss_fn, policy=ss.TopK(0.5),
    ...     log_interval=2, log_fn=tensorboard_logger(writer), seed=0,
    ... )
    >>> batches = list(loader)
    >>> writer.close()
    >>> any(name.startswith("events.out.tfevents") for name in os.listdir(log_dir))
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from smartsift.engine.stats import SiftStats

__all__ = ["LoggableStats", "stats_scalars", "tensorboard_logger"]


class LoggableStats(Protocol):
    """Stats a logger can take: anything with ``as_dict()``, such as
    :class:`~smartsift.SiftStats` or :class:`~smartsift.ReuseEpochStats`."""

    def as_dict(self) -> Mapping[str, Any]:
        """The stats by name; the finite numbers among them are logged."""
        ...


def stats_scalars(stats: LoggableStats, prefix: str = "smartsift/") -> dict[str, float]:
    """``stats.as_dict()`` as finite numbers named ``prefix + name``; NaN and inf left out.

    Rates are NaN before there is anything to count (``recent_keep_rate`` before the first
    scored raw batch, loss quantiles before the history holds a loss): those are left out rather
    than drawn as gaps or zeros.

    Example:
        >>> values = stats_scalars(SiftStats(samples_seen=10, samples_kept=4), prefix="ss.")
        >>> values["ss.keep_rate"], "ss.recent_keep_rate" in values
        (0.4, False)
    """
    if not isinstance(prefix, str):
        raise TypeError(f"Expected `prefix` to be a str, but got {prefix!r}.")
    return {
        prefix + name: float(value)
        for name, value in stats.as_dict().items()
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    }


def tensorboard_logger(writer: Any, prefix: str = "smartsift/") -> Callable[[SiftStats, int], None]:
    """Returns a ``log_fn(stats, step)`` that writes the stats as scalars to ``writer``.

    Pass it to :class:`~smartsift.SiftingDataLoader` with ``log_interval``: every
    ``log_interval`` raw batches each stat becomes a scalar ``prefix + name``
    (``smartsift/keep_rate``, ``smartsift/samples_seen``, ``smartsift/loss_p50``, ...) at the
    loader's training step. The writer is not flushed: it flushes on its own schedule and on
    ``writer.close()``.

    Args:
        writer: a ``torch.utils.tensorboard.SummaryWriter``, or any object with its
            ``add_scalar(tag, value, global_step)`` method.
        prefix: put before every stat's name; the part up to the last ``/`` is the section
            TensorBoard groups the plots in.

    Raises:
        TypeError: if ``writer`` has no ``add_scalar`` method or ``prefix`` is not a str.

    Example:
        >>> class Recorder:
        ...     def __init__(self): self.rows = []
        ...     def add_scalar(self, tag, value, global_step): self.rows.append((tag, global_step))
        >>> rec = Recorder()
        >>> tensorboard_logger(rec)(SiftStats(samples_seen=8, samples_kept=4), 5)
        >>> ("smartsift/keep_rate", 5) in rec.rows
        True
    """
    if not callable(getattr(writer, "add_scalar", None)):
        raise TypeError(
            "Expected `writer` to be a torch.utils.tensorboard.SummaryWriter (an object with "
            f"add_scalar(tag, value, global_step)), but got {type(writer).__name__}; build one "
            "with SummaryWriter(log_dir)."
        )
    if not isinstance(prefix, str):
        raise TypeError(f"Expected `prefix` to be a str, but got {prefix!r}.")

    def log_fn(stats: SiftStats, step: int) -> None:
        for tag, value in stats_scalars(stats, prefix).items():
            writer.add_scalar(tag, value, global_step=step)

    return log_fn
