"""Tests of ``smartsift.modes.reference``: reducible scores, the id lookup and the sift step
that passes samples without a reference unsifted."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import smartsift as ss
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.selector import Selector
from smartsift.engine.step import sift_step
from smartsift.modes.reference import (
    Reference,
    attach_losses,
    check_id_key,
    lookup_reference,
    reducible_scores,
    reducible_step,
    unreferenced,
)


def test_scores_are_the_loss_less_the_reference_and_nan_where_it_is_unknown() -> None:
    losses = np.array([2.0, 2.0, 0.5, 1.0, 1.0])
    reference = np.array([0.5, 1.5, 1.0, np.nan, np.inf])
    scores = reducible_scores(losses, reference)
    assert scores[:3].tolist() == [1.5, 0.5, -0.5]  # negative where the model beats it
    assert np.isnan(scores[3:]).all()
    assert unreferenced(losses, scores).tolist() == [False, False, False, True, True]


def test_a_non_finite_loss_is_not_counted_as_unreferenced() -> None:
    losses = np.array([np.nan, np.inf, 1.0])
    scores = reducible_scores(losses, np.array([np.nan, 0.5, 0.5]))
    assert unreferenced(losses, scores).tolist() == [False, False, False]


def test_the_lookup_reads_the_reference_by_id_and_names_ids_out_of_range() -> None:
    table = np.array([0.1, 0.2, np.nan, 0.4])
    got = lookup_reference(table, np.array([3, 2, 0]))
    assert got[[0, 2]].tolist() == [0.4, 0.1] and np.isnan(got[1])
    with pytest.raises(ValueError, match=r"ids 0 to 3, but the batch holds the id\(s\) \[4, -1\]"):
        lookup_reference(table, np.array([0, 4, -1]))


def test_the_losses_travel_as_the_last_side_row() -> None:
    assert attach_losses(np.zeros((2, 0)), np.empty(0)).shape == (3, 0)
    rows = attach_losses(np.array([[5.0, 6.0]]), np.array([0.5, 0.7]))
    assert rows.tolist() == [[5.0, 6.0], [0.5, 0.7]]


def test_a_tensor_reference_is_read_by_the_ids_at_id_key() -> None:
    reference = Reference(torch.tensor([1.0, 2.0, 3.0, 4.0]), id_key=("meta", "id"))
    batch = {"meta": {"id": torch.tensor([3, 1])}, "x": torch.zeros(2, 2)}
    assert reference.values(None, batch, 2).tolist() == [4.0, 2.0]
    array = Reference(np.array([1.0, 2.0], dtype=np.float32), id_key=0)
    assert array.values(None, (torch.tensor([1, 0]),), 2).tolist() == [2.0, 1.0]


def test_a_callable_reference_gets_the_raw_batch_under_no_grad() -> None:
    seen: list[tuple[object, bool]] = []

    def fn(batch: object) -> torch.Tensor:
        seen.append((batch, torch.is_grad_enabled()))
        return torch.full((3,), 0.5, requires_grad=True) * 2

    raw, sliceable = object(), object()
    assert Reference(fn).values(raw, sliceable, 3).tolist() == [1.0, 1.0, 1.0]
    assert seen == [(raw, False)]


@pytest.mark.parametrize(
    ("reference", "id_key", "error", "match"),
    [
        (torch.ones(4), None, ValueError, r"indexed by sample id, but `id_key` is None"),
        (np.ones(4), None, ValueError, r"ndarray `reference` is indexed by sample id"),
        (torch.ones(2, 3), 0, ValueError, r"1-D Tensor .* got shape \(2, 3\)"),
        (torch.arange(4), 0, ValueError, r"floating-point losses, but got dtype torch.int64"),
        (np.arange(4), 0, ValueError, r"floating-point losses, but got dtype int64"),
        (torch.full((3,), float("nan")), 0, ValueError, r"no finite loss \(all 3"),
        ([0.1, 0.2], 0, TypeError, r"callable reference\(batch\).* got list"),
        (0.5, 0, TypeError, r"but got float"),
        (lambda b: b, 1.5, TypeError, r"`id_key` .* got 1.5"),
    ],
)
def test_bad_references_are_refused_naming_the_argument_and_the_fix(
    reference: object, id_key: object, error: type, match: str
) -> None:
    with pytest.raises(error, match=match):
        Reference(reference, id_key)  # type: ignore[arg-type]


def test_id_keys_are_checked_as_the_audit_checks_them() -> None:
    assert check_id_key(None) is None and check_id_key("idx") == "idx"
    for bad in ((), (True,), [0]):
        with pytest.raises(TypeError, match="Expected `id_key`"):
            check_id_key(bad)


def test_without_unknown_references_the_step_is_the_sift_step() -> None:
    scores = [np.array([0.3, -0.2, 0.9, 0.1]), np.array([0.5, 0.4])]
    losses = [np.ones(4), np.ones(2)]
    batch = (torch.arange(4.0),)
    a, b = RefinedBatcher(8), RefinedBatcher(8)
    decision, unknown = reducible_step(Selector(ss.TopK(0.5)), a, batch, 4, scores, losses)
    expected = sift_step(Selector(ss.TopK(0.5)), b, batch, 4, scores)
    assert [m.tolist() for m in decision.masks] == [m.tolist() for m in expected.masks]
    assert decision.kept == expected.kept and a.buffered == b.buffered == 2
    assert not any(u.any() for u in unknown)


def test_unreferenced_samples_are_kept_and_never_enter_the_history() -> None:
    selector = Selector(ss.RelativeProbabilistic(beta=1.0, history=50), nonfinite="drop")
    batcher = RefinedBatcher(16)
    batch = (torch.arange(6.0),)
    scores = [np.array([0.1, np.nan, 0.2, np.nan, 0.3, np.nan])]
    losses = [np.array([1.0, 5.0, 1.0, 9.0, 1.0, np.nan])]  # the last: a NaN loss
    decision, unknown = reducible_step(selector, batcher, batch, 6, scores, losses)
    assert unknown[0].tolist() == [False, True, False, True, False, False]
    mask = decision.masks[0]
    assert mask[[1, 3]].all() and not mask[5]  # the NaN loss is dropped under "drop"
    assert decision.nonfinite == [1] and decision.kept == [int(mask.sum())]
    assert selector.history is not None
    assert sorted(selector.history.values().tolist()) == [0.1, 0.2, 0.3]
    assert batcher.buffered == decision.kept[0]


def test_the_ranks_inputs_are_cut_to_the_decided_samples() -> None:
    policy = ss.Guarded(ss.TopK(1.0), max_streak=1, id_key=0)
    selector = Selector(policy)
    scores = [np.array([0.5, np.nan, 0.7]), np.array([np.nan, 0.2])]
    losses = [np.ones(3), np.ones(2)]
    inputs = [np.array([[10.0, 11.0, 12.0]]), np.array([[20.0, 21.0]])]
    batcher = RefinedBatcher(8)
    first, _ = reducible_step(selector, batcher, (torch.arange(3.0),), 3, scores, losses, 0, inputs)
    assert first.kept == [3, 2]  # TopK(1.0): all, and the streaks start
    again, _ = reducible_step(selector, batcher, (torch.arange(3.0),), 3, scores, losses, 0, inputs)
    # Ids 10, 12 and 21 were decided and kept once: max_streak=1 sifts them now; 11 and 20
    # have no reference and pass again.
    assert [m.tolist() for m in again.masks] == [[False, True, False], [True, False]]
