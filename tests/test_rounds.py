"""Tests of ``smartsift.engine.rounds``: errors shared by ranks, the clock, the held-out call."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
import torch

from smartsift.engine.distributed import PeerRound, RemoteRankError
from smartsift.engine.rounds import RankContext, RoundClock, annotate, raise_errors
from smartsift.policies.base import RoundTimes


def _peer(error: bool) -> PeerRound:
    return PeerRound(size=2, buffered=0, exhausted=False, error=error, losses=np.zeros(2))


def _other_ranks(*rounds: tuple[float, float]) -> Callable[[list[float]], list[float]]:
    """A sum over ranks where the other ranks sent ``rounds``; records this rank's vectors."""

    def sum_over_ranks(values: list[float]) -> list[float]:
        sent.append(list(values))
        return [v + sum(r[i] for r in rounds) for i, v in enumerate(values)]

    sent: list[list[float]] = []
    sum_over_ranks.sent = sent  # type: ignore[attr-defined]
    return sum_over_ranks


def test_annotate_adds_where_the_error_was_met_and_returns_it() -> None:
    err = ValueError("bad")
    assert annotate(err, "on raw batch 3 of the epoch") is err
    assert err.__notes__ == ["smartsift: raised on raw batch 3 of the epoch."]


def test_no_error_anywhere_raises_nothing() -> None:
    raise_errors([_peer(False), _peer(False)], None, rank=0)


def test_a_ranks_own_error_is_raised_as_it_is_even_when_others_failed_too() -> None:
    err = KeyError("mine")
    with pytest.raises(KeyError) as info:
        raise_errors([_peer(True), _peer(True)], err, rank=1)
    assert info.value is err


def test_another_ranks_error_stops_this_rank_naming_the_failed_ranks() -> None:
    peers = [_peer(False), _peer(True), _peer(False), _peer(True)]
    with pytest.raises(RemoteRankError, match=r"rank\(s\) \[1, 3\] failed.*rank 2 stops too"):
        raise_errors(peers, None, rank=2)


def test_the_clock_hands_over_what_it_measured_since_the_previous_lap() -> None:
    clock = RoundClock()
    clock.overhead(0.5)
    clock.overhead(0.25)
    clock.step(1.0, samples=8)
    clock.step(2.0, samples=4)
    assert clock.lap(scored=16, data_s=0.125, raw=16) == RoundTimes(
        overhead_s=0.75, scored=16, step_s=3.0, trained=12, data_s=0.125, raw=16
    )
    assert clock.lap(scored=0, data_s=0.0, raw=0) == RoundTimes()
    clock.step(0.5, samples=2)
    assert clock.lap(scored=4, data_s=0.0, raw=4) == RoundTimes(0.0, 4, 0.5, 2, 0.0, 4)


def test_held_out_in_one_process_returns_the_value() -> None:
    context = RankContext(torch.nn.Linear(2, 2), lambda v: v, rank=0, world_size=1)
    assert context.held_out(lambda: 0.75, "in validate()") == 0.75
    assert context.held_out(lambda: torch.tensor(2.5), "in validate()") == 2.5


def test_held_out_averages_over_ranks_and_tells_them_it_succeeded() -> None:
    sum_over_ranks = _other_ranks((2.0, 0.0), (4.0, 0.0))  # two other ranks, both fine
    context = RankContext(torch.nn.Linear(2, 2), sum_over_ranks, rank=1, world_size=3)
    assert context.held_out(lambda: 3.0, "in validate()") == pytest.approx((2.0 + 3.0 + 4.0) / 3)
    assert sum_over_ranks.sent == [[3.0, 0.0]]  # type: ignore[attr-defined]


def test_held_out_runs_without_grad() -> None:
    grad_enabled: list[bool] = []
    context = RankContext(torch.nn.Linear(2, 2), lambda v: v, rank=0, world_size=1)
    context.held_out(lambda: grad_enabled.append(torch.is_grad_enabled()) or 1.0, "in fn")
    assert grad_enabled == [False]
    assert torch.is_grad_enabled()


@pytest.mark.parametrize("training", [True, False])
def test_held_out_puts_the_model_back_in_the_mode_it_found(training: bool) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5))
    model.train(training)
    context = RankContext(model, lambda v: v, rank=0, world_size=1)

    def flip() -> float:
        model.train(not training)
        return 1.0

    context.held_out(flip, "in validate()")
    assert model.training is training
    assert all(m.training is training for m in model.modules())

    def flip_and_fail() -> float:
        model.train(not training)
        raise RuntimeError("validation data missing")

    with pytest.raises(RuntimeError):
        context.held_out(flip_and_fail, "in validate()")
    assert model.training is training


def test_a_local_failure_is_reported_to_every_rank_then_raised_annotated() -> None:
    sum_over_ranks = _other_ranks((1.0, 0.0))
    context = RankContext(torch.nn.Linear(2, 2), sum_over_ranks, rank=0, world_size=2)

    def fail() -> float:
        raise RuntimeError("validation data missing")

    with pytest.raises(RuntimeError, match="validation data missing") as info:
        context.held_out(fail, "in Auto's validate()")
    assert info.value.__notes__ == ["smartsift: raised in Auto's validate()."]
    # The other ranks learn of it before this rank raises, so that none waits for it.
    assert sum_over_ranks.sent == [[0.0, 1.0]]  # type: ignore[attr-defined]


def test_a_value_that_is_no_number_counts_as_a_local_failure() -> None:
    sum_over_ranks = _other_ranks((1.0, 0.0))
    context = RankContext(torch.nn.Linear(2, 2), sum_over_ranks, rank=0, world_size=2)
    with pytest.raises(TypeError):
        context.held_out(lambda: None, "in validate()")
    assert sum_over_ranks.sent == [[0.0, 1.0]]  # type: ignore[attr-defined]


def test_a_remote_failure_stops_this_rank_too() -> None:
    sum_over_ranks = _other_ranks((0.0, 1.0), (0.0, 1.0), (5.0, 0.0))  # two of three others failed
    context = RankContext(torch.nn.Linear(2, 2), sum_over_ranks, rank=3, world_size=4)
    with pytest.raises(
        RemoteRankError, match=r"Auto's validate\(\) failed on 2 rank\(s\).*rank 3 stops too"
    ):
        context.held_out(lambda: 1.0, "in Auto's validate()")
