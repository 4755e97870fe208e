"""The policy protocol: a frozen description that binds to a run and returns its state.

A :class:`Policy` is a value: validated fields, a description saved in checkpoints, and the
pure rule behind its masks. :meth:`Policy.bind` gives one run its :class:`PolicyState`, the
object that holds whatever the run accumulates (a stated keep rate's beta, a guard's streaks,
``Auto``'s controller), decides each round, declares what it :class:`Needs` from whatever
drives it, takes the round hooks it wants and nests its ``state_dict``. The
:class:`~smartsift.engine.selector.Selector`, both modes and the DDP code talk to this
protocol only: a new policy, however much state it keeps, is written in its own module.

A round, as a :class:`~smartsift.SiftingDataLoader` drives it (a
:class:`~smartsift.ReuseSampler` calls :meth:`PolicyState.decide` only):

1. :meth:`PolicyState.round_kind`: ``"sift"`` (score and decide), ``"measure"`` (score, keep
   everything) or ``"skip"`` (pass the raw batch through unscored);
2. :meth:`PolicyState.sample_inputs`: per-sample values the decision needs besides the losses
   (ids, labels), sent to every rank with them;
3. :meth:`PolicyState.round_scalars`: per-rank numbers for the state (the loader's timings);
4. :meth:`PolicyState.decide`: every rank's keep mask from every rank's losses (the same on
   every rank, for the same inputs and state);
5. :meth:`PolicyState.end_round`: what the round measured, with a :class:`RunContext` for
   collectives the state may run (a held-out metric).

Example:
    >>> import numpy as np, torch
    >>> from smartsift.policies.rules import TopK
    >>> state = TopK(keep=0.5).bind()
    >>> state.needs, state.round_kind()
    (Needs(ids=False, labels=False, scoring_pass=False, held_out=False), 'sift')
    >>> [m.tolist() for m, _ in state.decide([np.array([0.2, 0.9])], None, torch.Generator())]
    [[False, True]]
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Protocol

import numpy as np
import torch

from smartsift.engine.history import LossHistory

__all__ = [
    "MEASURE",
    "ROUND_KINDS",
    "SIFT",
    "SKIP",
    "Needs",
    "Policy",
    "PolicyState",
    "Proposal",
    "RoundReport",
    "RoundTimes",
    "RunContext",
    "load_states",
    "save_states",
]

SIFT, MEASURE, SKIP = "sift", "measure", "skip"
ROUND_KINDS = (SIFT, MEASURE, SKIP)
"""What a round does: decide on scored losses, score and keep everything, or pass through."""

Proposal = tuple[np.ndarray, "np.ndarray | None"]
"""One rank's keep mask and, when asked for, each sample's keep probability."""


@dataclass(frozen=True)
class Needs:
    """What a bound policy needs from whatever drives it.

    Attributes:
        ids: each sample's id, with its loss (from :meth:`PolicyState.sample_inputs`).
        labels: each sample's class label, with its loss.
        scoring_pass: rounds that the state plans itself (:meth:`PolicyState.round_kind`) and
            timings of the scoring pass: only a loader that runs one can drive it, not loss
            reuse.
        held_out: a held-out metric, called through :meth:`RunContext.held_out`.
    """

    ids: bool = False
    labels: bool = False
    scoring_pass: bool = False
    held_out: bool = False


@dataclass(frozen=True)
class RoundTimes:
    """What a loader measured on its rank since the previous round.

    Attributes:
        overhead_s: the scoring pass and the sifting machinery, in seconds.
        scored: samples scored.
        step_s: the user's training steps (between handing a batch over and the next request).
        trained: samples handed over for training.
        data_s: waiting for the raw batch.
        raw: samples in the raw batch.
    """

    overhead_s: float = 0.0
    scored: int = 0
    step_s: float = 0.0
    trained: int = 0
    data_s: float = 0.0
    raw: int = 0


@dataclass(frozen=True)
class RoundReport:
    """One round, as every rank saw it.

    Attributes:
        losses: every rank's scored losses, in rank order (empty arrays when unscored).
        kept: every rank's kept count in a decided round, else None.
        scalars: every rank's :meth:`PolicyState.round_scalars` (empty arrays without).
    """

    losses: Sequence[np.ndarray]
    kept: Sequence[int] | None
    scalars: Sequence[np.ndarray]


class RunContext(Protocol):
    """The collectives a driver offers a state's :meth:`PolicyState.end_round`."""

    def held_out(self, fn: Callable[[], Any], what: str) -> float:
        """``fn()`` on every rank at once (no grad, the model's mode restored), as a number
        averaged over ranks; a failure on any rank raises on every rank (``what`` names the
        call in the error)."""
        ...


class PolicyState:
    """A policy bound to one run: what it accumulates, decides with and saves.

    The default state serves any stateless policy: each rank's mask is the policy's
    :meth:`~Policy.keep_mask` of its losses. Stateful policies subclass it and override the
    hooks they need; the :class:`~smartsift.engine.selector.Selector` holds the loss history and
    the private generator and hands both in.

    Attributes:
        policy: the policy this state belongs to.
        needs: what the state needs from its driver.
        name: how the driver's log names the state's messages.
    """

    needs = Needs()
    name = "policy"

    def __init__(self, policy: Policy) -> None:
        self.policy = policy

    @property
    def beta(self) -> float | None:
        """The beta of the next decision for a beta-based rule, else None."""
        return None

    # ------------------------------------------------------------------ the round hooks
    def round_kind(self) -> str:
        """What the next round does: one of :data:`ROUND_KINDS`.

        A pure read: the driver may ask more than once per round (and asks in the round that
        finds the data exhausted too). Move the plan forward in :meth:`end_round`.
        """
        return SIFT

    def sample_inputs(self, batch: Any, size: int) -> np.ndarray | None:
        """The per-sample values the decision needs besides losses, as float rows of shape
        ``(k, size)`` (ids first, then labels, as :attr:`needs` declares), or None."""
        return None

    def round_scalars(self, times: RoundTimes) -> np.ndarray | None:
        """Per-rank numbers to share with every rank this round, or None."""
        return None

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        """Every rank's keep mask (and keep probabilities, if asked for) of finite losses,
        without the round's feedback (:meth:`feedback`). The history already holds them."""
        out: list[Proposal] = []
        policy = self.policy
        for x in losses:
            if x.size == 0:  # draws nothing: the random stream does not depend on empty ranks
                out.append((np.zeros(0, dtype=bool), np.zeros(0) if probabilities else None))
                continue
            mask = policy.keep_mask(x, history, generator)
            probs = None
            if probabilities:
                p = policy.keep_probabilities(x, history)
                probs = mask.astype(np.float64) if p is None else p
            out.append((mask, probs))
        return out

    def feedback(self, kept: int, decided: int) -> None:
        """What the round's decision kept, over all ranks (a stated keep rate adapts to it)."""

    def decide(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        """:meth:`propose`, then :meth:`feedback` on what it kept."""
        out = self.propose(losses, history, generator, probabilities, ids, labels)
        self.feedback(sum(int(np.count_nonzero(m)) for m, _ in out), sum(x.size for x in losses))
        return out

    def end_round(self, report: RoundReport, context: RunContext) -> str | None:
        """Takes what a round measured; returns a message for the log when the state changed."""
        return None

    def status(self) -> tuple[str, str] | None:
        """The state's current mode and the reason for it, for ``stats``; None if it has none."""
        return None

    def judge_epoch(
        self, epoch: int, losses: np.ndarray, context: RunContext | None
    ) -> tuple[bool, str]:
        """Loss reuse: whether to sift ``epoch`` (False: every candidate is trained), and why.

        A :class:`~smartsift.ReuseSampler` asks once per epoch, on every rank, before it
        decides. ``losses`` are the finite recorded losses of the epoch's decidable candidates
        (the same on every rank); ``context`` runs a held-out metric averaged over ranks, or is
        None in a single process. The default sifts every epoch, with no reason.
        """
        return True, ""

    # ------------------------------------------------------------------ checkpointing
    key: str | None = None
    """The entry of the selector's ``state_dict`` that holds :meth:`state_dict`; None for a
    state that saves nothing."""

    def inner_states(self) -> tuple[PolicyState, ...]:
        """The states of the policies this one wraps (saved and restored with it)."""
        return ()

    def chain(self) -> list[PolicyState]:
        """This state and every state it wraps, outermost first."""
        out: list[PolicyState] = [self]
        for inner in self.inner_states():
            out.extend(inner.chain())
        return out

    def state_dict(self) -> dict[str, Any]:
        """This state's own fields, as tensors and plain values (saved under :attr:`key`)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output into a freshly bound state."""


def save_states(state: PolicyState) -> dict[str, Any]:
    """The entries of a bound state and the states it wraps, by :attr:`PolicyState.key`.

    Example:
        >>> from smartsift.policies.rules import RelativeProbabilistic
        >>> list(save_states(RelativeProbabilistic(keep=0.3).bind()))
        ['keep_rate']
    """
    return {s.key: s.state_dict() for s in state.chain() if s.key is not None}


def load_states(state: PolicyState, saved: dict[str, Any]) -> None:
    """Restores :func:`save_states`'s entries into a freshly bound ``state``; a state whose
    entry is absent (saved before it existed) keeps its fresh start."""
    for s in state.chain():
        if s.key is not None and saved.get(s.key) is not None:
            s.load_state_dict(saved[s.key])


class Policy(ABC):
    """Decides which samples of a raw batch to keep.

    Subclasses are frozen dataclasses. ``history`` is the length of the loss history the policy
    ranks against, or 0 for policies that look at one batch only.
    """

    history: int = 0

    @property
    @abstractmethod
    def expected_keep(self) -> float:
        """The fraction of samples the policy keeps on stationary losses."""

    @abstractmethod
    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        """Returns a boolean keep mask for ``losses``.

        ``history`` already holds ``losses``; ``generator`` is the loader's private generator.
        """

    def keep_probabilities(
        self, losses: np.ndarray, history: LossHistory | None
    ) -> np.ndarray | None:
        """Each sample's probability of being kept, or None for a deterministic policy.

        Used to weight kept samples by ``1 / p`` (unbiased rescaling); a deterministic policy
        keeps a sample with probability 1 or 0, so its kept samples weigh 1.
        """
        return None

    outermost: bool = False
    """Whether the policy must wrap all others (``Auto``): no policy may wrap it."""

    def bind(self) -> PolicyState:
        """A fresh state of this policy for one run (see :class:`PolicyState`).

        Example:
            >>> from smartsift.policies.rules import Uniform
            >>> type(Uniform(0.5).bind()).__name__
            'PolicyState'
        """
        return PolicyState(self)

    def make_history(self) -> LossHistory | None:
        """Returns an empty loss history of the policy's length, or None if it needs none."""
        return LossHistory(self.history) if self.history > 0 else None

    def describe(self) -> dict[str, Any]:
        """The policy's type and set field values, as plain values (saved in checkpoints).

        Example:
            >>> from smartsift.policies import rules
            >>> rules.RelativeProbabilistic(beta=1).describe()
            {'type': 'RelativeProbabilistic', 'fields': {'beta': 1, 'history': 500}}
        """
        values = {f.name: getattr(self, f.name) for f in fields(self)}  # type: ignore[arg-type]
        # Fields left unset (None) are omitted, so that states saved before a field existed match.
        return {
            "type": type(self).__name__,
            "fields": {k: v for k, v in values.items() if v is not None},
        }

    def matches(self, description: dict[str, Any]) -> bool:
        """Whether :meth:`describe` of this policy equals ``description`` by value.

        Example:
            >>> from smartsift.policies.rules import RelativeProbabilistic as RP
            >>> RP(beta=1.0).matches(RP(beta=1).describe())
            True
        """
        mine = self.describe()
        return mine["type"] == description.get("type") and mine["fields"] == dict(
            description.get("fields", {})
        )

    @staticmethod
    def format_description(description: dict[str, Any]) -> str:
        """Formats :meth:`describe`'s output like a policy's repr.

        A wrapped policy's description (the field ``policy`` of a wrapper) is formatted in
        place, first.

        Example:
            >>> from smartsift.policies.rules import TopK
            >>> Policy.format_description(TopK(keep=0.5).describe())
            'TopK(keep=0.5)'
        """
        args = []
        for k, v in dict(description.get("fields", {})).items():
            if k == "policy" and isinstance(v, dict) and "type" in v:
                args.append(Policy.format_description(v))
            else:
                args.append(f"{k}={v!r}")
        return f"{description.get('type')}({', '.join(args)})"
