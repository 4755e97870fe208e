"""Machinery benchmark: how many samples per second sifting itself handles, without a model.

Two measurements, on one CPU thread, for loss histories of 500, 10 000 and 100 000 losses:

- *internals*: the sift step the loader runs for a sifted raw batch, called directly
  (:func:`smartsift.engine.step.sift_step`: the selector's history update and decision, slicing
  the kept samples; then the refined batcher joining them into batches), so the figure is of
  the code the loader really runs;
- *loader*: a ``SiftingDataLoader`` driven end to end over pre-built raw batches, with an
  identity-cost model: the loss function returns a loss column the batch already carries,
  so the figure is everything the loader does per raw batch but the model.

Run it from the repository root (``python -m benchmarks.machinery [--smoke]``) or call
:func:`run`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

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
        ]
    )
    return Section("Machinery: sifting without a model", body, targets)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke).markdown())


if __name__ == "__main__":
    main()
