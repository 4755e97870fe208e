"""Loss reuse in Lightning: the training step's own losses sift the next epoch, before loading.

``sift_dataloader(module, loader, policy, mode="reuse")`` (:mod:`smartsift.integrations.lightning`,
``docs/reuse.md``) checks its options here (:func:`check_reuse_options`; the scoring mode refuses
them with :func:`refuse_reuse_options`) and returns a :class:`ReuseTrainLoader`. No extra pass
runs. The ``DataLoader`` is rebuilt over its dataset with each sample's index carried beside it,
sampled by a :class:`~smartsift.ReuseSampler` over its own sampler and fed by a
:class:`~smartsift.ScoreTable`: each epoch after the first skips, before loading, the samples
the policy judges learnt from the losses of their last training step. ``training_step`` gets
the ``DataLoader``'s own batches (its ``collate_fn``'s, the indices kept apart). The losses are
the training step's own, with no second forward pass: for the duration of ``fit``
:class:`~smartsift.integrations.lightning.SiftingCallback` wraps ``per_sample_loss`` on the
module instance (never its class), and while a training batch runs, the first call records its
result for that batch's indices (the loader keys them by batch index, ``on_train_batch_start``
picks them up) and every call returns it, multiplied by the sampler's weights with
``rescale=True`` (so that ``.mean()`` is the weighted loss). A training batch that ends without
a call raises, naming the fix. The sampler's options (:func:`reuse_option_names`: ``score``,
``max_age``, ``rescale``, ``max_weight``, ``anneal`` with the Trainer's ``max_epochs`` as
``epochs``, ``explore``, ``chunk_size``, ``audit``) and ``seed`` pass through.

Epochs:
    The reuse loader has a ``len()``: the current epoch's batches on this rank (the
    ``ReuseSampler``'s length, batched), so Lightning does not pre-fetch and the progress bar
    has a total. But Lightning reads a loader's length only when it sets the data up, and sizes
    every epoch by it (``trainer.num_training_batches``, the epoch's batch limit, the
    validation point of a fractional ``val_check_interval``), while a reuse epoch is shorter
    than the first and a later one may be longer again (``anneal``, stale losses): left alone,
    validation would stop running at epoch ends and a longer epoch after a resume would be cut.
    So at every epoch start the callback decides the epoch (:meth:`ReuseTrainLoader.start_epoch`;
    the previous epoch's losses are all in by then) and sizes Lightning's epoch by it, as
    Lightning's own set-up does for a reloaded loader: the progress bar shows each epoch's
    total, validation runs at each epoch's end, epoch-interval schedules step once per epoch,
    and ``limit_train_batches`` applies to each epoch's length.
    ``trainer.estimated_stepping_batches`` is the first epoch's length (all the data) times
    ``max_epochs``, the plain run's steps; on a resume Lightning computes it from the resumed
    epoch's length, so size schedules that capture it (a ``LambdaLR``) with
    :func:`~smartsift.modes.schedules.plain_steps_per_epoch` instead.

Distributed training:
    The ``ReuseSampler`` wraps the ``DistributedSampler`` Lightning would give the loader (or the
    loader's own): every rank prunes the epoch's whole permutation alike, from a table every
    rank holds whole (each rank's recorded losses are all-gathered), and takes an equal share of
    what is kept, so every rank takes the same number of optimizer steps.

Checkpoints:
    :meth:`ReuseTrainLoader.checkpoint_state` is the sampler's state as of the current epoch's
    decision and the table's; the resumed epoch skips the indices of the batches Lightning counts
    as trained and loads the rest. The loader gives Lightning's loop state only where it stands
    (its ``state_dict``), so Lightning counts it resumable.

Example:
    >>> import torch
    >>> from torch.utils.data import TensorDataset
    >>> check_reuse_options(None, None, {"max_age": 2})
    {'max_age': 2}
    >>> check_reuse_dataloader(DataLoader(TensorDataset(torch.zeros(4)), batch_size=2))  # fine
"""

from __future__ import annotations

import difflib
import inspect
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
)

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

from smartsift.integrations.adapter import brief, passthrough_names
from smartsift.integrations.lightning_base import (
    LOSS_METHOD,
    check_strategy,
    sifting_callback,
    trainer_of,
)
from smartsift.integrations.lightning_data import lightning_sampler, loader_settings
from smartsift.modes.reuse import ReuseEpochStats, ReuseSampler
from smartsift.modes.schedules import plain_steps_per_epoch, reuse_target
from smartsift.modes.table import ScoreTable
from smartsift.policies import Policy

__all__ = [
    "ReuseTrainLoader",
    "check_reuse_dataloader",
    "check_reuse_options",
    "check_reuse_settings",
    "refuse_reuse_options",
    "reuse_option_names",
]

# ReuseSampler arguments that the reuse loader sets itself, each with the fix to give.
_REUSE_SETS: Mapping[str, str] = {
    "epochs": "it is the Trainer's max_epochs: leave `epochs` out",
    "num_replicas": "under DDP it is the Trainer's world size: leave `num_replicas` out",
    "rank": "under DDP it is the Trainer's rank: leave `rank` out",
    "drop_last": "set drop_last on your DataLoader (or its DistributedSampler)",
    "seed": "pass it as `seed`",
}


def reuse_option_names() -> list[str]:
    """The :class:`~smartsift.ReuseSampler` options ``sift_dataloader(mode="reuse")`` passes on.

    Example:
        >>> reuse_option_names()
        ['anneal', 'audit', 'chunk_size', 'explore', 'max_age', 'max_weight', 'rescale', 'score']
    """
    params = inspect.signature(ReuseSampler).parameters.values()
    return sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in _REUSE_SETS)


def refuse_reuse_options(options: Mapping[str, Any]) -> None:
    """Raises for loss-reuse options given to the scoring mode.

    Example:
        >>> refuse_reuse_options({"max_age": 2})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Expected options of the scoring mode, but got `max_age`=2, which only loss ...
    """
    scoring = set(passthrough_names())
    wrong = [k for k in options if k in reuse_option_names() and k not in scoring]
    if wrong:
        given = ", ".join(f"`{k}`={brief(options[k])}" for k in wrong)
        raise TypeError(
            f"Expected options of the scoring mode, but got {given}, which only loss reuse "
            "takes: pass mode='reuse' to use loss reuse, or leave them out."
        )


def check_reuse_options(
    loss_fn: Any, sift_delay: int | None, options: Mapping[str, Any]
) -> dict[str, Any]:
    """The loss-reuse options, checked: the scoring mode's are refused with the fix.

    Example:
        >>> check_reuse_options(None, 2, {"max_ag": 3})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ... `sift_delay`=2, ... `max_ag`=3, not an option of loss reuse (did you ...
    """
    allowed = reuse_option_names()
    scoring = set(passthrough_names())
    problems = []
    if loss_fn is not None:
        problems.append(
            f"`loss_fn`={brief(loss_fn)}, which only the scoring pass uses (loss reuse records "
            f"the training step's own `{LOSS_METHOD}(batch)`)"
        )
    if sift_delay is not None:
        problems.append(
            f"`sift_delay`={sift_delay!r}, which only the scoring pass takes (loss reuse trains "
            "its first epoch whole)"
        )
    for key, value in options.items():
        if key in _REUSE_SETS:
            problems.append(f"`{key}`={brief(value)}, which loss reuse sets ({_REUSE_SETS[key]})")
        elif key in scoring and key not in allowed:
            problems.append(
                f"`{key}`={brief(value)}, which only the scoring pass takes (loss reuse trains "
                "the DataLoader's own batches)"
            )
        elif key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            fix = f" (did you mean `{close[0]}`?)" if close else ""
            problems.append(f"`{key}`={brief(value)}, not an option of loss reuse{fix}")
    if problems:
        raise TypeError(
            f"Expected options of loss reuse (mode='reuse'), but got {'; '.join(problems)}. It "
            f"passes on {', '.join(allowed)} to ReuseSampler; use mode='scoring' for the "
            "scoring pass."
        )
    return dict(options)


def check_reuse_dataloader(dataloader: Any) -> None:
    """Raises unless ``dataloader`` is one loss reuse can rebuild: a torch ``DataLoader`` over a
    map-style dataset, with a ``batch_size``.

    Example:
        >>> check_reuse_dataloader([[1, 2]])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: Expected a torch DataLoader over a map-style dataset, ... but got list. ...
    """
    if (
        not isinstance(dataloader, DataLoader)
        or isinstance(dataloader.dataset, IterableDataset)
        or dataloader.batch_size is None
    ):
        kind = type(dataloader).__name__
        if isinstance(dataloader, DataLoader):
            kind += f" over {type(dataloader.dataset).__name__}, batch_size={dataloader.batch_size}"
        raise TypeError(
            "Expected a torch DataLoader over a map-style dataset, with a batch_size, for loss "
            f"reuse (it samples dataset indices and batches them itself), but got {kind}. Give "
            "the DataLoader a map-style dataset and batch_size=..., or use mode='scoring'."
        )


def check_reuse_settings(policy: Policy | None, options: Mapping[str, Any], seed: int) -> None:
    """Raises now what the ReuseSampler would raise for these settings when first built.

    Example:
        >>> check_reuse_settings(None, {"max_age": 1}, seed=0)  # fine: nothing raised
    """
    anneal = options.get("anneal", 0.0)
    epochs = 1 if isinstance(anneal, (int, float)) and anneal > 0 else None
    ReuseSampler(range(1), ScoreTable(1), policy, epochs=epochs, seed=seed, **options)


@dataclass
class _Running:
    """The training batch Lightning is running in loss reuse: its sample ids, and whether
    ``per_sample_loss`` has recorded its losses yet."""

    batch_idx: int
    ids: torch.Tensor
    recorded: bool = False


class ReuseTrainLoader:
    """The loss-reuse training loader Lightning iterates; built by
    ``sift_dataloader(..., mode="reuse")``.

    It yields the ``DataLoader``'s own batches, over the samples the
    :class:`~smartsift.ReuseSampler` keeps each epoch. Its ``len()`` is the current epoch's
    number of batches (on this rank). It is built when Lightning first asks for its length or a
    batch; :class:`~smartsift.integrations.lightning.SiftingCallback` is required (it records
    the training step's losses).

    Attributes:
        module: the LightningModule being trained.
        dataloader: the ``DataLoader`` given to ``sift_dataloader``.
        dataset: its dataset.
        policy: the policy given (None: the sampler's default).
        options: the further :class:`~smartsift.ReuseSampler` options.
        seed: the seed of the sampler's selector (the same on every rank).
        table: the :class:`~smartsift.ScoreTable` (None before the first build).
        sampler: the :class:`~smartsift.ReuseSampler` (None before).
        loader: the ``DataLoader`` iterated, over the dataset with its indices (None before).
    """

    mode = "reuse"

    def __init__(
        self,
        module: pl.LightningModule,
        dataloader: DataLoader[Any],
        policy: Policy | None,
        options: dict[str, Any],
        seed: int,
        distributed_sampler: bool,
    ) -> None:
        self.module = module
        self.dataloader = dataloader
        self.dataset = dataloader.dataset
        self.policy = policy
        self.options = options
        self.seed = seed
        self.distributed_sampler = bool(distributed_sampler)
        self.table: ScoreTable | None = None
        self.sampler: ReuseSampler | None = None
        self.loader: DataLoader[Any] | None = None
        self._skipping: _Skipping | None = None
        self._ids: dict[int, torch.Tensor] = {}  # the sample ids of the batches handed out
        self._running: _Running | None = None
        # The sampler's state right after the current epoch's decision, before any draw: with
        # the table and the batches trained, it resumes the epoch exactly.
        self._snapshot: tuple[int, dict[str, Any]] | None = None
        self._first_epoch = 0  # the trainer's epoch when this loader started

    @property
    def batch_size(self) -> int:
        """The batch size (per rank), the ``DataLoader``'s."""
        return int(cast(int, self.dataloader.batch_size))

    @property
    def stats(self) -> ReuseEpochStats | None:
        """The current epoch's decision (over all ranks), or None before the first."""
        return None if self.sampler is None else self.sampler.stats

    @property
    def steps_per_epoch(self) -> int | None:
        """Plain-training steps one epoch is worth on this rank (None before the build)."""
        if self.sampler is None:
            return None
        base = cast(Any, self.sampler.sampler)
        return plain_steps_per_epoch(len(base), self.batch_size, 1, self.dataloader.drop_last)

    def batches(self, samples: int) -> int:
        """The batches ``samples`` samples of an epoch make on this rank."""
        return plain_steps_per_epoch(samples, self.batch_size, 1, self.dataloader.drop_last)

    def __len__(self) -> int:
        trainer = trainer_of(self.module)
        sampler = self._build(trainer)
        # The decided epoch (a restored one included): Lightning asks before its own epoch
        # counter is restored. The callback decides the next epochs.
        return self.start_epoch(trainer.current_epoch if sampler.epoch is None else sampler.epoch)

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing is built or decided until Lightning asks for the first batch.
        return self._epoch()

    def _epoch(self) -> Iterator[Any]:
        trainer = trainer_of(self.module)
        self._build(trainer)
        self.start_epoch(trainer.current_epoch)
        # After a resume Lightning continues the epoch at the batch after the last one trained:
        # skip the indices of the batches before it (full batches: only an epoch's last is not).
        start = _batches_done(trainer)
        skipping, loader = cast(_Skipping, self._skipping), cast(DataLoader[Any], self.loader)
        skipping.skip = start * self.batch_size
        self._ids.clear()
        for index, (ids, batch) in enumerate(loader, start):
            self._ids[index] = ids
            yield batch

    def start_epoch(self, epoch: int) -> int:
        """Decides ``epoch`` (once: after the previous epoch's last update) and returns its
        number of batches on this rank. Under DDP call it on every rank at the same point."""
        sampler = cast(ReuseSampler, self.sampler)
        if sampler.epoch != epoch:
            sampler.set_epoch(epoch)  # the decision below syncs the table first
        samples = len(sampler)  # decides the epoch if it is not decided yet
        if self._snapshot is None or self._snapshot[0] != epoch:
            self._snapshot = (epoch, sampler.state_dict())
        return self.batches(samples)

    def _build(self, trainer: pl.Trainer) -> ReuseSampler:
        if self.sampler is not None:
            return self.sampler
        callback = sifting_callback(trainer)
        if callback is None:
            raise RuntimeError(
                "Loss reuse needs the SiftingCallback, which records the losses of the training "
                "steps: add Trainer(callbacks=[SiftingCallback()])."
            )
        check_strategy(trainer)
        anneal = self.options.get("anneal", 0.0)
        max_epochs = trainer.max_epochs
        epochs = max_epochs if max_epochs is not None and max_epochs > 0 else None
        if anneal and epochs is None:
            raise ValueError(
                f"anneal={anneal} needs the run's number of epochs, but the Trainer has "
                f"max_epochs={max_epochs}; set Trainer(max_epochs=...)."
            )
        base = _reuse_base(self.dataloader, trainer, self.distributed_sampler)
        table = ScoreTable(len(cast(Any, self.dataset)))
        sampler = ReuseSampler(
            base, table, self.policy, epochs=epochs, seed=self.seed, **self.options
        )
        skipping = _Skipping(sampler)
        dl = self.dataloader
        settings = loader_settings(dl, exclude=("batch_size", "collate_fn", "generator"))
        self.loader = DataLoader(
            _WithIds(self.dataset),
            sampler=skipping,
            batch_size=dl.batch_size,
            collate_fn=_IdsApart(dl.collate_fn),
            generator=_worker_generator(dl.generator),
            **settings,
        )
        self.table, self.sampler, self._skipping = table, sampler, skipping
        self._first_epoch = trainer.current_epoch
        state = callback.restored_state(self.mode, trainer)
        if state is not None:
            table.load_state_dict(state["table"])
            sampler.load_state_dict(state["sampler"])
            self._snapshot = (int(state["epoch"]), state["sampler"])
            self._first_epoch = int(state["first_epoch"])
        return sampler

    def checkpoint_state(self, trainer: pl.Trainer) -> dict[str, Any] | None:
        """This rank's state for a checkpoint: the sampler's right after the current epoch's
        decision, and the table's (None before the first decision)."""
        if self._snapshot is None or self.table is None:
            return None
        epoch, sampler_state = self._snapshot
        return {
            "epoch": epoch,
            "first_epoch": self._first_epoch,
            "sampler": sampler_state,
            "table": self.table.state_dict(),
        }

    # ------------------------------------------------------------ the training step's losses
    def take(self, batch_idx: int) -> None:
        """Starts recording for training batch ``batch_idx`` (``on_train_batch_start``)."""
        ids = self._ids.pop(batch_idx, None)
        if ids is None:
            raise RuntimeError(
                f"Loss reuse has no sample ids for training batch {batch_idx}: the batch did "
                "not come from this loader in this epoch. Train on the loader sift_dataloader "
                "returned, as the only training loader."
            )
        self._running = _Running(batch_idx, ids)

    def record(self, losses: Any) -> Any:
        """What ``per_sample_loss`` returns while a training batch runs: its ``losses``,
        recorded in the table for the batch's ids (the first call per batch), and weighted by
        the sampler's weights with ``rescale=True``. Outside training batches: ``losses``."""
        running = self._running
        if running is None:
            return losses
        if not isinstance(losses, torch.Tensor) or losses.shape != running.ids.shape:
            shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses)
            raise ValueError(
                f"Expected `{LOSS_METHOD}(batch)` to return one loss per sample, a tensor of "
                f"shape ({running.ids.numel()},) for training batch {running.batch_idx}, but got "
                f"{shape}. Return the unreduced losses (reduction='none', then a mean over any "
                "other dimension)."
            )
        sampler = cast(ReuseSampler, self.sampler)
        if not running.recorded:
            cast(ScoreTable, self.table).update(running.ids, losses.detach())
            running.recorded = True
        if sampler.rescale:
            weights = sampler.weights(running.ids).to(device=losses.device, dtype=losses.dtype)
            return losses * weights
        return losses

    def finish(self, batch_idx: int) -> None:
        """Ends training batch ``batch_idx`` (``on_train_batch_end``).

        Raises:
            RuntimeError: if ``per_sample_loss`` recorded nothing for it.
        """
        running, self._running = self._running, None
        if running is not None and not running.recorded:
            raise RuntimeError(
                f"Training batch {batch_idx} ended without a call to `self.{LOSS_METHOD}(batch)`, "
                "so its losses were not recorded and loss reuse cannot judge its samples. "
                f"Compute the training loss from it: `return self.{LOSS_METHOD}(batch).mean()` "
                "in training_step (and pass sift_dataloader the module being trained)."
            )

    def schedule_target(self, batch_idx: int) -> int | None:
        """Where a schedule sized for plain training stands after ``batch_idx`` (plain steps
        since this loader's start): each epoch covers one plain epoch of it."""
        sampler, spe = self.sampler, self.steps_per_epoch
        if sampler is None or sampler.epoch is None or spe is None:
            return None
        done = reuse_target(sampler.epoch, batch_idx + 1, self.batches(len(sampler)), spe)
        return done - self._first_epoch * spe

    # ------------------------------------------------------------ Lightning's loop state
    def state_dict(self) -> dict[str, Any]:
        """What Lightning's loop state records of this loader: where it stands on this rank.

        The loader is resumable, but its state (every rank's) is saved and restored by
        :class:`~smartsift.integrations.lightning.SiftingCallback`; this only marks it resumable
        to Lightning.
        """
        return {"epoch": None if self._snapshot is None else self._snapshot[0]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to do: the ``SiftingCallback`` restores the loader (see :meth:`state_dict`)."""


class _WithIds(Dataset[Any]):
    """A map-style dataset whose samples come with their index: ``(index, sample)``."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class _IdsApart:
    """Collates ``(index, sample)`` pairs into ``(ids, batch)``: the ids as an int64 tensor, the
    samples by the user's own ``collate_fn``, so the batch is the one the user's loader makes."""

    def __init__(self, collate_fn: Any) -> None:
        self.collate_fn = collate_fn

    def __call__(self, items: list[tuple[int, Any]]) -> tuple[torch.Tensor, Any]:
        ids = torch.tensor([index for index, _ in items], dtype=torch.int64)
        return ids, self.collate_fn([sample for _, sample in items])


class _Skipping(Sampler[int]):
    """The reuse sampler's indices, less the first ``skip`` (those of the batches an epoch
    trained before a checkpoint), so that a resumed epoch loads only what is left."""

    def __init__(self, sampler: ReuseSampler) -> None:
        self.sampler = sampler
        self.skip = 0

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.skip)

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.sampler), self.skip, None)


def _worker_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """The generator of the reuse loader's worker seeds: a copy of the user's seed, so that
    each iteration's draw leaves the user's generator, which shuffles the epochs, untouched
    (a resumed run draws the epochs' orders as the uninterrupted one did)."""
    if generator is None:
        return None
    return torch.Generator().manual_seed(generator.initial_seed())


def _reuse_base(dataloader: DataLoader[Any], trainer: pl.Trainer, distributed: bool) -> Any:
    """The sampler loss reuse prunes: the loader's own, or under DDP the DistributedSampler
    Lightning would give it."""
    base = dataloader.sampler
    if trainer.world_size == 1 or isinstance(base, DistributedSampler):
        return base
    if distributed and isinstance(base, (RandomSampler, SequentialSampler)):
        return lightning_sampler(dataloader.dataset, **(trainer.distributed_sampler_kwargs or {}))
    raise TypeError(
        "Expected, under DDP, a DataLoader whose sampler loss reuse can shard alike on every "
        f"rank, but got {type(base).__name__} with distributed_sampler={distributed}. Give the "
        "DataLoader a DistributedSampler, or a random or sequential sampler with "
        "distributed_sampler=True (the default)."
    )


def _batches_done(trainer: pl.Trainer) -> int:
    """The batches of the current epoch Lightning has trained (more than 0 after a resume)."""
    return int(trainer.fit_loop.epoch_loop.batch_progress.current.ready)
