"""Tests of the guards against chasing noise (``ss.Guarded``): each guard alone, in the selector,
through a real ``SiftingDataLoader`` (ids and labels read from the batch), on resume, and under
DDP, where ids and labels travel with the losses so that every rank decides every rank's mask."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
import torch
import torch.distributed as dist
from _ddp import run_ranks
from _resume import assert_resume_matches, roundtrip
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, TensorDataset

import smartsift as ss
from smartsift.batches.structure import per_sample_ints
from smartsift.engine.history import LossHistory
from smartsift.engine.selector import Selector
from smartsift.engine.stats import conservation_errors
from smartsift.policies.guards import (
    NOISE_HISTORY,
    StreakTable,
    class_floor_mask,
    noise_mask,
    streak_mask,
)

MODEL = torch.nn.Linear(2, 2)


def _fixed_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Each sample's loss is its first feature: fixed per sample, whatever the model."""
    _, x, _ = batch
    return x[:, 0].double()


def _data(losses: torch.Tensor, labels: torch.Tensor | None = None) -> ss.IndexedDataset:
    n = len(losses)
    x = torch.stack([losses.double(), torch.zeros(n, dtype=torch.float64)], dim=1)
    y = torch.zeros(n, dtype=torch.long) if labels is None else labels
    return ss.IndexedDataset(TensorDataset(x, y))  # batches: (ids, x, y)


def _epoch_kept(audit: ss.SiftAudit, epochs: int) -> list[set[int]]:
    return [set(audit.epoch(e).kept.tolist()) for e in range(epochs)]


# ----------------------------------------------------------------------------- the pure parts
def test_noise_mask_marks_the_top_of_the_history() -> None:
    history = np.arange(1.0, 101.0)
    marked = noise_mask(history, history, 0.05)
    assert np.flatnonzero(marked).tolist() == [95, 96, 97, 98, 99]  # losses 96..100
    assert not noise_mask(np.array([0.0, 50.0]), history, 0.05).any()


def test_streak_mask_and_table() -> None:
    table = StreakTable()
    ids = np.array([0, 7, 3])
    for kept in ([True, True, False], [True, False, True], [True, True, True]):
        table.update(ids, np.array(kept))
    assert table.get(ids).tolist() == [3, 1, 2]
    assert table.get(np.array([1000])).tolist() == [0]  # never seen
    assert streak_mask(table.get(ids), 2).tolist() == [True, False, True]
    restored = StreakTable()
    restored.load_state_dict(roundtrip({"s": table.state_dict()})["s"])
    assert restored.get(ids).tolist() == [3, 1, 2] and len(restored) == 3


def test_class_floor_adds_back_the_highest_losses_not_excluded_first() -> None:
    losses = np.array([9.0, 0.1, 0.3, 0.2, 0.4, 5.0])
    labels = np.array([0, 1, 1, 1, 1, 0])
    mask = np.array([True, False, False, False, False, True])  # class 1 starved
    out = class_floor_mask(mask, losses, labels, 0.5)
    assert out.tolist() == [True, False, True, False, True, True]  # 2 of 4: losses 0.4, 0.3
    excluded = np.array([False, False, False, False, True, False])  # 0.4 was noise
    out = class_floor_mask(mask, losses, labels, 0.5, excluded)
    assert out.tolist() == [True, False, True, True, False, True]  # 0.3 and 0.2 instead
    # Too few samples left that no guard excluded: the excluded ones fill in, lowest first.
    excluded = np.array([False, True, True, True, False, False])
    out = class_floor_mask(mask, losses, labels, 0.75, excluded)
    assert out.tolist() == [True, True, False, True, True, True]  # 0.4, then 0.1 and 0.2
    # A class already at its floor is left alone; a floor of 0 changes nothing.
    assert class_floor_mask(mask, losses, labels, 0.0).tolist() == mask.tolist()


def test_per_sample_ints_reads_paths_and_names_the_argument() -> None:
    batch = {"meta": {"id": torch.tensor([3, 4])}, "x": torch.zeros(2)}
    assert per_sample_ints(batch, ("meta", "id"), 2, "id_key").tolist() == [3, 4]
    with pytest.raises(ValueError, match="label_key found no entry 'y'"):
        per_sample_ints(batch, "y", 2, "label_key")
    with pytest.raises(ValueError, match="label_key expected 2 integers"):
        per_sample_ints(batch, "x", 2, "label_key")


# ----------------------------------------------------------------------------- the policy
def test_guarded_validates_its_settings() -> None:
    base = ss.TopK(0.5)
    with pytest.raises(ValueError, match="at least one guard"):
        ss.Guarded(base)
    with pytest.raises(ValueError, match="exclude_top"):
        ss.Guarded(base, exclude_top=1.0)
    with pytest.raises(ValueError, match="max_streak"):
        ss.Guarded(base, max_streak=0, id_key=0)
    with pytest.raises(ValueError, match="class_floor"):
        ss.Guarded(base, class_floor=1.5, label_key=1)
    with pytest.raises(ValueError, match="`id_key`"):
        ss.Guarded(base, max_streak=2)
    with pytest.raises(ValueError, match="`label_key`"):
        ss.Guarded(base, class_floor=0.1)
    with pytest.raises(TypeError, match="id_key"):
        ss.Guarded(base, max_streak=2, id_key=1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="inside Auto"):
        ss.Guarded(ss.Auto(base), exclude_top=0.1)
    with pytest.raises(TypeError, match="all guards to one"):
        ss.Guarded(ss.Guarded(base, exclude_top=0.1), exclude_top=0.1)


def test_guarded_describes_itself_and_matches_by_value() -> None:
    policy = ss.Guarded(ss.RelativeProbabilistic(beta=1), exclude_top=0.1, max_streak=2, id_key=0)
    same = ss.Guarded(ss.RelativeProbabilistic(beta=1.0), exclude_top=0.1, max_streak=2, id_key=0)
    other = ss.Guarded(ss.RelativeProbabilistic(beta=2.0), exclude_top=0.1, max_streak=2, id_key=0)
    assert same.matches(roundtrip({"d": policy.describe()})["d"])
    assert not other.matches(policy.describe())
    assert repr(policy).startswith("Guarded(RelativeProbabilistic(beta=1, history=500), ")


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        (ss.RelativeProbabilistic(beta=1.0), 0.5 - (1 - 0.9**2) / 2),
        (ss.TopK(0.5), 0.4),
        (ss.Uniform(0.5), 0.45),
        (ss.RelativeProbabilistic(keep=0.3), 0.3),
    ],
)
def test_expected_keep_counts_the_noise_guard(policy: ss.Policy, expected: float) -> None:
    assert ss.Guarded(policy, exclude_top=0.1).expected_keep == pytest.approx(expected)


def test_the_noise_guard_over_a_policy_without_history_ranks_against_its_own() -> None:
    guarded = ss.Guarded(ss.TopK(0.5), exclude_top=0.1)
    assert guarded.history == NOISE_HISTORY and isinstance(guarded.make_history(), LossHistory)
    assert ss.Guarded(ss.QuantileThreshold(0.5, history=64), exclude_top=0.1).history == 64


# ----------------------------------------------------------------------------- in the selector
def test_guards_that_do_not_bind_leave_the_policy_and_its_random_stream_alone() -> None:
    rng = np.random.default_rng(0)
    plain = Selector(ss.RelativeProbabilistic(beta=1.0, history=256), seed=3)
    guarded = Selector(
        ss.Guarded(ss.RelativeProbabilistic(beta=1.0, history=256), class_floor=0.01, label_key=1),
        seed=3,
    )
    for _ in range(20):
        losses = rng.exponential(size=32)
        labels = np.zeros(32, dtype=np.int64)  # one class: a floor of 1 sample, always met
        a = plain.decide([losses]).masks[0]
        b = guarded.decide([losses], labels=[labels]).masks[0]
        assert a.tolist() == b.tolist()


def test_selector_applies_every_guard_to_every_rank() -> None:
    policy = ss.Guarded(
        ss.TopK(0.5), exclude_top=0.25, max_streak=1, class_floor=0.5, id_key=0, label_key=1
    )
    selector = Selector(policy, seed=0)
    losses = [np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0])]
    ids = [np.array([0, 1, 2, 3]), np.array([4, 5, 6, 7])]
    labels = [np.array([0, 0, 1, 1]), np.array([0, 0, 0, 0])]
    first = selector.decide(losses, ids=ids, labels=labels)
    # History 1..8: losses 7 and 8 are the top quarter. TopK keeps the top half of each rank;
    # rank 0's class 0 (losses 1, 2) gets its floor of one back; rank 1 keeps 5, 6 after the
    # noise guard takes 7 and 8 (its floor of two is met).
    assert first.masks[0].tolist() == [False, True, True, True]
    assert first.masks[1].tolist() == [True, True, False, False]
    second = selector.decide(losses, ids=ids, labels=labels)
    # Kept once already (max_streak=1): sifted now. The floor takes, per class, first what no
    # guard excluded (rank 0's loss 1), then the excluded, lowest loss first (loss 3; rank 1's
    # 5 and 6).
    assert second.masks[0].tolist() == [True, False, True, False]
    assert second.masks[1].tolist() == [True, True, False, False]
    state = roundtrip(selector.state_dict())
    resumed = Selector(policy, seed=0)
    resumed.load_state_dict(state)
    assert resumed.decide(losses, ids=ids, labels=labels).masks[0].tolist() == (
        selector.decide(losses, ids=ids, labels=labels).masks[0].tolist()
    )


def test_selector_names_what_a_guard_is_missing() -> None:
    selector = Selector(ss.Guarded(ss.TopK(0.5), max_streak=1, id_key=0))
    with pytest.raises(ValueError, match="needs each sample's id"):
        selector.decide([np.array([1.0, 2.0])])


def test_probabilities_follow_the_guards() -> None:
    selector = Selector(ss.Guarded(ss.Uniform(0.5), exclude_top=0.25), seed=0)
    decision = selector.decide([np.array([1.0, 2.0, 3.0, 4.0])], probabilities=True)
    assert decision.probabilities is not None
    p = decision.probabilities[0]
    assert p[3] == 0.0 and set(p[:3].tolist()) == {0.5}


# ----------------------------------------------------------------------------- in the loader
def test_noise_guard_in_the_loader_drops_the_top_of_the_history() -> None:
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(200, generator=g)
    audit = ss.SiftAudit(id_key=0)
    policy = ss.Guarded(ss.RelativeProbabilistic(beta=1.0, history=1000), exclude_top=0.1)
    loader = ss.SiftingDataLoader(
        DataLoader(_data(losses), batch_size=20), MODEL, _fixed_loss, policy, audit=audit, seed=0
    )
    list(loader)
    seen: list[float] = []
    for start in range(0, 200, 20):
        batch = losses[start : start + 20].double().numpy()
        seen.extend(batch.tolist())
        top = np.sort(seen)[math.floor(0.9 * len(seen)) :]  # what the guard must drop
        kept = set(audit.epoch(0).kept.tolist()) & set(range(start, start + 20))
        assert not kept & {start + i for i, v in enumerate(batch) if v in top}
    record = audit.epoch(0)
    assert len(record.kept) + len(record.sifted) == 200
    assert 0.3 < len(record.kept) / 200 < 0.5  # the rule's half, less the top tenth's share


def test_streak_cap_in_the_loader_rotates_persistently_kept_samples() -> None:
    losses = torch.linspace(0.0, 1.0, 64)
    audit = ss.SiftAudit(id_key=0)
    policy = ss.Guarded(ss.TopK(0.5), max_streak=2, id_key=0)
    loader = ss.SiftingDataLoader(
        DataLoader(_data(losses), batch_size=16), MODEL, _fixed_loss, policy, audit=audit, seed=0
    )
    for _ in range(6):
        list(loader)
    kept = _epoch_kept(audit, 6)
    top = set(range(8, 16)) | set(range(24, 32)) | set(range(40, 48)) | set(range(56, 64))
    # Kept twice in a row, then sifted once (guards only remove: nobody takes their place).
    assert kept[0] == kept[1] == top and kept[2] == set()
    assert kept[3] == kept[4] == top and kept[5] == set()
    for i in range(64):
        runs = "".join("1" if i in k else "0" for k in kept)
        assert "111" not in runs, (i, runs)
    assert conservation_errors(loader.stats) == []


def test_class_floor_in_the_loader_keeps_every_class() -> None:
    labels = torch.arange(120) % 3
    losses = torch.where(labels == 0, 0.01, 1.0) + 0.001 * torch.arange(120)  # class 0: easy

    def run(policy: ss.Policy) -> list[int]:
        audit = ss.SiftAudit(id_key=0)
        loader = ss.SiftingDataLoader(
            DataLoader(_data(losses, labels), batch_size=30), MODEL, _fixed_loss, policy,
            audit=audit, seed=0,
        )  # fmt: skip
        list(loader)
        return audit.epoch(0).kept.tolist()

    plain = run(ss.TopK(0.5))
    floored = run(ss.Guarded(ss.TopK(0.5), class_floor=0.25, label_key=2))
    assert not [i for i in plain if labels[i] == 0]  # starved without the floor
    per_batch = [
        [i for i in floored if labels[i] == 0 and start <= i < start + 30]
        for start in range(0, 120, 30)
    ]
    assert [len(ids) for ids in per_batch] == [math.ceil(0.25 * 10)] * 4


def test_missing_ids_fail_before_the_exchange_with_the_setting_named() -> None:
    data = TensorDataset(torch.randn(8, 2), torch.zeros(8, dtype=torch.long))
    policy = ss.Guarded(ss.TopK(0.5), max_streak=1, id_key="index")
    loader = ss.SiftingDataLoader(DataLoader(data, batch_size=4), MODEL, _ce2, policy)
    with pytest.raises(ValueError, match="`id_key`='index'"):
        list(loader)


def _ce2(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y, reduction="none")


def test_guarded_loader_resumes_with_its_streaks() -> None:
    g = torch.Generator().manual_seed(1)
    losses = torch.rand(48, generator=g)
    labels = torch.randint(0, 3, (48,), generator=g)

    def make() -> ss.SiftingDataLoader:
        policy = ss.Guarded(
            ss.RelativeProbabilistic(beta=1.0, history=64), exclude_top=0.1, max_streak=1,
            class_floor=0.2, id_key=0, label_key=2,
        )  # fmt: skip
        order = torch.Generator().manual_seed(2)
        raw = DataLoader(_data(losses, labels), batch_size=12, shuffle=True, generator=order)
        return ss.SiftingDataLoader(raw, MODEL, _fixed_loss, policy, batch_size=6, seed=0)

    states = assert_resume_matches(make, [0, 3, 7], epochs=3)
    assert any(len(s["selector"]["streaks"]["ids"]) for s in states)


# ----------------------------------------------------------------------------- under DDP
DDP_N, DDP_BATCH, DDP_EPOCHS = 96, 8, 3


def _ddp_setting() -> tuple[torch.Tensor, torch.Tensor, ss.Guarded]:
    g = torch.Generator().manual_seed(0)
    losses = torch.rand(DDP_N, generator=g)
    labels = torch.randint(0, 3, (DDP_N,), generator=g)
    policy = ss.Guarded(
        ss.TopK(0.5), exclude_top=0.1, max_streak=1, class_floor=0.2, id_key=0, label_key=2
    )
    return losses, labels, policy


def guarded_ranks(rank: int, world_size: int) -> dict[str, Any]:
    """Every rank sifts its shard with all three guards; returns what it decided."""
    losses, labels, policy = _ddp_setting()
    data = _data(losses, labels)
    sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
    audit = ss.SiftAudit(id_key=0)
    # A batch sampler: the loader has no batch_size, so the first round's message outgrows
    # the agreed capacity and is resent, ids and labels included.
    batches = BatchSampler(sampler, DDP_BATCH, drop_last=False)
    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_sampler=batches), MODEL, _fixed_loss, policy, audit=audit, seed=0
    )
    steps = []
    for epoch in range(DDP_EPOCHS):
        loader.set_epoch(epoch)
        steps.append(sum(1 for _ in loader))
    streaks = loader.state_dict()["selector"]["streaks"]
    return {
        "steps": steps,
        "streaks": (streaks["ids"].tolist(), streaks["streaks"].tolist()),
        "kept": [sorted(audit.epoch(e).kept.tolist()) for e in range(DDP_EPOCHS)],
        "stats": loader.global_stats(),
    }


def _replay(world_size: int) -> list[list[int]]:
    """The kept ids per epoch of one selector fed every rank's raw batches, round by round."""
    losses, labels, policy = _ddp_setting()
    data = _data(losses, labels)
    selector = Selector(policy, seed=0)
    kept: list[list[int]] = []
    for epoch in range(DDP_EPOCHS):
        orders = []
        for rank in range(world_size):
            sampler = DistributedSampler(data, world_size, rank, shuffle=True, seed=0)
            sampler.set_epoch(epoch)
            orders.append(np.array(list(sampler)))
        out: list[int] = []
        for start in range(0, len(orders[0]), DDP_BATCH):
            ids = [o[start : start + DDP_BATCH] for o in orders]
            decision = selector.decide(
                [losses.double().numpy()[i] for i in ids],
                ids=ids,
                labels=[labels.numpy()[i] for i in ids],
            )
            out += [int(i) for r, m in zip(ids, decision.masks, strict=True) for i in r[m]]
        kept.append(sorted(out))
    return kept


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)
def test_guards_under_ddp_decide_alike_on_every_rank() -> None:
    ranks = run_ranks(guarded_ranks, 2, timeout=120)
    a, b = ranks
    assert a["steps"] == b["steps"]
    assert a["streaks"] == b["streaks"]  # every rank saw every rank's ids
    # What the ranks kept together is what one selector decides from all the ranks' losses,
    # ids and labels: they crossed the exchange intact, in rank order.
    together = [sorted(a["kept"][e] + b["kept"][e]) for e in range(DDP_EPOCHS)]
    assert together == _replay(2)
    assert conservation_errors(a["stats"]) == []
