"""Version-1 loader states, saved by smartsift's first release, and the batches that follow them.

:func:`make_loader` builds a loader over a small deterministic dataset with whichever
``smartsift`` is importable, so the same code builds the first release's loader (to write the
fixture) and the current one (to load it). Running this module as a script with the first
release's ``src`` first on ``PYTHONPATH`` writes ``tests/data/loader_state_v1.pt``: per
configuration, the state saved at a mid-epoch stop (samples buffered, a batch ready) and every
batch the first release's loader yielded after it until the end of epoch 1, as concatenated
tensors with their sizes, plus its final counters.

Example:
    >>> loader = make_loader("topk")
    >>> [len(ids) for _, _, ids in loader][:3]
    [3, 3, 3]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

import smartsift as ss

__all__ = ["CONFIGS", "EPOCHS", "FIXTURE", "make_loader"]

FIXTURE = Path(__file__).parent / "data" / "loader_state_v1.pt"
EPOCHS = 2

# name: (policy, loader keyword arguments, refined batches yielded before the state is saved,
# over the whole run)
CONFIGS: dict[str, tuple[Any, dict[str, Any], int]] = {
    "topk": (ss.TopK(keep=0.875), {"batch_size": 3}, 15),  # in epoch 1
    "relative": (
        ss.RelativeProbabilistic(beta=1.0, history=16),
        {"batch_size": 5, "drop_last": True, "sift_delay": 2},
        6,
    ),
}

# The counters of the first release (which had no `samples_passed`).
_COUNTERS: tuple[str, ...] = ("samples_seen", "samples_kept", "samples_sifted", "samples_dropped")
_COUNTERS += ("samples_trained", "raw_batches", "steps", "epochs")


def _data(n: int = 40) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = torch.randn(n, generator=g)
    return [(x[i], y[i], i) for i in range(n)]


def _model() -> torch.nn.Module:
    """Fixed weights, never trained: every build scores alike."""
    model = torch.nn.Linear(3, 1)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        model.weight.copy_(torch.randn(1, 3, generator=g))
        model.bias.zero_()
    return model


def _loss(model: torch.nn.Module, batch: Any) -> torch.Tensor:
    x, y, _ = batch
    return (model(x).squeeze(1) - y) ** 2


def make_loader(name: str) -> Any:
    """The loader of configuration ``name``, over a seeded shuffled ``DataLoader`` of 8."""
    policy, kwargs, _ = CONFIGS[name]
    raw = DataLoader(
        _data(), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(5)
    )
    return ss.SiftingDataLoader(raw, _model(), _loss, policy, seed=3, **kwargs)


def counters(loader: Any) -> dict[str, int]:
    """The loader's counters that both releases keep."""
    return {k: int(getattr(loader.stats, k)) for k in _COUNTERS}


def _record(name: str) -> dict[str, Any]:
    stop = CONFIGS[name][2]
    loader = make_loader(name)
    steps, state, batches = 0, None, []
    for _ in range(EPOCHS):
        for batch in loader:
            if state is not None:
                batches.append(batch)
            steps += 1
            if steps == stop:
                state = loader.state_dict()
    if state is None or state.get("version") != 1 or not state["buffer"] or not state["in_epoch"]:
        raise RuntimeError(f"{name}: expected a version-1 state with samples buffered mid-epoch")
    return {
        "state": state,
        "x": torch.cat([b[0] for b in batches]),
        "y": torch.cat([b[1] for b in batches]),
        "ids": torch.cat([b[2] for b in batches]),
        "sizes": torch.tensor([len(b[2]) for b in batches]),
        "counters": counters(loader),
    }


def main() -> None:
    """Writes the fixture with the importable smartsift, which must be the first release."""
    fixture = {name: _record(name) for name in CONFIGS}
    FIXTURE.parent.mkdir(exist_ok=True)
    torch.save(fixture, FIXTURE)
    print(f"wrote {FIXTURE.name}: {FIXTURE.stat().st_size} bytes", file=sys.stderr)


if __name__ == "__main__":
    main()
