"""Every benchmark runs in its tiny smoke setting and returns a markdown section.

These keep the benchmark scripts working; they time nothing and assert no speed.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture(scope="module", autouse=True)
def bench_path() -> Iterator[None]:
    sys.path.insert(0, str(BENCH))
    yield
    sys.path.remove(str(BENCH))


def test_common_helpers() -> None:
    common = importlib.import_module("common")
    assert common.markdown_table(["a"], [[1]]).splitlines() == ["| a |", "|---|", "| 1 |"]
    assert common.median_spread([1.0, 5.0, 2.0]) == (2.0, 1.0, 5.0)
    assert common.fmt_ratio([1.0, 2.0, 3.0]) == "2.00x (1.00x–3.00x)"
    assert common.fmt_spread([float("inf")], "{:.1f}") == "never"
    assert "PyTorch" in common.machine()


def test_machinery_smoke() -> None:
    text = importlib.import_module("machinery").run(smoke=True)
    assert "| 10,000 |" in text and "samples/s" in text


def test_efficiency_smoke() -> None:
    text = importlib.import_module("efficiency").run(smoke=True)
    assert "ideal 1/(F/T+k)" in text and "Profiler against measurement" in text
    tables = [t for t in text.split("\n\n") if t.startswith("| case |")]
    assert len(tables) == 2  # efficiency, then the profiler's verdicts checked
    profiler_rows = tables[1].splitlines()[2:]
    assert profiler_rows
    for row in profiler_rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert cells[3] in ("sift", "don't sift")
        assert 0 < float(cells[4]) <= 0.5  # the keep checked: recommended, or 0.25
        assert cells[6].endswith("x") and cells[8] in ("yes", "**no**")


def test_time_to_accuracy_smoke(tmp_path: Path) -> None:
    module = importlib.import_module("time_to_accuracy")
    text = module.run(smoke=True, img_dir=tmp_path)
    for name in ("RelativeProbabilistic", "QuantileThreshold", "TopK", "Uniform"):
        assert name in text
    assert "Short regime" in text and "Long regime" in text
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "tta_lm_long.png",
        "tta_lm_short.png",
        "tta_mnist1d.png",
    ]


def test_gpu_smoke() -> None:
    text = importlib.import_module("gpu").run(smoke=True)
    assert "counters add up | yes" in text


def test_run_py_smoke_only(tmp_path: Path) -> None:
    run = importlib.import_module("run")
    out = tmp_path / "bench.md"
    assert run.main(["--smoke", "--only", "machinery", "--out", str(out)]) == 0
    doc = out.read_text()
    assert "<!-- benchmark:machinery -->" in doc and "Machine:" in doc
    assert "python benchmarks/machinery.py --smoke" in doc
    # A second --only run keeps the sections it does not rerun.
    assert run.main(["--smoke", "--only", "gpu", "--out", str(out)]) == 0
    doc = out.read_text()
    assert "<!-- benchmark:machinery -->" in doc and "<!-- benchmark:gpu -->" in doc
