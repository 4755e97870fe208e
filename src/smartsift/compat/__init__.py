"""Other libraries' APIs on smartsift's classes, so that scripts written for them run unchanged.

- :mod:`smartsift.compat.sagemaker`: the class names and signatures of SageMaker smart sifting
  (``SiftingDataloader``, ``RelativeProbabilisticSiftConfig``, ``Loss``, ...). A script written
  for it runs after changing its imports only; see ``docs/compat.md`` for the mapping and every
  difference in behaviour.

Example:
    >>> from smartsift.compat import sagemaker
    >>> sagemaker.SiftingBaseConfig().sift_delay
    1000
"""

from __future__ import annotations

__all__: list[str] = []
