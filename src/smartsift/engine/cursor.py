"""The epoch cursor: where a sifting loader stands in its epochs, and how to resume there.

It counts epochs and rounds (one raw batch per rank each), knows whether the sift delay is
still running, whether this rank's raw iterator is exhausted, whether the epoch's leftovers were
handed out and whether an exception abandoned the epoch. To resume mid-epoch over a plain
``DataLoader`` it saves the states of the loader's ``torch.Generator``\\ s when the epoch began
and replays the batches already consumed; a stateful loader (torchdata's
``StatefulDataLoader``) restores its own position instead.

Example:
    >>> cursor = EpochCursor()
    >>> it = cursor.open([[1], [2], [3]])
    >>> next(it), cursor.in_epoch, cursor.in_delay(sift_delay=2, per_epoch=False)
    ([1], True, True)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Iterator
from typing import Any

import torch

__all__ = [
    "EpochCursor",
    "estimate_batches",
    "forward_epoch",
    "is_stateful",
    "loader_generators",
]

_FIELDS = (
    "epoch",
    "in_epoch",
    "interrupted",
    "rounds_in_epoch",
    "rounds_total",
    "raw_in_epoch",
    "steps_in_epoch",
    "exhausted",
    "flushed",
    "seeded",
)


def is_stateful(obj: Any) -> bool:
    """Whether ``obj`` has ``state_dict`` and ``load_state_dict`` (a stateful loader).

    accelerate's prepared loaders have both methods whatever they wrap, but they work only
    over a ``StatefulDataLoader`` (``use_stateful_dataloader=True``); over a plain
    ``DataLoader`` they count as stateless.

    Example:
        >>> from torch.utils.data import DataLoader
        >>> is_stateful(DataLoader(range(4)))
        False
    """
    if getattr(obj, "use_stateful_dataloader", True) is False:
        return False
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def loader_generators(dataloader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator``\\ s a plain data loader draws from when an epoch starts.

    A stateful loader restores its own: none are returned.
    """
    if is_stateful(dataloader):
        return []
    found: list[torch.Generator] = []
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    sampler = getattr(dataloader, "sampler", None)
    for owner in (dataloader, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


class EpochCursor:
    """Epoch, round and delay counters of one loader, with the replay of a plain loader.

    Attributes:
        epoch: the current epoch number.
        in_epoch: an epoch was started and not finished.
        resume: the next iteration continues the loaded epoch.
        interrupted: an exception escaped a round; the epoch is abandoned.
        rounds_in_epoch, rounds_total: rounds of the lockstep protocol so far.
        raw_in_epoch: raw batches this rank pulled this epoch.
        steps_in_epoch: batches this rank yielded this epoch.
        exhausted: this rank's raw iterator is done for the epoch.
        flushed: the epoch's leftovers were handed out.
        seeded: the ranks agreed on the selector's seed.
    """

    def __init__(self) -> None:
        self.epoch = 0
        self.in_epoch = False
        self.resume = False
        self.interrupted = False
        self.rounds_in_epoch = 0
        self.rounds_total = 0
        self.raw_in_epoch = 0
        self.steps_in_epoch = 0
        self.exhausted = False
        self.flushed = False
        self.seeded = False
        self.sampler_rng: list[torch.Tensor] = []

    def in_delay(self, sift_delay: int, per_epoch: bool) -> bool:
        """Whether the next round is still inside the sift delay."""
        done = self.rounds_in_epoch if per_epoch else self.rounds_total
        return done < sift_delay

    def delay_left(self, sift_delay: int, per_epoch: bool, epoch_rounds: int) -> int:
        """How many of an epoch of ``epoch_rounds`` raw batches the delay still covers."""
        this_epoch = self.rounds_in_epoch if self.in_epoch else 0
        done = 0 if per_epoch else self.rounds_total - this_epoch
        return max(0, min(epoch_rounds, sift_delay - done))

    def open(self, dataloader: Iterable[Any]) -> Iterator[Any] | None:
        """Starts an epoch, or continues the loaded one; returns the raw iterator (None when
        the loaded epoch had already exhausted it)."""
        if self.resume:
            self.resume = False
            return None if self.exhausted else self._replay(dataloader)
        self.in_epoch, self.exhausted, self.flushed, self.interrupted = True, False, False, False
        self.rounds_in_epoch = self.raw_in_epoch = self.steps_in_epoch = 0
        self.sampler_rng = [gen.get_state() for gen in loader_generators(dataloader)]
        return iter(dataloader)

    def advance(self) -> None:
        """Counts one round."""
        self.rounds_in_epoch += 1
        self.rounds_total += 1

    def finish(self) -> None:
        """Ends the epoch (completed or abandoned)."""
        self.in_epoch = False
        self.epoch += 1

    def _replay(self, dataloader: Iterable[Any]) -> Iterator[Any]:
        it = iter(dataloader)
        if is_stateful(dataloader):
            return it  # the wrapped loader restored its own position
        consumed = self.raw_in_epoch
        if consumed:
            sampler = getattr(dataloader, "sampler", None)
            if getattr(sampler, "generator", "n/a") is None:
                warnings.warn(
                    "Resuming mid-epoch by replaying the wrapped loader's first "
                    f"{consumed} batches, but its sampler has no seeded generator, so the "
                    "replayed order may differ. Give the sampler a torch.Generator or use "
                    "torchdata's StatefulDataLoader.",
                    stacklevel=4,
                )
        for _ in range(consumed):
            next(it)
        return it

    def state_dict(self, dataloader: Any) -> dict[str, Any]:
        """The counters, and the wrapped loader's generator states that make its next
        ``iter()`` replay right: mid-epoch those at the epoch start (the epoch's raw batches
        are replayed on resume), otherwise the current ones (the next ``iter()`` starts a new
        epoch)."""
        state: dict[str, Any] = {k: getattr(self, k) for k in _FIELDS}
        if self.in_epoch and not self.exhausted and not self.interrupted:
            state["sampler_rng"] = list(self.sampler_rng)
        else:
            state["sampler_rng"] = [gen.get_state() for gen in loader_generators(dataloader)]
        return state

    def load_state_dict(self, state: dict[str, Any], dataloader: Any) -> None:
        """Restores :meth:`state_dict`'s output and the wrapped loader's generators."""
        for key in _FIELDS:
            setattr(self, key, type(getattr(self, key))(state.get(key, getattr(self, key))))
        # After an exception inside the loader the live loader starts a new epoch; so does this.
        self.resume = self.in_epoch and not self.interrupted
        gens = loader_generators(dataloader)
        saved = state.get("sampler_rng") or []
        if len(saved) == len(gens):  # the next iter() then draws the epoch's order again
            for gen, rng in zip(gens, saved, strict=True):
                gen.set_state(rng)
            self.sampler_rng = list(saved)


def forward_epoch(dataloader: Any, epoch: int) -> None:
    """Calls ``set_epoch(epoch)`` of the loader, its sampler, its batch sampler's sampler or its
    dataset: the first that has one."""
    for target in (
        dataloader,
        getattr(dataloader, "sampler", None),
        getattr(getattr(dataloader, "batch_sampler", None), "sampler", None),
        getattr(dataloader, "dataset", None),
    ):
        set_epoch = getattr(target, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(epoch)
            return


def estimate_batches(
    raw_batches: int, delay: int, raw_size: int, batch_size: int, keep: float, drop_last: bool
) -> int:
    """The refined batches of an epoch of ``raw_batches`` raw batches of ``raw_size``, of which
    ``delay`` pass through and the rest keep the fraction ``keep`` (a planning figure).

    Example:
        >>> estimate_batches(10, 2, 32, 32, 0.5, drop_last=False)
        6
    """
    kept = (raw_batches - delay) * raw_size * keep
    if raw_size > batch_size:  # delayed raw batches are cut to size and join the buffer too
        kept, delay = kept + delay * raw_size, 0
    refined = math.floor(kept / batch_size) if drop_last else math.ceil(kept / batch_size - 1e-9)
    return delay + refined
