"""The ``smartsift`` command: ``smartsift profile``.

``smartsift profile --target module:function`` runs :func:`smartsift.profile` on your model:
the function takes no arguments and returns ``(model, dataloader, loss_fn, optimizer)``.
``module`` may be a dotted name (importable from the working directory, as with ``python -m``)
or a path to a ``.py`` file. ``--num-classes N`` tells it a classifier's number of classes, so
that the report can tell an untrained network (loss near ``log N``) from one that has learnt.
``--epochs N`` tells it how many epochs the run will train: the report then advises which mode
to sift with (loss reuse, the scoring pass, or none) and why, at the kept fraction ``--keep K``
(default 0.3).

The MNIST-1D demo is not part of the package: from a checkout of the repository, ``make demo``
or ``python -m benchmarks.demo`` runs it, and
``smartsift profile --target benchmarks.demo:profile_target`` profiles its model.
``smartsift demo`` only says so.

Example:
    >>> main(["profile", "--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: 0
    >>> import contextlib, io
    >>> err = io.StringIO()
    >>> with contextlib.redirect_stderr(err):
    ...     main(["profile"])
    2
    >>> print(err.getvalue())  # doctest: +ELLIPSIS
    smartsift profile: error: --target MODULE:FUNCTION is required: ...
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line ``argv`` (default ``sys.argv[1:]``); returns the exit status.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        SystemExit: 0
    """
    parser = _parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown and args.command != "demo":  # `smartsift demo ...` only says where it went
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except _UsageError as err:
        print(f"smartsift {args.command}: error: {err}", file=sys.stderr)
        return 2


class _UsageError(Exception):
    """A problem with the command line that deserves a message, not a traceback."""


def _parser() -> argparse.ArgumentParser:
    from smartsift import __version__
    from smartsift.tools.profiling import ADVICE_KEEP

    parser = argparse.ArgumentParser(
        prog="smartsift",
        description="Sift PyTorch training data online: train only on samples worth learning.",
    )
    parser.add_argument("--version", action="version", version=f"smartsift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{profile}")
    # `smartsift demo` left the package: a hidden command that says where it went.
    sub.add_parser("demo", add_help=False).set_defaults(func=_demo_moved)

    prof = sub.add_parser(
        "profile",
        help="predict whether sifting pays on a model",
        description="Runs a short pilot of training steps and scoring passes, prints the cost "
        "of each stage per sample, the predicted speedup and a recommendation.",
    )
    prof.add_argument(
        "--target",
        metavar="MODULE:FUNCTION",
        help="required: a function returning (model, dataloader, loss_fn, optimizer); MODULE "
        "may be a dotted name or a path to a .py file",
    )
    prof.add_argument("--steps", type=int, default=20, help="measured batches (%(default)s)")
    prof.add_argument("--warmup", type=int, default=3, help="unmeasured batches (%(default)s)")
    prof.add_argument("--device", default=None, help="move batches here (e.g. cuda)")
    prof.add_argument(
        "--num-classes",
        type=int,
        default=None,
        metavar="N",
        help="for a classifier trained with cross-entropy, its number of classes (at least 2): "
        "the report then tells an untrained network (loss near log N) from one that has learnt",
    )
    prof.add_argument(
        "--epochs",
        type=int,
        default=None,
        metavar="N",
        help="the epochs the run will train (at least 1): the report then advises which mode to "
        "use (loss reuse, the scoring pass, or none) and why",
    )
    prof.add_argument(
        "--keep",
        type=float,
        default=None,
        metavar="K",
        help=f"the kept fraction that advice assumes, in (0, 1] (default {ADVICE_KEEP:g})",
    )
    prof.add_argument("--json", action="store_true", help="print the figures as JSON")
    prof.set_defaults(func=_profile)
    return parser


def _demo_moved(args: argparse.Namespace) -> int:
    raise _UsageError(
        "the MNIST-1D demo is not part of the smartsift package; from a checkout of the "
        "repository, run `make demo` or `python -m benchmarks.demo` (`--help` lists its "
        "settings)."
    )


def _profile(args: argparse.Namespace) -> int:
    from smartsift.tools.profiling import ADVICE_KEEP, profile

    if not args.target:
        raise _UsageError(
            "--target MODULE:FUNCTION is required: a function of no arguments returning "
            "(model, dataloader, loss_fn, optimizer), e.g. `smartsift profile --target "
            "mypkg.train:build` or `--target train.py:build`. (The demo model: "
            "`--target benchmarks.demo:profile_target` from a checkout of the repository.)"
        )
    if args.steps < 1 or args.warmup < 0:
        raise _UsageError("--steps must be at least 1 and --warmup at least 0.")
    if args.num_classes is not None and args.num_classes < 2:
        raise _UsageError(
            "--num-classes must be an int of at least 2 (the classes a classifier chooses "
            f"among), but got {args.num_classes}; leave it out for other models."
        )
    _check_mode_options(args.epochs, args.keep)
    model, dataloader, loss_fn, optimizer = _call_target(args.target)
    report = profile(
        model,
        dataloader,
        loss_fn,
        optimizer,
        args.steps,
        args.warmup,
        device=args.device,
        num_classes=args.num_classes,
        epochs=args.epochs,
        keep=ADVICE_KEEP if args.keep is None else args.keep,
    )
    if args.json:
        figures = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in report.as_dict().items()
        }
        print(json.dumps({**figures, "recommendation": report.recommendation}, indent=2))
    else:
        print(f"profiling {args.target}")
        print(report)
    return 0


def _check_mode_options(epochs: int | None, keep: float | None) -> None:
    """Raises a usage error for an ``--epochs`` below 1 or a ``--keep`` outside (0, 1].

    Example:
        >>> _check_mode_options(12, 0.3)
        >>> _check_mode_options(None, 0.3)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        smartsift.cli._UsageError: --keep K needs --epochs N: ...
    """
    if epochs is not None and epochs < 1:
        raise _UsageError(
            f"--epochs must be an int of at least 1 (the epochs the run will train), but got "
            f"{epochs}; leave it out to skip the mode advice."
        )
    if keep is not None and epochs is None:
        raise _UsageError(
            "--keep K needs --epochs N: the mode advice it sets is given for a known number of "
            "epochs."
        )
    if keep is not None and not 0 < keep <= 1:
        raise _UsageError(f"--keep must be a fraction in (0, 1], but got {keep}.")


def _call_target(spec: str) -> tuple[Any, Any, Any, Any]:
    module_name, sep, func_name = spec.rpartition(":")
    if not sep or not module_name or not func_name:
        raise _UsageError(f"--target must look like module:function, got {spec!r}.")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise _UsageError(f"--target: no file {module_name!r}.")
        spec_obj = importlib.util.spec_from_file_location(path.stem, path)
        if spec_obj is None or spec_obj.loader is None:
            raise _UsageError(f"--target: cannot import {module_name!r}.")
        module = importlib.util.module_from_spec(spec_obj)
        spec_obj.loader.exec_module(module)
    else:
        if "" not in sys.path:
            sys.path.insert(0, "")  # like `python -m`: modules in the working directory
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            raise _UsageError(f"--target: cannot import module {module_name!r} ({err}).") from err
    func = getattr(module, func_name, None)
    if not callable(func):
        raise _UsageError(f"--target: {module_name!r} has no function {func_name!r}.")
    built = func()
    if not isinstance(built, (tuple, list)) or len(built) != 4:
        raise _UsageError(
            f"--target: {spec}() must return a tuple of 4: (model, dataloader, loss_fn, "
            f"optimizer), but it returned {_describe(built)}."
        )
    return built[0], built[1], built[2], built[3]


def _describe(value: Any) -> str:
    """What a value is, for an error message: its type, and for a tuple or list its items'.

    Example:
        >>> _describe((1, "a", None))
        'a tuple of 3: (int, str, NoneType)'
        >>> _describe({"model": 1})
        'a dict'
    """
    kind = type(value).__name__
    if not isinstance(value, (tuple, list)):
        return f"{'an' if kind[:1].lower() in 'aeiou' else 'a'} {kind}"
    items = ", ".join(type(item).__name__ for item in value)
    return f"a {kind} of {len(value)}: ({items})"


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
