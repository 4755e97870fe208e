"""Property-based tests: the loader's promises hold for any sizes, policies and batch structures.

Every sample carries a unique id that also encodes its epoch (the dataset follows ``set_epoch``),
so each test can check, epoch by epoch, that every sample was trained exactly once or sifted or
dropped exactly once, that nothing leaks into the next epoch, and that the refined batches have
the promised sizes.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import pytest
import torch
from _resume import assert_resume_matches, run_epochs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.utils.data import DataLoader, Dataset

import smartsift as ss

# Tiny data with drop_last makes epochs that train nothing: the loader rightly warns of it.
pytestmark = pytest.mark.filterwarnings("ignore:This epoch pulled:UserWarning")

EPOCH = 10_000  # sample uid = epoch * EPOCH + index
STRUCTURES = ("tensor", "tuple", "dict", "namedtuple")
ID_KEYS: dict[str, Any] = {"tensor": None, "tuple": 1, "dict": "uid", "namedtuple": 0}


class Sample(NamedTuple):
    uid: int
    x: torch.Tensor


class EpochData(Dataset[Any]):
    """``n`` samples whose uid encodes the epoch; one of four batch structures."""

    def __init__(self, n: int, structure: str) -> None:
        self.n, self.structure, self.epoch = n, structure, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> Any:
        uid = self.epoch * EPOCH + index
        x = torch.tensor([float(uid), float(uid % 7)])
        if self.structure == "tensor":
            return torch.tensor([uid, 3 * uid])
        if self.structure == "tuple":
            return (x, uid)
        if self.structure == "dict":
            return {"uid": uid, "x": x, "meta": {"name": f"s{uid}", "w": uid / 2}}
        return Sample(uid, x)


def uids(batch: Any, structure: str) -> list[int]:
    """The sample uids of a batch, after checking that each sample stayed whole."""
    if structure == "tensor":
        assert batch[:, 1].tolist() == [3 * u for u in batch[:, 0].tolist()]
        return list(batch[:, 0].tolist())
    if structure == "tuple":
        x, ids = batch
    elif structure == "dict":
        x, ids = batch["x"], batch["uid"]
        assert batch["meta"]["name"] == [f"s{u}" for u in ids.tolist()]
        assert batch["meta"]["w"].tolist() == [u / 2 for u in ids.tolist()]
    else:
        assert isinstance(batch, Sample)
        x, ids = batch.x, batch.uid
    assert x[:, 0].tolist() == [float(u) for u in ids.tolist()]
    return list(ids.tolist())


def id_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """A loss that is a fixed, well-spread function of each sample's uid."""
    if isinstance(batch, torch.Tensor):
        ids = batch[:, 0]
    elif isinstance(batch, dict):
        ids = batch["uid"]
    elif isinstance(batch, Sample):
        ids = batch.uid
    else:
        ids = batch[1]
    return (ids.double() * 0.6180339887) % 1.0


policies = st.one_of(
    st.builds(
        ss.RelativeProbabilistic,
        beta=st.floats(0.1, 5.0),
        history=st.integers(1, 64),
    ),
    st.builds(ss.QuantileThreshold, exclude=st.floats(0.0, 0.95), history=st.integers(1, 64)),
    st.builds(ss.TopK, keep=st.floats(0.05, 1.0)),
    st.builds(ss.Uniform, keep=st.floats(0.05, 1.0)),
)


@st.composite
def configs(draw: st.DrawFn, workers: int) -> dict[str, Any]:
    return {
        "n": draw(st.one_of(st.sampled_from([0, 1]), st.integers(0, 45))),
        "raw_bs": draw(st.integers(1, 9)),
        "bs": draw(st.one_of(st.none(), st.integers(1, 10))),
        "policy": draw(policies),
        "drop_last": draw(st.booleans()),
        "sift_delay": draw(st.sampled_from([0, 0, 1, 2, 5])),
        "repeat": draw(st.booleans()),
        "structure": draw(st.sampled_from(STRUCTURES)),
        "seed": draw(st.integers(0, 2**31)),
        "workers": workers,
    }


def make_loader(cfg: dict[str, Any]) -> ss.SiftingDataLoader:
    data = EpochData(cfg["n"], cfg["structure"])
    raw = DataLoader(data, batch_size=cfg["raw_bs"], num_workers=cfg["workers"])
    key = ID_KEYS[cfg["structure"]]
    return ss.SiftingDataLoader(
        raw,
        torch.nn.Identity(),
        id_loss,
        cfg["policy"],
        sift_delay=cfg["sift_delay"],
        repeat_delay_per_epoch=cfg["repeat"],
        batch_size=cfg["bs"],
        drop_last=cfg["drop_last"],
        seed=cfg["seed"],
        audit=ss.SiftAudit(id_key=key) if key is not None else None,
    )


def _is_raw_batch(ids: list[int], epoch: int, n: int, raw_bs: int) -> bool:
    """Whether ``ids`` are exactly one raw batch of the (sequential) wrapped loader."""
    start = ids[0] - epoch * EPOCH
    return (
        start % raw_bs == 0
        and ids == list(range(ids[0], ids[0] + len(ids)))
        and (len(ids) == raw_bs or start + len(ids) == n)
    )


def check_epochs(cfg: dict[str, Any], epochs: int = 2) -> None:
    loader = make_loader(cfg)
    n, raw_bs, structure = cfg["n"], cfg["raw_bs"], cfg["structure"]
    before = loader.stats
    total_steps = 0
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        batches = [uids(b, structure) for b in loader]
        total_steps += len(batches)
        after = loader.stats
        trained = [u for ids in batches for u in ids]
        everything = [epoch * EPOCH + i for i in range(n)]

        # Nothing leaks from another epoch; order of arrival is kept; no sample twice.
        assert all(u // EPOCH == epoch for u in trained)
        assert trained == sorted(set(trained))

        # Counts: every sample of the epoch was seen, and trained, sifted or dropped once.
        delta = {k: getattr(after, k) - getattr(before, k) for k in after.as_dict() if k in (
            "samples_seen", "samples_kept", "samples_sifted", "samples_dropped",
            "samples_trained", "raw_batches", "steps", "epochs",
        )}  # fmt: skip
        assert delta["samples_seen"] == n
        assert delta["raw_batches"] == math.ceil(n / raw_bs)
        assert delta["samples_trained"] == len(trained) and delta["steps"] == len(batches)
        assert len(trained) + delta["samples_sifted"] + delta["samples_dropped"] == n
        assert delta["epochs"] == 1 and after.epochs == epoch + 1
        assert after.samples_buffered == 0
        assert after.samples_seen == after.samples_kept + after.samples_sifted
        assert after.samples_kept == (
            after.samples_trained + after.samples_dropped + after.samples_buffered
        )
        assert after.steps == total_steps

        # The audit names exactly which: trained, sifted and dropped partition the epoch.
        audit = loader.audit
        if audit is not None and n > 0:
            rec = audit.epoch(epoch)
            parts = trained + rec.sifted.tolist() + rec.dropped.tolist()
            assert sorted(parts) == everything
            assert rec.trained.tolist() == trained
            assert len(rec.kept) + len(rec.passed) == delta["samples_kept"]
            assert len(rec.sifted) == delta["samples_sifted"] == len(rec.sifted_losses)
            passed = set(rec.passed.tolist())
        else:
            passed = None

        # Sizes: the promised size, except pass-through raw batches and the epoch's last batch.
        promised = loader.batch_size
        if n:
            assert promised == (cfg["bs"] or raw_bs)  # default: the wrapped loader's batch size
        for k, ids in enumerate(batches):
            assert promised is not None and len(ids) > 0
            if len(ids) == promised:
                continue
            last = k == len(batches) - 1 and len(ids) < promised and not cfg["drop_last"]
            passed_through = (  # a raw batch passed through untouched during the delay
                cfg["sift_delay"] > 0
                and _is_raw_batch(ids, epoch, n, raw_bs)
                and (passed is None or passed >= set(ids))
            )
            assert last or passed_through, f"batch {k} of epoch {epoch} has {len(ids)} samples"
        before = after


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(workers=0))
def test_every_sample_is_trained_or_sifted_or_dropped_exactly_once(cfg: dict[str, Any]) -> None:
    check_epochs(cfg)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(workers=2))
def test_the_same_holds_with_two_workers(cfg: dict[str, Any]) -> None:
    check_epochs(cfg)


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(workers=0), where=st.floats(0.0, 1.0))
def test_resume_at_any_step_matches_the_uninterrupted_run(
    cfg: dict[str, Any], where: float
) -> None:
    total = len(run_epochs(make_loader(cfg), 2, set_epoch=True))
    stop = round(where * total)
    assert_resume_matches(lambda: make_loader(cfg), [stop], stop_after_epochs=[0], set_epoch=True)
