"""Tools around a run: the pilot-run profiler (:mod:`~smartsift.tools.profiling`) and the
report plot (:mod:`~smartsift.tools.report`).

Example:
    >>> from smartsift.tools.profiling import ProfileReport
    >>> ProfileReport.__name__
    'ProfileReport'
"""

__all__: list[str] = []
