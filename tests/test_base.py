"""Tests of ``smartsift.policies.base``: the policy protocol and the state a policy binds."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.engine.history import LossHistory
from smartsift.engine.selector import Selector
from smartsift.policies.base import (
    ROUND_KINDS,
    SIFT,
    SKIP,
    Needs,
    Policy,
    PolicyState,
    Proposal,
    RoundReport,
    RoundTimes,
    RunContext,
    load_states,
    save_states,
)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


STATELESS = [
    ss.TopK(keep=0.3),
    ss.Uniform(keep=0.6),
    ss.QuantileThreshold(exclude=0.4, history=64),
    ss.RelativeProbabilistic(beta=2.0, history=64),
]


# ---------------------------------------------------------------- the default state
@pytest.mark.parametrize("policy", STATELESS, ids=repr)
def test_the_default_state_decides_each_rank_with_the_policys_mask(policy: Policy) -> None:
    rng = np.random.default_rng(0)
    losses = [rng.exponential(size=n) for n in (7, 5, 9)]
    history = policy.make_history()
    if history is not None:
        history.extend(np.concatenate(losses))
    state = PolicyState(policy)
    proposals = state.decide(losses, history, torch.Generator().manual_seed(4))
    same = torch.Generator().manual_seed(4)
    expected = [policy.keep_mask(x, history, same) for x in losses]
    assert [m.tolist() for m, _ in proposals] == [m.tolist() for m in expected]
    assert all(p is None for _, p in proposals)


@pytest.mark.parametrize("policy", STATELESS, ids=repr)
def test_a_rank_without_losses_draws_nothing_from_the_generator(policy: Policy) -> None:
    x = np.array([0.5, 2.0, 1.0, 3.0])
    history = policy.make_history()
    if history is not None:
        history.extend(x)
    with_empty = PolicyState(policy).decide(
        [np.empty(0), x], history, torch.Generator().manual_seed(9)
    )
    alone = PolicyState(policy).decide([x], history, torch.Generator().manual_seed(9))
    assert with_empty[0][0].shape == (0,)
    assert with_empty[1][0].tolist() == alone[0][0].tolist()


def test_probabilities_are_the_policys_or_the_deterministic_mask() -> None:
    x = np.array([0.1, 0.9, 0.5, 0.7])
    ((mask, probs),) = PolicyState(ss.Uniform(0.25)).decide(
        [x], None, torch.Generator(), probabilities=True
    )
    assert probs is not None and probs.tolist() == [0.25] * 4
    ((mask, probs),) = PolicyState(ss.TopK(0.5)).decide(
        [x], None, torch.Generator(), probabilities=True
    )
    assert probs is not None and probs.tolist() == [0.0, 1.0, 0.0, 1.0] == mask.tolist()


def test_decide_feeds_back_what_the_round_kept_over_all_ranks() -> None:
    class Recording(PolicyState):
        def __init__(self, policy: Policy) -> None:
            super().__init__(policy)
            self.feedback_calls: list[tuple[int, int]] = []

        def feedback(self, kept: int, decided: int) -> None:
            self.feedback_calls.append((kept, decided))

    state = Recording(ss.TopK(0.5))
    state.decide([np.arange(4.0), np.arange(3.0), np.empty(0)], None, torch.Generator())
    assert state.feedback_calls == [(2 + 2, 4 + 3 + 0)]


def test_the_default_state_sifts_every_round_needs_nothing_and_saves_nothing() -> None:
    state = ss.TopK(0.5).bind()
    assert type(state) is PolicyState
    assert state.policy == ss.TopK(0.5)
    assert state.needs == Needs(ids=False, labels=False, scoring_pass=False, held_out=False)
    assert state.round_kind() == SIFT
    assert state.beta is None
    assert state.sample_inputs({"x": torch.zeros(2)}, 2) is None
    assert state.round_scalars(RoundTimes()) is None
    assert state.end_round(RoundReport([np.zeros(2)], [1], [np.zeros(0)]), _NoContext()) is None
    assert state.status() is None
    assert state.key is None
    assert state.chain() == [state]
    assert state.state_dict() == {}
    assert save_states(state) == {}


def test_round_kinds_and_needs_are_plain_frozen_values() -> None:
    assert ROUND_KINDS == ("sift", "measure", "skip")
    assert Needs(ids=True) == Needs(True, False, False, False)
    with pytest.raises(dataclasses.FrozenInstanceError):
        Needs().ids = True  # type: ignore[misc]


class _NoContext:
    def held_out(self, fn: Any, what: str) -> float:
        raise AssertionError("not called")


# ---------------------------------------------------------------- describing a policy
def test_describe_leaves_out_unset_fields_and_matches_by_value() -> None:
    policy = ss.RelativeProbabilistic(keep=0.3, history=100)
    assert policy.describe() == {
        "type": "RelativeProbabilistic",
        "fields": {"history": 100, "keep": 0.3},
    }
    assert ss.RelativeProbabilistic(beta=1).matches(ss.RelativeProbabilistic(beta=1.0).describe())
    assert not ss.TopK(0.5).matches(ss.Uniform(0.5).describe())
    assert not ss.TopK(0.5).matches(ss.TopK(0.4).describe())
    assert not ss.TopK(0.5).matches({"fields": {"keep": 0.5}})


def test_a_wrapped_policys_description_is_formatted_in_place() -> None:
    guarded = ss.Guarded(ss.TopK(keep=0.5), max_streak=2, id_key=0)
    text = Policy.format_description(guarded.describe())
    assert text.startswith("Guarded(TopK(keep=0.5), ")
    assert "max_streak=2" in text
    assert Policy.format_description({"type": "X", "fields": {}}) == "X()"


# ---------------------------------------------------------------- nested states
class _Counter(PolicyState):
    """A state that counts the samples it decided on, saved under ``key``."""

    def __init__(self, policy: Policy, key: str, inner: PolicyState | None = None) -> None:
        super().__init__(policy)
        self.key = key
        self.inner = inner
        self.decided = 0

    def inner_states(self) -> tuple[PolicyState, ...]:
        return (self.inner,) if self.inner is not None else ()

    def feedback(self, kept: int, decided: int) -> None:
        self.decided += decided

    def state_dict(self) -> dict[str, Any]:
        return {"decided": self.decided}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decided = int(state["decided"])


def _nested() -> tuple[_Counter, _Counter, PolicyState, _Counter]:
    leaf = _Counter(ss.TopK(0.5), "leaf")
    silent = PolicyState(ss.TopK(0.5))  # saves nothing: no key
    silent.inner_states = lambda: (leaf,)  # type: ignore[method-assign]
    middle = _Counter(ss.TopK(0.5), "middle", silent)
    outer = _Counter(ss.TopK(0.5), "outer", middle)
    return outer, middle, silent, leaf


def test_chain_lists_a_state_and_every_state_it_wraps_outermost_first() -> None:
    outer, middle, silent, leaf = _nested()
    assert outer.chain() == [outer, middle, silent, leaf]


def test_save_and_load_states_restore_every_keyed_state_of_the_chain() -> None:
    outer, middle, _, leaf = _nested()
    outer.decided, middle.decided, leaf.decided = 3, 5, 7
    saved = _roundtrip(save_states(outer))
    assert saved == {"outer": {"decided": 3}, "middle": {"decided": 5}, "leaf": {"decided": 7}}
    fresh_outer, fresh_middle, _, fresh_leaf = _nested()
    load_states(fresh_outer, saved)
    assert (fresh_outer.decided, fresh_middle.decided, fresh_leaf.decided) == (3, 5, 7)


def test_a_state_saved_before_its_entry_existed_keeps_its_fresh_start() -> None:
    outer, middle, _, leaf = _nested()
    load_states(outer, {"outer": {"decided": 2}, "middle": None})
    assert (outer.decided, middle.decided, leaf.decided) == (2, 0, 0)


# ---------------------------------------------------------------- a policy of one's own
@dataclass(frozen=True)
class EveryNth(Policy):
    """Keeps every ``n``-th sample of the whole run, counting across raw batches and ranks,
    and passes every ``skip``-th round through unscored (0: none)."""

    n: int = 3
    skip: int = 0

    @property
    def expected_keep(self) -> float:
        return 1.0 / self.n

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        return np.arange(losses.size) % self.n == 0  # without state: restarts every batch

    def bind(self) -> PolicyState:
        return EveryNthState(self)


class EveryNthState(PolicyState):
    """The count of samples decided so far, and of the rounds the loader reported."""

    key = "every_nth"
    name = "every-nth"

    def __init__(self, policy: EveryNth) -> None:
        super().__init__(policy)
        self.n, self.skip = policy.n, policy.skip
        self.decided = 0
        self.rounds = 0
        self.skipped = 0
        self.reported_losses = 0

    def round_kind(self) -> str:  # a query: the plan advances in end_round
        return SKIP if self.skip and (self.rounds + 1) % self.skip == 0 else SIFT

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        out: list[Proposal] = []
        start = self.decided
        for x in losses:
            mask = (start + np.arange(x.size)) % self.n == 0
            start += x.size
            out.append((mask, mask.astype(np.float64) if probabilities else None))
        return out

    def feedback(self, kept: int, decided: int) -> None:
        self.decided += decided

    def end_round(self, report: RoundReport, context: RunContext) -> str | None:
        self.rounds += 1
        self.skipped += report.kept is None
        self.reported_losses += sum(x.size for x in report.losses)
        return None

    def state_dict(self) -> dict[str, Any]:
        return {
            "decided": self.decided,
            "rounds": self.rounds,
            "skipped": self.skipped,
            "reported": self.reported_losses,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decided = int(state["decided"])
        self.rounds = int(state["rounds"])
        self.skipped = int(state["skipped"])
        self.reported_losses = int(state["reported"])


def test_a_policy_of_ones_own_decides_through_the_selector_with_its_state() -> None:
    selector = Selector(EveryNth(n=3), seed=0)
    first = selector.decide([np.zeros(4)])
    assert first.masks[0].tolist() == [True, False, False, True]  # samples 0..3 of the run
    second = selector.decide([np.zeros(2), np.zeros(3)])  # samples 4, 5 | 6, 7, 8
    assert [m.tolist() for m in second.masks] == [[False, False], [True, False, False]]
    assert second.kept == [0, 1]
    # The selector drives decisions only; rounds are the loader's.
    assert selector.state_dict()["every_nth"] == {
        "decided": 9,
        "rounds": 0,
        "skipped": 0,
        "reported": 0,
    }


def test_a_policy_of_ones_own_is_saved_and_restored_by_the_selector() -> None:
    selector = Selector(EveryNth(n=4), seed=0)
    selector.decide([np.zeros(5)])
    state = _roundtrip(selector.state_dict())
    assert state["policy"] == {"type": "EveryNth", "fields": {"n": 4, "skip": 0}}
    restored = Selector(EveryNth(n=4), seed=0)
    restored.load_state_dict(state)
    assert restored.decide([np.zeros(4)]).masks[0].tolist() == [False, False, False, True]
    with pytest.raises(ValueError, match=r"EveryNth\(n=4, skip=0\).*EveryNth\(n=5, skip=0\)"):
        Selector(EveryNth(n=5)).load_state_dict(state)


def _loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    _, x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def _sifting(policy: Policy, **kwargs: Any) -> ss.SiftingDataLoader:
    data = ss.IndexedDataset(TensorDataset(torch.randn(20, 3), torch.arange(20) % 2))
    return ss.SiftingDataLoader(
        DataLoader(data, batch_size=5), torch.nn.Linear(3, 2), _loss_fn, policy, seed=0, **kwargs
    )


def test_a_policy_of_ones_own_runs_in_a_sifting_loader_untouched() -> None:
    loader = _sifting(EveryNth(n=3))
    batches = [ids.tolist() for ids, _, _ in loader]
    assert batches == [[0, 3, 6, 9, 12], [15, 18]]
    state = loader.state_dict()["selector"]["every_nth"]
    # 20 samples decided in 4 rounds, every round's losses reported to the state.
    assert state == {"decided": 20, "rounds": 4, "skipped": 0, "reported": 20}
    assert loader.stats.samples_kept == 7
    assert loader.stats.samples_sifted == 13


def test_a_policy_of_ones_own_plans_its_rounds_in_a_sifting_loader() -> None:
    loader = _sifting(EveryNth(n=3, skip=2), batch_size=5)
    batches = [ids.tolist() for ids, _, _ in loader]
    # Rounds 2 and 4 (ids 5..9, 15..19) pass through unscored; rounds 1 and 3 decide on
    # samples 0..4 and 10..14 as the run's samples 0..4 and 5..9: keeping 0, 3 | 11, 14.
    trained = sorted(i for b in batches for i in b)
    assert trained == [0, 3, 5, 6, 7, 8, 9, 11, 14, 15, 16, 17, 18, 19]
    assert loader.stats.samples_passed == 10
    # Every round is reported, the skipped ones without kept counts and unscored.
    assert loader.state_dict()["selector"]["every_nth"] == {
        "decided": 10,
        "rounds": 4,
        "skipped": 2,
        "reported": 10,
    }


def test_a_policy_of_ones_own_resumes_in_a_new_sifting_loader() -> None:
    straight = _sifting(EveryNth(n=3))
    epochs = [[ids.tolist() for ids, _, _ in straight] for _ in range(2)]
    first = _sifting(EveryNth(n=3))
    assert [ids.tolist() for ids, _, _ in first] == epochs[0]
    state = _roundtrip(first.state_dict())
    second = _sifting(EveryNth(n=3))
    second.load_state_dict(state)
    assert [ids.tolist() for ids, _, _ in second] == epochs[1]
    # The run's samples 20..39 are this epoch's 0..19: every third of the run is 1, 4, 7, ...
    assert epochs[1] == [[1, 4, 7, 10, 13], [16, 19]]


@dataclass(frozen=True)
class EvenIds(Policy):
    """Keeps the samples whose id is even: a policy that needs each sample's id."""

    @property
    def expected_keep(self) -> float:
        return 0.5

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        raise AssertionError("the bound state decides")

    def bind(self) -> PolicyState:
        return EvenIdsState(self)


class EvenIdsState(PolicyState):
    needs = Needs(ids=True)

    def sample_inputs(self, batch: Any, size: int) -> np.ndarray | None:
        return batch[0].numpy().astype(np.float64).reshape(1, size)  # ids: IndexedDataset's

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        assert ids is not None and labels is None
        return [(i % 2 == 0, None) for i in ids]


def test_a_policy_of_ones_own_gets_the_sample_inputs_it_declares_it_needs() -> None:
    loader = _sifting(EvenIds(), batch_size=4)
    batches = [ids.tolist() for ids, _, _ in loader]
    assert batches == [[0, 2, 4, 6], [8, 10, 12, 14], [16, 18]]
