"""Helpers shared by the benchmarks: the machine, markdown tables, medians and spreads.

Every benchmark module exposes ``run(smoke: bool) -> str`` returning a markdown section;
``benchmarks/run.py`` collects them into ``docs/benchmarks.md``.

Example:
    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    >>> median_spread([3.0, 1.0, 2.0])
    (2.0, 1.0, 3.0)
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "IMG_DIR",
    "ROOT",
    "Interleaved",
    "fmt_ratio",
    "fmt_spread",
    "machine",
    "markdown_table",
    "median_spread",
    "time_to_target",
    "timed",
]

ROOT = Path(__file__).resolve().parents[1]
IMG_DIR = ROOT / "docs" / "img"


def machine() -> str:
    """A one-paragraph description of this machine and software, for the report."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    gpu = "no GPU"
    if torch.cuda.is_available():
        gpu = f"GPU: {torch.cuda.get_device_name(0)}"
    return (
        f"{cpu}, {os.cpu_count()} logical CPU core(s), {gpu}; "
        f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}, "
        f"PyTorch {torch.__version__} ({torch.get_num_threads()} intra-op thread(s))"
    )


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Renders a markdown table; cells are converted with ``str``."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def median_spread(values: Sequence[float]) -> tuple[float, float, float]:
    """Returns (median, min, max) of ``values``; NaNs if empty. Infinities are kept."""
    vals = list(values)
    if not vals:
        return (math.nan, math.nan, math.nan)
    return (float(statistics.median(vals)), float(min(vals)), float(max(vals)))


def fmt_spread(values: Sequence[float], fmt: str = "{:.2f}", unit: str = "") -> str:
    """``median (min–max)`` of ``values``, each formatted with ``fmt``; one value alone."""
    med, lo, hi = median_spread(values)

    def f(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "never" if v > 0 else "-inf"
        return fmt.format(v) + unit

    if len(values) <= 1 or lo == hi:
        return f(med)
    return f"{f(med)} ({f(lo)}–{f(hi)})"


def fmt_ratio(values: Sequence[float]) -> str:
    """``median (min–max)`` of ratios, with an ``x``; 0 means the target was never reached."""
    return fmt_spread(values, "{:.2f}", "x")


def time_to_target(
    times: Sequence[float], values: Sequence[float], target: float, higher_is_better: bool = True
) -> float:
    """The first time at which ``values`` reached ``target`` (``math.inf`` if never)."""
    for t, v in zip(times, values, strict=True):
        if (v >= target) if higher_is_better else (v <= target):
            return t
    return math.inf


def timed(fn: Callable[[], Any]) -> float:
    """Seconds one call of ``fn`` takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


class Interleaved:
    """Runs several step-wise jobs in turn, so that machine noise hits them alike.

    Each job is a callable that does one segment of work and returns False when finished.

    Example:
        >>> counts = {"a": 0, "b": 0}
        >>> def job(name, n):
        ...     def step():
        ...         counts[name] += 1
        ...         return counts[name] < n
        ...     return step
        >>> Interleaved([job("a", 2), job("b", 3)]).run()
        >>> counts
        {'a': 2, 'b': 3}
    """

    def __init__(self, jobs: Sequence[Callable[[], bool]]) -> None:
        self.jobs = list(jobs)

    def run(self) -> None:
        active = list(self.jobs)
        while active:
            for job in list(active):
                if not job():
                    active.remove(job)
