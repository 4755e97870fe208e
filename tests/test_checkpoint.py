"""The checkpoint format: version-2 nested states, and version-1 states of the first release.

``tests/data/loader_state_v1.pt`` holds states saved by the first release's loader mid-epoch,
with the batches that loader yielded after them (see ``_v1_state.py``, which also rebuilds the
same loaders with the current release).
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

import pytest
import torch
from _resume import roundtrip
from _v1_state import CONFIGS, EPOCHS, FIXTURE, counters, make_loader

import smartsift as ss
from smartsift.engine import checkpoint as ckpt
from smartsift.engine.stats import conservation_errors

NESTED_KEYS = {
    ckpt.VERSION_KEY,
    ckpt.CONFIG,
    ckpt.SELECTOR,
    ckpt.BATCHER,
    ckpt.CURSOR,
    ckpt.RAW_LOADER,
    ckpt.STATS,
    ckpt.COMM,
    ckpt.AUDIT,
}


@pytest.fixture(scope="module")
def v1() -> dict[str, Any]:
    fixture: dict[str, Any] = torch.load(FIXTURE, weights_only=True)
    return fixture


def _v1_state(v1: dict[str, Any], name: str) -> dict[str, Any]:
    return copy.deepcopy(v1[name]["state"])


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_version_1_state_resumes_with_the_batches_the_first_release_yielded(
    v1: dict[str, Any], name: str
) -> None:
    recorded = v1[name]
    state = _v1_state(v1, name)
    assert state["version"] == 1 and state["in_epoch"] and sum(state["buffer_sizes"]) > 0
    loader = make_loader(name)
    loader.load_state_dict(state)
    with warnings.catch_warnings():
        # The first release did not save the steps of the epoch (see the test below).
        warnings.filterwarnings("ignore", "This epoch pulled")
        batches = [b for _ in range(state["epoch"], EPOCHS) for b in loader]
    assert [len(ids) for _, _, ids in batches] == recorded["sizes"].tolist()
    assert torch.equal(torch.cat([ids for _, _, ids in batches]), recorded["ids"])
    assert torch.equal(torch.cat([x for x, _, _ in batches]), recorded["x"])
    assert torch.equal(torch.cat([y for _, y, _ in batches]), recorded["y"])
    assert counters(loader) == recorded["counters"]
    assert conservation_errors(loader.stats) == []


def test_a_version_1_state_resumed_mid_epoch_does_not_warn_of_an_epoch_that_trained(
    v1: dict[str, Any],
) -> None:
    # The state was saved after 6 batches of epoch 0; the rest of epoch 0 yields no batch (its
    # leftovers are dropped with drop_last), so the epoch trained on 6 batches, not nothing.
    state = _v1_state(v1, "relative")
    assert state["stats"]["counts"]["steps"] == CONFIGS["relative"][2] and state["epoch"] == 0
    loader = make_loader("relative")
    loader.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rest = list(loader)
    assert rest == [] and loader.stats.samples_dropped > 0


def test_the_version_1_fixture_covers_a_ready_batch_and_a_loss_history(
    v1: dict[str, Any],
) -> None:
    assert v1["topk"]["state"]["ready"]  # a formed batch waiting to be yielded
    assert v1["relative"]["state"]["history"]["values"].numel() > 0
    assert FIXTURE.stat().st_size < 50_000


def test_upgrade_nests_a_version_1_state_under_the_named_keys(v1: dict[str, Any]) -> None:
    old = _v1_state(v1, "relative")
    new = ckpt.upgrade(old)
    assert set(new) == NESTED_KEYS and new[ckpt.VERSION_KEY] == ckpt.VERSION
    assert new[ckpt.SELECTOR]["policy"] == ss.RelativeProbabilistic(1.0, history=16).describe()
    assert new[ckpt.BATCHER]["buffer_sizes"] == old["buffer_sizes"]
    assert new[ckpt.CURSOR]["raw_in_epoch"] == old["raw_in_epoch"]
    assert new[ckpt.COMM]["capacity"] == old["capacity"]
    assert ckpt.upgrade(new) is new  # the current version passes through
    roundtrip(new)  # still loads with weights_only=True


@pytest.mark.parametrize("version", [0, 3, 99, None, "2"])
def test_upgrade_refuses_unknown_versions(version: Any) -> None:
    with pytest.raises(ValueError, match=rf"got version {version!r}.*versions 1 and 2"):
        ckpt.upgrade({ckpt.VERSION_KEY: version})


@pytest.mark.parametrize("state", [{}, {"policy": "TopK(keep=0.5)"}, [1, 2], None])
def test_upgrade_refuses_what_is_not_a_loader_state(state: Any) -> None:
    with pytest.raises(ValueError, match="not a smartsift loader state"):
        ckpt.upgrade(state)


def test_a_version_1_policy_is_matched_by_value(v1: dict[str, Any]) -> None:
    state = _v1_state(v1, "relative")
    state["policy"] = "RelativeProbabilistic(beta=1, history=16)"  # an int where 1.0 is built
    make_loader("relative").load_state_dict(state)
    state["policy"] = "RelativeProbabilistic(beta=2.0, history=16)"
    with pytest.raises(ValueError, match=r"beta=2\.0.*RelativeProbabilistic\(beta=1\.0"):
        make_loader("relative").load_state_dict(state)


def test_describe_repr_keeps_an_unparsable_repr_as_the_type() -> None:
    assert ckpt.describe_repr("<lambda>") == {"type": "<lambda>", "fields": {}}
    assert ckpt.describe_repr("TopK(keep=0.5)") == ss.TopK(0.5).describe()


def test_a_version_2_state_has_the_named_keys_and_loads_with_weights_only() -> None:
    loader = make_loader("topk")
    it = iter(loader)
    for _ in range(3):
        next(it)
    state = loader.state_dict()
    assert set(state) == NESTED_KEYS and state[ckpt.VERSION_KEY] == ckpt.VERSION == 2
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    expected = [b[2].tolist() for b in it] + [b[2].tolist() for b in loader]
    resumed = make_loader("topk")
    resumed.load_state_dict(loaded)
    got = [b[2].tolist() for b in resumed] + [b[2].tolist() for b in resumed]
    assert got == expected


def test_an_incomplete_version_1_state_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="lacks the entry 'world_size'"):
        ckpt.upgrade({"version": 1})
