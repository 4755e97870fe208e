"""The selector: a policy with its loss history, private generator and non-finite handling.

:meth:`Selector.decide` takes the losses of every rank's raw batch (one array per rank, in rank
order) and returns one keep mask per rank. Given the same inputs and state it returns the same
masks on every rank, which is what keeps DDP ranks in step; it needs no loader, so a sampler, a
trainer hook, the profiler or a benchmark can drive it.

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

from smartsift.history import LossHistory
from smartsift.policies import Policy

__all__ = ["NONFINITE_MODES", "Decision", "Selector"]

NONFINITE_MODES = ("raise", "drop", "keep")


@dataclass(frozen=True)
class Decision:
    """The keep masks of one round, one per rank, and what they hold.

    Attributes:
        masks: a boolean keep mask per rank, in rank order.
        kept: the number of kept samples per rank.
        nonfinite: the number of non-finite losses per rank.
    """

    masks: list[np.ndarray]
    kept: list[int]
    nonfinite: list[int]


class Selector:
    """Decides which samples to keep: policy + loss history + private generator.

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
        self.history: LossHistory | None = policy.make_history()
        self.generator = torch.Generator().manual_seed(int(seed))

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

    def decide(self, losses: Sequence[np.ndarray]) -> Decision:
        """Adds every rank's finite losses to the history, then returns every rank's keep mask.

        Args:
            losses: one float array of per-sample losses per rank, in rank order (a rank with
                no raw batch this round gives an empty array).
        """
        history = self.history
        if len(losses) == 1 and np.isfinite(losses[0]).all():  # the single-process fast path
            x = losses[0]
            if history is not None:
                history.extend(x)
            mask = self.policy.keep_mask(x, history, self.generator)
            return Decision([mask], [int(np.count_nonzero(mask))], [0])
        finite = [np.isfinite(x) for x in losses]
        clean = [bool(f.all()) for f in finite]
        if history is not None:
            if all(clean):
                history.extend(losses[0] if len(losses) == 1 else np.concatenate(losses))
            else:
                history.extend(np.concatenate([x[f] for x, f in zip(losses, finite, strict=True)]))
        masks, kept, bad = [], [], []
        for x, fin, ok in zip(losses, finite, clean, strict=True):
            if ok:
                mask = self.policy.keep_mask(x, history, self.generator)
                bad.append(0)
            else:
                mask = np.full(x.size, self.nonfinite == "keep", dtype=bool)
                if fin.any():
                    mask[fin] = self.policy.keep_mask(x[fin], history, self.generator)
                bad.append(int(x.size - np.count_nonzero(fin)))
            masks.append(mask)
            kept.append(int(np.count_nonzero(mask)))
        return Decision(masks, kept, bad)

    def quantiles(self) -> dict[str, float]:
        """The 10th, 50th and 90th percentiles of the loss history (empty without one)."""
        h = self.history
        if h is None or len(h) == 0:
            return {}
        return {"p10": h.quantile(0.1), "p50": h.quantile(0.5), "p90": h.quantile(0.9)}

    def state_dict(self) -> dict[str, Any]:
        """The policy's description, the generator state and the history (tensors and plain
        values)."""
        return {
            "policy": self.policy.describe(),
            "generator": self.generator.get_state(),
            "history": self.history.state_dict() if self.history is not None else None,
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
        if self.history is not None:
            self.history = self.policy.make_history()
            if state["history"] is not None:
                self.history.load_state_dict(state["history"])  # type: ignore[union-attr]
