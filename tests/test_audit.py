"""Tests of ``smartsift.engine.audit``: ``SiftAudit`` records, queries, saving and merging."""

from __future__ import annotations

import io
import json
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.engine.audit import EpochRecord, SiftAudit


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _filled() -> SiftAudit:
    """An audit of two epochs: epoch 0 scored two batches and passed one; epoch 1 dropped one."""
    audit = SiftAudit(id_key="idx")
    audit.record_passed(0, {"idx": torch.tensor([0, 1])}, 2)
    audit.record_scored(
        0, {"idx": torch.tensor([2, 3, 4])}, np.array([0.5, 2.0, 0.1]), np.array([0, 1, 0], bool)
    )
    audit.record_scored(0, {"idx": [5, 6]}, np.array([3.0, 4.0]), np.array([True, True]))
    audit.record_scored(1, {"idx": [6, 2]}, np.array([1.0, 0.2]), np.array([True, False]))
    audit.record_dropped(1, [({"idx": [6]}, 1)])
    return audit


@pytest.mark.parametrize("id_key", [True, 1.5, (), ("meta", None), ["index"], None])
def test_an_id_key_that_is_no_key_or_position_is_refused(id_key: Any) -> None:
    with pytest.raises(TypeError, match="Expected `id_key` to be a str"):
        SiftAudit(id_key=id_key)


def test_kept_and_sifted_ids_come_with_their_losses_in_arrival_order() -> None:
    record = _filled().epoch(0)
    assert isinstance(record, EpochRecord)
    assert record.epoch == 0
    assert record.kept.tolist() == [3, 5, 6]
    assert record.kept_losses.tolist() == [2.0, 3.0, 4.0]
    assert record.sifted.tolist() == [2, 4]
    assert record.sifted_losses.tolist() == [0.5, 0.1]
    assert record.passed.tolist() == [0, 1]
    assert record.dropped.tolist() == []
    assert record.kept.dtype == np.int64
    assert sorted(record.seen.tolist()) == list(range(7))
    assert record.trained.tolist() == [0, 1, 3, 5, 6]


def test_ids_are_read_from_tuple_positions_and_nested_entries() -> None:
    by_position = SiftAudit(id_key=1)
    by_position.record_passed(0, (torch.zeros(2, 3), torch.tensor([7, 9])), 2)
    assert by_position.epoch(0).passed.tolist() == [7, 9]
    nested = SiftAudit(id_key=("meta", "id"))
    batch = {"x": torch.zeros(2), "meta": {"id": np.array([11, 12])}}
    nested.record_scored(0, batch, np.array([1.0, 0.0]), np.array([True, False]))
    assert nested.epoch(0).kept.tolist() == [11]
    assert nested.epoch(0).sifted.tolist() == [12]


def test_a_batch_without_ids_or_with_too_few_is_refused_naming_the_id_key() -> None:
    audit = SiftAudit(id_key="idx")
    with pytest.raises(ValueError, match=r"SiftAudit\(id_key='idx'\)"):
        audit.ids_of({"x": torch.zeros(3)}, 3)
    with pytest.raises(ValueError, match=r"SiftAudit\(id_key='idx'\)"):
        audit.ids_of({"idx": torch.tensor([1, 2])}, 3)


def test_recorded_ids_do_not_follow_later_changes_of_the_callers_array() -> None:
    audit = SiftAudit(id_key=0)
    ids = np.array([1, 2, 3])
    audit.record_scored_ids(0, ids, np.zeros(3), np.array([True, False, True]))
    audit.record_passed_ids(0, ids)
    audit.record_dropped_ids(0, ids)
    ids[:] = 99
    record = audit.epoch(0)
    assert record.kept.tolist() == [1, 3]
    assert record.passed.tolist() == [1, 2, 3]
    assert record.dropped.tolist() == [1, 2, 3]


def test_a_dropped_sample_is_untrained_only_as_often_as_it_was_dropped() -> None:
    # Sample 4 arrived twice (a sampler with replacement) and was dropped once: still trained.
    audit = SiftAudit(id_key=0)
    audit.record_scored_ids(0, np.array([4, 4, 5]), np.zeros(3), np.ones(3, bool))
    audit.record_dropped_ids(0, np.array([4, 5]))
    assert audit.epoch(0).trained.tolist() == [4]
    assert audit.never_trained().tolist() == [5]


def test_never_trained_over_pulled_ids_a_range_or_given_ids() -> None:
    audit = _filled()
    # Epoch 0 trained 0, 1, 3, 5, 6; epoch 1 kept 6 (dropped) and sifted 2; 4 only ever sifted.
    assert audit.never_trained().tolist() == [2, 4]
    assert audit.never_trained(ids=9).tolist() == [2, 4, 7, 8]
    assert audit.never_trained(ids=[8, 4, 0, 4]).tolist() == [4, 8]
    assert SiftAudit(id_key=0).never_trained().tolist() == []
    assert SiftAudit(id_key=0).never_trained(ids=3).tolist() == [0, 1, 2]


def test_an_epoch_without_records_is_a_key_error_naming_those_it_has() -> None:
    audit = _filled()
    assert audit.epochs == [0, 1]
    with pytest.raises(KeyError, match=r"no records for epoch 2; it has \[0, 1\]"):
        audit.epoch(2)


def test_to_dict_holds_plain_values_ready_for_json() -> None:
    out = _filled().to_dict()
    assert json.loads(json.dumps(out))["epochs"]["0"] == out["epochs"][0]
    assert out["id_key"] == "idx"
    assert out["epochs"][1] == {
        "kept": [6],
        "kept_losses": [1.0],
        "sifted": [2],
        "sifted_losses": [0.2],
        "passed": [],
        "dropped": [6],
    }


def test_the_state_round_trips_through_a_weights_only_load() -> None:
    audit = _filled()
    state = _roundtrip(audit.state_dict())
    restored = SiftAudit(id_key="idx")
    restored.record_passed(5, {"idx": [1]}, 1)  # replaced by the load
    restored.load_state_dict(state)
    assert restored.to_dict() == audit.to_dict()
    assert restored.never_trained(ids=9).tolist() == audit.never_trained(ids=9).tolist()
    # The restored audit goes on recording where the saved one stopped.
    restored.record_passed(1, {"idx": [4]}, 1)
    assert restored.never_trained().tolist() == [2]


def test_a_state_of_another_id_key_is_refused() -> None:
    state = _filled().state_dict()
    with pytest.raises(ValueError, match="id_key='idx' but this audit uses id_key=0"):
        SiftAudit(id_key=0).load_state_dict(state)


def test_merge_joins_the_ranks_records_epoch_by_epoch_in_rank_order() -> None:
    rank0, rank1 = SiftAudit(id_key=0), SiftAudit(id_key=0)
    rank0.record_scored_ids(0, np.array([0, 1]), np.array([1.0, 2.0]), np.array([True, False]))
    rank1.record_scored_ids(0, np.array([2, 3]), np.array([3.0, 4.0]), np.array([False, True]))
    rank1.record_passed_ids(1, np.array([5]))
    merged = SiftAudit.merge([rank0, rank1])
    assert merged.epochs == [0, 1]
    assert merged.epoch(0).kept.tolist() == [0, 3]
    assert merged.epoch(0).kept_losses.tolist() == [1.0, 4.0]
    assert merged.epoch(0).sifted.tolist() == [1, 2]
    assert merged.epoch(1).passed.tolist() == [5]
    # Records made after the merge stay with their own audit.
    rank0.record_passed_ids(0, np.array([9]))
    assert merged.epoch(0).passed.tolist() == []


def test_merge_needs_audits_of_one_id_key() -> None:
    with pytest.raises(ValueError, match="at least one audit"):
        SiftAudit.merge([])
    with pytest.raises(ValueError, match="different id_keys"):
        SiftAudit.merge([SiftAudit(id_key=0), SiftAudit(id_key="index")])


def _loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    _, x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


def test_a_loaders_audit_accounts_for_every_sample_it_trained_sifted_or_dropped() -> None:
    g = torch.Generator().manual_seed(0)
    data = ss.IndexedDataset(TensorDataset(torch.randn(30, 3, generator=g), torch.arange(30) % 2))
    audit = ss.SiftAudit(id_key=0)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=8), torch.nn.Linear(3, 2), _loss_fn, ss.TopK(0.5),
        batch_size=4, drop_last=True, sift_delay=1, seed=0, audit=audit,
    )  # fmt: skip
    trained = [i for ids, _, _ in loader for i in ids.tolist()]
    record = audit.epoch(0)
    # Raw batches of 8, 8, 8, 6: the first passes through, the rest keep ceil(half) each.
    assert record.passed.tolist() == list(range(8))
    assert len(record.kept) == 4 + 4 + 3
    assert len(record.sifted) == 4 + 4 + 3
    assert sorted(record.seen.tolist()) == list(range(30))
    # 19 kept or passed, batches of 4 with drop_last: 16 trained, the last 3 dropped.
    assert len(trained) == 16
    assert len(record.dropped) == 3
    assert sorted(record.trained.tolist()) == sorted(trained)
    untrained = set(range(30)) - set(trained)
    assert audit.never_trained().tolist() == sorted(untrained)
    assert set(record.sifted.tolist()) | set(record.dropped.tolist()) == untrained
    assert loader.stats.samples_dropped == 3
