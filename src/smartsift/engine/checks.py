"""Argument checks shared by both modes, the profiler and the integrations.

Each check raises early, with a message that names the argument, the value and the fix.

Example:
    >>> check_int("steps", 3, minimum=1)
    >>> check_int("steps", 0, minimum=1)
    Traceback (most recent call last):
    ...
    ValueError: Expected `steps` to be a positive int, but got 0.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch

from smartsift.batches.structure import BatchTransform

__all__ = [
    "check_dataloader",
    "check_fraction",
    "check_instance",
    "check_int",
    "check_loss_fn",
    "check_model",
    "check_optional_int",
    "check_policy",
    "check_real",
    "check_transform",
    "is_int",
    "is_real",
]


def is_int(value: Any) -> bool:
    """Whether ``value`` is an int (not a bool).

    Example:
        >>> is_int(3), is_int(True), is_int(3.0)
        (True, False, False)
    """
    return isinstance(value, int) and not isinstance(value, bool)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool).

    Example:
        >>> is_real(0.5), is_real(True), is_real(float("nan"))
        (True, False, False)
    """
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _kind(noun: str, minimum: float | None, words: bool) -> str:
    """``"a positive int"``, ``"a non-negative float"``, ``"an int >= 2"``, ``"a float"``..."""
    article = "an" if noun == "int" else "a"
    if minimum is None:
        return f"{article} {noun}"
    if words and minimum == 0:
        return f"a non-negative {noun}"
    if words and minimum == 1 and noun == "int":
        return "a positive int"
    return f"{article} {noun} >= {minimum}"


def check_int(
    name: str, value: Any, minimum: int | None = 0, what: str = "", *, words: bool = True
) -> None:
    """Raises ValueError unless ``value`` is an int (not a bool) of at least ``minimum``.

    Args:
        name: the argument's name, for the message.
        value: the value given.
        minimum: the smallest int accepted (None: any int).
        what: what the int counts, said in the message.
        words: name a minimum of 0 or 1 in words ("a positive int"); False: as a bound
            ("an int >= 1").

    Example:
        >>> check_int("chunk_size", 0, minimum=1, words=False)
        Traceback (most recent call last):
        ...
        ValueError: Expected `chunk_size` to be an int >= 1, but got 0.
    """
    if not is_int(value) or (minimum is not None and value < minimum):
        unit = f" ({what})" if what else ""
        kind = _kind("int", minimum, words)
        raise ValueError(f"Expected `{name}` to be {kind}{unit}, but got {value!r}.")


def check_optional_int(
    name: str, value: Any, minimum: int | None = 0, *, words: bool = True
) -> None:
    """As :func:`check_int`, but None is accepted too.

    Example:
        >>> check_optional_int("epochs", None, minimum=1)
        >>> check_optional_int("epochs", 0, minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: Expected `epochs` to be a positive int or None, but got 0.
    """
    if value is not None and (not is_int(value) or (minimum is not None and value < minimum)):
        kind = _kind("int", minimum, words)
        raise ValueError(f"Expected `{name}` to be {kind} or None, but got {value!r}.")


def check_real(
    name: str, value: Any, minimum: float | None = None, *, optional: bool = False
) -> None:
    """Raises ValueError unless ``value`` is a finite int or float (not a bool) of at least
    ``minimum``, or, with ``optional``, None.

    Example:
        >>> check_real("max_weight", 2.5, minimum=1)
        >>> check_real("max_weight", 0.5, minimum=1, optional=True)
        Traceback (most recent call last):
        ...
        ValueError: Expected `max_weight` to be a float >= 1 or None, but got 0.5.
    """
    if optional and value is None:
        return
    if not is_real(value) or (minimum is not None and value < minimum):
        none = " or None" if optional else ""
        kind = _kind("float", minimum, words=True)
        raise ValueError(f"Expected `{name}` to be {kind}{none}, but got {value!r}.")


def check_fraction(
    name: str, value: Any, *, low_open: bool = False, high_open: bool = False
) -> None:
    """Raises ValueError unless ``value`` is a finite int or float (not a bool) in the interval
    from 0 to 1, each end included unless ``low_open`` or ``high_open``.

    Example:
        >>> check_fraction("keep", 0.3, low_open=True)
        >>> check_fraction("anneal", 1.0, high_open=True)
        Traceback (most recent call last):
        ...
        ValueError: Expected `anneal` to be a float in [0, 1), but got 1.0.
    """
    ok = is_real(value)
    if ok:
        ok = (value > 0 if low_open else value >= 0) and (value < 1 if high_open else value <= 1)
    if not ok:
        interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
        raise ValueError(f"Expected `{name}` to be a float in {interval}, but got {value!r}.")


def check_instance(name: str, value: Any, cls: type, what: str) -> None:
    """Raises TypeError unless ``value`` is an instance of ``cls``; ``what`` names the type
    in the message.

    Example:
        >>> check_instance("table", [], dict, "a dict")
        Traceback (most recent call last):
        ...
        TypeError: Expected `table` to be a dict, but got [].
    """
    if not isinstance(value, cls):
        raise TypeError(f"Expected `{name}` to be {what}, but got {value!r}.")


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
    from smartsift.policies.base import Policy  # the policies import these checks

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
