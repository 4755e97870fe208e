"""The demo job: a 1-D CNN on MNIST-1D, trained plain and sifted side by side.

MNIST-1D (Greydanus, 2020) is generated procedurally by the ``mnist1d`` package, so nothing is
downloaded. The helpers here are shared by ``smartsift demo``, ``smartsift profile`` and the
benchmarks.

Runs that are compared are interleaved: :func:`train_side_by_side` advances each run by one
evaluation interval in turn, so that a busy machine slows them alike. Every run keeps its own
training clock, which excludes evaluation.

Example:
    >>> model = ConvNet(width=8)
    >>> model(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from smartsift.loader import SiftingDataLoader
from smartsift.policies import Policy, RelativeProbabilistic

__all__ = [
    "ConvNet",
    "DemoConfig",
    "RunResult",
    "TrainingRun",
    "cross_entropy_per_sample",
    "evaluate",
    "make_mnist1d",
    "plot_runs",
    "run_demo",
    "summary_table",
    "time_to_target",
    "train_side_by_side",
]


def make_mnist1d(
    num_samples: int = 10_000, seed: int = 42
) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
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


@dataclass
class RunResult:
    """One training run: its accuracy curve against training wall-clock time, and its work."""

    name: str
    times: list[float] = field(default_factory=list)  # training seconds at each evaluation
    accuracies: list[float] = field(default_factory=list)
    steps: int = 0
    samples_backpropagated: int = 0
    samples_seen: int = 0
    train_seconds: float = 0.0

    @property
    def final_accuracy(self) -> float:
        return self.accuracies[-1] if self.accuracies else float("nan")

    @property
    def keep_rate(self) -> float:
        return self.samples_backpropagated / self.samples_seen if self.samples_seen else 1.0

    def time_to(self, target: float) -> float:
        """Training seconds until the accuracy first reached ``target`` (inf if never)."""
        return time_to_target(self.times, self.accuracies, target)


def time_to_target(
    times: Sequence[float], values: Sequence[float], target: float, higher_is_better: bool = True
) -> float:
    """The first time at which ``values`` reached ``target`` (``math.inf`` if never).

    Example:
        >>> time_to_target([1.0, 2.0, 3.0], [0.5, 0.8, 0.9], 0.75)
        2.0
        >>> time_to_target([1.0, 2.0], [3.0, 2.5], 2.0, higher_is_better=False)
        inf
    """
    for t, v in zip(times, values, strict=True):
        if (v >= target) if higher_is_better else (v <= target):
            return t
    return math.inf


class TrainingRun:
    """A :class:`ConvNet` trained on MNIST-1D, plain (``policy=None``) or sifted, in segments.

    :meth:`advance` trains until the next evaluation (``evals_per_epoch`` per epoch, and one
    at each epoch's end) and returns False once all ``epochs`` are done. Runs with the same
    ``seed`` share the model initialisation and the data order. With ``cosine=True`` the
    learning rate decays along a cosine over the epochs, set at every evaluation from the
    fraction of the raw data seen, so that plain and sifted runs share one schedule per epoch.
    ``clock`` measures training time (``time.process_time`` gives CPU seconds, steadier than
    the wall clock on a busy machine); evaluation time is excluded. ``refined_batch_size``
    sets the sifted run's refined batch size (default: ``batch_size``).

    Example:
        >>> train, test = make_mnist1d(400)
        >>> run = TrainingRun("plain", train, test, epochs=1, width=8, batch_size=64)
        >>> while run.advance():
        ...     pass
        >>> run.result.steps
        5
    """

    def __init__(
        self,
        name: str,
        train_set: TensorDataset,
        test: tuple[torch.Tensor, torch.Tensor],
        *,
        policy: Policy | None = None,
        epochs: int = 12,
        width: int = 100,
        batch_size: int = 128,
        lr: float = 3e-3,
        sift_delay: int = 0,
        seed: int = 0,
        evals_per_epoch: int = 2,
        cosine: bool = False,
        clock: Callable[[], float] = time.perf_counter,
        refined_batch_size: int | None = None,
    ) -> None:
        torch.manual_seed(seed)
        self.model = ConvNet(width=width)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=1e-2)
        order = torch.Generator().manual_seed(seed)
        self.raw = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=order)
        self.loader: Any = self.raw
        if policy is not None:
            self.loader = SiftingDataLoader(
                self.raw,
                self.model,
                cross_entropy_per_sample,
                policy=policy,
                sift_delay=sift_delay,
                seed=seed,
                batch_size=refined_batch_size,
            )
        self.result = RunResult(name)
        self.epochs = epochs
        self.base_lr = lr
        self.cosine = cosine
        self.clock = clock
        self.test = test
        self.n_train = len(train_set)
        self.eval_every = max(1, len(self.raw) // max(1, evals_per_epoch))
        self._seen_in_epoch = 0
        self._segments = self._train()

    def advance(self) -> bool:
        """Trains up to the next evaluation; returns False when the run is finished."""
        return next(self._segments, None) is not None

    def warm_up(self, steps: int = 3) -> None:
        """Runs a few training steps and scoring passes on a copy of the model, untimed.

        The first calls of a process pay one-off costs (memory pools, kernel selection) that
        would otherwise be charged to whichever run goes first.
        """
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=self.base_lr)
        x, y = self.raw.dataset[: self.raw.batch_size]  # leaves the data order untouched
        for _ in range(steps):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                cross_entropy_per_sample(model.eval(), (x, y))
            model.train()

    def _set_lr(self, progress: float) -> None:
        if not self.cosine:
            return
        lr = self.base_lr * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _progress(self, epoch: int, seen_before: int) -> float:
        """The fraction of all epochs' raw samples seen so far."""
        if isinstance(self.loader, SiftingDataLoader):
            seen = self.loader.stats.samples_seen - seen_before
        else:
            seen = self._seen_in_epoch
        return (epoch + seen / self.n_train) / self.epochs

    def _train(self) -> Iterator[bool]:
        model, optimizer, result = self.model, self.optimizer, self.result
        x_test, y_test = self.test
        clock, now = 0.0, self.clock
        for epoch in range(self.epochs):
            self._seen_in_epoch = 0
            seen_before = epoch * self.n_train
            self._set_lr(epoch / self.epochs)
            start = now()
            for step, (x, y) in enumerate(self.loader):
                loss = F.cross_entropy(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                result.steps += 1
                result.samples_backpropagated += len(y)
                self._seen_in_epoch += len(y)
                if (step + 1) % self.eval_every == 0:
                    clock += now() - start
                    result.times.append(clock)
                    result.accuracies.append(evaluate(model, x_test, y_test))
                    self._set_lr(self._progress(epoch, seen_before))
                    yield True
                    start = now()
            clock += now() - start
            result.times.append(clock)
            result.accuracies.append(evaluate(model, x_test, y_test))
            result.samples_seen += self.n_train
            result.train_seconds = clock
            yield True


def train_side_by_side(
    runs: Sequence[TrainingRun], on_segment: Callable[[TrainingRun], None] | None = None
) -> list[RunResult]:
    """Advances the runs in turn, one evaluation interval each, until all are finished.

    Every run is warmed up first (see :meth:`TrainingRun.warm_up`).
    """
    for run in runs:
        run.warm_up()
    active = list(runs)
    while active:
        for run in list(active):
            if not run.advance():
                active.remove(run)
            elif on_segment is not None:
                on_segment(run)
    return [run.result for run in runs]


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
    time-to-accuracy target lies.

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
    cosine: bool = False
    beta: float = 1.0
    history: int = 1000
    sift_delay_epochs: int = 1
    seed: int = 0
    evals_per_epoch: int = 4
    tolerance: float = 0.005

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
    def plain_batch_size(self) -> int:
        """The plain run's batch size: the size of the sifted run's refined batches."""
        return self.refined_batch_size or self.batch_size

    def describe(self, seed: bool = True) -> str:
        """One line naming every setting (``seed=False`` leaves the seed out)."""
        text = (
            f"MNIST-1D {self.num_samples} samples, ConvNet width {self.width}, "
            f"{self.epochs} epochs, AdamW lr {self.lr:g}{' (cosine)' if self.cosine else ''}; "
            f"plain: batches of {self.plain_batch_size}; sifted: "
            f"RelativeProbabilistic(beta={self.beta:g}, history={self.history}), raw batches "
            f"of {self.batch_size} refined to {self.plain_batch_size}, sift_delay "
            f"{self.sift_delay_epochs} epoch(s)"
        )
        return f"{text}; seed {self.seed}" if seed else text


def run_demo(
    config: DemoConfig | None = None,
    data: tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]] | None = None,
    on_segment: Callable[[TrainingRun], None] | None = None,
    policy: Policy | None = None,
) -> tuple[RunResult, RunResult]:
    """Trains the plain and the sifted run side by side; returns (plain, sifted).

    ``policy`` replaces the config's reference rule; ``data`` reuses a generated data set.
    """
    config = config or DemoConfig()
    train_set, test = data if data is not None else make_mnist1d(config.num_samples)
    n_raw = math.ceil(len(train_set) / config.batch_size)
    common: dict[str, Any] = {
        "epochs": config.epochs,
        "width": config.width,
        "lr": config.lr,
        "seed": config.seed,
        "evals_per_epoch": config.evals_per_epoch,
        "cosine": config.cosine,
    }
    plain = TrainingRun("plain", train_set, test, batch_size=config.plain_batch_size, **common)
    sifted = TrainingRun(
        "sifted",
        train_set,
        test,
        policy=policy if policy is not None else config.policy,
        batch_size=config.batch_size,
        sift_delay=config.sift_delay_epochs * n_raw,
        refined_batch_size=config.refined_batch_size,
        **common,
    )
    train_side_by_side([plain, sifted], on_segment)
    return plain.result, sifted.result


def _fmt_time(seconds: float) -> str:
    return "never" if math.isinf(seconds) else f"{seconds:.1f} s"


def summary_table(plain: RunResult, sifted: RunResult, tolerance: float = 0.005) -> str:
    """A plain-text table comparing the two runs, with the time-to-accuracy speedup.

    The target is the plain run's final accuracy minus ``tolerance``.
    """
    target = plain.final_accuracy - tolerance
    t_plain, t_sifted = plain.time_to(target), sifted.time_to(target)
    speedup = t_plain / t_sifted if t_sifted > 0 and not math.isinf(t_sifted) else 0.0
    rows = [
        ("training wall time", f"{plain.train_seconds:.1f} s", f"{sifted.train_seconds:.1f} s"),
        ("optimizer steps", f"{plain.steps}", f"{sifted.steps}"),
        (
            "samples backpropagated",
            f"{plain.samples_backpropagated}",
            f"{sifted.samples_backpropagated}",
        ),
        ("keep rate", f"{plain.keep_rate:.1%}", f"{sifted.keep_rate:.1%}"),
        ("final test accuracy", f"{plain.final_accuracy:.2%}", f"{sifted.final_accuracy:.2%}"),
        (f"time to {target:.2%}", _fmt_time(t_plain), _fmt_time(t_sifted)),
    ]
    width = max(len(r[0]) for r in rows) + 2
    lines = [f"{'':<{width}}{'plain':>14}{'sifted':>14}"]
    lines += [f"{name:<{width}}{a:>14}{b:>14}" for name, a, b in rows]
    verdict = (
        f"sifting reached {target:.2%} {speedup:.2f}x sooner"
        if speedup >= 1
        else f"sifting reached {target:.2%} {1 / speedup:.2f}x later"
        if speedup > 0
        else f"sifting never reached {target:.2%}"
    )
    lines.append(
        f"speedup to {target:.2%} (plain final accuracy - {tolerance * 100:g} points): "
        f"{speedup:.2f}x ({verdict}); per epoch: "
        f"{plain.train_seconds / max(sifted.train_seconds, 1e-9):.2f}x"
    )
    return "\n".join(lines)


def plot_runs(
    results: Sequence[RunResult],
    path: str | Path,
    target: float | None = None,
    title: str = "MNIST-1D: test accuracy against training time",
) -> Path:
    """Saves a PNG of test accuracy against training wall-clock time; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    try:
        for result in results:
            ax.plot(result.times, [100 * a for a in result.accuracies], label=result.name)
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle="--", linewidth=1, label="target")
        finals = [100 * a for r in results for a in r.accuracies[len(r.accuracies) // 4 :]]
        if finals:
            ax.set_ylim(min(finals) - 2, min(100.0, max(finals) + 1))
        ax.set_xlabel("training wall-clock time (s), evaluation excluded")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
    finally:
        plt.close(fig)
    return path
