"""Both smartsift modes in a custom Hugging Face accelerate loop, in one process and in two.

The two-process tests launch this file under torchrun (``python -m torch.distributed.run``, gloo,
CPU): each rank runs the same training function as the one-process tests and writes what it saw;
the test then compares the ranks.
"""

from __future__ import annotations

import collections
import gc
import itertools
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

pytest.importorskip("accelerate")

from _ddp import free_port, run_session, torchrun_copied
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

import smartsift as ss

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 120  # a hang fails the test instead of blocking the suite
N, BATCH, EPOCHS, WORLD = 300, 16, 4, 2  # 300 is no multiple of 2 x 16: accelerate pads
SHARED_IDS = "more than one rank"  # smartsift's warning when ranks train the same samples


# ------------------------------------------------------------------ what each process runs
def make_data(n: int = N) -> TensorDataset:
    """Random inputs with learnable labels (the argmax of a fixed linear map), the same on every
    process."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 10, generator=g)
    y = (x @ torch.randn(10, 3, generator=g)).argmax(1)
    return TensorDataset(x, y)


def make_model() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A tiny MLP, the same initial weights on every process, and its optimizer."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def prepare_reuse(accelerator: Accelerator, n: int = N, batch: int = BATCH) -> dict[str, Any]:
    """The loss-reuse parts, the loader, model and optimizer through ``accelerator.prepare``."""
    data = make_data(n)
    table = ss.ScoreTable(n)
    base = RandomSampler(data, generator=torch.Generator().manual_seed(0))
    sampler = ss.ReuseSampler(base, table, ss.RelativeProbabilistic(keep=0.5), seed=0)
    loader = DataLoader(ss.IndexedDataset(data), sampler=sampler, batch_size=batch)
    model, optimizer = make_model()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    return {"table": table, "sampler": sampler, "model": model, "opt": optimizer, "loader": loader}


def reuse_epochs(
    accelerator: Accelerator, parts: dict[str, Any], epochs: range, set_epoch: bool = True
) -> list[dict[str, Any]]:
    """Trains ``epochs``; returns per epoch each step's ids, the planned step count, the pruned
    list and the sampler's stats."""
    table, sampler, loader = parts["table"], parts["sampler"], parts["loader"]
    model, optimizer = parts["model"], parts["opt"]
    records = []
    for epoch in epochs:
        if set_epoch:
            loader.set_epoch(epoch)
        planned = len(loader)
        batches: list[list[int]] = []
        for ids, x, y in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            table.update(ids, per_sample)
            optimizer.zero_grad()
            accelerator.backward(per_sample.mean())
            optimizer.step()
            batches.append(ids.tolist())
        records.append(
            {
                "epoch": sampler.epoch,
                "batches": batches,
                "planned": planned,
                "pruned": list(sampler),  # replays the epoch just trained
                "stats": sampler.epoch_stats[epoch].as_dict(),
            }
        )
    return records


def train_reuse(
    accelerator: Accelerator,
    set_epoch: bool = True,
    n: int = N,
    batch: int = BATCH,
    epochs: int = EPOCHS,
) -> dict[str, Any]:
    """Loss reuse through ``accelerator.prepare``: :func:`reuse_epochs`' records, whether the
    prepared loader kept the sampler, and the final table."""
    parts = prepare_reuse(accelerator, n, batch)
    inner = parts["loader"].batch_sampler
    inner = getattr(inner, "batch_sampler", inner)  # accelerate's BatchSamplerShard, if sharded
    out: dict[str, Any] = {"kept_sampler": inner.sampler is parts["sampler"]}
    out["epochs"] = reuse_epochs(accelerator, parts, range(epochs), set_epoch)
    table = parts["table"]
    table.sync()  # under DDP: apply every rank's rows still waiting to be exchanged
    out["losses"], out["scored_epoch"] = table.losses.copy(), table.scored_epoch.copy()
    return out


def train_scoring(accelerator: Accelerator) -> dict[str, Any]:
    """The scoring pass over the prepared loader; returns per epoch each step's ids and the
    audit's record, and which modules trained and scored."""
    data = make_data()
    generator = torch.Generator().manual_seed(0)
    loader = DataLoader(
        ss.IndexedDataset(data), batch_size=BATCH, shuffle=True, generator=generator
    )
    model, optimizer = make_model()
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    scored_with: set[str] = set()

    def loss_fn(module: torch.nn.Module, batch: Any) -> torch.Tensor:
        scored_with.add(type(module).__name__)
        _, x, y = batch
        return F.cross_entropy(module(x), y, reduction="none")

    audit = ss.SiftAudit(id_key=0)
    sifting = ss.SiftingDataLoader(
        loader, model, loss_fn, ss.RelativeProbabilistic(keep=0.5), seed=0, audit=audit
    )
    out: dict[str, Any] = {"trained_with": type(model).__name__, "epochs": []}
    for epoch in range(EPOCHS):
        sifting.set_epoch(epoch)
        batches: list[list[int]] = []
        for ids, x, y in sifting:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            accelerator.backward(loss)
            optimizer.step()
            batches.append(ids.tolist())
        record = audit.epoch(epoch)
        out["epochs"].append(
            {
                "batches": batches,
                "seen": record.seen.tolist(),
                "kept": record.kept.tolist(),
                "dropped": record.dropped.tolist(),
            }
        )
    out["scored_with"] = sorted(scored_with)
    out["stats"] = sifting.stats.as_dict()
    return out


def train_reuse_large_batches(accelerator: Accelerator) -> dict[str, Any]:
    """Loss reuse where accelerate's padding is a large share of an epoch: 600 samples in
    batches of 256 per process on 2 processes are 4 batches, 424 of their rows repeats."""
    return train_reuse(accelerator, n=600, batch=256, epochs=2)


TRAINERS = {
    "reuse": train_reuse,
    "reuse_large_batches": train_reuse_large_batches,
    "scoring": train_scoring,
}


def worker(mode: str, out: str) -> None:
    """One torchrun rank: train in ``mode`` and pickle what it saw (warnings included)."""
    torch.set_num_threads(1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        accelerator = Accelerator(cpu=True)
        result = TRAINERS[mode](accelerator)
    result["warnings"] = [str(w.message) for w in caught]
    result["processes"] = accelerator.num_processes
    Path(out, f"rank{accelerator.process_index}.pkl").write_bytes(pickle.dumps(result))
    accelerator.free_memory()  # frees DDP before the process group goes
    gc.collect()
    accelerator.end_training()


def run_under_torchrun(mode: str, out: Path) -> list[dict[str, Any]]:
    """Runs :func:`worker` on 2 CPU ranks under torchrun; returns the ranks' results."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={WORLD}"]
    cmd += ["--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    cmd += [__file__, mode, str(out)]
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE")}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    # Its own session, so that a hang takes torchrun and both ranks down.
    returncode, log = run_session(cmd, env, TIMEOUT_S, "torchrun")
    assert returncode == 0, log
    results = [pickle.loads((out / f"rank{r}.pkl").read_bytes()) for r in range(WORLD)]
    assert all(r["processes"] == WORLD for r in results)
    return results


def fresh_accelerator() -> Accelerator:
    """A new one-process CPU ``Accelerator`` (accelerate's shared state reset first)."""
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return Accelerator(cpu=True)


@pytest.fixture
def accelerator() -> Iterator[Accelerator]:
    """A one-process CPU ``Accelerator``, with accelerate's shared state reset around it."""
    yield fresh_accelerator()
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def interleaved(rank_batches: list[list[list[int]]]) -> list[int]:
    """The ranks' batches in the order accelerate dealt them out (rank 0's first, rank 1's
    first, rank 0's second, ...), flattened."""
    return [i for step in zip(*rank_batches, strict=True) for batch in step for i in batch]


# ------------------------------------------------------------------ one process
@pytest.mark.parametrize("set_epoch", [True, False], ids=["set_epoch", "accelerate_only"])
def test_reuse_in_one_process_trains_or_skips_every_index_once_per_epoch(
    accelerator: Accelerator, set_epoch: bool
) -> None:
    result = train_reuse(accelerator, set_epoch=set_epoch)
    assert result["kept_sampler"]  # accelerate kept the ReuseSampler in the prepared loader
    for epoch, record in enumerate(result["epochs"]):
        stats = record["stats"]
        assert record["epoch"] == epoch  # accelerate's own set_epoch drives the epochs
        seen = collections.Counter(i for batch in record["batches"] for i in batch)
        assert set(seen.values()) == {1}, f"epoch {epoch}: an index trained twice"
        assert stats["candidates"] == N and len(seen) == stats["trained"]
        assert N - len(seen) == stats["sifted"]  # the rest were skipped, each once
        assert list(itertools.chain(*record["batches"])) == record["pruned"]
        assert len(record["batches"]) == -(-stats["trained"] // BATCH)
        if epoch == 0:
            assert stats["trained"] == N
        else:
            assert 0 < stats["trained"] < N and stats["sifted"] > 0
        if set_epoch:  # len() after loader.set_epoch(epoch) is the epoch's own
            assert record["planned"] == len(record["batches"])


def test_scoring_in_one_process_scores_every_index_once_and_trains_fewer(
    accelerator: Accelerator,
) -> None:
    result = train_scoring(accelerator)
    assert result["trained_with"] == "Sequential" and result["scored_with"] == ["Sequential"]
    for epoch, record in enumerate(result["epochs"]):
        assert sorted(record["seen"]) == list(range(N)), f"epoch {epoch}"
        trained = [i for batch in record["batches"] for i in batch]
        assert 0 < len(trained) < N and set(trained) <= set(record["seen"])
        assert all(len(b) == BATCH for b in record["batches"][:-1])
    stats = result["stats"]
    assert stats["samples_seen"] == EPOCHS * N and stats["epochs"] == EPOCHS
    assert stats["samples_trained"] == sum(len(b) for e in result["epochs"] for b in e["batches"])


def test_reuse_resumes_at_an_epoch_end_through_accelerate_save_state(
    accelerator: Accelerator, tmp_path: Path
) -> None:
    whole = reuse_epochs(accelerator, prepare_reuse(accelerator), range(EPOCHS))
    runs = []
    for epochs in (range(2), range(2, EPOCHS)):
        run = fresh_accelerator()  # save_state saves every model an accelerator prepared
        parts = prepare_reuse(run)
        run.register_for_checkpointing(parts["table"], parts["sampler"])
        if epochs.start:
            run.load_state(str(tmp_path))
        # accelerate's own epoch counter starts again at 0: set the epoch explicitly.
        runs += reuse_epochs(run, parts, epochs)
        run.save_state(str(tmp_path))
    assert [r["batches"] for r in runs] == [r["batches"] for r in whole]
    np.testing.assert_equal([r["stats"] for r in runs], [r["stats"] for r in whole])


def test_reuse_resumes_mid_epoch_through_accelerate_save_state(
    accelerator: Accelerator, tmp_path: Path
) -> None:
    # accelerate's loader draws a batch ahead of the one it hands out, so the sampler's saved
    # position is past the last trained batch: the sampler continues from the first index the
    # table has no loss for in the epoch, and the resumed run trains what the whole one did.
    whole = reuse_epochs(accelerator, prepare_reuse(accelerator), range(EPOCHS))
    first = fresh_accelerator()
    parts = prepare_reuse(first)
    first.register_for_checkpointing(parts["table"], parts["sampler"])
    head = reuse_epochs(first, parts, range(1))
    parts["loader"].set_epoch(1)
    cut = []
    for ids, x, y in itertools.islice(parts["loader"], 3):  # the loop stops mid-epoch
        per_sample = F.cross_entropy(parts["model"](x), y, reduction="none")
        parts["table"].update(ids, per_sample)
        parts["opt"].zero_grad()
        first.backward(per_sample.mean())
        parts["opt"].step()
        cut.append(ids.tolist())
    assert parts["sampler"].state_dict()["position"] > 3 * BATCH  # drawn ahead of training
    first.save_state(str(tmp_path))
    second = fresh_accelerator()
    again = prepare_reuse(second)
    second.register_for_checkpointing(again["table"], again["sampler"])
    second.load_state(str(tmp_path))
    rest = reuse_epochs(second, again, range(1, EPOCHS))
    trained = [head[0]["batches"], cut + rest[0]["batches"], *[r["batches"] for r in rest[1:]]]
    assert trained == [r["batches"] for r in whole]


# ------------------------------------------------------------------ two processes (torchrun)
def test_reuse_on_two_processes_deals_the_same_pruned_list_out_and_keeps_tables_equal(
    tmp_path: Path,
) -> None:
    ranks = run_under_torchrun("reuse", tmp_path)
    assert all(r["kept_sampler"] for r in ranks)
    for epoch in range(EPOCHS):
        records = [r["epochs"][epoch] for r in ranks]
        steps = [len(rec["batches"]) for rec in records]
        assert steps[0] == steps[1] == records[0]["planned"] == records[1]["planned"] > 0
        pruned = records[0]["pruned"]
        assert records[1]["pruned"] == pruned, f"epoch {epoch}: the ranks' orders differ"
        np.testing.assert_equal(records[0]["stats"], records[1]["stats"])  # NaN equals NaN
        assert len(pruned) == len(set(pruned)) == records[0]["stats"]["trained"]
        if epoch > 0:
            assert len(pruned) < N
        # Every id of the pruned list once, then accelerate's padding: the list's start again.
        dealt = interleaved([rec["batches"] for rec in records])
        padding = len(dealt) - len(pruned)
        assert 0 <= padding < WORLD * BATCH
        assert dealt == (pruned * 2)[: len(dealt)], f"epoch {epoch}"
    losses = [r["losses"] for r in ranks]
    np.testing.assert_array_equal(losses[0], losses[1])  # NaN where never trained, alike
    np.testing.assert_array_equal(ranks[0]["scored_epoch"], ranks[1]["scored_epoch"])
    assert np.isfinite(losses[0]).all()
    for r in ranks:
        assert not [w for w in r["warnings"] if SHARED_IDS in w], r["warnings"]


def test_reuse_with_padding_heavy_epochs_gives_no_unsharded_warning(tmp_path: Path) -> None:
    ranks = run_under_torchrun("reuse_large_batches", tmp_path)
    for epoch in range(2):
        records = [r["epochs"][epoch] for r in ranks]
        dealt = interleaved([rec["batches"] for rec in records])
        pruned = records[0]["pruned"]
        assert dealt == (pruned * 3)[: len(dealt)] and len(dealt) - len(pruned) < WORLD * 256
    for r in ranks:
        assert not [w for w in r["warnings"] if SHARED_IDS in w], r["warnings"]


def test_scoring_on_two_processes_scores_each_shard_with_the_unwrapped_model(
    tmp_path: Path,
) -> None:
    ranks = run_under_torchrun("scoring", tmp_path)
    shard = math.ceil(math.ceil(N / BATCH) / WORLD) * BATCH  # accelerate evens batches out
    for r in ranks:
        assert r["trained_with"] == "DistributedDataParallel"
        assert r["scored_with"] == ["Sequential"]  # no collective inside the scoring pass
        assert not [w for w in r["warnings"] if SHARED_IDS in w], r["warnings"]
    for epoch in range(EPOCHS):
        records = [r["epochs"][epoch] for r in ranks]
        assert len(records[0]["batches"]) == len(records[1]["batches"]) > 0, f"epoch {epoch}"
        assert [len(rec["seen"]) for rec in records] == [shard, shard]
        seen = records[0]["seen"] + records[1]["seen"]
        assert set(seen) == set(range(N))  # each rank scored its own shard: together, all
        assert len(seen) - N < WORLD * BATCH  # the rest is accelerate's padding
        # Every sample kept on either rank is trained once (the ranks may pool the epoch's last
        # kept samples), or counted as dropped.
        trained = collections.Counter(i for rec in records for b in rec["batches"] for i in b)
        kept = collections.Counter(i for rec in records for i in rec["kept"])
        kept.subtract(i for rec in records for i in rec["dropped"])
        assert trained == +kept, f"epoch {epoch}"
        assert 0 < trained.total() < len(seen)
    assert ranks[0]["stats"]["steps"] == ranks[1]["stats"]["steps"]


# ------------------------------------------------------------------ the example
def _example_args(tmp_path: Path, mode: str) -> list[str]:
    report = f"--report={tmp_path / 'report'}"
    return [f"--mode={mode}", "--cpu", "--epochs=2", "--samples=1000", "--hidden=16", report]


def _reports(tmp_path: Path, processes: int) -> list[dict[str, Any]]:
    return [json.loads((tmp_path / f"report.rank{r}.json").read_text()) for r in range(processes)]


def _check_example_reports(reports: list[dict[str, Any]], mode: str) -> None:
    """Every process took the same steps, the schedule ended, the second epoch sifted."""
    processes = len(reports)
    assert all(r["mode"] == mode and r["processes"] == processes for r in reports)
    assert all(r["lr"] == 0.0 for r in reports)  # the cosine ended where training ended
    for epoch in range(2):
        records = [r["epochs"][epoch] for r in reports]
        assert len({rec["steps"] for rec in records}) == 1 and records[0]["steps"] > 0
        ids = [i for rec in records for i in rec["ids"]]
        if mode == "reuse":
            trained = records[0]["trained"]
            assert len(set(ids)) == trained and len(ids) - trained < processes * 32
            assert (trained == 800) if epoch == 0 else (0 < trained < 800)
        else:
            assert 0 < len(ids) < records[0]["samples_seen"] * processes


@pytest.mark.parametrize("mode", ["reuse", "scoring"])
def test_the_example_runs_in_one_process_when_copied_out_of_the_repository(
    tmp_path: Path, mode: str
) -> None:
    pytest.importorskip("mnist1d")
    script = shutil.copy(EXAMPLES / "accelerate_train.py", tmp_path)
    cmd = [sys.executable, str(script), *_example_args(tmp_path, mode)]
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RANK", "WORLD_SIZE")}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    epochs = [line for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 2 and all("test accuracy" in line for line in epochs), proc.stdout
    assert f"[rank 0] mode={mode} " in proc.stdout
    _check_example_reports(_reports(tmp_path, 1), mode)


@pytest.mark.parametrize("mode", ["reuse", "scoring"])
def test_the_example_runs_on_two_processes_under_torchrun(tmp_path: Path, mode: str) -> None:
    pytest.importorskip("mnist1d")
    proc = torchrun_copied(
        EXAMPLES / "accelerate_train.py", tmp_path, _example_args(tmp_path, mode), TIMEOUT_S
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    assert SHARED_IDS not in out
    lines = [line for line in proc.stdout.splitlines() if line.startswith("[rank ")]
    assert len(lines) == 2 and all(f" mode={mode} " in line for line in lines), out
    _check_example_reports(_reports(tmp_path, 2), mode)


if __name__ == "__main__":  # a torchrun rank of the two-process tests
    worker(sys.argv[1], sys.argv[2])
