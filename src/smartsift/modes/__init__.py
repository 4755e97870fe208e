"""The two modes: the scoring pass (:mod:`~smartsift.modes.loader`) and loss reuse
(:mod:`~smartsift.modes.reuse` with its :mod:`~smartsift.modes.table`), and the learning-rate
schedules that follow each (:mod:`~smartsift.modes.schedules`).

Example:
    >>> from smartsift.modes.table import ScoreTable
    >>> ScoreTable(4).size
    4
"""

__all__: list[str] = []
