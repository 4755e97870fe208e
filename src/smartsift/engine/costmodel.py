"""The cost model of the scoring pass: what sifting saves per epoch, and when it is worth it.

An epoch of plain training costs ``data + step`` per sample; a sifted one ``data + scoring +
keep * step`` (every sample is loaded and scored, the kept share trained). Their ratio is the
best per-epoch speedup sifting can give; the profiler predicts it from a pilot run and ``Auto``
from the timings it measures as it trains, both with this function and this threshold.

Example:
    >>> predicted_speedup(step=1.0, keep=0.5, scoring=0.25)
    1.3333333333333333
    >>> predicted_speedup(step=1.0, keep=0.9, scoring=0.3) < MIN_SPEEDUP
    True
"""

from __future__ import annotations

import math

__all__ = ["MIN_SPEEDUP", "predicted_speedup"]

MIN_SPEEDUP = 1.1
"""The predicted per-epoch speedup below which sifting is not worth its risk: the profiler then
advises against it, and ``Auto`` trains plain."""


def predicted_speedup(step: float, keep: float, scoring: float, data: float = 0.0) -> float:
    """``(data + step) / (data + scoring + keep * step)``: plain over sifted cost per sample.

    Args:
        step: one training step per sample (forward, backward, optimizer), in any unit.
        keep: the kept fraction.
        scoring: the scoring pass and the sifting machinery per sample, in the same unit.
        data: loading per sample, in the same unit.

    Returns:
        The predicted speedup (below 1: sifting is slower); inf when sifting costs nothing.
    """
    sifted = data + scoring + keep * step
    return (data + step) / sifted if sifted > 0 else math.inf
