"""The engine both modes run: selection, batching, the DDP protocol, counters and checkpoints.

Nothing here knows a particular policy: the :class:`~smartsift.engine.selector.Selector` drives
any policy through the bound-state protocol of :mod:`smartsift.policies.base`.

Example:
    >>> import numpy as np
    >>> import smartsift as ss
    >>> from smartsift.engine.selector import Selector
    >>> Selector(ss.TopK(keep=0.5), seed=0).decide([np.array([0.2, 0.9])]).kept
    [1]
"""

__all__: list[str] = []
