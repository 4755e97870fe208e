"""Training runs side by side: same initial weights, same data order, interleaved, timed.

A :class:`Task` says what is trained (a model factory, a training set, a per-sample loss) and
how it is judged (a metric, where higher or lower is better). Every :class:`TrainingRun` of a
task builds its model from the same seed and reads the training set in the same order, plain
(``policy=None``) or through a :class:`~smartsift.SiftingDataLoader`. :func:`train_side_by_side`
advances the runs in turn, one evaluation interval each, so that a busy machine slows them
alike; every run keeps its own training clock, which excludes evaluation. Each run's
:class:`RunResult` holds its metric curve against training time, from which
:func:`time_to_target` and :func:`speedup_to_target` read the comparison, and
:func:`plot_runs` draws it. The demo (:mod:`benchmarks.demo`) and the benchmarks use this one
harness; it is not part of the ``smartsift`` package. :func:`run_at_step_size` builds the runs
of a comparison whose every optimizer step is of one size, plain, sifted or by loss reuse.

Learning-rate schedules (``schedule="cosine"`` or ``"warmup_cosine"``, see
:data:`SCHEDULES`) are real per-step torch schedulers, sized as for plain training at the
run's step size: ``epochs * ceil(N / step batch size)`` steps. A plain run steps its scheduler
after every optimizer step; a sifted run steps it through :class:`~smartsift.DataSchedule`, so
that it progresses with the data consumed and ends exactly where training ends, as the plain
run's does.

Example:
    >>> import torch.nn.functional as F
    >>> from torch.utils.data import TensorDataset
    >>> from smartsift.policies import TopK
    >>> x = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
    >>> y = (x[:, 0] > 0).long()
    >>> def loss_fn(model, batch):
    ...     inputs, labels = batch
    ...     return F.cross_entropy(model(inputs), labels, reduction="none")
    >>> def accuracy(model):
    ...     return (model(x).argmax(1) == y).float().mean().item()
    >>> task = Task(lambda: torch.nn.Linear(4, 2), TensorDataset(x, y), loss_fn, accuracy)
    >>> plain, sifted = train_side_by_side([
    ...     TrainingRun("plain", task, epochs=2, batch_size=32, lr=0.1, schedule="cosine"),
    ...     TrainingRun("sifted", task, policy=TopK(0.5), epochs=2, batch_size=32, lr=0.1,
    ...                 schedule="cosine"),
    ... ])
    >>> plain.steps, sifted.steps, sifted.keep_rate
    (16, 8, 0.5)
    >>> plain.final_lr, sifted.final_lr    # both schedules end where training ends
    (0.0, 0.0)
    >>> plain.final > 0.8 and plain.time_to(plain.target(0.01)) <= plain.train_seconds
    True
"""

from __future__ import annotations

import copy
import functools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, LRScheduler
from torch.utils.data import DataLoader, Dataset, RandomSampler

from smartsift.batches.indexed import IndexedDataset
from smartsift.batches.structure import batch_size_of
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.reuse import ReuseSampler
from smartsift.modes.schedules import DataSchedule, ReuseSchedule
from smartsift.modes.scoring import LossFn
from smartsift.modes.table import ScoreTable
from smartsift.policies import Policy

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "SCHEDULES",
    "OptimizerFactory",
    "PolicyFactory",
    "Reuse",
    "RunResult",
    "ScheduleFactory",
    "Task",
    "TrainingRun",
    "cosine_schedule",
    "plot_runs",
    "run_at_step_size",
    "runs_figure",
    "seeded",
    "speedup_to_target",
    "time_to_target",
    "train_side_by_side",
    "warmup_cosine_schedule",
]

M = TypeVar("M")

ScheduleFactory = Callable[[torch.optim.Optimizer, int], LRScheduler]
"""``factory(optimizer, total_steps) -> scheduler``: a schedule of ``total_steps`` steps."""

PolicyFactory = Callable[[torch.nn.Module], Policy]
"""A function of a run's model returning its policy (see :class:`TrainingRun`)."""

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter], float], torch.optim.Optimizer]
"""``factory(parameters, lr) -> optimizer``: a torch optimizer class, or a
``functools.partial`` of one (``partial(torch.optim.SGD, momentum=0.9)``), will do."""


WARMUP_FRACTION = 0.05
"""The share of the steps :func:`warmup_cosine_schedule` warms up over."""


def cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """A cosine from the optimizer's rate down to 0 over ``total_steps`` steps.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> sched = cosine_schedule(opt, 4)
        >>> rates = []
        >>> for _ in range(4):
        ...     opt.step()
        ...     sched.step()
        ...     rates.append(round(sched.get_last_lr()[0], 3))
        >>> rates
        [0.854, 0.5, 0.146, 0.0]
    """
    return CosineAnnealingLR(optimizer, T_max=max(1, total_steps))


def warmup_cosine_schedule(optimizer: torch.optim.Optimizer, total_steps: int) -> LRScheduler:
    """A linear warm-up over the first :data:`WARMUP_FRACTION` of the steps, then a cosine to 0.

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 1).parameters(), lr=1.0)
        >>> sched = warmup_cosine_schedule(opt, 40)    # two warm-up steps
        >>> rates = [sched.get_last_lr()[0]]
        >>> for _ in range(40):
        ...     opt.step()
        ...     sched.step()
        ...     rates.append(sched.get_last_lr()[0])
        >>> [round(r, 3) for r in rates[:4]], rates[-1]
        ([0.333, 0.667, 1.0, 0.998], 0.0)
    """
    warmup = max(1, round(WARMUP_FRACTION * total_steps))
    decay = max(1, total_steps - warmup)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warmup) / decay)))

    return LambdaLR(optimizer, factor)


SCHEDULES: dict[str, ScheduleFactory] = {
    "cosine": cosine_schedule,
    "warmup_cosine": warmup_cosine_schedule,
}
"""The schedules a :class:`TrainingRun` accepts by name."""


def seeded(build: Callable[[], M], seed: int) -> M:
    """Calls ``build()`` with torch's CPU generator seeded to ``seed``, then restores it.

    Models built this way from the same seed have the same initial weights, and the caller's
    random state is left as it was.

    Example:
        >>> a = seeded(lambda: torch.nn.Linear(3, 2), 0)
        >>> b = seeded(lambda: torch.nn.Linear(3, 2), 0)
        >>> torch.equal(a.weight, b.weight)
        True
    """
    state = torch.random.get_rng_state()
    try:
        torch.random.default_generator.manual_seed(seed)
        return build()
    finally:
        torch.random.set_rng_state(state)


def _reached(value: float, target: float, higher_is_better: bool) -> bool:
    return value >= target if higher_is_better else value <= target


def _first_reaching(values: Sequence[float], target: float, higher_is_better: bool) -> int | None:
    return next((i for i, v in enumerate(values) if _reached(v, target, higher_is_better)), None)


def time_to_target(
    times: Sequence[float], values: Sequence[float], target: float, higher_is_better: bool = True
) -> float:
    """The first time at which ``values`` reached ``target`` (``math.inf`` if never).

    Example:
        >>> time_to_target([1.0, 2.0, 3.0], [0.5, 0.8, 0.9], 0.75)
        2.0
        >>> time_to_target([1.0, 2.0], [3.0, 2.5], 2.0, higher_is_better=False)
        inf
    """
    if len(times) != len(values):
        raise ValueError(
            f"Expected `times` and `values` of the same length, but got {len(times)} and "
            f"{len(values)}."
        )
    i = _first_reaching(values, target, higher_is_better)
    return math.inf if i is None else times[i]


@dataclass
class RunResult:
    """One training run: its metric curve against training time, and the work it did.

    ``times`` are the training seconds (evaluation excluded) at each evaluation, ``values``
    the metric there; ``epoch_ends`` the training seconds at the end of each epoch. At each
    evaluation too: ``lrs``, the learning rate; ``seen``, the raw samples consumed so far;
    ``scored``, the samples a scoring pass ranked (the sift delay's pass-through is not
    scored; a loss-reuse run has no scoring pass); ``trained``, the samples backpropagated.
    ``planned_samples`` is what all epochs consume (epochs times the training set).
    ``decided_keep`` is the fraction the policy kept of the samples it decided on (NaN for a
    plain run): what a stated ``keep`` targets.
    """

    name: str
    higher_is_better: bool = True
    times: list[float] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    epoch_ends: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    seen: list[int] = field(default_factory=list)
    scored: list[int] = field(default_factory=list)
    trained: list[int] = field(default_factory=list)
    steps: int = 0
    decided_keep: float = math.nan
    samples_backpropagated: int = 0
    samples_seen: int = 0
    planned_samples: int = 0
    train_seconds: float = 0.0

    @property
    def final(self) -> float:
        """The metric at the last evaluation (NaN before the first)."""
        return self.values[-1] if self.values else math.nan

    @property
    def final_lr(self) -> float:
        """The learning rate at the last evaluation (NaN before the first)."""
        return self.lrs[-1] if self.lrs else math.nan

    @property
    def progress(self) -> list[float]:
        """The fraction of the planned data consumed at each evaluation.

        Example:
            >>> RunResult("plain", seen=[50, 100], planned_samples=200).progress
            [0.25, 0.5]
        """
        n = self.planned_samples
        return [s / n if n else math.nan for s in self.seen]

    @property
    def keep_rate(self) -> float:
        """Samples backpropagated per sample seen (1.0 before the first epoch ends)."""
        return self.samples_backpropagated / self.samples_seen if self.samples_seen else 1.0

    def target(self, tolerance: float) -> float:
        """This run's final metric made worse by ``tolerance``: a target for other runs.

        Example:
            >>> RunResult("plain", higher_is_better=False, values=[2.0, 1.5]).target(0.1)
            1.6
        """
        return self.final - tolerance if self.higher_is_better else self.final + tolerance

    def time_to(self, target: float) -> float:
        """Training seconds until the metric first reached ``target`` (inf if never)."""
        return time_to_target(self.times, self.values, target, self.higher_is_better)


def speedup_to_target(reference: RunResult, run: RunResult, target: float) -> float:
    """How many times sooner ``run`` reached ``target`` than ``reference``; 0.0 if never.

    Example:
        >>> plain = RunResult("plain", times=[1.0, 2.0], values=[0.5, 0.9])
        >>> sifted = RunResult("sifted", times=[0.8, 1.6], values=[0.6, 0.9])
        >>> speedup_to_target(plain, sifted, 0.85)
        1.25
    """
    t = run.time_to(target)
    return reference.time_to(target) / t if 0 < t < math.inf else 0.0


def _mean_loss(loss_fn: LossFn) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
    def train_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(model, batch).mean()

    return train_loss


@dataclass(frozen=True)
class Reuse:
    """Loss reuse for a :class:`TrainingRun`: how its :class:`~smartsift.ReuseSampler` decides.

    The run's policy decides each epoch, before loading, from the per-sample losses its own
    training steps recorded in a :class:`~smartsift.ScoreTable`; there is no scoring pass. The
    fields are the sampler's arguments of the same names; ``reference`` (one loss per dataset
    index, e.g. a small reference model's) is put in the table with
    ``ScoreTable.set_reference``, for scores that use it. ``hybrid=True`` wraps the run's
    loader in a :class:`~smartsift.SiftingDataLoader` (the hybrid mode): the samples the
    sampler trains undecided go through the scoring pass and are sifted by the same policy,
    after the run's ``sift_delay`` raw batches.
    """

    max_age: int | None = 3
    anneal: float = 0.0
    rescale: bool = False
    max_weight: float | str | None = "auto"
    score: Any = "loss"
    reference: Sequence[float] | torch.Tensor | None = None
    hybrid: bool = False
    explore: float | Callable[[int], float] = 0.0


@dataclass(frozen=True)
class Task:
    """What every run of a comparison trains, and how it is judged.

    Attributes:
        build_model: builds the model; each run calls it with torch's generator seeded to the
            run's seed (see :func:`seeded`).
        train_set: the training set; each run reads it in an order drawn from its seed.
        loss_fn: ``loss_fn(model, batch) -> Tensor (B,)``: the per-sample loss the sifting
            loader scores with.
        evaluate: ``evaluate(model) -> float``: the metric, called in eval mode without
            gradients (the mode is restored after).
        higher_is_better: whether a larger metric is better (accuracy) or a smaller one
            (a loss).
        train_loss: ``train_loss(model, batch) -> Tensor ()``: the loss each training step
            minimises; default: the mean of ``loss_fn``.
        weight_decay: the weight decay of the default optimizer (AdamW; a run given its own
            ``optimizer`` factory ignores it).
        validate: ``validate(model) -> float``: the metric on held-out data other than
            ``evaluate``'s, for a policy that reads one (``Auto(validate=...)``, built by a
            policy function of the run's model); same direction as ``evaluate``.
    """

    build_model: Callable[[], torch.nn.Module]
    train_set: Dataset[Any]
    loss_fn: LossFn
    evaluate: Callable[[torch.nn.Module], float]
    higher_is_better: bool = True
    train_loss: Callable[[torch.nn.Module, Any], torch.Tensor] | None = None
    weight_decay: float = 1e-2
    validate: Callable[[torch.nn.Module], float] | None = None

    def step_loss(self) -> Callable[[torch.nn.Module, Any], torch.Tensor]:
        """The training step's loss: ``train_loss``, or the mean of ``loss_fn``."""
        return self.train_loss if self.train_loss is not None else _mean_loss(self.loss_fn)


def _built_policy(factory: PolicyFactory, model: torch.nn.Module) -> Policy:
    if not callable(factory):
        raise TypeError(
            f"Expected `policy` to be a Policy, a function of the model returning one, or "
            f"None, but got {factory!r}."
        )
    policy = factory(model)
    if not isinstance(policy, Policy):
        raise TypeError(
            f"Expected the `policy` function to return a smartsift Policy, but it returned "
            f"{policy!r}."
        )
    return policy


@torch.no_grad()
def _evaluate(task: Task, model: torch.nn.Module) -> float:
    was_training = model.training
    model.eval()
    try:
        return float(task.evaluate(model))
    finally:
        model.train(was_training)


class TrainingRun:
    """One run of a :class:`Task`, plain (``policy=None``) or sifted, trained in segments.

    The model is built from ``seed`` and trained with AdamW (with the task's weight decay),
    or with the optimizer ``optimizer(model.parameters(), lr)`` builds; the raw batches of
    ``batch_size`` come in an order drawn from ``seed`` too (or from ``data_seed`` if given),
    so runs with the same seed start from the same weights and read the same data order; a run
    with another ``data_seed`` shows how much the order alone moves a result. With a
    ``policy``, the raw loader is wrapped in a :class:`~smartsift.SiftingDataLoader`
    (``sift_delay`` raw batches unsifted first; refined batches of ``refined_batch_size``,
    default ``batch_size``). ``policy`` may also be a function of the run's model returning
    the policy, for one that reads the model (``lambda model: ss.Auto(validate=...)``
    evaluating that model).

    The learning rate starts at ``lr``. With a ``schedule`` (a name in :data:`SCHEDULES`, or
    a :data:`ScheduleFactory`), a per-step torch scheduler is built as for plain training at
    the step batch size (the batch size of every optimizer step: ``batch_size`` for a plain
    run, the refined batch size for a sifted one), sized :attr:`total_steps` =
    ``epochs * ceil(N / step batch size)``. A plain run steps it after every optimizer step and
    so ends exactly at its end. A sifted run takes fewer steps; it steps the scheduler through
    a :class:`~smartsift.DataSchedule`, by the data consumed, so it too ends exactly at its
    end (a loss-reuse run through a :class:`~smartsift.ReuseSchedule`, by the share of each
    epoch trained); ``follow_data=False`` steps it once per optimizer step instead, as a
    schedule written
    for plain training would, which leaves it unfinished (to show the difference).
    ``schedule=None`` keeps the rate constant.

    :meth:`advance` trains until the next evaluation (every ``len(raw loader) //
    evals_per_epoch`` training steps, and at each epoch's end) and returns False once all
    ``epochs`` are done. ``clock`` measures training time (``time.process_time`` gives CPU
    seconds, steadier than the wall clock on a busy machine); evaluation time is excluded.
    """

    def __init__(
        self,
        name: str,
        task: Task,
        *,
        epochs: int,
        batch_size: int,
        lr: float,
        policy: Policy | PolicyFactory | None = None,
        sift_delay: int = 0,
        refined_batch_size: int | None = None,
        seed: int = 0,
        data_seed: int | None = None,
        evals_per_epoch: int = 2,
        schedule: str | ScheduleFactory | None = None,
        follow_data: bool = True,
        reuse: Reuse | None = None,
        clock: Callable[[], float] = time.perf_counter,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        for arg, value in (("epochs", epochs), ("batch_size", batch_size)):
            if value < 1:
                raise ValueError(f"Expected `{arg}` to be a positive int, but got {value!r}.")
        if reuse is not None and policy is None:
            raise ValueError(
                "Expected a `policy` with `reuse` (loss reuse needs a policy to decide with), "
                "but got policy=None."
            )
        factory = _schedule_factory(schedule)
        self.task = task
        self.model = seeded(task.build_model, seed)
        if policy is not None and not isinstance(policy, Policy):
            policy = _built_policy(policy, self.model)
        self._optimizer_factory = optimizer or functools.partial(
            torch.optim.AdamW, weight_decay=task.weight_decay
        )
        self.optimizer = self._optimizer_factory(self.model.parameters(), lr)
        order = torch.Generator().manual_seed(seed if data_seed is None else data_seed)
        self.raw: DataLoader[Any] = DataLoader(
            task.train_set, batch_size=batch_size, shuffle=True, generator=order
        )
        self.loader: Any = self.raw
        self.step_batch_size = batch_size
        self.n_train = len(task.train_set)  # type: ignore[arg-type]
        self.sampler: ReuseSampler | None = None
        self.plain_batches = len(self.raw)
        self._tuple_samples = isinstance(task.train_set[0], tuple)
        if reuse is not None and policy is not None:
            self.sampler = _reuse_sampler(reuse, policy, task, order, epochs, seed)
            # The loader draws its workers' base seed from `order` before the sampler shuffles,
            # as the plain loader does, so that the first epoch reads the plain run's order.
            self.raw = self.loader = DataLoader(
                IndexedDataset(task.train_set),
                batch_size=batch_size,
                sampler=self.sampler,
                generator=order,
            )
            if reuse.hybrid:
                self.loader = SiftingDataLoader(
                    self.raw,
                    self.model,
                    _without_ids(task.loss_fn, self._tuple_samples),
                    sift_delay=sift_delay,
                    seed=seed,
                )
        elif policy is not None:
            self.loader = SiftingDataLoader(
                self.raw,
                self.model,
                task.loss_fn,
                policy=policy,
                sift_delay=sift_delay,
                seed=seed,
                batch_size=refined_batch_size,
            )
            self.step_batch_size = refined_batch_size or batch_size
        self.epochs = epochs
        self.base_lr = lr
        self.clock = clock
        self.eval_every = max(1, self.plain_batches // max(1, evals_per_epoch))
        self.total_steps = epochs * math.ceil(self.n_train / self.step_batch_size)
        self.scheduler: LRScheduler | None = None
        self.data_schedule: DataSchedule | ReuseSchedule | None = None
        if factory is not None:
            self.scheduler = factory(self.optimizer, self.total_steps)
            if self.sampler is not None and follow_data:
                self.data_schedule = ReuseSchedule(
                    self.scheduler,
                    self.sampler,
                    batch_size=batch_size,
                    steps_per_epoch=self.plain_batches,
                    total_steps=self.total_steps,
                    loader=self.loader if isinstance(self.loader, SiftingDataLoader) else None,
                )
            elif isinstance(self.loader, SiftingDataLoader) and follow_data:
                self.data_schedule = DataSchedule(
                    self.scheduler,
                    self.loader,
                    batch_size=self.step_batch_size,
                    total_steps=self.total_steps,
                )
        self.result = RunResult(
            name, higher_is_better=task.higher_is_better, planned_samples=epochs * self.n_train
        )
        self._seen = 0
        self._train_loss = task.step_loss()
        self._segments = self._train()

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def table(self) -> ScoreTable | None:
        """A loss-reuse run's score table (None for other runs)."""
        return None if self.sampler is None else self.sampler.table

    @property
    def lr(self) -> float:
        """The learning rate of the optimizer's first parameter group now."""
        return float(self.optimizer.param_groups[0]["lr"])

    def advance(self) -> bool:
        """Trains up to the next evaluation; returns False when the run is finished."""
        return next(self._segments, None) is not None

    def warm_up(self, steps: int = 3) -> None:
        """Runs a few training steps and scoring passes on a copy of the model, untimed.

        The first calls of a process pay one-off costs (memory pools, kernel selection) that
        would otherwise be charged to whichever run goes first. The data order is untouched.
        """
        model = copy.deepcopy(self.model)
        optimizer = self._optimizer_factory(model.parameters(), self.base_lr)
        dataset = self.task.train_set
        n = min(self.raw.batch_size or 1, self.n_train)
        batch = self.raw.collate_fn([dataset[i] for i in range(n)])
        train_loss = self.task.step_loss()
        for _ in range(steps):
            loss = train_loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                self.task.loss_fn(model.eval(), batch)
            model.train()

    def _step_schedule(self) -> None:
        if self.data_schedule is not None:
            self.data_schedule.step()
        elif self.scheduler is not None:
            self.scheduler.step()

    def _counts(self, epoch: int, in_epoch: int) -> tuple[int, int]:
        """Raw samples consumed so far, and those a scoring pass ranked.

        A loss-reuse epoch covers the training set in fewer batches: after ``in_epoch`` of its
        batches it has consumed that share of the set.
        """
        if self.sampler is not None and isinstance(self.loader, SiftingDataLoader):
            # The hybrid mode: the sampler's epoch, read in raw batches; the pass's scored ones.
            stats, raw_batches = self.loader.stats, max(1, len(self.raw))
            pulled = min(
                self.n_train, self.loader.raw_batches_in_epoch * self.n_train // raw_batches
            )
            done = epoch * self.n_train + (0 if in_epoch == 0 else pulled)
            return done, stats.samples_seen - stats.samples_passed
        if isinstance(self.loader, SiftingDataLoader):
            stats = self.loader.stats
            return stats.samples_seen, stats.samples_seen - stats.samples_passed
        if self.sampler is not None:
            batches = max(1, len(self.loader))
            return epoch * self.n_train + min(self.n_train, in_epoch * self.n_train // batches), 0
        return self._seen, 0

    def _decided_keep(self) -> float:
        if self.sampler is not None and isinstance(self.loader, SiftingDataLoader):
            epochs = self.sampler.epoch_stats.values()
            stats = self.loader.stats
            scored = stats.samples_seen - stats.samples_passed
            decided = sum(e.decided for e in epochs) + scored
            kept = sum(e.kept for e in epochs) + stats.samples_kept - stats.samples_passed
            return kept / decided if decided else math.nan
        if isinstance(self.loader, SiftingDataLoader):
            return self.loader.stats.sift_keep_rate
        if self.sampler is not None:
            epochs = self.sampler.epoch_stats.values()
            decided = sum(e.decided for e in epochs)
            return sum(e.kept for e in epochs) / decided if decided else math.nan
        return math.nan

    def _step_loss(self, batch: Any) -> tuple[torch.Tensor, int]:
        """The training step's loss and batch size; a loss-reuse step records its losses."""
        if self.sampler is None:
            return self._train_loss(self.model, batch), batch_size_of(batch)
        ids, batch = _split_ids(batch, self._tuple_samples)
        per_sample = self.task.loss_fn(self.model, batch)
        self.sampler.table.update(ids, per_sample)
        if self.sampler.rescale:
            per_sample = per_sample * self.sampler.weights(ids).to(per_sample.dtype)
        return per_sample.mean(), int(ids.numel())

    def _record(self, elapsed: float, epoch: int, in_epoch: int, again: bool = False) -> None:
        """Appends an evaluation; ``again``: no step since the last one, so its value holds."""
        result = self.result
        seen, scored = self._counts(epoch, in_epoch)
        result.times.append(elapsed)
        result.values.append(result.values[-1] if again else _evaluate(self.task, self.model))
        result.lrs.append(self.lr)
        result.seen.append(seen)
        result.scored.append(scored)
        result.trained.append(result.samples_backpropagated)
        result.decided_keep = self._decided_keep()

    def _train(self) -> Iterator[bool]:
        optimizer, result = self.optimizer, self.result
        elapsed, now = 0.0, self.clock
        for epoch in range(self.epochs):
            start = now()
            step = -1
            for step, batch in enumerate(self.loader):
                loss, n = self._step_loss(batch)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                self._step_schedule()
                result.steps += 1
                result.samples_backpropagated += n
                self._seen += n
                if (step + 1) % self.eval_every == 0:
                    elapsed += now() - start
                    self._record(elapsed, epoch, step + 1)
                    yield True
                    start = now()
            elapsed += now() - start
            result.samples_seen += self.n_train
            # An evaluation after the epoch's last step already measured this model.
            again = step >= 0 and (step + 1) % self.eval_every == 0
            self._record(elapsed, epoch + 1, 0, again=again)
            result.epoch_ends.append(elapsed)
            result.train_seconds = elapsed
            yield True


def run_at_step_size(
    name: str,
    task: Task,
    *,
    epochs: int,
    step_batch_size: int,
    raw_batch_size: int,
    sift_delay_epochs: int,
    lr: float,
    policy: Policy | PolicyFactory | None = None,
    reuse: Reuse | None = None,
    seed: int = 0,
    data_seed: int | None = None,
    evals_per_epoch: int = 2,
    schedule: str | ScheduleFactory | None = None,
    clock: Callable[[], float] = time.perf_counter,
    optimizer: OptimizerFactory | None = None,
) -> TrainingRun:
    """A :class:`TrainingRun` whose every optimizer step is of ``step_batch_size`` samples.

    A plain run (``policy=None``) reads batches of ``step_batch_size``, and so does a loss-reuse
    run (``policy`` and ``reuse``: it skips samples before loading). A sifted run (``policy``
    alone) reads raw batches of ``raw_batch_size``, trains the first ``sift_delay_epochs``
    epochs of them unsifted, then refines each to ``step_batch_size`` kept samples. The other
    arguments are :class:`TrainingRun`'s.

    Example:
        >>> import torch.nn.functional as F
        >>> from torch.utils.data import TensorDataset
        >>> from smartsift.policies import TopK
        >>> x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
        >>> def loss_fn(model, batch):
        ...     return F.cross_entropy(model(batch[0]), batch[1], reduction="none")
        >>> task = Task(lambda: torch.nn.Linear(4, 2), TensorDataset(x, (x[:, 0] > 0).long()),
        ...             loss_fn, lambda model: 0.0)
        >>> args = dict(epochs=1, step_batch_size=8, raw_batch_size=16, sift_delay_epochs=1,
        ...             lr=0.1)
        >>> plain = run_at_step_size("plain", task, **args)
        >>> sifted = run_at_step_size("sifted", task, policy=TopK(0.5), **args)
        >>> plain.raw.batch_size, sifted.raw.batch_size, sifted.step_batch_size
        (8, 16, 8)
        >>> sifted.loader.sift_delay    # one epoch of raw batches
        4
    """
    sifts = policy is not None and reuse is None
    raw = raw_batch_size if sifts else step_batch_size
    n_raw = math.ceil(len(task.train_set) / raw)  # type: ignore[arg-type]
    return TrainingRun(
        name,
        task,
        epochs=epochs,
        batch_size=raw,
        lr=lr,
        policy=policy,
        sift_delay=sift_delay_epochs * n_raw,
        refined_batch_size=step_batch_size,
        seed=seed,
        data_seed=data_seed,
        evals_per_epoch=evals_per_epoch,
        schedule=schedule,
        reuse=reuse,
        clock=clock,
        optimizer=optimizer,
    )


def _split_ids(batch: Any, tuple_samples: bool) -> tuple[torch.Tensor, Any]:
    """The ids :class:`~smartsift.IndexedDataset` added to a batch, and the batch without them."""
    if isinstance(batch, dict):
        rest = dict(batch)
        return rest.pop("index"), rest
    ids, *rest = batch
    return ids, rest if tuple_samples else rest[0]


def _without_ids(loss_fn: LossFn, tuple_samples: bool) -> LossFn:
    """The task's loss of batches that carry their ids (the hybrid mode's scoring pass)."""

    def scored(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        return loss_fn(model, _split_ids(batch, tuple_samples)[1])

    return scored


def _reuse_sampler(
    reuse: Reuse,
    policy: Policy,
    task: Task,
    order: torch.Generator,
    epochs: int,
    seed: int,
) -> ReuseSampler:
    """The sampler of a loss-reuse run, with its score table (the same first order as plain)."""
    n = len(task.train_set)  # type: ignore[arg-type]
    table = ScoreTable(n, distributed=False)
    if reuse.reference is not None:
        table.set_reference(torch.arange(n), torch.as_tensor(reuse.reference))
    return ReuseSampler(
        RandomSampler(task.train_set, generator=order),  # type: ignore[arg-type]
        table,
        policy,
        score=reuse.score,
        max_age=reuse.max_age,
        rescale=reuse.rescale,
        max_weight=reuse.max_weight,
        epochs=epochs,
        anneal=reuse.anneal,
        explore=reuse.explore,
        seed=seed,
    )


def _schedule_factory(schedule: str | ScheduleFactory | None) -> ScheduleFactory | None:
    if schedule is None or callable(schedule):
        return schedule
    if schedule not in SCHEDULES:
        raise ValueError(
            f"Expected `schedule` to be None, a callable or one of {sorted(SCHEDULES)}, but got "
            f"{schedule!r}."
        )
    return SCHEDULES[schedule]


def train_side_by_side(
    runs: Sequence[TrainingRun], on_segment: Callable[[TrainingRun], None] | None = None
) -> list[RunResult]:
    """Advances the runs in turn, one evaluation interval each, until all are finished.

    Every run is warmed up first (see :meth:`TrainingRun.warm_up`). ``on_segment(run)`` is
    called after each segment a run trains. Returns the results in the order of ``runs``.
    """
    for run in runs:
        run.warm_up()
    active = list(runs)
    while active:
        for run in list(active):
            if not run.advance():
                active.remove(run)
            elif on_segment is not None:
                on_segment(run)
    return [run.result for run in runs]


def runs_figure(
    results: Sequence[RunResult],
    *,
    target: float | None = None,
    target_label: str = "target",
    events: Sequence[tuple[float, str]] = (),
    scale: float = 1.0,
    ylabel: str = "metric",
    xlabel: str = "training time (s), evaluation excluded",
    title: str = "",
    reference: str | None = None,
    x_unit: str = "s",
    styles: dict[str, dict[str, Any]] | None = None,
) -> Figure:
    """A matplotlib figure of each run's metric (times ``scale``) against training time.

    The first panel shows the whole of every curve. ``target`` is drawn as a dashed line
    labelled ``target_label``, with a marker where each run first reached it and that time (in
    ``x_unit``) in the run's legend entry, and a second panel zooms in on the curves around it;
    each ``(time, label)`` of ``events`` is a labelled vertical line. The run named
    ``reference`` is drawn thicker. The x axis need not be time: any measure of the work done
    at each evaluation will do (put it in ``times``). No global matplotlib state is touched
    (no pyplot).

    Example:
        >>> run = RunResult("plain", times=[1.0, 2.0], values=[0.5, 0.9])
        >>> fig = runs_figure([run], target=0.85, events=[(1.5, "sifting starts")])
        >>> fig.axes[0].get_legend_handles_labels()[1]
        ['plain: target reached at 2 s', 'target', 'sifting starts']
    """
    from matplotlib.figure import Figure

    zoom = target is not None and any(r.values for r in results)
    fig = Figure(figsize=(11, 4.5) if zoom else (7, 4.5), dpi=110)
    axes = fig.subplots(1, 2 if zoom else 1, squeeze=False)[0]
    for ax in axes:
        _draw(ax, results, target, target_label, events, scale, reference, x_unit, styles or {})
        ax.set_xlim(left=0.0)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    shown = [scale * v for r in results for v in r.values if math.isfinite(v)]
    if target is not None:
        shown.append(scale * target)
    if shown:
        lo, hi = min(shown), max(shown)
        margin = 0.04 * (hi - lo) or 0.5 * abs(hi) or 1.0
        axes[0].set_ylim(lo - margin, hi + margin)
    higher = all(r.higher_is_better for r in results)
    if zoom and target is not None:
        # Centred on the target, as far as the best value any run reached beyond it.
        best = (max if higher else min)(v for r in results for v in r.values)
        reach = 1.2 * max(abs(best - target), 1e-3 * max(1.0, abs(target)))
        axes[1].set_ylim(scale * (target - reach), scale * (target + reach))
        axes[1].set_title("near the target", fontsize=10)
    axes[0].legend(loc="lower right" if higher else "upper right", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def _draw(
    ax: Any,
    results: Sequence[RunResult],
    target: float | None,
    target_label: str,
    events: Sequence[tuple[float, str]],
    scale: float,
    reference: str | None,
    x_unit: str = "s",
    styles: dict[str, dict[str, Any]] | None = None,
) -> None:
    """Draws the curves, the target, the marker where each run reached it, and the events."""
    if len(results) > 10:
        from matplotlib import colormaps

        tab20 = colormaps["tab20"]
        ax.set_prop_cycle(color=[tab20(i) for i in range(20)])
    for result in results:
        label = result.name
        values = [scale * v for v in result.values]
        index = None
        if target is not None:
            index = _first_reaching(result.values, target, result.higher_is_better)
            reached = (
                "never reached"
                if index is None
                else f"reached at {result.times[index]:.3g} {x_unit}".rstrip()
            )
            label = f"{result.name}: target {reached}"
        style = {"linewidth": 2.0 if result.name == reference else 1.2}
        style.update((styles or {}).get(result.name, {}))
        (line,) = ax.plot(result.times, values, label=label, **style)
        if index is not None:
            ax.plot(
                result.times[index], values[index], marker="o", markersize=7,
                color=line.get_color(), markeredgecolor="black", linestyle="none",
            )  # fmt: skip
    if target is not None:
        ax.axhline(scale * target, color="grey", linestyle="--", linewidth=1, label=target_label)
    for x, label in events:
        ax.axvline(x, color="black", linestyle=":", linewidth=1.2, label=label)


def plot_runs(results: Sequence[RunResult], path: str | Path, **figure_args: Any) -> Path:
    """Saves :func:`runs_figure` of ``results`` as a PNG at ``path``; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    runs_figure(results, **figure_args).savefig(path)
    return path
