"""The Lightning callback of sifting: recording, logging, schedules, epochs and checkpoints.

:class:`SiftingCallback` does what needs a hook, for the training loader
``sift_dataloader`` (:mod:`smartsift.integrations.lightning`) returns: recording the training
step's losses (loss reuse), logging, keeping step-interval learning-rate schedules in step with
the data, sizing reuse epochs, and putting the sifting state into Lightning's checkpoints. Loss
reuse refuses to run without it; the scoring loader warns.

Learning-rate schedules:
    Epoch-interval schedules step once per epoch, as in plain training. Lightning steps a
    step-interval schedule once per optimizer step, and a sifted epoch takes fewer, so a
    schedule sized for plain training would stop part-way. :class:`SiftingCallback` tops it up
    after every step to where the data trained so far puts it, in plain steps of the wrapped
    loader per rank. Scoring: the plain steps the data consumed is worth (the arithmetic of
    :class:`~smartsift.DataSchedule`: :func:`~smartsift.modes.schedules.plain_steps`,
    :func:`~smartsift.modes.schedules.catch_up_steps`). Reuse: the ``i``-th of an epoch's ``b``
    batches moves it to ``epoch * steps_per_epoch + round(i * steps_per_epoch / b)``
    (:func:`~smartsift.modes.schedules.reuse_target`, the arithmetic of
    :class:`~smartsift.ReuseSchedule`), so each epoch covers one plain epoch of it. Either way
    it ends where training ends. Size it as for plain training: ``max_epochs *
    plain_steps_per_epoch(len(data), batch_size, world_size)``.
    The adapters themselves are not used because Lightning takes only torch schedulers (unless
    ``lr_scheduler_step`` is overridden) and already steps them once per step: the callback adds
    the difference. This is done in epoch-based runs (``max_steps`` unset) with
    ``accumulate_grad_batches=1``, for ``LRScheduler`` s with ``interval="step"`` and
    ``frequency=1`` and, for those that know their end (``OneCycleLR``), sized for the whole
    run; other schedules follow optimizer steps, with a warning.

Checkpoints and resuming:
    :class:`SiftingCallback` puts the sifting state into Lightning's checkpoints (its
    ``state_dict``, under ``checkpoint["callbacks"]``, tensors and plain values: it loads with
    ``weights_only=True``), and ``trainer.fit(model, ckpt_path=...)`` restores it before the
    loader is first used, so the resumed run trains exactly the samples, in the same order, at
    the same learning rates, as the uninterrupted run, whether it stopped mid-epoch or between
    epochs (tested with 0 and 2 workers, and with 2 DDP ranks). Scoring saves the sifting
    loader's state and the refined batch Lightning pre-fetched but had not trained (in plain
    containers, as the loader saves its formed batches), which is handed out again first.
    Reuse saves the sampler's state as of the current epoch's decision and the table's; the
    resumed epoch skips the indices of the batches Lightning counts as trained and loads the
    rest. Both save where each aligned schedule started. Under DDP every rank's state is
    gathered and saved in the one file rank 0 writes (a collective: save on every rank, as
    ``ModelCheckpoint`` and ``trainer.save_checkpoint`` do), and each rank restores its own:
    resume with the same number of processes, in the same mode. An exact order needs a
    reproducible shuffle: give the ``DataLoader`` a seeded ``generator`` (under DDP the
    ``DistributedSampler``'s seed does it). Lightning restores no random state, so worker seeds
    and dropout may differ after a resume. The reuse loader gives Lightning's loop state only
    where it stands (its ``state_dict``), so Lightning counts it resumable.

Logs:
    Every ``log_every_n_steps`` (the Trainer's) optimizer steps the callback logs the stats
    with ``pl_module.log_dict`` as ``smartsift/<name>``, NaN values left out, so they reach
    every logger and ``trainer.callback_metrics``. Scoring: the loader's
    :class:`~smartsift.SiftStats` (``smartsift/keep_rate``, ``smartsift/samples_seen``,
    ``smartsift/samples_trained``, ...), summed over DDP ranks. Reuse: the current epoch's
    :class:`~smartsift.ReuseEpochStats` (``smartsift/candidates``, ``smartsift/kept``,
    ``smartsift/sifted``, ``smartsift/trained``, ``smartsift/keep_rate``, ...), the same on
    every rank.

Example:
    >>> callback = SiftingCallback(log_stats=False)
    >>> callback.train_loader is None, callback.state_dict()  # before fit: nothing to save
    (True, {})
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.distributed as dist
from torch.optim.lr_scheduler import LRScheduler

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

from smartsift.integrations.lightning_base import LOSS_METHOD, STATE_FORMAT, SiftingCallbackBase
from smartsift.integrations.lightning_reuse import ReuseTrainLoader
from smartsift.integrations.lightning_scoring import SiftedTrainLoader
from smartsift.integrations.tensorboard import stats_scalars
from smartsift.modes.schedules import catch_up_steps, steps_left

__all__ = ["SiftingCallback"]


@dataclass
class _Aligned:
    """A step-interval scheduler the callback keeps in step with the data."""

    index: int  # its place in trainer.lr_scheduler_configs
    scheduler: LRScheduler
    base: int  # its position when the current sifted loader started


class SiftingCallback(SiftingCallbackBase):
    """Records, logs, schedules and checkpoints for a loader built by ``sift_dataloader``.

    Add it to the Trainer beside the training loader; see the module documentation. In loss
    reuse it is required: for the duration of ``fit`` it wraps the module's
    ``per_sample_loss`` so that the training step's losses are recorded. A checkpoint's state
    waits in it, as in its base :class:`~smartsift.integrations.lightning_base.SiftingCallbackBase`,
    until the training loader restores it.

    Args:
        log_stats: log the stats as ``smartsift/<name>`` every ``log_every_n_steps`` steps.
        align_schedule: top step-interval schedules up to the data trained on.

    Attributes:
        train_loader: the :class:`~smartsift.integrations.lightning_scoring.SiftedTrainLoader`
            or :class:`~smartsift.integrations.lightning_reuse.ReuseTrainLoader` of the current
            epoch, or None.
    """

    def __init__(self, *, log_stats: bool = True, align_schedule: bool = True) -> None:
        super().__init__()
        self.log_stats = bool(log_stats)
        self.align_schedule = bool(align_schedule)
        self.train_loader: SiftedTrainLoader | ReuseTrainLoader | None = None
        self._aligned: list[_Aligned] = []
        self._warned_missing = False
        self._trainer: pl.Trainer | None = None
        self._wrapped: tuple[pl.LightningModule, Any] | None = None  # module, its own entry

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict[str, Any]:
        """The sifting state for Lightning's checkpoint: every rank's (gathered to every rank,
        saved by rank 0), and the aligned schedules' starting points.

        Under DDP this is a collective: Lightning calls it on every rank when it saves
        (``trainer.save_checkpoint`` must be called on every rank, as ``ModelCheckpoint`` does).
        """
        trainer, sifted = self._trainer, self.train_loader
        if trainer is None or sifted is None:
            return {}
        return {
            "format": STATE_FORMAT,
            "mode": sifted.mode,
            "world_size": trainer.world_size,
            "ranks": _gather(sifted.checkpoint_state(trainer), trainer.world_size),
            "schedules": [[entry.index, entry.base] for entry in self._aligned],
        }

    # ------------------------------------------------------------ hooks
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._trainer = trainer

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow(trainer, pl_module)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._follow(trainer, pl_module)
        sifted = self.train_loader
        if isinstance(sifted, ReuseTrainLoader):
            # The previous epoch's losses are all in: decide this epoch, and size Lightning's
            # epoch by it before the progress bar and the fetcher read the size.
            _resize_epoch(trainer, sifted.start_epoch(trainer.current_epoch))

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.train_loader is not None:
            self.train_loader.take(batch_idx)

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
        sifted.finish(batch_idx)
        target = sifted.schedule_target(batch_idx) if self._aligned else None
        if target is not None:
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

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._unwrap()

    def on_exception(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException
    ) -> None:
        self._unwrap()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._unwrap()

    def log_values(self, trainer: pl.Trainer) -> dict[str, float]:
        """The stats as logged: ``smartsift/<name>``, NaN left out.

        Scoring: the loader's stats, summed over DDP ranks (a collective: every rank calls it at
        the same step). Reuse: the current epoch's :class:`~smartsift.ReuseEpochStats`, the
        same on every rank.
        """
        sifted = self.train_loader
        if isinstance(sifted, ReuseTrainLoader):
            stats = sifted.stats
            return {} if stats is None else stats_scalars(stats)
        if sifted is None or sifted.loader is None:
            return {}
        loader = sifted.loader
        return stats_scalars(loader.global_stats() if trainer.world_size > 1 else loader.stats)

    # ------------------------------------------------------------ following the loader
    def _follow(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        """Finds the training loader; a new one (the first, or a reloaded one) is set up."""
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
        if sifted is self.train_loader:
            return
        sifted._build(trainer)  # not built yet if Lightning neither pre-fetched nor sized it
        restored, self._restored = self._restored, None
        self.train_loader = sifted
        if restored and self.align_schedule:
            self._aligned = _restored_schedules(trainer, restored.get("schedules", []))
        else:
            self._aligned = self._schedules(trainer, pl_module, sifted)
        if isinstance(sifted, ReuseTrainLoader):
            _check_only_loader(trainer.train_dataloader, sifted)
            self._wrap(sifted)

    def _wrap(self, sifted: ReuseTrainLoader) -> None:
        """Makes ``per_sample_loss`` on the module instance record through ``sifted``."""
        self._unwrap()
        module = sifted.module
        own = vars(module).get(LOSS_METHOD)  # an instance attribute, if it has one
        method = getattr(module, LOSS_METHOD)

        def per_sample_loss(*args: Any, **kwargs: Any) -> Any:
            return sifted.record(method(*args, **kwargs))

        per_sample_loss.__doc__ = getattr(method, "__doc__", None)
        vars(module)[LOSS_METHOD] = per_sample_loss  # this instance only: never the class
        self._wrapped = (module, own)

    def _unwrap(self) -> None:
        """Gives the module its own ``per_sample_loss`` back."""
        if self._wrapped is None:
            return
        (module, own), self._wrapped = self._wrapped, None
        if own is None:
            vars(module).pop(LOSS_METHOD, None)
        else:
            vars(module)[LOSS_METHOD] = own

    def _schedules(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        sifted: SiftedTrainLoader | ReuseTrainLoader,
    ) -> list[_Aligned]:
        """The step-interval schedulers to keep in step with ``sifted``'s data."""
        configs = [
            (i, c)
            for i, c in enumerate(trainer.lr_scheduler_configs)
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
        for index, config in configs:
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
                aligned.append(_Aligned(index, scheduler, scheduler.last_epoch))
        return aligned


def _check_only_loader(loaders: Any, sifted: ReuseTrainLoader) -> None:
    if loaders is not sifted:
        raise TypeError(
            "Expected the loss-reuse loader to be the only training loader (Lightning sizes "
            f"each of its epochs by it), but got {type(loaders).__name__}; train on it alone."
        )


def _restored_schedules(trainer: pl.Trainer, saved: list[list[int]]) -> list[_Aligned]:
    """The aligned schedulers a checkpoint names, with their saved starting points."""
    configs = trainer.lr_scheduler_configs
    aligned = []
    for index, base in saved:
        if not 0 <= index < len(configs):
            raise ValueError(
                f"The checkpoint aligns learning-rate scheduler {index}, but the module "
                f"configures {len(configs)}; resume with the optimizers it was saved with."
            )
        aligned.append(_Aligned(int(index), configs[index].scheduler, int(base)))
    return aligned


def _resize_epoch(trainer: pl.Trainer, batches: int) -> None:
    """Sizes Lightning's current training epoch at ``batches`` batches, as its own
    ``setup_data`` does for a loader it (re)loads: the epoch's total and limit, and the
    validation point of a fractional ``val_check_interval``. Lightning reads a loader's length
    only then; a loss-reuse epoch's length changes every epoch."""
    limit = trainer.limit_train_batches
    size = (
        min(batches, limit)
        if isinstance(limit, int)
        else max(1, int(batches * limit))
        if batches
        else 0
    )
    loop = trainer.fit_loop
    loop.max_batches = size
    combined = getattr(loop, "_combined_loader", None)  # the epoch's limit: no public handle
    if combined is not None and combined.limits is not None:
        combined.limits = [size] * len(combined.limits)
    interval, check = trainer.val_check_interval, trainer.val_check_batch
    if isinstance(interval, float) and isinstance(check, int | float) and check != float("inf"):
        trainer.val_check_batch = max(1, int(size * interval))


def _gather(value: Any, world_size: int) -> list[Any]:
    """``value`` from every rank, in rank order (a collective under DDP)."""
    if world_size <= 1 or not (dist.is_available() and dist.is_initialized()):
        return [value]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, value)
    return out


def _find_sifted(loaders: Any) -> SiftedTrainLoader | ReuseTrainLoader | None:
    """The sifted loader among Lightning's training iterables (one, or a list or dict)."""
    kinds = (SiftedTrainLoader, ReuseTrainLoader)
    if isinstance(loaders, kinds):
        return loaders
    values = loaders.values() if isinstance(loaders, dict) else loaders
    if isinstance(values, (list, tuple)) or isinstance(loaders, dict):
        for item in values:
            if isinstance(item, kinds):
                return item
    return None
