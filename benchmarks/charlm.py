"""A small character-level transformer language model over the Python standard library's source.

The corpus is real text found on every machine: the ``.py`` files at the top of the standard
library directory, in name order, read as bytes. A sample is a window of ``context + 1`` bytes;
its loss is the mean next-byte cross-entropy over the window. Used by the time-to-accuracy and
efficiency benchmarks (this module is a helper, not a benchmark).

Example:
    >>> model = CharTransformer(context=16, dim=32, layers=1, heads=2)
    >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 256])
"""

from __future__ import annotations

import copy
import math
import sysconfig
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss

__all__ = [
    "CharTransformer",
    "LMRun",
    "corpus",
    "make_windows",
    "per_sample_loss",
]

VOCAB = 256


def corpus(max_bytes: int) -> tuple[bytes, list[str]]:
    """The first ``max_bytes`` of the standard library's top-level source files in name order.

    Returns the text and the names of the files it draws on (the last one may be cut).
    """
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    out: list[bytes] = []
    names: list[str] = []
    total = 0
    for path in sorted(stdlib.glob("*.py")):
        if total >= max_bytes:
            break
        try:
            data = path.read_bytes()
        except OSError:
            continue
        out.append(data)
        names.append(path.name)
        total += len(data) + 1
    return b"\n".join(out)[:max_bytes], names


def make_windows(text: bytes, context: int) -> torch.Tensor:
    """Non-overlapping windows of ``context + 1`` bytes, shape ``(N, context + 1)``."""
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    n = (len(data) - 1) // (context + 1)
    return data[: n * (context + 1)].view(n, context + 1)


class _Block(torch.nn.Module):
    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(dim, 4 * dim), torch.nn.GELU(), torch.nn.Linear(4 * dim, dim)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=2)
        shape = (b, t, self.heads, d // self.heads)
        q, k, v = (z.view(shape).transpose(1, 2) for z in (q, k, v))
        att = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(self.ln2(x))


class CharTransformer(torch.nn.Module):
    """A GPT-style byte-level transformer: embeddings, ``layers`` blocks, a linear head."""

    def __init__(self, context: int = 64, dim: int = 64, layers: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok = torch.nn.Embedding(VOCAB, dim)
        self.pos = torch.nn.Parameter(torch.zeros(1, context, dim))
        self.blocks = torch.nn.Sequential(*[_Block(dim, heads) for _ in range(layers)])
        self.ln = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, VOCAB)
        torch.nn.init.normal_(self.pos, std=0.02)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos[:, : idx.shape[1]]
        return self.head(self.ln(self.blocks(x)))


def per_sample_loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    """Mean next-byte cross-entropy of each window: shape ``(B,)``."""
    (windows,) = batch
    x, y = windows[:, :-1], windows[:, 1:]
    logits = model(x)
    loss = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1), reduction="none")
    return loss.view(y.shape).mean(1)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, windows: torch.Tensor) -> float:
    """Mean per-byte loss over ``windows`` in eval mode (mode restored)."""
    was = model.training
    model.eval()
    total = 0.0
    for i in range(0, len(windows), 256):
        chunk = windows[i : i + 256]
        total += float(per_sample_loss(model, (chunk,)).sum())
    model.train(was)
    return total / len(windows)


class LMRun:
    """One language-model training run, advanced one evaluation interval at a time.

    Runs with the same ``seed`` share the initial weights and the data order.
    ``policy=None`` trains plain; otherwise the loader is a ``SiftingDataLoader``.
    """

    def __init__(
        self,
        name: str,
        train: torch.Tensor,
        val: torch.Tensor,
        *,
        policy: ss.Policy | None,
        epochs: int,
        batch_size: int = 32,
        lr: float = 2e-3,
        sift_delay: int = 0,
        seed: int = 0,
        evals_per_epoch: int = 4,
        clock: Callable[[], float],
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        torch.manual_seed(seed)
        context = train.shape[1] - 1
        self.model = CharTransformer(context=context, **(model_kwargs or {}))
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=lr, weight_decay=0.01)
        order = torch.Generator().manual_seed(seed)
        self.raw = DataLoader(
            TensorDataset(train), batch_size=batch_size, shuffle=True, generator=order
        )
        self.loader: Any = self.raw
        if policy is not None:
            self.loader = ss.SiftingDataLoader(
                self.raw, self.model, per_sample_loss, policy=policy, sift_delay=sift_delay,
                seed=seed,
            )  # fmt: skip
        self.name = name
        self.val = val
        self.epochs = epochs
        self.clock = clock
        self.eval_every = max(1, math.ceil(len(self.raw) / evals_per_epoch))
        self.times: list[float] = []
        self.losses: list[float] = []
        self.steps = 0
        self.samples_backpropagated = 0
        self.samples_seen = 0
        self.train_seconds = 0.0
        self._segments = self._train()

    def advance(self) -> bool:
        """Trains up to the next evaluation; returns False when the run is finished."""
        return next(self._segments, None) is not None

    def warm_up(self, steps: int = 2) -> None:
        """A few untimed steps and scoring passes on a copy of the model (one-off costs)."""
        model = copy.deepcopy(self.model)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        batch = (self.raw.dataset[: self.raw.batch_size][0],)
        for _ in range(steps):
            loss = per_sample_loss(model, batch).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                per_sample_loss(model.eval(), batch)
            model.train()

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else math.nan

    def _train(self) -> Any:
        model, opt = self.model, self.optimizer
        elapsed = 0.0
        for _ in range(self.epochs):
            start = self.clock()
            for step, batch in enumerate(self.loader):
                loss = per_sample_loss(model, batch).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                self.steps += 1
                self.samples_backpropagated += len(batch[0])
                if (step + 1) % self.eval_every == 0:
                    elapsed += self.clock() - start
                    self.times.append(elapsed)
                    self.losses.append(validation_loss(model, self.val))
                    yield True
                    start = self.clock()
            elapsed += self.clock() - start
            self.times.append(elapsed)
            self.losses.append(validation_loss(model, self.val))
            self.samples_seen += len(self.raw.dataset)  # type: ignore[arg-type]
            self.train_seconds = elapsed
            yield True
