"""The selector: a policy with its loss history, private generator and non-finite handling.

:meth:`Selector.decide` takes the losses of every rank's raw batch (one array per rank, in rank
order) and returns one keep mask per rank. Given the same inputs and state it returns the same
masks on every rank, which is what keeps DDP ranks in step; it needs no loader, so a sampler, a
trainer hook, the profiler or a benchmark can drive it.

It also holds the state of the policies that wrap others: the streaks of a
:class:`~smartsift.Guarded` policy (per sample id; ids and labels come with the losses, one
array per rank) and the :class:`~smartsift.policies.auto.AutoController` of :class:`~smartsift.Auto`,
which the loader asks what each round does (:meth:`Selector.round_kind`) and tells what each
round measured (:meth:`Selector.end_round`).

Example:
    >>> import numpy as np
    >>> import smartsift as ss
    >>> selector = Selector(ss.TopK(keep=0.5), seed=0)
    >>> decision = selector.decide([np.array([0.1, 0.9, 0.4, 0.7])])
    >>> decision.masks[0].tolist(), decision.kept
    ([False, True, False, True], [2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from smartsift.engine.history import LossHistory
from smartsift.policies import Policy, RelativeProbabilistic
from smartsift.policies.auto import MEASURE, SIFT, Auto, AutoController
from smartsift.policies.guards import Guarded, StreakTable
from smartsift.policies.keeprate import KeepRate

__all__ = ["KEEP_HORIZON", "NONFINITE_MODES", "Decision", "Selector"]

NONFINITE_MODES = ("raise", "drop", "keep")

# How many decided samples a stated keep rate takes to correct a persistent error (at most): short
# enough to follow a loss distribution that jumps faster than a long history turns over.
KEEP_HORIZON = 256


@dataclass(frozen=True)
class Decision:
    """The keep masks of one round, one per rank, and what they hold.

    Attributes:
        masks: a boolean keep mask per rank, in rank order.
        kept: the number of kept samples per rank.
        nonfinite: the number of non-finite losses per rank.
        probabilities: with ``decide(..., probabilities=True)``, each sample's probability of
            having been kept, per rank (1 or 0 under a deterministic policy and for non-finite
            losses); otherwise None.
    """

    masks: list[np.ndarray]
    kept: list[int]
    nonfinite: list[int]
    probabilities: list[np.ndarray] | None = None


class Selector:
    """Decides which samples to keep: policy + loss history + private generator.

    A policy with a stated keep rate (``RelativeProbabilistic(keep=...)``) is adapted here: the
    selector holds its :class:`~smartsift.policies.keeprate.KeepRate` (the current beta, corrected after
    every decision by what was kept, over a horizon of ``min(history, 256)`` samples) and saves
    it in :meth:`state_dict`.

    Args:
        policy: the selection policy.
        nonfinite: what to do with NaN or infinite losses: ``"raise"`` (see :meth:`screen`),
            ``"drop"`` the samples, or ``"keep"`` them. They never enter the history.
        seed: seed of the private generator (the global random state is never used).
    """

    def __init__(self, policy: Policy, nonfinite: str = "raise", seed: int = 0) -> None:
        if nonfinite not in NONFINITE_MODES:
            raise ValueError(
                f"Expected `nonfinite` to be one of {NONFINITE_MODES}, got {nonfinite!r}."
            )
        self.policy = policy
        self.nonfinite = nonfinite
        self.auto = AutoController(policy) if isinstance(policy, Auto) else None
        inner = policy.policy if isinstance(policy, Auto) else policy
        self.guard: Guarded | None = inner if isinstance(inner, Guarded) else None
        self.base: Policy = self.guard.policy if self.guard is not None else inner
        self.streaks = StreakTable() if self.guard is not None and self.guard.needs_ids else None
        self.history: LossHistory | None = policy.make_history()
        self.generator = torch.Generator().manual_seed(int(seed))
        self._adaptive: RelativeProbabilistic | None = None
        self.keep_rate: KeepRate | None = None
        base = self.base
        if isinstance(base, RelativeProbabilistic) and base.keep is not None:
            self._adaptive = base
            self.keep_rate = KeepRate(base.keep, horizon=min(base.history, KEEP_HORIZON))

    @property
    def needs_ids(self) -> bool:
        """Whether decisions need each sample's id (a ``Guarded`` policy with ``max_streak``)."""
        return self.streaks is not None

    @property
    def needs_labels(self) -> bool:
        """Whether decisions need each sample's label (``Guarded`` with ``class_floor``)."""
        return self.guard is not None and self.guard.needs_labels

    @property
    def beta(self) -> float | None:
        """The beta of the next decision under ``RelativeProbabilistic`` (adapted for ``keep``)."""
        if self.keep_rate is not None:
            return self.keep_rate.beta
        base = self.base
        return base.initial_beta if isinstance(base, RelativeProbabilistic) else None

    def round_kind(self) -> str:
        """What the next round does: ``"sift"`` (decide), or under ``Auto`` also ``"measure"``
        (score, keep everything) or ``"skip"`` (pass through unscored)."""
        return self.auto.kind() if self.auto is not None else SIFT

    def end_round(
        self,
        losses: Sequence[np.ndarray],
        kept: Sequence[int] | None,
        scalars: Sequence[np.ndarray],
        held_out: float | None = None,
    ) -> bool:
        """Tells ``Auto`` what a round measured (see :meth:`AutoController.observe`); returns
        whether its state changed. Does nothing for other policies."""
        if self.auto is None:
            return False
        return self.auto.observe(losses, kept, scalars, held_out)

    def auto_status(self) -> tuple[str, str] | None:
        """``Auto``'s state and the reason for it, or None for other policies."""
        return None if self.auto is None else (self.auto.state, self.auto.reason)

    def reseed(self, seed: int) -> None:
        """Restarts the private generator from ``seed``."""
        self.generator.manual_seed(int(seed))

    def screen(self, losses: np.ndarray) -> None:
        """Raises ValueError for non-finite losses when ``nonfinite="raise"``.

        Called on each rank's own losses before the round's exchange, so that the error is
        reported to every rank instead of one rank raising alone.
        """
        if self.nonfinite == "raise" and not np.isfinite(losses).all():
            bad = int((~np.isfinite(losses)).sum())
            raise ValueError(
                f"loss_fn returned {bad} non-finite loss(es) (NaN or inf) out of {losses.size}. "
                "Pass nonfinite='drop' to sift such samples out or nonfinite='keep' to train on "
                "them; they never enter the loss history either way."
            )

    def decide(
        self,
        losses: Sequence[np.ndarray],
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> Decision:
        """Adds every rank's finite losses to the history, then returns every rank's keep mask.

        Args:
            losses: one float array of per-sample losses per rank, in rank order (a rank with
                no raw batch this round gives an empty array).
            probabilities: also return each sample's keep probability (for ``1 / p`` weights).
            ids: each rank's sample ids, for a ``Guarded`` policy with ``max_streak``.
            labels: each rank's sample labels, for a ``Guarded`` policy with ``class_floor``.
        """
        history = self.history
        if self.guard is not None or self.auto is not None:
            return self._decide_general(losses, probabilities, ids, labels)
        if self.keep_rate is not None or probabilities:
            return self._decide_general(losses, probabilities)
        if len(losses) == 1 and np.isfinite(losses[0]).all():  # the single-process fast path
            x = losses[0]
            if history is not None:
                history.extend(x)
            mask = self.policy.keep_mask(x, history, self.generator)
            return Decision([mask], [int(np.count_nonzero(mask))], [0])
        return self._decide_general(losses, False)

    def _decide_general(
        self,
        losses: Sequence[np.ndarray],
        probabilities: bool,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> Decision:
        history = self.history
        finite = [np.isfinite(x) for x in losses]
        clean = [bool(f.all()) for f in finite]
        if self.needs_ids and ids is None:
            raise ValueError(
                f"{self.guard!r} needs each sample's id; pass ids= (the SiftingDataLoader reads "
                "them at the policy's `id_key`)."
            )
        if self.needs_labels and labels is None:
            raise ValueError(
                f"{self.guard!r} needs each sample's label; pass labels= (the SiftingDataLoader "
                "reads them at the policy's `label_key`)."
            )
        if history is not None:
            if all(clean):
                history.extend(losses[0] if len(losses) == 1 else np.concatenate(losses))
            else:
                history.extend(np.concatenate([x[f] for x, f in zip(losses, finite, strict=True)]))
        keep_all = self.auto is not None and self.auto.kind() == MEASURE
        # One beta for the whole round (every rank), then one feedback step on what it kept.
        beta = self.keep_rate.beta if self.keep_rate is not None else None
        masks, kept, bad, probs = [], [], [], []
        policy_kept = policy_decided = 0
        for r, (x, fin, ok) in enumerate(zip(losses, finite, clean, strict=True)):
            mask = np.full(x.size, self.nonfinite == "keep", dtype=bool)
            p_fin: np.ndarray | None = None
            sub: Any = slice(None) if ok else fin
            if ok or fin.any():
                xf = x if ok else x[fin]
                if keep_all:
                    mask_f = np.ones(xf.size, dtype=bool)
                    p_fin = mask_f.astype(np.float64) if probabilities else None
                else:
                    mask_f = self._mask(xf, beta)
                    if probabilities:
                        p_fin = self._base_probabilities(xf, mask_f, beta)
                    if self.guard is not None:
                        mask_f, p_fin = self._guard(r, mask_f, xf, p_fin, sub, ids, labels)
                    policy_kept += int(np.count_nonzero(mask_f))
                    policy_decided += xf.size
                    if self.streaks is not None and ids is not None:
                        self.streaks.update(np.asarray(ids[r])[sub], mask_f)
                if ok:
                    mask = mask_f
                else:
                    mask[fin] = mask_f
            masks.append(mask)
            kept.append(int(np.count_nonzero(mask)))
            bad.append(0 if ok else int(x.size - np.count_nonzero(fin)))
            if probabilities:
                out = mask.astype(np.float64)  # non-finite losses: 1 or 0
                if p_fin is not None:
                    out[sub] = p_fin
                probs.append(out)
        if self.keep_rate is not None and not keep_all:
            self.keep_rate.update(policy_kept, policy_decided)
        return Decision(masks, kept, bad, probs if probabilities else None)

    def _guard(
        self,
        rank: int,
        mask: np.ndarray,
        losses: np.ndarray,
        probs: np.ndarray | None,
        sub: Any,
        ids: Sequence[np.ndarray] | None,
        labels: Sequence[np.ndarray] | None,
    ) -> tuple[np.ndarray, np.ndarray | None]:
        guard = self.guard
        if guard is None:  # pragma: no cover - called only with a guard
            return mask, probs
        streaks = None
        if self.streaks is not None and ids is not None:
            streaks = self.streaks.get(np.asarray(ids[rank])[sub])
        rank_labels = np.asarray(labels[rank])[sub] if labels is not None else None
        out, excluded = guard.guard(mask, losses, self.history, streaks, rank_labels)
        if probs is not None:
            probs = np.where(excluded & ~out, 0.0, probs)
            probs = np.where(out & ~mask, 1.0, probs)  # added back by the class floor
        return out, probs

    def _mask(self, x: np.ndarray, beta: float | None) -> np.ndarray:
        if self._adaptive is not None:
            return self._adaptive.keep_mask(x, self.history, self.generator, beta=beta)
        return self.base.keep_mask(x, self.history, self.generator)

    def _base_probabilities(
        self, x: np.ndarray, mask: np.ndarray, beta: float | None
    ) -> np.ndarray:
        p: np.ndarray | None
        if self._adaptive is not None:
            p = self._adaptive.keep_probabilities(x, self.history, beta=beta)
        else:
            p = self.base.keep_probabilities(x, self.history)
        return mask.astype(np.float64) if p is None else p

    def quantiles(self) -> dict[str, float]:
        """The 10th, 50th and 90th percentiles of the loss history (empty without one)."""
        h = self.history
        if h is None or len(h) == 0:
            return {}
        return {"p10": h.quantile(0.1), "p50": h.quantile(0.5), "p90": h.quantile(0.9)}

    def state_dict(self) -> dict[str, Any]:
        """The policy's description, the generator state, the history and, for a stated keep
        rate, a guard's streaks and ``Auto``, their state (tensors and plain values)."""
        state: dict[str, Any] = {
            "policy": self.policy.describe(),
            "generator": self.generator.get_state(),
            "history": self.history.state_dict() if self.history is not None else None,
        }
        if self.keep_rate is not None:
            state["keep_rate"] = self.keep_rate.state_dict()
        if self.streaks is not None:
            state["streaks"] = self.streaks.state_dict()
        if self.auto is not None:
            state["auto"] = self.auto.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output.

        Raises:
            ValueError: if the state was saved with another policy (compared by type and field
                values, so ``beta=1`` and ``beta=1.0`` match).
        """
        saved = state["policy"]
        if not self.policy.matches(saved):
            raise ValueError(
                f"The state was saved with policy {Policy.format_description(saved)} but this "
                f"loader uses {self.policy!r}; build the loader with the same policy to resume."
            )
        self.generator.set_state(state["generator"])
        if self.history is not None:
            self.history = self.policy.make_history()
            if state["history"] is not None:
                self.history.load_state_dict(state["history"])  # type: ignore[union-attr]
        if self.keep_rate is not None:
            # A state saved before the adaptation was kept restarts it from the initial beta.
            self.keep_rate = KeepRate(self.keep_rate.target, self.keep_rate.horizon)
            if state.get("keep_rate") is not None:
                self.keep_rate.load_state_dict(state["keep_rate"])
        if self.streaks is not None:
            self.streaks = StreakTable()
            if state.get("streaks") is not None:
                self.streaks.load_state_dict(state["streaks"])
        if self.auto is not None:
            self.auto = AutoController(self.auto.auto)
            if state.get("auto") is not None:
                self.auto.load_state_dict(state["auto"])
