"""Helpers shared by the benchmarks: report sections, the machine, markdown tables, spreads,
and running seeds in worker processes.

Every benchmark module exposes ``run(smoke: bool) -> Section``: a title, a markdown body and
the targets it checks; ``python -m benchmarks.run`` renders them into ``docs/benchmarks.md``.
The training runs they compare come from :mod:`benchmarks.harness`.

Example:
    >>> print(markdown_table(["a", "b"], [[1, "x"]]))
    | a | b |
    |---|---|
    | 1 | x |
    >>> median_spread([3.0, 1.0, 2.0])
    (2.0, 1.0, 3.0)
    >>> target = Target("speed", "at least 2x", "2.5x", met=True)
    >>> print(Section("Demo", "A table.", (target,)).markdown())
    ## Demo
    <BLANKLINE>
    A table.
    <BLANKLINE>
    Targets:
    <BLANKLINE>
    - speed: at least 2x; measured 2.5x (met).
"""

from __future__ import annotations

import argparse
import importlib
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

__all__ = [
    "IMG_DIR",
    "ROOT",
    "Section",
    "Target",
    "benchmark_main",
    "fmt_per_seed",
    "fmt_points",
    "fmt_ratio",
    "fmt_spread",
    "machine",
    "main_as_module",
    "markdown_table",
    "median_spread",
]

ROOT = Path(__file__).resolve().parents[1]
IMG_DIR = ROOT / "docs" / "img"


@dataclass(frozen=True)
class Target:
    """A goal a benchmark checks: what is measured, the goal, the measurement, met or not."""

    name: str
    goal: str
    measured: str
    met: bool

    def __str__(self) -> str:
        return f"{self.name}: {self.goal}; measured {self.measured} ({self.verdict})."

    @property
    def verdict(self) -> str:
        return "met" if self.met else "not met"


@dataclass(frozen=True)
class Section:
    """One benchmark's report: a title, a markdown body (text, tables, plots), its targets."""

    title: str
    body: str
    targets: tuple[Target, ...] = ()

    def markdown(self) -> str:
        """The section as markdown: the title as a level-2 heading, the body, the targets."""
        parts = [f"## {self.title}", self.body.strip()]
        if self.targets:
            parts.append("Targets:\n\n" + "\n".join(f"- {t}" for t in self.targets))
        return "\n\n".join(parts)


def run_jobs(
    fn: Callable[[T], R],
    items: Sequence[T],
    jobs: int,
    done: Callable[[R], str] | None = None,
) -> list[R]:
    """``fn`` over ``items``, results in order: here (``jobs <= 1``) or in ``jobs`` spawned
    worker processes (``fn`` must then be picklable: a module-level function or a
    ``functools.partial`` of one). With workers, ``done(result)`` is printed to stderr as each
    result comes back, so that a long benchmark shows its progress.

    Example:
        >>> run_jobs(abs, [-1, 2, -3], jobs=1)
        [1, 2, 3]
    """
    if jobs <= 1:
        return [fn(item) for item in items]
    out = []
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        for result in pool.map(fn, items):
            if done is not None:
                print(done(result), file=sys.stderr, flush=True)
            out.append(result)
    return out


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


def fmt_points(value: float, signed: bool = True) -> str:
    """An accuracy difference (a fraction) in points, signed unless told otherwise.

    Example:
        >>> fmt_points(0.0057), fmt_points(0.0028, signed=False)
        ('+0.57 points', '0.28 points')
    """
    return f"{100 * value + 0.0:{'+' if signed else ''}.2f} points"


def fmt_per_seed(values: Sequence[float]) -> str:
    """Per-seed accuracy differences (fractions) in signed points, or ``n/a`` without any.

    Example:
        >>> fmt_per_seed([0.0088, -0.0002]), fmt_per_seed([])
        ('+0.88, -0.02', 'n/a')
    """
    return ", ".join(f"{100 * v + 0.0:+.2f}" for v in values) or "n/a"


def fmt_ratio(values: Sequence[float]) -> str:
    """``median (min–max)`` of ratios, with an ``x``; 0 means the target was never reached."""
    return fmt_spread(values, "{:.2f}", "x")


def main_as_module(name: str) -> None:
    """Runs the ``main()`` of benchmark module ``name`` through its importable module.

    ``python -m benchmarks.X`` runs the file as ``__main__``: measurements it pickles into a
    results cache would name their classes ``__main__.Y``, which ``python -m benchmarks.run``
    cannot load later. Each benchmark's ``if __name__ == "__main__":`` calls this instead of
    its own ``main()``.
    """
    importlib.import_module(name).main()


def benchmark_main(
    run: Callable[..., Section],
    doc: str | None,
    argv: list[str] | None,
    smoke_figures: str | None = None,
) -> None:
    """A benchmark's command line: ``--smoke`` (a tiny configuration) and ``--jobs N`` (worker
    processes); prints the section ``run`` returns.

    Args:
        run: the benchmark's ``run(smoke, [img_dir,] jobs=...)``.
        doc: the module's docstring (its first line describes the command).
        argv: the arguments (None: the process's).
        smoke_figures: for a benchmark that draws figures, the prefix of a fresh temporary
            folder a smoke run writes them to, so that it never overwrites docs/img.
    """
    parser = argparse.ArgumentParser(description=(doc or "").splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny, fast configuration")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes")
    args = parser.parse_args(argv)
    if smoke_figures is None:
        print(run(args.smoke, jobs=args.jobs).markdown())
        return
    img_dir = Path(tempfile.mkdtemp(prefix=f"{smoke_figures}-smoke-")) if args.smoke else None
    print(run(args.smoke, img_dir=img_dir, jobs=args.jobs).markdown())
