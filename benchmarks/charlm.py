"""A small character-level transformer language model over the Python standard library's source.

The corpus is real text found on every machine: the ``.py`` files at the top of the standard
library directory, in name order, read as bytes. A sample is a window of ``context + 1`` bytes;
its loss is the mean next-byte cross-entropy over the window; :func:`lm_task` makes it a task of
:mod:`benchmarks.harness`. Used by the time-to-accuracy, efficiency and GPU benchmarks (this
module is a helper, not a benchmark).

Example:
    >>> model = CharTransformer(context=16, dim=32, layers=1, heads=2)
    >>> model(torch.zeros(2, 16, dtype=torch.long)).shape
    torch.Size([2, 16, 256])
"""

from __future__ import annotations

import functools
import sysconfig
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.utils.data import TensorDataset

from benchmarks.harness import Task

__all__ = [
    "CharTransformer",
    "corpus",
    "lm_task",
    "make_windows",
    "per_sample_loss",
    "validation_loss",
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


def lm_task(
    train: torch.Tensor,
    val: torch.Tensor,
    model_kwargs: dict[str, Any] | None = None,
    held_out: torch.Tensor | None = None,
) -> Task:
    """The language model as a :class:`~benchmarks.harness.Task`; lower validation loss is better.

    ``train`` and ``val`` are windows from :func:`make_windows`; ``model_kwargs`` go to
    :class:`CharTransformer` (its context is the windows' length minus one). ``held_out``
    windows, other than ``val``, give the task a ``validate`` loss for ``Auto``.
    """
    return Task(
        build_model=functools.partial(
            CharTransformer, context=train.shape[1] - 1, **(model_kwargs or {})
        ),
        train_set=TensorDataset(train),
        loss_fn=per_sample_loss,
        evaluate=functools.partial(validation_loss, windows=val),
        higher_is_better=False,
        validate=None if held_out is None else functools.partial(validation_loss, windows=held_out),
    )
