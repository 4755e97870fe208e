"""PyTorch Lightning integration: a LightningModule trains on sifted data, in either mode.

One function for the data, one callback for the hooks::

    class Model(L.LightningModule):
        def per_sample_loss(self, batch):            # one loss per sample, shape (B,)
            x, y = batch
            return F.cross_entropy(self(x), y, reduction="none")

        def training_step(self, batch, batch_idx):
            return self.per_sample_loss(batch).mean()

        def train_dataloader(self):
            loader = DataLoader(data, batch_size=64, shuffle=True)
            return sift_dataloader(self, loader, ss.RelativeProbabilistic(keep=0.3), mode="reuse")

    trainer = L.Trainer(max_epochs=10, callbacks=[SiftingCallback()])

The modes (``mode=``):

- ``"scoring"`` (the default): the training ``DataLoader`` is wrapped in a
  :class:`~smartsift.SiftingDataLoader` that scores each raw batch with a gradient-free pass of
  the module's ``per_sample_loss(batch) -> Tensor (B,)`` (or a ``loss_fn(module, batch)`` you
  pass); the kept samples form the refined batches ``training_step`` gets.
- ``"reuse"`` (loss reuse, ``docs/reuse.md``): no extra pass. Each epoch after the first skips,
  before loading, the samples the policy judges learnt from the losses their last training step
  recorded through ``per_sample_loss``; ``training_step`` gets the ``DataLoader``'s own
  batches. The :class:`~smartsift.ReuseSampler`'s options (:func:`reuse_option_names`) and
  ``seed`` pass through.

Each mode refuses the other's options with a ``TypeError``. :class:`SiftingCallback` does what
needs a hook: recording (reuse), logging, keeping step-interval learning-rate schedules in step
with the data, sizing reuse epochs, and putting the sifting state into Lightning's checkpoints.
Loss reuse refuses to run without it; the scoring loader warns.

This module holds the entry points; the parts live in their own modules, each documented there:

- :mod:`~smartsift.integrations.lightning_scoring`: :class:`SiftedTrainLoader`, the scoring
  loader, and how its epochs run (no ``len()``; Lightning pre-fetches a batch).
- :mod:`~smartsift.integrations.lightning_reuse`: :class:`ReuseTrainLoader`, the loss-reuse
  loader, its options and how its epochs are sized.
- :mod:`~smartsift.integrations.lightning_callback`: :class:`SiftingCallback`, and the
  learning-rate schedules, checkpoints and resuming, and logs it handles.
- :mod:`~smartsift.integrations.lightning_data`: rebuilding a ``DataLoader`` with the
  ``DistributedSampler`` Lightning would give it (:func:`with_distributed_sampler`).
- :mod:`~smartsift.integrations.lightning_base`: what the loaders share with the callback.

Why the loader is wrapped where it is made, and not swapped by a callback:
    Lightning asks for the training loader, gives a ``DataLoader`` a ``DistributedSampler`` (by
    re-instantiating it), sizes the epoch from its ``len()`` and starts the epoch's iterator in
    one step (``FitLoop.setup_data``), before any callback hook runs. A callback could swap the
    loader afterwards only through private attributes (``fit_loop._combined_loader``, the data
    fetcher), and Lightning would still end epochs, run validation and step epoch-interval
    schedules by the plain loader's length. Returned from ``train_dataloader()``, the documented
    hook, the sifted loader is an iterable like any other and nothing of Lightning is replaced.

Distributed training (``strategy="ddp"``):
    Lightning adds a ``DistributedSampler`` only to the ``DataLoader`` objects it is handed, so
    :func:`sift_dataloader` does it itself when the trainer runs several processes: the
    ``DataLoader`` is rebuilt with the sampler Lightning would add
    (:func:`with_distributed_sampler`), unless ``distributed_sampler=False``. In scoring each
    rank scores its own shard and the ranks sift in lockstep; in loss reuse every rank prunes
    the epoch's whole permutation alike and takes an equal share of what is kept. Either way
    every rank takes the same number of optimizer steps. DDP only: FSDP and DeepSpeed shard the
    model that sifting needs.

Limits:
    One training loader (loss reuse refuses others beside it). With
    ``reload_dataloaders_every_n_epochs`` every reload starts a new sifting loader (in reuse, a
    new table: its first epoch trains everything). Scoring runs outside Lightning's precision
    context (pass ``autocast_dtype`` for a cheaper pass) and before ``on_before_batch_transfer``
    and ``on_after_batch_transfer``: ``per_sample_loss`` gets the batch as the ``DataLoader``
    yields it, moved by the module's ``transfer_batch_to_device``. Loss reuse needs a
    ``DataLoader`` over a map-style dataset with a ``batch_size``, and under DDP a random or
    sequential sampler (sharded as Lightning would) or a ``DistributedSampler``.

Example:
    >>> import lightning.pytorch as L
    >>> import torch
    >>> import torch.nn.functional as F
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> from smartsift.integrations.lightning import SiftingCallback, sift_dataloader
    >>> class Model(L.LightningModule):
    ...     def __init__(self, mode="scoring"):
    ...         super().__init__()
    ...         self.net = torch.nn.Linear(4, 2)
    ...         self.mode = mode
    ...     def per_sample_loss(self, batch):
    ...         x, y = batch
    ...         return F.cross_entropy(self.net(x), y, reduction="none")
    ...     def training_step(self, batch, batch_idx):
    ...         return self.per_sample_loss(batch).mean()
    ...     def train_dataloader(self):
    ...         data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    ...         loader = DataLoader(data, batch_size=16)
    ...         return sift_dataloader(self, loader, ss.TopK(0.5), mode=self.mode, seed=0)
    ...     def configure_optimizers(self):
    ...         return torch.optim.SGD(self.parameters(), lr=0.1)
    >>> def trainer():
    ...     return L.Trainer(max_epochs=2, callbacks=[SiftingCallback()], logger=False,
    ...                      accelerator="cpu", enable_progress_bar=False,
    ...                      enable_model_summary=False, enable_checkpointing=False)
    >>> scoring = trainer()
    >>> scoring.fit(Model())
    >>> stats = scoring.train_dataloader.stats
    >>> stats.samples_seen, stats.samples_trained, scoring.global_step
    (128, 64, 4)
    >>> reuse = trainer()
    >>> reuse.fit(Model(mode="reuse"))    # epoch 0 trains all 64 samples, epoch 1 half
    >>> stats = reuse.train_dataloader.stats
    >>> stats.candidates, stats.trained, reuse.global_step
    (64, 32, 6)
"""

from __future__ import annotations

import os
from typing import Any

import torch

try:
    import lightning.pytorch as pl
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

from smartsift.integrations.adapter import check_loader_kwargs, check_settings
from smartsift.integrations.lightning_base import LOSS_METHOD
from smartsift.integrations.lightning_callback import SiftingCallback
from smartsift.integrations.lightning_data import with_distributed_sampler
from smartsift.integrations.lightning_reuse import (
    ReuseTrainLoader,
    check_reuse_dataloader,
    check_reuse_options,
    check_reuse_settings,
    refuse_reuse_options,
    reuse_option_names,
)
from smartsift.integrations.lightning_scoring import SiftedTrainLoader
from smartsift.modes.schedules import plain_steps_per_epoch
from smartsift.modes.scoring import LossFn
from smartsift.policies import Policy

__all__ = [
    "LOSS_METHOD",
    "MODES",
    "ReuseTrainLoader",
    "SiftedTrainLoader",
    "SiftingCallback",
    "module_loss",
    "plain_steps_per_epoch",
    "reuse_option_names",
    "sift_dataloader",
    "with_distributed_sampler",
]

MODES = ("scoring", "reuse")
"""The modes of :func:`sift_dataloader`: a scoring pass, or loss reuse."""


def sift_dataloader(
    module: pl.LightningModule,
    dataloader: Any,
    policy: Policy | None = None,
    loss_fn: LossFn | None = None,
    *,
    mode: str = "scoring",
    sift_delay: int | None = None,
    seed: int | None = None,
    distributed_sampler: bool = True,
    **options: Any,
) -> SiftedTrainLoader | ReuseTrainLoader:
    """Wraps ``module``'s training loader so that it yields sifted batches; return it from
    ``train_dataloader()`` (or pass it to ``trainer.fit(train_dataloaders=...)``).

    See the module documentation for the modes and DDP, and the modules it names for epochs,
    schedules, resuming and logs.

    Args:
        module: the LightningModule being trained.
        dataloader: the training loader, typically a ``torch.utils.data.DataLoader`` (loss
            reuse needs one, over a map-style dataset and with a ``batch_size``).
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``
            (scoring) or ``RelativeProbabilistic()`` (reuse).
        loss_fn: scoring only: ``loss_fn(module, batch) -> Tensor (B,)``; by default the
            module's ``per_sample_loss(batch)``, called with the batch on the module's device.
        mode: ``"scoring"`` (a gradient-free scoring pass per raw batch) or ``"reuse"`` (loss
            reuse: each epoch skips, before loading, samples judged from the losses their last
            training step recorded; no extra pass).
        sift_delay: scoring only: raw batches (per rank) trained unsifted before sifting starts
            (default 0).
        seed: seed of the sifting's generator; default ``PL_GLOBAL_SEED`` (set by
            ``seed_everything``) if set, else a random one (scoring) or 0 (reuse, whose ranks
            must decide alike).
        distributed_sampler: under DDP, give a ``DataLoader`` without one the
            ``DistributedSampler`` Lightning would give it.
        **options: scoring: further :class:`~smartsift.SiftingDataLoader` arguments (e.g.
            ``batch_size``, ``drop_last``, ``padding``, ``autocast_dtype``, ``audit``); reuse:
            further :class:`~smartsift.ReuseSampler` arguments (:func:`reuse_option_names`:
            ``score``, ``max_age``, ``rescale``, ``max_weight``, ``anneal``, ``chunk_size``,
            ``audit``).

    Returns:
        A :class:`SiftedTrainLoader` (scoring: refined batches, no length) or a
        :class:`ReuseTrainLoader` (reuse: the DataLoader's own batches, each epoch's length).

    Raises:
        TypeError: if ``module`` is not a LightningModule, has no ``per_sample_loss`` (and, in
            scoring mode, no ``loss_fn`` is given), or an argument belongs to the other mode or
            to neither.
        ValueError: if ``mode`` or a setting is invalid.

    Example:
        >>> module = pl.LightningModule()
        >>> sift_dataloader(module, [], mode="reuse", batch_size=8)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ... `batch_size`=8, which only the scoring pass takes (loss reuse trains ...
    """
    if not isinstance(module, pl.LightningModule):
        raise TypeError(
            f"Expected `module` to be a LightningModule, but got {type(module).__name__}."
        )
    if mode not in MODES:
        raise ValueError(
            f"Expected `mode` to be one of {', '.join(map(repr, MODES))}, but got {mode!r}: "
            "'scoring' scores each raw batch in an extra no-grad pass, 'reuse' reuses the "
            "losses of the training step."
        )
    if seed is None and "PL_GLOBAL_SEED" in os.environ:
        seed = int(os.environ["PL_GLOBAL_SEED"])
    if mode == "reuse":
        reuse_options = check_reuse_options(loss_fn, sift_delay, options)
        _check_has_loss(module, reuse=True)
        check_reuse_dataloader(dataloader)
        seed = 0 if seed is None else seed
        check_reuse_settings(policy, reuse_options, seed)  # here, not in fit()
        return ReuseTrainLoader(
            module, dataloader, policy, reuse_options, seed, distributed_sampler
        )
    refuse_reuse_options(options)
    if loss_fn is None:
        _check_has_loss(module, reuse=False)
        loss_fn = module_loss
    kwargs = check_loader_kwargs(options, caller="sift_dataloader")
    kwargs["sift_delay"] = 0 if sift_delay is None else sift_delay
    kwargs["seed"] = seed
    check_settings(module, loss_fn, policy, kwargs)  # here, not in fit()
    return SiftedTrainLoader(module, dataloader, policy, loss_fn, kwargs, distributed_sampler)


def _check_has_loss(module: pl.LightningModule, reuse: bool) -> None:
    if callable(getattr(module, LOSS_METHOD, None)):
        return
    what = (
        f"Expected {type(module).__name__} to define `{LOSS_METHOD}(batch)` returning one loss "
        "per sample (shape (B,), e.g. F.cross_entropy(..., reduction='none'))"
    )
    if reuse:
        raise TypeError(
            f"{what} for loss reuse, which records the losses training_step computes with it, "
            "but it has none. Define it, and compute the training loss from it."
        )
    raise TypeError(f"{what}, or a `loss_fn(module, batch)` to be passed, but it has neither.")


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
