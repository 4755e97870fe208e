"""The demo job: a 1-D CNN on MNIST-1D, trained plain and sifted side by side.

MNIST-1D (Greydanus, 2020) is generated procedurally by the ``mnist1d`` package, so nothing is
downloaded. The helpers here are shared by ``smartsift demo``, ``smartsift profile`` and the
benchmarks.

Example:
    >>> model = ConvNet(width=8)
    >>> model(torch.zeros(2, 40)).shape
    torch.Size([2, 10])
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from smartsift.loader import SiftingDataLoader
from smartsift.policies import Policy

__all__ = [
    "ConvNet",
    "RunResult",
    "cross_entropy_per_sample",
    "evaluate",
    "make_mnist1d",
    "train_mnist1d",
]


def make_mnist1d(
    num_samples: int = 10_000, seed: int = 42
) -> tuple[TensorDataset, tuple[torch.Tensor, torch.Tensor]]:
    """Generates MNIST-1D locally: a training set and (x_test, y_test) tensors (80/20 split)."""
    try:
        from mnist1d.data import get_dataset_args, make_dataset
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The demo needs the `mnist1d` package: pip install 'smartsift[demo]'."
        ) from err
    args = get_dataset_args()
    args.num_samples = num_samples
    args.seed = seed
    data = make_dataset(args)
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
        for t, acc in zip(self.times, self.accuracies, strict=True):
            if acc >= target:
                return t
        return math.inf


def train_mnist1d(
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
    history: int | None = None,
    seed: int = 0,
    evals_per_epoch: int = 2,
    on_step: Callable[[], None] | None = None,
) -> RunResult:
    """Trains a :class:`ConvNet` plain (``policy=None``) or sifted; evaluation time is excluded.

    Runs with the same ``seed`` share the model initialisation and the data order.
    """
    torch.manual_seed(seed)
    model = ConvNet(width=width)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    order = torch.Generator().manual_seed(seed)
    raw = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=order)
    loader: Any = raw
    if policy is not None:
        loader = SiftingDataLoader(
            raw, model, cross_entropy_per_sample, policy=policy, sift_delay=sift_delay, seed=seed
        )
    result = RunResult(name)
    x_test, y_test = test
    eval_every = max(1, len(raw) // evals_per_epoch)
    clock = 0.0
    for _ in range(epochs):
        start = time.perf_counter()
        for step, (x, y) in enumerate(loader):
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            result.steps += 1
            result.samples_backpropagated += len(y)
            if on_step is not None:
                on_step()
            if (step + 1) % eval_every == 0:
                clock += time.perf_counter() - start
                result.times.append(clock)
                result.accuracies.append(evaluate(model, x_test, y_test))
                start = time.perf_counter()
        clock += time.perf_counter() - start
        result.times.append(clock)
        result.accuracies.append(evaluate(model, x_test, y_test))
        result.samples_seen += len(train_set)
    result.train_seconds = clock
    return result
