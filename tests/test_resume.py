"""Checkpoint and resume: a resumed loader yields exactly what an uninterrupted one yields.

The resume checks go through one helper, :func:`_resume.assert_resume_matches`, which saves
each state through ``torch.save`` and ``torch.load(..., weights_only=True)``; the rest check a
chain of resumes, resuming after a failure, and states that must be rejected.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from _resume import assert_resume_matches, canonical, roundtrip, run_epochs
from torch.utils.data import DataLoader, DistributedSampler
from torchdata.stateful_dataloader import StatefulDataLoader

import smartsift as ss

pytestmark = pytest.mark.filterwarnings("ignore:'set_vital' is deprecated")

POLICIES = [
    ss.RelativeProbabilistic(beta=1.0, history=16),
    ss.QuantileThreshold(exclude=0.4, history=16),
    ss.TopK(keep=0.5),
    ss.Uniform(keep=0.6),
]


def _model() -> torch.nn.Module:
    """A scoring model with fixed weights, never trained: identical in every run."""
    model = torch.nn.Linear(3, 1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g))
        model.bias.zero_()
    return model


def _tuple_data(n: int) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = torch.randn(n, generator=g)
    return [(x[i], y[i], i) for i in range(n)]


def _dict_data(n: int) -> list[dict[str, Any]]:
    """Nested dict samples with strings: batches hold nested dicts and lists of strings."""
    return [
        {"x": x, "target": {"y": y, "name": f"s{i}", "source": "train"}, "id": i}
        for x, y, i in _tuple_data(n)
    ]


def _tuple_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y, _ = batch
    return (model(x).squeeze(1) - y) ** 2


def _dict_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    return (model(batch["x"]).squeeze(1) - batch["target"]["y"]) ** 2


def _factory(
    *,
    n: int = 60,
    raw_bs: int = 8,
    policy: ss.Policy = POLICIES[0],
    structure: str = "tuple",
    kind: str = "plain",
    shuffle: bool = True,
    workers: int = 0,
    audit_key: str | int | None = None,
    **kwargs: Any,
) -> Callable[[], ss.SiftingDataLoader]:
    """Returns ``make_loader`` for :func:`assert_resume_matches`: fresh, identical loaders."""
    data = _dict_data(n) if structure == "dict" else _tuple_data(n)
    loss = _dict_loss if structure == "dict" else _tuple_loss

    def make_loader() -> ss.SiftingDataLoader:
        gen = torch.Generator().manual_seed(5) if shuffle else None
        cls = StatefulDataLoader if kind == "stateful" else DataLoader
        raw = cls(data, batch_size=raw_bs, shuffle=shuffle, generator=gen, num_workers=workers)
        audit = ss.SiftAudit(id_key=audit_key) if audit_key is not None else None
        return ss.SiftingDataLoader(raw, _model(), loss, policy, seed=3, audit=audit, **kwargs)

    return make_loader


def _total_steps(make_loader: Callable[[], ss.SiftingDataLoader], epochs: int = 2) -> int:
    return len(run_epochs(make_loader(), epochs))


def _flat(state: dict[str, Any]) -> dict[str, Any]:
    """The cursor's, batcher's and config's entries of a nested state, side by side."""
    return {
        **state["cursor"],
        **state["batcher"],
        **state["config"],
        "raw_loader": state["raw_loader"],
    }


def _every_stop(make_loader: Callable[[], ss.SiftingDataLoader], epochs: int = 2) -> list[int]:
    return list(range(_total_steps(make_loader, epochs) + 1))


def _covers_every_kind_of_stop(states: list[dict[str, Any]], leftover: bool = True) -> None:
    """The stop points included a start, a partly full buffer, an epoch end and epoch 1.

    With ``leftover``, an epoch ended with a smaller refined batch (or dropped leftovers), and
    one stop fell right after it, with the raw loader exhausted.
    """
    flat = [_flat(s) for s in states]
    assert any(not s["in_epoch"] and s["epoch"] == 0 for s in flat)  # the start
    assert any(s["in_epoch"] and sum(s["buffer_sizes"]) > 0 for s in flat)  # partly full buffer
    if leftover:
        assert any(s["in_epoch"] and s["flushed"] for s in flat)  # right after the last batch
    assert any(not s["in_epoch"] and s["epoch"] == 1 for s in flat)  # between epochs
    assert any(s["in_epoch"] and s["epoch"] == 1 and s["raw_in_epoch"] > 0 for s in flat)


# ------------------------------------------------------------------ plain DataLoader
@pytest.mark.parametrize("policy", POLICIES, ids=lambda p: type(p).__name__)
def test_plain_loader_resumes_exactly_at_every_step(policy: ss.Policy) -> None:
    make_loader = _factory(policy=policy, batch_size=7)
    states = assert_resume_matches(make_loader, _every_stop(make_loader))
    _covers_every_kind_of_stop(states)


@pytest.mark.parametrize("drop_last", [False, True])
def test_nested_dict_batches_with_strings_resume_exactly(drop_last: bool) -> None:
    make_loader = _factory(structure="dict", batch_size=5, drop_last=drop_last)
    states = assert_resume_matches(make_loader, _every_stop(make_loader))
    _covers_every_kind_of_stop(states, leftover=not drop_last)
    # The buffer is saved as plain containers.
    buffered = [s for s in map(_flat, states) if s["buffer"]]
    assert isinstance(buffered[0]["buffer"][0]["target"]["name"], list)


@pytest.mark.parametrize("repeat", [False, True])
def test_sift_delay_spanning_the_stop_point(repeat: bool) -> None:
    # 3 raw batches pass through unscored, then sifting starts: stops 1..4 fall inside the delay
    # and across its end; with repeat the delay comes back at the start of epoch 1.
    make_loader = _factory(sift_delay=3, repeat_delay_per_epoch=repeat, raw_bs=8, n=50)
    states = assert_resume_matches(make_loader, _every_stop(make_loader))
    done = "rounds_in_epoch" if repeat else "rounds_total"  # what the delay counts
    in_delay = [s for s in map(_flat, states) if s["in_epoch"] and 0 < s[done] < 3]
    assert any(s["epoch"] == 0 for s in in_delay)
    assert any(s["epoch"] == 1 for s in in_delay) == repeat
    assert any(
        s["in_epoch"] and s["epoch"] == 0 and s["rounds_total"] > 3 for s in map(_flat, states)
    )


def test_a_sampler_with_replacement_resumes_exactly() -> None:
    # RandomSampler(replacement=True) draws its indices lazily, 32 at a time, from its generator.
    data = _tuple_data(70)

    def make_loader() -> ss.SiftingDataLoader:
        sampler = torch.utils.data.RandomSampler(
            data, replacement=True, num_samples=70, generator=torch.Generator().manual_seed(2)
        )
        raw = DataLoader(data, batch_size=8, sampler=sampler)
        return ss.SiftingDataLoader(raw, _model(), _tuple_loss, ss.TopK(keep=0.5), seed=0)

    assert_resume_matches(make_loader, _every_stop(make_loader))


@pytest.mark.parametrize("kind", ["plain", "stateful"])
def test_resuming_twice_in_one_epoch(kind: str) -> None:
    # A state saved by a resumed loader, in the epoch it resumed, resumes exactly too.
    make_loader = _factory(n=100, kind=kind, shuffle=kind == "plain", batch_size=5)
    reference = run_epochs(make_loader(), 3)
    loader = make_loader()
    got = run_epochs(loader, 1)
    for steps in (3, 2):  # save at step 3 of epoch 1, resume, save again 2 steps later
        it = iter(loader)
        got += [(1, canonical(next(it))) for _ in range(steps)]
        state = roundtrip(loader.state_dict())
        loader = make_loader()
        loader.load_state_dict(state)
    got += run_epochs(loader, 2, first_epoch=1)
    assert got == reference
    assert loader.stats.steps == len(reference)


def test_plain_loader_with_workers_resumes_exactly() -> None:
    make_loader = _factory(workers=2, n=40)
    assert_resume_matches(make_loader, [2, 7], stop_after_epochs=[0])


def test_mid_epoch_resume_without_a_seeded_sampler_warns() -> None:
    data = _tuple_data(40)

    def make_loader() -> ss.SiftingDataLoader:
        raw = DataLoader(data, batch_size=8, shuffle=True)  # global RNG: order not reproducible
        return ss.SiftingDataLoader(raw, _model(), _tuple_loss, ss.TopK(keep=0.5), seed=0)

    first = make_loader()
    it = iter(first)
    next(it)
    state = roundtrip(first.state_dict())
    resumed = make_loader()
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="no seeded generator"):
        list(resumed)


# ------------------------------------------------------------------ torchdata StatefulDataLoader
def test_stateful_dataloader_resumes_exactly_at_every_step() -> None:
    # torchdata's single-process StatefulDataLoader does not itself restore a shuffled order
    # exactly across epoch ends, so this one reads in order; the shuffled case runs with workers.
    make_loader = _factory(kind="stateful", shuffle=False, batch_size=6)
    states = assert_resume_matches(make_loader, _every_stop(make_loader))
    _covers_every_kind_of_stop(states)
    assert all(s["raw_loader"] is not None for s in map(_flat, states))


def test_stateful_dataloader_with_two_workers_resumes_exactly() -> None:
    make_loader = _factory(kind="stateful", workers=2, structure="dict", n=40, batch_size=6)
    states = assert_resume_matches(make_loader, [3, 6], stop_after_epochs=[0])
    assert any(s["in_epoch"] and s["buffer"] for s in map(_flat, states))


# ------------------------------------------------------------------ the audit travels along
def test_the_audit_is_saved_and_resumed_with_the_loader() -> None:
    make_loader = _factory(structure="dict", audit_key="id", drop_last=True, batch_size=7)
    reference = make_loader()
    run_epochs(reference, 2)
    assert reference.audit is not None
    first = make_loader()
    it = iter(first)
    for _ in range(3):
        next(it)
    state = roundtrip(first.state_dict())
    resumed = make_loader()
    resumed.load_state_dict(state)
    run_epochs(resumed, 2)
    assert resumed.audit is not None
    assert resumed.audit.to_dict() == reference.audit.to_dict()
    assert len(reference.audit.epoch(1).dropped) > 0  # drop_last dropped some kept samples


# ------------------------------------------------------------------ after an interruption
class InterruptOnce:
    """A loss function that raises KeyboardInterrupt on its ``at``-th call after :meth:`arm`."""

    def __init__(self, at: int) -> None:
        self.at, self.calls, self.armed = at, 0, False

    def arm(self) -> None:
        self.calls, self.armed = 0, True

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        self.calls += 1
        if self.armed and self.calls == self.at:
            raise KeyboardInterrupt
        return _tuple_loss(model, batch)


@pytest.mark.parametrize(("kind", "workers"), [("plain", 0), ("stateful", 0), ("stateful", 2)])
def test_a_checkpoint_after_an_interrupt_inside_the_loader_resumes_like_the_live_loader(
    kind: str, workers: int
) -> None:
    # An exception inside the loader (here Ctrl-C in loss_fn, with a raw batch half done)
    # abandons the epoch: iterating again starts the next epoch. A checkpoint taken then resumes
    # the same way. (Leaving the loop between batches does not: see _resume.py.)
    data = _tuple_data(60)
    shuffle = workers > 0 or kind == "plain"  # see test_stateful_dataloader_resumes_exactly...

    def make_loader(loss: Callable[..., torch.Tensor]) -> ss.SiftingDataLoader:
        gen = torch.Generator().manual_seed(5) if shuffle else None
        cls = StatefulDataLoader if kind == "stateful" else DataLoader
        raw = cls(data, batch_size=8, shuffle=shuffle, generator=gen, num_workers=workers)
        return ss.SiftingDataLoader(raw, _model(), loss, ss.TopK(keep=0.75), batch_size=5, seed=3)

    def interrupted() -> ss.SiftingDataLoader:
        loss = InterruptOnce(at=4)
        loader = make_loader(loss)
        run_epochs(loader, 1)  # a whole epoch first
        loss.arm()
        with pytest.raises(KeyboardInterrupt):
            list(loader)
        loss.armed = False
        return loader

    live = interrupted()
    expected = run_epochs(live, 2, first_epoch=2)
    state = roundtrip(interrupted().state_dict())
    assert state["cursor"]["interrupted"] and sum(state["batcher"]["buffer_sizes"]) > 0
    resumed = make_loader(InterruptOnce(at=0))
    resumed.load_state_dict(state)
    assert run_epochs(resumed, 2, first_epoch=2) == expected
    assert resumed.stats.samples_dropped == live.stats.samples_dropped > 0
    assert resumed.stats.as_dict()["samples_trained"] == live.stats.samples_trained


# ------------------------------------------------------------------ what cannot be resumed
def test_a_state_saved_with_another_policy_is_rejected() -> None:
    state = roundtrip(_factory(policy=ss.TopK(keep=0.5))().state_dict())
    with pytest.raises(ValueError, match="saved with policy TopK"):
        _factory(policy=ss.TopK(keep=0.4))().load_state_dict(state)


def test_a_state_saved_on_another_world_size_is_rejected() -> None:
    state = roundtrip(_factory()().state_dict())
    state["config"]["world_size"] = 2
    with pytest.raises(ValueError, match="2 ranks but this one has 1"):
        _factory()().load_state_dict(state)


def test_an_unknown_state_version_is_rejected() -> None:
    state = roundtrip(_factory()().state_dict())
    state["version"] = 99
    with pytest.raises(ValueError, match="version 99"):
        _factory()().load_state_dict(state)


Pair = namedtuple("Pair", ["x", "meta"])


def _plain_leaves(obj: Any, path: str = "state") -> None:
    """Asserts that ``obj`` holds only tensors, plain containers and plain values."""
    if isinstance(obj, dict):
        for key, value in obj.items():
            assert isinstance(key, (str, int)), f"{path}: key {key!r}"
            _plain_leaves(value, f"{path}[{key!r}]")
    elif type(obj) in (list, tuple):
        for i, value in enumerate(obj):
            _plain_leaves(value, f"{path}[{i}]")
    else:
        assert obj is None or type(obj) in (torch.Tensor, int, float, str, bool), (
            f"{path} is a {type(obj).__name__}"
        )


def test_the_state_holds_only_tensors_and_plain_values() -> None:
    # Batches of named tuples holding NumPy arrays; the state is saved with some samples
    # buffered and a refined batch ready, so both are in it.
    def collate(samples: list[tuple[torch.Tensor, torch.Tensor, int]]) -> Pair:
        return Pair(
            torch.stack([s[0] for s in samples]),
            {"y": np.array([float(s[1]) for s in samples]), "id": [s[2] for s in samples]},
        )

    def loss(model: torch.nn.Module, batch: Pair) -> torch.Tensor:
        return model(batch.x).squeeze(1) ** 2

    data = _tuple_data(40)

    def make_loader() -> ss.SiftingDataLoader:
        raw = DataLoader(data, batch_size=8, collate_fn=collate)
        audit = ss.SiftAudit(id_key=(1, "id"))  # the ids are at batch.meta["id"]
        return ss.SiftingDataLoader(
            raw, _model(), loss, ss.TopK(keep=0.875), batch_size=3, seed=0, audit=audit
        )

    loader = make_loader()
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert state["batcher"]["ready"] and state["batcher"]["buffer"]
    _plain_leaves(state)
    loaded = roundtrip(state)  # weights_only=True
    assert loaded["batcher"]["buffer"][0][1]["id"] == state["batcher"]["buffer"][0][1]["id"]
    states = assert_resume_matches(make_loader, _every_stop(make_loader))
    _covers_every_kind_of_stop(states)


def test_load_state_dict_while_iterating_is_refused() -> None:
    loader = _factory()()
    state = loader.state_dict()
    it = iter(loader)
    next(it)
    with pytest.raises(RuntimeError, match="while the loader is being iterated"):
        loader.load_state_dict(state)


# ------------------------------------------------------------------ DDP
def _ddp_resume(rank: int, world_size: int) -> list[tuple[int, list[int], Any]]:
    """Runs in a spawned rank: resume each rank from its own state, at every step.

    Returns, with and without ``drop_last``, the run's step count, the ids this rank trained on
    and its audit.
    """
    data = _tuple_data(50)
    out = []
    for drop_last in (False, True):

        def make_loader(drop_last: bool = drop_last) -> ss.SiftingDataLoader:
            sampler = DistributedSampler(data, shuffle=True, seed=4)
            raw = DataLoader(data, batch_size=4, sampler=sampler)
            return ss.SiftingDataLoader(
                raw,
                _model(),
                _tuple_loss,
                ss.RelativeProbabilistic(beta=1.0, history=32),
                batch_size=3,
                drop_last=drop_last,
                seed=1,
                audit=ss.SiftAudit(id_key=2),
            )

        reference = make_loader()
        trained = []
        for epoch in range(2):
            reference.set_epoch(epoch)
            trained += [i for _, _, ids in reference for i in ids.tolist()]
        total = reference.stats.steps  # equal on every rank
        states = assert_resume_matches(make_loader, range(total + 1), set_epoch=True)
        _check_comm_s_resumes(make_loader)
        assert all(s["world_size"] == world_size and s["rank"] == rank for s in map(_flat, states))
        assert any(s["in_epoch"] and s["buffer"] for s in map(_flat, states))
        out.append((total, trained, reference.audit))
    return out


def _check_comm_s_resumes(make_loader: Callable[[], ss.SiftingDataLoader]) -> None:
    """The time in collectives is restored with the state, and counts on (under DDP)."""
    first = make_loader()
    it = iter(first)
    next(it)
    saved = first.stats.comm_s
    resumed = make_loader()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert saved > 0 and resumed.stats.comm_s == saved
    it.close()
    list(resumed)
    assert resumed.stats.comm_s > saved


def test_ddp_ranks_resume_each_from_its_own_state() -> None:
    from _ddp import run_ranks

    rank0, rank1 = run_ranks(_ddp_resume, 2, timeout=120)
    for (total0, trained0, audit0), (total1, trained1, audit1) in zip(rank0, rank1, strict=True):
        assert total0 == total1 > 2
        # The ranks' audits together name exactly the samples no rank trained on.
        audit = ss.SiftAudit.merge([audit0, audit1])
        assert audit.epochs == [0, 1]
        assert set(audit.epoch(0).seen.tolist()) == set(range(50))
        never = set(audit.never_trained(ids=50).tolist())
        assert never == set(range(50)) - set(trained0 + trained1)


# ------------------------------------------------------------------ timers continue
_TIMERS = ("data_s", "scoring_s", "selection_s", "comm_s")


def _timers(loader: ss.SiftingDataLoader) -> dict[str, float]:
    return {name: getattr(loader.stats, name) for name in _TIMERS}


@pytest.mark.parametrize("sift_delay", [0, 3])
def test_timers_continue_from_their_saved_values(sift_delay: int) -> None:
    make_loader = _factory(batch_size=5, sift_delay=sift_delay)
    first = make_loader()
    it = iter(first)
    for _ in range(5):
        next(it)
    saved = _timers(first)
    assert saved["data_s"] > 0 and saved["scoring_s"] > 0 and saved["selection_s"] > 0
    resumed = make_loader()
    resumed.load_state_dict(roundtrip(first.state_dict()))
    assert _timers(resumed) == saved  # restored, not restarted at zero
    run_epochs(resumed, 2)
    after = _timers(resumed)
    assert all(after[k] >= saved[k] for k in _TIMERS)
    assert after["scoring_s"] > saved["scoring_s"]  # and they keep counting
