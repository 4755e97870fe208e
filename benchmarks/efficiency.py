"""Efficiency benchmark: the measured per-epoch speedup of sifting against the ideal.

For each case, whole epochs are timed in turn (interleaved, repeated): a plain training
epoch, a sifted training epoch, an epoch of scoring passes only, and an epoch of data loading
only. With, per sample, ``T`` the plain training cost and ``F`` the scoring cost (both with
the data loading time taken out) and ``k`` the kept fraction, the best possible per-epoch
speedup is ``1 / (F/T + k)``; the measured one is ``(plain - data) / (sifted - data)``.
Efficiency = measured / ideal; what is missing is smartsift's own overhead.

Each case is also given to :func:`smartsift.profile` (after the timed epochs, on the same
model, data, loss, optimizer and policy, which it leaves as they were), and its predicted
speedup at the measured ``k`` and its verdict are set beside the measured speedup.

Times are CPU seconds of the process, on one thread (a shared machine's wall clock varies far
more than the effect measured). Run it directly (``python benchmarks/efficiency.py
[--smoke]``) or call :func:`run`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent))

import charlm
from common import fmt_spread, markdown_table

import smartsift as ss
from smartsift.demo import ConvNet, cross_entropy_per_sample, make_mnist1d
from smartsift.scoring import score

__all__ = ["Case", "measure_case", "run"]

TARGET = 0.95


@dataclass(frozen=True)
class Case:
    """One model, data set and policy to measure."""

    name: str
    build: Callable[[bool], tuple[torch.nn.Module, DataLoader, Any, Callable[[Any], Any]]]
    policy: ss.Policy
    refined_batch_size: int | None = None


def _mnist(width: int, batch_size: int, frozen_body: bool = False) -> Callable[[bool], Any]:
    """An MNIST-1D ConvNet; with ``frozen_body``, only its linear head is trained.

    A frozen body (``requires_grad=False``, as a pretrained feature extractor) still runs its
    forward pass in every training step, but nothing flows back through it, so a training step
    costs little more than a scoring pass: the forward pass dominates and sifting cannot pay.
    """

    def build(smoke: bool) -> Any:
        train, _ = make_mnist1d(1000 if smoke else 20_000)
        torch.manual_seed(0)
        model = ConvNet(width=8 if smoke else width)
        if frozen_body:
            for name, param in model.named_parameters():
                param.requires_grad_(name.startswith("head."))
        loader = DataLoader(
            train, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
        )

        def loss(batch: Any) -> torch.Tensor:
            x, y = batch
            return F.cross_entropy(model(x), y)

        return model, loader, cross_entropy_per_sample, loss

    return build


def _lm(build_smoke: bool) -> Any:
    text, _ = charlm.corpus(20_000 if build_smoke else 100_000)
    windows = charlm.make_windows(text, 64)
    torch.manual_seed(0)
    model = charlm.CharTransformer(context=64, dim=32 if build_smoke else 64)
    loader = DataLoader(
        TensorDataset(windows), batch_size=32, shuffle=True,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip

    def loss(batch: Any) -> torch.Tensor:
        return charlm.per_sample_loss(model, batch).mean()

    return model, loader, charlm.per_sample_loss, loss


CASES = (
    Case("MNIST-1D ConvNet w100, batch 128", _mnist(100, 128), ss.RelativeProbabilistic(1.0, 1000)),
    Case("MNIST-1D ConvNet w100, batch 128", _mnist(100, 128), ss.RelativeProbabilistic(3.0, 1000)),
    Case("MNIST-1D ConvNet w100, batch 128", _mnist(100, 128), ss.TopK(0.5)),
    Case(
        "MNIST-1D ConvNet w100, batch 256 refined to 128 (the demo)",
        _mnist(100, 256),
        ss.RelativeProbabilistic(1.0, 1000),
        refined_batch_size=128,
    ),
    Case("MNIST-1D ConvNet w32, batch 128", _mnist(32, 128), ss.RelativeProbabilistic(1.0, 1000)),
    Case("char transformer, batch 32", _lm, ss.RelativeProbabilistic(1.0, 1000)),
    Case(
        "MNIST-1D ConvNet w100 with a frozen body (only the linear head trained), batch 128",
        _mnist(100, 128, frozen_body=True),
        ss.RelativeProbabilistic(1.0, 1000),
    ),
)


def measure_case(case: Case, smoke: bool, repeats: int) -> dict[str, Any]:
    """Times the four kinds of epoch ``repeats`` times, interleaved; returns the figures."""
    model, loader, loss_fn, train_loss = case.build(smoke)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    sifting = ss.SiftingDataLoader(
        loader, model, loss_fn, policy=case.policy, seed=0, batch_size=case.refined_batch_size
    )
    clock = time.process_time

    def train_epoch(batches: Any) -> float:
        start = clock()
        for batch in batches:
            loss = train_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        return clock() - start

    def score_epoch() -> float:
        start = clock()
        for batch in loader:
            score(model, loss_fn, batch, len(batch[0]))
        return clock() - start

    def data_epoch() -> float:
        start = clock()
        for _ in loader:
            pass
        return clock() - start

    train_epoch(loader)  # warm-up, and a model that has learnt something
    train_epoch(sifting)
    n = len(loader.dataset)  # type: ignore[arg-type]
    plain, sifted, scoring, data, keep, selection = [], [], [], [], [], []
    for _ in range(repeats):
        before = sifting.stats
        plain.append(train_epoch(loader))
        sifted.append(train_epoch(sifting))
        after = sifting.stats
        keep.append(
            (after.samples_kept - before.samples_kept) / (after.samples_seen - before.samples_seen)
        )
        selection.append(after.selection_s - before.selection_s)
        scoring.append(score_epoch())
        data.append(data_epoch())
    d = statistics.median(data)
    t = (statistics.median(plain) - d) / n
    f = (statistics.median(scoring) - d) / n
    k = statistics.median(keep)
    ideal = 1.0 / (f / t + k)
    measured = [(p - d) / (s - d) for p, s in zip(plain, sifted, strict=True)]
    # The profiler's advice for the same setup, after the timed epochs so as not to disturb
    # them; it restores the model and optimizer, and it too runs on the one thread.
    warmup = 1 if smoke else 3
    report = ss.profile(
        model,
        loader,
        loss_fn,
        optimizer,
        steps=min(4 if smoke else 20, len(loader) - warmup),
        warmup=warmup,
        train_step=lambda _model, batch: train_loss(batch),
        policy=case.policy,
    )
    return {
        "case": case.name,
        "policy": repr(case.policy),
        "f_over_t": f / t,
        "keep": k,
        "ideal": ideal,
        "measured": measured,
        "efficiency": [m / ideal for m in measured],
        "machinery_share": statistics.median(
            sel / s for sel, s in zip(selection, sifted, strict=True)
        ),
        "predicted": report.predicted_speedup(k),
        "recommended": report.recommended,
        "profile_steps": report.steps,
    }


def _agreement(results: list[dict[str, Any]]) -> str:
    """One sentence comparing the profiler's predictions and verdicts with the measurements."""
    gaps = [
        (r["predicted"] - statistics.median(r["measured"])) / statistics.median(r["measured"])
        for r in results
    ]
    worst = max(range(len(gaps)), key=lambda i: abs(gaps[i]))
    sift = [r for r in results if r["recommended"]]
    sift_ok = sum(statistics.median(r["measured"]) > 1 for r in sift)
    dont = [r for r in results if not r["recommended"]]
    dont_ok = sum(statistics.median(r["measured"]) <= 1 for r in dont)
    verdicts = (
        f'{sift_ok} of {len(sift)} "sift" verdict(s) coincide with a measured speedup above '
        f'1x and {dont_ok} of {len(dont)} "don\'t sift" verdict(s) with a measured speedup at '
        "or below 1x (sifting no faster than plain training)"
    )
    return (
        "Profiler against measurement: the predicted speedup at the measured k differs from "
        f"the median measured one by at most {abs(gaps[worst]):.0%} "
        f"({'over' if gaps[worst] > 0 else 'under'}-predicted, case {worst + 1}: "
        f"{results[worst]['case']}, `{results[worst]['policy']}`); {verdicts}; so the "
        f"verdicts {'agree' if sift_ok == len(sift) and dont_ok == len(dont) else 'disagree'} "
        "with the measurements."
    )


def run(smoke: bool = False) -> str:
    """Measures every case and returns a markdown section."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    repeats = 1 if smoke else 5
    try:
        results = [measure_case(c, smoke, repeats) for c in (CASES[:1] if smoke else CASES)]
    finally:
        torch.set_num_threads(threads)
    table = markdown_table(
        [
            "case",
            "policy",
            "F/T",
            "keep k",
            "ideal 1/(F/T+k)",
            "measured speedup",
            "efficiency",
            "machinery share of sifted epoch",
            "profiler's predicted speedup at k",
            "profiler's verdict",
        ],
        [
            [
                r["case"],
                f"`{r['policy']}`",
                f"{r['f_over_t']:.3f}",
                f"{r['keep']:.3f}",
                f"{r['ideal']:.2f}x",
                fmt_spread(r["measured"], "{:.2f}", "x"),
                fmt_spread(r["efficiency"], "{:.2f}"),
                f"{r['machinery_share']:.1%}",
                f"{r['predicted']:.2f}x",
                "sift" if r["recommended"] else "don't sift",
            ]
            for r in results
        ],
    )
    effs = [statistics.median(r["efficiency"]) for r in results]
    met = sum(e >= TARGET for e in effs)
    steps = "–".join(sorted({str(r["profile_steps"]) for r in results}, key=int))
    return "\n\n".join(
        [
            "## Efficiency: measured per-epoch speedup against the ideal",
            "Per case, whole epochs are timed in turn, "
            f"{repeats} time(s): plain training, sifted training (`sift_delay=0`), scoring "
            "passes only, and data loading only. `T` and `F` are the per-sample costs of a "
            "plain training step and of a scoring pass, the data loading time taken out of "
            "both; `k` is the measured kept fraction; the measured speedup is "
            "(plain − data) / (sifted − data). Times are CPU seconds of the process on one "
            "thread. Median (min–max) over the repeats; the machinery share is the loader's "
            "own `selection_s` (decision, history, slicing, joining) over the sifted epoch. "
            "Where refined batches are smaller than raw ones, `T` is still measured at the "
            "raw batch size, so the ideal assumes a refined step costs as much per sample; "
            "smaller batches cost more per sample, which shows in the efficiency. The last two "
            "columns are `ss.profile(...)` on the same model, data, loss, optimizer and policy "
            f"(after the timed epochs; {steps} measured steps, wall clock): "
            "`report.predicted_speedup(k)` at the measured `k`, and `report.recommended`.",
            table,
            _agreement(results),
            f"Target: efficiency of at least {TARGET:.2f}. Met in {met} of {len(results)} "
            f"case(s) (median efficiencies: {', '.join(f'{e:.2f}' for e in effs)}).",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke))


if __name__ == "__main__":
    main()
