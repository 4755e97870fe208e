"""The examples run on their own: copied out of the repository, launched as a user would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from _ddp import torchrun_copied

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
TIMEOUT_S = 120  # a hang fails the test instead of blocking the suite


def _fields(line: str) -> dict[str, float]:
    """The ``key=number`` fields of a line the example prints."""
    pairs = (item.split("=", 1) for item in line.split() if "=" in item)
    return {k: float(v.rstrip("s")) for k, v in pairs}


def test_ddp_example_runs_under_torchrun_when_copied_out_of_the_repository(
    tmp_path: Path,
) -> None:
    args = ["--epochs=2", "--samples=1000", "--width=8", "--sift-delay=2"]
    proc = torchrun_copied(EXAMPLES / "ddp_train.py", tmp_path, args, TIMEOUT_S)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    lines = proc.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert [line.split(":")[0] for line in epochs] == ["epoch 0", "epoch 1"], out
    assert all("test accuracy" in line for line in epochs), out
    ranks = [_fields(line) for line in lines if line.startswith("[rank ")]
    (total,) = [_fields(line) for line in lines if line.startswith("[global]")]
    assert len(ranks) == 2 and ranks[0]["steps"] == ranks[1]["steps"] > 0, out
    assert total["ranks"] == 2 and total["steps"] == 2 * ranks[0]["steps"]
    assert total["seen"] == sum(r["seen"] for r in ranks) == 2 * 800  # 2 epochs of 800 samples
    assert total["trained"] == total["kept"] < total["seen"] and total["dropped"] == 0
    assert 0 < total["sifted"] == total["seen"] - total["kept"]
    # Each rank's cosine, stepped through DataSchedule, ended where training ended.
    assert ranks[0]["lr"] == ranks[1]["lr"] == 0.0


def test_tensorboard_report_example_logs_scalars_and_draws_the_report(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    script = shutil.copy(EXAMPLES / "tensorboard_report.py", tmp_path)
    out = tmp_path / "runs"
    cmd = [sys.executable, str(script), f"--out={out}", "--epochs=2", "--samples=1000"]
    cmd += ["--width=8", "--log-interval=2"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (out / "report.png").stat().st_size > 10_000
    events = EventAccumulator(str(out))
    events.Reload()
    tags = events.Tags()["scalars"]
    assert {"smartsift/keep_rate", "smartsift/samples_seen", "test/accuracy"} <= set(tags)
    seen = [e.value for e in events.Scalars("smartsift/samples_seen")]
    assert seen == sorted(seen) and seen[-1] > seen[0]  # logged as training went on
    assert len(events.Scalars("test/accuracy")) == 2  # one per epoch


def test_auto_validate_example_logs_why_it_trains_plain(tmp_path: Path) -> None:
    script = shutil.copy(EXAMPLES / "auto_validate.py", tmp_path)
    cmd = [sys.executable, str(script), "--epochs=3", "--samples=1500", "--width=16"]
    cmd += ["--every=15", "--patience=2"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    decisions = [line for line in proc.stderr.splitlines() if line.startswith("smartsift auto")]
    assert decisions and all(": plain (" in d or ": sift: " in d for d in decisions), proc.stderr
    epochs = [_fields(line) for line in proc.stdout.splitlines() if line.startswith("epoch ")]
    assert len(epochs) == 3 and all(0 <= e["test_accuracy"] <= 1 for e in epochs)
    (total,) = [_fields(line) for line in proc.stdout.splitlines() if line.startswith("[total]")]
    assert total["seen"] == 3 * 1080 == total["kept"] + total["sifted"]  # 0.8 * 1500 - 120
    assert total["trained"] == total["kept"]
    # One validation per judgement: after the first probe, then every 15 raw batches.
    assert total["checks"] >= 2
    if all(e["sifting"] == 0 for e in epochs):  # plain throughout: nothing was dropped
        assert total["sifted"] == 0


@pytest.mark.parametrize("mode", ["scoring", "reuse"])
def test_lightning_example_trains_in_either_mode_when_copied_out_of_the_repository(
    mode: str, tmp_path: Path
) -> None:
    pytest.importorskip("lightning")
    script = shutil.copy(EXAMPLES / "lightning_train.py", tmp_path)
    cmd = [sys.executable, str(script), f"--mode={mode}", "--epochs=2", "--samples=1000"]
    cmd += ["--batch-size=32", "--width=8", f"--report={tmp_path / 'report'}"]
    cmd += [f"--out={tmp_path / 'logs'}"]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads((tmp_path / "report.rank0.json").read_text())
    assert report["mode"] == mode and report["epochs"] == 2
    # The one-cycle schedule, sized for plain training (25 steps an epoch), ran to its end.
    assert report["scheduler_steps"] == report["scheduler_total"] == 2 * 25
    assert report["global_step"] < 2 * 25  # fewer steps than plain training
    for epoch in ("0", "1"):  # every sample pulled (scoring) or decided (reuse) once
        assert sorted(report["seen_ids"][epoch]) == list(range(800))
    if mode == "reuse":
        stats = report["epoch_stats"]
        assert stats["0"]["trained"] == 800 > stats["1"]["trained"] > 0
    (csv,) = (tmp_path / "logs").rglob("metrics.csv")
    assert "smartsift/keep_rate" in csv.read_text().splitlines()[0]
