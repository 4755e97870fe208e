"""Cheap statistics of per-sample losses: how concentrated they are, and how fast they fall.

Both tell whether sifting can pay on a model *now*: sifting needs a few samples to carry most
of the loss (a high :func:`loss_concentration`), and a model whose loss still falls fast from
every batch (:func:`relative_trend`) is still learning from the samples sifting would drop.
The profiler (:mod:`smartsift.tools.profiling`) and :class:`~smartsift.Auto` read them.

Example:
    >>> import numpy as np
    >>> loss_concentration(np.array([0.0, 0.0, 1.0, 3.0]))
    1.0
    >>> round(relative_trend(np.array([2.0, 1.8, 1.6, 1.4])), 3)
    -0.3
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["EVEN_LOSSES", "loss_concentration", "relative_trend", "trend_t"]

EVEN_LOSSES = 0.7
"""A loss concentration below this: losses too even for sifting to pay."""


def loss_concentration(losses: np.ndarray) -> float:
    """The share of the total loss carried by the higher-loss half of ``losses``.

    Non-finite losses are ignored; NaN when there are fewer than two or their sum is not
    positive.

    Example:
        >>> loss_concentration(np.array([1.0, 1.0, 1.0, 1.0]))
        0.5
        >>> loss_concentration(np.array([0.0, 0.0, 1.0, 3.0]))
        1.0
    """
    x = np.sort(np.asarray(losses, dtype=np.float64)[np.isfinite(losses)])
    total = float(x.sum())
    if x.size < 2 or not total > 0:
        return math.nan
    return (
        float(x[x.size // 2 :].sum() / total)
        if x.size % 2 == 0
        else float((x[x.size // 2 + 1 :].sum() + 0.5 * x[x.size // 2]) / total)
    )


def _fit(values: np.ndarray) -> tuple[float, float, float]:
    """Least-squares slope of ``values`` against their index, its standard error, the mean."""
    y = np.asarray(values, dtype=np.float64)
    n = y.size
    x = np.arange(n, dtype=np.float64) - (n - 1) / 2.0
    sxx = float((x * x).sum())
    mean = float(y.mean())
    slope = float((x * (y - mean)).sum() / sxx)
    if n < 3:
        return slope, math.inf, mean
    resid = y - mean - slope * x
    se = math.sqrt(float((resid * resid).sum()) / (n - 2) / sxx)
    return slope, se, mean


def relative_trend(values: np.ndarray) -> float:
    """How much ``values`` changed from first to last, relative to where they started, both
    read off a straight-line fit: -0.3 means they fell by 30 % (NaN if fewer than two finite
    values, or a fitted start that is not positive).

    Example:
        >>> relative_trend(np.array([1.0, 1.0, 1.0]))
        0.0
    """
    y = np.asarray(values, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size < 2:
        return math.nan
    slope, _, mean = _fit(y)
    change = slope * (y.size - 1)
    start = mean - change / 2.0
    return change / start if start > 0 else math.nan


def trend_t(values: np.ndarray) -> float:
    """The t statistic of the straight-line fit's slope (how sure the trend is); NaN if fewer
    than three finite values, infinite for an exact line.

    Example:
        >>> trend_t(np.array([3.0, 2.0, 1.0]))
        -inf
    """
    y = np.asarray(values, dtype=np.float64)
    y = y[np.isfinite(y)]
    if y.size < 3:
        return math.nan
    slope, se, _ = _fit(y)
    if se == 0:
        return math.copysign(math.inf, slope) if slope else 0.0
    return slope / se
