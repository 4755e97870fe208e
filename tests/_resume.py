"""One reusable check: resuming a ``SiftingDataLoader`` gives exactly the uninterrupted batches.

:func:`assert_resume_matches` runs a loader without interruption, then, for every stop point,
runs a fresh loader up to that point, saves its ``state_dict()`` through ``torch.save`` and
``torch.load(..., weights_only=True)``, loads it into a new loader, finishes the run, and checks
that the refined batches after the stop point and the final stats are those of the
uninterrupted run.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> def make_loader():
    ...     data = TensorDataset(torch.arange(20.0).unsqueeze(1), torch.arange(20))
    ...     model = torch.nn.Linear(1, 1)
    ...     with torch.no_grad():
    ...         model.weight.fill_(1.0), model.bias.zero_()
    ...     def loss_fn(m, b):
    ...         return m(b[0]).squeeze(1)
    ...     return ss.SiftingDataLoader(
    ...         DataLoader(data, batch_size=4), model, loss_fn, policy=ss.TopK(keep=0.5), seed=0
    ...     )
    >>> states = assert_resume_matches(make_loader, [0, 1, 3])
    >>> len(states) == 3 + 2  # the stop points and the two epoch ends
    True
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift import SiftingDataLoader, SiftStats
from smartsift.engine.stats import counter_fields

__all__ = ["Run", "assert_resume_matches", "canonical", "roundtrip", "run_epochs"]


def canonical(batch: Any) -> Any:
    """Returns ``batch`` as nested plain lists and dicts, comparable with ``==``.

    Container types are forgotten (a named tuple and a tuple compare equal), as are tensor vs
    array types; dtypes of tensors are kept as a string tag so that a float batch never equals
    an int one.
    """
    if isinstance(batch, torch.Tensor):
        return ("tensor", str(batch.dtype).removeprefix("torch."), batch.detach().cpu().tolist())
    if isinstance(batch, np.ndarray):
        return ("tensor", str(batch.dtype), batch.tolist())
    if isinstance(batch, Mapping):
        return {k: canonical(v) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return [canonical(v) for v in batch]
    return batch


def roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Saves ``state`` with ``torch.save`` and loads it back with ``weights_only=True``."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded: dict[str, Any] = torch.load(buf, weights_only=True)
    return loaded


@dataclass
class Run:
    """What a run yielded: ``(epoch, canonical batch)`` per step, and the final stats."""

    batches: list[tuple[int, Any]]
    stats: SiftStats


def run_epochs(
    loader: SiftingDataLoader, epochs: int, first_epoch: int = 0, set_epoch: bool = False
) -> list[tuple[int, Any]]:
    """Iterates ``loader`` for ``epochs`` epochs; returns ``(epoch, canonical batch)`` pairs.

    With ``set_epoch``, ``loader.set_epoch(epoch)`` is called before each epoch (as a
    ``DistributedSampler`` needs).
    """
    out = []
    for epoch in range(first_epoch, first_epoch + epochs):
        if set_epoch:
            loader.set_epoch(epoch)
        out.extend((epoch, canonical(batch)) for batch in loader)
    return out


def _stats_key(stats: SiftStats) -> dict[str, Any]:
    key: dict[str, Any] = {name: getattr(stats, name) for name in counter_fields()}
    rate = stats.recent_keep_rate
    key["recent_keep_rate"] = "nan" if math.isnan(rate) else rate
    key["loss_quantiles"] = dict(stats.loss_quantiles)
    return key


def _stop_and_save(
    loader: SiftingDataLoader,
    epochs: int,
    stop: int | None,
    stop_epoch: int | None,
    set_epoch: bool,
) -> tuple[dict[str, Any], int]:
    """Runs ``loader`` to a stop point; returns its saved state and the epoch it stopped in.

    ``stop`` counts refined batches (0: before any iteration; n: with the iterator suspended
    right after yielding batch n; the state must not change when the iterator is then closed).
    ``stop_epoch`` stops after that epoch's iteration finished.
    """
    if stop == 0:
        return loader.state_dict(), 0
    steps = 0
    for epoch in range(epochs):
        if set_epoch:
            loader.set_epoch(epoch)
        it = iter(loader)
        for _ in it:
            steps += 1
            if steps == stop:
                state = loader.state_dict()
                it.close()  # leaving the loop (or an error in the training step) closes it
                closed = loader.state_dict()
                if canonical(closed) != canonical(state):
                    raise AssertionError(
                        f"closing the iterator after batch {stop} changed the state"
                    )
                return state, epoch
        if epoch == stop_epoch:
            return loader.state_dict(), epoch + 1
    raise ValueError(f"The run has fewer than {stop} refined batches in {epochs} epochs.")


def assert_resume_matches(
    make_loader: Callable[[], SiftingDataLoader],
    stop_after_steps: Iterable[int],
    epochs: int = 2,
    *,
    stop_after_epochs: Sequence[int] | None = None,
    set_epoch: bool = False,
) -> list[dict[str, Any]]:
    """Checks that resuming from every stop point gives exactly the uninterrupted run.

    Args:
        make_loader: builds a fresh loader, identical every time (same data order, same seed,
            a scoring model with identical weights that is not trained between calls).
        stop_after_steps: stop points in refined batches over the whole run: 0 saves before
            any iteration, ``n`` saves while the iterator is suspended right after batch ``n``.
        epochs: how many epochs the run has.
        stop_after_epochs: epochs after whose completed iteration to save too (between epochs);
            default: every epoch.
        set_epoch: call ``loader.set_epoch(epoch)`` before every epoch, as users of a
            ``DistributedSampler`` do (also before finishing the interrupted epoch).

    Returns:
        The saved states (after the ``weights_only`` round trip), one per stop point, stop
        steps first, so that tests can check what the stop points covered.

    Raises:
        AssertionError: if a resumed run's batches after the stop point (their samples, their
            order, the epoch each falls in) or its final stats counters differ.
    """
    reference_loader = make_loader()
    reference = Run(run_epochs(reference_loader, epochs, 0, set_epoch), reference_loader.stats)
    del reference_loader
    per_epoch = [sum(1 for e, _ in reference.batches if e == k) for k in range(epochs)]
    stops: list[tuple[int | None, int | None]] = [(s, None) for s in stop_after_steps]
    ends = range(epochs) if stop_after_epochs is None else stop_after_epochs
    stops += [(None, e) for e in ends]
    states = []
    for stop, stop_epoch in stops:
        first = make_loader()
        saved, epoch = _stop_and_save(first, epochs, stop, stop_epoch, set_epoch)
        done = stop if stop is not None else sum(per_epoch[:epoch])
        del first
        state = roundtrip(saved)
        states.append(state)
        resumed = make_loader()
        resumed.load_state_dict(state)
        batches = run_epochs(resumed, epochs - epoch, epoch, set_epoch)
        where = f"resumed after {done} batches" + (
            f" (the end of epoch {stop_epoch})" if stop_epoch is not None else ""
        )
        expected = reference.batches[done:]
        if batches != expected:
            sizes = [_size(b) for _, b in batches]
            want = [_size(b) for _, b in expected]
            first_bad = next(
                (i for i, (a, b) in enumerate(zip(batches, expected, strict=False)) if a != b),
                min(len(batches), len(expected)),
            )
            raise AssertionError(
                f"{where}: the batches differ from the uninterrupted run from batch "
                f"{done + first_bad} on; resumed sizes {sizes}, uninterrupted sizes {want}."
            )
        got, want_stats = _stats_key(resumed.stats), _stats_key(reference.stats)
        if got != want_stats:
            diff = {k: (got[k], want_stats[k]) for k in got if got[k] != want_stats[k]}
            raise AssertionError(f"{where}: final stats differ (resumed, uninterrupted): {diff}")
    return states


def _size(batch: Any) -> int:
    """The number of samples of a canonical batch (its first per-sample leaf)."""
    if isinstance(batch, tuple) and batch[0] == "tensor":
        return len(batch[2])
    if isinstance(batch, dict):
        batch = list(batch.values())
    if isinstance(batch, list):
        if batch and all(not isinstance(v, (list, tuple, dict)) for v in batch):
            return len(batch)
        for value in batch:
            n = _size(value)
            if n >= 0:
                return n
    return -1
