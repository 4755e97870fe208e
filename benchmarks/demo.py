"""The demo job: a 1-D CNN on MNIST-1D, trained plain, sifted and by loss reuse side by side.

Four runs: plain at the full budget; sifted by the reference rule (a scoring pass per raw
batch); loss reuse (``ss.ReuseSampler`` at a stated keep: no scoring pass, learnt samples
skipped before loading); and the train-less control, plain for half the epochs with its own
complete schedule, which any sifting must beat to be worth its trouble.

MNIST-1D (Greydanus, 2020) is generated procedurally by the ``mnist1d`` package, so nothing is
downloaded. The helpers here are shared by the demo, the benchmarks, the tests and
:func:`profile_target` (``smartsift profile --target benchmarks.demo:profile_target``); the runs
are trained by the harness of :mod:`benchmarks.harness` (same initial weights, same data order,
interleaved, evaluation excluded from the training clock).

The demo is not part of the ``smartsift`` package: run it from the repository root, with
``make demo`` or ``python -m benchmarks.demo`` (``--help`` lists its settings, see
:func:`main`).

Example:
    >>> model = ConvNet(width=8)
    >>> model(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from benchmarks.harness import (
    SCHEDULES,
    Reuse,
    RunResult,
    Task,
    TrainingRun,
    plot_runs,
    run_at_step_size,
    seeded,
    speedup_to_target,
    train_side_by_side,
)
from smartsift.policies import Policy, RelativeProbabilistic

__all__ = [
    "ConvNet",
    "DemoConfig",
    "DemoResults",
    "cross_entropy_per_sample",
    "evaluate",
    "main",
    "make_mnist1d",
    "mnist1d_task",
    "plot_demo",
    "profile_target",
    "run_demo",
    "summary_table",
]

MnistData = tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]
"""A generated MNIST-1D: the training set and the ``(x_test, y_test)`` tensors."""


def make_mnist1d(num_samples: int = 10_000, seed: int = 42) -> MnistData:
    """Generates MNIST-1D locally: a training set and (x_test, y_test) tensors (80/20 split).

    The global ``random`` and NumPy random states are left as they were.
    """
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The demo needs the `mnist1d` package: pip install 'smartsift[demo]'."
        ) from err
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    # mnist1d seeds the global `random` and NumPy generators: put them back afterwards.
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    x = torch.as_tensor(data["x"], dtype=torch.float32)
    y = torch.as_tensor(data["y"], dtype=torch.int64)
    x_test = torch.as_tensor(data["x_test"], dtype=torch.float32)
    y_test = torch.as_tensor(data["y_test"], dtype=torch.int64)
    return TensorDataset(x, y), (x_test, y_test)


class ConvNet(torch.nn.Module):
    """A 1-D CNN for MNIST-1D: three conv layers of ``width`` channels and a linear head."""

    def __init__(self, width: int = 100, length: int = 40, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv1d(1, width, 5, stride=2, padding=1)
        self.conv2 = torch.nn.Conv1d(width, width, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv1d(width, width, 3, stride=2, padding=1)
        with torch.no_grad():
            flat = self._features(torch.zeros(1, length)).shape[1]
        self.head = torch.nn.Linear(flat, classes)

    def _features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x.unsqueeze(1)))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return h.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self._features(x))


def cross_entropy_per_sample(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """The demo's ``loss_fn``: one cross-entropy per sample of an ``(x, y)`` batch."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


@torch.no_grad()
def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Returns the accuracy of ``model`` on ``(x, y)``, in eval mode, mode restored after."""
    was_training = model.training
    model.eval()
    correct = 0
    for i in range(0, len(x), 1024):
        correct += int((model(x[i : i + 1024]).argmax(1) == y[i : i + 1024]).sum())
    model.train(was_training)
    return correct / len(x)


def _mean_cross_entropy(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


def mnist1d_task(
    data: MnistData, width: int = 100, validation: tuple[torch.Tensor, torch.Tensor] | None = None
) -> Task:
    """The demo's :class:`~benchmarks.harness.Task`: a :class:`ConvNet` of ``width`` on ``data``.

    Its metric is the test accuracy (higher is better); ``validation`` ``(x, y)``, held-out
    samples other than the test set, gives it a ``validate`` accuracy for ``Auto``.

    Example:
        >>> task = mnist1d_task(make_mnist1d(200), width=8)
        >>> len(task.train_set), task.higher_is_better
        (160, True)
    """
    train_set, (x_test, y_test) = data
    return Task(
        build_model=functools.partial(ConvNet, width=width),
        train_set=train_set,
        loss_fn=cross_entropy_per_sample,
        evaluate=functools.partial(evaluate, x=x_test, y=y_test),
        train_loss=_mean_cross_entropy,
        validate=None
        if validation is None
        else functools.partial(evaluate, x=validation[0], y=validation[1]),
    )


@dataclass(frozen=True)
class DemoConfig:
    """The demo's setting: MNIST-1D, a :class:`ConvNet`, plain vs the reference rule.

    The sifted run reads raw batches of ``batch_size``, scores them and trains on refined
    batches of ``refined_batch_size`` kept samples (``None``: the raw batch size). The plain
    run trains on batches of that same size (:attr:`plain_batch_size`), so both take
    optimizer steps of the same size: a plain run at the larger raw batch size would take
    fewer steps and, on this task, learn more slowly per second, and comparing against it
    would credit sifting with what smaller batches gain. ``sift_delay_epochs`` epochs are
    trained unsifted first; ``tolerance`` is how far below the plain run's final accuracy the
    time-to-accuracy target lies. The loss-reuse run keeps ``reuse_keep`` of the samples it
    decides on (``RelativeProbabilistic(keep=reuse_keep)``), in batches of
    :attr:`plain_batch_size`; its first epoch, with nothing scored yet, trains everything. The
    train-less control trains plain for :attr:`control_epochs`. ``schedule`` is the
    learning-rate schedule (a name of :data:`benchmarks.harness.SCHEDULES`, or None for a
    constant rate): every run's schedule is sized as for plain training, and the sifted and
    loss-reuse runs' follow the data they consume (:class:`~smartsift.DataSchedule`,
    :class:`~smartsift.ReuseSchedule`), so every schedule ends where its training ends.

    Example:
        >>> DemoConfig.smoke().epochs
        2
    """

    num_samples: int = 20_000
    width: int = 100
    batch_size: int = 256
    refined_batch_size: int | None = 128
    epochs: int = 12
    lr: float = 5e-3
    schedule: str | None = "cosine"
    beta: float = 1.0
    history: int = 1000
    sift_delay_epochs: int = 1
    seed: int = 0
    evals_per_epoch: int = 4
    tolerance: float = 0.005
    reuse_keep: float = 0.5

    @classmethod
    def smoke(cls) -> DemoConfig:
        """A tiny setting that runs in seconds, for tests."""
        return cls(
            num_samples=600, width=8, batch_size=64, refined_batch_size=32, epochs=2, history=100
        )

    @property
    def policy(self) -> RelativeProbabilistic:
        return RelativeProbabilistic(beta=self.beta, history=self.history)

    @property
    def reuse_policy(self) -> RelativeProbabilistic:
        return RelativeProbabilistic(keep=self.reuse_keep, history=self.history)

    @property
    def control_epochs(self) -> int:
        """The train-less control's epochs: half the budget (at least one)."""
        return max(1, self.epochs // 2)

    @property
    def plain_batch_size(self) -> int:
        """The plain run's batch size: the size of the sifted run's refined batches."""
        return self.refined_batch_size or self.batch_size

    def describe(self, seed: bool = True) -> str:
        """One line naming every setting (``seed=False`` leaves the seed out)."""
        text = (
            f"MNIST-1D {self.num_samples} samples, ConvNet width {self.width}, "
            f"{self.epochs} epochs, AdamW lr {self.lr:g}, {self._schedule_text()}; "
            f"plain: batches of {self.plain_batch_size}; sifted: "
            f"RelativeProbabilistic(beta={self.beta:g}, history={self.history}), raw batches "
            f"of {self.batch_size} refined to {self.plain_batch_size}, sift_delay "
            f"{self.sift_delay_epochs} epoch(s); reuse: loss reuse at keep {self.reuse_keep:g}; "
            f"control: plain for {self.control_epochs} epochs"
        )
        return f"{text}; seed {self.seed}" if seed else text

    def _schedule_text(self) -> str:
        if self.schedule is None:
            return "constant rate"
        return f"{self.schedule.replace('_', ' ')} schedule following the data"

    def training_run(
        self,
        name: str,
        task: Task,
        *,
        policy: Policy | None = None,
        seed: int | None = None,
        epochs: int | None = None,
        reuse: Reuse | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> TrainingRun:
        """A run of this setting: plain (``policy=None``), sifted with ``policy``, or by loss
        reuse with ``policy`` and ``reuse``.

        All take optimizer steps of :attr:`plain_batch_size`. A plain or loss-reuse run reads
        batches of that size and a sifted one raw batches of :attr:`batch_size`, refined to it,
        after ``sift_delay_epochs`` unsifted epochs (see
        :func:`~benchmarks.harness.run_at_step_size`); ``seed`` overrides the config's seed,
        ``epochs`` the budget.
        """
        return run_at_step_size(
            name,
            task,
            epochs=epochs or self.epochs,
            step_batch_size=self.plain_batch_size,
            raw_batch_size=self.batch_size,
            sift_delay_epochs=self.sift_delay_epochs,
            lr=self.lr,
            policy=policy,
            seed=self.seed if seed is None else seed,
            evals_per_epoch=self.evals_per_epoch,
            schedule=self.schedule,
            reuse=reuse,
            clock=clock,
        )


@dataclass(frozen=True)
class DemoResults:
    """The demo's four runs (see the module documentation)."""

    plain: RunResult
    sifted: RunResult
    reuse: RunResult
    control: RunResult

    def runs(self) -> list[RunResult]:
        """The runs in the order the table and the plot show them."""
        return [self.plain, self.sifted, self.reuse, self.control]


def run_demo(
    config: DemoConfig | None = None,
    data: MnistData | None = None,
    on_segment: Callable[[TrainingRun], None] | None = None,
    policy: Policy | None = None,
    report_path: str | Path | None = None,
) -> DemoResults:
    """Trains the four runs side by side; returns their results.

    ``policy`` replaces the config's reference rule for the sifted run; ``data`` reuses a
    generated data set; ``on_segment(run)`` is called after each evaluation interval a run
    trains; ``report_path``, when given, receives the sifted run's report (see
    :func:`smartsift.tools.report.plot_report`: kept against sifted losses and the keep rate over
    training; the demo runs no audit, so there is no per-class panel).
    """
    config = config or DemoConfig()
    task = mnist1d_task(
        data if data is not None else make_mnist1d(config.num_samples), config.width
    )
    plain = config.training_run("plain", task)
    sifted = config.training_run(
        "sifted", task, policy=policy if policy is not None else config.policy
    )
    reuse = config.training_run("reuse", task, policy=config.reuse_policy, reuse=Reuse())
    control = config.training_run(
        f"plain, {config.control_epochs}/{config.epochs} epochs",
        task,
        epochs=config.control_epochs,
    )
    train_side_by_side([plain, sifted, reuse, control], on_segment)
    if report_path is not None:
        sifted.loader.report(
            report_path, title=f"MNIST-1D demo, sifted run: {sifted.loader.policy}"
        )
    return DemoResults(plain.result, sifted.result, reuse.result, control.result)


def _fmt_time(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.1f} s"


def summary_table(results: DemoResults, tolerance: float = 0.005) -> str:
    """A plain-text table comparing the runs, with each one's speedup to plain's accuracy.

    The target is the plain run's final accuracy minus ``tolerance``. Compute is the samples
    each run backpropagated plus, for the sifted run, those its scoring pass ranked, both
    against the plain run's.
    """
    plain = results.plain
    target = plain.target(tolerance)
    runs = results.runs()
    rows = [
        ("training wall time", [f"{r.train_seconds:.1f} s" for r in runs]),
        ("optimizer steps", [f"{r.steps}" for r in runs]),
        ("samples backpropagated", [f"{r.samples_backpropagated}" for r in runs]),
        ("keep rate", [f"{r.keep_rate:.1%}" for r in runs]),
        ("final test accuracy", [f"{r.final:.2%}" for r in runs]),
        (f"time to {target:.2%}", [_fmt_time(r.time_to(target)) for r in runs]),
        (
            "per-epoch speedup",
            [
                f"{plain.train_seconds / max(r.train_seconds, 1e-9) * _epochs(r, plain):.2f}x"
                for r in runs
            ],
        ),
    ]
    width = max(len(name) for name, _ in rows) + 2
    col = max(14, *(len(r.name) + 2 for r in runs))
    lines = [f"{'':<{width}}" + "".join(f"{r.name:>{col}}" for r in runs)]
    lines += [f"{name:<{width}}" + "".join(f"{v:>{col}}" for v in values) for name, values in rows]
    for run in (results.sifted, results.reuse):
        speedup = speedup_to_target(plain, run, target)
        verdict = (
            f"reached {target:.2%} {speedup:.2f}x sooner than plain"
            if speedup >= 1
            else f"reached {target:.2%} {1 / speedup:.2f}x later than plain"
            if speedup > 0
            else f"never reached {target:.2%} (plain final accuracy - {tolerance * 100:g} points)"
        )
        lines.append(f"{run.name}: {verdict}")
    lines.append(_against_control(results))
    return "\n".join(lines)


def _epochs(run: RunResult, plain: RunResult) -> float:
    """How many of plain's epochs ``run`` trained (the control trains fewer)."""
    return len(run.epoch_ends) / max(1, len(plain.epoch_ends))


def _against_control(results: DemoResults) -> str:
    """Does loss reuse beat the train-less control, which trained plain for fewer epochs?"""
    reuse, control = results.reuse, results.control
    gap = 100 * (reuse.final - control.final)
    cheaper = reuse.train_seconds <= control.train_seconds
    return (
        f"against training less: loss reuse ended {gap:+.2f} points from {control.name}, in "
        f"{reuse.train_seconds:.1f} s of training against its {control.train_seconds:.1f} s"
        + (" (less time, so it beats training less here)" if cheaper and gap > 0 else "")
    )


def plot_demo(results: DemoResults, config: DemoConfig, path: str | Path) -> Path:
    """Saves the demo's plot: test accuracy against training time, as a PNG; returns its path.

    It shows every run's curve whole, the target (the plain run's final accuracy minus
    ``config.tolerance``), when each run reached it, and where the sifted run's
    ``sift_delay_epochs`` end and sifting starts.
    """
    plain, sifted = results.plain, results.sifted
    target = plain.target(config.tolerance)
    events = []
    delay = config.sift_delay_epochs
    if 0 < delay <= len(sifted.epoch_ends):
        events.append(
            (
                sifted.epoch_ends[delay - 1],
                f"{sifted.name}: sifting starts ({delay}-epoch delay over)",
            )
        )
    return plot_runs(
        results.runs(),
        path,
        target=target,
        target_label=(
            f"target {100 * target:.2f}% (plain final - {100 * config.tolerance:g} points)"
        ),
        events=events,
        scale=100.0,
        ylabel="test accuracy (%)",
        xlabel="training wall-clock time (s), evaluation excluded",
        title="MNIST-1D: test accuracy against training time",
        reference=plain.name,
    )


def profile_target(smoke: bool = False) -> tuple[Any, Any, Any, Any]:
    """The demo model, ready for :func:`smartsift.profile`: ``(model, loader, loss_fn, optimizer)``.

    The target of ``smartsift profile --target benchmarks.demo:profile_target`` (from the
    repository root): the demo's :class:`ConvNet` from its seed, AdamW, and a loader of the
    sifted run's raw batches. ``smoke``: the tiny setting of :meth:`DemoConfig.smoke`.

    Example:
        >>> model, loader, loss_fn, optimizer = profile_target(smoke=True)
        >>> loader.batch_size, loss_fn(model, next(iter(loader))).shape
        (64, torch.Size([64]))
    """
    config = DemoConfig.smoke() if smoke else DemoConfig()
    train_set, _ = make_mnist1d(config.num_samples)
    model = seeded(lambda: ConvNet(width=config.width), config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-2)
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=order)
    return model, loader, cross_entropy_per_sample, optimizer


class _UsageError(Exception):
    """A problem with the command line that deserves a message, not a traceback."""


def _parser() -> argparse.ArgumentParser:
    d = DemoConfig()
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.demo",
        description="Trains a 1-D CNN on MNIST-1D four times, interleaved: plain; sifted with "
        "the reference rule; by loss reuse at a stated keep; and plain for half the epochs "
        "(the train-less control). Then prints a table and saves a plot of test accuracy "
        "against training time. Run it from the repository root (or with `make demo`).",
    )
    parser.add_argument(
        "--out",
        default="smartsift-demo.png",
        help="PNG path of the accuracy plot (%(default)s); the sifting report goes beside it, "
        "named NAME-report.png",
    )
    for flag, kind, text in (
        ("--num-samples", int, "MNIST-1D samples, 80%% for training"),
        ("--width", int, "CNN channels"),
        ("--batch-size", int, "sifted run's raw batch size"),
        ("--refined-batch-size", int, "batch size both runs train on"),
        ("--epochs", int, "epochs of each run"),
        ("--lr", float, "AdamW learning rate"),
        ("--beta", float, "RelativeProbabilistic beta: keeps about 1/(1+beta)"),
        ("--reuse-keep", float, "loss reuse's stated keep"),
        ("--history", int, "losses each one is ranked against"),
        ("--sift-delay-epochs", int, "epochs trained unsifted first"),
        ("--seed", int, "initialisation and data order"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        parser.add_argument(flag, type=kind, default=None, help=f"{text} (default {default})")
    parser.add_argument(
        "--schedule",
        choices=[*SCHEDULES, "none"],
        default=None,
        help=f"learning-rate schedule of every run, following the data (default {d.schedule})",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for PyTorch (%(default)s: steadier timings on a shared machine)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    return parser


def _config(args: argparse.Namespace) -> DemoConfig:
    """The demo's setting from the command line: the defaults with the flags given."""
    base = DemoConfig.smoke() if args.smoke else DemoConfig()
    names = [f.name for f in dataclasses.fields(DemoConfig)]
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if given.get("schedule") == "none":
        given["schedule"] = None
    config = dataclasses.replace(base, **given)
    for name in ("num_samples", "width", "batch_size", "refined_batch_size", "epochs", "history"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be positive.")
    if config.sift_delay_epochs < 0 or not config.beta > 0 or not config.lr > 0:
        raise _UsageError("--sift-delay-epochs must be >= 0, --beta and --lr positive.")
    if not 0 < config.reuse_keep < 1:
        raise _UsageError(f"--reuse-keep must be in (0, 1), but got {config.reuse_keep}.")
    if args.threads < 1:
        raise _UsageError("--threads must be at least 1.")
    return config


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the demo with the command line ``argv`` (default ``sys.argv[1:]``); returns the exit
    status (2 for bad settings).

    It prints the setting and a comparison table, saves a plot of test accuracy against
    training time at ``--out`` and, beside it, the sifted run's report
    (:mod:`smartsift.tools.report`).

    Example:
        >>> main(["--help"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    args = _parser().parse_args(argv)
    try:
        config = _config(args)
    except _UsageError as err:
        print(f"smartsift demo: error: {err}", file=sys.stderr)
        return 2
    torch.set_num_threads(args.threads)
    print(f"smartsift demo: {config.describe()}", flush=True)
    print(
        "training plain, sifted, loss reuse and the train-less control side by side on "
        f"{args.threads} CPU thread(s); times are wall-clock seconds of training, evaluation "
        "excluded",
        flush=True,
    )
    data = make_mnist1d(config.num_samples)
    bar = _progress_bar(3 * config.epochs + config.control_epochs, disabled=args.no_progress)
    latest: dict[str, float] = {}
    epochs: dict[str, int] = {}

    def on_segment(run: TrainingRun) -> None:
        result = run.result
        latest[result.name] = result.final
        epochs[result.name] = result.samples_seen // run.n_train
        bar.update(sum(epochs.values()) - bar.n)
        bar.set_postfix_str(" | ".join(f"{k} {v:.1%}" for k, v in latest.items()))

    out_path = Path(args.out)
    report = out_path.with_name(f"{out_path.stem}-report.png")
    try:
        results = run_demo(config, data, on_segment, report_path=report)
    finally:
        bar.close()
    print(summary_table(results, config.tolerance))
    out = plot_demo(results, config, args.out)
    print(f"plot: {out}")
    print(f"sifting report (losses kept and sifted, keep rate over training): {report}")
    return 0


def _progress_bar(total: int, disabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: no bar where stderr is not a terminal (a log file, CI), which a bar floods.
    return tqdm(total=total, unit="epoch", desc="4 runs", disable=True if disabled else None)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
