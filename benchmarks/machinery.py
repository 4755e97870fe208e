"""Machinery benchmark: how many samples per second sifting itself handles, without a model,
and what loss reuse's score table costs.

Two measurements of the scoring mode, on one CPU thread, for loss histories of 500, 10 000 and
100 000 losses:

- *internals*: the sift step the loader runs for a sifted raw batch, called directly
  (:func:`smartsift.engine.step.sift_step`: the selector's history update and decision, slicing
  the kept samples; then the refined batcher joining them into batches), so the figure is of
  the code the loader really runs;
- *loader*: a ``SiftingDataLoader`` driven end to end over pre-built raw batches, with an
  identity-cost model: the loss function returns a loss column the batch already carries,
  so the figure is everything the loader does per raw batch but the model.

Three of loss reuse:

- *table memory*: the bytes per sample a :class:`~smartsift.ScoreTable` holds on each rank
  (``table.nbytes`` of a table of 1e6 samples), and what that makes at 1e8 samples;
- *decision*: the time a :class:`~smartsift.ReuseSampler` takes to decide an epoch
  (``len(sampler)`` after ``set_epoch``), from a table full of random losses, over a
  ``SequentialSampler`` and a ``RandomSampler``, at 1e6, 1e7 and 1e8 samples;
- *collective share*: two gloo CPU processes train a small MLP with a ``ReuseSampler`` over a
  ``DistributedSampler`` and a shared table; the share of the training time spent in the
  table's exchanges, for an exchange at every step (``sync_every=1``) and the default.

Run it from the repository root (``python -m benchmarks.machinery [--smoke]``) or call
:func:`run`.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing as mp
import socket
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

import smartsift as ss
from benchmarks.common import Section, Target, fmt_spread, markdown_table
from smartsift.engine.batcher import RefinedBatcher
from smartsift.engine.selector import Selector
from smartsift.engine.step import sift_step

__all__ = ["run"]

HISTORIES = (500, 10_000, 100_000)
BATCH = 128
FEATURES = 40
TARGET = 1e6  # samples per second at history 10 000
SHARE_TARGET = 0.02  # the table's exchanges, as a share of a 2-rank training run
DECISION_SIZES = (10**6, 10**7, 10**8)
SMOKE_DECISION_SIZES = (10**5,)
# Deciding an epoch of 1e8 samples peaked at about 6.5 GB over a SequentialSampler; it runs
# only where twice that is free. torch's RandomSampler builds a Python list of every index
# (about 3.6 GB and most of a minute more at 1e8), so it stops at 1e7.
LARGE = 10**8
LARGE_NEEDS_BYTES = 13 * 2**30
RANDOM_MAX = 10**7


class _Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def _identity_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The loss column the batch carries: no model cost at all."""
    return batch[2]


def _batches(n: int, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(BATCH, FEATURES, generator=g),
            torch.randint(0, 10, (BATCH,), generator=g),
            torch.rand(BATCH, generator=g, dtype=torch.float64),
        )
        for _ in range(n)
    ]


def _policy(history: int) -> ss.RelativeProbabilistic:
    return ss.RelativeProbabilistic(beta=1.0, history=history)


def internals_rate(history: int, n_batches: int) -> float:
    """Samples per second through the engine's parts that the loader runs for a scored raw
    batch, called directly: the selector (history update and decision), slicing, and the
    refined batcher (buffering and joining)."""
    selector = Selector(_policy(history), seed=0)
    batcher = RefinedBatcher(batch_size=BATCH)
    batches = _batches(n_batches)
    warm = max(1, history // BATCH + 1)  # fill the history first: eviction is the slow path
    for _, _, loss in _batches(warm, seed=1):
        selector.decide([loss.numpy()])
    start = time.process_time()
    for x, y, loss in batches:
        sift_step(selector, batcher, (x, y), BATCH, [loss.numpy()])
        batcher.form_all()
        batcher.ready.clear()
    return n_batches * BATCH / (time.process_time() - start)


def loader_rate(history: int, n_batches: int) -> tuple[float, float]:
    """Samples per second through a whole ``SiftingDataLoader`` epoch; and the keep rate."""
    batches = _batches(n_batches)
    warm = _batches(max(1, history // BATCH + 1), seed=1)
    loader = ss.SiftingDataLoader(
        warm, _Identity(), _identity_loss, policy=_policy(history), seed=0
    )
    for _ in loader:  # fills the history
        pass
    loader.dataloader = batches
    start = time.process_time()
    for _ in loader:
        pass
    elapsed = time.process_time() - start
    stats = loader.stats
    return n_batches * BATCH / elapsed, stats.keep_rate


def measure(smoke: bool) -> list[dict[str, Any]]:
    """Medians over repeats of both rates for every history length."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        n_batches, repeats = (20, 1) if smoke else (2000, 5)
        rows = []
        for history in HISTORIES:
            internal, through, keep = [], [], []
            for _ in range(repeats):
                internal.append(internals_rate(history, n_batches))
                rate, k = loader_rate(history, n_batches)
                through.append(rate)
                keep.append(k)
            rows.append(
                {"history": history, "internals": internal, "loader": through, "keep": keep}
            )
        return rows
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ loss reuse: the table
MEMORY_SIZE = 10**6
_OLD_LAYOUT = 3 * np.dtype(np.float64).itemsize + 2 * np.dtype(np.int64).itemsize


def table_memory() -> list[tuple[str, float]]:
    """Bytes per sample of a score table of 1e6 samples, per layout (``table.nbytes``)."""
    rows = []
    for name, reference, track in (
        ("default", False, False),
        ("with a reference (`set_reference`)", True, False),
        ("with `track_updates=True`", False, True),
        ("with both", True, True),
    ):
        table = ss.ScoreTable(MEMORY_SIZE, track_updates=track)
        if reference:
            table.set_reference([0], [1.0])
        rows.append((name, table.nbytes / MEMORY_SIZE))
    return rows


def _filled_table(n: int, seed: int = 0) -> ss.ScoreTable:
    """A table of ``n`` samples, each with a random loss recorded in epoch 0."""
    table = ss.ScoreTable(n)
    table.epoch = 0
    rng = np.random.default_rng(seed)
    step = 1 << 20
    for start in range(0, n, step):
        ids = np.arange(start, min(n, start + step))
        table.update(ids, rng.random(ids.size, dtype=np.float32))
    return table


def _base(kind: str, n: int) -> Any:
    if kind == "SequentialSampler":
        return torch.utils.data.SequentialSampler(range(n))
    return torch.utils.data.RandomSampler(range(n), generator=torch.Generator().manual_seed(0))


def decision_seconds(n: int, kind: str, repeats: int) -> list[float]:
    """CPU seconds a ``ReuseSampler`` takes to decide epoch 1 of ``n`` samples from a table
    filled in epoch 0 (``len(sampler)`` after ``set_epoch``), once per repeat."""
    table = _filled_table(n)
    out = []
    for _ in range(repeats):
        sampler = ss.ReuseSampler(_base(kind, n), table, ss.RelativeProbabilistic(keep=0.3))
        sampler.set_epoch(1)
        start = time.process_time()
        len(sampler)
        out.append(time.process_time() - start)
        del sampler
    return out


def _available_bytes() -> int:
    """The memory available to a new allocation, from ``/proc/meminfo`` (0 if unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def decisions(smoke: bool) -> list[dict[str, Any]]:
    """The decision time for every size and base sampler that is run: the
    ``RandomSampler`` up to ``RANDOM_MAX``, 1e8 only with ``LARGE_NEEDS_BYTES`` free (a row
    without seconds says it was left out for memory)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rows: list[dict[str, Any]] = []
        for n in SMOKE_DECISION_SIZES if smoke else DECISION_SIZES:
            for kind in ("SequentialSampler", "RandomSampler"):
                if kind == "RandomSampler" and n > RANDOM_MAX:
                    continue
                free = _available_bytes()
                if n >= LARGE and free < LARGE_NEEDS_BYTES:
                    rows.append({"n": n, "base": kind, "seconds": [], "free": free})
                    continue
                repeats = 3 if n <= 10**6 else 1
                rows.append({"n": n, "base": kind, "seconds": decision_seconds(n, kind, repeats)})
        return rows
    finally:
        torch.set_num_threads(threads)


# ------------------------------------------------------------------ loss reuse: DDP exchanges
@dataclass(frozen=True)
class ShareConfig:
    """The 2-rank training run whose exchanges are timed."""

    samples: int = 32_000  # random samples of MNIST-1D's 40 features, labels from a teacher
    features: int = 40
    width: int = 100
    batch_size: int = 64  # per rank
    epochs: int = 4
    repeats: int = 3  # of each setting, interleaved
    keep: float = 0.3


SHARE_FULL = ShareConfig()
SHARE_SMOKE = ShareConfig(samples=1024, width=16, epochs=2, repeats=1)
SHARE_SETTINGS = (1, None)  # sync_every: at every step, and the default
_WORLD = 2


def _teacher_data(cfg: ShareConfig) -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(cfg.samples, cfg.features, generator=g)
    teacher = torch.randn(cfg.features, 10, generator=g)
    y = (x @ teacher + 0.5 * torch.randn(cfg.samples, 10, generator=g)).argmax(1)
    return torch.utils.data.TensorDataset(x, y)


def _train(cfg: ShareConfig, sync_every: int | None, init: dict[str, Any]) -> dict[str, Any]:
    """One run on this rank: the reuse loop over the shared table; its timings."""
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    data = _teacher_data(cfg)
    net = _mlp(cfg)
    net.load_state_dict(init)
    model = DDP(net)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    table = (
        ss.ScoreTable(len(data))
        if sync_every is None
        else ss.ScoreTable(len(data), sync_every=sync_every)
    )
    sampler = ss.ReuseSampler(
        torch.utils.data.DistributedSampler(data, seed=0),
        table,
        ss.RelativeProbabilistic(keep=cfg.keep),
    )
    loader = torch.utils.data.DataLoader(
        ss.IndexedDataset(data), sampler=sampler, batch_size=cfg.batch_size
    )
    steps, empty = 0, table.nbytes
    held = empty
    dist.barrier()
    start = time.perf_counter()
    for epoch in range(cfg.epochs):
        sampler.set_epoch(epoch)
        for ids, x, y in loader:
            per_sample = F.cross_entropy(model(x), y, reduction="none")
            table.update(ids, per_sample)
            optimizer.zero_grad(set_to_none=True)
            per_sample.mean().backward()
            optimizer.step()
            steps += 1
            held = max(held, table.nbytes)
    dist.barrier()
    seconds = time.perf_counter() - start
    del model
    return {
        "sync_every": table.sync_every,
        "seconds": seconds,
        "sync_seconds": table.sync_seconds,
        "collectives": table.collectives,
        "steps": steps,
        "pending_bytes": held - empty,
    }


def _mlp(cfg: ShareConfig) -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(cfg.features, cfg.width),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.width, cfg.width),
        torch.nn.ReLU(),
        torch.nn.Linear(cfg.width, 10),
    )


def _share_rank(rank: int, port: int, cfg: ShareConfig, out: str) -> None:
    """Runs in each spawned rank: every setting ``repeats`` times, interleaved."""
    import gc

    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=_WORLD,
        timeout=datetime.timedelta(minutes=5),
    )
    try:
        init = _mlp(cfg).state_dict()
        runs = [
            _train(cfg, sync_every, init)
            for _ in range(cfg.repeats)
            for sync_every in SHARE_SETTINGS
        ]
        gc.collect()  # free the DDP reducers before the group goes
    finally:
        dist.destroy_process_group()
    Path(out, f"rank{rank}.json").write_text(json.dumps(runs))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def collective_share(cfg: ShareConfig, timeout: float) -> list[list[dict[str, Any]]]:
    """Each rank's runs of the 2-rank training (spawned gloo processes, killed at ``timeout``)."""
    ctx = mp.get_context("spawn")
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="smartsift-bench-table-") as out:
        procs = [
            ctx.Process(target=_share_rank, args=(rank, port, cfg, out), daemon=True)
            for rank in range(_WORLD)
        ]
        for proc in procs:
            proc.start()
        deadline = time.monotonic() + timeout
        for proc in procs:
            proc.join(max(0.1, deadline - time.monotonic()))
        for proc in procs:
            if proc.is_alive():
                proc.kill()
                proc.join()
        codes = [proc.exitcode for proc in procs]
        if codes != [0] * _WORLD:
            raise RuntimeError(f"the 2-rank training failed or ran past {timeout} s: {codes}")
        return [json.loads(Path(out, f"rank{r}.json").read_text()) for r in range(_WORLD)]


def _shares(ranks: list[list[dict[str, Any]]]) -> dict[int, dict[str, Any]]:
    """Per ``sync_every``: the shares (mean over ranks, one per repeat) and a run's counts."""
    out: dict[int, dict[str, Any]] = {}
    for i, run in enumerate(ranks[0]):
        peers = [r[i] for r in ranks]
        share = statistics.mean(p["sync_seconds"] / p["seconds"] for p in peers)
        ms = statistics.mean(1e3 * p["sync_seconds"] / max(1, p["collectives"]) for p in peers)
        row = out.setdefault(run["sync_every"], {"shares": [], "ms": [], "run": run})
        row["shares"].append(share)
        row["ms"].append(ms)
    return out


def _reuse_body(
    memory: list[tuple[str, float]],
    decided: list[dict[str, Any]],
    shares: dict[int, dict[str, Any]],
    cfg: ShareConfig,
) -> str:
    memory_table = markdown_table(
        ["table layout", "bytes per sample per rank", "at 1e8 samples"],
        [[name, f"{b:.0f}", f"{b * 1e8 / 1e9:.1f} GB"] for name, b in memory],
    )
    decision_table = markdown_table(
        ["samples", "base sampler", "decision (CPU s)", "samples decided/s"],
        [
            [
                f"{r['n']:.0e}".replace("+0", ""),
                f"`{r['base']}`",
                fmt_spread(r["seconds"], "{:.2f}")
                if r["seconds"]
                else f"not run: {r['free'] / 2**30:.1f} GiB free",
                fmt_spread([r["n"] / s for s in r["seconds"]], "{:,.0f}"),
            ]
            for r in decided
        ],
    )
    share_table = markdown_table(
        [
            "`sync_every`",
            "steps per rank",
            "collectives per rank",
            "ms per collective",
            "pending rows' peak (bytes)",
            "share of training time",
        ],
        [
            [
                f"{every}" + (" (default)" if every == ss.ScoreTable(1).sync_every else ""),
                row["run"]["steps"],
                row["run"]["collectives"],
                fmt_spread(row["ms"], "{:.2f}"),
                f"{row['run']['pending_bytes']:,}",
                fmt_spread([100 * s for s in row["shares"]], "{:.2f}", " %"),
            ]
            for every, row in sorted(shares.items())
        ],
    )
    repeats = cfg.repeats
    return "\n\n".join(
        [
            "### Loss reuse: the score table",
            "Memory per rank: `table.nbytes` of a table of 1e6 samples, per sample. Every rank "
            f"holds the whole table. (The layout before this one held {_OLD_LAYOUT} bytes per "
            "sample: three float64 arrays and two int64 ones.)",
            memory_table,
            "Deciding an epoch: `len(sampler)` after `set_epoch(1)` for a "
            "`ReuseSampler(base, table, RelativeProbabilistic(keep=0.3))` (chunks of 256), the "
            "table holding a random loss for every sample; CPU seconds on one thread, "
            "median (min–max) of 3 repeats at 1e6 and below, one above. 1e8 runs over the "
            "`SequentialSampler` only (torch's `RandomSampler` builds a Python list of every "
            f"index), and only with {LARGE_NEEDS_BYTES / 2**30:.0f} GiB of memory free.",
            decision_table,
            f"DDP exchanges: {_WORLD} gloo CPU processes (one thread each) train an MLP "
            f"({cfg.features}-{cfg.width}-{cfg.width}-10) on {cfg.samples} random samples of "
            f"{cfg.features} features (labels from a random teacher), batch {cfg.batch_size} "
            f"per rank, {cfg.epochs} epochs, `ReuseSampler(DistributedSampler(data), table, "
            f"RelativeProbabilistic(keep={cfg.keep}))`, `table.update` at every step. Share of "
            "training time = `table.sync_seconds` / the run's wall time (between barriers), "
            f"mean over ranks; median (min–max) of {repeats} run(s) of each setting, "
            "interleaved. With the default, the table exchanges when the sampler decides an "
            "epoch and every 256 steps: about once an epoch here, so its share falls as epochs "
            "grow longer (and the per-collective figure includes the wait for the slower rank).",
            share_table,
        ]
    )


def run(smoke: bool = False) -> Section:
    """Measures the machinery and returns the report's section."""
    rows = measure(smoke)
    table = markdown_table(
        ["history", "internals (samples/s)", "whole loader (samples/s)", "keep rate"],
        [
            [
                f"{r['history']:,}",
                fmt_spread(r["internals"], "{:,.0f}"),
                fmt_spread(r["loader"], "{:,.0f}"),
                f"{statistics.median(r['keep']):.2f}",
            ]
            for r in rows
        ],
    )
    at_1e4 = next(r for r in rows if r["history"] == 10_000)
    internals = statistics.median(at_1e4["internals"])
    loader = statistics.median(at_1e4["loader"])
    targets = tuple(
        Target(
            f"{what} at history 10,000 on one core",
            f"at least {TARGET:,.0f} samples/s",
            f"{rate:,.0f} samples/s",
            met=rate >= TARGET,
        )
        for what, rate in (("Internals", internals), ("Whole loader", loader))
    )
    cfg = SHARE_SMOKE if smoke else SHARE_FULL
    shares = _shares(collective_share(cfg, timeout=120 if smoke else 900))
    default = statistics.median(shares[ss.ScoreTable(1).sync_every]["shares"])
    targets += (
        Target(
            "Score table exchanges in a 2-rank training run, default `sync_every`",
            f"under {SHARE_TARGET:.0%} of the training time",
            f"{default:.2%}",
            met=default < SHARE_TARGET,
        ),
    )
    body = "\n\n".join(
        [
            f"Raw batches of {BATCH} samples ({FEATURES} float features and a label), "
            "`RelativeProbabilistic(beta=1)`, one CPU thread, the history full before timing. "
            "*Internals* calls the history update, the policy decision, the slicing of the "
            "kept samples and their joining into refined batches directly; *whole loader* "
            "iterates a `SiftingDataLoader` over the same batches with a loss function that "
            "returns a loss column the batch carries (no model cost). Median (min–max) of "
            f"{'1' if smoke else '5'} repeat(s).",
            table,
            _reuse_body(table_memory(), decisions(smoke), shares, cfg),
        ]
    )
    return Section("Machinery: sifting without a model", body, targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke).markdown())


if __name__ == "__main__":
    main()
