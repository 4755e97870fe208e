"""Argument checks shared by the loader, the profiler and the integrations.

Each check raises early, with a message that names the argument, the value and the fix.

Example:
    >>> check_int("steps", 3, minimum=1)
    >>> check_int("steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: Expected `steps` to be a positive int, but got 0.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch

from smartsift.batches.structure import BatchTransform
from smartsift.policies import Policy

__all__ = [
    "check_dataloader",
    "check_int",
    "check_loss_fn",
    "check_model",
    "check_optional_int",
    "check_policy",
    "check_transform",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(minimum: int | None) -> str:
    return {None: "an int", 0: "a non-negative int", 1: "a positive int"}.get(
        minimum, f"an int >= {minimum}"
    )


def check_int(name: str, value: Any, minimum: int | None = 0, what: str = "") -> None:
    """Raises ValueError unless ``value`` is an int (not a bool) of at least ``minimum``."""
    if not _is_int(value) or (minimum is not None and value < minimum):
        unit = f" ({what})" if what else ""
        raise ValueError(f"Expected `{name}` to be {_kind(minimum)}{unit}, but got {value!r}.")


def check_optional_int(name: str, value: Any, minimum: int | None = 0) -> None:
    """As :func:`check_int`, but None is accepted too."""
    if value is not None and (not _is_int(value) or (minimum is not None and value < minimum)):
        raise ValueError(f"Expected `{name}` to be {_kind(minimum)} or None, but got {value!r}.")


def check_dataloader(dataloader: Any) -> None:
    """Raises TypeError unless ``dataloader`` is a re-iterable of batches."""
    if not hasattr(dataloader, "__iter__"):
        raise TypeError(
            "Expected `dataloader` to be an iterable of batches (e.g. a DataLoader), but got "
            f"{type(dataloader).__name__}."
        )
    if isinstance(dataloader, Iterator):
        raise TypeError(
            "Expected `dataloader` to be re-iterable (a DataLoader or another iterable), but got "
            "a one-shot iterator; pass the DataLoader itself, not iter(loader)."
        )


def check_model(model: Any) -> None:
    """Raises TypeError unless ``model`` is a ``torch.nn.Module``."""
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )


def check_loss_fn(loss_fn: Any) -> None:
    """Raises TypeError unless ``loss_fn`` is callable."""
    if not callable(loss_fn):
        raise TypeError(
            "Expected `loss_fn` to be callable as loss_fn(model, batch) -> Tensor of shape (B,), "
            f"but got {type(loss_fn).__name__}."
        )


def check_policy(policy: Any) -> None:
    """Raises TypeError unless ``policy`` is a smartsift :class:`~smartsift.Policy`."""
    if not isinstance(policy, Policy):
        raise TypeError(
            "Expected `policy` to be a smartsift Policy (e.g. ss.RelativeProbabilistic(beta=1.0)), "
            f"but got {policy!r}."
        )


def check_transform(transform: Any) -> None:
    """Raises TypeError unless ``transform`` is None or a :class:`~smartsift.BatchTransform`."""
    if transform is not None and not isinstance(transform, BatchTransform):
        raise TypeError(
            "Expected `transform` to have transform(batch) and reverse_transform(data) methods "
            f"(a smartsift.BatchTransform), but got {type(transform).__name__}."
        )
