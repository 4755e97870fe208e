"""What both modes of the Hugging Face ``Trainer`` integration share: hooks, epochs, checkpoints.

:class:`TrainerHooks` is the base of :class:`~smartsift.integrations.transformers.TrainerSifting`
(the scoring pass) and :class:`~smartsift.integrations.hf_reuse.TrainerReuse` (loss reuse):

- **Instance overrides.** The Trainer's documented override points (``get_train_dataloader``,
  ``log``, ...) are set as attributes of the one Trainer instance (calling the Trainer's own
  methods inside) and removed by :meth:`TrainerHooks.disable`; no class is patched.
- **Epochs of data.** A sifted epoch takes fewer steps than the Trainer's count of an epoch,
  and after a resume the Trainer's epoch number is off, so the integration numbers the epochs
  of data itself (:attr:`TrainerHooks.epoch`) and hands the Trainer one epoch of data per
  Trainer epoch (:class:`EpochIterator`); a Trainer epoch cut short by its own count leaves the
  epoch of data open for the next one.
- **Checkpoints.** :meth:`TrainerHooks.save` writes each rank's sifting state beside a Trainer
  checkpoint (``smartsift_rank<r>.pt``) and :meth:`TrainerHooks.load` reads it back when
  ``trainer.train(resume_from_checkpoint=...)`` resumes, so the resumed run trains what the
  uninterrupted run would have.

Example:
    >>> epoch_seed(0, 1) != epoch_seed(0, 2)
    True
    >>> iterator, first = start_epoch([10, 11, 12], seed=0, epoch=0)
    >>> first, next(iterator)
    (10, 11)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = ["STATE_FILE", "EpochIterator", "TrainerHooks", "epoch_seed", "start_epoch"]

STATE_FILE = "smartsift_rank{rank}.pt"
"""The file of one rank's sifting state in a checkpoint folder."""


def epoch_seed(seed: int, epoch: int) -> int:
    """A seed for ``epoch`` of a run seeded with ``seed`` (distinct per epoch, never negative).

    Example:
        >>> epoch_seed(0, 1) != epoch_seed(0, 2), epoch_seed(-5, 0) >= 0
        (True, True)
    """
    return (seed * 1_000_003 + epoch * 7_919 + 1) % (2**63)


def start_epoch(batches: Iterable[Any], seed: int, epoch: int) -> tuple[Iterator[Any], Any]:
    """``iter(batches)`` and its first batch, drawn without touching the global random state.

    Starting a loader's iteration draws its workers' base seed (and accelerate's synchronised
    seeds) from the global random state; drawn from a seed of the epoch instead, it is the same
    in a resumed run, and the Trainer's random state (dropout) is left as it would be.

    Raises:
        StopIteration: for an empty epoch.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(epoch_seed(seed, epoch))
        iterator = iter(batches)
        return iterator, next(iterator)


class EpochIterator:
    """One Trainer epoch: ``owner.next_batch(fresh)`` until the epoch of data ends.

    At the end it stops the Trainer's epoch (``control.should_epoch_stop``), and the training
    once ``owner.done()``. The Trainer asks for batches until its ``len()`` were taken; the
    first ``StopIteration`` may cut a gradient-accumulation group short, which the Trainer still
    trains on, and the next request stops the epoch (the ranks of a DDP job reach this in the
    same step).
    """

    def __init__(self, owner: TrainerHooks) -> None:
        self.owner = owner
        self._ended = False
        self._fresh = True

    def __iter__(self) -> EpochIterator:
        return self

    def __next__(self) -> Any:
        owner = self.owner
        control = owner.trainer.control
        if self._ended or (self._fresh and owner.done()):
            control.should_epoch_stop = True
            if owner.done():
                control.should_training_stop = True
            raise StopIteration
        try:
            batch = owner.next_batch(self._fresh)
        except StopIteration:
            self._ended = True
            raise
        self._fresh = False
        return batch


class TrainerHooks:
    """The instance overrides, the epochs of data and the checkpointed state of one Trainer.

    Subclasses name their overrides in :attr:`hooks` (``log`` is added with ``log_stats``) and
    give :meth:`epoch_batches`, :meth:`log_values`, :meth:`state_dict`,
    :meth:`load_state_dict` and :meth:`ready`.

    Attributes:
        trainer: the Trainer.
        epoch: the epoch of data being trained (0 first), counted by the integration.
        seed: the seed of the run's sifting (and of each epoch's loader start).
    """

    hooks: tuple[str, ...] = ()
    mode = ""

    def __init__(self, trainer: Any, seed: int, log_stats: bool, align_schedule: bool) -> None:
        self.trainer = trainer
        self.seed = seed
        self.log_stats = log_stats
        self.align_schedule = align_schedule
        self.epoch = 0
        self.resume_dir: str | None = None
        self._batches: Iterator[Any] | None = None
        self._saved: dict[str, Any] = {}

    # -------------------------------------------------------------- what subclasses give
    def epoch_batches(self) -> Iterable[Any]:
        """The current epoch's batches (the subclass sets its loader or sampler's epoch)."""
        raise NotImplementedError

    def log_values(self) -> dict[str, float]:
        """What goes into the Trainer's training logs."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """This rank's sifting state."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output before the first batch of a resumed run."""
        raise NotImplementedError

    def ready(self) -> bool:
        """Whether a run was set up (there is a state to save)."""
        raise NotImplementedError

    def sync(self) -> None:
        """Before saving: what every rank must exchange (a collective); nothing by default."""

    def took(self) -> None:
        """After each batch handed out."""

    def epoch_ended(self) -> None:
        """After an epoch of data ended (:attr:`epoch` already counts it)."""

    def data_epochs(self) -> float | None:
        """Epochs of data consumed so far (None if unknown)."""
        raise NotImplementedError

    # -------------------------------------------------------------- epochs of data
    def new_run(self) -> None:
        """Starts counting epochs afresh (a new ``train()`` call)."""
        self.epoch = 0
        self._batches = None

    def next_batch(self, fresh: bool) -> Any:
        """The next batch of the run's data, starting the next epoch where one ends.

        ``fresh``: whether the Trainer's current epoch has had no batch yet; an epoch that ends
        then (a checkpoint taken at an epoch's very end) moves on to the next one at once, so
        that the Trainer never sees an empty epoch.

        Raises:
            StopIteration: at an epoch's end.
        """
        while True:
            try:
                if self._batches is None:
                    self._batches, batch = start_epoch(self.epoch_batches(), self.seed, self.epoch)
                else:
                    batch = next(self._batches)
            except StopIteration:
                self._batches = None
                self.epoch += 1
                self.epoch_ended()
                if fresh and not self.done():
                    continue
                raise
            self.took()
            return batch

    def done(self) -> bool:
        """Whether ``num_train_epochs`` epochs of data were trained (epoch-based runs)."""
        args = self.trainer.args
        return args.max_steps <= 0 and self.epoch >= args.num_train_epochs

    # -------------------------------------------------------------- checkpoints
    def save(self, folder: str) -> None:
        """Writes this rank's state into a checkpoint ``folder`` (every rank calls it)."""
        if not self.ready():
            return
        self.sync()
        os.makedirs(folder, exist_ok=True)
        torch.save(self.state_dict(), os.path.join(folder, STATE_FILE.format(rank=_rank())))

    def resume_from(self, folder: str) -> None:
        """Reads the sifting state from ``folder`` at the next resumed ``train()`` (needed only
        for a checkpoint folder that is not ``output_dir/checkpoint-<step>``)."""
        self.resume_dir = folder

    def load(self, output_dir: str, global_step: int) -> None:
        """Reads this rank's state saved with the checkpoint of ``global_step``."""
        folder = self.resume_dir or os.path.join(output_dir, f"checkpoint-{global_step}")
        path = os.path.join(folder, STATE_FILE.format(rank=_rank()))
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"Resuming a sifted run at step {global_step}, but its sifting state is not "
                f"at {path}. It is saved beside each checkpoint; if the checkpoint folder was "
                "moved, call resume_from(folder) on the object enable_sifting returned before "
                "trainer.train(resume_from_checkpoint=folder)."
            )
        self.load_state_dict(torch.load(path, weights_only=True))

    # -------------------------------------------------------------- the overrides
    def get_resumed_dataloader(self, dataloader: Any, num_batches: int) -> Any:
        """The loader unchanged: it continues from the restored sifting state, not by
        skipping the batches of the Trainer's count (the Trainer's documented override for
        stateful loaders)."""
        return dataloader

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        """Adds :meth:`log_values` to a training log, then logs it the Trainer's own way."""
        if self.ready() and ("loss" in logs or "train_loss" in logs):
            logs.update(self.log_values())
        self._original("log")(logs, *args, **kwargs)

    def attach(self, callback: Any) -> None:
        """Sets the overrides on the Trainer instance and adds ``callback``."""
        trainer = self.trainer
        for name in (*self.hooks, *(("log",) if self.log_stats else ())):
            self._saved[name] = vars(trainer).get(name)  # an instance attribute the user set
            setattr(trainer, name, getattr(self, name))
        trainer.add_callback(callback)

    def disable(self) -> None:
        """Gives the Trainer back its own methods and removes the callback."""
        trainer = self.trainer
        for name, saved in self._saved.items():
            if saved is None:
                vars(trainer).pop(name, None)
            else:
                setattr(trainer, name, saved)
        self._saved.clear()
        callback = getattr(self, "callback", None)
        if callback in trainer.callback_handler.callbacks:
            trainer.remove_callback(callback)

    def _original(self, name: str) -> Any:
        """The Trainer's own ``name``: an instance attribute the user had set, or the class's."""
        saved = self._saved.get(name)
        trainer = self.trainer
        return saved if saved is not None else getattr(type(trainer), name).__get__(trainer)


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
