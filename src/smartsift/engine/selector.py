"""The selector: a bound policy with its loss history, private generator and non-finite handling.

:meth:`Selector.decide` takes the losses of every rank's raw batch (one array per rank, in rank
order) and returns one keep mask per rank. Given the same inputs and state it returns the same
masks on every rank, which is what keeps DDP ranks in step; it needs no loader, so a sampler, a
trainer hook, the profiler or a benchmark can drive it.

Whatever a policy accumulates over a run (a stated keep rate, a guard's streaks, ``Auto``'s
controller) lives in the state the policy binds (:mod:`smartsift.policies.base`); the selector
holds that state, hands it the history and the generator, and saves it beside its own.

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
from smartsift.policies.base import Policy, PolicyState, load_states, save_states

__all__ = ["NONFINITE_MODES", "Decision", "Selector", "check_nonfinite"]

NONFINITE_MODES = ("raise", "drop", "keep")


def check_nonfinite(nonfinite: Any) -> None:
    """Raises ValueError unless ``nonfinite`` is one of :data:`NONFINITE_MODES`.

    Example:
        >>> check_nonfinite("ignore")
        Traceback (most recent call last):
        ...
        ValueError: Expected `nonfinite` to be one of ('raise', 'drop', 'keep'), got 'ignore'.
    """
    if nonfinite not in NONFINITE_MODES:
        raise ValueError(f"Expected `nonfinite` to be one of {NONFINITE_MODES}, got {nonfinite!r}.")


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
    """Decides which samples to keep: a bound policy + loss history + private generator.

    Args:
        policy: the selection policy; its bound state is :attr:`state`.
        nonfinite: what to do with NaN or infinite losses: ``"raise"`` (see :meth:`screen`),
            ``"drop"`` the samples, or ``"keep"`` them. They never enter the history.
        seed: seed of the private generator (the global random state is never used).
    """

    def __init__(self, policy: Policy, nonfinite: str = "raise", seed: int = 0) -> None:
        check_nonfinite(nonfinite)
        self.policy = policy
        self.nonfinite = nonfinite
        self.state: PolicyState = policy.bind()
        self.history: LossHistory | None = policy.make_history()
        self.generator = torch.Generator().manual_seed(int(seed))

    @property
    def needs_ids(self) -> bool:
        """Whether decisions need each sample's id (e.g. ``Guarded`` with ``max_streak``)."""
        return self.state.needs.ids

    @property
    def needs_labels(self) -> bool:
        """Whether decisions need each sample's label (e.g. ``Guarded`` with ``class_floor``)."""
        return self.state.needs.labels

    @property
    def beta(self) -> float | None:
        """The beta of the next decision under a beta-based rule (adapted for a stated keep)."""
        return self.state.beta

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

    def split_inputs(
        self, rows: Sequence[np.ndarray]
    ) -> tuple[list[np.ndarray] | None, list[np.ndarray] | None]:
        """Every rank's ids and labels from the rows of :meth:`PolicyState.sample_inputs`
        (ids first), as the state declares it needs them.

        Example:
            >>> import smartsift as ss
            >>> selector = Selector(ss.Guarded(ss.TopK(0.5), max_streak=1, id_key=0))
            >>> ids, labels = selector.split_inputs([np.array([[4.0, 5.0]])])
            >>> ids[0].tolist(), labels
            ([4, 5], None)
        """
        ints = [np.asarray(r).astype(np.int64) for r in rows]
        ids = [r[0] for r in ints] if self.needs_ids else None
        labels = [r[-1] for r in ints] if self.needs_labels else None
        return ids, labels

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
            ids: each rank's sample ids, for a policy that needs them.
            labels: each rank's sample labels, for a policy that needs them.
        """
        finite = [np.isfinite(x) for x in losses]
        clean = [bool(f.all()) for f in finite]
        history = self.history
        if history is not None:
            if all(clean):
                history.extend(losses[0] if len(losses) == 1 else np.concatenate(losses))
            else:
                history.extend(np.concatenate([x[f] for x, f in zip(losses, finite, strict=True)]))
        if all(clean):
            sub_losses, sub_ids, sub_labels = list(losses), ids, labels
        else:
            sub_losses = [x[f] for x, f in zip(losses, finite, strict=True)]
            sub_ids = _subset(ids, finite)
            sub_labels = _subset(labels, finite)
        proposals = self.state.decide(
            sub_losses, history, self.generator, probabilities, sub_ids, sub_labels
        )
        masks, kept, bad, probs = [], [], [], []
        for x, fin, ok, (mask_f, p_f) in zip(losses, finite, clean, proposals, strict=True):
            if ok:
                mask = mask_f
            else:
                mask = np.full(x.size, self.nonfinite == "keep", dtype=bool)
                mask[fin] = mask_f
            masks.append(mask)
            kept.append(int(np.count_nonzero(mask)))
            bad.append(0 if ok else int(x.size - np.count_nonzero(fin)))
            if probabilities:
                out = mask.astype(np.float64)  # non-finite losses: 1 or 0
                if p_f is not None:
                    out[fin] = p_f
                probs.append(out)
        return Decision(masks, kept, bad, probs if probabilities else None)

    def quantiles(self) -> dict[str, float]:
        """The 10th, 50th and 90th percentiles of the loss history (empty without one)."""
        h = self.history
        if h is None or len(h) == 0:
            return {}
        return {"p10": h.quantile(0.1), "p50": h.quantile(0.5), "p90": h.quantile(0.9)}

    def state_dict(self) -> dict[str, Any]:
        """The policy's description, the generator state, the history and the bound state's
        entries (tensors and plain values)."""
        return {
            "policy": self.policy.describe(),
            "generator": self.generator.get_state(),
            "history": self.history.state_dict() if self.history is not None else None,
            **save_states(self.state),
        }

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
        self.history = self.policy.make_history()
        if self.history is not None and state["history"] is not None:
            self.history.load_state_dict(state["history"])
        self.state = self.policy.bind()
        load_states(self.state, state)


def _subset(
    values: Sequence[np.ndarray] | None, finite: Sequence[np.ndarray]
) -> list[np.ndarray] | None:
    if values is None:
        return None
    return [np.asarray(v)[f] for v, f in zip(values, finite, strict=True)]
