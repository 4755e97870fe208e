"""What the framework integrations share: the loader arguments and the lazily built loader.

:mod:`~smartsift.integrations.transformers` and :mod:`~smartsift.integrations.lightning` both
wrap the framework's training loader in a :class:`~smartsift.SiftingDataLoader`, built when the
framework first hands that loader out. They share:

- :func:`check_loader_kwargs`: the further keyword arguments passed through to the loader
  (:func:`passthrough_names`), checked with errors that name the argument, value and fix.
- :func:`check_settings`: fails at set-up on settings the loader would refuse when first built.
- :class:`LazySifter`: the loader, built around the framework's loader on first use.
- :func:`brief`: a value as their error messages name it.

The learning-rate arithmetic they share is :mod:`smartsift.modes.schedules`'
(:func:`~smartsift.modes.schedules.plain_steps`,
:func:`~smartsift.modes.schedules.catch_up_steps`). This module imports no framework.

Example:
    >>> check_loader_kwargs({"batch_size": 8}, caller="sift_dataloader")
    {'batch_size': 8}
    >>> check_loader_kwargs({"batchsize": 8}, caller="sift_dataloader")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    TypeError: ... but got `batchsize`=8, not one of them (did you mean `batch_size`?). ...
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Collection, Mapping
from typing import Any

import torch

from smartsift.engine.stats import SiftStats
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.scoring import LossFn
from smartsift.policies import Policy

__all__ = [
    "FROM_FRAMEWORK",
    "LazySifter",
    "brief",
    "check_loader_kwargs",
    "check_settings",
    "passthrough_names",
]

FROM_FRAMEWORK: Mapping[str, str] = {
    "dataloader": "it wraps the framework's training loader: leave `dataloader` out",
    "model": "it scores with the model being trained: leave `model` out",
}
"""The loader arguments an integration takes from the framework, each with the fix to give."""


def passthrough_names(
    reserved: Collection[str] = (), target: type = SiftingDataLoader
) -> list[str]:
    """The keyword-only arguments of ``target`` that a caller passes on, less ``reserved``.

    ``target`` is the class the arguments go to: the :class:`~smartsift.SiftingDataLoader`
    (scoring mode) or the :class:`~smartsift.ReuseSampler` (loss reuse).

    Example:
        >>> names = passthrough_names(reserved=["seed"])
        >>> "batch_size" in names, "seed" in names, "model" in names
        (True, False, False)
    """
    params = inspect.signature(target).parameters.values()
    return sorted(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in reserved)


def check_loader_kwargs(
    given: Mapping[str, Any],
    *,
    caller: str,
    reserved: Mapping[str, str] = FROM_FRAMEWORK,
    target: type = SiftingDataLoader,
) -> dict[str, Any]:
    """Checks the keyword arguments ``caller`` passes through to ``target`` (by default the
    SiftingDataLoader; the ReuseSampler in loss reuse).

    Args:
        given: the caller's ``**loader_kwargs``.
        caller: the function or class taking them, as the error messages name it.
        reserved: the loader arguments ``caller`` sets itself, each with the fix to give
            whoever passes it (e.g. ``{"policy": "give the policy through `sift_config`"}``).

    Returns:
        A copy of ``given``.

    Raises:
        TypeError: naming each argument that is reserved or not the loader's, its value and
            the fix (the closest accepted name, then every accepted name).

    Example:
        >>> check_loader_kwargs({"model": None}, caller="enable_sifting")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        TypeError: ... but got `model`=None, which enable_sifting sets itself (it scores ...
    """
    allowed = passthrough_names(reserved, target)
    problems = []
    for key, value in given.items():
        if key in reserved:
            problems.append(f"`{key}`={brief(value)}, which {caller} sets itself ({reserved[key]})")
        elif key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            fix = f" (did you mean `{close[0]}`?)" if close else ""
            problems.append(f"`{key}`={brief(value)}, not one of them{fix}")
    if problems:
        raise TypeError(
            f"Expected keyword arguments of {target.__name__} that {caller} passes on, but got "
            f"{'; '.join(problems)}. It passes on {', '.join(allowed)}."
        )
    return dict(given)


def check_settings(
    model: torch.nn.Module, loss_fn: LossFn, policy: Policy | None, kwargs: Mapping[str, Any]
) -> None:
    """Raises now what the sifting loader would raise for these settings when first built.

    Example:
        >>> check_settings(torch.nn.Linear(2, 1), lambda m, b: m(b), None, {"sift_delay": -1})
        Traceback (most recent call last):
        ...
        ValueError: Expected `sift_delay` to be a non-negative int (raw batches), but got -1.
    """
    SiftingDataLoader([], model, loss_fn, policy, **kwargs)  # over nothing: built and dropped


class LazySifter:
    """The :class:`~smartsift.SiftingDataLoader` an integration builds on the framework's loader.

    Frameworks make their training loader (and wrap the model, start the process group) only
    when training starts, so the sifting loader is built then, by :meth:`build`.

    Args:
        loss_fn: ``loss_fn(model, batch) -> Tensor (B,)``.
        policy: which samples to keep (None: the loader's default).
        loader_kwargs: the loader's further keyword arguments (see :func:`check_loader_kwargs`).

    Attributes:
        raw: the framework's loader that ``loader`` wraps, or None before the first build.
        loader: the latest loader built, or None before the first.

    Example:
        >>> from smartsift.policies import TopK
        >>> sifter = LazySifter(lambda model, batch: model(batch).sum(1), TopK(0.5), {"seed": 0})
        >>> sifter.loader is None, sifter.stats.samples_seen
        (True, 0)
        >>> batches = list(sifter.build([torch.ones(4, 2)] * 2, torch.nn.Linear(2, 1)))
        >>> [len(batch) for batch in batches], sifter.stats.samples_seen
        ([4], 8)
    """

    def __init__(
        self, loss_fn: LossFn, policy: Policy | None, loader_kwargs: dict[str, Any]
    ) -> None:
        self.loss_fn = loss_fn
        self.policy = policy
        self.loader_kwargs = loader_kwargs
        self.raw: Any = None
        self.loader: SiftingDataLoader | None = None

    @property
    def stats(self) -> SiftStats:
        """This process's stats of the latest loader built (empty before the first)."""
        return self.loader.stats if self.loader is not None else SiftStats()

    def build(self, raw: Any, model: torch.nn.Module) -> SiftingDataLoader:
        """Builds a new sifting loader over ``raw`` that scores with ``model``, and returns it."""
        self.raw = raw
        self.loader = SiftingDataLoader(raw, model, self.loss_fn, self.policy, **self.loader_kwargs)
        return self.loader


def brief(value: Any) -> str:
    """``repr(value)`` when short and on one line (a model's is neither), else its type: a value
    as error messages name it.

    Example:
        >>> brief(8), brief(torch.nn.Linear(2, 1)), brief("x" * 50)
        ('8', '<Linear>', '<str>')
    """
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"<{type(value).__name__}>"
