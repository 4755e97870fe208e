"""The refined batcher: buffers kept samples and forms batches of exactly ``batch_size``.

Kept samples arrive as slices of raw batches (in sliceable form); :meth:`RefinedBatcher.form`
takes ``batch_size`` samples at a time, in arrival order, splitting a slice where a batch ends,
and joins them into one batch. Formed batches wait in :attr:`RefinedBatcher.ready` as
:class:`ReadyBatch` until the loader hands them out. The joinability of raw batches is checked
against the first raw batch seen, so a layout that could never join is refused at once, not
when sifting first needs to join it.

Example:
    >>> import torch
    >>> batcher = RefinedBatcher(batch_size=4)
    >>> batcher.push(torch.arange(3), 3)
    >>> batcher.push(torch.arange(10, 13), 3)
    >>> batcher.form(1)
    >>> batcher.ready.popleft().batch.tolist(), batcher.buffered
    ([0, 1, 2, 10], 2)
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

from smartsift.batches.structure import (
    batch_size_of,
    concat,
    container_types,
    narrow,
    restore_types,
    signature,
    to_plain,
)

__all__ = ["Joiner", "ReadyBatch", "RefinedBatcher"]


class ReadyBatch(NamedTuple):
    """A batch formed and waiting to be yielded.

    Attributes:
        batch: the batch; a raw batch passed through untouched, or a refined batch in
            sliceable form.
        size: its number of samples.
        raw: whether ``batch`` is a raw batch as the wrapped loader gave it.
        sliceable: the sliceable form of a raw batch (``batch`` itself when not raw).
    """

    batch: Any
    size: int
    raw: bool = False
    sliceable: Any = None


class Joiner(Protocol):
    """How kept samples of several raw batches join into one batch (e.g. a ``Padding``)."""

    def layout(self, batch: Any) -> Any:
        """What must match for two batches' samples to be joined."""
        ...

    def join(self, pieces: Sequence[Any]) -> Any:
        """The pieces joined along the sample dimension."""
        ...


class RefinedBatcher:
    """The buffer of kept samples and the queue of formed batches.

    Args:
        batch_size: the refined batch size (None until known; set :attr:`batch_size` later).
        joiner: how pieces are joined; default :func:`smartsift.batches.structure.concat`, which
            needs equal trailing shapes.
    """

    def __init__(self, batch_size: int | None = None, joiner: Joiner | None = None) -> None:
        self.batch_size = batch_size
        self.joiner = joiner
        self._join: Callable[[Sequence[Any]], Any] = joiner.join if joiner else concat
        self.chunks: list[Any] = []
        self.sizes: list[int] = []
        self.ready: deque[ReadyBatch] = deque()
        self._reference: Any = None  # layout of the first raw batch seen

    @property
    def buffered(self) -> int:
        """Samples in the buffer, not yet in a formed batch."""
        return sum(self.sizes)

    @property
    def pending(self) -> int:
        """Samples buffered or in formed batches not yet handed out."""
        return self.buffered + sum(r.size for r in self.ready)

    def check_layout(self, sliceable: Any, layout: Any) -> None:
        """Refuses a raw batch whose samples could not join those of the first raw batch.

        Args:
            sliceable: the raw batch in sliceable form.
            layout: its :func:`~smartsift.batches.structure.signature` (ignored with a joiner,
                whose own layout is taken).

        Raises:
            ValueError: naming both layouts and the fix.
        """
        if self.joiner is not None:
            layout = self.joiner.layout(sliceable)
        if self._reference is None:
            self._reference = layout
        elif layout != self._reference:
            raise ValueError(
                "This raw batch cannot be joined with the samples of earlier raw batches: its "
                "per-sample entries differ in structure, trailing shape, dtype or device "
                f"({layout} against {self._reference}). Refined batches mix samples of several "
                "raw batches, so every raw batch needs the same layout: pad sequences to a fixed "
                "length, pass `padding=smartsift.Padding(...)` to join padded sequences, or pass "
                "a BatchTransform."
            )

    def push(self, chunk: Any, size: int) -> None:
        """Adds ``size`` kept samples (a sliceable batch) to the buffer."""
        if size > 0:
            self.chunks.append(chunk)
            self.sizes.append(size)

    def push_ready(self, batch: Any, size: int, sliceable: Any) -> None:
        """Queues a raw batch to be handed out as it is."""
        self.ready.append(ReadyBatch(batch, size, True, sliceable))

    def form(self, n: int) -> None:
        """Forms ``n`` batches of exactly ``batch_size`` samples from the buffer."""
        bs = self.batch_size
        if bs is None:
            return
        for _ in range(n):
            batch = self.take(bs)
            self.ready.append(ReadyBatch(batch, bs, False, batch))

    def form_all(self) -> None:
        """Forms as many full batches as the buffer holds."""
        if self.batch_size:
            self.form(self.buffered // self.batch_size)

    def queue(self, batch: Any, size: int) -> None:
        """Queues an already joined batch in sliceable form (e.g. dealt out by DDP ranks)."""
        self.ready.append(ReadyBatch(batch, size, False, batch))

    def join(self, pieces: Sequence[Any]) -> Any:
        """Joins sliceable batches along the sample dimension, as refined batches are."""
        return self._join(pieces)

    def take(self, n: int) -> Any:
        """Removes the first ``n`` buffered samples and returns them joined."""
        pieces = []
        while n > 0:
            size = self.sizes[0]
            if size <= n:
                pieces.append(self.chunks.pop(0))
                self.sizes.pop(0)
                n -= size
            else:
                chunk = self.chunks[0]
                pieces.append(narrow(chunk, 0, n))
                self.chunks[0] = narrow(chunk, n, size - n)
                self.sizes[0] = size - n
                n = 0
        return self._join(pieces)

    def clear(self, ready: bool = True) -> list[tuple[Any, int]]:
        """Empties the buffer (and the ready queue); returns what was in it as
        ``(sliceable batch, size)`` pairs."""
        out = list(zip(self.chunks, self.sizes, strict=True))
        if ready:
            out += [(r.sliceable, r.size) for r in self.ready]
            self.ready.clear()
        self.chunks.clear()
        self.sizes.clear()
        return out

    def state_dict(self) -> dict[str, Any]:
        """The buffer and ready queue as tensors and plain values, with the container types
        of the batches so that named tuples and dict subclasses come back as they were."""
        sample = self.chunks[0] if self.chunks else self.ready[0].sliceable if self.ready else None
        return {
            "batch_size": self.batch_size,
            "buffer": [to_plain(c) for c in self.chunks],
            "buffer_sizes": list(self.sizes),
            "ready": [to_plain(r.sliceable) for r in self.ready],
            "types": container_types(sample) if sample is not None else None,
        }

    def load_state_dict(
        self, state: dict[str, Any], move: Callable[[Any], Any] = lambda b: b
    ) -> None:
        """Restores :meth:`state_dict`'s output; ``move`` places each batch (e.g. on a device)."""
        types = state.get("types")

        def restore(batch: Any) -> Any:
            return move(restore_types(batch, types))

        self.batch_size = state["batch_size"]
        self.chunks = [restore(c) for c in state["buffer"]]
        self.sizes = [int(n) for n in state["buffer_sizes"]]
        ready = [restore(b) for b in state["ready"]]
        self.ready = deque(ReadyBatch(b, batch_size_of(b), False, b) for b in ready)
        self._reference = None
        if self.chunks:
            head = self.chunks[0]
            self._reference = self.joiner.layout(head) if self.joiner else signature(head)
