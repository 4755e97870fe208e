"""What the Lightning training loaders share with the callback: names, the trainer, restoring.

The sifted training loaders (:mod:`~smartsift.integrations.lightning_scoring`,
:mod:`~smartsift.integrations.lightning_reuse`) run inside ``trainer.fit``: they find their
module's trainer (:func:`trainer_of`), refuse strategies that shard the model
(:func:`check_strategy`), and restore a checkpoint's sifting state from the trainer's
:class:`~smartsift.integrations.lightning.SiftingCallback` (:func:`sifting_callback`). They know
the callback as :class:`SiftingCallbackBase`, its base class, which holds that state, because the
callback's own module imports them.

Example:
    >>> from types import SimpleNamespace
    >>> callback = SiftingCallbackBase()
    >>> sifting_callback(SimpleNamespace(callbacks=[callback])) is callback
    True
    >>> callback.restored_state("reuse", SimpleNamespace(world_size=1)) is None  # nothing saved
    True
"""

from __future__ import annotations

from typing import Any

try:
    import lightning.pytorch as pl
    from lightning.pytorch.callbacks import Callback
    from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "smartsift.integrations.lightning needs lightning: pip install 'smartsift[lightning]'."
    ) from err

__all__ = [
    "LOSS_METHOD",
    "STATE_FORMAT",
    "SiftingCallbackBase",
    "check_strategy",
    "sifting_callback",
    "trainer_of",
]

LOSS_METHOD = "per_sample_loss"
"""The LightningModule method that gives one loss per sample: it scores batches in the scoring
mode (unless a ``loss_fn`` is given), and its calls in ``training_step`` feed loss reuse."""

STATE_FORMAT = 1
"""The version of the state :class:`~smartsift.integrations.lightning.SiftingCallback` puts in
Lightning's checkpoints."""


class SiftingCallbackBase(Callback):
    """The part of :class:`~smartsift.integrations.lightning.SiftingCallback` the training
    loaders use: a checkpoint's sifting state, kept from ``load_state_dict`` until the training
    loader is built and restores it.

    Example:
        >>> from types import SimpleNamespace
        >>> callback = SiftingCallbackBase()
        >>> callback.load_state_dict({"format": STATE_FORMAT, "mode": "reuse", "ranks": [{}]})
        >>> callback.restored_state("scoring", SimpleNamespace(world_size=1))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The checkpoint holds the sifting state of mode='reuse', but the training ...
    """

    def __init__(self) -> None:
        self._restored: dict[str, Any] | None = None  # a checkpoint's state, until used

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Keeps a checkpoint's state until the training loader is built, which restores it."""
        self._restored = dict(state_dict) if state_dict else None

    def restored_state(self, mode: str, trainer: pl.Trainer) -> dict[str, Any] | None:
        """This rank's part of the checkpoint's state for a loader of ``mode`` (None if none).

        Raises:
            ValueError: if it was saved in another mode, by another number of ranks, or in an
                unknown format.
        """
        saved = self._restored
        if not saved:
            return None
        if saved.get("format") != STATE_FORMAT:
            raise ValueError(
                f"Expected smartsift's checkpoint state of format {STATE_FORMAT}, but got "
                f"{saved.get('format')!r}; resume with the smartsift version that saved it."
            )
        if saved["mode"] != mode:
            raise ValueError(
                f"The checkpoint holds the sifting state of mode={saved['mode']!r}, but the "
                f"training loader runs mode={mode!r}; resume in the mode it was saved in."
            )
        ranks = saved["ranks"]
        if len(ranks) != trainer.world_size:
            raise ValueError(
                f"The checkpoint holds the sifting state of {len(ranks)} rank(s), but this run "
                f"has {trainer.world_size}; resume with the same number of processes."
            )
        state: dict[str, Any] | None = ranks[trainer.global_rank]
        return state


def sifting_callback(trainer: pl.Trainer) -> SiftingCallbackBase | None:
    """The trainer's SiftingCallback, if it has one.

    Example:
        >>> from types import SimpleNamespace
        >>> sifting_callback(SimpleNamespace(callbacks=[])) is None
        True
    """
    callbacks = getattr(trainer, "callbacks", [])  # set on the instance by Lightning
    return next((c for c in callbacks if isinstance(c, SiftingCallbackBase)), None)


def trainer_of(module: pl.LightningModule) -> pl.Trainer:
    """``module.trainer``, or an error naming the fix when it is not attached to one.

    Example:
        >>> trainer_of(pl.LightningModule())  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        RuntimeError: LightningModule is not attached to a Trainer: iterate the sifted loader ...
    """
    try:
        return module.trainer
    except RuntimeError:
        raise RuntimeError(
            f"{type(module).__name__} is not attached to a Trainer: iterate the sifted loader "
            "inside trainer.fit (return it from train_dataloader(), or pass it to fit)."
        ) from None


def check_strategy(trainer: pl.Trainer) -> None:
    """Refuses a multi-process strategy other than DDP: sifting needs the whole model.

    Example:
        >>> from types import SimpleNamespace
        >>> check_strategy(SimpleNamespace(world_size=1, strategy=None))  # one device: fine
    """
    strategy = trainer.strategy
    if trainer.world_size > 1 and (
        not isinstance(strategy, DDPStrategy) or isinstance(strategy, DeepSpeedStrategy)
    ):
        raise ValueError(
            f"Expected a single device or strategy='ddp', but the trainer runs "
            f"{type(strategy).__name__}: sifting needs the whole model on every rank. "
            "Train with DDP."
        )
