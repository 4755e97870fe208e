"""smartsift's benchmarks, run from the repository root: ``python -m benchmarks.run``.

Each module measures one thing and returns a :class:`benchmarks.common.Section`;
``python -m benchmarks.run`` renders them into ``docs/benchmarks.md`` and
``python -m benchmarks.<name> [--smoke]`` prints one. See ``benchmarks/run.py``.
"""
