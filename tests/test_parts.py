"""Tests of ``smartsift.engine.parts``: a loader's parts built, saved and restored together."""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.engine import checkpoint as ckpt
from smartsift.engine.distributed import Lockstep, RankInfo
from smartsift.engine.parts import Parts
from smartsift.engine.step import push_kept

ONE = RankInfo(rank=0, world_size=1)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def _loader() -> DataLoader[Any]:
    data = TensorDataset(torch.arange(30.0).unsqueeze(1), torch.arange(30))
    return DataLoader(data, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(1))


def _policy() -> ss.Policy:
    return ss.RelativeProbabilistic(keep=0.4, history=16)


def _build(audit: ss.SiftAudit | None = None) -> Parts:
    return Parts.build(_policy(), "drop", seed=5, batch_size=4, padding=None, audit=audit)


def _run(parts: Parts, raw: Iterator[Any], rounds: int) -> None:
    """Drives the parts as a loader's rounds would: pull, score, decide, buffer, count."""
    for _ in range(rounds):
        batch = next(raw)
        parts.cursor.raw_in_epoch += 1
        parts.cursor.advance()
        losses = batch[0].squeeze(1).numpy().astype(np.float64) % 7.0
        decision = parts.selector.decide([losses])
        parts.ledger.pulled(len(losses))
        parts.ledger.scored(parts.cursor.epoch, batch, losses, decision.masks[0], 0)
        push_kept(parts.batcher, batch, len(losses), decision.masks[0])
        parts.batcher.form(1 if parts.batcher.buffered >= 4 else 0)


def _ids(parts: Parts) -> tuple[list[int], list[list[int]]]:
    buffered = [i for chunk in parts.batcher.chunks for i in chunk[1].tolist()]
    return buffered, [r.batch[1].tolist() for r in parts.batcher.ready]


def test_build_gives_fresh_parts_of_the_settings() -> None:
    audit = ss.SiftAudit(id_key=1)
    parts = _build(audit)
    assert parts.selector.policy == _policy()
    assert parts.selector.nonfinite == "drop"
    assert torch.equal(
        parts.selector.generator.get_state(), torch.Generator().manual_seed(5).get_state()
    )
    assert parts.batcher.batch_size == 4
    assert parts.batcher.buffered == 0
    assert (parts.cursor.epoch, parts.cursor.in_epoch, parts.cursor.rounds_total) == (0, False, 0)
    assert parts.ledger.audit is audit
    assert all(v == 0 for v in parts.ledger.counts.values())


def test_the_state_round_trips_and_the_restored_parts_go_on_alike() -> None:
    audit = ss.SiftAudit(id_key=1)
    parts, loader = _build(audit), _loader()
    raw = parts.cursor.open(loader)
    assert raw is not None
    _run(parts, raw, rounds=3)
    lockstep = Lockstep(ONE, capacity=6)
    lockstep.seconds = 1.5
    state = _roundtrip(parts.state_dict(loader, ONE, lockstep, audit))
    assert state[ckpt.VERSION_KEY] == ckpt.VERSION
    assert state[ckpt.CONFIG] == {"world_size": 1, "rank": 0}

    restored_audit = ss.SiftAudit(id_key=1)
    restored, restored_lockstep, fresh_loader = _build(restored_audit), Lockstep(ONE, 1), _loader()
    restored.load_state_dict(state, fresh_loader, ONE, restored_lockstep, None)

    assert _ids(restored) == _ids(parts)
    assert restored.ledger.counts == parts.ledger.counts
    assert restored_audit.to_dict() == audit.to_dict()
    assert (restored_lockstep.capacity, restored_lockstep.seconds) == (6, 1.5)
    assert restored.cursor.resume and restored.cursor.raw_in_epoch == 3
    assert restored.selector.beta == parts.selector.beta
    # The restored cursor replays the fresh loader to where the saved one stood, and from
    # there both sets of parts pull, decide and buffer the same.
    restored_raw = restored.cursor.open(fresh_loader)
    assert restored_raw is not None
    _run(parts, raw, rounds=2)
    _run(restored, restored_raw, rounds=2)
    assert _ids(restored) == _ids(parts)
    assert restored.selector.beta == parts.selector.beta
    assert restored_audit.to_dict() == audit.to_dict()


def test_a_state_of_another_world_size_is_refused_before_anything_is_restored() -> None:
    parts, loader = _build(), _loader()
    raw = parts.cursor.open(loader)
    assert raw is not None
    _run(parts, raw, rounds=2)
    state = parts.state_dict(loader, RankInfo(rank=1, world_size=2), Lockstep(ONE, 6), None)
    fresh = _build()
    with pytest.raises(ValueError, match="saved by a job of 2 ranks but this one has 1"):
        fresh.load_state_dict(state, _loader(), ONE, Lockstep(ONE, 6), None)
    assert fresh.selector.history is not None and len(fresh.selector.history) == 0
    assert fresh.batcher.buffered == 0
    assert fresh.ledger.counts["samples_seen"] == 0


def test_a_state_of_another_policy_is_refused_before_the_other_parts_are_restored() -> None:
    parts, loader = _build(), _loader()
    raw = parts.cursor.open(loader)
    assert raw is not None
    _run(parts, raw, rounds=2)
    state = parts.state_dict(loader, ONE, Lockstep(ONE, 6), None)
    other = Parts.build(ss.TopK(0.4), "drop", seed=5, batch_size=4, padding=None, audit=None)
    with pytest.raises(ValueError, match=r"saved with policy RelativeProbabilistic\(.*TopK"):
        other.load_state_dict(state, _loader(), ONE, Lockstep(ONE, 6), None)
    assert other.batcher.buffered == 0
    assert other.ledger.counts["samples_seen"] == 0


def test_what_is_no_loader_state_is_refused() -> None:
    with pytest.raises(ValueError, match="not a smartsift loader state"):
        _build().load_state_dict(
            {"weights": torch.zeros(2)}, _loader(), ONE, Lockstep(ONE, 6), None
        )


def test_restored_batches_move_to_the_given_device() -> None:
    parts, loader = _build(), _loader()
    raw = parts.cursor.open(loader)
    assert raw is not None
    _run(parts, raw, rounds=3)
    assert parts.batcher.chunks and parts.batcher.ready
    state = parts.state_dict(loader, ONE, Lockstep(ONE, 6), None)
    restored = _build()
    restored.load_state_dict(state, _loader(), ONE, Lockstep(ONE, 6), torch.device("meta"))
    assert all(c[0].device.type == "meta" for c in restored.batcher.chunks)
    assert all(r.batch[0].device.type == "meta" for r in restored.batcher.ready)


class _StatefulLoader:
    """A loader with its own state, as torchdata's ``StatefulDataLoader`` has."""

    def __init__(self) -> None:
        self.position = 0
        self.iters = 0
        self.loaded: list[dict[str, Any]] = []

    def __iter__(self) -> Iterator[Any]:
        self.iters += 1
        return iter([])

    def state_dict(self) -> dict[str, Any]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.loaded.append(dict(state))


@pytest.mark.parametrize(("interrupted", "iters"), [(False, 0), (True, 1)])
def test_a_stateful_loader_restores_its_own_state_and_skips_an_abandoned_epoch(
    interrupted: bool, iters: int
) -> None:
    parts, loader = _build(), _StatefulLoader()
    loader.position = 7
    parts.cursor.in_epoch, parts.cursor.interrupted = True, interrupted
    state = _roundtrip(parts.state_dict(loader, ONE, Lockstep(ONE, 6), None))
    assert state[ckpt.RAW_LOADER] == {"position": 7}
    fresh_loader = _StatefulLoader()
    restored = _build()
    restored.load_state_dict(state, fresh_loader, ONE, Lockstep(ONE, 6), None)
    assert fresh_loader.loaded == [{"position": 7}]
    # Mid-epoch after an exception, the loader's next iter() would finish the abandoned epoch
    # where the live loader starts a new one: that iterator is drawn and left unused.
    assert fresh_loader.iters == iters
    assert restored.cursor.resume is not interrupted
