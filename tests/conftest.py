"""Shared fixtures: small models, datasets and loss functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

torch.set_num_threads(1)


def ce_loss(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Per-sample cross-entropy of an (x, y) batch."""
    x, y = batch
    return F.cross_entropy(model(x), y, reduction="none")


@pytest.fixture
def toy_data() -> torch.utils.data.TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 6, generator=g)
    y = (x[:, 0] > 0).long()
    return torch.utils.data.TensorDataset(x, y)
