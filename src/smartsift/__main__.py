"""``python -m smartsift``: the same as the ``smartsift`` command (see :mod:`smartsift.cli`)."""

from smartsift.cli import main

__all__: list[str] = []

if __name__ == "__main__":
    raise SystemExit(main())
