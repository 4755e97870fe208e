"""pytest loads this file from the repository root, which makes the root importable in tests
(as ``python -m`` does from there): the ``benchmarks`` package is not installed."""
