"""Tests of smartsift.tools.report: the sifting report's numbers, panels and PNG, and
loader.report."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from smartsift.tools.report import (
    class_keep_rates,
    loss_histograms,
    plot_report,
    report_figure,
    smoothed_keep_rate,
)

pytest.importorskip("matplotlib")

PNG = b"\x89PNG\r\n\x1a\n"


def _trace(n_batches: int = 60, size: int = 8, delay_steps: int = 5) -> ss.SiftTrace:
    g = np.random.default_rng(0)
    kept = g.integers(2, size - 1, n_batches)
    return ss.SiftTrace(
        steps=delay_steps + np.arange(n_batches) // 2,
        seen=np.full(n_batches, size),
        kept=kept,
        kept_losses=g.uniform(1.0, 3.0, int(kept.sum())),
        sifted_losses=g.uniform(0.1, 1.0, int(n_batches * size - kept.sum())),
    )


def _png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _stairs(ax: Any, name: str) -> np.ndarray:
    """The counts of the histogram labelled ``name: ...`` in the loss panel."""
    (patch,) = [p for p in ax.patches if p.get_label().startswith(f"{name}:")]
    return patch.get_data().values


# ------------------------------------------------------------------------------ the numbers
def test_histograms_count_every_finite_loss_once() -> None:
    kept = np.array([0.5, 1.0, 2.0, np.nan, np.inf])
    sifted = np.array([0.1, 0.2, 0.3])
    h = loss_histograms(kept, sifted, bins=5)
    assert h.kept.sum() == 3 and h.sifted.sum() == 3
    assert not h.log  # 0.1 to 2.0 is not two decades
    assert h.edges[0] == 0.1 and h.edges[-1] == 2.0


def test_histograms_go_logarithmic_across_decades_and_keep_zero_losses() -> None:
    h = loss_histograms(np.array([1e-4, 1e-2, 1.0]), np.array([0.0, 0.0]), bins=4)
    assert h.log
    assert h.kept.tolist() == [1, 0, 1, 1]
    assert h.sifted.tolist() == [2, 0, 0, 0]  # losses of exactly 0 count in the first bin
    assert np.allclose(np.diff(np.log10(h.edges)), 1.0)
    assert not loss_histograms(np.array([-1.0, 50.0]), np.array([0.1])).log  # negative losses


def test_smoothed_keep_rate_is_a_ratio_of_sums() -> None:
    seen = np.array([10, 30, 10])
    kept = np.array([10, 0, 10])
    assert smoothed_keep_rate(seen, kept, 1).tolist() == [1.0, 0.0, 1.0]
    # The middle window holds 20 kept of 50 seen, not the mean of the three rates.
    assert smoothed_keep_rate(seen, kept, 3)[1] == pytest.approx(20 / 50)
    with pytest.raises(ValueError, match="`window`"):
        smoothed_keep_rate(seen, kept, 0)


def test_class_keep_rates_count_scored_samples_only() -> None:
    audit = ss.SiftAudit(id_key=0)
    audit.record_passed(0, ([0, 1, 2, 3],), 4)  # the sift delay: not scored, not counted
    audit.record_scored(1, ([0, 1, 2, 3],), np.ones(4), np.array([True, False, True, True]))
    audit.record_scored(2, ([4, 5],), np.ones(2), np.array([False, False]))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    r = class_keep_rates(audit, labels)
    assert r.classes.tolist() == [0, 1, 2]
    assert r.scored.tolist() == [2, 2, 2]
    assert r.kept.tolist() == [1, 2, 0]
    assert r.rates.tolist() == [0.5, 1.0, 0.0]
    assert r.epochs == (1, 2)
    with pytest.raises(ValueError, match=r"`labels`.*id 5.*5 entries"):
        class_keep_rates(audit, labels[:5])
    with pytest.raises(ValueError, match="one-dimensional"):
        class_keep_rates(audit, labels.view(2, 3))


# ------------------------------------------------------------------------------ the figure
def test_figure_has_the_loss_and_keep_rate_panels() -> None:
    trace = _trace()
    fig = report_figure(trace, nominal_keep=0.5, title="my run")
    losses, rate = fig.axes
    assert losses.get_title() == "Loss of kept and sifted samples"
    assert rate.get_title() == "Keep rate over training"
    assert fig.get_suptitle().startswith("my run\n480 samples scored in 60 raw batches")
    assert _stairs(losses, "kept").sum() == trace.kept_losses.size
    assert _stairs(losses, "sifted").sum() == trace.sifted_losses.size
    assert losses.get_xscale() == "linear"
    # Every scored raw batch is a point at its training step, at its kept fraction.
    (points,) = [ln for ln in rate.get_lines() if ln.get_label() == "per raw batch"]
    assert points.get_xdata().tolist() == trace.steps.tolist()
    assert np.allclose(points.get_ydata(), trace.kept / trace.seen)
    smooth = [ln for ln in rate.get_lines() if ln.get_label().startswith("smoothed over")]
    assert len(smooth) == 1
    nominal = [ln for ln in rate.get_lines() if "nominal" in ln.get_label()]
    assert [ln.get_ydata()[0] for ln in nominal] == [0.5]
    labels = rate.get_legend_handles_labels()[1]
    assert "sift delay" in labels  # the first scored raw batch came after 5 steps


def test_loss_panel_is_logarithmic_when_losses_span_decades() -> None:
    trace = ss.SiftTrace(
        steps=np.zeros(2, dtype=np.int64),
        seen=np.array([4, 4]),
        kept=np.array([2, 2]),
        kept_losses=np.array([1.0, 2.0, 5.0, 9.0]),
        sifted_losses=np.array([1e-4, 1e-3, 1e-2, 0.0]),
    )
    (ax, _) = report_figure(trace).axes
    assert ax.get_xscale() == "log"
    assert "log scale" in ax.get_xlabel()


def test_per_class_panel_shows_the_audit_rates() -> None:
    audit = ss.SiftAudit(id_key=0)
    rng = np.random.default_rng(1)
    labels = np.array(["cat", "dog", "eel"])[rng.integers(0, 3, 90)]
    for epoch in range(3):
        mask = rng.random(90) < 0.5
        audit.record_scored(epoch, (np.arange(90),), rng.random(90), mask)
    fig = report_figure(_trace(), audit=audit, labels=labels, nominal_keep=0.5)
    assert len(fig.axes) == 3
    ax = fig.axes[2]
    assert ax.get_title() == "Keep rate per class"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["cat", "dog", "eel"]
    heights = [p.get_height() for p in ax.patches]
    expected = []
    for name in ("cat", "dog", "eel"):  # counted by hand from the audit's records
        kept = sum(
            np.isin(audit.epoch(e).kept, np.flatnonzero(labels == name)).sum() for e in range(3)
        )
        seen = 3 * (labels == name).sum()
        expected.append(kept / seen)
    assert heights == pytest.approx(expected)


def test_an_audit_without_labels_draws_two_panels_and_labels_need_an_audit() -> None:
    audit = ss.SiftAudit(id_key=0)
    audit.record_scored(0, ([0, 1],), np.ones(2), np.array([True, False]))
    assert len(report_figure(_trace(), audit=audit).axes) == 2
    with pytest.raises(ValueError, match=r"`audit`.*`labels`"):
        report_figure(_trace(), labels=[0, 1])
    with pytest.raises(TypeError, match="`trace`"):
        report_figure(ss.SiftStats())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`nominal_keep`"):
        report_figure(_trace(), nominal_keep=1.5)


def test_an_empty_trace_still_makes_a_report(tmp_path: Path) -> None:
    empty = ss.SiftTrace(*(np.zeros(0, dtype=np.int64) for _ in range(3)), np.zeros(0), np.zeros(0))
    fig = report_figure(empty)
    assert "nothing scored yet" in fig.get_suptitle()
    assert plot_report(empty, tmp_path / "empty.png").read_bytes()[:8] == PNG


# ------------------------------------------------------------------------------ a real run
def test_loader_report_of_a_run_with_an_audit(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 4, generator=g)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0).long()  # classes 0, 1, 2
    data = ss.IndexedDataset(TensorDataset(x, y))
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(m: torch.nn.Module, batch: Any) -> torch.Tensor:
        _, xb, yb = batch
        return torch.nn.functional.cross_entropy(m(xb), yb, reduction="none")

    audit = ss.SiftAudit(id_key=0)
    raw = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(1))
    loader = ss.SiftingDataLoader(
        raw, model, loss_fn, policy=ss.TopK(0.25), sift_delay=len(raw), seed=0, audit=audit
    )
    for _ in range(3):
        for batch in loader:
            opt.zero_grad()
            loss_fn(model, batch).mean().backward()
            opt.step()

    path = loader.report(tmp_path / "out" / "report.png", labels=y, title="tiny run")
    assert path == tmp_path / "out" / "report.png"
    width, height = _png_size(path)
    assert width > 2 * height  # three panels side by side
    assert path.stat().st_size > 20_000

    trace = loader.trace
    assert trace.seen.sum() == 2 * 240  # the first epoch was the sift delay
    fig = report_figure(trace, audit=audit, labels=y, nominal_keep=0.25)
    assert [ax.get_title() for ax in fig.axes] == [
        "Loss of kept and sifted samples",
        "Keep rate over training",
        "Keep rate per class",
    ]
    assert _stairs(fig.axes[0], "kept").sum() == trace.kept_losses.size
    rates = class_keep_rates(audit, y)
    assert [p.get_height() for p in fig.axes[2].patches] == pytest.approx(rates.rates.tolist())
    assert rates.scored.sum() == 2 * 240 and rates.kept.sum() == trace.kept.sum()
    assert rates.epochs == (1, 2)
    # Without labels the loader's report has no per-class panel, and labels need the audit.
    no_audit = ss.SiftingDataLoader(raw, model, loss_fn, policy=ss.TopK(0.5), seed=0)
    list(no_audit)
    assert _png_size(no_audit.report(tmp_path / "plain.png"))[0] < width
    with pytest.raises(ValueError, match="`audit`"):
        no_audit.report(tmp_path / "x.png", labels=y)


def test_drawing_leaves_matplotlib_global_state_alone(tmp_path: Path) -> None:
    code = (
        "import sys, numpy as np, matplotlib, smartsift as ss\n"
        "from smartsift.tools.report import plot_report\n"
        "def settings():\n"
        "    return {k: matplotlib.rcParams[k] for k in matplotlib.rcParams if k != 'backend'}\n"
        "before = settings()\n"
        "t = ss.SiftTrace(np.arange(3), np.full(3, 4), np.full(3, 2), np.ones(6), np.zeros(6))\n"
        f"plot_report(t, {str(tmp_path / 'r.png')!r}, nominal_keep=0.5)\n"
        "assert 'matplotlib.pyplot' not in sys.modules\n"
        "assert settings() == before\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "ok", out.stderr


def test_the_demo_writes_the_sifted_runs_report(tmp_path: Path) -> None:
    pytest.importorskip("mnist1d")
    import dataclasses

    from benchmarks.demo import DemoConfig, make_mnist1d, run_demo

    config = dataclasses.replace(DemoConfig.smoke(), num_samples=300, evals_per_epoch=1)
    path = tmp_path / "demo-report.png"
    sifted = run_demo(config, make_mnist1d(config.num_samples), report_path=path).sifted
    assert _png_size(path)[0] > 0
    assert sifted.samples_backpropagated < sifted.samples_seen  # the second epoch was sifted
