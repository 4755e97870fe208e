"""Guards against chasing noise: limits on what any policy keeps, composable with every policy.

High-loss selection keeps what the model gets wrong, and a mislabeled sample is what a model
gets most persistently wrong: a pure high-loss rule trains on label noise more and more often.
:class:`Guarded` wraps any policy with up to three guards, applied after the policy's own mask:

- ``exclude_top``: a loss above the ``1 - exclude_top`` quantile of the loss history is sifted
  out as likely noise (the highest losses, relative to the recent ones);
- ``max_streak``: a sample kept in ``max_streak`` consecutive decisions (its last scored
  epochs) is sifted out at the next, and its streak starts again; needs sample ids in the batch
  (``id_key``, as :class:`~smartsift.SiftAudit`'s);
- ``class_floor``: every class keeps at least ``ceil(class_floor * n)`` of its ``n`` samples of
  each raw batch, so that no class, rare or easy, is sifted away; needs labels (``label_key``).
  Samples are added back highest loss first, taking those no other guard excluded first.

The guards draw no random numbers, so the policy's random stream is that of the unguarded
policy. The bound state, :class:`GuardedState`, holds the streaks (per sample id, saved in its
``state_dict``) and, under DDP, applies the guards to every rank's samples alike: ids and labels
travel with the losses in the round's one exchange.

Example:
    >>> import numpy as np
    >>> import smartsift as ss
    >>> guarded = ss.Guarded(ss.TopK(keep=0.5), exclude_top=0.25)
    >>> history = guarded.make_history()
    >>> losses = np.array([0.1, 0.2, 0.3, 9.0])
    >>> history.extend(losses)
    >>> base = guarded.policy.keep_mask(losses, history, None)
    >>> mask, excluded = guarded.guard(base, losses, history)
    >>> base.tolist(), mask.tolist()
    ([False, False, True, True], [False, False, True, False])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift.batches.structure import IdKey, per_sample_ints
from smartsift.engine.checks import is_real
from smartsift.engine.history import LossHistory, weak_percentile
from smartsift.policies.base import Needs, Policy, PolicyState, Proposal, RunContext
from smartsift.policies.rules import RelativeProbabilistic, Uniform

__all__ = [
    "MAX_ID",
    "NOISE_HISTORY",
    "Guarded",
    "GuardedState",
    "StreakTable",
    "class_floor_mask",
    "noise_mask",
    "streak_mask",
]


NOISE_HISTORY = 500
"""The history ``exclude_top`` ranks against when the wrapped policy keeps none (``TopK``)."""
MAX_ID = 2**31
"""Sample ids must lie in ``[0, MAX_ID)``: the streaks are a table indexed by id."""
MAX_STREAK = 255


def noise_mask(losses: np.ndarray, sorted_history: np.ndarray, exclude_top: float) -> np.ndarray:
    """Marks the losses above the ``1 - exclude_top`` quantile of the history: likely noise.

    A loss is marked when more than ``1 - exclude_top`` of the history is less than or equal to
    it: with a history of 1..100 and ``exclude_top=0.05``, losses 96 to 100 are marked.

    Example:
        >>> noise_mask(np.array([1.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 4.0]), 0.25).tolist()
        [False, False, True]
    """
    return weak_percentile(sorted_history, losses) > 1.0 - exclude_top


def streak_mask(streaks: np.ndarray, max_streak: int) -> np.ndarray:
    """Marks the samples kept in ``max_streak`` consecutive decisions already.

    Example:
        >>> streak_mask(np.array([0, 2, 3]), 2).tolist()
        [False, True, True]
    """
    return streaks >= max_streak


def class_floor_mask(
    mask: np.ndarray,
    losses: np.ndarray,
    labels: np.ndarray,
    floor: float,
    excluded: np.ndarray | None = None,
) -> np.ndarray:
    """Adds samples to ``mask`` until each class keeps ``ceil(floor * n)`` of its ``n`` samples.

    A class short of its floor gets back its dropped samples of the highest loss first, taking
    the samples not ``excluded`` (by another guard) first and, if those are too few, the
    excluded ones of the lowest loss first. Draws no random numbers.

    Example:
        >>> mask = np.array([True, True, False, False])
        >>> losses = np.array([5.0, 4.0, 0.1, 0.2])
        >>> class_floor_mask(mask, losses, np.array([0, 0, 1, 1]), 0.5).tolist()
        [True, True, False, True]
    """
    out = mask.copy()
    if floor <= 0 or labels.size == 0:
        return out
    excl = np.zeros(mask.size, dtype=bool) if excluded is None else excluded
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    kept = np.bincount(inverse, weights=out, minlength=classes.size)
    need = np.ceil(floor * counts - 1e-9) - kept
    for c in np.flatnonzero(need > 0):
        candidates = np.flatnonzero((inverse == c) & ~out)
        ex = excl[candidates]
        # Not excluded first, highest loss first; then excluded, lowest loss first.
        order = np.lexsort((np.where(ex, losses[candidates], -losses[candidates]), ex))
        out[candidates[order[: int(need[c])]]] = True
    return out


class StreakTable:
    """How many consecutive decisions kept each sample id (0 for ids never kept or sifted last).

    Example:
        >>> table = StreakTable()
        >>> table.update(np.array([3, 5]), np.array([True, False]))
        >>> table.update(np.array([3, 5]), np.array([True, True]))
        >>> table.get(np.array([3, 5, 7])).tolist()
        [2, 1, 0]
    """

    def __init__(self) -> None:
        self._streaks = np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        """The number of ids with a non-zero streak."""
        return int(np.count_nonzero(self._streaks))

    def get(self, ids: np.ndarray) -> np.ndarray:
        """The streaks of ``ids``."""
        out = np.zeros(ids.size, dtype=np.int64)
        known = ids < self._streaks.size
        out[known] = self._streaks[ids[known]]
        return out

    def update(self, ids: np.ndarray, kept: np.ndarray) -> None:
        """One decision on ``ids``: a kept id's streak grows by one, a sifted id's restarts."""
        if ids.size == 0:
            return
        top = int(ids.max()) + 1
        if top > self._streaks.size:
            grown = np.zeros(max(top, 2 * self._streaks.size), dtype=np.uint8)
            grown[: self._streaks.size] = self._streaks
            self._streaks = grown
        streaks = self._streaks[ids].astype(np.int64)
        self._streaks[ids] = np.where(kept, np.minimum(streaks + 1, MAX_STREAK), 0)

    def state_dict(self) -> dict[str, Any]:
        """The non-zero streaks as two tensors: ids and streaks."""
        ids = np.flatnonzero(self._streaks)
        return {
            "ids": torch.from_numpy(ids.astype(np.int64)),
            "streaks": torch.from_numpy(self._streaks[ids].copy()),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        ids = state["ids"].numpy()
        self._streaks = np.zeros(int(ids.max()) + 1 if ids.size else 0, dtype=np.uint8)
        self._streaks[ids] = state["streaks"].numpy()


def _check_key(name: str, key: Any) -> None:
    path = key if isinstance(key, tuple) else (key,)
    if not path or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in path):
        raise TypeError(
            f"Expected `{name}` to be a str (a key of dict batches), an int (a position in tuple "
            f"batches) or a non-empty tuple of those, but got {key!r}."
        )


@dataclass(frozen=True, repr=False)
class Guarded(Policy):
    """Any policy, with guards against chasing noisy samples (see the module's description).

    Args:
        policy: the policy whose mask the guards limit (not an :class:`~smartsift.Auto`:
            guard the policy inside it, ``Auto(Guarded(...))``).
        exclude_top: sift out losses above the ``1 - exclude_top`` quantile of the history, in
            [0, 1); about the share of noisy labels you expect. 0 turns it off.
        max_streak: sift out a sample kept in this many consecutive decisions (at least 1);
            None turns it off. Needs ``id_key``.
        class_floor: every class keeps at least this fraction of its samples per raw batch, in
            [0, 1]; 0 turns it off. Needs ``label_key``.
        id_key: where each batch holds its sample ids (non-negative ints below 2**31), as
            :class:`~smartsift.SiftAudit`'s ``id_key``: ``0`` with
            :class:`~smartsift.IndexedDataset`'s tuple samples.
        label_key: where each batch holds its integer class labels, e.g. ``2`` for
            ``(index, x, y)`` batches.

    Example:
        >>> import smartsift as ss
        >>> ss.Guarded(ss.TopK(0.5), exclude_top=0.1, max_streak=2, id_key=0)
        Guarded(TopK(keep=0.5), exclude_top=0.1, max_streak=2, id_key=0)
    """

    policy: Policy
    exclude_top: float = 0.0
    max_streak: int | None = None
    class_floor: float = 0.0
    id_key: IdKey | None = None
    label_key: IdKey | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy) or self.policy.outermost:
            raise TypeError(
                "Expected `policy` to be a smartsift Policy other than Auto (guard the policy "
                f"inside Auto: ss.Auto(ss.Guarded(...))), but got {self.policy!r}."
            )
        if isinstance(self.policy, Guarded):
            raise TypeError(
                "Expected `policy` to be an unguarded policy, but got a Guarded one; give all "
                "guards to one Guarded."
            )
        x = self.exclude_top
        if not is_real(x) or not 0 <= x < 1:
            raise ValueError(f"Expected `exclude_top` to be a float in [0, 1), but got {x!r}.")
        n = self.max_streak
        if n is not None and (
            not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= MAX_STREAK
        ):
            raise ValueError(
                f"Expected `max_streak` to be None or an int in [1, {MAX_STREAK}], but got {n!r}."
            )
        f = self.class_floor
        if not is_real(f) or not 0 <= f <= 1:
            raise ValueError(f"Expected `class_floor` to be a float in [0, 1], but got {f!r}.")
        if not (x > 0 or n is not None or f > 0):
            raise ValueError(
                "Expected at least one guard: exclude_top > 0, max_streak or class_floor > 0, "
                "but got none; use the policy itself."
            )
        for name, key, needed, guard in (
            ("id_key", self.id_key, n is not None, f"max_streak={n}"),
            ("label_key", self.label_key, f > 0, f"class_floor={f}"),
        ):
            if key is not None:
                _check_key(name, key)
            elif needed:
                example = "id_key=0 with ss.IndexedDataset" if name == "id_key" else "label_key=1"
                raise ValueError(
                    f"Expected `{name}` (where each batch holds it) with {guard}, but got None; "
                    f"pass e.g. {example}."
                )

    def __repr__(self) -> str:
        return Policy.format_description(self.describe())

    @property
    def history(self) -> int:  # type: ignore[override]
        """The history length: the wrapped policy's, or :data:`NOISE_HISTORY` for
        ``exclude_top`` over a policy without one."""
        if self.policy.history > 0:
            return self.policy.history
        return NOISE_HISTORY if self.exclude_top > 0 else 0

    @property
    def expected_keep(self) -> float:
        """The wrapped policy's nominal kept fraction, less what ``exclude_top`` takes away.

        Exact for the reference rule and ``Uniform`` on stationary losses; for the loss-ranked
        deterministic policies the top losses are all kept, so ``exclude_top`` takes its whole
        share. The streak cap and the class floor are not counted.
        """
        inner, x = self.policy, float(self.exclude_top)
        keep = inner.expected_keep
        if x == 0:
            return keep
        if isinstance(inner, RelativeProbabilistic):
            if inner.adaptive:
                return keep  # a stated keep rate is held whatever the guards take
            beta = inner.initial_beta
            return keep - (1.0 - (1.0 - x) ** (beta + 1.0)) / (beta + 1.0)
        if isinstance(inner, Uniform):
            return keep * (1.0 - x)
        return max(0.0, keep - x)

    @property
    def needs_ids(self) -> bool:
        """Whether decisions need each sample's id (``max_streak``)."""
        return self.max_streak is not None

    @property
    def needs_labels(self) -> bool:
        """Whether decisions need each sample's label (``class_floor``)."""
        return self.class_floor > 0

    def sample_inputs(self, batch: Any, size: int) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The ids (at ``id_key``) and labels (at ``label_key``) of a batch's ``size`` samples,
        each None when no guard needs it.

        Raises:
            ValueError: if the batch has no such entry, it does not hold one integer per
                sample, or an id lies outside ``[0, MAX_ID)``.

        Example:
            >>> guarded = Guarded(Uniform(0.5), max_streak=1, id_key=0)
            >>> ids, labels = guarded.sample_inputs(([7, 9], [1.0, 2.0]), 2)
            >>> ids.tolist(), labels
            ([7, 9], None)
        """
        ids = labels = None
        if self.id_key is not None and self.needs_ids:
            ids = per_sample_ints(batch, self.id_key, size, f"`id_key`={self.id_key!r}")
            if ids.size and (ids.min() < 0 or ids.max() >= MAX_ID):
                raise ValueError(
                    f"Expected the sample ids at `id_key`={self.id_key!r} to lie in [0, 2**31) "
                    f"(dataset indices), but got values from {ids.min()} to {ids.max()}."
                )
        if self.label_key is not None and self.needs_labels:
            labels = per_sample_ints(batch, self.label_key, size, f"`label_key`={self.label_key!r}")
        return ids, labels

    def describe(self) -> dict[str, Any]:
        """The type and set fields as plain values, the wrapped policy's description nested.

        Example:
            >>> Guarded(Uniform(0.5), exclude_top=0.1).describe()["fields"]
            {'policy': {'type': 'Uniform', 'fields': {'keep': 0.5}}, 'exclude_top': 0.1}
        """
        fields: dict[str, Any] = {"policy": self.policy.describe()}
        defaults = {"exclude_top": 0.0, "max_streak": None, "class_floor": 0.0}
        for name in ("exclude_top", "max_streak", "class_floor", "id_key", "label_key"):
            value = getattr(self, name)
            if value is not None and value != defaults.get(name):
                fields[name] = value
        return {"type": "Guarded", "fields": fields}

    def make_history(self) -> LossHistory | None:
        return LossHistory(self.history) if self.history > 0 else None

    def bind(self) -> GuardedState:
        """The wrapped policy's state, with the streaks (see :class:`GuardedState`)."""
        return GuardedState(self)

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        """The wrapped policy's mask limited by ``exclude_top`` (the guards that need no ids
        or labels); the bound :class:`GuardedState` applies all of them."""
        mask = self.policy.keep_mask(losses, history, generator)
        return self.guard(mask, losses, history)[0]

    def guard(
        self,
        mask: np.ndarray,
        losses: np.ndarray,
        history: LossHistory | None,
        streaks: np.ndarray | None = None,
        labels: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Applies the guards to the policy's ``mask`` of finite ``losses``.

        Args:
            mask: the wrapped policy's keep mask.
            losses: the losses decided on (the history already holds them).
            history: the loss history (``exclude_top`` ranks against it; the batch alone
                when None).
            streaks: each sample's streak (needed with ``max_streak``).
            labels: each sample's class (needed with ``class_floor``).

        Returns:
            The guarded mask, and which samples a guard excluded.
        """
        excluded = np.zeros(losses.size, dtype=bool)
        if self.exclude_top > 0:
            ranked = history.sorted() if history is not None else np.sort(losses)
            excluded |= noise_mask(losses, ranked, self.exclude_top)
        if self.max_streak is not None:
            if streaks is None:
                raise ValueError(
                    f"Guarded(max_streak={self.max_streak}) needs each sample's id; this caller "
                    "gave none (the SiftingDataLoader reads them at `id_key`)."
                )
            excluded |= streak_mask(streaks, self.max_streak)
        out = mask & ~excluded
        if self.class_floor > 0:
            if labels is None:
                raise ValueError(
                    f"Guarded(class_floor={self.class_floor}) needs each sample's label; this "
                    "caller gave none (the SiftingDataLoader reads them at `label_key`)."
                )
            out = class_floor_mask(out, losses, labels, self.class_floor, excluded)
        return out, excluded


class GuardedState(PolicyState):
    """The bound state of a :class:`Guarded` policy: the wrapped policy's state, and the streaks.

    Each round, the wrapped state proposes every rank's mask; the guards limit it (streaks and
    labels per rank, in rank order); the wrapped state's feedback (a stated keep rate) then
    sees what the guarded round kept.

    Example:
        >>> import numpy as np, torch
        >>> state = Guarded(Uniform(1.0), max_streak=1, id_key=0).bind()
        >>> ids = [np.array([3, 4])]
        >>> for _ in range(2):
        ...     out = state.decide([np.array([0.5, 0.6])], None, torch.Generator(), ids=ids)
        ...     print(out[0][0].tolist())
        [True, True]
        [False, False]
    """

    def __init__(self, policy: Guarded) -> None:
        super().__init__(policy)
        self.guarded = policy
        self.inner = policy.policy.bind()
        self.streaks = StreakTable() if policy.needs_ids else None
        inner = self.inner.needs
        self.needs = Needs(
            ids=policy.needs_ids or inner.ids,
            labels=policy.needs_labels or inner.labels,
            scoring_pass=inner.scoring_pass,
            held_out=inner.held_out,
        )

    @property
    def beta(self) -> float | None:
        return self.inner.beta

    def sample_inputs(self, batch: Any, size: int) -> np.ndarray | None:
        rows = [v for v in self.guarded.sample_inputs(batch, size) if v is not None]
        return np.stack(rows).astype(np.float64) if rows else None

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        guard = self.guarded
        if self.needs.ids and ids is None:
            raise ValueError(
                f"{guard!r} needs each sample's id; pass ids= (the SiftingDataLoader reads "
                "them at the policy's `id_key`)."
            )
        if self.needs.labels and labels is None:
            raise ValueError(
                f"{guard!r} needs each sample's label; pass labels= (the SiftingDataLoader "
                "reads them at the policy's `label_key`)."
            )
        out: list[Proposal] = []
        proposals = self.inner.propose(losses, history, generator, probabilities, ids, labels)
        for r, (x, (mask, probs)) in enumerate(zip(losses, proposals, strict=True)):
            if x.size == 0:
                out.append((mask, probs))
                continue
            rank_ids = None if ids is None else np.asarray(ids[r])
            streaks = None
            if self.streaks is not None and rank_ids is not None:
                streaks = self.streaks.get(rank_ids)
            rank_labels = None if labels is None else np.asarray(labels[r])
            guarded, excluded = guard.guard(mask, x, history, streaks, rank_labels)
            if probs is not None:
                probs = np.where(excluded & ~guarded, 0.0, probs)
                probs = np.where(guarded & ~mask, 1.0, probs)  # added back by the class floor
            if self.streaks is not None and rank_ids is not None:
                self.streaks.update(rank_ids, guarded)
            out.append((guarded, probs))
        return out

    def feedback(self, kept: int, decided: int) -> None:
        self.inner.feedback(kept, decided)

    def judge_epoch(
        self, epoch: int, losses: np.ndarray, context: RunContext | None
    ) -> tuple[bool, str]:
        """The wrapped policy's epoch judgement (a policy that follows the epochs sees them)."""
        return self.inner.judge_epoch(epoch, losses, context)

    @property
    def key(self) -> str | None:  # type: ignore[override]
        return "streaks" if self.streaks is not None else None

    def inner_states(self) -> tuple[PolicyState, ...]:
        return (self.inner,)

    def state_dict(self) -> dict[str, Any]:
        return self.streaks.state_dict() if self.streaks is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.streaks is not None:
            self.streaks.load_state_dict(state)
