"""``SiftingDataLoader``: wraps a data loader and yields refined batches of high-loss samples.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> import smartsift as ss
    >>> data = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    >>> model = torch.nn.Linear(8, 2)
    >>> def loss_fn(model, batch):
    ...     x, y = batch
    ...     return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> loader = ss.SiftingDataLoader(
    ...     DataLoader(data, batch_size=32), model, loss_fn,
    ...     policy=ss.RelativeProbabilistic(beta=1.0), seed=0,
    ... )
    >>> sizes = [len(x) for x, y in loader]
    >>> all(s == 32 for s in sizes[:-1]) and loader.stats.samples_seen == 256
    True
"""

from __future__ import annotations

import logging
import math
import secrets
import time
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import BatchTransform, inspect_batch, narrow, select, to_device
from smartsift.engine import checkpoint as ckpt
from smartsift.engine.audit import SiftAudit
from smartsift.engine.batcher import Joiner, RefinedBatcher
from smartsift.engine.checks import (
    check_dataloader,
    check_int,
    check_loss_fn,
    check_model,
    check_optional_int,
    check_policy,
    check_transform,
)
from smartsift.engine.cursor import EpochCursor, is_stateful
from smartsift.engine.distributed import Lockstep, PeerRound, RemoteRankError, resolve_ranks
from smartsift.engine.ledger import Ledger, SiftTrace
from smartsift.engine.leftovers import plan_leftovers
from smartsift.engine.selector import NONFINITE_MODES, Selector
from smartsift.engine.stats import SiftStats, from_sums, stats_fields
from smartsift.modes.scoring import LossFn, score
from smartsift.policies import Policy, RelativeProbabilistic
from smartsift.policies.auto import SKIP

__all__ = ["NONFINITE_MODES", "SiftingDataLoader"]

logger = logging.getLogger("smartsift")

_EMPTY = np.empty(0, dtype=np.float64)
_CPU = torch.device("cpu")


class SiftingDataLoader:
    """Wraps a data loader; yields refined batches of the samples worth training on.

    Every raw batch is scored with a gradient-free forward pass of ``model`` and ``loss_fn``;
    the ``policy`` decides which samples to keep; kept samples are accumulated into refined
    batches of ``batch_size`` samples, in the raw batches' structure and types. Each iteration
    over the loader is one epoch of the wrapped loader. Under an initialised
    ``torch.distributed`` process group every rank yields the same number of batches.

    The work is done by the engine's parts (see ``docs/design.md``): a
    :class:`~smartsift.engine.selector.Selector` decides, a
    :class:`~smartsift.engine.batcher.RefinedBatcher` forms batches, the
    :func:`~smartsift.engine.leftovers.plan_leftovers` plan shares an epoch's last samples between
    ranks, an :class:`~smartsift.engine.cursor.EpochCursor` tracks the epoch and a
    :class:`~smartsift.engine.ledger.Ledger` records every sample's outcome; this class pulls, scores,
    exchanges and hands over.

    Args:
        dataloader: any re-iterable of batches, typically a ``torch.utils.data.DataLoader``.
        model: the model being trained; DDP and ``torch.compile`` wrappers are accepted.
        loss_fn: ``loss_fn(model, batch) -> Tensor`` of shape ``(B,)``, one loss per sample.
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``.
            :class:`~smartsift.Guarded` limits any policy against noise (reading sample ids
            and labels from the batch); :class:`~smartsift.Auto` sifts only where it pays,
            training plain (raw batches passed through unscored) where it does not.
        sift_delay: raw batches passed through unsifted (and unscored) before sifting starts;
            raw batches larger than ``batch_size`` are cut into batches of ``batch_size``.
        repeat_delay_per_epoch: apply ``sift_delay`` at the start of every epoch.
        batch_size: refined batch size; default: the wrapped loader's batch size, or the size
            of the first raw batch.
        drop_last: drop the last, smaller refined batch of an epoch (counted in
            ``stats.samples_dropped``).
        device: if set, each raw batch moves here once; refined batches come out here.
        transform: a :class:`~smartsift.BatchTransform` for batches that cannot be sliced.
        padding: how samples padded to different lengths join (a :class:`~smartsift.Padding`,
            or any object with ``layout(batch)`` and ``join(pieces)``).
        seed: seed of the loader's private generator (rank 0's seed is used on every rank).
        nonfinite: what to do with NaN or infinite losses: ``"raise"`` (default) a ValueError,
            ``"drop"`` the samples, or ``"keep"`` them. They never enter the loss history.
        score_in_train_mode: score with the model in train mode (buffers restored afterwards).
        autocast_dtype: run the scoring pass under ``torch.autocast`` with this dtype.
        log_interval: report ``stats`` every this many raw batches: through the ``smartsift``
            logger, or to ``log_fn`` when given.
        log_fn: ``log_fn(stats, step)``, called every ``log_interval`` raw batches (e.g.
            :func:`smartsift.integrations.tensorboard.tensorboard_logger`).
        rank, world_size, process_group: the distributed setting; detected from
            ``torch.distributed`` by default. ``world_size=1`` sifts each rank on its own.
        audit: a :class:`~smartsift.SiftAudit` that records, per epoch, which sample ids were
            kept, sifted (with their losses), passed through or dropped; off by default.
    """

    def __init__(
        self,
        dataloader: Iterable[Any],
        model: torch.nn.Module,
        loss_fn: LossFn,
        policy: Policy | None = None,
        *,
        sift_delay: int = 0,
        repeat_delay_per_epoch: bool = False,
        batch_size: int | None = None,
        drop_last: bool = False,
        device: torch.device | str | None = None,
        transform: BatchTransform | None = None,
        padding: Joiner | None = None,
        seed: int | None = None,
        nonfinite: str = "raise",
        score_in_train_mode: bool = False,
        autocast_dtype: torch.dtype | None = None,
        log_interval: int | None = None,
        log_fn: Callable[[SiftStats, int], Any] | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        process_group: Any = None,
        audit: SiftAudit | None = None,
    ) -> None:
        policy = RelativeProbabilistic() if policy is None else policy
        check_dataloader(dataloader)
        check_model(model)
        check_loss_fn(loss_fn)
        check_policy(policy)
        check_int("sift_delay", sift_delay, 0, "raw batches")
        check_optional_int("batch_size", batch_size, 1)
        check_transform(transform)
        check_optional_int("seed", seed, None)
        check_optional_int("log_interval", log_interval, 1)
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(
                f"Expected `nonfinite` to be one of {NONFINITE_MODES}, got {nonfinite!r}."
            )
        if audit is not None and not isinstance(audit, SiftAudit):
            raise TypeError(f"Expected `audit` to be a smartsift.SiftAudit or None, got {audit!r}.")
        if padding is not None and not (
            callable(getattr(padding, "layout", None)) and callable(getattr(padding, "join", None))
        ):
            raise TypeError(
                "Expected `padding` to be a smartsift.Padding (or an object with layout(batch) and "
                f"join(pieces) methods), but got {type(padding).__name__}."
            )
        if log_fn is not None and not callable(log_fn):
            raise TypeError(
                f"Expected `log_fn` to be callable as log_fn(stats, step), got {log_fn!r}."
            )
        self.dataloader = dataloader
        self.model = model
        self.loss_fn = loss_fn
        self.policy = policy
        self.sift_delay = sift_delay
        self.repeat_delay_per_epoch = bool(repeat_delay_per_epoch)
        self.drop_last = bool(drop_last)
        self.device = torch.device(device) if device is not None else None
        self.transform = transform
        self.padding = padding
        self.nonfinite = nonfinite
        self.score_in_train_mode = bool(score_in_train_mode)
        self.autocast_dtype = autocast_dtype
        self.log_interval = log_interval
        self.log_fn = log_fn
        self.audit = audit
        self.ranks = resolve_ranks(rank, world_size, process_group)
        self._seed = secrets.randbits(62) if seed is None else int(seed)
        raw_bs = getattr(dataloader, "batch_size", None)
        if batch_size is None and isinstance(raw_bs, int):
            batch_size = raw_bs  # the wrapped loader's; else the first raw batch's size
        self._configured_batch_size = batch_size
        self._lockstep = Lockstep(self.ranks, capacity=raw_bs if isinstance(raw_bs, int) else 0)
        self._selector = Selector(policy, nonfinite, self._seed)
        self._batcher = RefinedBatcher(batch_size, padding)
        self._cursor = EpochCursor()
        self._ledger = Ledger(audit)
        self._raw_iter: Iterator[Any] | None = None
        self._active: weakref.ref[Any] | None = None
        self._warned_empty = False
        self._dropped_before = 0  # samples_dropped when the current epoch began
        # What Auto measures between rounds: the user's steps, and the loader's own overhead.
        self._user_s = 0.0
        self._user_n = 0
        self._overhead_s = 0.0
        self._round_kept: list[int] = []

    # ----------------------------------------------------------------- public surface
    @property
    def batch_size(self) -> int | None:
        """The refined batch size (None until known from the first raw batch)."""
        return self._batcher.batch_size

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset, for code that looks for ``loader.dataset``."""
        return getattr(self.dataloader, "dataset", None)

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler, if it has one."""
        return getattr(self.dataloader, "sampler", None)

    @property
    def epoch(self) -> int:
        """The current epoch number (the next one, between epochs)."""
        return self._cursor.epoch

    @property
    def stats(self) -> SiftStats:
        """A snapshot of this process's counters and timers (a pure read)."""
        return self._ledger.snapshot(
            self._batcher.pending,
            self._lockstep.seconds,
            self._selector.quantiles(),
            self._selector.auto_status(),
        )

    @property
    def trace(self) -> SiftTrace:
        """What sifting did so far: keep counts per scored raw batch and the latest losses."""
        return self._ledger.trace()

    def report(self, path: str | Path, labels: Any = None, title: str | None = None) -> Path:
        """Saves a PNG of what sifting did: kept against sifted losses, the keep rate over
        training and, with an ``audit`` and ``labels`` (the class of every sample id), per-class
        keep rates. See :func:`smartsift.tools.report.plot_report`; needs matplotlib.
        """
        from smartsift.tools.report import plot_report

        return plot_report(
            self.trace,
            path,
            audit=self.audit,
            labels=labels,
            title=title,
            nominal_keep=self.policy.expected_keep,
        )

    def global_stats(self) -> SiftStats:
        """Stats summed over all ranks (a collective: call it on every rank).

        ``recent_keep_rate`` is taken over every rank's recent raw batches, so all ranks agree.
        """
        local = self.stats
        seen, kept = self._ledger.recent_rate()
        values = [float(getattr(local, k)) for k in stats_fields()] + [float(seen), float(kept)]
        *sums, seen_all, kept_all = self._lockstep.sum(values)
        rate = kept_all / seen_all if seen_all else float("nan")
        return from_sums(sums, rate, local.loss_quantiles, local.auto_state, local.auto_reason)

    def set_epoch(self, epoch: int) -> None:
        """Forwards ``epoch`` to the wrapped loader, its sampler or its dataset."""
        self._cursor.epoch = epoch
        dl = self.dataloader
        for target in (
            dl,
            getattr(dl, "sampler", None),
            getattr(getattr(dl, "batch_sampler", None), "sampler", None),
            getattr(dl, "dataset", None),
        ):
            set_epoch = getattr(target, "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
                return

    def __len__(self) -> int:
        """An estimate of the refined batches of one epoch, exact when nothing is sifted.

        It assumes the policy keeps its nominal fraction (``policy.expected_keep``) of every
        scored raw batch of ``len(dataloader)`` batches of the wrapped loader's batch size; the
        realised number of batches varies with the losses. It is a planning figure for progress
        bars, not a step count to size a learning-rate schedule with.
        """
        try:
            n_raw = len(self.dataloader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "The wrapped data loader has no length, so neither has the sifting loader; "
                "give your trainer a step count (e.g. max_steps) instead."
            ) from None
        delay = self._cursor.delay_left(self.sift_delay, self.repeat_delay_per_epoch, n_raw)
        raw_bs = getattr(self.dataloader, "batch_size", None) or self._batcher.batch_size
        bs = self._batcher.batch_size or self._configured_batch_size or raw_bs
        if not raw_bs or not bs:
            return n_raw
        kept = (n_raw - delay) * raw_bs * self.policy.expected_keep
        if raw_bs > bs:  # delayed raw batches are cut to size and join the buffer too
            kept, delay = kept + delay * raw_bs, 0
        refined = math.floor(kept / bs) if self.drop_last else math.ceil(kept / bs - 1e-9)
        return delay + refined

    def __iter__(self) -> Iterator[Any]:
        active = self._active() if self._active is not None else None
        if active is not None and active.gi_frame is not None:
            raise RuntimeError(
                "This SiftingDataLoader is already being iterated; finish or close the first "
                "iterator (or build a second loader) before starting another."
            )
        gen = self._iterate()
        self._active = weakref.ref(gen)
        return gen

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Returns the loader's state: tensors and plain Python values only.

        A nested dict (see :mod:`smartsift.engine.checkpoint`): the selector's history and generator,
        the batcher's buffered samples, the cursor's position in the epoch, counters and
        timers, and the wrapped loader's state when it has one. It saves with ``torch.save``
        and loads with ``torch.load(..., weights_only=True)``.
        """
        dl = self.dataloader
        return {
            ckpt.VERSION_KEY: ckpt.VERSION,
            ckpt.CONFIG: {"world_size": self.ranks.world_size, "rank": self.ranks.rank},
            ckpt.SELECTOR: self._selector.state_dict(),
            ckpt.BATCHER: self._batcher.state_dict(),
            ckpt.CURSOR: self._cursor.state_dict(dl),
            ckpt.RAW_LOADER: dl.state_dict() if is_stateful(dl) else None,  # type: ignore[attr-defined]
            ckpt.STATS: self._ledger.state_dict(),
            ckpt.COMM: {"capacity": self._lockstep.capacity, "seconds": self._lockstep.seconds},
            ckpt.AUDIT: self.audit.state_dict() if self.audit is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`; the next iteration resumes from it.

        States saved by an earlier release (version 1) are converted.

        Raises:
            ValueError: if the state was saved with another policy or world size, or is not a
                smartsift state.
        """
        state = ckpt.upgrade(state)
        saved_world = state[ckpt.CONFIG]["world_size"]
        if saved_world != self.ranks.world_size:
            raise ValueError(
                f"The state was saved by a job of {saved_world} ranks but this one has "
                f"{self.ranks.world_size}. Resuming on another world size is not supported: "
                "resume with the same number of ranks, each loading its own rank's state."
            )
        active = self._active() if self._active is not None else None
        if active is not None and active.gi_frame is not None:
            raise RuntimeError("Cannot load a state while the loader is being iterated.")
        selector = Selector(self.policy, self.nonfinite, self._seed)
        selector.load_state_dict(state[ckpt.SELECTOR])  # refuses another policy first
        batcher = RefinedBatcher(self._configured_batch_size, self.padding)
        device = self.device
        batcher.load_state_dict(
            state[ckpt.BATCHER], (lambda b: to_device(b, device)) if device else (lambda b: b)
        )
        ledger = Ledger(self.audit)
        ledger.load_state_dict(state[ckpt.STATS])
        if self.audit is not None and state.get(ckpt.AUDIT) is not None:
            self.audit.load_state_dict(state[ckpt.AUDIT])
        cursor = EpochCursor()
        dl = self.dataloader
        if state[ckpt.RAW_LOADER] is not None and is_stateful(dl):
            dl.load_state_dict(state[ckpt.RAW_LOADER])  # type: ignore[attr-defined]
            saved = state[ckpt.CURSOR]
            if saved["in_epoch"] and saved["interrupted"] and not saved["exhausted"]:
                # Its next iter() would finish the saved epoch, where the live loader's starts a
                # new one: let that iterator go unused.
                iter(dl)
        cursor.load_state_dict(state[ckpt.CURSOR], dl)
        self._dropped_before = ledger.counts["samples_dropped"]
        self._lockstep.capacity = int(state[ckpt.COMM]["capacity"])
        self._lockstep.seconds = float(state[ckpt.COMM].get("seconds", 0.0))
        self._selector, self._batcher, self._ledger, self._cursor = (
            selector,
            batcher,
            ledger,
            cursor,
        )

    # ----------------------------------------------------------------- iteration
    def _iterate(self) -> Iterator[Any]:
        cur, batcher, ledger = self._cursor, self._batcher, self._ledger
        if not cur.seeded:
            self._selector.reseed(self._lockstep.agree_seed(self._seed))
            cur.seeded = True
        if cur.in_epoch and not cur.resume:
            self._abandon_epoch()
        if not cur.resume:
            self._dropped_before = ledger.counts["samples_dropped"]
        self._raw_iter = cur.open(self.dataloader)
        ready = batcher.ready
        while True:
            if ready:
                item = ready.popleft()
                ledger.trained(item.size)
                cur.steps_in_epoch += 1
                batch = item.batch
                if not item.raw and self.transform is not None:
                    batch = self.transform.reverse_transform(batch)
                t0 = time.perf_counter()
                yield batch
                self._user_s += time.perf_counter() - t0  # the user's step, for Auto
                self._user_n += item.size
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
        self._ledger.dropped(self._cursor.epoch, self._batcher.clear())
        self._cursor.finish()

    def _warn_if_empty(self) -> None:
        cur = self._cursor
        dropped = self._ledger.counts["samples_dropped"] > self._dropped_before
        if cur.steps_in_epoch == 0 and dropped and self.drop_last and not self._warned_empty:
            self._warned_empty = True
            warnings.warn(
                f"This epoch pulled {cur.raw_in_epoch} raw batch(es) but trained on nothing: "
                f"with drop_last={self.drop_last}, batch_size={self.batch_size} is larger than "
                "what the epoch kept, so every kept sample was dropped (see "
                "stats.samples_dropped). Lower `batch_size`, or pass drop_last=False.",
                stacklevel=3,
            )

    def _round(self) -> None:
        """One round: pull a raw batch, score it, agree with the other ranks, select, batch."""
        cur, ledger, selector = self._cursor, self._ledger, self._selector
        delay = cur.in_delay(self.sift_delay, self.repeat_delay_per_epoch)
        auto = selector.auto is not None and not delay
        if auto and selector.round_kind() == SKIP:
            delay = True  # Auto trains plain: pass through unscored, as in the sift delay
        raw: Any = None
        sliceable: Any = None
        size = 0
        losses = _EMPTY
        side: np.ndarray | None = None
        data_s = 0.0
        error: BaseException | None = None
        if not cur.exhausted:
            t0 = time.perf_counter()
            try:
                raw = next(self._raw_iter)  # type: ignore[arg-type]
            except StopIteration:
                cur.exhausted = True
            except Exception as err:  # reported to the other ranks before it is raised
                error = _annotate(err, f"while loading raw batch {cur.raw_in_epoch} of the epoch")
            data_s = time.perf_counter() - t0
            ledger.times["data_s"] += data_s
        if raw is not None:
            cur.raw_in_epoch += 1
            try:
                if self.device is not None:
                    raw = to_device(raw, self.device, non_blocking=True)
                sliceable = self.transform.transform(raw) if self.transform is not None else raw
                size, layout = inspect_batch(sliceable)
                if size > 0:
                    self._batcher.check_layout(sliceable, layout)  # before the exchange
                    if not delay:
                        losses = self._score(raw, size)
                        side = self._side_values(sliceable, size)
            except Exception as err:
                error = _annotate(err, f"on raw batch {cur.raw_in_epoch - 1} of the epoch")
                size, losses, side = 0, _EMPTY, None
        buffered = self._batcher.buffered
        if side is None and (selector.needs_ids or selector.needs_labels):
            side = np.zeros((int(selector.needs_ids) + int(selector.needs_labels), 0))
        scalars = self._auto_scalars(losses.size, size, data_s) if auto else None
        peers = self._lockstep.exchange(
            size, losses, buffered, cur.exhausted, error is not None, side, scalars
        )
        _raise_errors(peers, error, self.ranks.rank)
        cur.advance()
        if self._batcher.batch_size is None and max(p.size for p in peers) > 0:
            self._batcher.batch_size = max(p.size for p in peers)
        ledger.pulled(size)
        if all(p.exhausted for p in peers):
            self._flush(peers)
        elif delay:
            self._pass_through(peers, raw, sliceable, size)
        else:
            self._sift(peers, sliceable, size, losses)
        if auto and any(p.size for p in peers):
            self._auto_round(peers, delay)
        pulled = ledger.counts["raw_batches"]
        if self.log_interval and size > 0 and pulled % self.log_interval == 0:
            if self.log_fn is not None:
                self.log_fn(self.stats, ledger.counts["steps"])
            else:
                logger.info("smartsift epoch %d: %s", cur.epoch, self.stats)

    def _score(self, raw: Any, size: int) -> np.ndarray:
        t0 = time.perf_counter()
        losses = score(
            self.model,
            self.loss_fn,
            raw,
            size,
            train_mode=self.score_in_train_mode,
            autocast_dtype=self.autocast_dtype,
        ).numpy()
        seconds = time.perf_counter() - t0
        self._ledger.times["scoring_s"] += seconds
        self._overhead_s += seconds
        self._selector.screen(losses)
        return losses

    def _side_values(self, sliceable: Any, size: int) -> np.ndarray | None:
        """The sample ids and labels a guarded policy decides with, as rows of floats (ids
        first), to travel with the losses; None when the policy needs neither."""
        guard = self._selector.guard
        if guard is None:
            return None
        rows = [v for v in guard.sample_inputs(sliceable, size) if v is not None]
        return np.stack(rows).astype(np.float64) if rows else None

    def _auto_scalars(self, scored: int, size: int, data_s: float) -> np.ndarray:
        """This rank's timings since the last round, for Auto (see ``smartsift.policies.auto.SCALARS``)."""
        out = np.array(
            [self._overhead_s, scored, self._user_s, self._user_n, data_s, size], dtype=np.float64
        )
        self._overhead_s = self._user_s = 0.0
        self._user_n = 0
        return out

    def _auto_round(self, peers: list[PeerRound], skipped: bool) -> None:
        kept = None if skipped else self._round_kept
        ctl = self._selector.auto
        held_out = None
        if ctl is not None and ctl.auto.validate is not None and ctl.validates_next():
            held_out = self._validate(ctl.auto.validate)
        losses, scalars = [p.losses for p in peers], [p.scalars for p in peers]
        if self._selector.end_round(losses, kept, scalars, held_out):
            status = self._selector.auto_status()
            if self.ranks.rank == 0 and status is not None:
                logger.info("smartsift auto, epoch %d: %s", self._cursor.epoch, status[1])

    def _validate(self, validate: Callable[[], float]) -> float:
        """``Auto``'s held-out metric, averaged over ranks; every rank calls this at the same
        round, and a failure on any rank stops every rank instead of hanging the others.

        Untimed for Auto's cost signals: it is neither the scoring pass nor the user's step.
        """
        was_training = self.model.training
        error: BaseException | None = None
        value = 0.0
        try:
            with torch.no_grad():
                out = validate()
            if isinstance(out, torch.Tensor) and out.numel() == 1:
                out = out.item()
            if not isinstance(out, (int, float)) or isinstance(out, bool):
                raise TypeError(
                    f"Expected `validate()` of Auto to return a number (the held-out metric), "
                    f"but it returned {out!r}."
                )
            value = float(out)
        except Exception as err:  # reported to the other ranks before it is raised
            error = _annotate(err, "in Auto's validate()")
        finally:
            self.model.train(was_training)
        total, failed = self._lockstep.sum([value, float(error is not None)])
        if error is not None:
            raise error
        if failed:
            raise RemoteRankError(
                f"smartsift: Auto's validate() failed on {int(failed)} rank(s) (see their "
                f"error); rank {self.ranks.rank} stops too so that the job does not hang."
            )
        return total / self.ranks.world_size

    def _pass_through(self, peers: list[PeerRound], raw: Any, sliceable: Any, size: int) -> None:
        batcher = self._batcher
        self._ledger.passed(self._cursor.epoch, sliceable, size)
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
        selector = self._selector
        if selector.needs_ids or selector.needs_labels:
            rows = [p.channels.astype(np.int64) for p in peers]
            ids = [r[0] for r in rows] if selector.needs_ids else None
            labels = [r[-1] for r in rows] if selector.needs_labels else None
            decision = selector.decide([p.losses for p in peers], ids=ids, labels=labels)
        else:
            decision = selector.decide([p.losses for p in peers])
        self._round_kept = decision.kept
        me = self.ranks.rank if self.ranks.distributed else 0
        mask, kept = decision.masks[me], decision.kept[me]
        if size > 0:
            self._ledger.scored(self._cursor.epoch, sliceable, losses, mask, decision.nonfinite[me])
            if kept == size:
                self._batcher.push(sliceable, size)
            elif kept:
                self._batcher.push(select(sliceable, torch.from_numpy(np.flatnonzero(mask))), kept)
        if len(peers) == 1:
            self._emit([peers[0].buffered + kept])
        else:
            self._emit([p.buffered + k for p, k in zip(peers, decision.kept, strict=True)])
        seconds = time.perf_counter() - t0
        self._ledger.times["selection_s"] += seconds
        self._overhead_s += seconds

    def _emit(self, counts: list[int]) -> None:
        """Forms as many full refined batches as every rank can form."""
        bs = self._batcher.batch_size
        if bs is not None:  # else no rank has had a sample yet: nothing to form
            self._batcher.form(min(counts) // bs)

    def _flush(self, peers: list[PeerRound]) -> None:
        """Hands out the epoch's leftovers so that every rank yields the same number of batches."""
        batcher = self._batcher
        self._cursor.flushed = True
        bs = batcher.batch_size or 1
        counts = [p.buffered for p in peers]
        plan = plan_leftovers(counts, bs, self.drop_last)
        if plan.local:
            batcher.form(batcher.buffered // bs)
            if batcher.buffered:
                if self.drop_last:
                    self._ledger.dropped(self._cursor.epoch, batcher.clear(ready=False))
                else:
                    rest = batcher.buffered
                    batcher.queue(batcher.take(rest), rest)
            return
        # Pool the ranks' leftovers and deal them out evenly (once per epoch at most). On the
        # CPU for the transfer, but in the batch's own types (to_plain would turn named tuples
        # and dict subclasses into plain containers in the dealt batches).
        rank = self.ranks.rank
        mine = to_device(batcher.take(batcher.buffered), _CPU) if batcher.buffered else None
        pieces = self._lockstep.gather_objects(mine)
        lost = plan.dropped[rank]
        if lost and mine is not None:  # what is dropped is the tail of mine
            self._ledger.dropped(
                self._cursor.epoch, [(narrow(mine, counts[rank] - lost, lost), lost)]
            )
        sizes = plan.sizes[rank]
        if not sizes:
            return
        pool = batcher.join([p for p in pieces if p is not None])
        start = plan.starts[rank]
        for size in sizes:
            batch = narrow(pool, start, size)
            batcher.queue(to_device(batch, self.device) if self.device else batch, size)
            start += size


def _annotate(err: BaseException, where: str) -> BaseException:
    if hasattr(err, "add_note"):
        err.add_note(f"smartsift: raised {where}.")
    return err


def _raise_errors(peers: list[PeerRound], local: BaseException | None, rank: int) -> None:
    if local is not None:
        raise local
    failed = [r for r, p in enumerate(peers) if p.error]
    if failed:
        raise RemoteRankError(
            f"smartsift: rank(s) {failed} failed in this round (see their error); rank {rank} "
            "stops too so that the job does not hang."
        )
