"""Learning-rate schedules with sifting: stepped per optimizer step, or following the data.

A cosine schedule sized as for plain training (``epochs * len(loader)`` at the start, which is
the plain run's step count) is stepped once per optimizer step by the plain run and by two
sifted runs of the reference rule: one steps it directly, as a schedule written for plain
training would, the other through :class:`smartsift.DataSchedule`. A sifted epoch takes fewer
optimizer steps, so the first never finishes its schedule; the second ends where its training
ends, as the plain run does. Constant-rate runs, plain and sifted, show what the schedule
itself is worth. One seed, MNIST-1D, runs of :mod:`benchmarks.harness`; the figure plots the
learning rate against the progress through the data and against training time.

Run it from the repository root (``python -m benchmarks.schedules [--smoke]``) or call
:func:`run`.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

import smartsift as ss
from benchmarks.common import IMG_DIR, Section, Target, markdown_table
from benchmarks.demo import make_mnist1d, mnist1d_task
from benchmarks.harness import RunResult, TrainingRun, train_side_by_side

__all__ = ["lr_figure", "run"]

PLAIN = "plain, cosine stepped per optimizer step"
FOLLOWS = "sifted, cosine through DataSchedule"
NAIVE = "sifted, cosine stepped per optimizer step"
IMAGE = "schedules_lr.png"


def _runs(smoke: bool) -> tuple[list[TrainingRun], int]:
    """The runs compared, and the step count a scheduler sized from ``len(loader)`` gets."""
    samples, width, epochs = (600, 8, 3) if smoke else (4000, 32, 8)
    task = mnist1d_task(make_mnist1d(samples), width)
    n = len(task.train_set)  # type: ignore[arg-type]
    batch, raw = (32, 64) if smoke else (64, 128)
    delay = math.ceil(n / raw)  # one epoch unsifted, as the demo

    def make(name: str, sifted: bool, **kwargs: object) -> TrainingRun:
        return TrainingRun(
            name,
            task,
            epochs=epochs,
            batch_size=raw if sifted else batch,
            refined_batch_size=batch,
            lr=5e-3,
            policy=ss.RelativeProbabilistic(beta=1.0, history=1000) if sifted else None,
            sift_delay=delay,
            evals_per_epoch=8,
            clock=time.process_time,
            **kwargs,  # type: ignore[arg-type]
        )

    runs = [
        make(PLAIN, False, schedule="cosine"),
        make(FOLLOWS, True, schedule="cosine"),
        make(NAIVE, True, schedule="cosine", follow_data=False),
        make("plain, constant rate", False, schedule=None),
        make("sifted, constant rate", True, schedule=None),
    ]
    return runs, epochs * len(runs[2].loader)


def lr_figure(results: list[RunResult], path: Path) -> Path:
    """Learning rate against progress through the data and against training time."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2), dpi=110)
    by_data, by_time = fig.subplots(1, 2)
    styles = {PLAIN: ("black", "-", 2.4), FOLLOWS: ("tab:blue", "--", 1.8)}
    for r in results:
        colour, line, width = styles.get(r.name, ("tab:red", "-", 1.6))
        by_data.plot([0.0, *r.progress], [r.lrs[0], *r.lrs], color=colour, linestyle=line,
                     linewidth=width, label=f"{r.name} (ends at {r.final_lr:.2g})")  # fmt: skip
        by_time.plot([0.0, *r.times], [r.lrs[0], *r.lrs], color=colour, linestyle=line,
                     linewidth=width, label=r.name)  # fmt: skip
    by_data.set_xlabel("progress through the data (fraction of all epochs' samples)")
    by_time.set_xlabel("training time (CPU s, one thread; evaluation excluded)")
    for ax in (by_data, by_time):
        ax.set_ylabel("learning rate")
        ax.set_xlim(left=0.0)
        ax.set_ylim(bottom=0.0)
        ax.grid(alpha=0.3)
    by_data.legend(fontsize=8, loc="lower left")
    fig.suptitle("Cosine schedule sized for plain training: plain and sifted runs")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def run(smoke: bool = False, img_dir: Path | None = None) -> Section:
    """Trains the runs side by side and returns the report's section."""
    img_dir = IMG_DIR if img_dir is None else img_dir
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs, sized = _runs(smoke)
        results = train_side_by_side(runs)
    finally:
        torch.set_num_threads(threads)
    scheduled = results[:3]
    image = lr_figure(scheduled, img_dir / IMAGE)
    rows = []
    for r, tr in zip(results, runs, strict=True):
        steps = "–" if tr.scheduler is None else str(tr.scheduler.last_epoch)
        rows.append(
            [r.name, r.steps, steps, f"{r.final_lr:.3g}", f"{r.final:.2%}", f"{r.keep_rate:.0%}"]
        )
    table = markdown_table(
        [
            "run",
            "optimizer steps",
            "scheduler steps",
            "final learning rate",
            "final test accuracy",
            "samples trained / seen",
        ],
        rows,
    )
    plain, follows, naive = scheduled
    body = [
        f"Setting: MNIST-1D, ConvNet, {len(runs[0].result.epoch_ends)} epochs, AdamW lr 5e-3; "
        f"steps of {runs[0].step_batch_size} samples; the sifted runs use the reference rule "
        "(`RelativeProbabilistic(beta=1)`) on raw batches of twice that, after one unsifted "
        f"epoch. Every cosine is sized as for plain training: {runs[0].total_steps} steps "
        f"(`epochs * len(loader)` of the sifted loader at the start gives {sized}). One seed.",
        table,
        f"Stepped once per optimizer step, the sifted run's cosine ends at "
        f"{naive.final_lr:.3g}, {naive.final_lr / runs[0].base_lr:.0%} of the initial rate: its "
        f"epochs took fewer steps, so the schedule's last part, where the rate anneals, never "
        f"came. Through `ss.DataSchedule` it ends at {follows.final_lr:.3g}, as the plain run "
        f"({plain.final_lr:.3g}), having passed through the same rates at the same points of "
        "the data.",
        f"![Learning rate against progress and time](img/{image.name})",
    ]
    target = Target(
        "A sifted run's schedule through DataSchedule ends where plain training's does",
        f"final learning rate {plain.final_lr:.3g}, as the plain run's",
        f"{follows.final_lr:.3g} (stepped per optimizer step instead: {naive.final_lr:.3g})",
        met=follows.final_lr == plain.final_lr,
    )
    return Section("Learning-rate schedules that follow the data", "\n\n".join(body), (target,))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    print(run(parser.parse_args(argv).smoke).markdown())


if __name__ == "__main__":
    main()
