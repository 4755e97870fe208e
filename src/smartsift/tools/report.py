"""A picture of what sifting did: ``plot_report(loader.trace, "sifting.png")``.

The report has two panels, and a third when an audit and the samples' classes are given:

1. **Loss of kept and sifted samples**: histograms of the losses of the samples the policy kept
   and of those it sifted out, over the latest scored raw batches the trace holds (a log scale
   when the losses span two decades or more). A good sifting run shows the kept samples to the
   right of the sifted ones.
2. **Keep rate over training**: the fraction kept of every scored raw batch against the
   training step, smoothed, with the policy's nominal keep fraction as a dashed line.
3. **Keep rate per class** (with ``audit`` and ``labels``): the fraction of each class's scored
   samples that the policy kept, over every epoch the :class:`~smartsift.SiftAudit` recorded.
   Classes kept far more often than the rest are the ones the model finds hard (or whose labels
   are noisy).

:meth:`smartsift.SiftingDataLoader.report` draws it for a loader. Drawing needs matplotlib
(``pip install 'smartsift[demo]'``); it uses matplotlib's object API only (no ``pyplot``), so no
global matplotlib state changes. The numbers behind each panel come from pure functions:
:func:`loss_histograms`, :func:`smoothed_keep_rate` and :func:`class_keep_rates`.

Example:
    >>> import numpy as np
    >>> from smartsift.engine.ledger import SiftTrace
    >>> trace = SiftTrace(steps=np.arange(20), seen=np.full(20, 8), kept=np.full(20, 4),
    ...                   kept_losses=np.linspace(1.0, 3.0, 80),
    ...                   sifted_losses=np.linspace(0.01, 1.0, 80))
    >>> fig = report_figure(trace, nominal_keep=0.5)
    >>> [ax.get_title() for ax in fig.axes]
    ['Loss of kept and sifted samples', 'Keep rate over training']
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from smartsift.engine.audit import SiftAudit
from smartsift.engine.ledger import SiftTrace

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "ClassKeepRates",
    "LossHistograms",
    "class_keep_rates",
    "loss_histograms",
    "plot_report",
    "report_figure",
    "smoothed_keep_rate",
]

KEPT_COLOR = "tab:blue"
SIFTED_COLOR = "tab:orange"
_MANY_CLASSES = 40  # beyond this, per-class bars are sorted by rate and not labelled one by one


# ------------------------------------------------------------------------------ the numbers
@dataclass(frozen=True)
class LossHistograms:
    """Counts of kept and sifted losses over shared bins.

    Attributes:
        edges: the bin edges (``len(kept) + 1`` of them).
        kept, sifted: samples per bin.
        log: whether the bins are spaced logarithmically.
    """

    edges: np.ndarray
    kept: np.ndarray
    sifted: np.ndarray
    log: bool


def loss_histograms(
    kept_losses: np.ndarray, sifted_losses: np.ndarray, bins: int | None = None
) -> LossHistograms:
    """Histograms of kept and sifted losses over the same bins; non-finite losses left out.

    ``bins`` defaults to the square root of the number of losses, between 10 and 50. The bins
    are logarithmic when every loss is non-negative and the positive ones span two
    decades or more; losses of exactly 0 then count in the first bin.

    Example:
        >>> h = loss_histograms(np.array([0.0, 1.0, 10.0]), np.array([0.01, 0.02]), bins=4)
        >>> h.log, h.kept.tolist(), h.sifted.tolist()
        (True, [1, 0, 1, 1], [2, 0, 0, 0])
    """
    if bins is not None and bins < 1:
        raise ValueError(f"Expected `bins` to be a positive int or None, but got {bins!r}.")
    kept = np.asarray(kept_losses, dtype=np.float64)
    sifted = np.asarray(sifted_losses, dtype=np.float64)
    kept, sifted = kept[np.isfinite(kept)], sifted[np.isfinite(sifted)]
    both = np.concatenate([kept, sifted])
    if bins is None:
        bins = int(np.clip(round(np.sqrt(both.size)), 10, 50))
    if both.size == 0:
        empty = np.zeros(0, dtype=np.int64)
        return LossHistograms(np.zeros(0), empty, empty, log=False)
    lo, hi = float(both.min()), float(both.max())
    positive = both[both > 0]
    log = lo >= 0 and positive.size > 0 and hi / float(positive.min()) >= 100.0
    if log:
        low = float(positive.min())
        edges = np.geomspace(low, hi, bins + 1)
        kept, sifted = np.maximum(kept, low), np.maximum(sifted, low)
    else:
        if hi == lo:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)
    return LossHistograms(
        edges,
        np.histogram(kept, edges)[0],
        np.histogram(sifted, edges)[0],
        log=bool(log),
    )


def smoothed_keep_rate(seen: np.ndarray, kept: np.ndarray, window: int) -> np.ndarray:
    """The kept fraction over a centred window of ``window`` raw batches, at every raw batch.

    Each point is the samples kept over the samples seen in its window (a ratio of sums, so
    small raw batches weigh less); the windows are cut short at both ends.

    Example:
        >>> smoothed_keep_rate(np.array([10, 10, 10, 10]), np.array([0, 10, 10, 0]), 3).tolist()
        [0.5, 0.6666666666666666, 0.6666666666666666, 0.5]
    """
    if window < 1:
        raise ValueError(f"Expected `window` to be a positive int, but got {window!r}.")
    seen = np.asarray(seen, dtype=np.float64)
    kept = np.asarray(kept, dtype=np.float64)
    if seen.size == 0:
        return np.zeros(0)
    ones = np.ones(min(window, seen.size))
    num = np.convolve(kept, ones, mode="same")
    den = np.convolve(seen, ones, mode="same")
    return np.divide(num, den, out=np.full_like(num, np.nan), where=den > 0)


@dataclass(frozen=True)
class ClassKeepRates:
    """What the policy did with each class's scored samples.

    Attributes:
        classes: the classes that had scored samples, in sorted order.
        scored, kept: scored and kept samples per class (passed-through samples not counted).
        epochs: the audit's epochs that scored samples (those that only passed samples through
            during the sift delay are left out).
    """

    classes: np.ndarray
    scored: np.ndarray
    kept: np.ndarray
    epochs: tuple[int, ...]

    @property
    def rates(self) -> np.ndarray:
        """The kept fraction of each class's scored samples."""
        return self.kept / np.maximum(self.scored, 1)


def class_keep_rates(audit: SiftAudit, labels: Any) -> ClassKeepRates:
    """The kept fraction of each class's scored samples over every epoch ``audit`` recorded.

    Args:
        audit: the loader's :class:`~smartsift.SiftAudit`.
        labels: the class of every sample id: ``labels[id]``, e.g. the targets of the dataset
            that :class:`~smartsift.IndexedDataset` wraps (a tensor, an array or a list).

    Raises:
        ValueError: if ``labels`` is not one-dimensional or misses an id the audit holds.

    Example:
        >>> audit = SiftAudit(id_key=0)
        >>> audit.record_scored(0, ([0, 1, 2, 3],), np.zeros(4), np.array([1, 1, 0, 1], bool))
        >>> r = class_keep_rates(audit, ["cat", "dog", "dog", "cat"])
        >>> r.classes.tolist(), r.rates.tolist()
        (['cat', 'dog'], [1.0, 0.5])
    """
    if not isinstance(audit, SiftAudit):
        raise TypeError(f"Expected `audit` to be a smartsift.SiftAudit, but got {audit!r}.")
    table = _as_array(labels)
    records = [audit.epoch(e) for e in audit.epochs]
    records = [r for r in records if r.kept.size or r.sifted.size]  # not the sift delay's
    kept_ids = np.concatenate([np.zeros(0, np.int64), *(r.kept for r in records)])
    sifted_ids = np.concatenate([np.zeros(0, np.int64), *(r.sifted for r in records)])
    ids = np.concatenate([kept_ids, sifted_ids])
    if ids.size and (ids.min() < 0 or ids.max() >= len(table)):
        bad = int(ids.min() if ids.min() < 0 else ids.max())
        raise ValueError(
            f"Expected `labels` to hold the class of every sample id, but the audit holds id "
            f"{bad} and `labels` has {len(table)} entries; pass the targets of the whole "
            "dataset the ids index (e.g. the one IndexedDataset wraps)."
        )
    classes, scored = np.unique(table[ids], return_counts=True)
    kept_classes, kept_counts = np.unique(table[kept_ids], return_counts=True)
    kept = np.zeros(classes.size, dtype=np.int64)
    kept[np.searchsorted(classes, kept_classes)] = kept_counts
    return ClassKeepRates(classes, scored, kept, tuple(r.epoch for r in records))


def _as_array(labels: Any) -> np.ndarray:
    if hasattr(labels, "detach"):  # a torch tensor
        labels = labels.detach().cpu().numpy()
    table = np.asarray(labels)
    if table.ndim != 1:
        raise ValueError(
            "Expected `labels` to be one-dimensional, one class per sample id, but got shape "
            f"{table.shape}."
        )
    return table


# ------------------------------------------------------------------------------ the figure
def report_figure(
    trace: SiftTrace,
    *,
    audit: SiftAudit | None = None,
    labels: Any = None,
    title: str | None = None,
    nominal_keep: float | None = None,
) -> Figure:
    """The report as a matplotlib ``Figure`` (see the module documentation for its panels).

    Args:
        trace: what sifting did, ``loader.trace``.
        audit: the loader's :class:`~smartsift.SiftAudit`; with ``labels``, adds the per-class
            panel.
        labels: the class of every sample id (``labels[id]``); needs ``audit``.
        title: the figure's title; default "What sifting kept".
        nominal_keep: the policy's nominal kept fraction (``policy.expected_keep``), drawn as
            a dashed line.

    Raises:
        TypeError: if ``trace`` or ``audit`` is of the wrong type.
        ValueError: if ``labels`` is given without ``audit``, or ``nominal_keep`` is not in
            [0, 1].
        ImportError: if matplotlib is not installed.
    """
    if not isinstance(trace, SiftTrace):
        raise TypeError(
            f"Expected `trace` to be a smartsift.SiftTrace (loader.trace), but got {trace!r}."
        )
    if audit is not None and not isinstance(audit, SiftAudit):
        raise TypeError(f"Expected `audit` to be a smartsift.SiftAudit or None, got {audit!r}.")
    if labels is not None and audit is None:
        raise ValueError(
            "Expected an `audit` with `labels`: per-class keep rates need the sample ids that "
            "a smartsift.SiftAudit records; build the loader with audit=ss.SiftAudit(id_key=...)"
            " or leave `labels` out."
        )
    if nominal_keep is not None and not 0.0 <= nominal_keep <= 1.0:
        raise ValueError(f"Expected `nominal_keep` to be in [0, 1] or None, got {nominal_keep!r}.")
    try:
        from matplotlib.figure import Figure
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "The sifting report needs matplotlib: pip install 'smartsift[demo]'."
        ) from err

    per_class = (
        class_keep_rates(audit, labels) if audit is not None and labels is not None else None
    )
    ncols = 3 if per_class is not None else 2
    fig = Figure(figsize=(5.4 * ncols, 4.6), dpi=110, layout="constrained")
    axes = fig.subplots(1, ncols)
    _draw_losses(axes[0], trace)
    _draw_keep_rate(axes[1], trace, nominal_keep)
    if per_class is not None:
        _draw_classes(axes[2], per_class, nominal_keep)
    seen, kept = int(trace.seen.sum()), int(trace.kept.sum())
    summary = (
        f"{seen:,} samples scored in {trace.seen.size:,} raw batches; {kept / seen:.1%} kept"
        if seen
        else "nothing scored yet"
    )
    fig.suptitle(f"{title or 'What sifting kept'}\n{summary}", fontsize=12)
    return fig


def plot_report(
    trace: SiftTrace,
    path: str | Path,
    *,
    audit: SiftAudit | None = None,
    labels: Any = None,
    title: str | None = None,
    nominal_keep: float | None = None,
) -> Path:
    """Saves :func:`report_figure` at ``path`` (PNG, or the format its suffix names).

    Returns:
        The path written; missing parent folders are created.

    Example:
        >>> import tempfile
        >>> trace = SiftTrace(steps=np.arange(3), seen=np.full(3, 4), kept=np.full(3, 2),
        ...                   kept_losses=np.ones(6), sifted_losses=np.zeros(6))
        >>> path = plot_report(trace, Path(tempfile.mkdtemp()) / "report.png")
        >>> path.read_bytes()[:4] == b"\\x89PNG"
        True
    """
    fig = report_figure(trace, audit=audit, labels=labels, title=title, nominal_keep=nominal_keep)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path


def _nothing(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="grey")
    ax.set_xticks([])
    ax.set_yticks([])


def _draw_losses(ax: Axes, trace: SiftTrace) -> None:
    ax.set_title("Loss of kept and sifted samples")
    h = loss_histograms(trace.kept_losses, trace.sifted_losses)
    if h.edges.size == 0:
        _nothing(ax, "no scored losses yet")
        return
    for counts, losses, name, color in (
        (h.kept, trace.kept_losses, "kept", KEPT_COLOR),
        (h.sifted, trace.sifted_losses, "sifted", SIFTED_COLOR),
    ):
        finite = np.asarray(losses, dtype=np.float64)
        finite = finite[np.isfinite(finite)]
        label = f"{name}: {finite.size:,} samples"
        if finite.size:
            median = float(np.median(finite))
            label += f", median {median:.3g}"
            ax.axvline(median, color=color, linestyle="--", linewidth=1.2)
        ax.stairs(counts, h.edges, fill=True, alpha=0.35, color=color)
        ax.stairs(counts, h.edges, color=color, linewidth=1.5, label=label)
    if h.log:
        ax.set_xscale("log")
    ax.set_xlabel("per-sample loss" + (" (log scale)" if h.log else ""))
    ax.set_ylabel("samples")
    ax.set_ylim(0, 1.35 * max(int(h.kept.max()), int(h.sifted.max()), 1))  # room for the legend
    batches = _loss_window(trace)
    where = (
        f"latest {batches} of {trace.seen.size} scored raw batches"
        if batches < trace.seen.size
        else f"all {trace.seen.size} scored raw batches"
    )
    ax.legend(title=where, fontsize=8, title_fontsize=8, loc="upper right")
    ax.grid(alpha=0.3)


def _loss_window(trace: SiftTrace) -> int:
    """How many of the latest scored raw batches the trace's losses come from."""
    n = trace.kept_losses.size + trace.sifted_losses.size
    sizes = np.cumsum(trace.seen[::-1])
    i = int(np.searchsorted(sizes, n))
    return min(i + 1, trace.seen.size)


def _draw_keep_rate(ax: Axes, trace: SiftTrace, nominal_keep: float | None) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_title("Keep rate over training")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_xlabel("training step (refined batches yielded)")
    ax.set_ylabel("samples kept")
    if trace.seen.size == 0:
        _nothing(ax, "nothing scored yet")
        return
    steps = np.asarray(trace.steps, dtype=np.float64)
    if steps[0] > 0:
        ax.axvspan(0, steps[0], color="grey", alpha=0.15, linewidth=0, label="sift delay")
    rate = trace.kept / np.maximum(trace.seen, 1)
    window = int(np.clip(trace.seen.size // 20, 1, 100))
    if window == 1:  # few raw batches: each one is a point worth seeing
        ax.plot(steps, rate, marker="o", markersize=4, color=KEPT_COLOR, label="per raw batch")
    else:
        ax.plot(
            steps, rate, linestyle="none", marker=".", markersize=3, alpha=0.35,
            color=KEPT_COLOR, label="per raw batch",
        )  # fmt: skip
        smooth = smoothed_keep_rate(trace.seen, trace.kept, window)
        ax.plot(
            steps,
            smooth,
            color=KEPT_COLOR,
            linewidth=2,
            label=f"smoothed over {window} raw batches",
        )
    if nominal_keep is not None:
        ax.axhline(
            nominal_keep, color="black", linestyle="--", linewidth=1,
            label=f"policy's nominal keep ({nominal_keep:.0%})",
        )  # fmt: skip
    overall = trace.kept.sum() / max(int(trace.seen.sum()), 1)
    ax.set_ylim(0, 1.05)
    ax.set_xlim(left=0)
    ax.legend(title=f"overall {overall:.1%} kept", fontsize=8, title_fontsize=8, loc="best")
    ax.grid(alpha=0.3)


def _draw_classes(ax: Axes, per_class: ClassKeepRates, nominal_keep: float | None) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.set_title("Keep rate per class")
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("scored samples kept")
    if per_class.classes.size == 0:
        _nothing(ax, "no scored samples in the audit")
        return
    rates = per_class.rates
    names = [str(c) for c in per_class.classes]
    many = len(names) > _MANY_CLASSES
    order = np.argsort(rates, kind="stable") if many else np.arange(len(names))
    x = np.arange(len(names))
    bars = ax.bar(x, rates[order], color=KEPT_COLOR, alpha=0.85, label="kept fraction")
    if many:
        ax.set_xticks([])
        ax.set_xlabel(f"{len(names)} classes, sorted by keep rate")
    else:
        ax.set_xticks(x, [names[i] for i in order], rotation=0 if len(names) <= 12 else 90)
        ax.set_xlabel("class")
    if len(names) <= 12:
        ax.bar_label(bars, labels=[f"{r:.0%}" for r in rates[order]], fontsize=8, padding=2)
    overall = per_class.kept.sum() / max(int(per_class.scored.sum()), 1)
    ax.axhline(overall, color="grey", linestyle=":", linewidth=1.2, label=f"all ({overall:.1%})")
    if nominal_keep is not None:
        ax.axhline(nominal_keep, color="black", linestyle="--", linewidth=1, label="nominal")
    ax.set_ylim(0, 1.12)
    epochs = per_class.epochs
    span = f"epoch {epochs[0]}" if len(epochs) == 1 else f"{len(epochs)} epochs"
    ax.legend(
        title=f"{int(per_class.scored.sum()):,} scored samples, {span}",
        fontsize=8, title_fontsize=8, loc="upper right", ncols=3,
    )  # fmt: skip
    ax.grid(alpha=0.3, axis="y")
