"""The efficiency benchmark's loss-reuse cases (``benchmarks/efficiency.py``), in smoke settings.

They time nothing and assert no speed: only the work each epoch did (how many samples the
training steps saw, against what the sampler decided and the stated keep), the interleaving
of the two timed epochs, and the report's rows and targets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
import torch

pytest.importorskip("mnist1d")

from benchmarks import efficiency

REPEATS = 2


@pytest.fixture(scope="module")
def result() -> Iterator[dict[str, Any]]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield efficiency.measure_reuse(efficiency.REUSE_CASES[0], smoke=True, repeats=REPEATS)
    finally:
        torch.set_num_threads(threads)


def test_reuse_epochs_train_the_kept_fraction(result: dict[str, Any]) -> None:
    stated = efficiency.REUSE_CASES[0].keep
    assert result["stated_keep"] == stated
    n = result["samples"]
    for epoch in range(REPEATS):
        # max_age=None after a first epoch that scored everything: every candidate is decided.
        assert result["candidates"][epoch] == result["decided"][epoch] == n
        # The training steps saw exactly what the sampler kept, and that is about k of the data.
        trained = result["trained"][epoch]
        assert trained == result["sampler_trained"][epoch] == result["kept"][epoch]
        assert 0 < trained < n
        assert result["keep"][epoch] == pytest.approx(trained / n)
        assert abs(trained / n - stated) < 0.1
        assert abs(result["decided_keep"][epoch] - stated) < 0.1
        # Efficiency is the measured speedup against 1/k.
        assert result["efficiency"][epoch] == pytest.approx(
            result["measured"][epoch] * result["keep"][epoch]
        )
        for share in ("decision", "update"):
            assert 0.0 < result[share][epoch] < 1.0
        for ratio in ("step_ratio", "load_ratio"):
            assert math.isfinite(result[ratio][epoch]) and result[ratio][epoch] > 0


def test_report_shows_every_reuse_row_and_both_targets(result: dict[str, Any]) -> None:
    other = {**result, "case": "another case", "stated_keep": 0.5}
    text, targets = efficiency.reuse_report([result, other])
    assert text.startswith("### Loss reuse")
    assert f"{REPEATS} time(s)" in text and "max_age=None" in text
    table = next(t for t in text.split("\n\n") if t.startswith("| reuse case |"))
    rows = table.splitlines()[2:]
    assert [r.split(" | ")[0].strip("| ") for r in rows] == [result["case"], "another case"]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[1] == f"{result['stated_keep']:.2f}" and cells[4].endswith("x")
    efficiency_target, keep_target = targets
    assert "efficiency" in efficiency_target.name and "2 case(s)" in efficiency_target.measured
    # The realised keep over the timed epochs, per case, against its stated keep.
    realised = sum(result["kept"]) / sum(result["decided"])
    assert keep_target.measured == f"{realised:.3f} for 0.30, {realised:.3f} for 0.50"
    assert keep_target.met is False  # the second case's stated keep is far from what it kept
    assert efficiency.reuse_report([result])[1][1].met == (abs(realised - 0.3) <= 0.02)


def test_interleaving_keeps_both_epochs_at_the_same_fraction_done() -> None:
    order: list[str] = []
    long = efficiency._EpochRun(list(range(9)), lambda _batch: order.append("long"))  # type: ignore[arg-type]
    short = efficiency._EpochRun(list(range(3)), lambda _batch: order.append("short"))  # type: ignore[arg-type]
    efficiency._interleave(long, short)
    assert long.done and short.done and (long.batches, short.batches) == (9, 3)
    assert order.count("long") == 9 and order.count("short") == 3
    # One short batch per three long ones, each once the long epoch has caught up with it.
    assert [i for i, step in enumerate(order) if step == "short"] == [1, 5, 9]
