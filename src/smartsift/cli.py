"""The ``smartsift`` command: ``smartsift demo`` and ``smartsift profile``.

``smartsift demo`` trains a 1-D CNN on MNIST-1D twice, plain and sifted, side by side, prints a
comparison table, saves a plot of test accuracy against training time and, beside it, the
sifted run's report (:mod:`smartsift.tools.report`).

``smartsift profile`` runs :func:`smartsift.profile` on the demo model, or, with
``--target module:function``, on your own: the function takes no arguments and returns
``(model, dataloader, loss_fn, optimizer)``. ``module`` may also be a path to a ``.py`` file.
``--num-classes N`` tells it a classifier's number of classes, so that the report can tell an
untrained network (loss near ``log N``) from one that has learnt.

Example:
    >>> main(["profile", "--help"])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    SystemExit: 0
"""

from __future__ import annotations

import argparse
import dataclasses
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
    args = parser.parse_args(argv)
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

    parser = argparse.ArgumentParser(
        prog="smartsift",
        description="Sift PyTorch training data online: train only on samples worth learning.",
    )
    parser.add_argument("--version", action="version", version=f"smartsift {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="{demo,profile}")

    from smartsift.demo import DemoConfig
    from smartsift.harness import SCHEDULES

    d = DemoConfig()
    demo = sub.add_parser(
        "demo",
        help="train a CNN on MNIST-1D plain, sifted and by loss reuse, side by side",
        description="Trains a 1-D CNN on MNIST-1D four times, interleaved: plain; sifted with "
        "the reference rule; by loss reuse at a stated keep; and plain for half the epochs "
        "(the train-less control). Then prints a table and saves a plot of test accuracy "
        "against training time.",
    )
    demo.add_argument(
        "--out",
        default="smartsift-demo.png",
        help="PNG path of the accuracy plot (%(default)s); the sifting report goes beside it, "
        "named NAME-report.png",
    )
    for flag, kind, text in (
        ("--num-samples", int, "MNIST-1D samples, 80%% for training"),
        ("--width", int, "CNN channels"),
        ("--batch-size", int, "sifted run's raw batch size"),
        ("--refined-batch-size", int, "batch size both runs train on"),
        ("--epochs", int, "epochs of each run"),
        ("--lr", float, "AdamW learning rate"),
        ("--beta", float, "RelativeProbabilistic beta: keeps about 1/(1+beta)"),
        ("--reuse-keep", float, "loss reuse's stated keep"),
        ("--history", int, "losses each one is ranked against"),
        ("--sift-delay-epochs", int, "epochs trained unsifted first"),
        ("--seed", int, "initialisation and data order"),
    ):
        default = getattr(d, flag[2:].replace("-", "_"))
        demo.add_argument(flag, type=kind, default=None, help=f"{text} (default {default})")
    demo.add_argument(
        "--schedule",
        choices=[*SCHEDULES, "none"],
        default=None,
        help=f"learning-rate schedule of every run, following the data (default {d.schedule})",
    )
    demo.add_argument(
        "--threads",
        type=int,
        default=1,
        help="CPU threads for PyTorch (%(default)s: steadier timings on a shared machine)",
    )
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    demo.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    demo.set_defaults(func=_demo)

    prof = sub.add_parser(
        "profile",
        help="predict whether sifting pays on a model (default: the demo model)",
        description="Runs a short pilot of training steps and scoring passes, prints the cost "
        "of each stage per sample, the predicted speedup and a recommendation.",
    )
    prof.add_argument(
        "--target",
        metavar="MODULE:FUNCTION",
        help="a function returning (model, dataloader, loss_fn, optimizer); MODULE may be a "
        "dotted name or a path to a .py file",
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
    prof.add_argument("--json", action="store_true", help="print the figures as JSON")
    prof.add_argument("--smoke", action="store_true", help=argparse.SUPPRESS)
    prof.set_defaults(func=_profile)
    return parser


def _demo(args: argparse.Namespace) -> int:
    import torch

    from smartsift.demo import DemoConfig, make_mnist1d, plot_demo, run_demo, summary_table
    from smartsift.harness import TrainingRun

    base = DemoConfig.smoke() if args.smoke else DemoConfig()
    names = [f.name for f in dataclasses.fields(DemoConfig)]
    given = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if given.get("schedule") == "none":
        given["schedule"] = None
    config = dataclasses.replace(base, **given)
    for name in ("num_samples", "width", "batch_size", "refined_batch_size", "epochs", "history"):
        if getattr(config, name) is not None and getattr(config, name) < 1:
            raise _UsageError(f"--{name.replace('_', '-')} must be positive.")
    if config.sift_delay_epochs < 0 or not config.beta > 0 or not config.lr > 0:
        raise _UsageError("--sift-delay-epochs must be >= 0, --beta and --lr positive.")
    if not 0 < config.reuse_keep < 1:
        raise _UsageError(f"--reuse-keep must be in (0, 1), but got {config.reuse_keep}.")
    if args.threads < 1:
        raise _UsageError("--threads must be at least 1.")
    torch.set_num_threads(args.threads)
    print(f"smartsift demo: {config.describe()}", flush=True)
    print(
        "training plain, sifted, loss reuse and the train-less control side by side on "
        f"{args.threads} CPU thread(s); times are wall-clock seconds of training, evaluation "
        "excluded",
        flush=True,
    )
    data = make_mnist1d(config.num_samples)
    bar = _progress_bar(3 * config.epochs + config.control_epochs, disabled=args.no_progress)
    latest: dict[str, float] = {}
    epochs: dict[str, int] = {}

    def on_segment(run: TrainingRun) -> None:
        result = run.result
        latest[result.name] = result.final
        epochs[result.name] = result.samples_seen // run.n_train
        bar.update(sum(epochs.values()) - bar.n)
        bar.set_postfix_str(" | ".join(f"{k} {v:.1%}" for k, v in latest.items()))

    out_path = Path(args.out)
    report = out_path.with_name(f"{out_path.stem}-report.png")
    try:
        results = run_demo(config, data, on_segment, report_path=report)
    finally:
        bar.close()
    print(summary_table(results, config.tolerance))
    out = plot_demo(results, config, args.out)
    print(f"plot: {out}")
    print(f"sifting report (losses kept and sifted, keep rate over training): {report}")
    return 0


def _progress_bar(total: int, disabled: bool) -> Any:
    from tqdm import tqdm

    # disable=None: no bar where stderr is not a terminal (a log file, CI), which a bar floods.
    return tqdm(total=total, unit="epoch", desc="4 runs", disable=True if disabled else None)


def _profile(args: argparse.Namespace) -> int:
    from smartsift.tools.profiling import profile

    if args.steps < 1 or args.warmup < 0:
        raise _UsageError("--steps must be at least 1 and --warmup at least 0.")
    if args.num_classes is not None and args.num_classes < 2:
        raise _UsageError(
            "--num-classes must be an int of at least 2 (the classes a classifier chooses "
            f"among), but got {args.num_classes}; leave it out for other models."
        )
    if args.target:
        built = _call_target(args.target)
        title = args.target
    else:
        built = _demo_target(smoke=args.smoke)
        title = "the demo model (MNIST-1D ConvNet)"
    model, dataloader, loss_fn, optimizer = built
    report = profile(
        model,
        dataloader,
        loss_fn,
        optimizer,
        args.steps,
        args.warmup,
        device=args.device,
        num_classes=args.num_classes,
    )
    if args.json:
        figures = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v)
            for k, v in report.as_dict().items()
        }
        print(json.dumps({**figures, "recommendation": report.recommendation}, indent=2))
    else:
        print(f"profiling {title}")
        print(report)
    return 0


def _demo_target(smoke: bool) -> tuple[Any, Any, Any, Any]:
    import torch
    from torch.utils.data import DataLoader

    from smartsift.demo import ConvNet, DemoConfig, cross_entropy_per_sample, make_mnist1d
    from smartsift.harness import seeded

    config = DemoConfig.smoke() if smoke else DemoConfig()
    train_set, _ = make_mnist1d(config.num_samples)
    model = seeded(lambda: ConvNet(width=config.width), config.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=1e-2)
    order = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True, generator=order)
    return model, loader, cross_entropy_per_sample, optimizer


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
