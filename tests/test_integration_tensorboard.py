"""Tests of smartsift.integrations.tensorboard and of the loader's ``log_fn``/``log_interval``."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from conftest import ce_loss
from smartsift.integrations.tensorboard import stats_scalars, tensorboard_logger

pytest.importorskip("tensorboard")

from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)
from torch.utils.tensorboard import SummaryWriter


def _data(n: int) -> TensorDataset:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Linear(3, 2)


def test_scalars_reach_the_event_file_at_the_loader_steps(tmp_path: Path) -> None:
    writer = SummaryWriter(str(tmp_path))
    to_tensorboard = tensorboard_logger(writer)
    calls: list[tuple[int, ss.SiftStats]] = []

    def log_fn(stats: ss.SiftStats, step: int) -> None:
        calls.append((step, stats))
        to_tensorboard(stats, step)

    loader = ss.SiftingDataLoader(
        DataLoader(_data(64), batch_size=8),
        _model(),
        ce_loss,
        policy=ss.QuantileThreshold(exclude=0.5, history=100),
        sift_delay=2,
        log_interval=2,
        log_fn=log_fn,
        seed=0,
    )
    for _ in loader:
        pass
    writer.close()

    events = EventAccumulator(str(tmp_path))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"smartsift/samples_seen", "smartsift/keep_rate", "smartsift/loss_p50"} <= tags
    assert all(tag.startswith("smartsift/") for tag in tags)

    seen = [(e.step, e.value) for e in events.Scalars("smartsift/samples_seen")]
    assert seen == [(step, float(s.samples_seen)) for step, s in calls]
    assert [v for _, v in seen] == [16.0, 32.0, 48.0, 64.0]  # every 2 raw batches of 8
    for tag in tags:  # every value written is the one given, at the step given
        written = events.Scalars(tag)
        expected = [(step, stats_scalars(s)[tag]) for step, s in calls if tag in stats_scalars(s)]
        assert [e.step for e in written] == [step for step, _ in expected]
        assert [e.value for e in written] == pytest.approx([v for _, v in expected], rel=1e-6)
    # The first call came during the sift delay: nothing scored yet, so the recent keep rate is
    # NaN and was left out, not written.
    assert math.isnan(calls[0][1].recent_keep_rate)
    recent_steps = [e.step for e in events.Scalars("smartsift/recent_keep_rate")]
    assert recent_steps == [step for step, _ in calls[1:]]


def test_a_plain_callable_is_called_every_log_interval_raw_batches() -> None:
    calls: list[tuple[int, int, ss.SiftStats]] = []
    received = 0
    loader = ss.SiftingDataLoader(
        DataLoader(_data(80), batch_size=8),  # 10 raw batches
        _model(),
        ce_loss,
        policy=ss.TopK(0.5),
        log_interval=3,
        log_fn=lambda stats, step: calls.append((step, received, stats)),
        seed=0,
    )
    for _ in loader:
        received += 1
    assert [s.raw_batches for _, _, s in calls] == [3, 6, 9]
    assert [s.samples_seen for _, _, s in calls] == [24, 48, 72]
    assert [s.samples_kept for _, _, s in calls] == [12, 24, 36]
    for step, batches_so_far, stats in calls:
        # The step is the number of refined batches the training loop had received.
        assert step == stats.steps == batches_so_far
    assert [step for step, _, _ in calls] == [1, 2, 4]


def test_nan_and_inf_are_left_out_and_names_prefixed() -> None:
    stats = ss.SiftStats(samples_seen=4, samples_kept=1, samples_sifted=3, data_s=math.inf)
    values = stats_scalars(stats, prefix="train/sift_")
    assert values["train/sift_keep_rate"] == 0.25
    assert values["train/sift_samples_seen"] == 4.0
    assert "train/sift_recent_keep_rate" not in values  # NaN
    assert "train/sift_data_s" not in values  # inf
    assert all(math.isfinite(v) for v in values.values())


def test_a_writer_without_add_scalar_is_refused() -> None:
    with pytest.raises(TypeError, match=r"`writer`.*SummaryWriter"):
        tensorboard_logger(object())
    with pytest.raises(TypeError, match="`prefix`"):
        tensorboard_logger(SummaryWriter, prefix=1)  # type: ignore[arg-type]


def test_importing_smartsift_does_not_import_tensorboard() -> None:
    code = (
        "import sys, smartsift, smartsift.integrations.tensorboard\n"
        "loaded = [m for m in sys.modules if m == 'tensorboard' or m.startswith('tensorboard.')"
        " or m.startswith('torch.utils.tensorboard')]\n"
        "print(loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
