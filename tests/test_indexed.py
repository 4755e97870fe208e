"""Tests of ``smartsift.batches.indexed``: ``IndexedDataset`` adds each sample's index."""

from __future__ import annotations

from typing import Any, NamedTuple

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from smartsift.batches.indexed import IndexedDataset


class Point(NamedTuple):
    x: float
    y: float


class _Squares(Dataset[Any]):
    def __len__(self) -> int:
        return 5

    def __getitem__(self, index: int) -> Any:
        return torch.tensor(float(index * index))


def test_a_tuple_sample_gets_its_index_first() -> None:
    data = IndexedDataset([(10, "a"), (11, "b"), (12, "c")])
    assert len(data) == 3
    assert data[2] == (2, 12, "c")
    assert data[0] == (0, 10, "a")


def test_a_dict_sample_gets_its_index_under_the_key() -> None:
    data = IndexedDataset([{"x": 1}, {"x": 2}])
    assert data[1] == {"x": 2, "index": 1}
    assert IndexedDataset([{"x": 1}], key="id")[0] == {"x": 1, "id": 0}


def test_the_wrapped_dict_is_not_changed() -> None:
    sample = {"x": 1}
    IndexedDataset([sample])[0]
    assert sample == {"x": 1}


def test_a_dict_sample_that_has_the_key_already_is_refused() -> None:
    data = IndexedDataset([{"x": 1, "index": 7}])
    with pytest.raises(ValueError, match="cannot add key 'index': the sample already has it"):
        data[0]
    assert IndexedDataset([{"x": 1, "index": 7}], key="row")[0] == {"x": 1, "index": 7, "row": 0}


def test_any_other_sample_is_paired_with_its_index_whole() -> None:
    assert IndexedDataset(_Squares())[3] == (3, torch.tensor(9.0))
    assert IndexedDataset([[1, 2]])[0] == (0, [1, 2])
    assert IndexedDataset(["text"])[0] == (0, "text")
    # A named tuple is not spread (its type could not hold the index): it stays one entry.
    point = Point(1.0, 2.0)
    indexed = IndexedDataset([point])[0]
    assert indexed == (0, point)
    assert type(indexed[1]) is Point


def test_a_tensor_dataset_batches_with_the_sampler_indices_as_int64_ids() -> None:
    x = torch.arange(10.0).unsqueeze(1) * 10
    data = IndexedDataset(TensorDataset(x, torch.arange(10) % 3))
    order = [3, 1, 4, 9, 5, 2, 6, 8, 7, 0]
    loader = DataLoader(data, batch_size=4, sampler=order)
    ids, xs, ys = zip(*[(i, xb, yb) for i, xb, yb in loader], strict=True)
    assert all(i.dtype == torch.int64 for i in ids)
    assert torch.cat(ids).tolist() == order
    # Each id is the index of the sample it travels with.
    assert torch.equal(torch.cat(xs).squeeze(1), torch.cat(ids).float() * 10)
    assert torch.equal(torch.cat(ys), torch.cat(ids) % 3)


def test_dict_samples_batch_with_the_ids_under_the_key() -> None:
    data = IndexedDataset([{"x": torch.tensor([float(i)])} for i in range(6)], key="idx")
    batches = list(DataLoader(data, batch_size=4))
    assert [b["idx"].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5]]
    assert batches[1]["x"].squeeze(1).tolist() == [4.0, 5.0]
