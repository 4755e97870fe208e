"""Tests of ``smartsift.batches.structure``: slicing and joining every supported batch structure."""

from __future__ import annotations

from collections import OrderedDict, namedtuple

import numpy as np
import pytest
import torch

from smartsift.batches.structure import (
    UnsupportedBatchError,
    batch_size_of,
    concat,
    narrow,
    select,
    to_device,
    to_plain,
)

Pair = namedtuple("Pair", ["x", "y"])


def _nested(n: int, offset: int = 0) -> dict:
    ids = torch.arange(offset, offset + n)
    return {
        "inputs": (ids.float().unsqueeze(1).repeat(1, 3), [f"s{i}" for i in ids.tolist()]),
        "pair": Pair(ids * 2, ids.numpy().copy()),
        "meta": {"lr": 0.1, "scale": torch.tensor(2.0), "tag": "train"},
        "tags": [tuple(f"a{i}" for i in ids.tolist()), tuple(f"b{i}" for i in ids.tolist())],
        "labels": ids,
    }


def test_batch_size_of_every_structure() -> None:
    assert batch_size_of(torch.zeros(5, 2)) == 5
    assert batch_size_of((torch.zeros(4), torch.zeros(4, 7))) == 4
    assert batch_size_of([torch.zeros(3), ["a", "b", "c"]]) == 3
    assert batch_size_of(_nested(6)) == 6
    assert batch_size_of(Pair(torch.zeros(2), torch.zeros(2))) == 2
    assert batch_size_of(np.zeros((9, 1))) == 9


def test_select_keeps_structure_types_and_metadata() -> None:
    batch = _nested(6)
    out = select(batch, torch.tensor([4, 1]))
    assert out["labels"].tolist() == [4, 1]
    assert out["inputs"][1] == ["s4", "s1"]
    assert isinstance(out["inputs"], tuple)
    assert isinstance(out["pair"], Pair)
    assert out["pair"].y.tolist() == [4, 1]
    assert isinstance(out["pair"].y, np.ndarray)
    assert out["meta"]["lr"] == 0.1
    assert out["tags"] == [("a4", "a1"), ("b4", "b1")]
    assert out["meta"]["scale"].item() == 2.0
    assert torch.equal(out["inputs"][0], batch["inputs"][0][[4, 1]])


def test_select_keeps_mapping_type() -> None:
    batch = OrderedDict(a=torch.arange(3), b=torch.arange(3) + 10)
    out = select(batch, torch.tensor([2]))
    assert type(out) is OrderedDict
    assert list(out) == ["a", "b"]
    assert out["b"].tolist() == [12]


def test_concat_and_narrow_round_trip() -> None:
    a, b = _nested(3), _nested(4, offset=3)
    joined = concat([a, b])
    assert joined["labels"].tolist() == list(range(7))
    assert joined["inputs"][1] == [f"s{i}" for i in range(7)]
    assert joined["pair"].y.tolist() == list(range(7))
    assert isinstance(joined["pair"], Pair)
    assert joined["meta"]["tag"] == "train"
    assert joined["tags"][1] == tuple(f"b{i}" for i in range(7))
    part = narrow(joined, 2, 3)
    assert part["labels"].tolist() == [2, 3, 4]
    assert part["inputs"][1] == ["s2", "s3", "s4"]
    assert part["labels"].data_ptr() == joined["labels"].data_ptr() + 2 * 8  # a view, no copy


def test_concat_takes_types_from_the_last_piece() -> None:
    fresh = _nested(2, offset=5)
    restored = to_plain(_nested(3))
    assert type(restored["pair"]) is tuple
    joined = concat([restored, fresh])
    assert isinstance(joined["pair"], Pair)
    assert joined["labels"].tolist() == [0, 1, 2, 5, 6]


def test_concat_of_mismatched_shapes_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="same trailing shape"):
        concat([torch.zeros(2, 5), torch.zeros(3, 6)])


def test_different_lengths_in_one_batch() -> None:
    with pytest.raises(ValueError, match=r"batch\[0\] has 4 samples but batch\[1\] has 3"):
        batch_size_of((torch.zeros(4), torch.zeros(3)))
    with pytest.raises(ValueError, match="different lengths"):
        batch_size_of({"x": torch.zeros(4), "names": ["a", "b"]})


class Opaque:
    pass


def test_unsupported_types_point_to_batch_transform() -> None:
    with pytest.raises(UnsupportedBatchError, match="BatchTransform"):
        batch_size_of({"x": torch.zeros(2), "obj": Opaque()})
    with pytest.raises(UnsupportedBatchError, match="no per-sample"):
        batch_size_of({"lr": 0.1})
    assert issubclass(UnsupportedBatchError, TypeError)


def test_to_device_and_to_plain() -> None:
    batch = _nested(2)
    moved = to_device(batch, torch.device("meta"))
    assert moved["labels"].device.type == "meta"
    assert moved["inputs"][1] == ["s0", "s1"]
    plain = to_plain(batch)
    assert type(plain) is dict and type(plain["pair"]) is tuple
    assert isinstance(plain["pair"][1], torch.Tensor)  # NumPy arrays become tensors
