"""The MNIST-1D demo setting with a fixed seed yields exactly the batches it always has.

The digest below was recorded before the loader was split into its engine parts; any change to
selection, batching, the delay or the DDP-free round logic that alters which samples are trained,
in which order and in which batches, changes it.
"""

from __future__ import annotations

import hashlib

import pytest
import torch
from torch.utils.data import DataLoader

import smartsift as ss

mnist1d = pytest.importorskip("mnist1d")

from benchmarks.demo import ConvNet, make_mnist1d  # noqa: E402

# sha256 over every yielded batch's sample ids, epoch by epoch; and the batch count.
PINNED_DIGEST = "874e40f5ca4fef57272f21bf94d54fd4fde96b8666e17f73781e485383ab54b7"
PINNED_BATCHES = 48


def _run() -> tuple[str, int, ss.SiftStats]:
    train, _ = make_mnist1d(num_samples=2000, seed=3)
    data = ss.IndexedDataset(train)
    torch.manual_seed(0)
    model = ConvNet(width=16)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def loss_fn(m: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
        _, x, y = batch
        return torch.nn.functional.cross_entropy(m(x), y, reduction="none")

    raw = DataLoader(data, batch_size=128, shuffle=True, generator=torch.Generator().manual_seed(1))
    loader = ss.SiftingDataLoader(
        raw,
        model,
        loss_fn,
        policy=ss.RelativeProbabilistic(beta=1.0, history=1000),
        batch_size=64,
        sift_delay=len(raw),
        seed=5,
    )
    digest = hashlib.sha256()
    n = 0
    for epoch in range(3):
        for batch in loader:
            digest.update(f"{epoch}:".encode() + batch[0].numpy().tobytes())
            n += 1
            opt.zero_grad()
            loss_fn(model, batch).mean().backward()
            opt.step()
    return digest.hexdigest(), n, loader.stats


def test_demo_setting_yields_the_pinned_batches() -> None:
    digest, n, stats = _run()
    assert stats.samples_seen == 3 * 1600
    assert n == PINNED_BATCHES
    assert digest == PINNED_DIGEST
