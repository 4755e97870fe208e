"""Hugging Face ``Trainer`` integration: one call makes a Trainer train on sifted data.

Two modes, one switch: ``enable_sifting(trainer, policy, mode="reuse")`` records the per-sample
losses of the Trainer's own training step and skips, each epoch, the samples they say are learnt
(no extra forward pass; see :mod:`smartsift.integrations.hf_reuse` for its hooks, epochs and
resume); ``mode="scoring"`` (the default) scores every raw batch with an extra no-grad forward
pass and trains the kept samples. What follows describes the scoring mode.

``enable_sifting(trainer)`` wraps the training loader the Trainer builds in a
:class:`~smartsift.SiftingDataLoader`, picks a per-sample loss for the model's head (see
:mod:`smartsift.integrations.hf_losses`), keeps the learning-rate schedule and the logged epoch
in step with the data, and puts smartsift's stats into the Trainer's logs. Epoch-based runs
(``num_train_epochs``) work as they are; ``max_steps`` is not needed.

How it hooks in, and why that is sound:
    ``get_train_dataloader`` is the Trainer's documented override point for the training
    loader, and ``log`` its override point for what is logged. ``enable_sifting`` sets both as
    attributes of the one ``trainer`` instance it is given (calling the Trainer's own methods
    inside), and adds a ``TrainerCallback``; no class, module or function of transformers,
    accelerate or torch is replaced, other Trainer instances are untouched, subclasses keep
    their overrides, and :meth:`TrainerSifting.disable` removes all three.

The loader:
    The Trainer builds its loader as usual (collator, sampler, ``accelerator.prepare``: under
    DDP accelerate gives every rank its own shard, with the same number of batches, already on
    the rank's device). smartsift wraps that prepared loader, so it scores each rank's shard on
    that rank with the unwrapped model (no collective runs in the scoring pass) and, through
    ``torch.distributed``, keeps the ranks in lockstep: every rank yields the same number of
    refined batches, so every rank takes the same optimizer steps.

Epochs, schedule, progress bar and logs (epoch-based runs):
    The Trainer sizes an epoch, and its learning-rate schedule, by ``len(train_dataloader)``
    and stops an epoch when that many batches were taken, so the length must never fall short
    of the batches an epoch really gives. It is therefore the most one epoch can give: the
    unsifted count (``len`` of the Trainer's loader, more when ``batch_size`` is smaller than
    the raw batches, one more under DDP for the leftovers shared out at the epoch's end). A
    sifted epoch gives fewer; the Trainer then asks for the rest of its epoch and gets nothing,
    and the loader ends the epoch there (``control.should_epoch_stop``). The schedule,
    ``max_steps`` and warm-up are thus counted in unsifted steps, that is in data: the callback
    moves the scheduler forward after every optimizer step to the fraction of the run's raw
    batches consumed so far (``align_schedule=True``), so warm-up spans the same data as in a
    plain run and the schedule ends (decays fully) exactly where training ends. A fractional
    ``num_train_epochs`` stops training when that much data was consumed. The logged
    ``epoch`` is raw batches consumed per raw batches of an epoch. The progress bar counts
    optimizer steps against the unsifted total, so it finishes early, at about the kept
    fraction.

With ``max_steps`` set:
    The loader has no length, so the Trainer runs as many sifted epochs as ``max_steps``
    optimizer steps need, and the schedule follows optimizer steps as usual.

Logs:
    Every training log (those with ``loss`` or ``train_loss``) also holds this process's
    ``loader.stats`` as ``smartsift/<name>`` (``smartsift/keep_rate``,
    ``smartsift/samples_seen``, ``smartsift/samples_trained``, ... ; NaN values left out), so
    they reach ``trainer.state.log_history`` and every ``report_to`` integration.

Checkpoints and resume (both modes):
    Every Trainer checkpoint holds each rank's sifting state (``smartsift_rank<r>.pt``: the
    loader's state and the epoch of data), and ``trainer.train(resume_from_checkpoint=...)``
    restores it: the resumed run continues the interrupted epoch where it stopped, trains the
    same batches at the same learning rates as the uninterrupted run, and the Trainer's own
    skipping of batches is turned off (``get_resumed_dataloader``, its documented override for
    stateful loaders). The integration numbers the epochs of data itself, as the Trainer's count
    of epochs does not hold for sifted ones (:mod:`smartsift.integrations.hf_hooks`).

Limits:
    DDP or a single process (not DeepSpeed or FSDP: the scoring pass needs the whole model;
    loss reuse runs under FSDP too).
    With ``gradient_accumulation_steps > 1`` the gradients of an epoch's last, incomplete
    group are applied with the next epoch's first step (the Trainer steps only on full groups
    or at ``len``), and at the end of training they are not applied.

Example:
    >>> import tempfile, torch, transformers
    >>> import smartsift as ss
    >>> from smartsift.integrations.transformers import enable_sifting
    >>> config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
    ...                                  num_attention_heads=2, intermediate_size=32)
    >>> model = transformers.BertForSequenceClassification(config)
    >>> data = [{"input_ids": torch.randint(0, 50, (8,)), "labels": i % 2} for i in range(64)]
    >>> args = transformers.TrainingArguments(
    ...     tempfile.mkdtemp(), per_device_train_batch_size=16, num_train_epochs=2,
    ...     report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
    ...     logging_strategy="no")
    >>> trainer = transformers.Trainer(model=model, args=args, train_dataset=data)
    >>> sifting = enable_sifting(trainer, ss.TopK(0.5), seed=0)
    >>> _ = trainer.train()  # doctest: +ELLIPSIS
    {...}
    >>> sifting.stats.samples_seen, sifting.stats.samples_trained, trainer.state.global_step
    (128, 64, 4)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from typing import Any

import torch

try:
    import transformers
    from transformers import Trainer, TrainerCallback
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.transformers needs transformers and accelerate: "
        "pip install 'smartsift[transformers]'."
    ) from err

from smartsift.batches.padding import Padding
from smartsift.engine import checkpoint as ckpt
from smartsift.integrations.adapter import LazySifter, check_loader_kwargs, check_settings
from smartsift.integrations.hf_hooks import EpochIterator, TrainerHooks
from smartsift.integrations.hf_losses import loss_for_model, outputs_loss_for_model
from smartsift.integrations.hf_reuse import TrainerReuse
from smartsift.integrations.tensorboard import stats_scalars
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.reuse import ReuseSampler
from smartsift.modes.schedules import catch_up_steps, schedule_position
from smartsift.modes.scoring import LossFn
from smartsift.modes.table import ScoreTable
from smartsift.policies import Policy

__all__ = [
    "SiftingCallback",
    "TrainerSifting",
    "batches_bound",
    "enable_sifting",
    "schedule_position",
]


def enable_sifting(
    trainer: Trainer,
    policy: Policy | None = None,
    loss_fn: LossFn | None = None,
    *,
    mode: str = "scoring",
    sift_delay: int = 0,
    padding: Any = "auto",
    seed: int | None = None,
    log_stats: bool = True,
    align_schedule: bool = True,
    **loader_kwargs: Any,
) -> TrainerSifting | TrainerReuse:
    """Makes ``trainer`` train on sifted data, single process or under torchrun DDP.

    See the module documentation for how it hooks in and what happens to epochs, the
    learning-rate schedule, the progress bar and the logs.

    Args:
        trainer: a ``transformers.Trainer`` (or subclass), before ``trainer.train()``.
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``.
        loss_fn: ``loss_fn(model, batch) -> Tensor (B,)``; by default chosen from the model's
            head by :func:`~smartsift.integrations.hf_losses.loss_for_model`. Scoring mode only.
        mode: ``"scoring"`` (every raw batch scored by an extra no-grad forward pass, its
            kept samples trained) or ``"reuse"`` (loss reuse: the losses of the training step
            itself decide which samples the next epoch skips, with no extra pass; see
            :mod:`smartsift.integrations.hf_reuse`). In ``"reuse"`` the further keyword
            arguments are :class:`~smartsift.ReuseSampler`'s (``score``, ``max_age``,
            ``rescale``, ``max_weight``, ``anneal``, ``explore``, ``chunk_size``, ``audit``),
            and the scoring options (``loss_fn``, ``sift_delay``, ``padding``) do not apply.
        sift_delay: raw batches (per rank) trained unsifted before sifting starts.
        padding: a :class:`~smartsift.Padding` spec to join kept samples of batches padded to
            different lengths (a collator padding each batch to its longest sequence). The
            default ``"auto"`` builds ``Padding.huggingface(tokenizer, trim=True)`` from the
            Trainer's ``processing_class`` (else from its collator's tokenizer, as
            ``DataCollatorWithPadding(tokenizer)`` holds it) when it has a pad token; ``None``
            joins only equal shapes.
        seed: seed of the loader's generator; default ``trainer.args.seed``.
        log_stats: add the loader's stats to the Trainer's training logs.
        align_schedule: keep the learning-rate schedule in step with the data consumed
            (epoch-based runs); see the module documentation.
        **loader_kwargs: further :class:`~smartsift.SiftingDataLoader` arguments, e.g.
            ``batch_size``, ``drop_last`` (default: ``trainer.args.dataloader_drop_last``),
            ``nonfinite``, ``autocast_dtype``, ``repeat_delay_per_epoch``, ``audit``.

    Returns:
        A :class:`TrainerSifting`: its ``loader`` and ``stats`` are those of the latest
        ``trainer.train()`` call; ``disable()`` undoes this call.

    Raises:
        TypeError: if ``trainer`` is not a Trainer, or an argument does not fit the loader.
        ValueError: if the model's head has no ready loss and ``loss_fn`` is not given, the
            Trainer runs DeepSpeed or FSDP, or a setting is invalid.
        RuntimeError: if sifting is already enabled on ``trainer``.
    """
    if not isinstance(trainer, Trainer):
        raise TypeError(
            f"Expected `trainer` to be a transformers.Trainer, but got {type(trainer).__name__}."
        )
    if isinstance(
        getattr(vars(trainer).get("get_train_dataloader"), "__self__", None), TrainerHooks
    ):
        raise RuntimeError(
            "Sifting is already enabled on this trainer; call disable() on the object "
            "enable_sifting returned before enabling it again."
        )
    sharded = getattr(trainer, "is_fsdp_enabled", False)
    if getattr(trainer, "is_deepspeed_enabled", False) or (sharded and mode != "reuse"):
        raise ValueError(
            "Expected a Trainer running on one process or under DDP, but it uses DeepSpeed or "
            "FSDP: the scoring pass needs the whole model on every rank. Train with DDP, or "
            "use mode='reuse' (no scoring pass) with FSDP."
        )
    model = _model_of(trainer)
    if mode == "reuse":
        return _enable_reuse(
            trainer, policy, loss_fn, sift_delay, padding, seed, log_stats, align_schedule,
            loader_kwargs,
        )  # fmt: skip
    if mode != "scoring":
        raise ValueError(
            f"Expected `mode` to be 'scoring' (an extra forward pass scores each batch) or "
            f"'reuse' (the training step's own losses sift the next epoch), but got {mode!r}."
        )
    if loss_fn is None:
        loss_fn = loss_for_model(model)
    if isinstance(padding, str) and padding == "auto":
        padding = _auto_padding(trainer)
    kwargs = check_loader_kwargs(loader_kwargs, caller="enable_sifting")
    if padding is not None:
        kwargs["padding"] = padding
    kwargs.setdefault("drop_last", bool(trainer.args.dataloader_drop_last))
    kwargs["sift_delay"] = sift_delay
    kwargs["seed"] = trainer.args.seed if seed is None else seed
    check_settings(model, loss_fn, policy, kwargs)  # here, not in train()
    sifting = TrainerSifting(trainer, loss_fn, policy, kwargs, log_stats, align_schedule)
    sifting.attach(sifting.callback)
    return sifting


def _enable_reuse(
    trainer: Trainer,
    policy: Policy | None,
    loss_fn: LossFn | None,
    sift_delay: int,
    padding: Any,
    seed: int | None,
    log_stats: bool,
    align_schedule: bool,
    sampler_kwargs: dict[str, Any],
) -> TrainerReuse:
    """``enable_sifting(..., mode="reuse")``: checks the settings, then attaches."""
    scoring_only = {
        "loss_fn": (loss_fn, None),
        "sift_delay": (sift_delay, 0),
        "padding": (padding, "auto"),
    }
    given = [f"`{k}`={v!r}" for k, (v, default) in scoring_only.items() if v is not default]
    if given:
        raise TypeError(
            f"{', '.join(given)} only apply to the scoring pass (mode='scoring'); loss reuse "
            "records the losses of the training step itself, from the model's head. Leave "
            "them out."
        )
    reserved = {
        "sampler": "it wraps the Trainer's own sampler: leave `sampler` out",
        "table": "it builds the score table: leave `table` out",
        "epochs": "it reads `num_train_epochs`: leave `epochs` out",
        "seed": "pass `seed` as enable_sifting's own argument",
        "num_replicas": "accelerate shards the batches over ranks: leave it out",
        "rank": "accelerate shards the batches over ranks: leave it out",
        "drop_last": "it follows `dataloader_drop_last`: leave it out",
    }
    kwargs = check_loader_kwargs(
        sampler_kwargs, caller="enable_sifting(mode='reuse')", reserved=reserved,
        target=ReuseSampler,
    )  # fmt: skip
    outputs_loss = outputs_loss_for_model(_model_of(trainer))
    # The settings the sampler would refuse, refused now rather than in train().
    ReuseSampler([0], ScoreTable(1), policy, epochs=1, **kwargs)
    reuse = TrainerReuse(
        trainer, outputs_loss, policy, kwargs,
        seed=trainer.args.seed if seed is None else seed,
        log_stats=log_stats, align_schedule=align_schedule, callback_factory=SiftingCallback,
    )  # fmt: skip
    reuse.attach(reuse.callback)
    return reuse


class TrainerSifting(LazySifter, TrainerHooks):
    """What :func:`enable_sifting` attached to one Trainer in the scoring mode; built by it.

    Attributes:
        trainer: the Trainer.
        loader: the :class:`~smartsift.SiftingDataLoader` of the latest ``trainer.train()``
            call (a new one each call), or None before the first.
        epoch: the epoch of data being trained (0 first), counted by the integration.
        callback: the :class:`SiftingCallback` added to the Trainer.
    """

    hooks = ("get_train_dataloader", "get_resumed_dataloader")
    mode = "scoring"

    def __init__(
        self,
        trainer: Trainer,
        loss_fn: LossFn,
        policy: Policy | None,
        loader_kwargs: dict[str, Any],
        log_stats: bool,
        align_schedule: bool,
    ) -> None:
        LazySifter.__init__(self, loss_fn, policy, loader_kwargs)
        TrainerHooks.__init__(self, trainer, int(loader_kwargs["seed"]), log_stats, align_schedule)
        self.raw_batches_per_epoch: int | None = None  # len() of the Trainer's own loader
        self.callback = SiftingCallback(self)

    def ready(self) -> bool:
        return self.loader is not None

    def log_values(self) -> dict[str, float]:
        """The stats as the Trainer's logs hold them: ``smartsift/<name>``, NaN left out."""
        return stats_scalars(self.stats)

    def data_epochs(self) -> float | None:
        """Epochs of raw data consumed so far in the latest run (None if unknown)."""
        if self.loader is None or not self.raw_batches_per_epoch:
            return None
        return self.loader.stats.raw_batches / self.raw_batches_per_epoch

    # -------------------------------------------------------------- the trainer's overrides
    def get_train_dataloader(self) -> _SiftedTrainLoader:
        """The trainer's training loader, wrapped in a sifting loader (the instance override)."""
        trainer = self.trainer
        raw = self._original("get_train_dataloader")()
        # The unwrapped model (accelerate wraps it in DDP later, sharing its parameters).
        self.build(raw, _model_of(trainer))
        self.new_run()
        try:
            n_raw: int | None = len(raw)
        except TypeError:
            n_raw = None
        self.raw_batches_per_epoch = n_raw
        length = None
        if trainer.args.max_steps <= 0 and n_raw is not None:
            raw_bs = _raw_batch_size(raw, trainer)
            length = batches_bound(
                n_raw,
                raw_bs,
                self.loader_kwargs.get("batch_size") or raw_bs,
                trainer.args.world_size,
            )
        return _SiftedTrainLoader(self, raw, length)

    # -------------------------------------------------------------- epochs and checkpoints
    def epoch_batches(self) -> SiftingDataLoader:
        assert self.loader is not None
        self.loader.set_epoch(self.epoch)
        return self.loader

    def state_dict(self) -> dict[str, Any]:
        """This rank's sifting state: the loader's and the epoch."""
        assert self.loader is not None
        return {
            ckpt.VERSION_KEY: ckpt.VERSION,
            "epoch": self.epoch,
            "loader": self.loader.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output before the first batch of a resumed run."""
        ckpt.check_version(state, "TrainerSifting", "Pass the state TrainerSifting saved.")
        if "loader" not in state:
            raise ValueError(
                "The checkpoint's sifting state was saved by a loss-reuse run; resume it with "
                "enable_sifting(..., mode='reuse')."
            )
        assert self.loader is not None
        self.loader.load_state_dict(state["loader"])
        self.epoch = int(state["epoch"])
        self._batches = None


class SiftingCallback(TrainerCallback):
    """Keeps the Trainer's schedule, epoch and stopping in step with the data sifted.

    After every optimizer step it moves the learning-rate scheduler to the fraction of the
    run's raw batches consumed (epoch-based runs, ``align_schedule``); after every step it sets
    ``state.epoch`` to the raw epochs consumed, and stops a run with a fractional
    ``num_train_epochs`` when that much data was consumed (in loss reuse, any run when
    ``num_train_epochs`` epochs of data are done). It saves the sifting state with every
    checkpoint and restores it on resume. Added by :func:`enable_sifting`.
    """

    def __init__(self, sifting: TrainerSifting | TrainerReuse) -> None:
        self.sifting = sifting

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.global_step > 0:
            self.sifting.load(args.output_dir, state.global_step)

    def on_optimizer_step(
        self, args: Any, state: Any, control: Any, lr_scheduler: Any = None, **kwargs: Any
    ) -> None:
        sifting = self.sifting
        if not sifting.align_schedule or args.max_steps > 0 or not _steps_per_call(lr_scheduler):
            return
        epochs = sifting.data_epochs()
        if epochs is None or args.num_train_epochs <= 0:
            return
        target = schedule_position(epochs / args.num_train_epochs, state.max_steps)
        # The Trainer steps the scheduler once right after this event; catch up to the data.
        for _ in range(catch_up_steps(target, lr_scheduler.last_epoch + 1)):
            lr_scheduler.step()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        epochs = self.sifting.data_epochs()
        if epochs is None:
            return
        state.epoch = epochs
        # Loss reuse counts its own epochs (a resumed Trainer's count of epochs is off for
        # sifted ones); the scoring mode's epochs are the Trainer's, but for a fraction.
        ends = self.sifting.mode == "reuse" or args.num_train_epochs % 1 != 0
        if args.max_steps <= 0 and ends and epochs >= args.num_train_epochs:
            control.should_training_stop = True

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        folder = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        self.sifting.save(folder)


def batches_bound(raw_batches: int, raw_batch_size: int, batch_size: int, world_size: int) -> int:
    """The most refined batches one epoch of ``raw_batches`` raw batches can give.

    Kept samples form batches of ``batch_size``; raw batches passed through unsifted during
    ``sift_delay`` stay whole when they fit one refined batch, and are cut to size otherwise.
    Under DDP the epoch's leftovers shared out across ranks add at most one batch.

    Example:
        >>> batches_bound(10, 32, 32, 1), batches_bound(10, 32, 16, 1), batches_bound(10, 32, 64, 2)
        (10, 20, 11)
    """
    cut = math.ceil(raw_batches * raw_batch_size / batch_size)
    return max(raw_batches, cut) + (1 if world_size > 1 else 0)


class _SiftedTrainLoader:
    """The training loader the Trainer sees: the sifting loader, with a length it can trust.

    ``len()`` is :func:`batches_bound` in epoch-based runs and absent when ``max_steps`` is set.
    Each iteration is one epoch of data (:class:`~smartsift.integrations.hf_hooks.
    EpochIterator`), numbered by the integration; the Trainer's ``set_epoch`` is ignored.
    ``dataset`` and ``batch_sampler`` are the Trainer's loader's, as the Trainer reads them.
    """

    def __init__(self, sifting: TrainerSifting, raw: Any, length: int | None) -> None:
        self.sifting = sifting
        self.raw = raw
        self._length = length

    def __iter__(self) -> Iterator[Any]:
        return EpochIterator(self.sifting)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError(
                "A sifted training loader has no length when max_steps is set (or the Trainer's "
                "loader has none): sifted epochs are as long as the data sifted says."
            )
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the integration numbers the epochs of data itself."""

    @property
    def sifter(self) -> SiftingDataLoader | None:
        return self.sifting.loader

    @property
    def dataset(self) -> Any:
        return getattr(self.raw, "dataset", None)

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.raw, "batch_sampler", None)

    @property
    def batch_size(self) -> int | None:
        return None if self.sifting.loader is None else self.sifting.loader.batch_size


def _auto_padding(trainer: Trainer) -> Padding | None:
    """``Padding.huggingface`` for the Trainer's tokenizer (its ``processing_class``, else its
    collator's, as ``DataCollatorWithPadding(tokenizer)`` holds it), or None without a pad
    token."""
    tokenizer = getattr(trainer, "processing_class", None)
    if tokenizer is None:
        tokenizer = getattr(trainer.data_collator, "tokenizer", None)
    tokenizer = getattr(tokenizer, "tokenizer", tokenizer)  # a processor wraps its tokenizer
    if getattr(tokenizer, "pad_token_id", None) is None:
        return None
    return Padding.huggingface(tokenizer, trim=True)


def _model_of(trainer: Trainer) -> torch.nn.Module:
    model = trainer.model
    if not isinstance(model, torch.nn.Module):
        raise ValueError(
            f"Expected the trainer to hold a model (a torch.nn.Module), but got {model!r}."
        )
    return model


def _raw_batch_size(raw: Any, trainer: Trainer) -> int:
    """The size of the Trainer's raw batches on this process."""
    size = getattr(getattr(raw, "batch_sampler", None), "batch_size", None)
    size = size or getattr(raw, "batch_size", None)
    return int(size or trainer.args.train_batch_size)


def _steps_per_call(scheduler: Any) -> bool:
    """Whether the Trainer steps ``scheduler`` once per optimizer step (not on metrics)."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        return False
    greedy = getattr(transformers.optimization, "GreedyLR", None)
    metric_driven: tuple[type, ...] = (torch.optim.lr_scheduler.ReduceLROnPlateau,)
    if isinstance(greedy, type):
        metric_driven += (greedy,)
    return not isinstance(scheduler, metric_driven)
