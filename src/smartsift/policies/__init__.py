"""Policies: which samples to keep, each a frozen description that binds to a run's state.

- :mod:`~smartsift.policies.base`: the :class:`Policy` protocol and the state a policy binds.
- :mod:`~smartsift.policies.rules`: the rules (the reference rule, quantile cut-off, top-k,
  uniform) as pure mask functions under small frozen dataclasses.
- :mod:`~smartsift.policies.keeprate`: a stated keep rate (``RelativeProbabilistic(keep=...)``).
- :mod:`~smartsift.policies.guards`: :class:`~smartsift.Guarded`, limits against chasing noise.
- :mod:`~smartsift.policies.auto`: :class:`~smartsift.Auto`, sift only where it pays.
- :mod:`~smartsift.policies.signals`: loss concentration and trend, read by ``Auto`` and the
  profiler.

Example:
    >>> from smartsift.policies import TopK
    >>> TopK(keep=0.3).expected_keep
    0.3
"""

from smartsift.policies.base import Policy, PolicyState
from smartsift.policies.published import InfoBatch, SeTa
from smartsift.policies.rules import (
    QuantileThreshold,
    RelativeProbabilistic,
    TopK,
    Uniform,
    quantile_threshold_mask,
    relative_probabilistic_mask,
    topk_mask,
    uniform_mask,
)

__all__ = [
    "InfoBatch",
    "Policy",
    "PolicyState",
    "QuantileThreshold",
    "RelativeProbabilistic",
    "SeTa",
    "TopK",
    "Uniform",
    "quantile_threshold_mask",
    "relative_probabilistic_mask",
    "topk_mask",
    "uniform_mask",
]
