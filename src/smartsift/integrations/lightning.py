"""PyTorch Lightning integration: a LightningModule trains on sifted batches of its own data.

Two pieces, one for the data and one for the hooks::

    class Model(L.LightningModule):
        def per_sample_loss(self, batch):            # one loss per sample, shape (B,)
            x, y = batch
            return F.cross_entropy(self(x), y, reduction="none")

        def training_step(self, batch, batch_idx):
            return self.per_sample_loss(batch).mean()

        def train_dataloader(self):
            return sift_dataloader(self, DataLoader(data, batch_size=64, shuffle=True),
                                   ss.RelativeProbabilistic(beta=1.0))

    trainer = L.Trainer(max_epochs=5, callbacks=[SiftingCallback()])

:func:`sift_dataloader` wraps the training ``DataLoader`` in a
:class:`~smartsift.SiftingDataLoader` that scores each raw batch with the module's
``per_sample_loss(batch) -> Tensor (B,)`` (or a ``loss_fn(module, batch)`` you pass); the kept
samples form the refined batches ``training_step`` gets. :class:`SiftingCallback` logs the stats
through the module's logger and keeps step-interval learning-rate schedules in step with the
data.

Why the loader is wrapped where it is made, and not swapped by a callback:
    Lightning asks for the training loader, gives a ``DataLoader`` a ``DistributedSampler`` (by
    re-instantiating it), sizes the epoch from its ``len()`` and starts the epoch's iterator in
    one step (``FitLoop.setup_data``), before any callback hook runs. A callback could swap the
    loader afterwards only through private attributes (``fit_loop._combined_loader``, the data
    fetcher, ``max_batches``), and Lightning would still end epochs, run validation and step
    epoch-interval schedules by the plain loader's length, which a sifted epoch never reaches:
    validation would silently stop. Returned from ``train_dataloader()``, the documented hook,
    the sifted loader is an iterable like any other and nothing of Lightning is replaced. The
    callback does only what needs a hook after the optimizer step: ``self.log`` and the schedule.
    The sifted loader warns when the callback is missing.

Epochs:
    The sifted loader has no ``len()`` (a sifted epoch is as long as its data turns out to be),
    so Lightning treats it as it treats an ``IterableDataset``: it pre-fetches one batch to see
    the end of an epoch coming. An epoch ends when its data ends; validation
    (``val_check_interval`` 1.0 or an int) runs at every epoch's end; epoch-interval schedules
    step once per epoch; ``trainer.global_step`` counts sifted optimizer steps. The progress bar
    shows no total, ``trainer.num_training_batches`` is ``inf`` and
    ``trainer.estimated_stepping_batches`` is ``max_steps`` (-1 when unset): size schedules
    with :func:`plain_steps_per_epoch`. Lightning refuses a fractional ``val_check_interval``
    or ``limit_train_batches`` for loaders without a length. Because of the pre-fetch, the
    next refined batch is scored before the current one trains (with weights one step older)
    and the stats count it as handed out. When Lightning starts an epoch a second time before
    training on any of it (it does right after reloading a loader), the second start continues
    the first instead of abandoning its batches.

Distributed training (``strategy="ddp"``):
    Lightning adds a ``DistributedSampler`` only to the ``DataLoader`` objects it is handed, so
    :func:`sift_dataloader` does it itself when the trainer runs several processes: the
    ``DataLoader`` is rebuilt with the sampler Lightning would add
    (``DistributedSampler(dataset, shuffle=True, seed=PL_GLOBAL_SEED or 0)``, this rank's
    shard). A loader that already has a ``DistributedSampler``, reads an ``IterableDataset`` or
    is not a ``DataLoader`` is used as it is (shard it yourself); ``distributed_sampler=False``
    turns this off. The module scores its shard itself (not through the DDP wrapper, so no
    collective runs in scoring) and the ranks sift in lockstep, so every rank takes the same
    number of optimizer steps. DDP only: FSDP and DeepSpeed shard the model that scoring needs.

Learning-rate schedules:
    Epoch-interval schedules step once per epoch, as in plain training. Lightning steps a
    step-interval schedule once per optimizer step, and a sifted epoch takes fewer, so a
    schedule sized for plain training would stop part-way. :class:`SiftingCallback` tops it up
    after every step to the plain steps the data trained so far is worth, in raw batches of the
    wrapped loader per rank (the unit and the arithmetic of :class:`~smartsift.DataSchedule`:
    :func:`~smartsift.modes.schedules.plain_steps`,
    :func:`~smartsift.modes.schedules.catch_up_steps`), so it ends where training ends. Size it
    as for plain training: ``max_epochs * plain_steps_per_epoch(len(data), batch_size,
    world_size)``.
    ``DataSchedule`` itself is not used because Lightning takes only torch schedulers (unless
    ``lr_scheduler_step`` is overridden) and already steps them once per step: the callback adds
    the difference. This is done in epoch-based runs (``max_steps`` unset) with
    ``accumulate_grad_batches=1``, for ``LRScheduler`` s with ``interval="step"`` and
    ``frequency=1`` and, for those that know their end (``OneCycleLR``), sized for the whole
    run; other schedules follow optimizer steps, with a warning.

Logs:
    Every ``log_every_n_steps`` (the Trainer's) optimizer steps the callback logs the stats
    with ``pl_module.log_dict`` as ``smartsift/<name>`` (``smartsift/keep_rate``,
    ``smartsift/samples_seen``, ``smartsift/samples_trained``, ...; NaN values left out), so they
    reach every logger and ``trainer.callback_metrics``. Under DDP they are summed over the ranks.

Limits:
    The sifting loader's state is not in Lightning's checkpoints: a resumed run starts a new one
    (its history empty, ``sift_delay`` again) and runs the interrupted epoch from its start. With
    ``reload_dataloaders_every_n_epochs`` every reload starts a new sifting loader too. One
    training loader. Scoring runs outside Lightning's precision context (pass
    ``autocast_dtype`` for a cheaper pass) and before ``on_before_batch_transfer`` and
    ``on_after_batch_transfer``: ``per_sample_loss`` gets the batch as the ``DataLoader``
    yields it, moved by the module's ``transfer_batch_to_device``.

Example:
    >>> import lightning.pytorch as L
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> from smartsift.integrations.lightning import SiftingCallback, sift_dataloader
    >>> class Model(L.LightningModule):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 2)
    ...     def per_sample_loss(self, batch):
    ...         x, y = batch
    ...         return F.cross_entropy(self.net(x), y, reduction="none")
    ...     def training_step(self, batch, batch_idx):
    ...         return self.per_sample_loss(batch).mean()
    ...     def train_dataloader(self):
    ...         data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    ...         return sift_dataloader(self, DataLoader(data, batch_size=16), ss.TopK(0.5), seed=0)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> trainer = L.Trainer(max_epochs=2, callbacks=[SiftingCallback()], logger=False,
    ...                     accelerator="cpu", enable_progress_bar=False,
    ...                     enable_model_summary=False, enable_checkpointing=False)
    >>> trainer.fit(Model())
    >>> stats = trainer.train_dataloader.stats
    >>> stats.samples_seen, stats.samples_trained, trainer.global_step
    (128, 64, 4)
"""

from __future__ import annotations

import inspect
import os
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import (
    DataLoader,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
)

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

from smartsift.integrations.adapter import LazySifter, check_loader_kwargs, check_settings
from smartsift.integrations.tensorboard import stats_scalars
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.schedules import (
    catch_up_steps,
    infer_samples_per_epoch,
    plain_steps,
    plain_steps_per_epoch,
    steps_left,
)
from smartsift.modes.scoring import LossFn
from smartsift.policies import Policy

__all__ = [
    "LOSS_METHOD",
    "SiftedTrainLoader",
    "SiftingCallback",
    "module_loss",
    "plain_steps_per_epoch",
    "sift_dataloader",
    "with_distributed_sampler",
]

LOSS_METHOD = "per_sample_loss"
"""The LightningModule method that scores a batch when no ``loss_fn`` is given."""

# DataLoader settings carried over when the loader is rebuilt with a DistributedSampler.
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


def sift_dataloader(
    module: pl.LightningModule,
    dataloader: Any,
    policy: Policy | None = None,
    loss_fn: LossFn | None = None,
    *,
    sift_delay: int = 0,
    seed: int | None = None,
    distributed_sampler: bool = True,
    **loader_kwargs: Any,
) -> SiftedTrainLoader:
    """Wraps ``module``'s training loader so that it yields sifted batches; return it from
    ``train_dataloader()`` (or pass it to ``trainer.fit(train_dataloaders=...)``).

    See the module documentation for epochs, DDP, schedules and logs.

    Args:
        module: the LightningModule being trained; it scores the batches.
        dataloader: the training loader, typically a ``torch.utils.data.DataLoader``.
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``.
        loss_fn: ``loss_fn(module, batch) -> Tensor (B,)``; by default the module's
            ``per_sample_loss(batch)``, called with the batch on the module's device.
        sift_delay: raw batches (per rank) trained unsifted before sifting starts.
        seed: seed of the loader's generator; default ``PL_GLOBAL_SEED`` (set by
            ``seed_everything``) if set, else a random one.
        distributed_sampler: under DDP, give a ``DataLoader`` without one the
            ``DistributedSampler`` Lightning would give it.
        **loader_kwargs: further :class:`~smartsift.SiftingDataLoader` arguments, e.g.
            ``batch_size``, ``drop_last``, ``padding``, ``autocast_dtype``, ``audit``.

    Returns:
        A :class:`SiftedTrainLoader`, an iterable of refined batches without a length.

    Raises:
        TypeError: if ``module`` is not a LightningModule, has no ``per_sample_loss`` and no
            ``loss_fn`` is given, or an argument does not fit the loader.
        ValueError: if a setting is invalid.
    """
    if not isinstance(module, pl.LightningModule):
        raise TypeError(
            f"Expected `module` to be a LightningModule, but got {type(module).__name__}."
        )
    if loss_fn is None:
        if not callable(getattr(module, LOSS_METHOD, None)):
            raise TypeError(
                f"Expected {type(module).__name__} to define `{LOSS_METHOD}(batch)` returning one "
                "loss per sample (shape (B,), e.g. F.cross_entropy(..., reduction='none')), or "
                "a `loss_fn(module, batch)` to be passed, but it has neither."
            )
        loss_fn = module_loss
    kwargs = check_loader_kwargs(loader_kwargs, caller="sift_dataloader")
    kwargs["sift_delay"] = sift_delay
    if seed is None and "PL_GLOBAL_SEED" in os.environ:
        seed = int(os.environ["PL_GLOBAL_SEED"])
    kwargs["seed"] = seed
    check_settings(module, loss_fn, policy, kwargs)  # here, not in fit()
    return SiftedTrainLoader(module, dataloader, policy, loss_fn, kwargs, distributed_sampler)


def module_loss(module: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The default ``loss_fn``: ``module.per_sample_loss`` of the batch on the module's device.

    The batch is moved by the module's ``transfer_batch_to_device`` hook, so custom batch types
    move as they do for ``training_step``.

    Example:
        >>> class Module(pl.LightningModule):
        ...     def per_sample_loss(self, batch):
        ...         return batch.sum(dim=1)
        >>> module_loss(Module(), torch.ones(3, 2))
        tensor([2., 2., 2.])
    """
    device = getattr(module, "device", None)
    transfer = getattr(module, "transfer_batch_to_device", None)
    if device is not None and callable(transfer):
        batch = transfer(batch, device, 0)
    losses: torch.Tensor = getattr(module, LOSS_METHOD)(batch)
    return losses


class SiftedTrainLoader(LazySifter):
    """The sifted training loader Lightning iterates; built by :func:`sift_dataloader`.

    It has no ``len()``: Lightning then ends each epoch when the sifted data ends. The
    :class:`~smartsift.SiftingDataLoader` is built when Lightning first iterates it (the trainer,
    and under DDP the process group, exist by then).

    Attributes:
        module: the LightningModule that scores the batches.
        dataloader: the loader given to :func:`sift_dataloader`.
        raw: the loader iterated (``dataloader``, or its rebuild with a ``DistributedSampler``),
            or None before the first epoch.
        loader: the :class:`~smartsift.SiftingDataLoader` over ``raw``, or None before.
    """

    def __init__(
        self,
        module: pl.LightningModule,
        dataloader: Any,
        policy: Policy | None,
        loss_fn: LossFn,
        loader_kwargs: dict[str, Any],
        distributed_sampler: bool,
    ) -> None:
        super().__init__(loss_fn, policy, loader_kwargs)
        self.module = module
        self.dataloader = dataloader
        self.distributed_sampler = bool(distributed_sampler)
        # Data consumed up to each refined batch handed out and not yet trained on (read by
        # SiftingCallback after each step, oldest first).
        self._consumed: deque[int] = deque()
        self._record = False
        self._run: _EpochRun | None = None

    @property
    def samples_per_epoch(self) -> int | None:
        """Samples one epoch of ``raw`` holds on this rank (None if unknown or not built)."""
        if isinstance(getattr(self.raw, "dataset", None), IterableDataset):
            return None  # sharded by the user, if at all: its length need not be this rank's
        return infer_samples_per_epoch(self.raw)

    @property
    def steps_per_epoch(self) -> int | None:
        """Plain-training steps (raw batches) one epoch is worth on this rank, or None."""
        n, bs = self.samples_per_epoch, getattr(self.raw, "batch_size", None)
        return plain_steps_per_epoch(n, bs) if n and isinstance(bs, int) else None

    def plain_steps(self, samples: int) -> int:
        """The plain-training steps ``samples`` samples (since this loader's start) are worth."""
        bs = getattr(self.raw, "batch_size", None)
        if not isinstance(bs, int) or bs < 1:
            bs = self.loader.batch_size if self.loader is not None else None
        return plain_steps(samples, bs, self.samples_per_epoch) if bs else 0

    def __iter__(self) -> Iterator[Any]:
        # A generator: Lightning calls iter() once only to check that it can, and nothing may
        # start (or be built) before the first batch is asked for.
        return self._epoch()

    def _epoch(self) -> Iterator[Any]:
        trainer = _trainer_of(self.module)
        loader = self._build(trainer)
        key = (trainer.current_epoch, trainer.global_step)
        run = self._run
        if run is not None and not run.done and run.key == key:
            # Lightning started this epoch again before training on any of it (it does right
            # after reloading a loader): continue it, handing out again what it handed out.
            replay = list(run.handed)
        else:
            if run is not None:
                _close(run.batches)  # an epoch Lightning left early is abandoned now
            _set_sampler_epoch(self.raw, trainer.current_epoch)
            run = self._run = _EpochRun(key, iter(loader))
            replay = []
        self._consumed.clear()
        for batch, consumed in replay:
            self._consumed.append(consumed)
            yield batch
        for batch in run.batches:
            stats = loader.stats if self._record else None
            consumed = stats.samples_seen - stats.samples_buffered if stats is not None else 0
            if self._record:
                self._consumed.append(consumed)
            if trainer.global_step == key[1]:
                run.handed.append((batch, consumed))
            else:
                run.handed.clear()  # trained on: never handed out again
            yield batch
        run.done = True

    def _build(self, trainer: pl.Trainer) -> SiftingDataLoader:
        if self.loader is not None:
            return self.loader
        strategy = trainer.strategy
        if trainer.world_size > 1 and (
            not isinstance(strategy, DDPStrategy) or isinstance(strategy, DeepSpeedStrategy)
        ):
            raise ValueError(
                f"Expected a single device or strategy='ddp', but the trainer runs "
                f"{type(strategy).__name__}: scoring needs the whole model on every rank. "
                "Train with DDP."
            )
        raw = self.dataloader
        if self.distributed_sampler and trainer.world_size > 1:
            raw = with_distributed_sampler(raw, **(trainer.distributed_sampler_kwargs or {}))
        loader = self.build(raw, self.module)
        callbacks = getattr(trainer, "callbacks", [])  # set on the instance by Lightning
        self._record = any(isinstance(c, SiftingCallback) for c in callbacks)
        if not self._record:
            rank_zero_warn(
                "The training loader is sifted but the Trainer has no SiftingCallback: "
                "smartsift's stats are not logged and step-interval schedules follow the "
                "(fewer) sifted steps. Add Trainer(callbacks=[SiftingCallback()])."
            )
        return loader

    def _pop_consumed(self) -> int | None:
        return self._consumed.popleft() if self._consumed else None


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
    sampler: DistributedSampler[int] = DistributedSampler(
        dataloader.dataset,
        num_replicas=num_replicas,
        rank=rank,
        shuffle=True,
        seed=int(os.environ.get("PL_GLOBAL_SEED", 0)),
    )
    accepted = inspect.signature(DataLoader).parameters
    settings = {
        name: getattr(dataloader, name)
        for name in _DATALOADER_SETTINGS
        if name in accepted and hasattr(dataloader, name)
    }
    return DataLoader(dataloader.dataset, sampler=sampler, **settings)


@dataclass
class _EpochRun:
    """One epoch of the sifting loader as Lightning iterates it."""

    key: tuple[int, int]  # the trainer's epoch and global step when it started
    batches: Iterator[Any]  # the sifting loader's iterator for the epoch
    # Batches handed out before the first optimizer step of the run, and the data consumed up
    # to each: handed out again if Lightning restarts the epoch before training on them.
    handed: list[tuple[Any, int]] = field(default_factory=list)
    done: bool = False


@dataclass
class _Aligned:
    """A step-interval scheduler the callback keeps in step with the data."""

    scheduler: LRScheduler
    base: int  # its position when the current sifted loader started


class SiftingCallback(Callback):
    """Logs a sifted run's stats and keeps step-interval schedules in step with the data.

    Add it to the Trainer beside a training loader built by :func:`sift_dataloader`; see the
    module documentation.

    Args:
        log_stats: log the stats as ``smartsift/<name>`` every ``log_every_n_steps`` steps.
        align_schedule: top step-interval schedules up to the data trained on.

    Attributes:
        train_loader: the :class:`SiftedTrainLoader` of the current epoch, or None.
    """

    def __init__(self, *, log_stats: bool = True, align_schedule: bool = True) -> None:
        self.log_stats = bool(log_stats)
        self.align_schedule = bool(align_schedule)
        self.train_loader: SiftedTrainLoader | None = None
        self._aligned: list[_Aligned] = []
        self._warned_missing = False

    def log_values(self, trainer: pl.Trainer) -> dict[str, float]:
        """The stats as logged: ``smartsift/<name>``, NaN left out; summed over DDP ranks.

        Under DDP this is a collective: every rank calls it at the same step.
        """
        sifted = self.train_loader
        if sifted is None or sifted.loader is None:
            return {}
        loader = sifted.loader
        return stats_scalars(loader.global_stats() if trainer.world_size > 1 else loader.stats)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.global_step > 0:
            rank_zero_warn(
                "Resuming a sifted run: the sifting loader's state is not in Lightning's "
                "checkpoint, so a new one starts (its loss history empty, sift_delay again) and "
                "the interrupted epoch runs from its start."
            )

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sifted = _find_sifted(trainer.train_dataloader)
        if sifted is None:
            if not self._warned_missing:
                self._warned_missing = True
                rank_zero_warn(
                    "SiftingCallback found no sifted training loader: return "
                    "sift_dataloader(self, your_dataloader, ...) from train_dataloader()."
                )
            self.train_loader, self._aligned = None, []
            return
        if sifted is not self.train_loader:  # the first epoch, or a reloaded loader
            sifted._build(trainer)  # not built yet if Lightning does not pre-fetch
            self.train_loader = sifted
            self._aligned = self._schedules(trainer, pl_module, sifted)

    def on_train_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
    ) -> None:
        sifted = self.train_loader
        if sifted is None:
            return
        consumed = sifted._pop_consumed()  # the data this step's batch completed
        if consumed is not None and self._aligned:
            target = sifted.plain_steps(consumed)
            for entry in self._aligned:
                scheduler = entry.scheduler
                # Lightning stepped it once already for this step: top it up to the data.
                position = scheduler.last_epoch - entry.base
                for _ in range(catch_up_steps(target, position, steps_left(scheduler))):
                    pl_module.lr_scheduler_step(scheduler, None)
        every = getattr(trainer, "log_every_n_steps", 0)  # set on the instance by Lightning
        if self.log_stats and every and trainer.global_step % every == 0:
            values = self.log_values(trainer)
            if values:
                pl_module.log_dict(values, on_step=True, on_epoch=False, logger=True)

    def _schedules(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, sifted: SiftedTrainLoader
    ) -> list[_Aligned]:
        """The step-interval schedulers to keep in step with ``sifted``'s data."""
        configs = [
            c
            for c in trainer.lr_scheduler_configs
            if c.interval == "step" and not c.reduce_on_plateau
        ]
        if not self.align_schedule or not configs:
            return []
        steps_per_epoch = sifted.steps_per_epoch
        max_epochs = trainer.max_epochs
        reason = (
            "max_steps is set"
            if trainer.max_steps != -1
            else "max_epochs is not set"
            if max_epochs is None or max_epochs < 0
            else "accumulate_grad_batches is not 1"
            if trainer.accumulate_grad_batches != 1
            else "the module optimizes manually"
            if not pl_module.automatic_optimization
            else "the size of an epoch is unknown"
            if steps_per_epoch is None
            else None
        )
        if reason is not None:
            rank_zero_warn(
                f"Step-interval learning-rate schedules follow the sifted optimizer steps, not "
                f"the data, because {reason}."
            )
            return []
        assert max_epochs is not None and steps_per_epoch is not None  # for the type checker
        left = (max_epochs - trainer.current_epoch) * steps_per_epoch
        aligned = []
        for config in configs:
            scheduler = config.scheduler
            name = type(scheduler).__name__
            remaining = steps_left(scheduler)
            if not isinstance(scheduler, LRScheduler) or config.frequency != 1:
                rank_zero_warn(f"{name} follows the sifted optimizer steps (not aligned).")
            elif remaining is not None and remaining < left:
                rank_zero_warn(
                    f"{name} has {remaining} steps left but the rest of the run is worth {left} "
                    "plain steps, so it follows the sifted optimizer steps instead. Size it with "
                    "max_epochs * plain_steps_per_epoch(...)."
                )
            else:
                aligned.append(_Aligned(scheduler, scheduler.last_epoch))
        return aligned


def _find_sifted(loaders: Any) -> SiftedTrainLoader | None:
    """The sifted loader among Lightning's training iterables (one, or a list or dict)."""
    if isinstance(loaders, SiftedTrainLoader):
        return loaders
    values = loaders.values() if isinstance(loaders, dict) else loaders
    if isinstance(values, (list, tuple)) or isinstance(loaders, dict):
        for item in values:
            if isinstance(item, SiftedTrainLoader):
                return item
    return None


def _set_sampler_epoch(dataloader: Any, epoch: int) -> None:
    """Tells the loader's sampler(s) the epoch, as Lightning does for the loaders it sees."""
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


def _close(batches: Iterator[Any]) -> None:
    close = getattr(batches, "close", None)
    if callable(close):
        close()


def _trainer_of(module: pl.LightningModule) -> pl.Trainer:
    try:
        return module.trainer
    except RuntimeError:
        raise RuntimeError(
            f"{type(module).__name__} is not attached to a Trainer: iterate the sifted loader "
            "inside trainer.fit (return it from train_dataloader(), or pass it to fit)."
        ) from None
