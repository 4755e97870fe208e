"""The epochs of a :class:`~smartsift.SiftingDataLoader`: rounds until every rank is done.

One round pulls a raw batch on every rank (:func:`~smartsift.modes.pull.pull`: load, score),
exchanges it with every rank in one collective, then passes it through, sifts it
(:func:`~smartsift.engine.step.sift_step`) or, once every rank is exhausted, deals out the
epoch's leftovers (:func:`~smartsift.engine.flush.flush_epoch`); the policy's bound state
plans the round and hears what it measured. The loader hands the refined batches over.

With a ``reference`` the policy ranks each sample's score, ``loss - reference``
(:mod:`smartsift.modes.reference`): the scores are exchanged in place of the losses, the losses
travel beside them (the audit, the trace and ``Auto`` read the losses), and a sample whose
reference is unknown passes unsifted.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> data = TensorDataset(torch.randn(64, 4), torch.randint(0, 2, (64,)))
    >>> def loss_fn(model, batch):
    ...     return torch.nn.functional.cross_entropy(model(batch[0]), batch[1], reduction="none")
    >>> loader = ss.SiftingDataLoader(DataLoader(data, batch_size=16), torch.nn.Linear(4, 2),
    ...                               loss_fn, ss.TopK(0.5), seed=0)
    >>> [len(x) for x, _ in EpochRunner(loader).run()]
    [16, 16]
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from smartsift.batches.structure import select
from smartsift.engine.distributed import PeerRound
from smartsift.engine.flush import flush_epoch
from smartsift.engine.rounds import RoundClock, raise_errors
from smartsift.engine.selector import Decision
from smartsift.engine.step import sift_step
from smartsift.modes.pull import pull
from smartsift.modes.reference import attach_losses, reducible_step
from smartsift.modes.scoring import score
from smartsift.policies.base import SKIP, RoundReport

if TYPE_CHECKING:
    from smartsift.modes.loader import SiftingDataLoader

__all__ = ["EpochRunner"]

logger = logging.getLogger("smartsift")


class EpochRunner:
    """Runs a loader's epochs, round by round (see the module); one per loader.

    Args:
        loader: the loader whose parts, settings and collectives the rounds use.
    """

    def __init__(self, loader: SiftingDataLoader) -> None:
        self.lo = loader
        self._clock = RoundClock()
        self._raw_iter: Iterator[Any] | None = None
        self._warned_empty = False
        self._dropped_before = 0  # samples_dropped when the current epoch began
        self._round_kept: list[int] = []

    def epoch_restored(self, dropped: int) -> None:
        """The loader resumed from a state whose ledger had dropped ``dropped`` samples."""
        self._dropped_before = dropped

    def run(self) -> Iterator[Any]:
        """One epoch: refined batches until the wrapped loader is exhausted on every rank."""
        cur, batcher, ledger = self.lo._cursor, self.lo._batcher, self.lo._ledger
        if not cur.seeded:
            self.lo._selector.reseed(self.lo._lockstep.agree_seed(self.lo._seed))
            cur.seeded = True
        if cur.in_epoch and not cur.resume:
            self._abandon_epoch()
        if not cur.resume:
            self._dropped_before = ledger.counts["samples_dropped"]
        self._raw_iter = cur.open(self.lo.dataloader)
        ready = batcher.ready
        while True:
            if ready:
                item = ready.popleft()
                ledger.trained(item.size)
                cur.steps_in_epoch += 1
                batch = item.batch
                if not item.raw and self.lo.transform is not None:
                    batch = self.lo.transform.reverse_transform(batch)
                t0 = time.perf_counter()
                yield batch
                self._clock.step(time.perf_counter() - t0, item.size)  # the user's step
                continue
            if cur.flushed:
                break
            try:
                self._round()
            except BaseException:
                cur.interrupted = True  # a raw batch may be half done: the epoch is abandoned
                raise
        self._raw_iter = None
        self._warn_if_empty()
        cur.finish()
        ledger.epoch_done()

    def _abandon_epoch(self) -> None:
        """Drops what an unfinished epoch left behind; it is counted, never carried over."""
        self.lo._ledger.dropped(self.lo._cursor.epoch, self.lo._batcher.clear())
        self.lo._cursor.finish()

    def _warn_if_empty(self) -> None:
        cur = self.lo._cursor
        dropped = self.lo._ledger.counts["samples_dropped"] > self._dropped_before
        if cur.steps_in_epoch == 0 and dropped and self.lo.drop_last and not self._warned_empty:
            self._warned_empty = True
            warnings.warn(
                f"This epoch pulled {cur.raw_in_epoch} raw batch(es) but trained on nothing: "
                f"with drop_last={self.lo.drop_last}, batch_size={self.lo.batch_size} is larger "
                "than what the epoch kept, so every kept sample was dropped (see "
                "stats.samples_dropped). Lower `batch_size`, or pass drop_last=False.",
                stacklevel=3,
            )

    def _round(self) -> None:
        """One round: pull a raw batch, score it, agree with the other ranks, select, batch."""
        cur, ledger, selector = self.lo._cursor, self.lo._ledger, self.lo._selector
        state = selector.state
        # Past the sift delay the policy plans the round: it may pass it through unscored too.
        planned = not cur.in_delay(self.lo.sift_delay, self.lo.repeat_delay_per_epoch)
        skip = not planned or state.round_kind() == SKIP
        hybrid = self.lo._hybrid
        got = pull(
            self._raw_iter, cur, self.lo._batcher, None if skip else self._score,
            state.sample_inputs, self.lo.device, self.lo.transform,
            self._reference if self.lo._reference is not None else None,
            None if hybrid is None else hybrid.rows,
        )  # fmt: skip
        ledger.times["data_s"] += got.data_s
        size, losses, side = got.size, got.losses, got.side
        needs = state.needs
        if side is None and (needs.ids or needs.labels):
            side = np.zeros((int(needs.ids) + int(needs.labels), 0))
        if self._paired:  # the losses travel beside the scores, as the last side row
            side = attach_losses(side, losses)
        scalars = None
        if planned:
            scalars = state.round_scalars(self._clock.lap(losses.size, got.data_s, size))
        peers = self.lo._lockstep.exchange(
            size,
            got.scores,
            self.lo._batcher.buffered,
            cur.exhausted,
            got.error is not None,
            side,
            scalars,
        )
        raise_errors(peers, got.error, self.lo.ranks.rank)
        cur.advance()
        if self.lo._batcher.batch_size is None and max(p.size for p in peers) > 0:
            self.lo._batcher.batch_size = max(p.size for p in peers)
        ledger.pulled(size)
        if all(p.exhausted for p in peers):
            self._flush(peers)
        elif skip:
            self._pass_through(peers, got.raw, got.sliceable, size)
        else:
            self._sift(peers, got.sliceable, size, losses)
        if planned and any(p.size for p in peers):
            self._end_round(peers, skip)
        pulled = ledger.counts["raw_batches"]
        if self.lo.log_interval and size > 0 and pulled % self.lo.log_interval == 0:
            if self.lo.log_fn is not None:
                self.lo.log_fn(self.lo.stats, ledger.counts["steps"])
            else:
                logger.info("smartsift epoch %d: %s", cur.epoch, self.lo.stats)

    def _score(self, raw: Any, size: int) -> np.ndarray:
        t0 = time.perf_counter()
        losses = score(
            self.lo.model,
            self.lo.loss_fn,
            raw,
            size,
            train_mode=self.lo.score_in_train_mode,
            autocast_dtype=self.lo.autocast_dtype,
        ).numpy()
        seconds = time.perf_counter() - t0
        self.lo._ledger.times["scoring_s"] += seconds
        self._clock.overhead(seconds)
        self.lo._selector.screen(losses)
        return losses

    def _reference(self, raw: Any, sliceable: Any, size: int) -> np.ndarray:
        """The reference's losses of a scored batch, timed as part of the scoring pass."""
        t0 = time.perf_counter()
        reference = self.lo._reference
        assert reference is not None  # only called with a reference
        values = reference.values(raw, sliceable, size, self.lo.autocast_dtype)
        seconds = time.perf_counter() - t0
        self.lo._ledger.times["scoring_s"] += seconds
        self._clock.overhead(seconds)
        return values

    @property
    def _paired(self) -> bool:
        """Whether scores and losses differ (a reference, or the hybrid mode's unscored rows):
        the losses then travel beside the scores, and a finite loss without a score passes."""
        return self.lo._reference is not None or self.lo._hybrid is not None

    def _split(self, peers: list[PeerRound]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Every rank's losses and side rows (the losses row taken off, when paired)."""
        if not self._paired:
            return [p.losses for p in peers], [p.channels for p in peers]
        return [p.channels[-1] for p in peers], [p.channels[:-1] for p in peers]

    def _end_round(self, peers: list[PeerRound], skipped: bool) -> None:
        """Tells the policy's state what the round measured (every rank alike)."""
        state = self.lo._selector.state
        report = RoundReport(
            self._split(peers)[0], None if skipped else self._round_kept,
            [p.scalars for p in peers],
        )  # fmt: skip
        message = state.end_round(report, self.lo._context)
        if message is not None and self.lo.ranks.rank == 0:
            logger.info("smartsift %s, epoch %d: %s", state.name, self.lo._cursor.epoch, message)

    def _pass_through(self, peers: list[PeerRound], raw: Any, sliceable: Any, size: int) -> None:
        batcher = self.lo._batcher
        self.lo._ledger.passed(self.lo._cursor.epoch, sliceable, size)
        bs = batcher.batch_size
        if all(0 < p.size <= bs and p.buffered == 0 for p in peers):  # type: ignore[operator]
            batcher.push_ready(raw, size, sliceable)  # the fast path: the raw batch, untouched
            return
        # Raw batches larger than the refined ones are cut to size, so that training takes
        # steps of one size before and after sifting starts; uneven ranks (some exhausted,
        # or buffers not empty) also go through the buffer.
        batcher.push(sliceable, size)
        self._emit([p.buffered + p.size for p in peers])

    def _sift(self, peers: list[PeerRound], sliceable: Any, size: int, losses: np.ndarray) -> None:
        t0 = time.perf_counter()
        selector = self.lo._selector
        needs_inputs = selector.needs_ids or selector.needs_labels
        me = self.lo.ranks.rank if self.lo.ranks.distributed else 0
        scores = [p.losses for p in peers]
        all_losses, channels = self._split(peers)
        inputs = channels if needs_inputs else None
        unknown = None
        if not self._paired:
            decision = sift_step(selector, self.lo._batcher, sliceable, size, scores, me, inputs)
        else:
            decision, unknown = reducible_step(
                selector, self.lo._batcher, sliceable, size, scores, all_losses, me, inputs
            )
        if self.lo._hybrid is not None:
            self.lo._hybrid.record_sifted(losses, decision.masks[me])
        self._round_kept = decision.kept
        if size > 0:
            self._record(decision, me, sliceable, losses, None if unknown is None else unknown[me])
        self._emit([p.buffered + k for p, k in zip(peers, decision.kept, strict=True)])
        seconds = time.perf_counter() - t0
        self.lo._ledger.times["selection_s"] += seconds
        self._clock.overhead(seconds)

    def _record(
        self,
        decision: Decision,
        me: int,
        sliceable: Any,
        losses: np.ndarray,
        unknown: np.ndarray | None,
    ) -> None:
        """Writes this rank's decision to the ledger: the losses (never the scores) of the
        decided samples, and the unreferenced ones as passed."""
        ledger, epoch = self.lo._ledger, self.lo._cursor.epoch
        mask, bad = decision.masks[me], decision.nonfinite[me]
        if unknown is None or not unknown.any():
            ledger.scored(epoch, sliceable, losses, mask, bad)
            return
        audited = ledger.audit is not None  # the batch is sliced only for the audit's ids
        decided, passed = np.flatnonzero(~unknown), np.flatnonzero(unknown)
        part = select(sliceable, torch.from_numpy(decided)) if audited else None
        ledger.scored(epoch, part, losses[decided], mask[decided], bad)
        part = select(sliceable, torch.from_numpy(passed)) if audited else None
        ledger.passed(epoch, part, int(passed.size))

    def _emit(self, counts: list[int]) -> None:
        """Forms as many full refined batches as every rank can form."""
        bs = self.lo._batcher.batch_size
        if bs is not None:  # else no rank has had a sample yet: nothing to form
            self.lo._batcher.form(min(counts) // bs)

    def _flush(self, peers: list[PeerRound]) -> None:
        """Hands out the epoch's leftovers so that every rank yields the same number of batches."""
        self.lo._cursor.flushed = True
        dropped = flush_epoch(
            self.lo._batcher, [p.buffered for p in peers], self.lo.ranks.rank, self.lo.drop_last,
            self.lo._lockstep.gather_objects, self.lo.device,
        )  # fmt: skip
        if dropped:
            self.lo._ledger.dropped(self.lo._cursor.epoch, dropped)
