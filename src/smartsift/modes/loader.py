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
import secrets
import weakref
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import BatchTransform
from smartsift.engine import checkpoint as ckpt
from smartsift.engine.audit import IdKey, SiftAudit
from smartsift.engine.batcher import Joiner
from smartsift.engine.checks import (
    check_dataloader,
    check_int,
    check_loss_fn,
    check_model,
    check_optional_int,
    check_policy,
    check_transform,
)
from smartsift.engine.cursor import estimate_batches, forward_epoch
from smartsift.engine.distributed import Lockstep, resolve_ranks
from smartsift.engine.ledger import SiftTrace
from smartsift.engine.parts import Parts
from smartsift.engine.rounds import RankContext
from smartsift.engine.selector import NONFINITE_MODES, check_nonfinite
from smartsift.engine.stats import SiftStats, from_sums, stats_fields
from smartsift.modes.epochs import EpochRunner
from smartsift.modes.hybrid import Hybrid, find_reuse_sampler
from smartsift.modes.reference import Reference, ReferenceLike, check_id_key
from smartsift.modes.reuse import ReuseSampler
from smartsift.modes.scoring import LossFn
from smartsift.policies.base import Policy
from smartsift.policies.rules import RelativeProbabilistic

__all__ = ["NONFINITE_MODES", "SiftingDataLoader", "check_hybrid_setting", "check_score_setting"]

logger = logging.getLogger("smartsift")

_EMPTY = np.empty(0, dtype=np.float64)
_LOSS, _REDUCIBLE = "loss", "reducible"
_HYBRID = "hybrid"


def check_score_setting(saved: str, referenced: bool) -> None:
    """Raises ValueError unless a state whose policy ranked ``saved`` (``"loss"`` or
    ``"reducible"``) may load into a loader with (``referenced``) or without a reference.

    The loss history, a stated keep rate's adaptation and ``Auto``'s record hold what the
    policy ranked; loading losses where scores are ranked, or the reverse, would change every
    later decision without an error.

    Example:
        >>> check_score_setting("reducible", referenced=True)
        >>> check_score_setting("loss", referenced=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The state was saved by a loader that ranked the loss (no `reference`), but ...
    """
    mine = _REDUCIBLE if referenced else _LOSS
    if saved == mine:
        return
    said = {_LOSS: "the loss (no `reference`)", _REDUCIBLE: "loss - reference (a `reference`)"}
    raise ValueError(
        f"The state was saved by a loader that ranked {said.get(saved, repr(saved))}, but this "
        f"loader ranks {said[mine]}; its loss history holds the other kind of value. Build the "
        "loader with the same `reference` setting to resume, or start this one from a fresh "
        "state."
    )


def check_hybrid_setting(saved: bool, hybrid: bool) -> None:
    """Raises ValueError unless a state saved by a hybrid loader (``saved``) or by another
    loader may load into this one (``hybrid``): the hybrid state holds the sampler's decision,
    which the resumed epoch replays.

    Example:
        >>> check_hybrid_setting(saved=True, hybrid=True)
        >>> check_hybrid_setting(saved=False, hybrid=True)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: The state was saved by a SiftingDataLoader without a ReuseSampler ...
    """
    if saved == hybrid:
        return
    if hybrid:
        raise ValueError(
            "The state was saved by a SiftingDataLoader without a ReuseSampler in its wrapped "
            "loader, but this one's wrapped loader draws from one (the hybrid mode): the state "
            "holds no sampler decision to resume from. Resume with a loader like the one that "
            "saved it."
        )
    raise ValueError(
        "The state was saved by a hybrid SiftingDataLoader (its wrapped loader drew from a "
        "ReuseSampler), but this one's does not. Wrap a loader over a ReuseSampler of the same "
        "settings to resume."
    )


class SiftingDataLoader:
    """Wraps a data loader; yields refined batches of the samples worth training on.

    Every raw batch is scored with a gradient-free forward pass of ``model`` and ``loss_fn``;
    the ``policy`` decides which samples to keep; kept samples are accumulated into refined
    batches of ``batch_size`` samples, in the raw batches' structure and types. Each iteration
    over the loader is one epoch of the wrapped loader. Under an initialised
    ``torch.distributed`` process group every rank yields the same number of batches.

    **Hybrid mode.** When the wrapped loader draws from a :class:`~smartsift.ReuseSampler`
    (loss reuse), only the samples the sampler trains undecided (never scored, or stale) are
    scored and sifted; the samples it decided from its table pass through unscored. ``policy``
    defaults to the sampler's; the pass's losses of the samples it sifts go to the sampler's
    table. ``stats.samples_passed`` then counts the samples decided from the table, and
    ``sampler.stats`` the epoch's decision. See ``docs/hybrid.md``.

    This class pulls, scores, exchanges and hands over; the engine's parts do the rest (see
    ``docs/design.md``), and the policy's bound state plans each round (it may pass a raw batch
    through unscored, or score it and keep everything) and takes what the round measured.

    Args:
        dataloader: any re-iterable of batches, typically a ``torch.utils.data.DataLoader``.
        model: the model being trained; DDP and ``torch.compile`` wrappers are accepted.
        loss_fn: ``loss_fn(model, batch) -> Tensor`` of shape ``(B,)``, one loss per sample.
        policy: which samples to keep; default ``RelativeProbabilistic(beta=1.0, history=500)``
            (in hybrid mode, the ``ReuseSampler``'s policy).
            Any policy works, :class:`~smartsift.Guarded` (reads sample ids and labels from
            the batch) and :class:`~smartsift.Auto` (trains plain where sifting does not pay)
            included.
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
        reference: select by the reducible loss (RHO-LOSS): the policy ranks ``loss -
            reference`` instead of the loss. Either a callable ``reference(batch) -> Tensor
            (B,)``, run on each scored raw batch under ``torch.no_grad()`` (e.g. ``lambda b:
            loss_fn(small_model, b)``, its time counted as scoring time), or a 1-D tensor or
            array of reference losses indexed by sample id, read with ``id_key``. A sample whose
            reference is NaN passes unsifted. See ``docs/reducible.md``.
        id_key: where each batch holds its sample ids, for a tensor ``reference`` and for the
            hybrid mode: a key of dict batches, a position of tuple batches, or a tuple of
            those (as :class:`~smartsift.SiftAudit`'s). In hybrid mode it defaults to where
            :class:`~smartsift.IndexedDataset` puts them (``"index"`` of dict batches, else 0).
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
        reference: ReferenceLike | None = None,
        id_key: IdKey | None = None,
    ) -> None:
        check_dataloader(dataloader)
        reuse_sampler = find_reuse_sampler(dataloader)
        if policy is None:
            policy = RelativeProbabilistic() if reuse_sampler is None else reuse_sampler.policy
        check_model(model)
        check_loss_fn(loss_fn)
        check_policy(policy)
        check_int("sift_delay", sift_delay, 0, "raw batches")
        check_optional_int("batch_size", batch_size, 1)
        check_transform(transform)
        check_optional_int("seed", seed, None)
        check_optional_int("log_interval", log_interval, 1)
        check_nonfinite(nonfinite)
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
        self.reference = reference
        self.id_key = id_key
        self._reference = None if reference is None else Reference(reference, id_key)
        self._hybrid = (
            None
            if reuse_sampler is None
            else Hybrid(reuse_sampler, dataloader, check_id_key(id_key))
        )
        self.ranks = resolve_ranks(rank, world_size, process_group)
        self._seed = secrets.randbits(62) if seed is None else int(seed)
        raw_bs = getattr(dataloader, "batch_size", None)
        if batch_size is None and isinstance(raw_bs, int):
            batch_size = raw_bs  # the wrapped loader's; else the first raw batch's size
        self._configured_batch_size = batch_size
        self._lockstep = Lockstep(self.ranks, capacity=raw_bs if isinstance(raw_bs, int) else 0)
        self._context = RankContext(
            model, self._lockstep.sum, self.ranks.rank, self.ranks.world_size
        )
        self._use(self._build_parts())
        self._active: weakref.ref[Any] | None = None
        self._runner = EpochRunner(self)

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
    def raw_batches_in_epoch(self) -> int:
        """The raw batches this rank pulled from the wrapped loader in the current epoch."""
        return self._cursor.raw_in_epoch

    @property
    def reuse_sampler(self) -> ReuseSampler | None:
        """The :class:`~smartsift.ReuseSampler` of the hybrid mode (None in the scoring mode)."""
        return None if self._hybrid is None else self._hybrid.sampler

    @property
    def stats(self) -> SiftStats:
        """A snapshot of this process's counters and timers (a pure read)."""
        return self._ledger.snapshot(
            self._batcher.pending,
            self._lockstep.seconds,
            self._selector.quantiles(),
            self._selector.state.status(),
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
        forward_epoch(self.dataloader, epoch)

    def __len__(self) -> int:
        """An estimate of the refined batches of one epoch, exact when nothing is sifted.

        It assumes the policy keeps its nominal fraction (``policy.expected_keep``) of every
        scored raw batch of ``len(dataloader)`` batches of the wrapped loader's batch size (in
        hybrid mode, of the samples the sampler left undecided: the others all pass); the
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
        keep = self.policy.expected_keep
        decided = None if self._hybrid is None else self._hybrid.sampler.stats
        if decided is not None and decided.trained:
            # The hybrid mode: the samples decided from the table all pass; the rest are sifted.
            keep = (decided.kept + decided.passed * keep) / decided.trained
        return estimate_batches(n_raw, delay, raw_bs, bs, keep, self.drop_last)

    def __iter__(self) -> Iterator[Any]:
        active = self._active() if self._active is not None else None
        if active is not None and active.gi_frame is not None:
            raise RuntimeError(
                "This SiftingDataLoader is already being iterated; finish or close the first "
                "iterator (or build a second loader) before starting another."
            )
        gen = self._runner.run()
        self._active = weakref.ref(gen)
        return gen

    # ----------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Returns the loader's state: tensors and plain Python values only.

        A nested dict (see :mod:`smartsift.engine.checkpoint`): the selector's history,
        generator and policy state, the batcher's buffered samples, the cursor's position in the
        epoch, counters and timers, and the wrapped loader's state when it has one. It saves
        with ``torch.save`` and loads with ``torch.load(..., weights_only=True)``.
        """
        parts = Parts(self._selector, self._batcher, self._cursor, self._ledger)
        state = parts.state_dict(self.dataloader, self.ranks, self._lockstep, self.audit)
        if self._reference is not None:  # its history and decisions are of scores, not losses
            state[ckpt.CONFIG]["score"] = _REDUCIBLE
        if self._hybrid is not None:
            cur = self._cursor
            mid_epoch = cur.in_epoch and not (cur.interrupted or cur.exhausted)
            state[_HYBRID] = self._hybrid.state_dict(mid_epoch and cur.raw_in_epoch > 0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a state from :meth:`state_dict`; the next iteration resumes from it.

        States saved by an earlier release (version 1) are converted.

        Raises:
            ValueError: if the state was saved with another policy or world size, with a
                ``reference`` where this loader has none or the other way round, or is not a
                smartsift state.
        """
        active = self._active() if self._active is not None else None
        if active is not None and active.gi_frame is not None:
            raise RuntimeError("Cannot load a state while the loader is being iterated.")
        state = ckpt.upgrade(state)
        check_score_setting(state[ckpt.CONFIG].get("score", _LOSS), self._reference is not None)
        check_hybrid_setting(state.get(_HYBRID) is not None, self._hybrid is not None)
        parts = self._build_parts()
        parts.load_state_dict(state, self.dataloader, self.ranks, self._lockstep, self.device)
        if self._hybrid is not None:
            self._hybrid.load_state_dict(state[_HYBRID])
        self._runner.epoch_restored(parts.ledger.counts["samples_dropped"])
        self._use(parts)

    def _build_parts(self) -> Parts:
        return Parts.build(
            self.policy, self.nonfinite, self._seed, self._configured_batch_size, self.padding,
            self.audit,
        )  # fmt: skip

    def _use(self, parts: Parts) -> None:
        self._selector, self._batcher = parts.selector, parts.batcher
        self._cursor, self._ledger = parts.cursor, parts.ledger
