"""The selector: identical decisions on every rank, non-finite losses, history, save and load."""

from __future__ import annotations

import numpy as np
import pytest
from _resume import roundtrip

import smartsift as ss
from smartsift.selector import Selector

POLICIES = [
    ss.RelativeProbabilistic(beta=1.0, history=32),
    ss.QuantileThreshold(exclude=0.4, history=32),
    ss.TopK(keep=0.5),
    ss.Uniform(keep=0.6),
]
_IDS = [type(p).__name__ for p in POLICIES]


def _rounds(n: int, world: int, seed: int = 0, size: int = 8) -> list[list[np.ndarray]]:
    """``n`` rounds of per-rank losses; rank sizes vary and one rank may have no batch."""
    rng = np.random.default_rng(seed)
    return [
        [rng.exponential(size=int(rng.integers(0, size + 1))) for _ in range(world)]
        for _ in range(n)
    ]


def _masks(selector: Selector, rounds: list[list[np.ndarray]]) -> list[list[list[bool]]]:
    return [[m.tolist() for m in selector.decide(r).masks] for r in rounds]


@pytest.mark.parametrize("policy", POLICIES, ids=_IDS)
def test_every_rank_decides_the_same_masks_from_the_same_losses(policy: ss.Policy) -> None:
    # Each simulated rank holds its own selector (same seed) and sees every rank's losses.
    rounds = _rounds(12, world=3)
    ranks = [Selector(policy, seed=11) for _ in range(3)]
    decisions = [[s.decide(r) for r in rounds] for s in ranks]
    for mine, other in zip(decisions[0], decisions[1], strict=True):
        assert [m.tolist() for m in mine.masks] == [m.tolist() for m in other.masks]
        assert mine.kept == [int(m.sum()) for m in mine.masks]
    assert _masks(Selector(policy, seed=11), rounds) == [
        [m.tolist() for m in d.masks] for d in decisions[2]
    ]
    for decision, r in zip(decisions[0], rounds, strict=True):
        assert [m.size for m in decision.masks] == [x.size for x in r]
        assert decision.nonfinite == [0, 0, 0]


def test_a_different_seed_draws_different_random_masks() -> None:
    rounds = _rounds(10, world=2, size=16)
    policy = ss.Uniform(keep=0.5)
    assert _masks(Selector(policy, seed=1), rounds) != _masks(Selector(policy, seed=2), rounds)
    selector = Selector(policy, seed=1)
    first = _masks(selector, rounds)
    selector.reseed(1)
    assert _masks(selector, rounds) == first


def test_the_history_receives_every_ranks_finite_losses_in_rank_order() -> None:
    selector = Selector(ss.RelativeProbabilistic(beta=1.0, history=1000), nonfinite="drop")
    rounds = _rounds(4, world=3)
    rounds[1][2] = np.array([0.5, np.nan, 2.0, np.inf, -np.inf])
    for r in rounds:
        selector.decide(r)
    expected = np.concatenate([x[np.isfinite(x)] for r in rounds for x in r])
    assert selector.history is not None
    np.testing.assert_array_equal(selector.history.values(), expected)
    q = selector.quantiles()
    assert set(q) == {"p10", "p50", "p90"} and q["p10"] <= q["p50"] <= q["p90"]


def test_a_policy_without_history_keeps_none_and_reports_no_quantiles() -> None:
    selector = Selector(ss.TopK(keep=0.5))
    selector.decide([np.array([3.0, 1.0, 2.0, 0.0])])
    assert selector.history is None and selector.quantiles() == {}
    assert selector.state_dict()["history"] is None


def test_nonfinite_raise_screens_before_any_decision() -> None:
    selector = Selector(ss.RelativeProbabilistic(history=16), nonfinite="raise")
    selector.screen(np.array([0.1, 0.2]))
    with pytest.raises(ValueError, match=r"2 non-finite loss\(es\).*out of 3.*nonfinite='drop'"):
        selector.screen(np.array([np.nan, 0.2, np.inf]))
    for mode in ("drop", "keep"):
        Selector(ss.TopK(0.5), nonfinite=mode).screen(np.array([np.nan]))  # no error


@pytest.mark.parametrize("mode", ["drop", "keep"])
@pytest.mark.parametrize("policy", POLICIES, ids=_IDS)
def test_nonfinite_losses_are_dropped_or_kept_counted_per_rank_never_in_history(
    mode: str, policy: ss.Policy
) -> None:
    selector = Selector(policy, nonfinite=mode, seed=0)
    losses = [
        np.array([0.3, np.nan, 0.9, 0.1]),
        np.array([np.inf, -np.inf]),  # nothing finite on this rank
        np.array([0.2, 0.4]),
    ]
    decision = selector.decide(losses)
    assert decision.nonfinite == [1, 2, 0]
    for x, mask, kept in zip(losses, decision.masks, decision.kept, strict=True):
        assert mask.dtype == bool and mask.size == x.size and kept == int(mask.sum())
        assert (mask[~np.isfinite(x)] == (mode == "keep")).all()
    if selector.history is not None:
        assert np.isfinite(selector.history.values()).all()
        assert len(selector.history) == 5


def test_nonfinite_losses_do_not_change_the_decisions_on_the_finite_ones() -> None:
    # TopK decides among the finite losses only, as if the others were not there.
    selector = Selector(ss.TopK(keep=0.5), nonfinite="drop")
    mask = selector.decide([np.array([0.3, np.nan, 0.9, 0.1, 0.5])]).masks[0]
    assert mask.tolist() == [False, False, True, False, True]


def test_an_unknown_nonfinite_mode_is_refused() -> None:
    with pytest.raises(ValueError, match=r"`nonfinite`.*'ignore'"):
        Selector(ss.TopK(0.5), nonfinite="ignore")


@pytest.mark.parametrize("policy", POLICIES, ids=_IDS)
def test_a_saved_selector_continues_with_identical_decisions(policy: ss.Policy) -> None:
    rounds = _rounds(16, world=2, seed=3)
    uninterrupted = Selector(policy, seed=5)
    expected = _masks(uninterrupted, rounds)
    first = Selector(policy, seed=5)
    _masks(first, rounds[:7])
    state = roundtrip(first.state_dict())  # torch.load(weights_only=True)
    resumed = Selector(policy, seed=99)  # the generator comes from the state, not the seed
    resumed.load_state_dict(state)
    assert resumed.quantiles() == first.quantiles()
    assert _masks(resumed, rounds[7:]) == expected[7:]
    assert resumed.quantiles() == uninterrupted.quantiles()


def test_a_state_saved_with_an_int_field_loads_where_the_float_is_given() -> None:
    saved = Selector(ss.RelativeProbabilistic(beta=1, history=16))
    saved.decide([np.array([0.1, 0.2, 0.3])])
    state = roundtrip(saved.state_dict())
    assert state["policy"]["fields"]["beta"] == 1
    selector = Selector(ss.RelativeProbabilistic(beta=1.0, history=16))
    selector.load_state_dict(state)
    assert selector.history is not None and len(selector.history) == 3


@pytest.mark.parametrize(
    "other",
    [ss.RelativeProbabilistic(beta=2.0, history=16), ss.QuantileThreshold(0.5, history=16)],
)
def test_a_state_saved_with_another_policy_is_refused_naming_both(other: ss.Policy) -> None:
    state = roundtrip(Selector(ss.RelativeProbabilistic(beta=1, history=16)).state_dict())
    selector = Selector(other)
    with pytest.raises(ValueError) as info:
        selector.load_state_dict(state)
    message = str(info.value)
    assert "RelativeProbabilistic(beta=1, history=16)" in message
    assert repr(other) in message and "same policy" in message


def test_topk_and_uniform_with_the_same_keep_are_different_policies() -> None:
    state = Selector(ss.TopK(keep=0.5)).state_dict()
    with pytest.raises(ValueError, match=r"saved with policy TopK\(keep=0\.5\).*Uniform"):
        Selector(ss.Uniform(keep=0.5)).load_state_dict(state)
