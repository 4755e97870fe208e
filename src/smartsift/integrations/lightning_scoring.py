"""The scoring mode's training loader for Lightning: each raw batch scored, the kept ones trained.

``sift_dataloader(module, loader, policy)`` (:mod:`smartsift.integrations.lightning`, the default
``mode="scoring"``) returns a :class:`SiftedTrainLoader`. It wraps the training ``DataLoader`` in
a :class:`~smartsift.SiftingDataLoader` that scores each raw batch with a gradient-free pass of
the module's ``per_sample_loss(batch) -> Tensor (B,)`` (or a ``loss_fn(module, batch)`` you
pass); the kept samples form the refined batches ``training_step`` gets.

Epochs:
    The scoring loader has no ``len()`` (a sifted epoch is as long as its data turns out to be),
    so Lightning treats it as it treats an ``IterableDataset``: it pre-fetches one batch to see
    the end of an epoch coming. An epoch ends when its data ends; validation
    (``val_check_interval`` 1.0 or an int) runs at every epoch's end; epoch-interval schedules
    step once per epoch; ``trainer.global_step`` counts sifted optimizer steps. The progress bar
    shows no total, ``trainer.num_training_batches`` is ``inf`` and
    ``trainer.estimated_stepping_batches`` is ``max_steps`` (-1 when unset): size schedules
    with :func:`~smartsift.modes.schedules.plain_steps_per_epoch`. Lightning refuses a
    fractional ``val_check_interval`` or ``limit_train_batches`` for loaders without a length.
    Because of the pre-fetch, the next refined batch is scored before the current one trains
    (with weights one step older) and the stats count it as handed out. When Lightning starts
    an epoch a second time before training on any of it (it does right after reloading a
    loader), the second start continues the first instead of abandoning its batches.

Distributed training:
    Under DDP the ``DataLoader`` is rebuilt with the ``DistributedSampler`` Lightning would add
    (:func:`~smartsift.integrations.lightning_data.with_distributed_sampler`); a loader that
    already has one, reads an ``IterableDataset`` or is not a ``DataLoader`` is used as it is
    (shard it yourself), and ``distributed_sampler=False`` turns this off. The module scores its
    shard itself (not through the DDP wrapper, so no collective runs in scoring) and the ranks
    sift in lockstep.

Checkpoints:
    :meth:`SiftedTrainLoader.checkpoint_state` is the sifting loader's state and the refined
    batch Lightning pre-fetched but had not trained (in plain containers, as the loader saves
    its formed batches); after a resume that batch is handed out again first.

Example:
    >>> import lightning.pytorch as pl
    >>> from smartsift.policies import TopK
    >>> sifted = SiftedTrainLoader(pl.LightningModule(), [], TopK(0.5), None, {}, False)
    >>> sifted.mode, sifted.loader is None, sifted.steps_per_epoch  # built by the first epoch
    ('scoring', True, None)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch.utils.data import IterableDataset

try:
    import lightning.pytorch as pl
    from lightning.pytorch.utilities import rank_zero_warn
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

from smartsift.batches.structure import container_types, restore_types, to_device, to_plain
from smartsift.integrations.adapter import LazySifter
from smartsift.integrations.lightning_base import check_strategy, sifting_callback, trainer_of
from smartsift.integrations.lightning_data import set_sampler_epoch, with_distributed_sampler
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.schedules import infer_samples_per_epoch, plain_steps, plain_steps_per_epoch
from smartsift.modes.scoring import LossFn
from smartsift.policies import Policy

__all__ = ["SiftedTrainLoader"]


class SiftedTrainLoader(LazySifter):
    """The sifted training loader Lightning iterates (scoring mode); built by
    :func:`~smartsift.integrations.lightning.sift_dataloader`.

    It has no ``len()``: Lightning then ends each epoch when the sifted data ends. The
    :class:`~smartsift.SiftingDataLoader` is built when Lightning first iterates it (the trainer,
    and under DDP the process group, exist by then).

    Attributes:
        module: the LightningModule that scores the batches.
        dataloader: the loader given to ``sift_dataloader``.
        raw: the loader iterated (``dataloader``, or its rebuild with a ``DistributedSampler``),
            or None before the first epoch.
        loader: the :class:`~smartsift.SiftingDataLoader` over ``raw``, or None before.
    """

    mode = "scoring"

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
        # Refined batches handed out and not yet trained on, each with the data consumed up to
        # it (oldest first): Lightning pre-fetches one. Kept only with a SiftingCallback.
        self._queue: deque[tuple[Any, int]] = deque()
        self._taken: int | None = None  # the data consumed up to the batch being trained
        self._record = False
        self._run: _EpochRun | None = None
        # From a checkpoint: the epoch the loader's next batches belong to, and the batches
        # handed out but untrained when it was saved (handed out again first).
        self._resumed: tuple[int, list[tuple[Any, int]]] | None = None

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
        trainer = trainer_of(self.module)
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
            epoch, replay = trainer.current_epoch, []
            if self._resumed is not None:
                # The first epoch after a resume: the checkpoint knows which epoch it is, even
                # when Lightning pre-fetches before restoring its own counters.
                (epoch, replay), self._resumed = self._resumed, None
            set_sampler_epoch(self.raw, epoch)
            run = self._run = _EpochRun(key, iter(loader), list(replay))
        self._queue.clear()
        for batch, consumed in replay:
            if self._record:
                self._queue.append((batch, consumed))
            yield batch
        for batch in run.batches:
            stats = loader.stats if self._record else None
            consumed = stats.samples_seen - stats.samples_buffered if stats is not None else 0
            if self._record:
                self._queue.append((batch, consumed))
            if trainer.global_step == key[1]:
                run.handed.append((batch, consumed))
            else:
                run.handed.clear()  # trained on: never handed out again
            yield batch
        run.done = True

    def _build(self, trainer: pl.Trainer) -> SiftingDataLoader:
        if self.loader is not None:
            return self.loader
        check_strategy(trainer)
        raw = self.dataloader
        if self.distributed_sampler and trainer.world_size > 1:
            raw = with_distributed_sampler(raw, **(trainer.distributed_sampler_kwargs or {}))
        loader = self.build(raw, self.module)
        callback = sifting_callback(trainer)
        self._record = callback is not None
        if callback is None:
            rank_zero_warn(
                "The training loader is sifted but the Trainer has no SiftingCallback: "
                "smartsift's stats are not logged, step-interval schedules follow the (fewer) "
                "sifted steps and the sifting state is not checkpointed. Add "
                "Trainer(callbacks=[SiftingCallback()])."
            )
        else:
            state = callback.restored_state(self.mode, trainer)
            if state is not None:
                self._restore(loader, state)
        return loader

    def _restore(self, loader: SiftingDataLoader, state: Mapping[str, Any]) -> None:
        """Loads this rank's state from a checkpoint (see :meth:`checkpoint_state`)."""
        loader.load_state_dict(state["loader"])
        device = loader.device

        def restored(saved: Mapping[str, Any]) -> Any:
            batch = restore_types(saved["batch"], saved["types"])
            return to_device(batch, device) if device is not None else batch

        pending = [(restored(p), int(p["consumed"])) for p in state["pending"]]
        self._resumed = (int(state["epoch"]), pending)

    def checkpoint_state(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """This rank's state for a checkpoint: the sifting loader's, and the refined batches it
        handed out that are not trained yet (Lightning's pre-fetched one), in plain form.

        Tensors and plain values only (``torch.load(weights_only=True)`` loadable); None before
        the loader is built.
        """
        if self.loader is None:
            return None
        ended = self._run is not None and self._run.done  # the next batches: the next epoch's
        return {
            "epoch": trainer.current_epoch + (1 if ended else 0),
            "loader": self.loader.state_dict(),
            "pending": [
                {"batch": to_plain(b), "types": container_types(b), "consumed": c}
                for b, c in self._queue
            ],
        }

    def take(self, batch_idx: int) -> None:
        """Marks the oldest batch handed out as the one being trained (``on_train_batch_start``)."""
        self._taken = self._queue.popleft()[1] if self._queue else None

    def finish(self, batch_idx: int) -> None:
        """Called when a training batch ends; nothing to check in the scoring mode."""

    def schedule_target(self, batch_idx: int) -> int | None:
        """The plain steps the data trained so far is worth, since this loader's start."""
        return None if self._taken is None else self.plain_steps(self._taken)


@dataclass
class _EpochRun:
    """One epoch of the sifting loader as Lightning iterates it."""

    key: tuple[int, int]  # the trainer's epoch and global step when it started
    batches: Iterator[Any]  # the sifting loader's iterator for the epoch
    # Batches handed out before the first optimizer step of the run, and the data consumed up
    # to each: handed out again if Lightning restarts the epoch before training on them.
    handed: list[tuple[Any, int]] = field(default_factory=list)
    done: bool = False


def _close(batches: Iterator[Any]) -> None:
    close = getattr(batches, "close", None)
    if callable(close):
        close()
