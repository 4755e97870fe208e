"""The selector: identical decisions on every rank, non-finite losses, history, save and load."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch
from _resume import roundtrip
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.engine.selector import Selector

POLICIES = [
    ss.RelativeProbabilistic(beta=1.0, history=32),
    ss.RelativeProbabilistic(keep=0.3, history=32),
    ss.QuantileThreshold(exclude=0.4, history=32),
    ss.TopK(keep=0.5),
    ss.Uniform(keep=0.6),
]
_IDS = [repr(p) for p in POLICIES]


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


# ---------------------------------------------------------------- a stated keep rate


def _drifting(kind: str, n_batches: int, size: int, seed: int = 1) -> Iterator[np.ndarray]:
    """Losses that fall steadily over time, or whose mixture of two modes jumps back and forth."""
    rng = np.random.default_rng(seed)
    for t in range(n_batches):
        if kind == "decreasing":
            yield rng.exponential(size=size) * np.exp(-t / 60)
        else:
            high = rng.random(size) < (0.8 if (t // 150) % 2 == 0 else 0.1)
            yield np.where(high, rng.normal(5.0, 0.5, size), rng.normal(1.0, 0.2, size))


@pytest.mark.parametrize("kind", ["decreasing", "bimodal"])
@pytest.mark.parametrize("keep", [0.1, 0.3, 0.7])
def test_a_stated_keep_holds_within_two_points_however_losses_drift(kind: str, keep: float) -> None:
    history = 500
    selector = Selector(ss.RelativeProbabilistic(keep=keep, history=history), seed=0)
    kept, seen = [], []
    for losses in _drifting(kind, 1200, 32):
        decision = selector.decide([losses])
        kept.append(decision.kept[0])
        seen.append(losses.size)
    k, n = np.array(kept[40:]), np.array(seen[40:])  # after a warm-up of 1280 samples
    assert k.sum() / n.sum() == pytest.approx(keep, abs=0.005)
    window = 5000 // 32
    rates = np.convolve(k, np.ones(window), "valid") / np.convolve(n, np.ones(window), "valid")
    worst = np.abs(rates - keep).max()
    assert worst <= 0.02
    # The plain rule at the matching beta wanders further on the same stream.
    plain = Selector(ss.RelativeProbabilistic(beta=1 / keep - 1, history=history), seed=0)
    k_plain = np.array([plain.decide([x]).kept[0] for x in _drifting(kind, 1200, 32)][40:])
    rates = np.convolve(k_plain, np.ones(window), "valid") / (window * 32)
    assert np.abs(rates - keep).max() > worst
    if kind == "decreasing":
        assert abs(k_plain.sum() / n.sum() - keep) > 0.02


def test_a_stated_keep_adapts_on_every_ranks_losses_alike() -> None:
    ranks = [Selector(ss.RelativeProbabilistic(keep=0.25, history=256), seed=3) for _ in range(2)]
    streams = [_drifting("decreasing", 600, 16, seed=s) for s in range(3)]
    kept = seen = 0
    for t, rounds in enumerate(zip(*streams, strict=True)):
        decisions = [s.decide(list(rounds)) for s in ranks]
        assert decisions[0].kept == decisions[1].kept and ranks[0].beta == ranks[1].beta
        if t >= 50:
            kept += sum(decisions[0].kept)
            seen += sum(x.size for x in rounds)
    assert kept / seen == pytest.approx(0.25, abs=0.005)


def test_the_adapted_beta_is_saved_and_a_state_without_it_still_loads() -> None:
    policy = ss.RelativeProbabilistic(keep=0.3, history=64)
    selector = Selector(policy, seed=0)
    for losses in _drifting("decreasing", 50, 16):
        selector.decide([losses])
    state = roundtrip(selector.state_dict())
    assert state["keep_rate"]["decided"] == 800
    resumed = Selector(policy, seed=0)
    resumed.load_state_dict(state)
    assert resumed.beta == selector.beta != pytest.approx(1 / 0.3 - 1)
    del state["keep_rate"]  # as saved before the adaptation was kept
    old = Selector(policy, seed=0)
    old.load_state_dict(state)
    assert old.beta == pytest.approx(1 / 0.3 - 1)
    assert "keep_rate" not in Selector(ss.RelativeProbabilistic(beta=1.0)).state_dict()
    assert Selector(ss.TopK(0.5)).beta is None
    assert Selector(ss.RelativeProbabilistic(beta=2.0)).beta == 2.0


def test_decide_returns_keep_probabilities_when_asked() -> None:
    selector = Selector(ss.RelativeProbabilistic(beta=1.0, history=4), nonfinite="keep")
    decision = selector.decide([np.array([1.0, 2.0, np.nan, 4.0])], probabilities=True)
    assert decision.probabilities is not None
    assert decision.probabilities[0].tolist() == [
        pytest.approx(1 / 3),
        pytest.approx(2 / 3),
        1.0,
        1.0,
    ]
    assert Selector(ss.TopK(0.5)).decide([np.array([1.0, 2.0])], probabilities=True).probabilities[
        0
    ].tolist() == [0.0, 1.0]
    assert Selector(ss.TopK(0.5)).decide([np.array([1.0, 2.0])]).probabilities is None


def test_a_stated_keep_holds_through_a_real_sifting_loader() -> None:
    # A model that learns: its losses fall epoch after epoch while the loader sifts.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 8, generator=g)
    y = (x[:, :2].sum(1) > 0).long()
    model = torch.nn.Linear(8, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(m(batch[0]), batch[1], reduction="none")

    raw = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, generator=g)
    loader = ss.SiftingDataLoader(
        raw, model, loss_fn, ss.RelativeProbabilistic(keep=0.3, history=256), seed=0
    )
    first_loss = last_loss = None
    seen = kept = 0
    for epoch in range(3):
        for batch in loader:
            opt.zero_grad()
            loss = loss_fn(model, batch).mean()
            loss.backward()
            opt.step()
            first_loss = float(loss.detach()) if first_loss is None else first_loss
            last_loss = float(loss.detach())
        if epoch == 0:  # warm-up
            seen, kept = loader.stats.samples_seen, loader.stats.samples_kept
    assert last_loss is not None and first_loss is not None and last_loss < first_loss / 2
    rate = (loader.stats.samples_kept - kept) / (loader.stats.samples_seen - seen)
    assert rate == pytest.approx(0.3, abs=0.02)
