"""Loss reuse: sift each epoch before loading, from the losses the training step computed.

:class:`ReuseSampler` wraps the sampler you would give your ``DataLoader`` and, once per epoch,
drops from its indices the samples predicted to be learnt, judged by the per-sample losses that
the training step recorded in a :class:`~smartsift.modes.table.ScoreTable`. There is no scoring
pass, and skipped samples are never loaded. The decision is made by a
:class:`~smartsift.engine.selector.Selector`, so every policy works, including a stated keep rate
(``RelativeProbabilistic(keep=0.3)``). The training loop needs two lines::

    table = ScoreTable(len(dataset))
    sampler = ReuseSampler(RandomSampler(dataset), table, policy=ss.RelativeProbabilistic(keep=0.3))
    loader = DataLoader(ss.IndexedDataset(dataset), sampler=sampler, batch_size=64)
    for epoch in range(epochs):
        sampler.set_epoch(epoch)                          # optional; see "Epochs" below
        for ids, x, y in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            table.update(ids, per_sample)                 # hook 1: record the losses
            loss = (per_sample * sampler.weights(ids)).mean()   # hook 2 (rescale=True only)
            ...

**What an epoch trains.** The base sampler's indices for the epoch are the candidates. A
candidate with a *fresh* loss (finite, recorded at most ``max_age`` epochs before this one) and
a finite score is decided by the selector; the rest pass: never-scored samples, non-finite
losses or scores, and stale losses are always trained (the refresh rule: a sample is skipped at
most ``max_age`` epochs in a row, then trained and so re-scored). Scores reach the selector in
the epoch's order, in chunks of ``chunk_size``, as a ``SiftingDataLoader`` hands it raw batches.
In the last ``anneal`` fraction of ``epochs`` every candidate is trained. With ``explore``, a
random share of the decided candidates is trained without being decided each epoch (an
exploration share that is never sifted; a function of the epoch gives a keep schedule).

**Scores.** ``score="loss"`` decides on the last loss. ``"change"`` decides on how far the loss
moved between its last two records, ``|last - previous|``: a learnt sample and one the model
cannot learn (a mislabeled one stays high) both hold still and are skipped, while samples being
learnt or forgotten are kept. ``"reducible"`` decides on the last loss less a reference model's
(RHO-LOSS), set with :meth:`~smartsift.modes.table.ScoreTable.set_reference`. A callable
``score(table, indices) -> np.ndarray`` gives any other score. Every policy ranks the scores
(against its history, or within the chunk), so any real values work, negative ones included.

**Epochs.** The decision for an epoch is made exactly once, when the epoch's first index is
drawn (or by ``len()``), however many times anything calls ``iter()``: iterators are lazy and
bind to an epoch only when first advanced, so the iterators that ``DataLoader`` or
``StatefulDataLoader`` create and discard decide nothing. The epoch is ``set_epoch(epoch)``'s
value once it has been called (as for ``DistributedSampler``: every iteration until the next
``set_epoch`` replays the same epoch, and ``len()`` gives its exact length). Without
``set_epoch``, an internal counter: every iteration that draws an index starts the next epoch
(0 first), except the first one after :meth:`ReuseSampler.load_state_dict`, which continues
the saved epoch from its saved position; ``len()`` then reports the epoch being iterated (or,
between epochs, the last one).

**DDP.** With a ``DistributedSampler`` as base sampler, the whole permutation it draws for the
epoch (the same on every rank) is pruned, identically on every rank from the shared table, and
the pruned list is then sharded evenly (padded by repeating its start, or with ``drop_last`` cut
to a multiple of the world size), so every rank yields the same number of samples. Another base
sampler is sharded likewise with ``num_replicas`` and ``rank``, if its order is the same on every
rank.

Example:
    >>> import torch
    >>> from torch.utils.data import SequentialSampler
    >>> from smartsift.policies import TopK
    >>> table = ScoreTable(8)
    >>> sampler = ReuseSampler(SequentialSampler(range(8)), table, TopK(keep=0.5), chunk_size=8)
    >>> first = list(sampler)                       # epoch 0: nothing scored, all trained
    >>> table.update(torch.tensor(first), torch.arange(8.0))   # the training step's losses
    >>> list(sampler)                               # epoch 1: the four lowest losses skipped
    [4, 5, 6, 7]
    >>> sampler.stats.sifted, sampler.stats.keep_rate
    (4, 0.5)
"""

from __future__ import annotations

import copy
import math
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from smartsift.engine import checkpoint as ckpt
from smartsift.engine.audit import SiftAudit
from smartsift.engine.checks import (
    check_fraction,
    check_instance,
    check_int,
    check_optional_int,
    check_real,
)
from smartsift.engine.distributed import comm_device
from smartsift.engine.ledger import Ledger
from smartsift.engine.rounds import RankContext
from smartsift.engine.selector import Selector
from smartsift.modes.table import SCORES, ScoreFn, ScoreTable, ids_array
from smartsift.policies import Policy, RelativeProbabilistic

__all__ = [
    "ReuseEpochStats",
    "ReuseSampler",
    "annealing",
    "decidable",
    "fresh_scores",
    "shard_evenly",
]


@dataclass(frozen=True)
class ReuseEpochStats:
    """What :class:`ReuseSampler` decided for one epoch (over all ranks).

    Attributes:
        epoch: the epoch.
        candidates: indices the base sampler gave (the whole permutation under DDP).
        decided: candidates with a fresh loss and a finite score, handed to the selector.
        kept: decided candidates the selector kept.
        sifted: decided candidates skipped (not loaded this epoch); ``skipped`` is its old name.
        passed: candidates trained undecided: never scored, non-finite loss or score, stale, or
            annealing.
        stale: of ``passed``, those whose loss was older than ``max_age`` epochs.
        annealing: whether the epoch trains on every candidate (the ``anneal`` tail).
        padded: indices repeated so that the ranks' shares are equal (DDP).
        dropped: kept or passed indices cut so that the ranks' shares are equal
            (DDP with ``drop_last``).
        unscorable: of ``passed``, those with a fresh loss whose score was not finite (under
            ``score="change"`` a sample recorded once, under ``"reducible"`` one without a
            reference).
        auto_reason: with ``ss.Auto``, why the epoch sifts or trains every candidate (empty
            for other policies).
        explored: of ``passed``, those with a usable score trained undecided at random (the
            ``explore`` share).
    """

    epoch: int
    candidates: int
    decided: int
    kept: int
    sifted: int
    passed: int
    stale: int
    annealing: bool
    padded: int = 0
    dropped: int = 0
    unscorable: int = 0
    auto_reason: str = ""
    explored: int = 0

    @property
    def skipped(self) -> int:
        """The old name of :attr:`sifted` (read-only)."""
        return self.sifted

    @property
    def trained(self) -> int:
        """Candidates trained this epoch over all ranks (kept and passed, before padding)."""
        return self.kept + self.passed

    @property
    def keep_rate(self) -> float:
        """The fraction of candidates trained (1.0 for an empty epoch)."""
        return self.trained / self.candidates if self.candidates else 1.0

    @property
    def decided_keep_rate(self) -> float:
        """The fraction of decided candidates kept (what a stated ``keep`` targets); NaN if none."""
        return self.kept / self.decided if self.decided else float("nan")

    def as_dict(self) -> dict[str, Any]:
        """The fields and the derived rates as plain values (ready for a logger)."""
        out = asdict(self)
        out.update(
            trained=self.trained,
            keep_rate=self.keep_rate,
            decided_keep_rate=self.decided_keep_rate,
        )
        return out


def fresh_scores(
    losses: np.ndarray, scored_epoch: np.ndarray, epoch: int, max_age: int | None
) -> tuple[np.ndarray, np.ndarray]:
    """Which scores may decide ``epoch``: finite and at most ``max_age`` epochs old.

    Returns:
        ``(fresh, stale)`` boolean masks: ``stale`` marks finite scores older than ``max_age``.

    Example:
        >>> fresh, stale = fresh_scores(
        ...     np.array([0.5, np.nan, 0.2, 0.9]), np.array([4, 4, 1, -1]), epoch=5, max_age=2
        ... )
        >>> fresh.tolist(), stale.tolist()
        ([True, False, False, False], [False, False, True, False])
    """
    scored = np.isfinite(losses) & (scored_epoch >= 0)
    if max_age is None:
        return scored, np.zeros_like(scored)
    stale = scored & (epoch - scored_epoch > max_age)
    return scored & ~stale, stale


def decidable(fresh: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Which candidates the selector decides: a fresh loss and a finite score.

    Returns:
        ``(decided, unscorable)`` boolean masks: ``unscorable`` marks fresh candidates whose
        score is not finite (they pass, trained undecided).

    Example:
        >>> decided, unscorable = decidable(
        ...     np.array([True, True, False]), np.array([0.3, np.nan, 0.1])
        ... )
        >>> decided.tolist(), unscorable.tolist()
        ([True, False, False], [False, True, False])
    """
    unscorable = fresh & ~np.isfinite(scores)
    return fresh & ~unscorable, unscorable


def annealing(epoch: int, epochs: int | None, anneal: float) -> bool:
    """Whether ``epoch`` is one of the last ``ceil(anneal * epochs)``, which train on all data.

    Example:
        >>> [annealing(e, 8, 0.125) for e in range(8)]
        [False, False, False, False, False, False, False, True]
        >>> annealing(9, None, 0.0)
        False
    """
    if anneal <= 0 or epochs is None:
        return False
    return epoch >= epochs - math.ceil(anneal * epochs - 1e-9)


def shard_evenly(
    indices: np.ndarray, num_replicas: int, rank: int, drop_last: bool
) -> tuple[np.ndarray, int, int]:
    """This rank's share of ``indices``, as ``DistributedSampler`` deals out its permutation.

    Without ``drop_last`` the list is padded by repeating its start to a multiple of
    ``num_replicas``; with it, cut to one. Rank ``r`` gets items ``r, r + W, r + 2W, ...``.

    Returns:
        ``(share, padded, dropped)``.

    Example:
        >>> share, padded, dropped = shard_evenly(np.arange(5), 2, 1, drop_last=False)
        >>> share.tolist(), padded, dropped
        ([1, 3, 0], 1, 0)
        >>> shard_evenly(np.arange(5), 2, 1, drop_last=True)[0].tolist()
        [1, 3]
    """
    n = indices.size
    if num_replicas == 1:
        return indices, 0, 0
    if drop_last:
        total = n // num_replicas * num_replicas
        return np.ascontiguousarray(indices[rank:total:num_replicas]), 0, n - total
    total = -(-n // num_replicas) * num_replicas
    padded = total - n
    if padded and n:
        indices = np.concatenate([indices, np.resize(indices, padded)])
    return np.ascontiguousarray(indices[rank:total:num_replicas]), padded if n else 0, 0


@dataclass
class _Epoch:
    """One epoch's decision: this rank's indices and the weights by dataset index."""

    epoch: int
    indices: np.ndarray
    weights: np.ndarray | None
    started: bool = False
    undecided: np.ndarray | None = None  # ids trained undecided (the hybrid's to score)
    undecided_sorted: bool = False  # sorted on the hybrid loader's first query, not before


class ReuseSampler(Sampler[int]):
    """Wraps a sampler of dataset indices and skips, once per epoch, those predicted learnt.

    See the module documentation for the training loop, the epoch rule, the refresh rule and
    DDP.

    Args:
        sampler: the base sampler (``RandomSampler``, ``SequentialSampler``,
            ``DistributedSampler`` or any sized iterable of indices in ``[0, table.size)``).
        table: the score table the training step feeds.
        policy: the selection policy; default ``RelativeProbabilistic()`` (``beta=1``).
        score: what the policy decides on (higher: more worth training): ``"loss"`` (the last
            loss), ``"change"`` (``|last - previous|`` loss), ``"reducible"`` (last loss less
            the table's reference loss), or a callable ``score(table, indices) -> np.ndarray``
            (float, one per index; under DDP the same on every rank, e.g. read only from the
            table). A candidate whose score is not finite is trained undecided.
        max_age: the refresh rule: a score recorded more than ``max_age`` epochs before the
            current one counts as never scored, so a sample is skipped at most ``max_age``
            epochs in a row (and an epoch trains at least about ``1 / (max_age + 1)`` of the
            data in the long run). None: scores never go stale.
        rescale: weight kept decided samples by ``1 / p`` (``p`` their keep probability), so
            that the epoch's expected gradient is that of all candidates (InfoBatch's
            rescaling); read the weights with :meth:`weights`. Deterministic policies keep
            with ``p = 1``, so their weights are 1.
        max_weight: the bound on the weights; default ``"auto"``: ``policy.weight_bound``
            where the policy states one (``ss.InfoBatch``: ``1 / (1 - prune)``), else
            ``1 / policy.expected_keep`` (the average weight of a kept sample), so that a
            sample kept against the odds
            cannot dominate a step (unbounded, its ``1 / p`` can reach thousands; see
            docs/reuse.md); a float >= 1; None: unbounded ``1 / p`` (unbiased, high variance).
        epochs: the number of epochs of the run (needed by ``anneal``).
        anneal: the last ``ceil(anneal * epochs)`` epochs train on every candidate.
        explore: the share of the candidates with a usable score that each epoch trains
            undecided, drawn at random (never sifted, so their losses stay fresh); a float in
            [0, 1), or a function of the epoch returning one (a keep schedule: the epoch
            trains about ``explore + (1 - explore) * keep`` of them). 0: none.
        chunk_size: how many scores the selector decides at once (a raw batch's worth).
        seed: seed of the selector's private generator (the same on every rank).
        num_replicas, rank: shard the pruned list over ranks; taken from a
            ``DistributedSampler`` base; default 1 and 0 otherwise.
        drop_last: cut instead of pad when sharding; default the ``DistributedSampler``'s own,
            else False.
        audit: records per epoch the ids kept (with their scores: the reused losses under
            ``score="loss"``), skipped ("sifted", with their scores), passed, and cut by
            ``drop_last``. Under DDP each rank records its share;
            :meth:`~smartsift.SiftAudit.merge` joins them.
    """

    def __init__(
        self,
        sampler: Sampler[int] | Iterable[int],
        table: ScoreTable,
        policy: Policy | None = None,
        *,
        score: str | ScoreFn = "loss",
        max_age: int | None = 3,
        rescale: bool = False,
        max_weight: float | str | None = "auto",
        epochs: int | None = None,
        anneal: float = 0.0,
        explore: float | Callable[[int], float] = 0.0,
        chunk_size: int = 256,
        seed: int = 0,
        num_replicas: int | None = None,
        rank: int | None = None,
        drop_last: bool | None = None,
        audit: SiftAudit | None = None,
    ) -> None:
        super().__init__()
        policy = RelativeProbabilistic() if policy is None else policy
        if not isinstance(policy, Policy):
            raise ValueError(
                "Expected `policy` to be a smartsift Policy (e.g. "
                f"ss.RelativeProbabilistic(keep=0.3)), but got {policy!r}."
            )
        check_instance("table", table, ScoreTable, "a ScoreTable")
        needs = policy.bind().needs
        if needs.scoring_pass:
            raise ValueError(
                f"Expected a policy that decides from losses alone, but got {policy!r}: "
                f"{type(policy).__name__} needs a SiftingDataLoader's scoring pass, which loss "
                "reuse does not run. Pass the policy it wraps."
            )
        if needs.labels:
            raise ValueError(
                f"Expected a policy that needs no labels, but got {policy!r}: the sampler "
                "decides before loading, so it sees no labels (a Guarded policy: use "
                "exclude_top or max_streak, not class_floor)."
            )
        if not (callable(score) or (isinstance(score, str) and score in SCORES)):
            raise ValueError(
                f"Expected `score` to be one of {sorted(SCORES)} or a callable "
                f"score(table, indices) -> np.ndarray, but got {score!r}."
            )
        check_optional_int("max_age", max_age, 0, words=False)
        if max_age == 0:
            raise ValueError(
                "Expected `max_age` to be a positive int or None, but got 0: every recorded "
                "loss would be stale before an epoch could use it, so nothing would ever be "
                "sifted. Pass max_age=1 or more (3 by default), or None for losses that never "
                "go stale."
            )
        check_optional_int("epochs", epochs, 1, words=False)
        check_int("chunk_size", chunk_size, 1, words=False)
        check_fraction("anneal", anneal, high_open=True)
        if not callable(explore):
            check_fraction("explore", explore, high_open=True)
        if anneal > 0 and epochs is None:
            raise ValueError(
                f"anneal={anneal} needs `epochs` (the run's number of epochs) to know which "
                "epochs are the last ones; pass epochs=..."
            )
        if isinstance(max_weight, str):
            if max_weight != "auto":
                raise ValueError(
                    'Expected `max_weight` to be "auto" (1 / policy.expected_keep), a float >= 1, '
                    f"or None (unbounded 1/p), but got {max_weight!r}."
                )
            bound = getattr(policy, "weight_bound", None)  # a rule that states its own
            max_weight = bound if bound is not None else max(1.0, 1.0 / policy.expected_keep)
        check_real("max_weight", max_weight, 1, optional=True)
        self.sampler = sampler
        self.table = table
        self.policy = policy
        self.score = score
        self.max_age = max_age
        self.rescale = bool(rescale)
        self.max_weight: float | None = None if max_weight is None else float(max_weight)
        self.epochs = epochs
        self.anneal = float(anneal)
        self.explore = explore
        self.chunk_size = chunk_size
        self._ledger = Ledger(audit)
        self.num_replicas, self.rank, self.drop_last = _sharding(
            sampler, num_replicas, rank, drop_last
        )
        self.selector = Selector(policy, seed=seed)
        _RANKS_HERE.setdefault(table, set()).add((self.num_replicas, self.rank))
        self._stats: dict[int, ReuseEpochStats] = {}
        self._explicit: int | None = None  # set_epoch's value
        self._current: _Epoch | None = None
        self._position = 0  # indices drawn in the current epoch by its latest iteration
        self._resume = False  # the next iteration continues the current epoch at _position
        self._token = 0  # which iteration owns _position
        self._saved: dict[str, Any] | None = None  # the state parts fixed until the next decision
        self._warned = False
        self._warned_once: set[str] = set()  # the one-time warnings already given
        self._updates_at_decision: int | None = None  # table.updates at the last decision

    # ------------------------------------------------------------ epochs
    def set_epoch(self, epoch: int) -> None:
        """Sets the epoch that iterations and ``len()`` use from now on (decided on first use).

        A pending resume (after :meth:`load_state_dict`) is kept only for the same epoch.
        """
        check_int("epoch", epoch, 0, words=False)
        self._explicit = epoch
        if self._resume and (self._current is None or self._current.epoch != epoch):
            self._resume = False

    @property
    def epoch(self) -> int | None:
        """The epoch of the current decision (None before the first)."""
        return None if self._current is None else self._current.epoch

    def __len__(self) -> int:
        current = self._current
        if current is None or (self._explicit is not None and current.epoch != self._explicit):
            current = self._current = self._decide(0 if self._explicit is None else self._explicit)
        return int(current.indices.size)

    def __iter__(self) -> Iterator[int]:
        if self._resume and self._current is not None:
            self._resume = False
            return self._run((self._current, self._position))
        return self._run(None)

    def _run(self, bound: tuple[_Epoch, int] | None) -> Iterator[int]:
        # A generator: nothing below runs, and nothing is decided, until the first index is drawn.
        if bound is None:
            current, start = self._bind(), 0
        else:
            current, start = bound[0], self._resume_point(*bound)
        current.started = True
        self._token += 1
        token = self._token
        self._position = start
        for i, index in enumerate(current.indices[start:].tolist(), start + 1):
            if self._token == token:
                self._position = i
            yield index

    def _bind(self) -> _Epoch:
        """The epoch a new iteration runs: ``set_epoch``'s, one ``len()`` decided, or the next."""
        current = self._current
        if self._explicit is not None:
            if current is None or current.epoch != self._explicit:
                current = self._current = self._decide(self._explicit)
            return current
        if current is not None and not current.started:
            return current
        current = self._current = self._decide(0 if current is None else current.epoch + 1)
        return current

    # ------------------------------------------------------------ the decision
    def _decide(self, epoch: int) -> _Epoch:
        table = self.table
        self._check_shared(table)
        table.sync()  # under DDP a collective: the table is whole when an epoch is decided
        self._check_fed(table)
        table.epoch = epoch
        order = self._order(epoch)
        losses = table.losses[order]
        fresh, stale = fresh_scores(losses, table.scored_epoch[order], epoch, self.max_age)
        anneals = annealing(epoch, self.epochs, self.anneal)
        if anneals:
            fresh = np.zeros_like(fresh)
        scores, unscorable = losses, np.zeros_like(fresh)
        if not (isinstance(self.score, str) and self.score == "loss"):
            scores = np.full(order.size, np.nan)
            scores[fresh] = table.scores(self.score, order[fresh])
            fresh, unscorable = decidable(fresh, scores)
            self._warn_if_unscorable(unscorable)
        keep = np.ones(order.size, dtype=bool)
        probs = np.ones(order.size, dtype=np.float64)
        decided = np.flatnonzero(fresh)
        # Every rank asks, every epoch (a held-out check is a collective); False: train all.
        sifts, reason = self.selector.state.judge_epoch(
            epoch, losses[decided][np.isfinite(losses[decided])], self._context(table)
        )
        if not sifts:
            decided = decided[:0]
        undecided = order[~fresh] if sifts and not anneals else order[:0]
        decided, explored = self._explore(epoch, decided)
        fresh[explored] = False  # trained undecided, as the passed ones
        for start in range(0, decided.size, self.chunk_size):
            pos = decided[start : start + self.chunk_size]
            decision = self.selector.decide(
                [scores[pos]], probabilities=self.rescale, ids=[order[pos]]
            )
            keep[pos] = decision.masks[0]
            if decision.probabilities is not None:
                probs[pos] = decision.probabilities[0]
        weights = None
        if self.rescale:
            weights = np.ones(table.size, dtype=np.float32)
            pos = decided[keep[decided]]
            w = 1.0 / probs[pos]
            if self.max_weight is not None:
                w = np.minimum(w, self.max_weight)
            weights[order[pos]] = w
        trained_pos = np.flatnonzero(keep)
        share, padded, dropped = shard_evenly(
            order[trained_pos], self.num_replicas, self.rank, self.drop_last
        )
        n_kept = int(np.count_nonzero(keep[decided]))
        self._stats[epoch] = ReuseEpochStats(
            epoch=epoch,
            candidates=int(order.size),
            decided=int(decided.size),
            kept=n_kept,
            sifted=int(decided.size) - n_kept,
            passed=int(order.size - decided.size),
            stale=0 if anneals else int(np.count_nonzero(stale)),
            annealing=anneals,
            padded=padded,
            dropped=dropped,
            unscorable=int(np.count_nonzero(unscorable)),
            auto_reason=reason,
            explored=int(explored.size),
        )
        self._record(epoch, order, scores, fresh, keep, trained_pos)
        self._saved = None
        self._updates_at_decision = table.updates
        # `undecided`: what a sifting loader around this sampler scores (the hybrid mode): never
        # scored or stale, unless the epoch trains all on purpose; never the explored ones.
        return _Epoch(epoch, share, weights, undecided=undecided)

    def _explore(self, epoch: int, decided: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Splits the decided positions into those the selector decides and a random
        ``explore`` share trained undecided (drawn from the selector's generator: the same on
        every rank)."""
        if decided.size == 0:
            return decided, decided[:0]
        share = self.explore(epoch) if callable(self.explore) else self.explore
        if callable(self.explore):
            check_fraction(f"explore({epoch})", share, high_open=True)
        if share <= 0:
            return decided, decided[:0]
        drawn = torch.rand(decided.size, generator=self.selector.generator).numpy() < share
        return decided[~drawn], decided[drawn]

    @staticmethod
    def _context(table: ScoreTable) -> RankContext | None:
        """The held-out collective a policy's epoch judgement may run (None: one process)."""
        if not table.shared:
            return None
        group, device = table.group, comm_device(table.group)

        def sum_over_ranks(values: list[float]) -> list[float]:
            t = torch.tensor(values, dtype=torch.float64, device=device)
            dist.all_reduce(t, group=group)
            return [float(x) for x in t.cpu()]

        rank, world = dist.get_rank(group), dist.get_world_size(group)
        return RankContext(torch.nn.Module(), sum_over_ranks, rank, world)

    def _check_shared(self, table: ScoreTable) -> None:
        """Refuses to shard over ranks whose tables are not shared: their decisions would differ,
        and their shares would overlap and miss samples."""
        ranks_here = _RANKS_HERE.get(table, set())
        simulated = ranks_here >= {(self.num_replicas, r) for r in range(self.num_replicas)}
        if self.num_replicas > 1 and not table.shared and not simulated:
            raise RuntimeError(
                f"The sampler shards every epoch over num_replicas={self.num_replicas} ranks "
                f"(this is rank {self.rank}), but its score table is not shared: no "
                "torch.distributed process group of that size is initialised (or the table was "
                "built with distributed=False), so each rank would decide from its own losses "
                "and the ranks' shares would overlap and miss samples. Initialise the process "
                "group (torchrun, then dist.init_process_group) before the first epoch, or "
                "give a sampler of one rank."
            )

    def _check_fed(self, table: ScoreTable) -> None:
        """Warns once when the epoch that just ran recorded no losses, or recorded each sample
        on several ranks (a base sampler that is not sharded under DDP)."""
        last = self._current
        if last is None or not last.started or self._updates_at_decision is None:
            return
        stats = self._stats.get(last.epoch)
        if stats is None or stats.trained == 0:
            return
        if table.updates == self._updates_at_decision:
            self._warn_once(
                "fed",
                f"No losses were recorded while epoch {last.epoch} ran: table.update(ids, "
                "per_sample_losses) was never called, so nothing can be sifted and every "
                "sample is trained. Call it in the training step, after the forward pass.",
            )
            return
        records, repeats = table.epoch_counts(last.epoch)
        # Padding that evens out the ranks' shares repeats fewer than a batch per rank.
        world = dist.get_world_size(table.group) if table.shared else 1
        padding = world * table.widest(last.epoch)
        if (
            world > 1
            and self.num_replicas == 1
            and repeats >= max(_UNSHARDED_REPEATS, stats.trained // 2, padding)
        ):
            self._warn_once(
                "unsharded",
                f"In epoch {last.epoch}, {repeats} of the {records} losses recorded were of "
                "samples already trained that epoch: each sample was trained on more than one "
                "rank. The base sampler is not sharded over the ranks: wrap a "
                "DistributedSampler (or pass num_replicas and rank), or let accelerate's "
                "prepare() shard the loader's batches.",
            )

    def _warn_once(self, key: str, message: str) -> None:
        if key not in self._warned_once:
            self._warned_once.add(key)
            warnings.warn(message, stacklevel=5)

    def _resume_point(self, current: _Epoch, position: int) -> int:
        """Where a resumed epoch continues: the saved position, or the first index drawn but
        never trained when the loader had drawn ahead of training (a ``DataLoader`` with
        workers prefetches): the indices this rank trained are those the table recorded this
        epoch, a prefix of the epoch's list. Without such a clean prefix (no record at all:
        a table not restored; or gaps), the saved position stands, so nothing trains twice."""
        if position == 0:
            return 0
        recorded = self.table.recorded(current.indices[:position], current.epoch)
        gap = int(np.argmin(recorded))
        if recorded[gap] or gap == 0 or recorded[gap:].any():
            return position
        return gap

    def _warn_if_unscorable(self, unscorable: np.ndarray) -> None:
        """Warns once if ``"reducible"`` finds no reference at all: nothing can be decided."""
        reducible = isinstance(self.score, str) and self.score == "reducible"
        if self._warned or not reducible or not unscorable.any():
            return
        if not np.isfinite(self.table.reference).any():
            self._warned = True
            warnings.warn(
                "score='reducible' but the score table holds no reference losses, so every "
                "candidate is trained undecided; call table.set_reference(ids, losses) with a "
                "reference model's per-sample losses first.",
                stacklevel=4,
            )

    def _order(self, epoch: int) -> np.ndarray:
        """The epoch's candidates: the base sampler's indices (every rank's under DDP)."""
        base = self.sampler
        if hasattr(base, "set_epoch"):
            base.set_epoch(epoch)
        if isinstance(base, DistributedSampler):
            # The whole permutation: the same sampler seen as the only rank.
            whole = copy.copy(base)
            whole.num_replicas, whole.rank, whole.drop_last = 1, 0, False
            whole.num_samples = whole.total_size = len(base.dataset)  # type: ignore[arg-type]
            base = whole
        order = np.fromiter(iter(base), dtype=np.int64)
        if order.size and (order.min() < 0 or order.max() >= self.table.size):
            bad = order[(order < 0) | (order >= self.table.size)][0]
            raise ValueError(
                f"The base sampler gave index {int(bad)}, outside the score table's "
                f"[0, {self.table.size}); build the table with ScoreTable(len(dataset))."
            )
        return order

    def _record(
        self,
        epoch: int,
        order: np.ndarray,
        scores: np.ndarray,
        fresh: np.ndarray,
        keep: np.ndarray,
        trained_pos: np.ndarray,
    ) -> None:
        """Records this rank's share in the ledger (and so in the audit): trained items by
        position in the pruned list, skipped ones by position in the candidates, so that the
        ranks' audits merge into the whole epoch. The losses recorded are the scores the
        decision used (the reused losses under "loss")."""
        if self._ledger.audit is None:
            return  # nothing reads the counts of the sampler's ledger: only its audit
        ledger, w, r = self._ledger, self.num_replicas, self.rank
        mine = trained_pos[r::w]
        decided = fresh[mine]
        ledger.scored_ids(epoch, order[mine[decided]], scores[mine[decided]], keep[mine[decided]])
        ledger.passed_ids(epoch, order[mine[~decided]])
        sifted = np.flatnonzero(fresh & ~keep)
        sifted = sifted[sifted % w == r]
        ledger.scored_ids(epoch, order[sifted], scores[sifted], np.zeros(sifted.size, dtype=bool))
        if self.drop_last and w > 1:
            total = trained_pos.size // w * w
            cut = np.arange(total, trained_pos.size)
            ledger.dropped_ids(epoch, order[trained_pos[cut[cut % w == r]]])

    @property
    def audit(self) -> SiftAudit | None:
        """The audit that each decision is recorded in (through the sampler's ledger), or None."""
        return self._ledger.audit

    @audit.setter
    def audit(self, audit: SiftAudit | None) -> None:
        self._ledger.audit = audit

    # ------------------------------------------------------------ weights and stats
    def undecided(self, ids: Any) -> np.ndarray:
        """Which of the samples ``ids`` the current epoch trains undecided: never scored, stale
        or unscorable (none while annealing, or in an epoch the policy trains whole).

        These are what a :class:`~smartsift.SiftingDataLoader` wrapped around a loader over
        this sampler scores with its pass and sifts (the hybrid mode, ``docs/hybrid.md``).

        Returns:
            A boolean array, one entry per id.

        Example:
            >>> table = ScoreTable(4)
            >>> sampler = ReuseSampler(range(4), table, chunk_size=4)
            >>> _ = list(sampler)                  # epoch 0: nothing scored yet
            >>> sampler.undecided([0, 3]).tolist()
            [True, True]
        """
        ids_np = ids_array(ids).astype(np.int64, copy=False)
        current = self._current
        if current is None or current.undecided is None or current.undecided.size == 0:
            return np.zeros(ids_np.shape, dtype=bool)
        if not current.undecided_sorted:  # a new array: saved states share the old one
            current.undecided, current.undecided_sorted = np.sort(current.undecided), True
        found = np.searchsorted(current.undecided, ids_np)
        found = np.minimum(found, current.undecided.size - 1)
        return current.undecided[found] == ids_np

    def weights(self, ids: Any) -> torch.Tensor:
        """The current epoch's loss weights of the samples ``ids`` (all 1 without ``rescale``).

        Returns a float32 tensor on the device of ``ids`` (if a tensor); multiply the
        per-sample losses by it: ``loss = (per_sample * sampler.weights(ids)).mean()``.
        """
        device = ids.device if isinstance(ids, torch.Tensor) else torch.device("cpu")
        ids_np = ids_array(ids)
        current = self._current
        if current is None or current.weights is None:
            return torch.ones(ids_np.shape, dtype=torch.float32, device=device)
        return torch.from_numpy(current.weights[ids_np.astype(np.int64)]).to(device)

    @property
    def stats(self) -> ReuseEpochStats | None:
        """The current epoch's decision counts (None before the first decision)."""
        return None if self._current is None else self._stats.get(self._current.epoch)

    @property
    def epoch_stats(self) -> dict[int, ReuseEpochStats]:
        """Every decided epoch's counts, by epoch (a copy)."""
        return dict(self._stats)

    # ------------------------------------------------------------ saving
    def state_dict(self) -> dict[str, Any]:
        """The epoch's decision, the position in it, the selector, the base sampler's generator
        and the stats, as tensors and plain values (``torch.load(weights_only=True)`` loadable).

        The score table is saved separately (:meth:`ScoreTable.state_dict`). Cheap to call
        often (``StatefulDataLoader`` with workers calls it per batch): the parts fixed for the
        epoch are built once per decision and shared, never copied.
        """
        if self._saved is None:
            self._saved = self._epoch_state()
        current = self._current
        return {
            **self._saved,
            "explicit_epoch": self._explicit,
            "started": bool(current is not None and current.started),
            "position": self._position,
        }

    def _epoch_state(self) -> dict[str, Any]:
        current = self._current
        base_gen = getattr(self.sampler, "generator", None)
        return {
            ckpt.VERSION_KEY: ckpt.VERSION,
            "num_replicas": self.num_replicas,
            "rank": self.rank,
            "epoch": None if current is None else current.epoch,
            # The decision's arrays are never changed in place, so the tensors share them.
            "indices": None if current is None else torch.from_numpy(current.indices),
            "weights": (
                None
                if current is None or current.weights is None
                else torch.from_numpy(current.weights)
            ),
            "undecided": (
                None
                if current is None or current.undecided is None
                else torch.from_numpy(current.undecided)
            ),
            "selector": self.selector.state_dict(),
            "base_generator": (
                base_gen.get_state() if isinstance(base_gen, torch.Generator) else None
            ),
            "stats": [asdict(s) for s in self._stats.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output; the next iteration continues the saved epoch
        from the saved position (yielding nothing if it was complete).

        A state taken after an epoch was decided (``set_epoch`` then ``len()``) but before its
        first index was drawn loads as not started: the next iteration runs that epoch, as
        decided, from its first index. When the loader had drawn indices ahead of the batches
        trained (a ``DataLoader`` with workers), the epoch continues from the first index the
        score table holds no loss for in that epoch (docs/reuse.md, "Resuming").

        A state marked ``"complete": True`` (a hybrid loader saves the sampler's state so
        between epochs) ends its epoch: the next iteration starts the next one.

        A state saved before ``ReuseEpochStats.skipped`` was renamed ``sifted`` (format
        version 1) loads too.

        Raises:
            ValueError: if the state is of an unknown version, or was saved with another rank
                layout or another policy.
        """
        ckpt.check_version(
            state, "ReuseSampler", "Pass the dict that ReuseSampler.state_dict() returned."
        )
        saved = (int(state["num_replicas"]), int(state["rank"]))
        if saved != (self.num_replicas, self.rank):
            raise ValueError(
                f"The state was saved by rank {saved[1]} of {saved[0]}, but this sampler is rank "
                f"{self.rank} of {self.num_replicas}; load each rank's own state."
            )
        self.selector.load_state_dict(state["selector"])
        base_gen = getattr(self.sampler, "generator", None)
        if isinstance(base_gen, torch.Generator) and state["base_generator"] is not None:
            base_gen.set_state(state["base_generator"])
        self._stats = {int(s["epoch"]): _stats_from(s) for s in state["stats"]}
        self._explicit = None if state["explicit_epoch"] is None else int(state["explicit_epoch"])
        self._position = int(state["position"])
        self._current = None
        self._resume = False
        self._saved = None
        if state["epoch"] is not None:
            weights, undecided = state["weights"], state.get("undecided")
            self._current = _Epoch(
                epoch=int(state["epoch"]),
                indices=state["indices"].numpy().astype(np.int64, copy=True),
                weights=None if weights is None else weights.numpy().copy(),
                started=bool(state["started"]),
                undecided=None if undecided is None else undecided.numpy().astype(np.int64),
            )
            # A state its loader saved between epochs says so: the next iteration starts anew.
            self._resume = self._current.started and not state.get("complete", False)


_RANKS_HERE: weakref.WeakKeyDictionary[ScoreTable, set[tuple[int, int]]] = (
    weakref.WeakKeyDictionary()
)
"""The ``(num_replicas, rank)`` of the samplers built over each table in this process: a
table that every rank's sampler holds is shared without a process group (ranks simulated in
one process)."""

_UNSHARDED_REPEATS = 256
"""Repeated records in one epoch below which no unsharded-sampler warning is given: padding
that evens out the ranks' shares repeats a few samples legitimately."""


def _stats_from(saved: dict[str, Any]) -> ReuseEpochStats:
    """An epoch's :class:`ReuseEpochStats` from its saved dict: fields saved before they existed
    take their defaults, and an old ``skipped`` is read as ``sifted``."""
    names = {f.name for f in fields(ReuseEpochStats)}
    values = {k: v for k, v in saved.items() if k in names}
    if "skipped" in saved:
        values.setdefault("sifted", saved["skipped"])
    return ReuseEpochStats(**values)


def _sharding(
    sampler: Any, num_replicas: int | None, rank: int | None, drop_last: bool | None
) -> tuple[int, int, bool]:
    """The rank layout: a ``DistributedSampler``'s own, or the given one (default one rank)."""
    if isinstance(sampler, DistributedSampler):
        own = (sampler.num_replicas, sampler.rank)
        for name, given, have in (("num_replicas", num_replicas, own[0]), ("rank", rank, own[1])):
            if given is not None and given != have:
                raise ValueError(
                    f"Expected `{name}` to match the DistributedSampler's ({have}), but got "
                    f"{given!r}; leave it out to use the sampler's."
                )
        return own[0], own[1], sampler.drop_last if drop_last is None else bool(drop_last)
    w = 1 if num_replicas is None else num_replicas
    r = 0 if rank is None else rank
    check_int("num_replicas", w, 1, words=False)
    check_int("rank", r, 0, words=False)
    if r >= w:
        raise ValueError(f"Expected `rank` in [0, {w}) (num_replicas={w}), but got {r}.")
    return w, r, bool(drop_last)
