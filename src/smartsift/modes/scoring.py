"""The scoring pass: one gradient-free forward pass of the user's model and per-sample loss.

The pass never changes the model: it runs under ``torch.no_grad()``, in eval mode by default
with every submodule's previous mode restored afterwards, and (when scoring in train mode) with
the buffers, such as BatchNorm running statistics, put back as they were. DDP, DataParallel and
``torch.compile`` wrappers are looked through, so no collective runs inside the pass.

A reference model's losses (RHO-LOSS's "irreducible" losses, for ``SiftingDataLoader(...,
reference=fn)``) are computed by :func:`score_reference` on the same raw batch, under
``torch.no_grad()`` too; the user's function owns its model and that model's mode.

Example:
    >>> import torch
    >>> model = torch.nn.Linear(3, 2)
    >>> loss_fn = lambda m, b: torch.nn.functional.cross_entropy(m(b[0]), b[1], reduction="none")
    >>> batch = (torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
    >>> score(model, loss_fn, batch, batch_size=5).shape
    torch.Size([5])
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch

__all__ = ["LossFn", "LossFunctionError", "ReferenceFn", "score", "score_reference", "unwrap_model"]

LossFn = Callable[[torch.nn.Module, Any], torch.Tensor]
"""``loss_fn(model, batch) -> Tensor`` of shape ``(B,)``: one loss per sample, no reduction."""

ReferenceFn = Callable[[Any], torch.Tensor]
"""``reference(batch) -> Tensor`` of shape ``(B,)``: a reference model's loss per sample."""


class LossFunctionError(ValueError):
    """The loss function did not return one floating-point loss per sample."""


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """Returns the module to score with: DDP and DataParallel wrappers removed.

    Calling the inner module of a DDP model runs no collective, so ranks may score different
    numbers of times without hanging. A ``torch.compile``-d model is kept compiled unless it
    wraps a DDP model, in which case the original inner module is used.

    Example:
        >>> import torch
        >>> unwrap_model(torch.nn.DataParallel(torch.nn.Linear(2, 2)))
        Linear(in_features=2, out_features=2, bias=True)
    """
    parallel = (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)
    for _ in range(8):
        if isinstance(model, parallel):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), parallel):
            model = model._orig_mod  # type: ignore[assignment]
        else:
            break
    return model


@contextlib.contextmanager
def _scoring_mode(model: torch.nn.Module, train: bool) -> Iterator[None]:
    modes = [(m, m.training) for m in model.modules()]
    saved: list[tuple[torch.Tensor, torch.Tensor]] = []
    if train:
        saved = [(b, b.detach().clone()) for b in model.buffers()]
    model.train(train)
    try:
        yield
    finally:
        for module, was_training in modes:
            module.training = was_training
        with torch.no_grad():
            for buf, copy in saved:
                buf.copy_(copy)


def score(
    model: torch.nn.Module,
    loss_fn: LossFn,
    batch: Any,
    batch_size: int,
    *,
    train_mode: bool = False,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Returns the per-sample losses of ``batch`` as a detached float64 CPU tensor.

    Args:
        model: the model (a DDP or compiled wrapper is looked through).
        loss_fn: ``loss_fn(model, batch)`` returning a tensor of shape ``(batch_size,)``.
        batch: the raw batch, already on the model's device.
        batch_size: the number of samples in ``batch``.
        train_mode: score with the model in train mode (dropout active, BatchNorm on batch
            statistics); buffers are restored afterwards either way.
        autocast_dtype: if set, score under ``torch.autocast`` with this dtype.

    Raises:
        LossFunctionError: if ``loss_fn`` returns anything but a floating-point tensor of shape
            ``(batch_size,)``.
    """
    inner = unwrap_model(model)
    with torch.no_grad(), _scoring_mode(inner, train_mode), _autocast(batch, autocast_dtype):
        losses = loss_fn(inner, batch)
    return _checked(losses, batch_size, "loss_fn")


def score_reference(
    reference: ReferenceFn,
    batch: Any,
    batch_size: int,
    *,
    autocast_dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """Returns a reference model's per-sample losses of ``batch`` as a float64 CPU tensor.

    ``reference(batch)`` runs under ``torch.no_grad()`` (and ``torch.autocast`` with
    ``autocast_dtype``, like the scoring pass); it is checked as ``loss_fn``'s output is.

    Args:
        reference: ``reference(batch)`` returning a tensor of shape ``(batch_size,)``, e.g.
            ``lambda batch: loss_fn(small_model, batch)``.
        batch: the raw batch, as the scoring pass gets it.
        batch_size: the number of samples in ``batch``.
        autocast_dtype: if set, run under ``torch.autocast`` with this dtype.

    Raises:
        LossFunctionError: if ``reference`` returns anything but a floating-point tensor of
            shape ``(batch_size,)``.

    Example:
        >>> import torch
        >>> small = torch.nn.Linear(3, 2)
        >>> def reference(b):
        ...     return torch.nn.functional.cross_entropy(small(b[0]), b[1], reduction="none")
        >>> batch = (torch.randn(5, 3), torch.tensor([0, 1, 0, 1, 1]))
        >>> out = score_reference(reference, batch, batch_size=5)
        >>> out.shape, out.dtype, out.requires_grad
        (torch.Size([5]), torch.float64, False)
    """
    with torch.no_grad(), _autocast(batch, autocast_dtype):
        losses = reference(batch)
    return _checked(losses, batch_size, "reference")


def _checked(losses: Any, batch_size: int, name: str) -> torch.Tensor:
    """``losses`` as a detached float64 CPU tensor, if it holds one float per sample."""
    if not isinstance(losses, torch.Tensor):
        raise LossFunctionError(
            f"{name} must return a tensor of shape ({batch_size},) with one loss per sample, "
            f"but it returned {type(losses).__name__}. Compute the loss with reduction='none'."
        )
    if losses.shape != (batch_size,):
        hint = (
            " It returned a scalar: compute the loss with reduction='none'."
            if losses.ndim == 0
            else " Reduce every dimension but the first, e.g. loss.flatten(1).mean(1)."
            if losses.ndim > 1 and losses.shape[0] == batch_size
            else ""
        )
        raise LossFunctionError(
            f"{name} must return a tensor of shape ({batch_size},) with one loss per sample "
            f"of the batch, but it returned shape {tuple(losses.shape)}.{hint}"
        )
    if not losses.is_floating_point():
        # An integer or bool "loss" is almost always a label or a prediction returned by
        # mistake; ranking samples by it would sift on ties without any error.
        raise LossFunctionError(
            f"{name} must return floating-point losses, but it returned dtype {losses.dtype}. "
            "Return the per-sample loss itself, e.g. F.cross_entropy(model(x), y, "
            "reduction='none'); if these values really are the losses, return them as "
            "floats with `.float()`."
        )
    return losses.detach().to("cpu", torch.float64)


def _autocast(batch: Any, dtype: torch.dtype | None) -> contextlib.AbstractContextManager[Any]:
    if dtype is None:
        return contextlib.nullcontext()
    device_type = _first_tensor_device(batch) or "cpu"
    return torch.autocast(device_type=device_type, dtype=dtype)


def _first_tensor_device(batch: Any) -> str | None:
    leaves, _ = torch.utils._pytree.tree_flatten(batch)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            return leaf.device.type
    return None
