"""Real multi-process DDP tests: gloo on CPU, 2 and 3 spawned ranks, each job with a hard timeout.

The workers below run in spawned processes (see ``_ddp.run_ranks``) and return plain records;
the tests check them in the parent. Jobs run several scenarios each, to pay the process start-up
(importing torch) once per job rather than once per scenario.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F
from _ddp import run_ranks
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate

import smartsift as ss

ROOT = Path(__file__).resolve().parents[1]
FEATURES, CLASSES = 6, 3
# A job that runs past this is killed and fails as a hang. The jobs take a few seconds each; the
# margin is for loaded CI machines, and stays well under pytest-timeout's 300 s.
JOB_TIMEOUT_S = 120

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed gloo"
)


# ----------------------------------------------------------------------------- worker helpers
class Sample(NamedTuple):
    """One sample (and, collated, one batch): features, label and the sample's id."""

    x: torch.Tensor
    y: torch.Tensor
    idx: Any  # an int in a sample, a tensor of ids in a batch


class IdDataset(Dataset[Sample]):
    """A tiny classification set whose samples carry their ids."""

    def __init__(self, n: int, seed: int = 0) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.x = torch.randn(n, FEATURES, generator=gen)
        self.y = torch.randint(0, CLASSES, (n,), generator=gen)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> Sample:
        return Sample(self.x[i], self.y[i], i)


def make_dataset(n: int, seed: int = 0) -> IdDataset:
    """``n`` samples of :class:`IdDataset`."""
    return IdDataset(n, seed)


class UnevenSampler(Sampler[int]):
    """Rank ``r`` gets ``sizes[r]`` samples of a per-epoch permutation: disjoint and unpadded."""

    def __init__(self, sizes: list[int], rank: int, seed: int = 0) -> None:
        self.sizes, self.rank, self.seed, self.epoch = sizes, rank, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        perm = torch.randperm(sum(self.sizes), generator=gen)
        start = sum(self.sizes[: self.rank])
        return iter(perm[start : start + self.sizes[self.rank]].tolist())

    def __len__(self) -> int:
        return self.sizes[self.rank]


class RoundSpy:
    """Wraps a DataLoader; notes this rank's (seen, kept) counters each time a raw batch is pulled.

    Consecutive notes give the samples seen and kept in each round in which this rank pulled.
    """

    def __init__(self, loader: DataLoader[Any]) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size
        self.sampler = loader.sampler
        self.sifter: ss.SiftingDataLoader | None = None
        self.notes: list[tuple[int, int]] = []

    def _note(self) -> None:
        assert self.sifter is not None
        stats = self.sifter.stats
        self.notes.append((stats.samples_seen, stats.samples_kept))

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            self._note()
            yield batch
        self._note()

    def rounds(self) -> list[tuple[int, int]]:
        """(seen, kept) per pulled raw batch; an epoch boundary shows as a (0, 0) round."""
        return [
            (s1 - s0, k1 - k0)
            for (s0, k0), (s1, k1) in zip(self.notes, self.notes[1:], strict=False)
        ]


def make_loss_fn(kind: str, rank: int) -> Any:
    """Cross-entropy per sample, distorted per rank for some scenarios."""
    calls = [0]

    def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        x, y, _ = batch
        loss = F.cross_entropy(model(x), y, reduction="none")
        calls[0] += 1
        if kind == "skew" and rank == 0:
            return loss * 50.0  # rank 0's shard ranks above everything: it keeps far more
        if kind == "sift_whole" and rank == 1 and calls[0] % 2 == 1:
            return loss * 1e-6  # every other raw batch of rank 1 lies at the very bottom
        return loss

    return loss_fn


def _stats_record(stats: ss.SiftStats) -> dict[str, Any]:
    out = dataclasses.asdict(stats)
    for key in ("data_s", "scoring_s", "selection_s", "comm_s"):
        out.pop(key)
    return out


def sift_scenarios(rank: int, world: int, scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Worker: runs each scenario's loader for its epochs; returns what each rank saw."""
    records = []
    for cfg in scenarios:
        torch.manual_seed(0)
        model = torch.nn.Linear(FEATURES, CLASSES)
        bs = cfg.get("bs", 8)
        if "sizes" in cfg:
            sizes = cfg["sizes"][:world]
            data = make_dataset(sum(sizes))
            sampler: Any = UnevenSampler(sizes, rank)
        else:
            data = make_dataset(cfg["n"])
            sampler = DistributedSampler(
                data, shuffle=True, seed=0, drop_last=cfg.get("sampler_drop_last", False)
            )
        spy = RoundSpy(DataLoader(data, batch_size=bs, sampler=sampler))
        loader = ss.SiftingDataLoader(
            spy,
            model,
            make_loss_fn(cfg.get("loss", "plain"), rank),
            policy=cfg["policy"],
            drop_last=cfg.get("drop_last", False),
            sift_delay=cfg.get("sift_delay", 0),
            repeat_delay_per_epoch=cfg.get("repeat_delay", False),
            seed=cfg.get("seed", 0),
            batch_size=cfg.get("refined"),
        )
        spy.sifter = loader
        epochs = []
        for epoch in range(cfg.get("epochs", 2)):
            loader.set_epoch(epoch)
            served = list(sampler)
            sizes_out, ids = [], []
            for batch in loader:
                # Refined batches keep the raw batches' type, rebalanced ones included.
                assert type(batch) is Sample, type(batch)
                x, y, idx = batch
                assert len(x) == len(y) == len(idx)
                sizes_out.append(len(idx))
                ids.extend(idx.tolist())
            epochs.append({"sizes": sizes_out, "ids": ids, "served": served})
        stats = loader.stats
        history = loader.state_dict()["selector"]["history"]
        records.append(
            {
                "name": cfg["name"],
                "epochs": epochs,
                "rounds": spy.rounds(),
                "stats": _stats_record(stats),
                "global": _stats_record(loader.global_stats()),
                "quantiles": stats.loss_quantiles,
                "history": None if history is None else history["values"].tolist(),
                "batch_size": loader.batch_size,
            }
        )
    return records


class FailingDataset(Dataset[Any]):
    """``make_dataset`` whose item ``bad`` raises (once) when loaded."""

    def __init__(self, n: int, bad: int) -> None:
        self.data, self.bad, self.failed = make_dataset(n), bad, False

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        if i == self.bad and not self.failed:
            self.failed = True
            raise KeyError(f"sample {i} is corrupt")
        return self.data[i]


def failing_rank(rank: int, world: int, where: str, bad_rank: int) -> dict[str, Any]:
    """Rank ``bad_rank`` fails once, on its third raw batch: in ``loss_fn``, in loading, or with
    a batch layout that cannot be joined with the buffered samples.

    Returns what this rank raised, the steps it yielded first, whether the group is still in
    step afterwards, and the steps of a clean second epoch.
    """
    torch.manual_seed(0)
    n_per_rank, bs = 40, 8
    sizes = [n_per_rank] * world
    sampler = UnevenSampler(sizes, rank)
    bad_index = list(sampler)[2 * bs + 3]  # in the third raw batch of the last rank
    fails = where == "data" and rank == bad_rank
    data = FailingDataset(n_per_rank * world, bad_index if fails else -1)
    calls = [0]

    def loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        calls[0] += 1
        if where == "loss" and rank == bad_rank and calls[0] == 3:
            raise ValueError(f"loss_fn failed on rank {rank}")
        x, y, _ = batch
        return F.cross_entropy(model(x), y, reduction="none")

    collated = [0]

    def collate(samples: list[Any]) -> Any:
        x, y, ids = default_collate(samples)
        collated[0] += 1
        if where == "shape" and rank == bad_rank and collated[0] == 3:
            ids = ids.unsqueeze(1)  # a layout the buffered samples cannot be joined with
        return x, y, ids

    loader = ss.SiftingDataLoader(
        DataLoader(data, batch_size=bs, sampler=sampler, collate_fn=collate),
        torch.nn.Linear(FEATURES, CLASSES),
        loss_fn,
        policy=ss.RelativeProbabilistic(beta=0.5, history=64),
        seed=0,
    )
    steps, raised, message = 0, None, ""
    try:
        for _ in loader:
            steps += 1
    except Exception as err:
        raised, message = type(err).__name__, str(err)
    # Every rank left the failed round at the same point: the group must still be in step.
    token = torch.tensor([float(rank)])
    dist.all_reduce(token)
    loader.set_epoch(1)
    clean_steps = sum(1 for _ in loader)
    return {
        "raised": raised,
        "message": message,
        "steps": steps,
        "sum": float(token),
        "clean_steps": clean_steps,
    }


def failing_ranks(rank: int, world: int, cases: list[tuple[str, int]]) -> list[dict[str, Any]]:
    """Worker: runs :func:`failing_rank` for each (where, bad_rank) case, one after the other."""
    return [failing_rank(rank, world, where, bad) for where, bad in cases]


def ddp_training(rank: int, world: int, epochs: int, slow_rank: int = -1) -> dict[str, Any]:
    """Worker: trains a DDP model (with BatchNorm buffers) on uneven shards with sifting.

    ``slow_rank`` scores and loads its data much more slowly than the others.
    """
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.manual_seed(rank)  # different inits on purpose: DDP broadcasts rank 0's
    net = torch.nn.Sequential(
        torch.nn.Linear(FEATURES, 16),
        torch.nn.BatchNorm1d(16),
        torch.nn.ReLU(),
        torch.nn.Linear(16, CLASSES),
    )
    model = DDP(net)
    init = [p.detach().clone() for p in model.parameters()]
    sizes = [40, 88, 64][:world]
    sampler = UnevenSampler(sizes, rank)
    raw = DataLoader(make_dataset(sum(sizes)), batch_size=8, sampler=sampler)

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        if rank == slow_rank:
            time.sleep(0.02)
        x, y, _ = batch
        return F.cross_entropy(m(x), y, reduction="none")

    # seed=None: each rank draws its own seed; the loader must agree on rank 0's.
    loader = ss.SiftingDataLoader(
        raw,
        model,
        loss_fn,
        policy=ss.RelativeProbabilistic(beta=1.0, history=64),
        sift_delay=2,
        drop_last=True,  # BatchNorm cannot train on a final batch of one sample
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    steps = []
    for epoch in range(epochs):
        loader.set_epoch(epoch)
        n = 0
        for x, y, _ in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            n += 1
        steps.append(n)
    return {
        "steps": steps,
        "params": [p.detach().clone() for p in model.parameters()],
        "init": init,
        "quantiles": loader.stats.loss_quantiles,
        "history": loader.state_dict()["selector"]["history"]["values"],
        "global": _stats_record(loader.global_stats()),
    }


# ----------------------------------------------------------------------------- scenarios
P = ss.RelativeProbabilistic(beta=1.0, history=64)
SKEW = ss.RelativeProbabilistic(beta=2.0, history=64)
SCENARIOS: list[dict[str, Any]] = [
    # DistributedSampler pads to equal shards; 101 divides by neither 2 nor 3.
    dict(name="dist_sampler", n=101, policy=P),
    dict(name="dist_sampler_drop_last", n=101, policy=P, drop_last=True, sampler_drop_last=True),
    # Rank 0's losses are 50x everyone's: it keeps far more, its buffer runs ahead.
    dict(name="skewed", n=96, policy=SKEW, loss="skew", sampler_drop_last=True),
    dict(
        name="skewed_drop_last",
        n=96,
        policy=SKEW,
        loss="skew",
        sampler_drop_last=True,
        drop_last=True,
    ),
    # Unpadded uneven shards: ranks pull 3, 9 and 6 raw batches.
    dict(name="uneven", sizes=[20, 70, 45], policy=P),
    dict(name="uneven_drop_last", sizes=[20, 70, 45], policy=P, drop_last=True),
    # One rank has no data at all.
    dict(name="empty_shard", sizes=[0, 30, 13], policy=ss.TopK(keep=0.5)),
    # Tiny partial batches everywhere.
    dict(name="tiny", sizes=[5, 1, 9], bs=4, policy=ss.TopK(keep=0.5)),
    # Every other raw batch of rank 1 is sifted whole.
    dict(
        name="sift_whole",
        n=96,
        policy=ss.QuantileThreshold(exclude=0.45, history=64),
        loss="sift_whole",
        sampler_drop_last=True,
    ),
    # sift_delay covers all of rank 0's raw batches and part of the others'.
    dict(name="delay_every_epoch", sizes=[16, 56, 40], policy=P, sift_delay=4, repeat_delay=True),
    dict(name="delay_once", sizes=[16, 56, 40], policy=P, sift_delay=3, drop_last=True, seed=7),
    # Refined batches smaller than raw ones: delayed raw batches are cut to size as well.
    dict(name="delay_cut_to_size", sizes=[16, 56, 40], policy=P, sift_delay=3, refined=3),
]


def split_epochs(rounds: list[tuple[int, int]]) -> list[list[tuple[int, int]]]:
    """Splits a rank's per-round (seen, kept) list at the (0, 0) epoch boundaries."""
    epochs: list[list[tuple[int, int]]] = [[]]
    for entry in rounds:
        if entry == (0, 0):
            epochs.append([])
        else:
            epochs[-1].append(entry)
    return epochs


def check_scenario(records: list[dict[str, Any]], cfg: dict[str, Any], world: int) -> None:
    """Checks the invariants every scenario must hold, then the scenario's own."""
    name = cfg["name"]
    bs = cfg.get("refined", cfg.get("bs", 8))
    drop_last = cfg.get("drop_last", False)
    ep0 = records[0]["epochs"]
    for e in range(len(ep0)):
        steps = [len(r["epochs"][e]["sizes"]) for r in records]
        assert len(set(steps)) == 1, f"{name}: epoch {e}: unequal steps {steps}"
        for r in records:
            sizes = r["epochs"][e]["sizes"]
            assert all(0 < s <= bs for s in sizes), f"{name}: empty or oversized batch {sizes}"
            if drop_last:
                assert all(s == bs for s in sizes), f"{name}: drop_last gave {sizes}"
        trained = Counter(i for r in records for i in r["epochs"][e]["ids"])
        served = Counter(i for r in records for i in r["epochs"][e]["served"])
        # Each sample is trained at most as often as the samplers served it (once when disjoint).
        assert not trained - served, f"{name}: epoch {e}: trained more than served"
        if "sizes" in cfg or cfg.get("sampler_drop_last") or cfg["n"] % world == 0:
            assert max(trained.values(), default=1) == 1, f"{name}: a sample trained twice"

    g = records[0]["global"]
    for r in records[1:]:
        assert r["global"] == g, f"{name}: ranks disagree on global_stats"
    summed = ("samples_seen", "samples_kept", "samples_sifted", "samples_dropped",
              "samples_trained", "samples_buffered", "raw_batches", "steps", "epochs")  # fmt: skip
    for key in summed:
        assert g[key] == sum(r["stats"][key] for r in records), f"{name}: global {key} != sum"
    n_served = sum(len(ep["served"]) for r in records for ep in r["epochs"])
    n_trained = sum(len(ep["ids"]) for r in records for ep in r["epochs"])
    assert g["samples_seen"] == n_served
    assert g["samples_trained"] == n_trained
    assert g["samples_seen"] == g["samples_kept"] + g["samples_sifted"]
    assert g["samples_kept"] == g["samples_trained"] + g["samples_dropped"] + g["samples_buffered"]
    assert g["samples_buffered"] == 0
    assert g["steps"] == world * sum(len(ep["sizes"]) for ep in ep0)
    if not drop_last:
        assert g["samples_dropped"] == 0, f"{name}: kept samples lost without drop_last"
    for r in records[1:]:
        assert r["history"] == records[0]["history"], f"{name}: histories differ"
        assert r["quantiles"] == records[0]["quantiles"], f"{name}: quantiles differ"
        assert r["batch_size"] == records[0]["batch_size"] == bs

    # The scenario's own point.
    kept = [r["stats"]["samples_kept"] / max(1, r["stats"]["samples_seen"]) for r in records]
    rounds = [r["rounds"] for r in records]
    if name == "skewed":
        assert kept[0] > 3 * max(kept[1:]), f"skew too weak: {kept}"
        # The leftovers were pooled: some rank trained samples another rank loaded.
        moved = any(
            set(r["epochs"][e]["ids"]) - set(r["epochs"][e]["served"])
            for r in records
            for e in range(len(ep0))
        )
        assert moved, "the uneven leftovers were not rebalanced across ranks"
    if name == "sift_whole":
        assert (8, 0) in rounds[1], f"no raw batch of rank 1 was sifted whole: {rounds[1]}"
    if name == "delay_every_epoch":
        assert records[0]["stats"]["samples_sifted"] == 0  # all its batches fall in the delay
        for rank_rounds in rounds[1:]:
            for ep in split_epochs(rank_rounds):
                assert all(s == k for s, k in ep[:4]), f"delay not applied: {ep}"
                assert any(s > k for s, k in ep[4:]), f"no sifting after the delay: {ep}"
    if name == "delay_cut_to_size":
        # Rank 0's 16 samples (two raw batches of 8, both delayed) come out as batches of 3
        # from the first step on, and every rank's first epoch starts with full batches.
        for r in records:
            assert r["epochs"][0]["sizes"][:5] == [3] * 5, r["epochs"][0]["sizes"]
        assert records[0]["epochs"][0]["ids"][:15] == records[0]["epochs"][0]["served"][:15]
    if name == "delay_once":
        for rank_rounds in rounds:
            first = split_epochs(rank_rounds)[0]
            assert all(s == k for s, k in first[:3]), "delay not applied"
        assert any(s > k for rank_rounds in rounds[1:] for s, k in split_epochs(rank_rounds)[1])


# ----------------------------------------------------------------------------- tests
@pytest.mark.parametrize("world", [2, 3])
def test_ranks_stay_in_step_and_account_for_every_sample(world: int) -> None:
    results = run_ranks(sift_scenarios, world, SCENARIOS, timeout=JOB_TIMEOUT_S)
    for i, cfg in enumerate(SCENARIOS):
        check_scenario([r[i] for r in results], cfg, world)


@pytest.mark.parametrize("slow_rank", [-1, 1])
def test_ddp_training_keeps_replicas_identical(slow_rank: int) -> None:
    # slow_rank=1: one rank scores far slower than the other; the others wait, nothing diverges.
    results = run_ranks(ddp_training, 2, 2, slow_rank, timeout=JOB_TIMEOUT_S)
    first = results[0]
    assert first["steps"][0] > 0
    for r in results[1:]:
        assert r["steps"] == first["steps"]
        # Parameters are all-reduced, so replicas agree bit for bit. (BatchNorm buffers are not:
        # DDP broadcasts rank 0's before each forward, then each rank updates its own.)
        for a, b in zip(r["params"], first["params"], strict=True):
            assert torch.equal(a, b)
        assert torch.equal(r["history"], first["history"])
        assert r["quantiles"] == first["quantiles"]
        assert r["global"] == first["global"]
    assert any(not torch.equal(a, b) for a, b in zip(first["params"], first["init"], strict=True))
    g = first["global"]
    assert 0 < g["samples_sifted"] < g["samples_seen"]


def test_failing_rank_stops_every_rank() -> None:
    world = 3
    cases = [("loss", 2), ("data", 0), ("shape", 1)]  # later cases: the group survived
    jobs = run_ranks(failing_ranks, world, cases, timeout=JOB_TIMEOUT_S)
    for i, (where, bad_rank) in enumerate(cases):
        results = [job[i] for job in jobs]
        bad = results[bad_rank]
        assert bad["raised"] == ("KeyError" if where == "data" else "ValueError"), bad
        expected = {"loss": "loss_fn failed", "data": "corrupt", "shape": "cannot be joined"}
        assert expected[where] in bad["message"]
        for rank, r in enumerate(results):
            if rank != bad_rank:
                assert r["raised"] == "RemoteRankError", r
                assert f"[{bad_rank}]" in r["message"]
        assert len({r["steps"] for r in results}) == 1  # all stopped in the same round
        assert all(r["sum"] == sum(range(world)) for r in results)
        assert len({r["clean_steps"] for r in results}) == 1
        assert results[0]["clean_steps"] > 0


def test_ddp_benchmark_smoke() -> None:
    from benchmarks import ddp

    table = ddp.run(smoke=True).body
    rows = {
        cells[0]: cells[1:]
        for line in table.splitlines()
        if line.startswith("| plain |") or line.startswith("| sifted |")
        for cells in [[c.strip() for c in line.strip("|").split("|")]]
    }
    assert set(rows) == {"plain", "sifted"}, table
    # Columns: s/epoch, steps/epoch/rank, samples trained/epoch/rank, acc, comm s, comm share.
    assert float(rows["sifted"][2]) < float(rows["plain"][2])  # sifting trained on fewer samples
    assert float(rows["sifted"][0]) > 0 and float(rows["plain"][0]) > 0
    assert rows["sifted"][5].endswith("%") and 0 <= float(rows["sifted"][5][:-1]) <= 100
