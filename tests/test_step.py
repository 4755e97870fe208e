"""Tests of ``smartsift.engine.step``: one sift step, deciding and buffering the kept samples."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

import smartsift as ss
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.history import LossHistory
from smartsift.engine.selector import Selector
from smartsift.engine.step import push_kept, sift_step
from smartsift.policies.base import Needs, Policy, PolicyState, Proposal


def _batch(start: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    ids = torch.arange(start, start + n)
    return ids.float().unsqueeze(1), ids


def test_push_kept_buffers_the_kept_samples_in_order() -> None:
    batcher = RefinedBatcher(8)
    n = push_kept(batcher, _batch(0, 5), 5, np.array([False, True, False, True, True]))
    assert n == 3
    assert batcher.buffered == 3
    assert batcher.take(3)[1].tolist() == [1, 3, 4]


def test_push_kept_buffers_a_batch_kept_whole_without_copying_it() -> None:
    batcher = RefinedBatcher(8)
    batch = _batch(0, 4)
    assert push_kept(batcher, batch, 4, np.ones(4, dtype=bool)) == 4
    assert batcher.chunks[0] is batch


def test_push_kept_buffers_nothing_when_nothing_is_kept() -> None:
    batcher = RefinedBatcher(8)
    assert push_kept(batcher, _batch(0, 4), 4, np.zeros(4, dtype=bool)) == 0
    assert batcher.buffered == 0
    assert batcher.chunks == []


def test_sift_step_decides_every_rank_and_buffers_only_its_own_kept_samples() -> None:
    losses = [np.array([0.1, 0.9, 0.5, 0.8]), np.array([0.7, 0.2, 0.6, 0.3])]
    batcher = RefinedBatcher(2)
    decision = sift_step(Selector(ss.TopK(0.5)), batcher, _batch(10, 4), 4, losses, rank=1)
    assert [m.tolist() for m in decision.masks] == [
        [False, True, False, True],
        [True, False, True, False],
    ]
    assert decision.kept == [2, 2]
    assert batcher.buffered == 2
    assert batcher.take(2)[1].tolist() == [10, 12]  # rank 1's mask on rank 1's batch


def test_a_rank_without_a_batch_decides_with_the_others_and_buffers_nothing() -> None:
    selector, alone = Selector(ss.Uniform(0.5), seed=3), Selector(ss.Uniform(0.5), seed=3)
    batcher = RefinedBatcher(2)
    losses = [np.array([1.0, 2.0, 3.0]), np.empty(0)]
    decision = sift_step(selector, batcher, None, 0, losses, rank=1)
    assert decision.kept[1] == 0
    assert batcher.buffered == 0
    # The rank with the batch decides as it would alone.
    expected = alone.decide([np.array([1.0, 2.0, 3.0])]).masks[0]
    assert decision.masks[0].tolist() == expected.tolist()


@dataclass(frozen=True)
class _KeepLabelled(Policy):
    """Keeps the samples whose label equals ``label``; records the ids it was given."""

    label: int = 1

    @property
    def expected_keep(self) -> float:
        return 0.5

    def keep_mask(
        self, losses: np.ndarray, history: LossHistory | None, generator: torch.Generator
    ) -> np.ndarray:
        raise AssertionError("the bound state decides")

    def bind(self) -> PolicyState:
        return _KeepLabelledState(self)


class _KeepLabelledState(PolicyState):
    needs = Needs(ids=True, labels=True)

    def __init__(self, policy: _KeepLabelled) -> None:
        super().__init__(policy)
        self.ids_seen: list[list[int]] = []

    def propose(
        self,
        losses: Sequence[np.ndarray],
        history: LossHistory | None,
        generator: torch.Generator,
        probabilities: bool = False,
        ids: Sequence[np.ndarray] | None = None,
        labels: Sequence[np.ndarray] | None = None,
    ) -> list[Proposal]:
        assert ids is not None and labels is not None
        self.ids_seen.extend(r.tolist() for r in ids)
        label: Any = self.policy.label  # type: ignore[attr-defined]
        return [(lab == label, None) for lab in labels]


def test_sift_step_hands_the_rows_of_sample_inputs_to_the_policy_as_ids_and_labels() -> None:
    selector = Selector(_KeepLabelled(label=1))
    batcher = RefinedBatcher(4)
    # Each rank's rows: ids first, then labels, as floats (as they travel between ranks).
    inputs = [np.array([[7.0, 8.0, 9.0], [1.0, 0.0, 1.0]]), np.array([[3.0, 4.0], [0.0, 1.0]])]
    decision = sift_step(
        selector, batcher, _batch(7, 3), 3, [np.zeros(3), np.zeros(2)], rank=0, inputs=inputs
    )
    assert selector.state.ids_seen == [[7, 8, 9], [3, 4]]  # type: ignore[attr-defined]
    assert [m.tolist() for m in decision.masks] == [[True, False, True], [False, True]]
    assert batcher.take(batcher.buffered)[1].tolist() == [7, 9]
