"""Time-to-accuracy benchmark: plain training against every policy, side by side, 3 seeds.

(a) MNIST-1D, the demo's ConvNet and setting; metric: test accuracy. (b) A small byte-level
transformer language model over the Python standard library's own source files; metric:
validation loss, in a short regime (a few epochs over a few hundred KB: the model still needs
all of its data) and a long regime (many epochs over a smaller corpus).

For each seed, the plain run and one run per policy start from the same weights and read the
same data order; they are interleaved (each advances one evaluation interval in turn). The
target is the plain run's final metric within a stated tolerance; the table gives the time
each run needs to reach it, as a ratio to the plain run's time (above 1: sifting is faster),
with the final metrics, optimizer steps and samples backpropagated. Times are CPU seconds of
the process on one thread, evaluation excluded.

Run it directly (``python benchmarks/time_to_accuracy.py [--smoke]``) or call :func:`run`.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import charlm
from common import (
    IMG_DIR,
    Interleaved,
    fmt_ratio,
    fmt_spread,
    markdown_table,
    time_to_target,
)

import smartsift as ss
from smartsift.demo import (
    DemoConfig,
    TrainingRun,
    cross_entropy_per_sample,
    make_mnist1d,
    train_side_by_side,
)
from smartsift.profiling import _EVEN_LOSSES

__all__ = ["run"]

SEEDS = (0, 1, 2)
PLAIN_RAW = "plain, at the raw batch size"
STRICT = "RelativeProbabilistic(beta=3), 4x raw batch"
MNIST_TOLERANCE = 0.005  # accuracy: the plain run's final minus half a point
LM_TOLERANCE = 0.02  # validation loss: the plain run's final plus 0.02 nats per byte
TARGET_MNIST = 1.5
TARGET_LM_LONG = 1.2


def policies(history: int) -> dict[str, ss.Policy]:
    """The four policies compared, all at a nominal keep of one half."""
    return {
        "RelativeProbabilistic": ss.RelativeProbabilistic(beta=1.0, history=history),
        "QuantileThreshold": ss.QuantileThreshold(exclude=0.5, history=history),
        "TopK": ss.TopK(keep=0.5),
        "Uniform": ss.Uniform(keep=0.5),
    }


@dataclass
class Arm:
    """One run's outcome: its metric curve against training time, and its work."""

    name: str
    times: list[float]
    values: list[float]
    steps: int
    backpropagated: int
    seen: int
    seconds: float


@dataclass(frozen=True)
class LMRegime:
    name: str
    corpus_bytes: int
    epochs: int
    delay_epochs: float
    context: int = 64
    batch_size: int = 32
    lr: float = 2e-3
    dim: int = 64
    layers: int = 2
    heads: int = 4

    def model_kwargs(self, smoke: bool) -> dict[str, int]:
        if smoke:
            return {"dim": 16, "layers": 1, "heads": 2}
        return {"dim": self.dim, "layers": self.layers, "heads": self.heads}


SHORT = LMRegime("short", corpus_bytes=300_000, epochs=3, delay_epochs=1.0)
LONG = LMRegime("long", corpus_bytes=100_000, epochs=16, delay_epochs=2.0)


# ----------------------------------------------------------------------------- MNIST-1D
def mnist_seed(config: DemoConfig, data: Any, seed: int, smoke: bool) -> list[Arm]:
    """Plain and every policy on MNIST-1D for one seed, interleaved.

    Every run trains on batches of ``config.plain_batch_size``; the sifted ones read raw
    batches of ``config.batch_size`` (four times that for the ``beta=3`` row, which keeps about
    a quarter) and refine them to it.
    """
    train_set, test = data
    common: dict[str, Any] = {
        "epochs": config.epochs,
        "width": config.width,
        "lr": config.lr,
        "seed": seed,
        "evals_per_epoch": config.evals_per_epoch,
        "cosine": config.cosine,
        "clock": time.process_time,
    }
    step = config.plain_batch_size
    runs = [
        TrainingRun("plain", train_set, test, batch_size=step, **common),
        TrainingRun(PLAIN_RAW, train_set, test, batch_size=config.batch_size, **common),
    ]
    variants: list[tuple[str, ss.Policy, int]] = [
        (name, policy, config.batch_size) for name, policy in policies(config.history).items()
    ]
    variants[0] = ("RelativeProbabilistic", config.policy, config.batch_size)  # the demo's rule
    strict = ss.RelativeProbabilistic(beta=3.0, history=config.history)
    variants.append((STRICT, strict, 4 * step))
    for name, policy, raw in variants:
        runs.append(
            TrainingRun(
                name,
                train_set,
                test,
                policy=policy,
                batch_size=raw,
                sift_delay=config.sift_delay_epochs * math.ceil(len(train_set) / raw),
                refined_batch_size=step,
                **common,
            )
        )
    train_side_by_side(runs)
    return [
        Arm(
            r.result.name,
            r.result.times,
            r.result.accuracies,
            r.result.steps,
            r.result.samples_backpropagated,
            r.result.samples_seen,
            r.result.train_seconds,
        )
        for r in runs
    ]


# ----------------------------------------------------------------------------- language model
def lm_data(regime: LMRegime, smoke: bool) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """Training and validation windows: the last tenth of the corpus is held out."""
    text, names = charlm.corpus(20_000 if smoke else regime.corpus_bytes)
    windows = charlm.make_windows(text, regime.context)
    n_val = max(8, len(windows) // 10)
    return windows[:-n_val], windows[-n_val:], names


def lm_seed(regime: LMRegime, train: torch.Tensor, val: torch.Tensor, seed: int, smoke: bool):
    """Plain and every policy on the language model for one seed, interleaved."""
    n_raw = math.ceil(len(train) / regime.batch_size)
    common: dict[str, Any] = {
        "epochs": 2 if smoke else regime.epochs,
        "batch_size": regime.batch_size,
        "lr": regime.lr,
        "seed": seed,
        "evals_per_epoch": 4,
        "clock": time.process_time,
        "model_kwargs": regime.model_kwargs(smoke),
    }
    delay = int(regime.delay_epochs * n_raw)
    runs = [charlm.LMRun("plain", train, val, policy=None, **common)]
    runs += [
        charlm.LMRun(name, train, val, policy=policy, sift_delay=delay, **common)
        for name, policy in policies(1000).items()
    ]
    for r in runs:
        r.warm_up()
    Interleaved([r.advance for r in runs]).run()
    return [
        Arm(
            r.name,
            r.times,
            r.losses,
            r.steps,
            r.samples_backpropagated,
            r.samples_seen,
            r.train_seconds,
        )
        for r in runs
    ]


# ----------------------------------------------------------------------------- the profiler
def profiler_advice(probe: Any, loss_fn: Any, delay: float, best: float, smoke: bool) -> str:
    """What ``ss.profile`` advises on this task where sifting starts, set against the result.

    ``probe`` is a plain run of ``delay`` epochs (seed 0's weights and data order): the model
    a user would profile before turning sifting on. ``best`` is the best policy's median
    speedup to the target.
    """
    while probe.advance():
        pass
    report = ss.profile(
        probe.model,
        probe.raw,
        loss_fn,
        probe.optimizer,
        steps=4 if smoke else 20,
        warmup=1 if smoke else 3,
    )
    # The condition under which the recommendation carries its caution.
    caution = report.recommended and report.loss_concentration < _EVEN_LOSSES
    said = (
        f"The profiler on this task (`ss.profile` on the plain model after the {delay:g} "
        f"epoch(s) trained before sifting starts, seed 0): "
        f"{'sift' if report.recommended else 'do not sift'}, "
        f"{report.predicted_speedup(0.5):.2f}x per epoch predicted at keep 0.5; loss "
        f"concentration {report.loss_concentration:.2f}"
        f"{', so it adds its caution that dropping samples may cost accuracy' if caution else ''}."
    )
    if report.recommended and best < 1.0:
        return said + (
            " Its cost prediction holds (see the efficiency section), but the cheaper epochs "
            "do not reach the target sooner here: the profiler measures what an epoch costs, "
            "not what the dropped samples would have taught"
            + (
                "; its caution is the warning that applies."
                if caution
                else ", and nothing in a short pilot shows that; only a time-to-accuracy "
                "comparison like this one does."
            )
        )
    if report.recommended:
        return said + (
            f" It agrees with the result: the best policy reaches the target {best:.2f}x "
            "sooner in the median seed."
        )
    if best < 1.0:
        return said + " It agrees with the result."
    return said + " It disagrees with the result: a policy reaches the target sooner here."


# ----------------------------------------------------------------------------- reporting
def summarise(
    seeds: Sequence[list[Arm]], tolerance: float, higher_is_better: bool, fmt: str
) -> tuple[str, dict[str, list[float]]]:
    """The table over seeds, and each arm's speedups to target (0 when never reached)."""
    names = [a.name for a in seeds[0]]
    per: dict[str, dict[str, list[float]]] = {
        n: {k: [] for k in ("speedup", "epoch", "final", "tta", "steps", "bp")} for n in names
    }
    targets = []
    for arms in seeds:
        plain = arms[0]
        final = plain.values[-1]
        target = final - tolerance if higher_is_better else final + tolerance
        targets.append(target)
        t_plain = time_to_target(plain.times, plain.values, target, higher_is_better)
        for arm in arms:
            t = time_to_target(arm.times, arm.values, target, higher_is_better)
            rec = per[arm.name]
            rec["tta"].append(t)
            rec["speedup"].append(t_plain / t if t > 0 and math.isfinite(t) else 0.0)
            rec["epoch"].append(plain.seconds / arm.seconds)
            rec["final"].append(arm.values[-1])
            rec["steps"].append(arm.steps)
            rec["bp"].append(arm.backpropagated / arm.seen)
    rows = []
    for name in names:
        rec = per[name]
        reached = sum(math.isfinite(t) for t in rec["tta"])
        rows.append(
            [
                name,
                fmt_ratio(rec["speedup"]),
                f"{reached}/{len(seeds)}",
                fmt_spread(rec["final"], fmt),
                fmt_ratio(rec["epoch"]),
                fmt_spread(rec["steps"], "{:.0f}"),
                fmt_spread(rec["bp"], "{:.0%}"),
            ]
        )
    table = markdown_table(
        [
            "run",
            "speedup to target",
            "seeds reaching target",
            "final metric",
            "per-epoch speedup",
            "optimizer steps",
            "samples backpropagated",
        ],
        rows,
    )
    return table, {n: per[n]["speedup"] for n in names}


def plot(arms: list[Arm], path: Path, ylabel: str, target: float, title: str, higher: bool) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for arm in arms:
            width = 2 if arm.name == "plain" else 1
            ax.plot(arm.times, arm.values, label=arm.name, linewidth=width)
        ax.axhline(target, color="grey", linestyle="--", linewidth=1, label="target")
        tail = [v for a in arms for v in a.values[len(a.values) // 4 :]]
        span = max(tail) - min(tail)
        ax.set_ylim(min(tail) - 0.1 * span, max(tail) + 0.1 * span)
        ax.set_xlabel("training time (CPU s, one thread; evaluation excluded)")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right" if higher else "upper right", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)


def _best(speedups: dict[str, list[float]]) -> tuple[str, float]:
    """The best policy and its median speedup to the target (0 when it never reaches it)."""
    medians = {n: statistics.median(v) for n, v in speedups.items() if not n.startswith("plain")}
    best = max(medians, key=medians.__getitem__)
    return best, medians[best]


def _verdict(speedups: dict[str, list[float]], goal: float, what: str) -> str:
    best, med = _best(speedups)
    rp = statistics.median(speedups["RelativeProbabilistic"])
    if med == 0:
        return (
            f"Target for {what}: at least {goal:.1f}x. Not met: no policy reached the plain "
            "run's final metric in the median seed."
        )
    return (
        f"Target for {what}: at least {goal:.1f}x. RelativeProbabilistic: {rp:.2f}x "
        f"({'met' if rp >= goal else 'not met'}); best policy: {best}, {med:.2f}x "
        f"({'met' if med >= goal else 'not met'})."
    )


def run(smoke: bool = False, img_dir: Path | None = None) -> str:
    """Runs both parts and returns a markdown section; plots go to ``img_dir``."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(smoke, img_dir)
    finally:
        torch.set_num_threads(threads)


def _run(smoke: bool, img_dir: Path) -> str:
    seeds = SEEDS[:1] if smoke else SEEDS
    out = ["## Time to accuracy: plain against every policy"]
    out.append(
        "Each seed trains the plain run and one run per policy from the same initial weights "
        "in the same data order, interleaved. All policies keep one half nominally: "
        "`RelativeProbabilistic(beta=1)`, `QuantileThreshold(exclude=0.5)`, `TopK(keep=0.5)` "
        "and `Uniform(keep=0.5)` (the control: drops samples whatever their loss). The speedup "
        "is the plain run's time to the target over the run's time to it (0.00x: never "
        "reached). Times are CPU seconds of the process on one thread, evaluation excluded. "
        f"Median (min–max) over seeds {', '.join(map(str, seeds))}."
    )

    # (a) MNIST-1D
    config = DemoConfig.smoke() if smoke else DemoConfig()
    data = make_mnist1d(config.num_samples)
    mnist = [mnist_seed(config, data, s, smoke) for s in seeds]
    table, speedups = summarise(mnist, MNIST_TOLERANCE, True, "{:.2%}")
    probe = TrainingRun(
        "probe",
        *data,
        epochs=config.sift_delay_epochs,
        width=config.width,
        batch_size=config.batch_size,
        lr=config.lr,
        seed=seeds[0],
    )
    mnist_advice = profiler_advice(
        probe, cross_entropy_per_sample, config.sift_delay_epochs, _best(speedups)[1], smoke
    )
    first = mnist[0]
    target0 = first[0].values[-1] - MNIST_TOLERANCE
    plot(
        [Arm(a.name, a.times, [100 * v for v in a.values], 0, 0, 1, 1) for a in first],
        img_dir / "tta_mnist1d.png",
        "test accuracy (%)",
        100 * target0,
        f"MNIST-1D, seed {seeds[0]}",
        True,
    )
    out += [
        "### (a) MNIST-1D ConvNet, test accuracy",
        f"Setting: {config.describe(seed=False)}. Every run takes optimizer steps of "
        f"{config.plain_batch_size} samples: the plain run reads batches of that size, the "
        f"sifted runs read larger raw batches ({config.batch_size}) and refine them to it, "
        "all with the same sift delay and history. Two more rows: the plain run at the raw "
        f"batch size ({config.batch_size}, half as many steps per epoch; earlier versions of "
        "this benchmark compared against it, which credited sifting with what smaller "
        "batches gain), and the reference rule keeping about a quarter (`beta=3`) of raw "
        f"batches of {4 * config.plain_batch_size}. Target: the plain run's final test "
        f"accuracy minus {MNIST_TOLERANCE * 100:g} points.",
        table,
        _verdict(speedups, TARGET_MNIST, "MNIST-1D (final accuracy within 0.5 points)"),
        mnist_advice,
        "![MNIST-1D: accuracy against training time](img/tta_mnist1d.png)",
    ]

    # (b) language model, two regimes
    out.append("### (b) Character-level transformer language model, validation loss")
    for regime in (SHORT, LONG):
        train, val, names = lm_data(regime, smoke)
        arms = [lm_seed(regime, train, val, s, smoke) for s in seeds]
        table, speedups = summarise(arms, LM_TOLERANCE, False, "{:.3f}")
        probe = charlm.LMRun(
            "probe",
            train,
            val,
            policy=None,
            epochs=max(1, int(regime.delay_epochs)),
            batch_size=regime.batch_size,
            lr=regime.lr,
            seed=seeds[0],
            clock=time.process_time,
            model_kwargs=regime.model_kwargs(smoke),
        )
        advice = profiler_advice(
            probe, charlm.per_sample_loss, regime.delay_epochs, _best(speedups)[1], smoke
        )
        first = arms[0]
        plot(
            first,
            img_dir / f"tta_lm_{regime.name}.png",
            "validation loss (nats per byte)",
            first[0].values[-1] + LM_TOLERANCE,
            f"char LM, {regime.name} regime, seed {seeds[0]}",
            False,
        )
        epochs = 2 if smoke else regime.epochs
        mk = regime.model_kwargs(smoke)
        out += [
            f"#### {regime.name.capitalize()} regime: {epochs} epochs over "
            f"{len(train) + len(val)} windows",
            f"Corpus: {len(names)} standard-library source files ({names[0]} to {names[-1]}, "
            f"{(len(train) + len(val)) * (regime.context + 1) / 1000:.0f} KB), windows of "
            f"{regime.context + 1} bytes, the last tenth held out for validation. Model: "
            f"a byte-level transformer ({mk['layers']} layer(s), width {mk['dim']}, "
            f"{mk['heads']} heads), AdamW lr "
            f"{regime.lr:g}, batch {regime.batch_size}; sift delay {regime.delay_epochs:g} "
            f"epoch(s). Target: the plain run's final validation loss plus {LM_TOLERANCE:g}.",
            table,
            _verdict(speedups, TARGET_LM_LONG, f"the {regime.name} regime")
            if regime is LONG
            else _short_verdict(speedups),
            advice,
            f"![char LM, {regime.name} regime](img/tta_lm_{regime.name}.png)",
        ]
    return "\n\n".join(out)


def _short_verdict(speedups: dict[str, list[float]]) -> str:
    parts = [
        f"{name} {statistics.median(values):.2f}x"
        for name, values in speedups.items()
        if name != "plain"
    ]
    reached = [n for n, v in speedups.items() if n != "plain" and any(x > 0 for x in v)]
    ahead = [n for n, v in speedups.items() if n != "plain" and statistics.median(v) >= 1.0]
    tail = (
        " No policy reaches the plain run's final loss in any seed: here dropping samples "
        "costs more learning than it saves time."
        if not reached
        else " Faster than plain: " + ", ".join(ahead) + "."
        if ahead
        else " Every policy is slower to the target than plain training."
    )
    return "Short regime (where sifting is expected to lose): " + ", ".join(parts) + "." + tail


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke))


if __name__ == "__main__":
    main()
