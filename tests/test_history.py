"""The loss history against a plain Python model of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import smartsift.engine.history
from smartsift.engine.history import LossHistory, weak_percentile


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 40),
    chunks=st.lists(
        st.lists(st.integers(0, 6).map(float), min_size=0, max_size=50), min_size=1, max_size=12
    ),
    merge=st.booleans(),
)
def test_history_matches_a_list_model(
    capacity: int, chunks: list[list[float]], merge: bool
) -> None:
    # Both ways of keeping the sorted view: re-sorting a short history, merging into a long one.
    resort_max = smartsift.engine.history._RESORT_MAX
    smartsift.engine.history._RESORT_MAX = 0 if merge else resort_max
    try:
        _check_against_list(capacity, chunks)
    finally:
        smartsift.engine.history._RESORT_MAX = resort_max


def _check_against_list(capacity: int, chunks: list[list[float]]) -> None:
    history = LossHistory(capacity)
    model: list[float] = []
    for chunk in chunks:
        history.extend(np.array(chunk))
        model = (model + chunk)[-capacity:]
        assert history.values().tolist() == model
        assert history.sorted().tolist() == sorted(model)
        assert len(history) == len(model)


def test_weak_percentile() -> None:
    h = np.array([1.0, 2.0, 2.0, 3.0])
    assert weak_percentile(h, np.array([0.5, 1.0, 2.0, 3.0, 4.0])).tolist() == [0, 0.25, 0.75, 1, 1]
    assert weak_percentile(np.empty(0), np.array([1.0])).tolist() == [1.0]


def test_quantile_and_state_round_trip() -> None:
    h = LossHistory(10)
    h.extend(np.arange(15, dtype=float))
    assert h.quantile(0.0) == 5.0
    assert h.quantile(0.5) == 10.0
    assert LossHistory(3).quantile(0.5) != LossHistory(3).quantile(0.5)  # NaN when empty
    state = h.state_dict()
    assert isinstance(state["values"], torch.Tensor)
    h2 = LossHistory(10)
    h2.load_state_dict(state)
    assert h2.values().tolist() == h.values().tolist()
    assert h2.sorted().tolist() == h.sorted().tolist()
    with pytest.raises(ValueError, match="holds 10 losses"):
        LossHistory(5).load_state_dict(state)


def test_sorted_view_is_read_only() -> None:
    h = LossHistory(4)
    h.extend(np.array([2.0, 1.0]))
    with pytest.raises(ValueError):
        h.sorted()[0] = 5.0


@pytest.mark.parametrize("capacity", [0, -3, 1.5, True])
def test_invalid_capacity(capacity: object) -> None:
    with pytest.raises(ValueError, match="`capacity` to be a positive int"):
        LossHistory(capacity)  # type: ignore[arg-type]
