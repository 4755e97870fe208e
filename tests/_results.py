"""Made-up training results for the benchmarks' report tests: a finished run's end points only.

Example:
    >>> made_up_result("plain", epochs=4, final=0.9, trained=400).final
    0.9
"""

from __future__ import annotations

import math

from benchmarks.harness import RunResult

__all__ = ["made_up_result"]


def made_up_result(
    name: str, epochs: int, final: float, trained: int, *, keep: float = math.nan, scored: int = 0
) -> RunResult:
    """A run named ``name`` of ``epochs`` epochs of 100 samples that ended at ``final`` having
    trained ``trained`` samples and scored ``scored``, with the decided keep ``keep``."""
    return RunResult(
        name,
        values=[final],
        trained=[trained],
        scored=[scored],
        epoch_ends=[0.0] * epochs,
        planned_samples=epochs * 100,
        decided_keep=keep,
    )
