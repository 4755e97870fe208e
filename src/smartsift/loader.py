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
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from smartsift.audit import SiftAudit
from smartsift.batching import (
    BatchTransform,
    batch_size_of,
    concat,
    inspect_batch,
    narrow,
    select,
    signature,
    to_device,
    to_plain,
)
from smartsift.distributed import (
    Lockstep,
    PeerRound,
    RemoteRankError,
    resolve_ranks,
    split_evenly,
)
from smartsift.history import LossHistory
from smartsift.policies import Policy, RelativeProbabilistic
from smartsift.scoring import LossFn, score
from smartsift.stats import SiftStats, _Tally, from_sums, stats_fields

__all__ = ["NONFINITE_MODES", "SiftingDataLoader"]

logger = logging.getLogger("smartsift")

NONFINITE_MODES = ("raise", "drop", "keep")
_STATE_VERSION = 1
_EMPTY = np.empty(0, dtype=np.float64)


@dataclass
class _LoaderState:
    """Everything a loader carries between batches; ``state_dict`` saves exactly this."""

    generator: torch.Generator
    history: LossHistory | None
    tally: _Tally
    epoch: int = 0
    in_epoch: bool = False  # an epoch was started and not finished
    resume: bool = False  # the next iteration continues the loaded epoch
    rounds_in_epoch: int = 0  # rounds of the lockstep protocol (one raw batch per rank each)
    rounds_total: int = 0
    raw_in_epoch: int = 0  # raw batches this process pulled this epoch
    exhausted: bool = False  # this process's raw iterator is done for the epoch
    flushed: bool = False  # the epoch's leftovers were handed out
    seeded: bool = False
    batch_size: int | None = None
    buffer: list[Any] = field(default_factory=list)  # kept samples, in sliceable form
    buffer_sizes: list[int] = field(default_factory=list)
    signature: tuple[Any, ...] | None = None  # layout of the buffered samples (derived)
    ready: deque[tuple[bool, int, Any]] = field(default_factory=deque)  # (is_raw, size, batch)
    # States of a plain wrapped loader's torch.Generators when this epoch's raw iterator began.
    sampler_rng: list[torch.Tensor] = field(default_factory=list)
    interrupted: bool = False  # an exception escaped a round: the epoch is abandoned

    @property
    def buffered(self) -> int:
        return sum(self.buffer_sizes)


class SiftingDataLoader:
    """Wraps a data loader; yields refined batches of the samples worth training on.

    Every raw batch is scored with a gradient-free forward pass of ``model`` and ``loss_fn``;
    the ``policy`` decides which samples to keep; kept samples are accumulated into refined
    batches of ``batch_size`` samples, in the raw batches' structure and types. Each iteration
    over the loader is one epoch of the wrapped loader. Under an initialised
    ``torch.distributed`` process group every rank yields the same number of batches.

    Args:
        dataloader: any re-iterable of batches, typically a ``torch.utils.data.DataLoader``.
        model: the model being trained; DDP and ``torch.compile`` wrappers are accepted.
        loss_fn: ``loss_fn(model, batch) -> Tensor`` of shape ``(B,)``, one loss per sample.
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``.
        sift_delay: raw batches passed through unsifted (and unscored) before sifting starts;
            raw batches larger than ``batch_size`` are cut into batches of ``batch_size``.
        repeat_delay_per_epoch: apply ``sift_delay`` at the start of every epoch.
        batch_size: refined batch size; default: the wrapped loader's batch size, or the size
            of the first raw batch.
        drop_last: drop the last, smaller refined batch of an epoch (counted in
            ``stats.samples_dropped``).
        device: if set, each raw batch moves here once; refined batches come out here.
        transform: a :class:`~smartsift.BatchTransform` for batches that cannot be sliced.
        seed: seed of the loader's private generator (rank 0's seed is used on every rank).
        nonfinite: what to do with NaN or infinite losses: ``"raise"`` (default) a ValueError,
            ``"drop"`` the samples, or ``"keep"`` them. They never enter the loss history.
        score_in_train_mode: score with the model in train mode (buffers restored afterwards).
        autocast_dtype: run the scoring pass under ``torch.autocast`` with this dtype.
        log_interval: log ``stats`` through the ``smartsift`` logger every this many raw batches.
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
        seed: int | None = None,
        nonfinite: str = "raise",
        score_in_train_mode: bool = False,
        autocast_dtype: torch.dtype | None = None,
        log_interval: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
        process_group: Any = None,
        audit: SiftAudit | None = None,
    ) -> None:
        policy = RelativeProbabilistic() if policy is None else policy
        if audit is not None and not isinstance(audit, SiftAudit):
            raise TypeError(f"Expected `audit` to be a smartsift.SiftAudit or None, got {audit!r}.")
        _validate(dataloader, model, loss_fn, policy, sift_delay, batch_size, transform, seed)
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(
                f"Expected `nonfinite` to be one of {NONFINITE_MODES}, got {nonfinite!r}."
            )
        if log_interval is not None and (not isinstance(log_interval, int) or log_interval < 1):
            raise ValueError(
                f"Expected `log_interval` to be a positive int or None, got {log_interval!r}."
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
        self.nonfinite = nonfinite
        self.score_in_train_mode = bool(score_in_train_mode)
        self.autocast_dtype = autocast_dtype
        self.log_interval = log_interval
        self.audit = audit
        self.ranks = resolve_ranks(rank, world_size, process_group)
        self._seed = secrets.randbits(62) if seed is None else int(seed)
        raw_bs = getattr(dataloader, "batch_size", None)
        if batch_size is None and isinstance(raw_bs, int):
            batch_size = raw_bs  # the wrapped loader's; else the first raw batch's size
        self._configured_batch_size = batch_size
        self._lockstep = Lockstep(self.ranks, capacity=raw_bs if isinstance(raw_bs, int) else 0)
        self._state = self._fresh_state()
        self._raw_iter: Iterator[Any] | None = None
        self._active: weakref.ref[Any] | None = None

    # ----------------------------------------------------------------- public surface
    @property
    def batch_size(self) -> int | None:
        """The refined batch size (None until known from the first raw batch)."""
        return self._state.batch_size

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset, for code that looks for ``loader.dataset``."""
        return getattr(self.dataloader, "dataset", None)

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler, if it has one."""
        return getattr(self.dataloader, "sampler", None)

    @property
    def stats(self) -> SiftStats:
        """A snapshot of this process's counters and timers."""
        st = self._state
        tally = st.tally
        # Batches formed but not yet handed out still count as buffered.
        tally.counts["samples_buffered"] = st.buffered + sum(n for _, n, _ in st.ready)
        tally.times["comm_s"] = self._lockstep.seconds
        return tally.snapshot(self._quantiles())

    def global_stats(self) -> SiftStats:
        """Stats summed over all ranks (a collective: call it on every rank).

        ``recent_keep_rate`` is taken over every rank's recent raw batches, so all ranks agree.
        """
        local = self.stats
        recent = self._state.tally.recent
        seen, kept = sum(s for s, _ in recent), sum(k for _, k in recent)
        values = [float(getattr(local, k)) for k in stats_fields()] + [float(seen), float(kept)]
        *sums, seen_all, kept_all = self._lockstep.sum(values)
        rate = kept_all / seen_all if seen_all else float("nan")
        return from_sums(sums, rate, local.loss_quantiles)

    def set_epoch(self, epoch: int) -> None:
        """Forwards ``epoch`` to the wrapped loader, its sampler or its dataset."""
        self._state.epoch = epoch
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
        scored raw batch of ``len(dataloader)`` batches of the wrapped loader's batch size.
        """
        try:
            n_raw = len(self.dataloader)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                "The wrapped data loader has no length, so neither has the sifting loader; "
                "give your trainer a step count (e.g. max_steps) instead."
            ) from None
        st = self._state
        this_epoch = st.rounds_in_epoch if st.in_epoch else 0
        done = 0 if self.repeat_delay_per_epoch else st.rounds_total - this_epoch
        delay = max(0, min(n_raw, self.sift_delay - done))
        raw_bs = getattr(self.dataloader, "batch_size", None) or st.batch_size
        bs = st.batch_size or self._configured_batch_size or raw_bs
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

        It holds the loss history, the generator, counters and stats, the delay progress, the
        samples buffered for the next refined batch and the position in the epoch; it saves
        with ``torch.save`` and loads with ``torch.load(..., weights_only=True)``.
        """
        st = self._state
        raw_state = None
        if _is_stateful(self.dataloader):
            raw_state = self.dataloader.state_dict()  # type: ignore[attr-defined]
        ready = []
        for is_raw, _, batch in st.ready:
            if is_raw and self.transform is not None:
                batch = self.transform.transform(batch)
            ready.append(to_plain(batch))
        return {
            "version": _STATE_VERSION,
            "policy": repr(self.policy),
            "world_size": self.ranks.world_size,
            "rank": self.ranks.rank,
            "batch_size": st.batch_size,
            "epoch": st.epoch,
            "in_epoch": st.in_epoch,
            "interrupted": st.interrupted,
            "rounds_in_epoch": st.rounds_in_epoch,
            "rounds_total": st.rounds_total,
            "raw_in_epoch": st.raw_in_epoch,
            "exhausted": st.exhausted,
            "flushed": st.flushed,
            "seeded": st.seeded,
            "generator": st.generator.get_state(),
            "history": st.history.state_dict() if st.history is not None else None,
            "stats": st.tally.state_dict(),
            "buffer": [to_plain(chunk) for chunk in st.buffer],
            "buffer_sizes": list(st.buffer_sizes),
            "ready": ready,
            "capacity": self._lockstep.capacity,
            "raw_loader": raw_state,
            "sampler_rng": self._sampler_rng_to_save(),
            "audit": self.audit.state_dict() if self.audit is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`; the next iteration resumes from it.

        Raises:
            ValueError: if the state was saved with another policy or world size.
        """
        if state.get("version") != _STATE_VERSION:
            raise ValueError(f"Unknown smartsift state version {state.get('version')!r}.")
        if state["policy"] != repr(self.policy):
            raise ValueError(
                f"The state was saved with policy {state['policy']} but this loader uses "
                f"{self.policy!r}; build the loader with the same policy to resume."
            )
        if state["world_size"] != self.ranks.world_size:
            raise ValueError(
                f"The state was saved by a job of {state['world_size']} ranks but this one has "
                f"{self.ranks.world_size}. Resuming on another world size is not supported: "
                "resume with the same number of ranks, each loading its own rank's state."
            )
        if self._active is not None and self._active() is not None:
            gen = self._active()
            if gen is not None and gen.gi_frame is not None:
                raise RuntimeError("Cannot load a state while the loader is being iterated.")
        st = self._fresh_state()
        st.generator.set_state(state["generator"])
        if st.history is not None and state["history"] is not None:
            st.history.load_state_dict(state["history"])
        st.tally.load_state_dict(state["stats"])
        for key in (
            "batch_size", "epoch", "in_epoch", "rounds_in_epoch", "rounds_total",
            "raw_in_epoch", "exhausted", "flushed", "seeded",
        ):  # fmt: skip
            setattr(st, key, state[key])
        device = self.device
        move = (lambda b: to_device(b, device)) if device is not None else (lambda b: b)
        st.buffer = [move(chunk) for chunk in state["buffer"]]
        st.buffer_sizes = [int(n) for n in state["buffer_sizes"]]
        st.ready = deque((False, batch_size_of(b), move(b)) for b in state["ready"])
        # After an exception inside the loader the live loader starts a new epoch; so does this.
        st.interrupted = bool(state.get("interrupted", False))
        st.resume = st.in_epoch and not st.interrupted
        if self.audit is not None and state.get("audit") is not None:
            self.audit.load_state_dict(state["audit"])
        self._lockstep.capacity = int(state["capacity"])
        if state["raw_loader"] is not None and _is_stateful(self.dataloader):
            self.dataloader.load_state_dict(state["raw_loader"])  # type: ignore[attr-defined]
            if st.in_epoch and st.interrupted and not st.exhausted:
                # Its next iter() would finish the saved epoch, where the live loader's starts a
                # new one: let that iterator go unused.
                iter(self.dataloader)
        gens = _loader_generators(self.dataloader)
        saved_rng = state.get("sampler_rng") or []
        if len(saved_rng) == len(gens):  # the next iter() then draws the epoch's order again
            for gen, rng in zip(gens, saved_rng, strict=True):
                gen.set_state(rng)
            st.sampler_rng = list(saved_rng)
        self._state = st

    def _sampler_rng_to_save(self) -> list[torch.Tensor]:
        """The wrapped loader's generator states that make its next ``iter()`` replay right.

        Mid-epoch, the states at the epoch start (the epoch's raw batches are replayed on
        resume); otherwise the current states (the next ``iter()`` starts a new epoch).
        """
        st = self._state
        if st.in_epoch and not st.exhausted and not st.interrupted:
            return list(st.sampler_rng)
        return [gen.get_state() for gen in _loader_generators(self.dataloader)]

    # ----------------------------------------------------------------- iteration
    def _fresh_state(self) -> _LoaderState:
        return _LoaderState(
            generator=torch.Generator().manual_seed(self._seed),
            history=self.policy.make_history(),
            tally=_Tally(),
            batch_size=self._configured_batch_size,
        )

    def _iterate(self) -> Iterator[Any]:
        st = self._state
        if not st.seeded:
            st.generator.manual_seed(self._lockstep.agree_seed(self._seed))
            st.seeded = True
        if st.resume:
            st.resume = False
            self._raw_iter = None if st.exhausted else self._resume_raw_iter(st.raw_in_epoch)
        else:
            if st.in_epoch:
                self._abandon_epoch()
            self._start_epoch()
            self._raw_iter = iter(self.dataloader)
        while True:
            if st.ready:
                is_raw, size, batch = st.ready.popleft()
                st.tally.add(steps=1, samples_trained=size)
                if not is_raw and self.transform is not None:
                    batch = self.transform.reverse_transform(batch)
                yield batch
                continue
            if st.flushed:
                break
            try:
                self._round()
            except BaseException:
                st.interrupted = True  # a raw batch may be half done: the epoch is abandoned
                raise
        self._raw_iter = None
        st.in_epoch = False
        st.epoch += 1
        st.tally.add(epochs=1)

    def _start_epoch(self) -> None:
        st = self._state
        st.in_epoch, st.exhausted, st.flushed, st.interrupted = True, False, False, False
        st.rounds_in_epoch = st.raw_in_epoch = 0
        st.sampler_rng = [gen.get_state() for gen in _loader_generators(self.dataloader)]

    def _abandon_epoch(self) -> None:
        """Drops what an unfinished epoch left behind; it is counted, never carried over."""
        st = self._state
        left = st.buffered + sum(size for _, size, _ in st.ready)
        st.tally.add(samples_dropped=left)
        if self.audit is not None:
            tf = self.transform
            ready = [(tf.transform(b) if raw and tf else b, n) for raw, n, b in st.ready]
            buffered = zip(st.buffer, st.buffer_sizes, strict=True)
            self.audit.record_dropped(st.epoch, [*buffered, *ready])
        st.buffer.clear()
        st.buffer_sizes.clear()
        st.ready.clear()
        st.in_epoch = False
        st.epoch += 1

    def _resume_raw_iter(self, consumed: int) -> Iterator[Any]:
        it = iter(self.dataloader)
        if _is_stateful(self.dataloader):
            return it  # the wrapped loader restored its own position
        if consumed:
            sampler = getattr(self.dataloader, "sampler", None)
            if getattr(sampler, "generator", "n/a") is None:
                warnings.warn(
                    "Resuming mid-epoch by replaying the wrapped loader's first "
                    f"{consumed} batches, but its sampler has no seeded generator, so the "
                    "replayed order may differ. Give the sampler a torch.Generator or use "
                    "torchdata's StatefulDataLoader.",
                    stacklevel=3,
                )
        for _ in range(consumed):
            next(it)
        return it

    def _in_delay(self) -> bool:
        st = self._state
        done = st.rounds_in_epoch if self.repeat_delay_per_epoch else st.rounds_total
        return done < self.sift_delay

    def _round(self) -> None:
        """One round: pull a raw batch, score it, agree with the other ranks, select, batch."""
        st = self._state
        tally = st.tally
        delay = self._in_delay()
        raw: Any = None
        sliceable: Any = None
        size = 0
        losses = _EMPTY
        error: BaseException | None = None
        if not st.exhausted:
            t0 = time.perf_counter()
            try:
                raw = next(self._raw_iter)  # type: ignore[arg-type]
            except StopIteration:
                st.exhausted = True
            except Exception as err:  # reported to the other ranks before it is raised
                error = _annotate(err, f"while loading raw batch {st.raw_in_epoch} of the epoch")
            tally.times["data_s"] += time.perf_counter() - t0
        if raw is not None:
            st.raw_in_epoch += 1
            try:
                if self.device is not None:
                    raw = to_device(raw, self.device, non_blocking=True)
                sliceable = self.transform.transform(raw) if self.transform is not None else raw
                size, layout = inspect_batch(sliceable)
                if st.buffer and size > 0:
                    self._check_joinable(layout)  # before the exchange, so no rank hangs
                if not delay and size > 0:
                    losses = self._score(raw, size)
            except Exception as err:
                error = _annotate(err, f"on raw batch {st.raw_in_epoch - 1} of the epoch")
                size, losses = 0, _EMPTY
        peers = self._lockstep.exchange(size, losses, st.buffered, st.exhausted, error is not None)
        _raise_errors(peers, error, self.ranks.rank)
        st.rounds_in_epoch += 1
        st.rounds_total += 1
        if st.batch_size is None and max(p.size for p in peers) > 0:
            st.batch_size = max(p.size for p in peers)
        if size > 0:
            tally.add(samples_seen=size, raw_batches=1)
        if all(p.exhausted for p in peers):
            self._flush(peers)
        elif delay:
            self._pass_through(peers, raw, sliceable, size)
        else:
            self._sift(peers, sliceable, size, losses)
        if self.log_interval and st.rounds_total % self.log_interval == 0:
            logger.info("smartsift epoch %d: %s", st.epoch, self.stats)

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
        self._state.tally.times["scoring_s"] += time.perf_counter() - t0
        if self.nonfinite == "raise" and not np.isfinite(losses).all():
            bad = int((~np.isfinite(losses)).sum())
            raise ValueError(
                f"loss_fn returned {bad} non-finite loss(es) (NaN or inf) out of {size}. "
                "Pass nonfinite='drop' to sift such samples out or nonfinite='keep' to train on "
                "them; they never enter the loss history either way."
            )
        return losses

    def _pass_through(self, peers: list[PeerRound], raw: Any, sliceable: Any, size: int) -> None:
        st = self._state
        st.tally.add(samples_kept=size)
        if self.audit is not None and size > 0:
            self.audit.record_passed(st.epoch, sliceable, size)
        bs = st.batch_size
        if all(0 < p.size <= bs and p.buffered == 0 for p in peers):  # type: ignore[operator]
            st.ready.append((True, size, raw))  # the fast path: the raw batch itself, untouched
            return
        # Raw batches larger than the refined ones are cut to size, so that training takes
        # steps of one size before and after sifting starts; uneven ranks (some exhausted,
        # or buffers not empty) also go through the buffer.
        if size > 0:  # an exhausted rank has nothing to add (and must not buffer a None)
            self._push(sliceable, size)
        self._emit([p.buffered + p.size for p in peers])

    def _sift(self, peers: list[PeerRound], sliceable: Any, size: int, losses: np.ndarray) -> None:
        st = self._state
        t0 = time.perf_counter()
        masks, nonfinite = self._decide(peers)
        mask = masks[self.ranks.rank if self.ranks.distributed else 0]
        kept = int(np.count_nonzero(mask))
        if size > 0:
            counts = st.tally.counts
            counts["samples_kept"] += kept
            counts["samples_sifted"] += size - kept
            counts["samples_nonfinite"] += nonfinite
            st.tally.recent.append((size, kept))
            if self.audit is not None:
                self.audit.record_scored(st.epoch, sliceable, losses, mask)
            if kept == size:
                self._push(sliceable, size)
            elif kept:
                self._push(select(sliceable, torch.from_numpy(np.flatnonzero(mask))), kept)
        if len(peers) == 1:
            self._emit([peers[0].buffered + kept])
        else:
            pairs = zip(peers, masks, strict=True)
            self._emit([p.buffered + int(np.count_nonzero(m)) for p, m in pairs])
        st.tally.times["selection_s"] += time.perf_counter() - t0

    def _decide(self, peers: list[PeerRound]) -> tuple[list[np.ndarray], int]:
        """Keep masks for every rank's losses, identical on all ranks, and this rank's count of
        non-finite losses."""
        st = self._state
        finite = [np.isfinite(p.losses) for p in peers]
        clean = [bool(f.all()) for f in finite]
        if st.history is not None:
            if all(clean):
                st.history.extend(
                    peers[0].losses
                    if len(peers) == 1
                    else np.concatenate([p.losses for p in peers])
                )
            else:
                pairs = zip(peers, finite, strict=True)
                st.history.extend(np.concatenate([p.losses[f] for p, f in pairs]))
        masks = []
        for peer, fin, ok in zip(peers, finite, clean, strict=True):
            if ok:
                masks.append(self.policy.keep_mask(peer.losses, st.history, st.generator))
                continue
            mask = np.full(peer.size, self.nonfinite == "keep", dtype=bool)
            if fin.any():
                mask[fin] = self.policy.keep_mask(peer.losses[fin], st.history, st.generator)
            masks.append(mask)
        mine = finite[self.ranks.rank if self.ranks.distributed else 0]
        return masks, int(mine.size - np.count_nonzero(mine))

    def _check_joinable(self, layout: tuple[Any, ...]) -> None:
        st = self._state
        if st.signature is None:
            st.signature = signature(st.buffer[0])
        if layout != st.signature:
            raise ValueError(
                "This raw batch cannot be joined with the samples already buffered: its "
                "per-sample entries differ in structure, trailing shape, dtype or device "
                f"({layout} against {st.signature}). Refined batches mix samples of several raw "
                "batches, so every raw batch needs the same layout: pad sequences to a fixed "
                "length, or pass a BatchTransform that does."
            )

    def _push(self, chunk: Any, size: int) -> None:
        if not self._state.buffer:
            self._state.signature = None  # a new head: _check_joinable reads it again
        self._state.buffer.append(chunk)
        self._state.buffer_sizes.append(size)

    def _emit(self, counts: list[int]) -> None:
        """Forms as many full refined batches as every rank can form."""
        bs = self._state.batch_size
        if bs is None:  # no rank has had a sample yet: nothing to form
            return
        for _ in range(min(counts) // bs):
            self._state.ready.append((False, bs, self._take(bs)))

    def _take(self, n: int) -> Any:
        st = self._state
        pieces = []
        while n > 0:
            size = st.buffer_sizes[0]
            if size <= n:
                pieces.append(st.buffer.pop(0))
                st.buffer_sizes.pop(0)
                n -= size
            else:
                chunk = st.buffer[0]
                pieces.append(narrow(chunk, 0, n))
                st.buffer[0] = narrow(chunk, n, size - n)
                st.buffer_sizes[0] = size - n
                n = 0
        return concat(pieces)

    def _flush(self, peers: list[PeerRound]) -> None:
        """Hands out the epoch's leftovers so that every rank yields the same number of batches."""
        st = self._state
        st.flushed = True
        bs = st.batch_size or 1
        counts = [p.buffered for p in peers]
        per_rank = [c // bs if self.drop_last else -(-c // bs) for c in counts]
        if len(set(per_rank)) == 1:  # every rank can do it alone
            mine = st.buffered
            for _ in range(mine // bs):
                st.ready.append((False, bs, self._take(bs)))
            if st.buffered:
                if self.drop_last:
                    self._drop_buffer()
                else:
                    rest = st.buffered
                    st.ready.append((False, rest, self._take(rest)))
            return
        self._rebalance(counts, bs)

    def _drop_buffer(self) -> None:
        st = self._state
        st.tally.add(samples_dropped=st.buffered)
        if self.audit is not None:
            self.audit.record_dropped(st.epoch, zip(st.buffer, st.buffer_sizes, strict=True))
        st.buffer.clear()
        st.buffer_sizes.clear()

    def _rebalance(self, counts: list[int], bs: int) -> None:
        """Pools the ranks' leftovers and deals them out evenly (once per epoch at most)."""
        st = self._state
        world, rank = self.ranks.world_size, self.ranks.rank
        # On the CPU for the transfer, but in the batch's own types (to_plain would turn named
        # tuples and dict subclasses into plain containers in the rebalanced batches).
        mine = to_device(self._take(st.buffered), torch.device("cpu")) if st.buffered else None
        pieces = self._lockstep.gather_objects(mine)
        total = sum(counts)
        owners = np.repeat(np.arange(world), counts)  # which rank each pooled sample came from
        if self.drop_last:
            n, share = total // (world * bs), [total // (world * bs) * bs] * world
        else:
            share = split_evenly(total, world)
            if total < world or (share[0] != share[-1] and share[-1] < -(-share[0] // bs)):
                share = [total // world] * world  # the few left over are dropped (counted)
            n = -(-share[0] // bs) if share[-1] else 0
        used = sum(share) if n else 0
        st.tally.add(samples_dropped=int((owners[used:] == rank).sum()))
        if self.audit is not None and mine is not None:  # what was dropped is the tail of mine
            lost = int((owners[used:] == rank).sum())
            self.audit.record_dropped(st.epoch, [(narrow(mine, counts[rank] - lost, lost), lost)])
        if not n:
            return
        pool = concat([p for p in pieces if p is not None])
        start = sum(share[:rank])
        sizes = [bs] * n if self.drop_last else split_evenly(share[rank], n)
        for size in sizes:
            batch = narrow(pool, start, size)
            st.ready.append((False, size, to_device(batch, self.device) if self.device else batch))
            start += size

    def _quantiles(self) -> dict[str, float]:
        h = self._state.history
        if h is None or len(h) == 0:
            return {}
        return {"p10": h.quantile(0.1), "p50": h.quantile(0.5), "p90": h.quantile(0.9)}


def _is_stateful(obj: Any) -> bool:
    return callable(getattr(obj, "state_dict", None)) and callable(
        getattr(obj, "load_state_dict", None)
    )


def _loader_generators(dataloader: Any) -> list[torch.Generator]:
    """The distinct ``torch.Generator``s a plain data loader draws from when an epoch starts.

    A stateful loader (torchdata's ``StatefulDataLoader``) restores its own: none are returned.
    """
    if _is_stateful(dataloader):
        return []
    found: list[torch.Generator] = []
    batch_sampler = getattr(dataloader, "batch_sampler", None)
    sampler = getattr(dataloader, "sampler", None)
    for owner in (dataloader, sampler, batch_sampler, getattr(batch_sampler, "sampler", None)):
        gen = getattr(owner, "generator", None)
        if isinstance(gen, torch.Generator) and all(gen is not g for g in found):
            found.append(gen)
    return found


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


def _validate(
    dataloader: Any,
    model: Any,
    loss_fn: Any,
    policy: Any,
    sift_delay: Any,
    batch_size: Any,
    transform: Any,
    seed: Any,
) -> None:
    if not hasattr(dataloader, "__iter__"):
        raise TypeError(
            f"Expected `dataloader` to be an iterable of batches (e.g. a DataLoader), but got "
            f"{type(dataloader).__name__}."
        )
    if isinstance(dataloader, Iterator):
        raise TypeError(
            "Expected `dataloader` to be re-iterable (a DataLoader or another iterable), but got "
            "a one-shot iterator; pass the DataLoader itself, not iter(loader)."
        )
    if not isinstance(model, torch.nn.Module):
        raise TypeError(
            f"Expected `model` to be a torch.nn.Module, but got {type(model).__name__}."
        )
    if not callable(loss_fn):
        raise TypeError(
            f"Expected `loss_fn` to be callable as loss_fn(model, batch) -> Tensor of shape (B,), "
            f"but got {type(loss_fn).__name__}."
        )
    if not isinstance(policy, Policy):
        raise TypeError(
            "Expected `policy` to be a smartsift Policy (e.g. ss.RelativeProbabilistic(beta=1.0)), "
            f"but got {policy!r}."
        )
    if not isinstance(sift_delay, int) or isinstance(sift_delay, bool) or sift_delay < 0:
        raise ValueError(
            f"Expected `sift_delay` to be a non-negative int (raw batches), but got {sift_delay!r}."
        )
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(
            f"Expected `batch_size` to be a positive int or None, but got {batch_size!r}."
        )
    if transform is not None and not isinstance(transform, BatchTransform):
        raise TypeError(
            "Expected `transform` to have transform(batch) and reverse_transform(data) methods "
            f"(a smartsift.BatchTransform), but got {type(transform).__name__}."
        )
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise ValueError(f"Expected `seed` to be an int or None, but got {seed!r}.")
