"""Loss reuse in the Hugging Face ``Trainer``: the training step's own losses sift the next epoch.

``enable_sifting(trainer, policy, mode="reuse")`` (:mod:`smartsift.integrations.transformers`)
builds a :class:`TrainerReuse`: a :class:`~smartsift.ReuseSampler` over the Trainer's sampler and
a :class:`~smartsift.ScoreTable` fed from the Trainer's own forward pass. No scoring pass runs,
so an epoch costs only the samples it trains.

How it hooks in (all on the one Trainer instance, undone by :meth:`TrainerReuse.disable`):
    - ``get_train_dataloader`` (the documented override point) builds the Trainer's loader as
      usual, over the same dataset with each sample's index beside it, with the Trainer's own
      collator (the unused columns removed as the Trainer removes them) and the sifting sampler.
      Each batch carries the indices under :data:`ID_KEY`.
    - ``compute_loss`` (documented override point) takes the indices out of the batch, calls the
      Trainer's own ``compute_loss``, and records each sample's loss, computed from the logits the
      model already returned (:func:`~smartsift.integrations.hf_losses.outputs_loss_for_model`),
      in the table. With ``rescale=True`` the loss is reweighted per sample.
    - ``get_resumed_dataloader`` (documented for stateful loaders) returns the loader as it is:
      a resumed run continues from the sifting state saved in the checkpoint, not by skipping
      batches.
    - ``log`` adds the epoch's decision counts as ``smartsift/<name>``.

Epochs:
    The integration numbers the epochs itself (the Trainer's count of its own epochs does not
    hold for shorter, sifted ones, nor after a resume), and the loader ends the Trainer's epoch
    when the sifted epoch's data ends. ``len()`` is the unsifted epoch's batches (the most an
    epoch can give), so the Trainer sizes ``max_steps``, its schedule and its progress bar as
    for plain training (the bar therefore finishes early, at about the kept share of its
    total); the callback moves the schedule to the share of the run's data consumed
    after each optimizer step (as in the scoring mode), and stops training when
    ``num_train_epochs`` epochs of data were consumed. With ``max_steps`` set the loader has no
    length and training runs for ``max_steps`` optimizer steps.

DDP:
    Under torchrun the table is shared (``table.update`` gathers every rank's losses; see
    :class:`~smartsift.ScoreTable`), the base sampler is seeded alike on every rank, so every
    rank makes the same decision, and accelerate deals the pruned list's batches out over the
    ranks, as it does for a plain run.

Resume:
    At every checkpoint the callback writes this rank's sifting state (the table, the sampler,
    the epoch and the batches taken in it) to ``smartsift_rank<r>.pt`` in the checkpoint folder,
    and ``trainer.train(resume_from_checkpoint=...)`` reads it back: the resumed run trains the
    samples, in order, and the learning rates of the uninterrupted run. A checkpoint folder that
    was moved away from ``output_dir`` is found with :meth:`TrainerReuse.resume_from`. The
    hooks, epochs and checkpoints both modes share are :mod:`smartsift.integrations.hf_hooks`'.

Example:
    >>> collator = IdCollator(lambda items: {"x": torch.tensor([i["x"] for i in items])},
    ...                       columns=frozenset({"x"}))
    >>> batch = collator([(4, {"x": 1, "text": "a"}), (7, {"x": 2, "text": "b"})])
    >>> batch["x"].tolist(), batch[ID_KEY].tolist()
    ([1, 2], [4, 7])
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Collection, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch.utils.data import Dataset, RandomSampler, Sampler, SequentialSampler

from smartsift.engine import checkpoint as ckpt
from smartsift.integrations.hf_hooks import EpochIterator, TrainerHooks
from smartsift.integrations.hf_losses import OutputsLossFn
from smartsift.modes.reuse import ReuseSampler
from smartsift.modes.scoring import unwrap_model
from smartsift.modes.table import ScoreTable
from smartsift.policies import Policy

__all__ = [
    "ID_KEY",
    "IdCollator",
    "IdDataset",
    "OwnEpochs",
    "TrainerReuse",
    "reweighted",
    "signature_columns",
]

ID_KEY = "smartsift_ids"
"""The batch entry holding the samples' dataset indices (taken out before the model sees it)."""


class IdDataset(Dataset[tuple[int, Any]]):
    """A map-style dataset whose samples come as ``(index, sample)``, the sample untouched.

    Example:
        >>> IdDataset([{"a": 1}])[0]
        (0, {'a': 1})
    """

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        return index, self.dataset[index]


class IdCollator:
    """Collates ``(index, sample)`` pairs with the Trainer's collator; the indices ride along.

    Args:
        collator: the Trainer's ``data_collator``.
        columns: the sample keys the model takes (:func:`signature_columns`); other keys of dict
            samples are dropped, as the Trainer drops them. None keeps every key.
    """

    def __init__(self, collator: Callable[[list[Any]], Any], columns: frozenset[str] | None):
        self.collator = collator
        self.columns = columns

    def __call__(self, features: list[tuple[int, Any]]) -> Any:
        ids = torch.tensor([index for index, _ in features], dtype=torch.long)
        columns = self.columns
        samples = [
            {k: v for k, v in s.items() if k in columns}
            if columns is not None and isinstance(s, Mapping)
            else s
            for _, s in features
        ]
        batch = self.collator(samples)
        if not isinstance(batch, MutableMapping):
            raise TypeError(
                "Expected the Trainer's data collator to build a mapping of model inputs (as "
                f"the Hugging Face collators do), but it built a {type(batch).__name__}; loss "
                "reuse puts the samples' indices in the batch under "
                f"{ID_KEY!r}. Use a collator that returns a dict."
            )
        batch[ID_KEY] = ids
        return batch


def signature_columns(model: torch.nn.Module, label_names: Collection[str]) -> frozenset[str]:
    """The sample keys the Trainer keeps: the model's ``forward`` arguments and the labels.

    Example:
        >>> class Net(torch.nn.Module):
        ...     def forward(self, input_ids, attention_mask=None):
        ...         return input_ids
        >>> sorted(signature_columns(Net(), ["labels"]))
        ['attention_mask', 'input_ids', 'label', 'label_ids', 'labels']
    """
    forward = getattr(model, "forward", model)
    names = set(inspect.signature(forward).parameters)
    return frozenset(names | {"label", "label_ids", *label_names})


class OwnEpochs(Sampler[int]):
    """The sifting sampler as the Trainer's loader sees it: without ``set_epoch``.

    accelerate's loader calls ``set_epoch`` on its sampler with its own count of iterations,
    which restarts at 0 in a resumed run; the integration numbers the epochs itself (on the
    :class:`~smartsift.ReuseSampler` it wraps), so this wrapper offers no ``set_epoch``.
    """

    def __init__(self, sampler: ReuseSampler) -> None:
        super().__init__()
        self.sampler = sampler

    def __iter__(self) -> Iterator[int]:
        return iter(self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


def reweighted(
    loss: torch.Tensor, losses: torch.Tensor, shares: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """The model's ``loss`` with each sample's term multiplied by its weight.

    The model's loss is ``sum(shares * losses) / D`` for a denominator ``D`` of its own (the
    batch size, the counted tokens, or those of a gradient-accumulation group); the result is
    ``sum(weights * shares * losses) / D``, so the Trainer's later scaling applies unchanged.

    Example:
        >>> losses = torch.tensor([1.0, 3.0])
        >>> reweighted(losses.mean(), losses, torch.ones(2), torch.tensor([1.0, 2.0]))
        tensor(3.5000)
    """
    total = (shares * losses).sum()
    if not torch.isfinite(total) or total.item() == 0:
        return loss
    weights = weights.to(device=losses.device, dtype=losses.dtype)
    return (weights * shares * losses).sum() * (loss.detach() / total.detach())


class TrainerReuse(TrainerHooks):
    """What ``enable_sifting(trainer, mode="reuse")`` attached to one Trainer; built by it.

    Attributes:
        trainer: the Trainer.
        table: the score table the training step feeds (built on the first ``train()``; None
            before).
        sampler: the :class:`~smartsift.ReuseSampler` (likewise).
        epoch: the epoch of data being trained (0 first), counted by the integration.
        taken: batches handed to the Trainer in that epoch on this rank.
        callback: the callback added to the Trainer.
    """

    hooks = ("get_train_dataloader", "compute_loss", "get_resumed_dataloader")
    mode = "reuse"

    def __init__(
        self,
        trainer: Any,
        outputs_loss: OutputsLossFn,
        policy: Policy | None,
        sampler_kwargs: dict[str, Any],
        *,
        seed: int,
        log_stats: bool,
        align_schedule: bool,
        callback_factory: Callable[[Any], Any],
    ) -> None:
        super().__init__(trainer, seed, log_stats, align_schedule)
        self.outputs_loss = outputs_loss
        self.policy = policy
        self.sampler_kwargs = sampler_kwargs
        self.table: ScoreTable | None = None
        self.sampler: ReuseSampler | None = None
        self.raw: Any = None
        self.taken = 0
        self.batches_this_epoch: int | None = None
        self.callback = callback_factory(self)

    # -------------------------------------------------------------- what the callback asks
    @property
    def stats(self) -> Any:
        """The current epoch's :class:`~smartsift.modes.reuse.ReuseEpochStats` (None before)."""
        return None if self.sampler is None else self.sampler.stats

    def ready(self) -> bool:
        return self.table is not None and self.sampler is not None

    def log_values(self) -> dict[str, float]:
        """The current epoch's counts as ``smartsift/<name>`` floats (NaN left out)."""
        stats = self.stats
        if stats is None:
            return {}
        values = {"epoch": self.epoch, **stats.as_dict()}
        return {
            f"smartsift/{k}": float(v)
            for k, v in values.items()
            if isinstance(v, (int, float)) and not math.isnan(float(v))
        }

    def data_epochs(self) -> float | None:
        """Epochs of data trained so far: whole epochs plus the share of the current one."""
        if not self.batches_this_epoch:
            return float(self.epoch)
        return self.epoch + min(1.0, self.taken / self.batches_this_epoch)

    # -------------------------------------------------------------- the trainer's overrides
    def get_train_dataloader(self) -> _ReuseTrainLoader:
        """The Trainer's own loader over the indexed dataset, the sifting sampler and the ids."""
        trainer = self.trainer
        dataset = trainer.train_dataset
        if dataset is None or isinstance(dataset, torch.utils.data.IterableDataset):
            raise ValueError(
                "Loss reuse needs a map-style train_dataset (each sample's loss is kept by its "
                f"index), but the Trainer holds {type(dataset).__name__}. Use mode='scoring' "
                "for an IterableDataset."
            )
        columns = (
            signature_columns(_unwrapped(trainer.model), trainer.label_names)
            if trainer.args.remove_unused_columns
            else None
        )
        swapped = {
            "train_dataset": IdDataset(dataset),
            "data_collator": IdCollator(trainer.data_collator, columns),
            "_get_train_sampler": self._sampler_for,
        }
        saved = {name: vars(trainer).get(name, _ABSENT) for name in swapped}
        try:
            for name, value in swapped.items():
                setattr(trainer, name, value)
            self.raw = self._original("get_train_dataloader")()
        finally:
            for name, value in saved.items():
                if value is _ABSENT:
                    vars(trainer).pop(name, None)
                else:
                    setattr(trainer, name, value)
        self.new_run()
        length = None
        if trainer.args.max_steps <= 0:
            length = _unsifted_batches(
                len(dataset),
                trainer.args.per_device_train_batch_size,
                trainer.args.world_size,
                trainer.args.dataloader_drop_last,
            )
        return _ReuseTrainLoader(self, length)

    def compute_loss(
        self,
        model: torch.nn.Module,
        inputs: Any,
        return_outputs: bool = False,
        num_items_in_batch: Any = None,
        **kwargs: Any,
    ) -> Any:
        """The Trainer's loss; the samples' losses recorded from the same forward pass."""
        original = self._original("compute_loss")
        ids = inputs.pop(ID_KEY, None) if isinstance(inputs, MutableMapping) else None
        if ids is None or self.table is None or self.sampler is None:
            return original(
                model, inputs, return_outputs=return_outputs,
                num_items_in_batch=num_items_in_batch, **kwargs,
            )  # fmt: skip
        loss, outputs = original(
            model, inputs, return_outputs=True, num_items_in_batch=num_items_in_batch, **kwargs
        )
        losses, shares = self.outputs_loss(model, outputs, inputs)
        self.table.update(ids, losses.detach())
        if self.sampler.rescale:
            weights = self.sampler.weights(ids)
            if not bool((weights == 1).all()):
                loss = reweighted(loss, losses, shares, weights)
        return (loss, outputs) if return_outputs else loss

    # -------------------------------------------------------------- the sampler and epochs
    def _sampler_for(self, *args: Any, **kwargs: Any) -> OwnEpochs:
        """The Trainer's ``_get_train_sampler`` while the loader is built: the sifting sampler."""
        trainer = self.trainer
        dataset = args[0] if args else kwargs.get("train_dataset", trainer.train_dataset)
        own = type(trainer)._get_train_sampler(trainer, dataset)
        if isinstance(own, RandomSampler):
            # The same order on every rank: a private generator seeded alike.
            base: Sampler[int] = RandomSampler(
                dataset, generator=torch.Generator().manual_seed(self.seed)
            )
        elif isinstance(own, SequentialSampler):
            base = own
        else:
            raise ValueError(
                "Loss reuse wraps the Trainer's random (or sequential) sampler, but the Trainer "
                f"built a {type(own).__name__} (train_sampling_strategy="
                f"{trainer.args.train_sampling_strategy!r}). Use the default strategy."
            )
        self.table = ScoreTable(len(dataset))
        epochs = trainer.args.num_train_epochs if trainer.args.max_steps <= 0 else None
        self.sampler = ReuseSampler(
            base,
            self.table,
            self.policy,
            epochs=None if epochs is None else max(1, math.ceil(epochs)),
            seed=self.seed,
            **self.sampler_kwargs,
        )
        return OwnEpochs(self.sampler)

    def new_run(self) -> None:
        super().new_run()
        self.taken, self.batches_this_epoch = 0, None

    def epoch_batches(self) -> Any:
        assert self.sampler is not None
        self.sampler.set_epoch(self.epoch)
        self.batches_this_epoch = len(self.raw)
        return self.raw

    def took(self) -> None:
        self.taken += 1

    def epoch_ended(self) -> None:
        self.taken = 0

    # -------------------------------------------------------------- checkpoints
    def sync(self) -> None:
        """Under DDP the table's pending losses are exchanged before saving (a collective)."""
        assert self.table is not None
        self.table.sync()

    def state_dict(self) -> dict[str, Any]:
        """This rank's sifting state: the table, the sampler, the epoch and the batches taken."""
        assert self.table is not None and self.sampler is not None
        return {
            ckpt.VERSION_KEY: ckpt.VERSION,
            "epoch": self.epoch,
            "taken": self.taken,
            "batches": self.batches_this_epoch,
            "table": self.table.state_dict(),
            "sampler": self.sampler.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output before the first batch of a resumed run."""
        ckpt.check_version(state, "TrainerReuse", "Pass the state TrainerReuse saved.")
        if "loader" in state:
            raise ValueError(
                "The checkpoint's sifting state was saved by a scoring-mode run; resume it with "
                "enable_sifting(..., mode='scoring')."
            )
        assert self.table is not None and self.sampler is not None
        self.table.load_state_dict(state["table"])
        self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.taken = int(state["epoch"]), int(state["taken"])
        self._batches = None
        self.batches_this_epoch = None
        if state["batches"] is not None and self.taken >= int(state["batches"]):
            # Saved at the epoch's very end: the next epoch starts at once.
            self.epoch, self.taken = self.epoch + 1, 0


class _ReuseTrainLoader:
    """The training loader the Trainer sees in loss reuse: the run's data, epoch by epoch."""

    def __init__(self, reuse: TrainerReuse, length: int | None) -> None:
        self.reuse = reuse
        self._length = length

    def __iter__(self) -> Iterator[Any]:
        return EpochIterator(self.reuse)

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError(
                "A loss-reuse training loader has no length when max_steps is set: its epochs "
                "are as long as the data sifted says."
            )
        return self._length

    def set_epoch(self, epoch: int) -> None:
        """Ignored: the integration numbers the epochs of data itself."""

    @property
    def dataset(self) -> Any:
        return self.reuse.trainer.train_dataset

    @property
    def batch_sampler(self) -> Any:
        return getattr(self.reuse.raw, "batch_sampler", None)

    @property
    def batch_size(self) -> int | None:
        return getattr(self.reuse.raw, "batch_size", None)


def _unsifted_batches(samples: int, batch_size: int, world_size: int, drop_last: bool) -> int:
    """Batches per rank of an unsifted epoch, as accelerate deals a loader's batches out.

    Example:
        >>> _unsifted_batches(100, 8, 1, False), _unsifted_batches(100, 8, 2, False)
        (13, 7)
    """
    batches = samples // batch_size if drop_last else -(-samples // batch_size)
    world = max(1, world_size)
    return max(1, -(-batches // world))


def _unwrapped(model: Any) -> Any:
    """The model whose ``forward`` names the columns: DDP and compile wrappers removed."""
    inner = unwrap_model(model)
    return getattr(inner, "_orig_mod", inner)


class _Absent:
    pass


_ABSENT = _Absent()
