"""Efficiency benchmark: the measured per-epoch speedup of sifting against the ideal.

For each case, a plain and a sifted training epoch are timed in turn, repeatedly. Inside them,
``T`` is the plain training steps' time per sample, ``F`` the time per sample of the user's loss
function in the sifted epoch's scoring passes, and ``k`` the kept fraction: ``1 / (F/T + k)`` is
the best possible per-epoch speedup. The measured one is the plain steps' time over the sifted
epoch's time without data loading. Efficiency = measured / ideal; what is missing is
smartsift's own cost, which is also measured directly.

Each case is also given to :func:`smartsift.profile` (after the timed epochs, on the same
model, data, loss, optimizer and policy, which it leaves as they were), and its predicted
speedup at the measured ``k`` and its verdict are set beside the measured speedup.

Loss reuse (:class:`smartsift.ReuseSampler`) has no scoring pass, so its ideal is ``1 / k``: an
epoch that trains the fraction ``k`` should cost ``k`` of a plain one. For a few of the same
cases, a plain epoch (the ``DataLoader`` over the whole set, a training step per batch) and a
reuse epoch (the sampler's decision, loading the kept samples through
:class:`smartsift.IndexedDataset`, the training steps and ``table.update``) are run side by
side, after a first reuse epoch that filled the score table (``max_age=None``, so that every
candidate is decided and ``k`` is the policy's); ``k`` is the realised trained fraction,
efficiency = (plain / reuse epoch time) / (1 / k). The decision's and ``table.update``'s own
shares of the reuse epoch are measured directly, and the realised kept fraction of
``RelativeProbabilistic(keep=...)`` is set beside the stated one. The two epochs are
interleaved batch by batch (see :func:`measure_reuse`) because whole epochs of such different
lengths, timed one after the other, see different loads on a shared machine.

Times are CPU seconds of the process, on one thread (a shared machine's wall clock varies far
more than the effect measured). Run it from the repository root (``python -m
benchmarks.efficiency [--smoke]``) or call :func:`run`.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

import smartsift as ss
from benchmarks import charlm
from benchmarks.common import Section, Target, fmt_spread, markdown_table
from benchmarks.demo import ConvNet, cross_entropy_per_sample, make_mnist1d
from benchmarks.harness import seeded
from smartsift.tools.profiling import CANDIDATE_KEEPS, MIN_SPEEDUP

__all__ = ["Case", "ReuseCase", "measure_case", "measure_reuse", "reuse_report", "run"]

TARGET = 0.95
# Loss reuse: how far the realised kept fraction may be from a stated keep.
KEEP_TOLERANCE = 0.02
# A "don't sift" verdict claims that even the smallest keep the profiler considers would be
# less than its threshold faster per epoch; that is where it is checked.
DONT_SIFT_CHECK_KEEP = CANDIDATE_KEEPS[-1]
WORTH_IT = MIN_SPEEDUP


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
        model = seeded(lambda: ConvNet(width=8 if smoke else width), 0)
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
    model = seeded(lambda: charlm.CharTransformer(context=64, dim=32 if build_smoke else 64), 0)
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


@dataclass(frozen=True)
class ReuseCase:
    """One model and data set trained with loss reuse at a stated keep."""

    name: str
    build: Callable[[bool], tuple[torch.nn.Module, DataLoader, Any, Callable[[Any], Any]]]
    keep: float


REUSE_CASES = (
    ReuseCase("MNIST-1D ConvNet w100, batch 128", _mnist(100, 128), 0.3),
    ReuseCase("MNIST-1D ConvNet w100, batch 128", _mnist(100, 128), 0.5),
    ReuseCase("char transformer, batch 32", _lm, 0.3),
)


def measure_case(case: Case, smoke: bool, repeats: int) -> dict[str, Any]:
    """Times plain and sifted epochs ``repeats`` times, in turn; returns the figures."""
    model, loader, loss_fn, train_loss = case.build(smoke)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    clock = time.process_time
    forward = [0.0]  # CPU seconds inside the user's loss_fn during scoring passes

    def timed_loss_fn(model: torch.nn.Module, batch: Any) -> torch.Tensor:
        start = clock()
        try:
            return loss_fn(model, batch)
        finally:
            forward[0] += clock() - start

    sifting = ss.SiftingDataLoader(
        loader, model, timed_loss_fn, policy=case.policy, seed=0, batch_size=case.refined_batch_size
    )

    def train_epoch(batches: Any) -> tuple[float, float]:
        """The epoch's seconds, and those spent in training steps."""
        start, steps = clock(), 0.0
        for batch in batches:
            t0 = clock()
            loss = train_loss(batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps += clock() - t0
        return clock() - start, steps

    train_epoch(loader)  # warm-up, and a model that has learnt something
    train_epoch(sifting)
    n = len(loader.dataset)  # type: ignore[arg-type]
    rows: list[dict[str, float]] = []
    for _ in range(repeats):
        before, forward[0] = sifting.stats, 0.0
        plain, plain_steps = train_epoch(loader)
        sifted, sifted_steps = train_epoch(sifting)
        after = sifting.stats
        seen = after.samples_seen - before.samples_seen
        data = plain - plain_steps  # loading and looping: the same raw batches in both
        t, f = plain_steps / n, forward[0] / seen
        k = (after.samples_kept - before.samples_kept) / seen
        work = sifted - data  # the sifted epoch without its data loading
        rows.append(
            {
                "f_over_t": f / t,
                "keep": k,
                "ideal": 1.0 / (f / t + k),
                "measured": plain_steps / work,
                "overhead": (work - forward[0] - sifted_steps) / work,
                "machinery": (after.selection_s - before.selection_s) / work,
                "whole": plain / sifted,
            }
        )

    def med(key: str) -> float:
        return statistics.median(r[key] for r in rows)

    k = med("keep")
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
    # Its verdict is checked where it points: a "sift" at the keep it recommends, a "don't
    # sift" at a quarter; timed against plain epochs in turn, as above.
    checked = report.recommended_keep or DONT_SIFT_CHECK_KEEP
    rec_loader = ss.SiftingDataLoader(
        loader,
        model,
        loss_fn,
        policy=ss.RelativeProbabilistic(
            beta=1.0 / checked - 1.0, history=case.policy.history or 1000
        ),
        seed=0,
        batch_size=case.refined_batch_size,
    )
    train_epoch(rec_loader)
    at_rec = []
    for _ in range(max(1, repeats - 2)):
        p, r = train_epoch(loader)[0], train_epoch(rec_loader)[0]
        at_rec.append(p / r)
    return {
        "case": case.name,
        "policy": repr(case.policy),
        "f_over_t": med("f_over_t"),
        "keep": k,
        "ideal": med("ideal"),
        "measured": [r["measured"] for r in rows],
        "efficiency": [r["measured"] / r["ideal"] for r in rows],
        "overhead": med("overhead"),
        "machinery_share": med("machinery"),
        "whole": [r["whole"] for r in rows],
        "predicted": report.predicted_speedup(k),
        "recommended": report.recommended,
        "checked_keep": checked,
        "predicted_at_rec": report.predicted_speedup(checked),
        "measured_at_rec": at_rec,
        "keep_at_rec": rec_loader.stats.keep_rate,
        "profile_steps": report.steps,
    }


class _EpochRun:
    """One epoch of a loader, advanced a batch at a time; CPU seconds summed over its batches.

    ``seconds`` counts creating the iterator, loading each batch and ``step``; ``step_s`` only
    ``step``.
    """

    def __init__(self, loader: DataLoader, step: Callable[[Any], None]) -> None:
        self.step = step
        self.total = max(1, len(loader))
        self.batches = 0
        self.done = False
        self.step_s = 0.0
        start = time.process_time()
        self.iterator = iter(loader)
        self.seconds = time.process_time() - start

    @property
    def progress(self) -> float:
        return self.batches / self.total

    def advance(self) -> None:
        clock = time.process_time
        start = clock()
        try:
            batch = next(self.iterator)
        except StopIteration:
            self.done = True
            self.seconds += clock() - start
            return
        t0 = clock()
        self.step(batch)
        end = clock()
        self.step_s += end - t0
        self.seconds += end - start
        self.batches += 1


def _interleave(a: _EpochRun, b: _EpochRun) -> None:
    """Runs both epochs to the end, always advancing the one behind in its fraction done, so
    that a change in the machine's load falls on both alike."""
    while not (a.done and b.done):
        behind = a if b.done or (not a.done and a.progress <= b.progress) else b
        behind.advance()


def measure_reuse(case: ReuseCase, smoke: bool, repeats: int) -> dict[str, Any]:
    """Times plain and loss-reuse epochs ``repeats`` times, side by side; returns the figures.

    The reuse loop is the documented one: ``ReuseSampler(RandomSampler(...), table,
    RelativeProbabilistic(keep=case.keep), max_age=None)`` over ``IndexedDataset(dataset)``
    in a ``DataLoader`` of the plain loader's batch size, and a step that feeds
    ``table.update(ids, per_sample)``. A plain warm-up epoch and a first reuse epoch (nothing
    scored yet: it trains everything and fills the table) are not timed. Then each timed pair
    is a plain epoch and a reuse epoch interleaved batch by batch (:func:`_interleave`); each
    epoch's time is the sum of its own parts, including the reuse epoch's decision (made by
    ``len(sampler)`` after ``set_epoch``, as ``DataLoader`` would on the first index, so that
    it can be timed). ``max_age=None``: every sample holds a score from the first epoch, so
    every candidate is decided and the trained fraction is the policy's own.
    """
    model, loader, loss_fn, train_loss = case.build(smoke)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-2)
    clock = time.process_time
    dataset = loader.dataset
    n = len(dataset)  # type: ignore[arg-type]
    table = ss.ScoreTable(n)
    sampler = ss.ReuseSampler(
        RandomSampler(dataset, generator=torch.Generator().manual_seed(0)),  # type: ignore[arg-type]
        table,
        ss.RelativeProbabilistic(keep=case.keep),
        max_age=None,
    )
    reuse_loader = DataLoader(
        ss.IndexedDataset(dataset), sampler=sampler, batch_size=loader.batch_size
    )
    counts = {"update_s": 0.0, "trained": 0}

    def plain_step(batch: Any) -> None:
        loss = train_loss(batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def reuse_step(batch: Any) -> None:
        ids, *sample = batch
        per_sample = loss_fn(model, sample)
        start = clock()
        table.update(ids, per_sample)
        counts["update_s"] += clock() - start
        counts["trained"] += len(ids)
        loss = per_sample.mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def reuse_epoch(epoch: int) -> tuple[_EpochRun, float]:
        """The epoch, decided (and the decision's seconds), ready to advance."""
        start = clock()
        sampler.set_epoch(epoch)
        len(sampler)  # decides the epoch
        decision = clock() - start
        run = _EpochRun(reuse_loader, reuse_step)
        run.seconds += decision
        return run, decision

    _interleave(_EpochRun(loader, plain_step), reuse_epoch(0)[0])  # warm-up; fills the table
    rows: list[dict[str, float]] = []
    for epoch in range(1, repeats + 1):
        counts.update(update_s=0.0, trained=0)
        plain = _EpochRun(loader, plain_step)
        reuse, decision = reuse_epoch(epoch)
        _interleave(plain, reuse)
        stats = sampler.stats
        assert stats is not None and stats.epoch == epoch
        k = stats.keep_rate
        plain_load = (plain.seconds - plain.step_s) / n
        reuse_load = (reuse.seconds - decision - reuse.step_s) / max(1, stats.trained)
        rows.append(
            {
                "keep": k,
                "decided_keep": stats.decided_keep_rate,
                "decided": stats.decided,
                "kept": stats.kept,
                "candidates": stats.candidates,
                "sampler_trained": stats.trained,
                "trained": counts["trained"],  # samples the training steps saw
                "measured": plain.seconds / reuse.seconds,
                "efficiency": k * plain.seconds / reuse.seconds,
                "decision": decision / reuse.seconds,
                "update": counts["update_s"] / reuse.seconds,
                "step_ratio": (reuse.step_s - counts["update_s"])
                / max(1, stats.trained)
                / (plain.step_s / n),
                "load_ratio": reuse_load / plain_load if plain_load > 0 else float("nan"),
            }
        )
    return {
        "case": case.name,
        "stated_keep": case.keep,
        "samples": n,
        "batch_size": loader.batch_size,
        **{key: [r[key] for r in rows] for key in rows[0]},
    }


def reuse_report(results: list[dict[str, Any]]) -> tuple[str, tuple[Target, ...]]:
    """The loss-reuse part of the section (text and table) and its two targets."""
    table = markdown_table(
        [
            "reuse case",
            "stated keep",
            "realised keep (decided)",
            "trained fraction k",
            "ideal 1/k",
            "measured speedup",
            "efficiency",
            "decision's share",
            "`table.update`'s share",
            "step per sample, reuse / plain",
            "loading per sample, reuse / plain",
        ],
        [
            [
                r["case"],
                f"{r['stated_keep']:.2f}",
                fmt_spread(r["decided_keep"], "{:.3f}"),
                fmt_spread(r["keep"], "{:.3f}"),
                f"{1.0 / statistics.median(r['keep']):.2f}x",
                fmt_spread(r["measured"], "{:.2f}", "x"),
                fmt_spread(r["efficiency"], "{:.2f}"),
                fmt_spread([100 * v for v in r["decision"]], "{:.1f}", "%"),
                fmt_spread([100 * v for v in r["update"]], "{:.1f}", "%"),
                fmt_spread(r["step_ratio"], "{:.2f}"),
                fmt_spread(r["load_ratio"], "{:.2f}"),
            ]
            for r in results
        ],
    )
    repeats = len(results[0]["keep"]) if results else 0
    text = "\n\n".join(
        [
            "### Loss reuse: per-epoch cost against k·T",
            "Loss reuse (`ss.ReuseSampler` and `ss.ScoreTable`, [docs/reuse.md](reuse.md)) "
            "has no scoring pass, so an epoch that trains the fraction `k` of the data should "
            "cost `k` of a plain epoch (`k·T`): the ideal speedup is 1/k. Per case, the "
            "training loop is the documented one: `ReuseSampler(RandomSampler(data), table, "
            "RelativeProbabilistic(keep=...), max_age=None)` over `ss.IndexedDataset(data)` in "
            "a `DataLoader` of the plain batch size, and a step that computes the per-sample "
            "losses, feeds `table.update(ids, per_sample)` and trains on their mean. After a "
            "plain warm-up epoch and a first reuse epoch that trains everything and fills the "
            f"table, a plain epoch and a reuse epoch are timed side by side, {repeats} "
            "time(s), in CPU seconds of the process on one thread. Both are whole epochs: the "
            "plain one loads every sample and trains on every batch; the reuse one includes "
            "the sampler's decision, loading the kept samples, the training steps and "
            "`table.update`. The two are interleaved batch by batch (the one behind in its "
            "fraction of batches done goes next), each epoch's time the sum of its own parts: "
            "whole epochs of such different lengths, timed one after the other, see "
            "different loads on a shared machine. `max_age=None`, so that every sample holds "
            "a score from the first epoch and every candidate is decided: `k` (the epoch's "
            "trained fraction, `sampler.stats.keep_rate`) is the policy's own, not diluted by "
            "stale samples trained only to refresh their scores (with the default "
            "`max_age=3` an epoch trains at least about a quarter of the data).",
            "Measured speedup = plain epoch / reuse epoch; efficiency = measured × k. Where "
            "the missing efficiency goes: the shares of the reuse epoch spent in the "
            "decision (once per epoch, over every candidate) and in `table.update` (once per "
            "batch), and the reuse epoch's cost per trained sample against the plain "
            "epoch's, for the training step (without `table.update`; a reuse epoch usually "
            "ends with a partial batch, over whose fewer samples the per-batch costs, the "
            "optimizer step among them, are spread) and for data loading "
            "(`IndexedDataset`'s wrapper, the ids' collation and the sampler's own "
            "iteration included). The realised keep is the fraction of decided "
            "candidates kept (`decided_keep_rate`), which `RelativeProbabilistic(keep=...)` "
            "holds by adapting its beta; its target is checked over all the timed epochs "
            "of a case, since one epoch's fraction also varies by the random draws. Median "
            "(min–max) over the repeats.",
            table,
        ]
    )
    effs = [statistics.median(r["efficiency"]) for r in results]
    met = sum(e >= TARGET for e in effs)
    realised = [sum(r["kept"]) / sum(r["decided"]) for r in results]
    gaps = [abs(k - r["stated_keep"]) for k, r in zip(realised, results, strict=True)]
    targets = (
        Target(
            "Loss reuse: efficiency (measured / ideal 1/k per-epoch speedup) in every case",
            f"at least {TARGET:.2f}",
            f"at least {TARGET:.2f} in {met} of {len(results)} case(s), median efficiencies "
            + ", ".join(f"{e:.3f}" for e in effs),
            met=met == len(results),
        ),
        Target(
            "Loss reuse: realised kept fraction of the decided samples (over the timed "
            "epochs) against the stated keep, in every case",
            f"within {KEEP_TOLERANCE:.2f}",
            ", ".join(
                f"{k:.3f} for {r['stated_keep']:.2f}"
                for k, r in zip(realised, results, strict=True)
            ),
            met=all(g <= KEEP_TOLERANCE for g in gaps),
        ),
    )
    return text, targets


def _agreement(results: list[dict[str, Any]]) -> str:
    """Sentences comparing the profiler's predictions and verdicts with the measurements."""
    pairs = [(r["predicted"], statistics.median(r["whole"])) for r in results] + [
        (r["predicted_at_rec"], statistics.median(r["measured_at_rec"])) for r in results
    ]
    gaps = [abs(p - m) / m for p, m in pairs]
    holds = [_verdict_holds(r) for r in results]
    n_sift = sum(r["recommended"] for r in results)
    return (
        f"Profiler against measurement: its predicted speedups differ from the measured ones by "
        f"{statistics.median(gaps):.0%} in the median and {max(gaps):.0%} at most (over both "
        f"keeps of every case). Its verdict holds in {sum(holds)} of {len(results)} case(s): "
        f"{sum(h for h, r in zip(holds, results, strict=True) if r['recommended'])} of "
        f'{n_sift} "sift" verdicts are faster than plain training at the keep it recommends, '
        f"{sum(h for h, r in zip(holds, results, strict=True) if not r['recommended'])} of "
        f'{len(results) - n_sift} "don\'t sift" verdicts are less than {WORTH_IT}x faster '
        f"even at keep {DONT_SIFT_CHECK_KEEP}."
    )


def _verdict_holds(r: dict[str, Any]) -> bool:
    at = statistics.median(r["measured_at_rec"])
    return at > 1.0 if r["recommended"] else at < WORTH_IT


def run(smoke: bool = False) -> Section:
    """Measures every case and returns the report's section."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    repeats = 1 if smoke else 5
    try:
        results = [measure_case(c, smoke, repeats) for c in (CASES[:1] if smoke else CASES)]
        reuse = [
            measure_reuse(c, smoke, repeats) for c in (REUSE_CASES[:1] if smoke else REUSE_CASES)
        ]
    finally:
        torch.set_num_threads(threads)
    efficiency_table = markdown_table(
        [
            "case",
            "policy",
            "F/T",
            "keep k",
            "ideal 1/(F/T+k)",
            "measured speedup",
            "efficiency",
            "smartsift's share of the sifted epoch",
            "of which machinery",
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
                f"{r['overhead']:.1%}",
                f"{r['machinery_share']:.1%}",
            ]
            for r in results
        ],
    )
    profiler_table = markdown_table(
        [
            "case",
            "predicted at k",
            "measured at k",
            "verdict",
            "keep checked",
            "predicted there",
            "measured there",
            "kept there",
            "verdict holds",
        ],
        [
            [
                r["case"],
                f"{r['predicted']:.2f}x",
                fmt_spread(r["whole"], "{:.2f}", "x"),
                "sift" if r["recommended"] else "don't sift",
                f"{r['checked_keep']:.2f}",
                f"{r['predicted_at_rec']:.2f}x",
                fmt_spread(r["measured_at_rec"], "{:.2f}", "x"),
                f"{r['keep_at_rec']:.2f}",
                "yes" if _verdict_holds(r) else "**no**",
            ]
            for r in results
        ],
    )
    effs = [statistics.median(r["efficiency"]) for r in results]
    met = sum(e >= TARGET for e in effs)
    steps = "–".join(sorted({str(r["profile_steps"]) for r in results}, key=int))
    target = Target(
        "Efficiency (measured / ideal per-epoch speedup) in every case",
        f"at least {TARGET:.2f}",
        f"at least {TARGET:.2f} in {met} of {len(results)} case(s), median efficiencies "
        + ", ".join(f"{e:.3f}" for e in effs),
        met=met == len(results),
    )
    reuse_text, reuse_targets = reuse_report(reuse)
    body = "\n\n".join(
        [
            f"Per case, a plain and a sifted epoch (`sift_delay=0`) are timed in turn, "
            f"{repeats} time(s), in CPU seconds of the process on one thread. Within them, "
            "`T` is the plain training steps' time per sample, `F` the time per sample spent "
            "in the user's loss function during the sifted epoch's scoring passes (as it "
            "runs there, between training steps), and `k` the kept fraction, so "
            "1/(F/T+k) is the best any sifting could do with this model on this machine. The "
            "measured speedup is the plain epoch's training steps over the sifted epoch "
            "without its data loading (the plain epoch's time outside its steps: the same "
            "raw batches are loaded in both); efficiency = measured / ideal. What is missing "
            "is smartsift's own cost, shown directly: the sifted epoch's time outside data "
            "loading, the user's loss function and the training steps, as a share of the "
            "epoch without data loading; of it, the machinery is the loader's `selection_s` "
            "(decision, history, slicing, joining); the rest is the scoring pass's wrapper "
            "(no-grad, eval mode and back, the loss check and copy) and the per-round "
            "bookkeeping. Median (min–max) over the repeats. Where refined batches are "
            "smaller than raw ones, a refined step costs more per sample than `T`, which "
            "shows in the efficiency.",
            efficiency_table,
            "### The profiler's advice against the measurements",
            "For each case, `ss.profile(...)` runs on the same model, data, loss, optimizer "
            f"and policy after the timed epochs ({steps} measured steps, wall clock). Its "
            "prediction at the measured `k` is set beside the measured speedup of whole "
            "epochs (data loading included, as the profiler predicts it). Then its "
            'verdict is checked where it points: a "sift" verdict at the keep it recommends '
            '(`RelativeProbabilistic(beta=1/keep − 1)`), a "don\'t sift" verdict at keep '
            f"{DONT_SIFT_CHECK_KEEP} (it claims that even there sifting is less than "
            f"{WORTH_IT}x faster), timed against plain epochs in turn "
            f"({max(1, repeats - 2)} pair(s), median (min–max)).",
            profiler_table,
            _agreement(results),
            reuse_text,
        ]
    )
    return Section(
        "Efficiency: measured per-epoch speedup against the ideal", body, (target, *reuse_targets)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke).markdown())


if __name__ == "__main__":
    main()
