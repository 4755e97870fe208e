"""Learning-rate schedules that follow the data a sifting loader consumes, not the steps taken.

A sifted epoch takes fewer optimizer steps than a plain one, so a scheduler that is stepped once
per optimizer step and sized for plain training never reaches its end (a cosine schedule ends
part-way down), and one sized from a guessed keep rate runs past its end when the realised keep
rate differs (``OneCycleLR`` raises). :class:`DataSchedule` fixes both: size the scheduler
exactly as for plain training, wrap it, and call the wrapper's ``step()`` where you called
``scheduler.step()``. Each call advances the scheduler by as many plain-training steps as the
data the loader consumed since the last call is worth, so the schedule ends where training
ends, whatever is sifted, and it never needs the keep rate.

The unit is one plain step: one batch of ``batch_size`` samples (default: the loader's refined
batch size), counted per epoch as plain training counts them, so one epoch is worth
``ceil(samples_per_epoch / batch_size)`` steps, which is
``len(DataLoader(dataset, batch_size=batch_size))``. To size the scheduler in raw batches of
the wrapped loader instead (``epochs * len(train_loader)``), pass
``batch_size=train_loader.batch_size``. "Consumed" means pulled from the wrapped loader, kept
or sifted (``stats.samples_seen``), so within an epoch the schedule may lead the trained
samples by the few raw batches that fill the current refined batch; at every epoch's end it is
exact.

The counts, and what each one is:

- ``len(loader)`` of a :class:`~smartsift.SiftingDataLoader`: a plan, not a promise. It
  estimates the refined batches of an epoch from the policy's nominal keep fraction (exact only
  when nothing is sifted). Never size a schedule from it.
- ``loader.stats.steps``: the optimizer steps actually taken (refined batches yielded).
- :attr:`DataSchedule.steps_per_epoch`: the scheduler steps one epoch of data is worth; exact,
  and the same whatever is sifted. Size the scheduler with ``epochs * steps_per_epoch``.
- :attr:`DataSchedule.steps`: the scheduler steps this adapter has taken so far.

The arithmetic under both adapters is a few pure functions, which the Lightning and Hugging Face
integrations call too: :func:`plain_steps` (the plain steps some data is worth),
:func:`plain_steps_per_epoch`, :func:`infer_samples_per_epoch` (of a ``DataLoader``),
:func:`schedule_position` (for a schedule sized in other steps), and :func:`catch_up_steps`
with :func:`steps_left` (how far to step a scheduler, never past its end).

Under DDP each rank's adapter reads its own loader's ``stats.samples_seen`` (no collective).
The ranks pull one raw batch each per round and yield the same number of refined batches, so
when every rank's raw batches have the same sizes (a ``DistributedSampler`` gives every rank
the same number of samples per epoch), every rank steps its scheduler alike and the replicas
keep one learning rate. Samples per epoch are inferred per rank (``len(sampler)``).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> from smartsift.modes.schedules import DataSchedule
    >>> data = TensorDataset(torch.randn(100, 4), torch.randint(0, 2, (100,)))
    >>> model = torch.nn.Linear(4, 2)
    >>> def loss_fn(model, batch):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> loader = ss.SiftingDataLoader(DataLoader(data, batch_size=10), model, loss_fn,
    ...                               policy=ss.TopK(0.3), seed=0)
    >>> opt = torch.optim.SGD(model.parameters(), lr=0.1)
    >>> epochs = 3
    >>> cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * 10)
    >>> schedule = DataSchedule(cosine, loader)      # sized as for plain training
    >>> for epoch in range(epochs):
    ...     for x, y in loader:
    ...         loss = loss_fn(model, (x, y)).mean()
    ...         opt.zero_grad(); loss.backward(); opt.step()
    ...         _ = schedule.step()                  # where scheduler.step() was
    >>> loader.stats.steps, schedule.steps, schedule.get_last_lr()
    (9, 30, [0.0])
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any

from torch.optim.lr_scheduler import LRScheduler, ReduceLROnPlateau

from smartsift.engine.checks import check_int

if TYPE_CHECKING:
    from smartsift.modes.loader import SiftingDataLoader
    from smartsift.modes.reuse import ReuseSampler

__all__ = [
    "DataSchedule",
    "ReuseSchedule",
    "catch_up_steps",
    "infer_samples_per_epoch",
    "plain_steps",
    "plain_steps_per_epoch",
    "reuse_target",
    "schedule_position",
    "steps_left",
]


def plain_steps(samples: int, batch_size: int, samples_per_epoch: int | None = None) -> int:
    """The optimizer steps plain training takes to consume ``samples`` samples.

    Plain training at ``batch_size`` takes ``ceil(samples_per_epoch / batch_size)`` steps per
    epoch, the last batch of an epoch possibly smaller; within an epoch, one step per full batch
    of samples. Without ``samples_per_epoch`` the data is one stream (``samples // batch_size``).

    Args:
        samples: samples consumed since the start of training (non-negative).
        batch_size: the batch size of plain training (positive).
        samples_per_epoch: samples in one epoch, or None for a stream without epochs.

    Returns:
        The number of plain steps ``samples`` samples are worth.

    Example:
        >>> plain_steps(250, batch_size=32, samples_per_epoch=100)  # 2.5 epochs of 4 steps
        9
        >>> plain_steps(250, batch_size=32)
        7
    """
    check_int("samples", samples, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    if samples_per_epoch is None:
        return samples // batch_size
    check_int("samples_per_epoch", samples_per_epoch, minimum=1)
    epochs, rest = divmod(samples, samples_per_epoch)
    return epochs * -(-samples_per_epoch // batch_size) + rest // batch_size


def plain_steps_per_epoch(
    num_samples: int, batch_size: int, world_size: int = 1, drop_last: bool = False
) -> int:
    """Optimizer steps one epoch of plain (unsifted) training takes on each rank.

    The unit in which to size a schedule for a sifted run: a rank's ``DistributedSampler``
    gives it ``ceil(num_samples / world_size)`` samples, which its ``DataLoader`` batches
    (dropping an incomplete last batch with ``drop_last``).

    Example:
        >>> plain_steps_per_epoch(1000, 32), plain_steps_per_epoch(1000, 32, world_size=2)
        (32, 16)
        >>> plain_steps_per_epoch(1000, 32, world_size=2, drop_last=True)
        15
    """
    check_int("num_samples", num_samples, minimum=0)
    check_int("batch_size", batch_size, minimum=1)
    check_int("world_size", world_size, minimum=1)
    per_rank = math.ceil(num_samples / world_size)
    return per_rank // batch_size if drop_last else math.ceil(per_rank / batch_size)


def catch_up_steps(target: int, position: int, remaining: int | None = None) -> int:
    """Scheduler steps that move a schedule at plain step ``position`` up to ``target``.

    Zero when the schedule is ahead of the data (it waits for it), and never more than
    ``remaining``, the steps left before the scheduler's end (see :func:`steps_left`).

    Example:
        >>> catch_up_steps(10, 7), catch_up_steps(10, 7, remaining=2), catch_up_steps(5, 7)
        (3, 2, 0)
    """
    todo = target - position
    return max(0, todo if remaining is None else min(todo, remaining))


def schedule_position(progress: float, max_steps: int) -> int:
    """The step of a ``max_steps``-step schedule matching ``progress``, the fraction of the
    run's data consumed (for a schedule sized in steps that are not plain steps).

    Example:
        >>> schedule_position(0.5, 100), schedule_position(1.2, 100)
        (50, 100)
    """
    return max(0, min(max_steps, math.floor(progress * max_steps + 1e-9)))


def steps_left(scheduler: Any, total_steps: int | None = None, taken: int = 0) -> int | None:
    """Steps left before the scheduler's end: its own ``total_steps`` or the given one.

    None when neither is known. The scheduler's position is its ``last_epoch``, or ``taken``
    for one that keeps no count of its own (``ChainedScheduler``).

    Example:
        >>> import torch
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> one_cycle = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1.0, total_steps=10)
        >>> steps_left(one_cycle), steps_left(one_cycle, total_steps=4)
        (10, 4)
    """
    own_end = getattr(scheduler, "total_steps", None)
    ends = [e for e in (own_end, total_steps) if isinstance(e, int)]
    if not ends:
        return None
    position = getattr(scheduler, "last_epoch", None)
    if not isinstance(position, int):
        position = taken
    return max(0, min(ends) - position)


class _Adapter:
    """What both adapters share: step a scheduler up to a target, never past its end."""

    scheduler: LRScheduler
    total_steps: int | None
    _steps: int
    _done: int

    @property
    def steps(self) -> int:
        """Scheduler steps this adapter has taken."""
        return self._steps

    def get_last_lr(self) -> list[Any]:
        """The wrapped scheduler's last learning rates, one per parameter group."""
        return list(self.scheduler.get_last_lr())

    def _advance_to(self, target: int) -> int:
        """Steps the scheduler up to plain step ``target`` (not past its end); returns how many."""
        remaining = steps_left(self.scheduler, self.total_steps, self._steps)
        todo = catch_up_steps(target, self._done, remaining)
        for _ in range(todo):
            self.scheduler.step()
        self._steps += todo
        self._done = max(self._done, target)
        return todo


def _check_scheduler(scheduler: Any) -> None:
    if not callable(getattr(scheduler, "step", None)):
        raise TypeError(
            f"Expected `scheduler` to be a learning-rate scheduler with a step() method, "
            f"but got {type(scheduler).__name__}."
        )
    if isinstance(scheduler, ReduceLROnPlateau):
        raise TypeError(
            "Expected `scheduler` to be a step-based scheduler, but got ReduceLROnPlateau, "
            "which follows a metric: keep calling its step(metric) yourself."
        )


class DataSchedule(_Adapter):
    """Steps a learning-rate scheduler by the data a sifting loader consumed.

    Size ``scheduler`` exactly as for plain training at ``batch_size``; call :meth:`step`
    where you called ``scheduler.step()``, once per optimizer step. Each call steps the
    scheduler up to :func:`plain_steps` of the samples the loader has pulled, so after as many
    epochs as plain training the scheduler has taken as many steps and holds the same final
    rate. It never steps a scheduler past its end: ``OneCycleLR`` (any scheduler with
    ``total_steps`` and ``last_epoch``) stops at its own end, any other at ``total_steps`` if
    given.

    Checkpointing: save ``schedule.state_dict()`` beside ``scheduler.state_dict()`` and
    ``loader.state_dict()`` (the wrapped scheduler is saved by you, as usual) and load all
    three on resume; the run then continues exactly as an uninterrupted one.

    Args:
        scheduler: any step-based scheduler (``CosineAnnealingLR``, ``OneCycleLR``,
            ``LambdaLR`` as transformers' ``get_linear_schedule_with_warmup`` builds it,
            ``StepLR``, ``SequentialLR``, ...). Not ``ReduceLROnPlateau``: it follows a metric.
        loader: the :class:`~smartsift.SiftingDataLoader` whose data paces the schedule.
        batch_size: the batch size the scheduler's steps stand for; default
            ``loader.batch_size`` (the refined batch size). Pass the wrapped loader's batch
            size to count raw batches.
        samples_per_epoch: samples in one epoch of the wrapped loader (on this rank); default:
            inferred from a ``DataLoader`` (its sampler's or dataset's length, less what
            ``drop_last`` drops). If it cannot be inferred, the data counts as one stream and a
            warning says so; pass it then for exact epoch ends.
        total_steps: the step at which the schedule ends, for schedulers that do not know
            their own end; the scheduler is never stepped beyond it.

    Attributes:
        scheduler: the wrapped scheduler.
        loader: the loader whose data paces it.
        samples_per_epoch: samples per epoch, or None when the data counts as one stream.
        total_steps: the step limit given, if any.
    """

    def __init__(
        self,
        scheduler: LRScheduler,
        loader: SiftingDataLoader,
        *,
        batch_size: int | None = None,
        samples_per_epoch: int | None = None,
        total_steps: int | None = None,
    ) -> None:
        _check_scheduler(scheduler)
        if not hasattr(loader, "stats"):
            raise TypeError(
                f"Expected `loader` to be a SiftingDataLoader, but got {type(loader).__name__}."
            )
        for name, value in (("batch_size", batch_size), ("samples_per_epoch", samples_per_epoch)):
            if value is not None:
                check_int(name, value, minimum=1)
        if total_steps is not None:
            check_int("total_steps", total_steps, minimum=0)
        self.scheduler = scheduler
        self.loader = loader
        self.total_steps = total_steps
        self._batch_size = batch_size
        if samples_per_epoch is None:
            samples_per_epoch = infer_samples_per_epoch(getattr(loader, "dataloader", None))
            if samples_per_epoch is None:
                warnings.warn(
                    "Could not tell how many samples one epoch of the wrapped loader holds, so "
                    "the schedule counts the data as one stream; epoch ends are exact only when "
                    "the batch size divides an epoch. Pass `samples_per_epoch` to fix it.",
                    stacklevel=2,
                )
        self.samples_per_epoch = samples_per_epoch
        self._steps = 0
        self._warned = False
        # Data the loader consumed before the adapter existed is not owed to the scheduler.
        self._done = self._target(loader.stats.samples_seen)

    @property
    def batch_size(self) -> int | None:
        """The batch size one scheduler step stands for (None until the loader knows it)."""
        return self._batch_size or self.loader.batch_size

    @property
    def steps_per_epoch(self) -> int | None:
        """Scheduler steps one epoch of data is worth (None if either count is unknown)."""
        bs, n = self.batch_size, self.samples_per_epoch
        return plain_steps_per_epoch(n, bs) if bs and n else None

    def step(self) -> int:
        """Steps the scheduler up to the data consumed so far; returns how many steps it took."""
        stats = self.loader.stats
        self._check_epochs(stats.samples_seen, stats.epochs)
        return self._advance_to(self._target(stats.samples_seen))

    def state_dict(self) -> dict[str, Any]:
        """Returns the adapter's counters (the wrapped scheduler is not included)."""
        return {
            "steps": self._steps,
            "done": self._done,
            "batch_size": self.batch_size,
            "samples_per_epoch": self.samples_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores counters saved by :meth:`state_dict`; the units must match this adapter's."""
        for key in ("batch_size", "samples_per_epoch"):
            mine, saved = getattr(self, key), state[key]
            if mine is not None and saved is not None and mine != saved:
                raise ValueError(
                    f"Expected the checkpoint's `{key}` to be {mine}, as this schedule's, but "
                    f"got {saved}; build the schedule with the data and batch size it was "
                    "saved with."
                )
        self._steps = int(state["steps"])
        self._done = int(state["done"])

    def __repr__(self) -> str:
        return (
            f"DataSchedule({type(self.scheduler).__name__}, steps={self._steps}, "
            f"batch_size={self.batch_size}, samples_per_epoch={self.samples_per_epoch})"
        )

    def _target(self, samples_seen: int) -> int:
        bs = self.batch_size
        if not bs or samples_seen == 0:
            return 0  # the batch size is known once the loader has pulled a raw batch
        return plain_steps(samples_seen, bs, self.samples_per_epoch)

    def _check_epochs(self, samples_seen: int, epochs: int) -> None:
        n = self.samples_per_epoch
        if self._warned or n is None or epochs * n <= samples_seen <= (epochs + 1) * n:
            return
        self._warned = True
        warnings.warn(
            f"The loader has seen {samples_seen} samples in {epochs} completed epochs, which "
            f"does not fit `samples_per_epoch`={n}: an epoch was cut short, or the epochs differ "
            "in size. The schedule counts whole epochs of `samples_per_epoch` samples, so it is "
            "now off by the difference; pass the right `samples_per_epoch`, or finish every "
            "epoch.",
            stacklevel=3,
        )


def reuse_target(epoch: int, step: int, batches: int, steps_per_epoch: int) -> int:
    """Where the schedule stands after ``step`` of the ``batches`` batches of a reuse epoch.

    A reuse epoch covers one epoch of data in fewer batches; each of its batches is worth
    ``steps_per_epoch / batches`` plain steps, so the schedule is at ``epoch * steps_per_epoch``
    when the epoch starts and at ``(epoch + 1) * steps_per_epoch`` when it ends.

    Example:
        >>> [reuse_target(1, s, batches=4, steps_per_epoch=10) for s in range(5)]
        [10, 12, 15, 18, 20]
    """
    if batches <= 0:
        return (epoch + 1) * steps_per_epoch
    return epoch * steps_per_epoch + min(steps_per_epoch, round(step * steps_per_epoch / batches))


class ReuseSchedule(_Adapter):
    """Steps a learning-rate scheduler by the share of each loss-reuse epoch trained.

    With a :class:`~smartsift.ReuseSampler` an epoch skips samples before loading, so it has
    fewer batches than a plain one. Size ``scheduler`` exactly as for plain training
    (``epochs * steps_per_epoch`` steps) and call :meth:`step` where you called
    ``scheduler.step()``, once per optimizer step: the ``i``-th of an epoch's ``b`` batches
    moves the scheduler to :func:`reuse_target`, so each epoch covers one epoch of the
    schedule and the last step of training ends it. The epoch and its ``b`` are read from the
    sampler (``sampler.epoch``, ``len(sampler)``), so ``set_epoch`` or none, resume included,
    it stays in step. Never steps past the scheduler's end (``total_steps``, its own or given).

    Args:
        scheduler: any step-based scheduler, sized as for plain training.
        sampler: the :class:`~smartsift.ReuseSampler` of the training loader.
        batch_size: the loader's batch size (per rank).
        steps_per_epoch: plain steps per epoch, as the scheduler was sized; default
            ``ceil(len(sampler.sampler) / batch_size)`` (per rank for a ``DistributedSampler``).
        drop_last: whether the loader drops each epoch's last incomplete batch.
        total_steps: the step at which the schedule ends, for schedulers that do not know it.
        loader: in the hybrid mode, the :class:`~smartsift.SiftingDataLoader` around the
            sampler's loader: it yields fewer batches than the sampler's epoch holds, so the
            schedule follows the raw batches it pulled (``batch_size`` is then the raw one).

    Example:
        >>> import torch
        >>> from torch.utils.data import DataLoader, SequentialSampler
        >>> import smartsift as ss
        >>> table = ss.ScoreTable(40)
        >>> sampler = ss.ReuseSampler(SequentialSampler(range(40)), table, ss.TopK(0.5))
        >>> loader = DataLoader(range(40), sampler=sampler, batch_size=10)
        >>> opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=1.0)
        >>> cosine = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=2 * 4)
        >>> schedule = ReuseSchedule(cosine, sampler, batch_size=10)
        >>> for epoch in range(2):
        ...     for ids in loader:
        ...         table.update(ids, ids.float())       # the training step's losses
        ...         opt.step()
        ...         _ = schedule.step()
        >>> len(loader), schedule.steps, schedule.get_last_lr()   # 2 batches, 8 steps
        (2, 8, [0.0])
    """

    def __init__(
        self,
        scheduler: LRScheduler,
        sampler: ReuseSampler,
        *,
        batch_size: int,
        steps_per_epoch: int | None = None,
        drop_last: bool = False,
        total_steps: int | None = None,
        loader: Any = None,
    ) -> None:
        _check_scheduler(scheduler)
        if loader is not None and not hasattr(loader, "raw_batches_in_epoch"):
            raise TypeError(
                "Expected `loader` to be the SiftingDataLoader around the sampler's loader (the "
                f"hybrid mode), or None, but got {type(loader).__name__}."
            )
        if not hasattr(sampler, "epoch_stats"):
            raise TypeError(
                f"Expected `sampler` to be a ReuseSampler, but got {type(sampler).__name__}."
            )
        check_int("batch_size", batch_size, minimum=1)
        if steps_per_epoch is None:
            steps_per_epoch = plain_steps_per_epoch(
                len(sampler.sampler),  # type: ignore[arg-type]
                batch_size,
                _replicas(sampler),
                drop_last,
            )
        check_int("steps_per_epoch", steps_per_epoch, minimum=1)
        if total_steps is not None:
            check_int("total_steps", total_steps, minimum=0)
        self.scheduler = scheduler
        self.sampler = sampler
        self.batch_size = batch_size
        self.steps_per_epoch = steps_per_epoch
        self.drop_last = drop_last
        self.total_steps = total_steps
        self.loader = loader
        self._steps = 0
        self._done = 0
        self._epoch: int | None = None
        self._in_epoch = 0

    def step(self) -> int:
        """Steps the scheduler to where the epoch's trained share puts it; returns how many."""
        epoch = self.sampler.epoch
        if epoch is None:
            return 0
        if epoch != self._epoch:
            self._epoch, self._in_epoch = epoch, 0
        self._in_epoch += 1
        if self.loader is not None:  # the hybrid mode: the raw batches its loader pulled
            self._in_epoch = int(self.loader.raw_batches_in_epoch)
        batches = plain_steps_per_epoch(len(self.sampler), self.batch_size, 1, self.drop_last)
        return self._advance_to(reuse_target(epoch, self._in_epoch, batches, self.steps_per_epoch))

    def state_dict(self) -> dict[str, Any]:
        """The adapter's counters (the wrapped scheduler and the sampler are saved by you)."""
        return {
            "steps": self._steps,
            "done": self._done,
            "epoch": self._epoch,
            "in_epoch": self._in_epoch,
            "steps_per_epoch": self.steps_per_epoch,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s counters; ``steps_per_epoch`` must match."""
        if int(state["steps_per_epoch"]) != self.steps_per_epoch:
            raise ValueError(
                f"Expected the checkpoint's `steps_per_epoch` to be {self.steps_per_epoch}, as "
                f"this schedule's, but got {state['steps_per_epoch']}; build the schedule as it "
                "was saved."
            )
        self._steps = int(state["steps"])
        self._done = int(state["done"])
        self._epoch = None if state["epoch"] is None else int(state["epoch"])
        self._in_epoch = int(state["in_epoch"])

    def __repr__(self) -> str:
        return (
            f"ReuseSchedule({type(self.scheduler).__name__}, steps={self._steps}, "
            f"steps_per_epoch={self.steps_per_epoch})"
        )


def _replicas(sampler: Any) -> int:
    """Ranks the sampler shards over, unless its base sampler already gives one rank's share."""
    from torch.utils.data import DistributedSampler

    if isinstance(sampler.sampler, DistributedSampler):
        return 1
    return int(getattr(sampler, "num_replicas", 1))


def infer_samples_per_epoch(dataloader: Any) -> int | None:
    """Samples one epoch of a ``DataLoader``-like loader yields, or None if it cannot tell.

    Read from its sampler's length (per rank under a ``DistributedSampler``), else its
    dataset's, less what ``drop_last`` drops; None without automatic batching.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> infer_samples_per_epoch(DataLoader(range(10), batch_size=4, drop_last=True))
        8
    """
    bs = getattr(dataloader, "batch_size", None)
    if not isinstance(bs, int) or isinstance(bs, bool) or bs < 1:
        return None  # no automatic batching (a custom batch_sampler): batch sizes unknown
    n: int | None = None
    sources: tuple[Any, ...] = (
        getattr(dataloader, "sampler", None),
        getattr(dataloader, "dataset", None),
    )
    for source in sources:
        try:
            n = len(source)
            break
        except TypeError:
            continue
    if n is None:
        return None
    n = (n // bs) * bs if getattr(dataloader, "drop_last", False) else n
    return n or None
