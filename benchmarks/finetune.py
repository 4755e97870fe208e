"""Fine-tuning: a pretrained model on shifted variants of its data, every mode of sifting.

A model that already knows most of its data is where a fresh scoring pass should pay most:
its losses say which samples it has learnt from the first step, unlike a model trained from
scratch. This benchmark pretrains the demo's ConvNet on MNIST-1D as the ``mnist1d`` package
generates it by default (:data:`PRETRAIN`), then fine-tunes it on each of two related
variants (:data:`SHIFTS`): a strong shift (:data:`SHIFTED`: more shear, translation, scale and
noise, and jittered digit templates, from other seeds), where the pretrained model starts
near half right, and a mild one (:data:`MILD`: a little more shear, translation and noise,
templates jittered little, another seed), where it already gets most samples right. The
metric is the test accuracy on the variant fine-tuned on.

Per seed, the model is pretrained once (cached in the worker process), and every arm of both
tasks starts from those weights, reads the fine-tuning set in the same first order, takes
AdamW steps of one size and follows a cosine schedule that ends where its training ends (the
harness's :class:`~benchmarks.harness.TrainingRun` does this for every mode). The arms
(:func:`arms`), the same on both tasks:

- ``plain`` at the full budget of epochs, and the train-less control: plain at fewer epochs,
  each with its own complete schedule; their end points are the frontier;
- loss reuse (:class:`smartsift.ReuseSampler`, ``Reuse()``) with
  ``RelativeProbabilistic(keep=k)`` and, as its random control, ``Uniform(keep=k)``, at each
  keep of :data:`KEEPS`; ``InfoBatch(prune=0.5)`` with the paper's sampler settings;
- the scoring mode (:class:`smartsift.SiftingDataLoader`, raw batches of twice the step size,
  no sift delay): ``TopK(0.5)``, ``RelativeProbabilistic(beta=1)`` and ``Uniform(keep=0.5)``
  as their random control;
- the hybrid mode (``Reuse(hybrid=True)``): loss reuse whose undecided samples (never scored,
  or stale) go through the scoring pass and are sifted by the same policy,
  ``RelativeProbabilistic(keep=k)`` at each keep, with no sift delay (the pass sifts the first
  epoch) and with a sift delay of one epoch (the first epoch trained whole, as loss reuse
  trains it; after it, the pass scores the stale samples);
- after those, plain at the matched work of each sifting arm: the whole number of epochs
  nearest its work units, where no control run has that length already.

Work units: ``(samples trained + samples scored * F/T) / training-set size`` (a plain epoch is
1), with ``F`` (a scoring pass per sample, at the batch size the mode scores) and ``T`` (a
training step per sample, at the step size) measured by :func:`smartsift.profile` (the model
and the samples' shape are the same on both tasks: one profile serves both).

Run it from the repository root (``python -m benchmarks.finetune [--smoke] [--jobs N]``, or
``python -m benchmarks.run --only finetune``) or call :func:`run`. With the environment variable
``SMARTSIFT_FINETUNE_RESULTS`` naming a file, the measurements are saved there, and a later run
with the file present renders the report from them without training.

Example:
    >>> names = [a.name for a in arms(SMOKE, n_train=400)]
    >>> names[:3]
    ['plain', 'plain, 1/3 epochs (0.33x)', 'plain, 2/3 epochs (0.67x)']
    >>> [(a.name, twin) for a, twin in pairs(arms(SMOKE, n_train=400))][0]
    ('reuse RelativeProbabilistic(keep=0.3)', 'reuse Uniform(keep=0.3)')
    >>> [s.key for s in SHIFTS]
    ['strong', 'mild']
"""

from __future__ import annotations

import dataclasses
import functools
import math
import os
import pickle
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

import smartsift as ss
from benchmarks.common import (
    IMG_DIR,
    Section,
    Target,
    benchmark_main,
    fmt_per_seed,
    fmt_points,
    fmt_spread,
    main_as_module,
    markdown_table,
    run_jobs,
)
from benchmarks.demo import ConvNet, MnistData, evaluate, mnist1d_task
from benchmarks.frontier import control_name, frontier_at, work_curve
from benchmarks.harness import (
    Reuse,
    RunResult,
    Task,
    TrainingRun,
    run_at_step_size,
    runs_figure,
    seeded,
    train_side_by_side,
)
from benchmarks.reuse_study import MATCHED, matched_control, on_frontier, paired_differences

__all__ = [
    "KEEPS",
    "MILD",
    "MODES",
    "PRETRAIN",
    "SEEDS",
    "SHIFTED",
    "SHIFTS",
    "Arm",
    "Costs",
    "Paid",
    "Setting",
    "Shift",
    "Summary",
    "Variant",
    "arms",
    "closing",
    "hybrid_name",
    "jittered_templates",
    "make_variant",
    "matched_plan",
    "measure_seed",
    "pairs",
    "run",
    "seed_runs",
    "shift",
    "summarise",
    "target_sentences",
    "targets",
    "task_runs",
    "verdicts",
    "work_units",
]

SEEDS = (0, 1, 2)
KEEPS = (0.3, 0.5)
MODES = ("plain", "reuse", "scoring", "hybrid")
PLAIN = "plain"
PRUNE = 0.5  # InfoBatch's prune
SCORING_KEEP = 0.5  # TopK's and the scoring mode's Uniform control's keep
HYBRID_DELAYS = (0, 1)  # the hybrid arms' sift delays, in epochs
RESULTS_ENV = "SMARTSIFT_FINETUNE_RESULTS"
RESULTS_VERSION = 2  # the saved measurements' layout: both tasks, by key


# ----------------------------------------------------------------------------- the data
@dataclass(frozen=True)
class Variant:
    """One MNIST-1D variant: ``mnist1d``'s default generation arguments with ``changes``
    applied, generated from ``seed``, from the package's digit templates jittered by
    :func:`jittered_templates` (``template_jitter`` 0: the templates as they are).

    Example:
        >>> Variant(seed=42).args(1000).shear_scale
        0.75
        >>> Variant(seed=1, changes=(("shear_scale", 1.5),)).args(1000).shear_scale
        1.5
    """

    seed: int
    changes: tuple[tuple[str, float], ...] = ()
    template_jitter: float = 0.0
    template_seed: int = 0

    def args(self, num_samples: int) -> Any:
        """``mnist1d``'s arguments for ``num_samples`` samples of this variant."""
        from mnist1d.data import get_dataset_args

        args = get_dataset_args()
        for name, value in self.changes:
            if name not in args.__dict__ or name in ("num_samples", "seed"):
                raise ValueError(
                    f"Expected each change to name one of mnist1d's generation arguments "
                    f"(other than num_samples and seed), but got {name!r}; the arguments are "
                    f"{sorted(k for k in args.__dict__ if k not in ('num_samples', 'seed'))}."
                )
            setattr(args, name, value)
        args.num_samples = num_samples
        args.seed = self.seed
        return args

    def describe(self) -> str:
        """The variant in words: its changes to the defaults, its templates and seed."""
        from mnist1d.data import get_dataset_args

        defaults = get_dataset_args()
        changed = ", ".join(f"`{k}` {getattr(defaults, k)} → {v}" for k, v in self.changes)
        templates = (
            f"the digit templates jittered by {self.template_jitter:g} of their spread "
            f"(seed {self.template_seed})"
            if self.template_jitter
            else "the package's digit templates"
        )
        return (
            f"{changed or 'the default generation arguments'}, {templates}, generation seed "
            f"{self.seed}"
        )


PRETRAIN = Variant(seed=42)
"""The pretraining variant: ``mnist1d``'s default arguments, templates and seed."""

SHIFTED = Variant(
    seed=7,
    changes=(
        ("shear_scale", 1.25),
        ("max_translation", 60),
        ("scale_coeff", 0.6),
        ("corr_noise_scale", 0.35),
        ("iid_noise_scale", 0.04),
    ),
    template_jitter=0.4,
    template_seed=1,
)
"""The strong shift: more shear, translation, scale and noise, other templates and seed."""

MILD = Variant(
    seed=11,
    changes=(
        ("shear_scale", 0.9),
        ("max_translation", 52),
        ("corr_noise_scale", 0.3),
        ("iid_noise_scale", 0.03),
    ),
    template_jitter=0.1,
    template_seed=2,
)
"""The mild shift: a little more shear, translation and noise, templates jittered little,
another seed (the pretrained model gets most of it right)."""


@dataclass(frozen=True)
class Shift:
    """One fine-tuning task: a key (its figure is ``finetune_<key>.png``), its name in the
    report and the variant fine-tuned on.

    Example:
        >>> shift("mild").image
        'finetune_mild.png'
    """

    key: str
    label: str
    variant: Variant

    @property
    def image(self) -> str:
        """The file name of the task's figure."""
        return f"finetune_{self.key}.png"


SHIFTS = (Shift("strong", "the strong shift", SHIFTED), Shift("mild", "the mild shift", MILD))
"""The tasks, in report order."""


def shift(key: str) -> Shift:
    """The task of :data:`SHIFTS` with ``key``.

    Example:
        >>> shift("strong").variant == SHIFTED
        True
    """
    for s in SHIFTS:
        if s.key == key:
            return s
    raise ValueError(f"Expected a task key among {[s.key for s in SHIFTS]}, but got {key!r}.")


def jittered_templates(jitter: float, seed: int) -> dict[str, np.ndarray]:
    """``mnist1d``'s digit templates, each point moved by Gaussian noise of ``jitter`` times
    the template's standard deviation (seeded), then shifted to start at 0 again, as the
    package's own templates do.

    Example:
        >>> t = jittered_templates(0.4, seed=1)
        >>> t["x"].shape, bool((t["x"][:, 0] == 0).all())
        ((10, 12), True)
        >>> bool((jittered_templates(0.0, seed=1)["x"] == jittered_templates(0.0, 2)["x"]).all())
        True
    """
    from mnist1d.data import get_templates

    if not (math.isfinite(jitter) and jitter >= 0):
        raise ValueError(f"Expected `jitter` to be a finite number >= 0, but got {jitter!r}.")
    templates = get_templates()
    x = templates["x"]
    noise = np.random.default_rng(seed).standard_normal(x.shape)
    x = x + jitter * x.std(axis=1, keepdims=True) * noise
    return {**templates, "x": x - x[:, :1]}


def make_variant(variant: Variant, num_samples: int) -> MnistData:
    """Generates ``num_samples`` samples of ``variant``: a training set and ``(x_test, y_test)``
    (``mnist1d``'s 80/20 split). The global ``random`` and NumPy states are left as they were.

    Example:
        >>> train, (x_test, y_test) = make_variant(SHIFTED, 100)
        >>> len(train), tuple(x_test.shape)
        (80, (20, 40))
    """
    from mnist1d.data import make_dataset

    templates = jittered_templates(variant.template_jitter, variant.template_seed)
    py_state, np_state = random.getstate(), np.random.get_state()
    try:  # mnist1d seeds the global generators
        data = make_dataset(variant.args(num_samples), template=templates)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)

    def tensor(key: str, dtype: torch.dtype) -> torch.Tensor:
        return torch.as_tensor(data[key], dtype=dtype)

    train = TensorDataset(tensor("x", torch.float32), tensor("y", torch.int64))
    return train, (tensor("x_test", torch.float32), tensor("y_test", torch.int64))


# ----------------------------------------------------------------------------- the setting
@dataclass(frozen=True)
class Setting:
    """How the model is pretrained and every arm fine-tunes.

    Attributes:
        pre_samples: samples of :data:`PRETRAIN` generated (80 % for training).
        pre_epochs: pretraining epochs (AdamW, cosine schedule).
        pre_lr: the pretraining learning rate.
        samples: samples of each fine-tuning variant generated (80 % for fine-tuning, 20 %
            the test).
        width: the ConvNet's width.
        epochs: the full fine-tuning budget.
        control_epochs: the train-less control's budgets.
        batch_size: every optimizer step (the scoring mode scores raw batches of twice it).
        lr: the fine-tuning learning rate.
        history: the loss history of the history-based policies.
        evals_per_epoch: evaluations per epoch.
    """

    pre_samples: int
    pre_epochs: int
    pre_lr: float
    samples: int
    width: int
    epochs: int
    control_epochs: tuple[int, ...]
    batch_size: int
    lr: float
    history: int
    evals_per_epoch: int

    def __post_init__(self) -> None:
        if not all(0 < e < self.epochs for e in self.control_epochs):
            raise ValueError(
                f"Expected every control budget in [1, epochs={self.epochs}), but got "
                f"{self.control_epochs!r}."
            )

    @property
    def raw_batch_size(self) -> int:
        """The scoring mode's raw batches: twice the step size."""
        return 2 * self.batch_size


FULL = Setting(20_000, 8, 5e-3, 15_000, 64, 6, (2, 3, 4), 64, 2e-3, 1000, 2)
SMOKE = Setting(600, 1, 5e-3, 300, 8, 3, (1, 2), 32, 2e-3, 100, 1)


# ----------------------------------------------------------------------------- the arms
@dataclass(frozen=True)
class Arm:
    """One fine-tuning run of a seed.

    Attributes:
        name: its name in the report.
        mode: one of :data:`MODES`.
        policy: the policy (None for plain).
        reuse: the loss-reuse settings (the reuse and hybrid modes).
        epochs: a plain run's budget (None: the full one).
        twin: the name of the arm it is paired with, seed by seed: a policy's random control
            (``Uniform`` at the same keep, in the same mode), or, for a hybrid arm, loss reuse
            at the same keep (what the scoring pass adds).
        sift_delay_epochs: the epochs its loader passes through unsifted first (the scoring
            and hybrid modes; the hybrid mode's first epoch is then trained whole, as loss
            reuse trains it).
    """

    name: str
    mode: str
    policy: ss.Policy | None = None
    reuse: Reuse | None = None
    epochs: int | None = None
    twin: str | None = None
    sift_delay_epochs: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"Expected `mode` to be one of {MODES}, but got {self.mode!r}.")
        if (self.policy is None) != (self.mode == "plain"):
            raise ValueError(
                f"Expected a policy for every mode but plain, and none for plain; arm "
                f"{self.name!r} has mode {self.mode!r} and policy {self.policy!r}."
            )
        if (self.reuse is not None) != (self.mode in ("reuse", "hybrid")):
            raise ValueError(
                f"Expected `reuse` settings for the reuse and hybrid modes only; arm "
                f"{self.name!r} has mode {self.mode!r} and reuse {self.reuse!r}."
            )
        if self.sift_delay_epochs < 0 or (
            self.sift_delay_epochs and self.mode not in ("scoring", "hybrid")
        ):
            raise ValueError(
                f"Expected `sift_delay_epochs` >= 0, and 0 but for the scoring and hybrid "
                f"modes; arm {self.name!r} has mode {self.mode!r} and sift_delay_epochs "
                f"{self.sift_delay_epochs!r}."
            )

    @property
    def uniform(self) -> bool:
        """Whether this arm keeps a random subset (a random control)."""
        return isinstance(self.policy, ss.Uniform)

    def scored_batch(self, setting: Setting) -> int | None:
        """The batch size its scoring pass scores at (None: no scoring pass).

        The scoring mode scores its raw batches; the hybrid mode the loss-reuse loader's
        batches of the step size.
        """
        if self.mode == "scoring":
            return setting.raw_batch_size
        if self.mode == "hybrid":
            return setting.batch_size
        return None


def arms(setting: Setting, n_train: int) -> list[Arm]:
    """Every arm of a seed, in the order they train (the plain runs at the matched work,
    which depend on the others' work, come after: see :func:`matched_plan`)."""
    full = setting.epochs
    rp = functools.partial(ss.RelativeProbabilistic, history=setting.history)
    out = [Arm(PLAIN, "plain")]
    out += [Arm(control_name(e, full), "plain", epochs=e) for e in setting.control_epochs]
    for k in KEEPS:
        uniform = f"reuse Uniform(keep={k:g})"
        out.append(
            Arm(f"reuse RelativeProbabilistic(keep={k:g})", "reuse", rp(keep=k), Reuse(),
                twin=uniform)
        )  # fmt: skip
        out.append(Arm(uniform, "reuse", ss.Uniform(keep=k), Reuse()))
    kwargs = ss.InfoBatch.reuse_kwargs(epochs=full)
    del kwargs["epochs"]  # the harness passes the run's epochs
    out.append(
        Arm(f"reuse InfoBatch(prune={PRUNE:g})", "reuse",
            ss.InfoBatch(prune=PRUNE, history=n_train), Reuse(**kwargs))
    )  # fmt: skip
    scoring_uniform = f"scoring Uniform(keep={SCORING_KEEP:g})"
    out += [
        Arm(f"scoring TopK({SCORING_KEEP:g})", "scoring", ss.TopK(SCORING_KEEP),
            twin=scoring_uniform),
        Arm("scoring RelativeProbabilistic(beta=1)", "scoring", rp(beta=1.0),
            twin=scoring_uniform),
        Arm(scoring_uniform, "scoring", ss.Uniform(keep=SCORING_KEEP)),
    ]  # fmt: skip
    out += [
        Arm(hybrid_name(k, delay), "hybrid", rp(keep=k), Reuse(hybrid=True),
            twin=f"reuse RelativeProbabilistic(keep={k:g})", sift_delay_epochs=delay)
        for delay in HYBRID_DELAYS
        for k in KEEPS
    ]  # fmt: skip
    return out


def hybrid_name(keep: float, delay: int) -> str:
    """A hybrid arm's name: its sift delay (if any) in epochs, then its policy.

    Example:
        >>> hybrid_name(0.3, 0)
        'hybrid RelativeProbabilistic(keep=0.3)'
        >>> hybrid_name(0.5, 1)
        'hybrid after 1 epoch RelativeProbabilistic(keep=0.5)'
    """
    after = f" after {_epochs(delay)}" if delay else ""
    return f"hybrid{after} RelativeProbabilistic(keep={keep:g})"


def pairs(arm_list: Sequence[Arm]) -> list[tuple[Arm, str]]:
    """Each arm that has a twin, with the twin's name (which must be an arm of the list).

    Example:
        >>> [twin for _, twin in pairs(arms(SMOKE, 400))][:2]
        ['reuse Uniform(keep=0.3)', 'reuse Uniform(keep=0.5)']
    """
    names = {a.name for a in arm_list}
    out = []
    for arm in arm_list:
        if arm.twin is None:
            continue
        if arm.twin not in names:
            raise ValueError(
                f"Expected the twin of {arm.name!r}, {arm.twin!r}, among the arms, but it is "
                "not there; add it or drop the pairing."
            )
        out.append((arm, arm.twin))
    return out


# ----------------------------------------------------------------------------- costs
@dataclass(frozen=True)
class Costs:
    """Seconds per sample: a training step ``T`` at the step size, and a scoring pass ``F``
    at each batch size a mode scores at.

    Example:
        >>> Costs(100e-6, {64: 20e-6}).f_over_t(64)
        0.2
    """

    step_s: float
    scoring_s: Mapping[int, float]

    def f_over_t(self, batch_size: int | None) -> float:
        """``F/T`` at ``batch_size`` (0 for None: no scoring pass)."""
        if batch_size is None:
            return 0.0
        return self.scoring_s[batch_size] / self.step_s


def work_units(trained: int, scored: int, n_train: int, f_over_t: float) -> float:
    """``(trained + scored * F/T) / n_train``: plain epochs' worth of training steps.

    Example:
        >>> work_units(600, 1200, 100, f_over_t=0.25)
        9.0
    """
    if n_train < 1:
        raise ValueError(f"Expected `n_train` to be a positive int, but got {n_train!r}.")
    if not (math.isfinite(f_over_t) and f_over_t >= 0):
        raise ValueError(f"Expected `f_over_t` finite and >= 0, but got {f_over_t!r}.")
    return round((trained + scored * f_over_t) / n_train, 12)


def _loader(data: TensorDataset, batch_size: int) -> DataLoader[Any]:
    return DataLoader(
        data, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0)
    )


def measure_costs(setting: Setting, data: TensorDataset, smoke: bool) -> Costs:
    """``T`` at the step size and ``F`` at each scored batch size, medians of 3 profiles
    (1 in smoke mode) of :func:`smartsift.profile`, one thread, a fresh model."""
    task = mnist1d_task((data, (data.tensors[0][:1], data.tensors[1][:1])), setting.width)
    steps, warmup, repeats = (3, 1, 1) if smoke else (25, 5, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = seeded(task.build_model, 0)
        optimizer = torch.optim.AdamW(model.parameters(), lr=setting.lr)

        def median(batch_size: int, key: str) -> float:
            reports = [
                ss.profile(
                    model,
                    _loader(data, batch_size),
                    task.loss_fn,
                    optimizer,
                    steps=steps,
                    warmup=warmup,
                    train_step=task.step_loss(),
                )
                for _ in range(repeats)
            ]
            return float(statistics.median(getattr(r, key) for r in reports))

        sizes = sorted({setting.batch_size, setting.raw_batch_size})
        return Costs(
            median(setting.batch_size, "step_s"), {b: median(b, "scoring_s") for b in sizes}
        )
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- running
@functools.lru_cache(maxsize=2)
def _pretraining_data(smoke: bool) -> MnistData:
    """The pretraining data of a setting (generated once per process)."""
    return make_variant(PRETRAIN, (SMOKE if smoke else FULL).pre_samples)


@functools.lru_cache(maxsize=4)
def _data(key: str, smoke: bool) -> MnistData:
    """The fine-tuning data of a task and setting (generated once per process)."""
    return make_variant(shift(key).variant, (SMOKE if smoke else FULL).samples)


@dataclass(frozen=True)
class Pretrained:
    """A seed's pretrained weights and their accuracy on the pretraining variant's test set."""

    state: dict[str, torch.Tensor]
    accuracy: float
    cpu_seconds: float

    def accuracy_on(self, data: MnistData, width: int) -> float:
        """The pretrained model's accuracy on ``data``'s test set, before any fine-tuning."""
        return evaluate(_from_state(width, self.state), *data[1])


@functools.lru_cache(maxsize=4)
def pretrain(seed: int, smoke: bool) -> Pretrained:
    """Pretrains the ConvNet on :data:`PRETRAIN` from ``seed`` (once per process and seed)."""
    setting = SMOKE if smoke else FULL
    pre = _pretraining_data(smoke)
    run = TrainingRun(
        "pretrain", mnist1d_task(pre, setting.width), epochs=setting.pre_epochs,
        batch_size=setting.batch_size, lr=setting.pre_lr, seed=seed, evals_per_epoch=1,
        schedule="cosine", clock=time.process_time,
    )  # fmt: skip
    result = train_side_by_side([run])[0]
    state = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
    return Pretrained(state, result.final, result.train_seconds)


def _from_state(width: int, state: Mapping[str, torch.Tensor]) -> torch.nn.Module:
    model = ConvNet(width)
    model.load_state_dict(state)
    return model


def finetune_task(setting: Setting, data: MnistData, pretrained: Pretrained) -> Task:
    """The fine-tuning task: a variant's data, every model built from the pretrained weights."""
    task = mnist1d_task(data, setting.width)
    return dataclasses.replace(
        task, build_model=functools.partial(_from_state, setting.width, pretrained.state)
    )


def _training_run(arm: Arm, task: Task, setting: Setting, seed: int) -> TrainingRun:
    return run_at_step_size(
        arm.name,
        task,
        epochs=arm.epochs or setting.epochs,
        step_batch_size=setting.batch_size,
        raw_batch_size=setting.raw_batch_size,
        sift_delay_epochs=arm.sift_delay_epochs,
        lr=setting.lr,
        policy=arm.policy,
        reuse=arm.reuse,
        seed=seed,
        evals_per_epoch=setting.evals_per_epoch,
        schedule="cosine",
        clock=time.process_time,
    )


def matched_plan(
    works: Mapping[str, float], full: int, controls: Sequence[int]
) -> tuple[dict[str, str], dict[str, int]]:
    """The plain run at the matched work of each arm (name by arm), and the runs among them
    to train (epochs by name): those that are neither plain nor a control run.

    Example:
        >>> matched, extra = matched_plan({"a": 2.2, "b": 4.6, "c": 5.1}, 6, [2, 3, 4])
        >>> matched["a"], extra
        ('plain, 2/6 epochs (0.33x)', {'plain, 5/6 epochs, matched work': 5})
    """
    matched: dict[str, str] = {}
    extra: dict[str, int] = {}
    for name, work in works.items():
        run, epochs = matched_control(work, full, controls)
        matched[name] = run
        if run.endswith(MATCHED):
            extra[run] = epochs
    return matched, extra


@dataclass
class SeedRuns:
    """One seed of one task: every run's result, each arm's plain run at the matched work, the
    pretrained model's accuracies (on the pretraining variant, and on the task's before
    fine-tuning)."""

    seed: int
    results: list[RunResult]
    matched: dict[str, str] = field(default_factory=dict)
    pre_accuracy: float = math.nan
    pre_shifted_accuracy: float = math.nan
    pre_seconds: float = math.nan

    def by_name(self) -> dict[str, RunResult]:
        return {r.name: r for r in self.results}


def task_runs(key: str, seed: int, smoke: bool, costs: Costs) -> SeedRuns:
    """Every run of one task and seed: the arms side by side, then the plain runs at the
    matched work."""
    setting = SMOKE if smoke else FULL
    data = _data(key, smoke)
    pretrained = pretrain(seed, smoke)
    task = finetune_task(setting, data, pretrained)
    n = len(data[0])
    arm_list = arms(setting, n)
    results = train_side_by_side([_training_run(a, task, setting, seed) for a in arm_list])
    works = {
        a.name: work_units(
            r.samples_backpropagated, r.scored[-1], n, costs.f_over_t(a.scored_batch(setting))
        )
        for a, r in zip(arm_list, results, strict=True)
        if a.mode != "plain"
    }
    matched, extra = matched_plan(works, setting.epochs, setting.control_epochs)
    more = [_training_run(Arm(m, "plain", epochs=e), task, setting, seed) for m, e in extra.items()]
    results += train_side_by_side(more)
    return SeedRuns(
        seed, results, matched, pretrained.accuracy,
        pretrained.accuracy_on(data, setting.width), pretrained.cpu_seconds,
    )  # fmt: skip


def seed_runs(job: tuple[int, str], smoke: bool, costs: Costs) -> tuple[str, SeedRuns]:
    """Every run of one ``(seed, task key)`` job, on one thread, with the task's key."""
    torch.set_num_threads(1)
    seed, key = job
    return key, task_runs(key, seed, smoke, costs)


def run_all(
    seeds: Sequence[int], smoke: bool, jobs: int, costs: Costs
) -> dict[str, list[SeedRuns]]:
    """Every task and seed, in ``jobs`` worker processes (1: in this process); each task's
    runs by task key, in seed order.

    A job is one task of one seed (a worker pretrains a seed once, and again only where
    another worker ran that seed's other task): jobs of one size keep both workers busy to
    the end, which whole seeds, an odd number of them, would not.
    """
    items = [(seed, s.key) for seed in seeds for s in SHIFTS]
    done = run_jobs(
        functools.partial(seed_runs, smoke=smoke, costs=costs),
        items,
        jobs,
        done=lambda r: f"[finetune] {r[0]} shift, seed {r[1].seed} done",
    )
    return {s.key: [runs for key, runs in done if key == s.key] for s in SHIFTS}


# ----------------------------------------------------------------------------- analysis
@dataclass
class Measures:
    """One run of one seed, against that seed's train-less frontier."""

    final: float
    work: float
    frontier: float  # the frontier's accuracy at this run's work units
    above: float  # final less that
    decided_keep: float
    matched_epochs: float = math.nan  # the plain run at the matched work (NaN: none)
    matched_final: float = math.nan
    scored: float = 0.0  # samples its scoring pass scored, in training sets' worth


def _f_over_t(name: str, arm_list: Sequence[Arm], setting: Setting, costs: Costs) -> float:
    arm = next((a for a in arm_list if a.name == name), None)
    return 0.0 if arm is None else costs.f_over_t(arm.scored_batch(setting))


def measure_seed(
    seed: SeedRuns, arm_list: Sequence[Arm], setting: Setting, costs: Costs
) -> dict[str, Measures]:
    """Each run's measures: its work units and its final accuracy against the frontier (the
    end points of plain and the control, joined by straight lines) at those work units."""
    runs = seed.by_name()
    n = runs[PLAIN].planned_samples // setting.epochs
    work = {
        name: work_curve(r, _f_over_t(name, arm_list, setting, costs), n)[-1]
        for name, r in runs.items()
    }
    points = [(work[name], r.final) for name, r in runs.items() if on_frontier(name)]
    out = {}
    for name, r in runs.items():
        frontier = frontier_at(points, work[name])
        matched = runs.get(seed.matched.get(name, ""))
        out[name] = Measures(
            final=r.final,
            work=work[name],
            frontier=frontier,
            above=r.final - frontier,
            decided_keep=r.decided_keep,
            matched_epochs=math.nan if matched is None else len(matched.epoch_ends),
            matched_final=math.nan if matched is None else matched.final,
            scored=r.scored[-1] / n if r.scored else 0.0,
        )
    return out


@dataclass
class Summary:
    """Each run's measures over seeds (run name, then measure, in seed order), the seed
    spread (the range of plain's final accuracy over seeds) and the seeds."""

    per: dict[str, dict[str, list[float]]]
    spread: float
    seeds: list[int]

    def median(self, name: str, key: str) -> float:
        """The median over seeds of a measure (NaNs left out; NaN if none is left)."""
        values = [v for v in self.per[name][key] if not math.isnan(v)]
        return float(statistics.median(values)) if values else math.nan

    def paired(self, name: str, other: str, key: str = "final") -> list[float]:
        """``name`` less ``other``, seed by seed."""
        return paired_differences(self.per[name][key], self.per[other][key])


def summarise(measures: Sequence[Mapping[str, Measures]], seeds: Sequence[int]) -> Summary:
    """The measures of every seed (in ``seeds`` order) gathered by run.

    Example:
        >>> m = Measures(0.8, 6.0, 0.8, 0.0, math.nan)
        >>> s = summarise([{"plain": m}, {"plain": dataclasses.replace(m, final=0.81)}], [0, 1])
        >>> round(s.spread, 4), s.per["plain"]["final"]
        (0.01, [0.8, 0.81])
    """
    per: dict[str, dict[str, list[float]]] = {}
    for seed_measures in measures:
        for name, m in seed_measures.items():
            rec = per.setdefault(name, {})
            for key, value in dataclasses.asdict(m).items():
                rec.setdefault(key, []).append(float(value))
    finals = per[PLAIN]["final"]
    return Summary(per, max(finals) - min(finals) if len(finals) > 1 else 0.0, list(seeds))


def _is_sifting_setting(arm: Arm, modes: Sequence[str]) -> bool:
    return arm.mode in modes and not arm.uniform


def best_of(summary: Summary, arm_list: Sequence[Arm], modes: Sequence[str]) -> Arm | None:
    """The arm of ``modes`` (random controls left out) furthest above the frontier (median)."""
    found = [
        a for a in arm_list
        if _is_sifting_setting(a, modes) and not math.isnan(summary.median(a.name, "above"))
    ]  # fmt: skip
    return max(found, key=lambda a: summary.median(a.name, "above"), default=None)


def arm_table(summary: Summary, arm_list: Sequence[Arm]) -> str:
    """A row per run: final accuracy, work, the frontier at its work, the gain over it, the
    plain run at the matched work and the kept fraction."""
    modes = {a.name: a.mode for a in arm_list}
    rows = []
    for name, rec in summary.per.items():
        above = summary.median(name, "above")
        verdict = (
            "(on it)"
            if on_frontier(name)
            else "(plain)"
            if name.startswith(PLAIN)
            else "n/a"
            if math.isnan(above)
            else "**yes**"
            if above > summary.spread
            else "no"
        )
        matched = paired_differences(rec["final"], rec["matched_final"])
        rows.append(
            [
                name,
                modes.get(name, "plain"),
                fmt_spread([100 * v for v in rec["final"]]),
                fmt_spread(rec["work"], "{:.2f}"),
                fmt_spread([100 * v for v in rec["frontier"]]),
                fmt_spread([100 * v for v in rec["above"]], "{:+.2f}"),
                verdict,
                ""
                if not matched
                else f"{fmt_spread(rec['matched_epochs'], '{:.0f}')}: "
                f"{fmt_spread([100 * v for v in rec['matched_final']])}",
                fmt_spread([100 * v for v in matched], "{:+.2f}") if matched else "",
                "" if math.isnan(summary.median(name, "decided_keep"))
                else fmt_spread(rec["decided_keep"], "{:.2f}"),
            ]
        )  # fmt: skip
    headers = [
        "run",
        "mode",
        "final test accuracy (%)",
        "work units",
        "frontier at its work (%)",
        "gain over the frontier (points)",
        f"above by more than the spread ({fmt_points(summary.spread, False)})?",
        "plain at the matched work: epochs: final (%)",
        "run less that plain run (points)",
        "kept of the decided",
    ]
    return markdown_table(headers, rows)


def _measured_pairs(summary: Summary, arm_list: Sequence[Arm]) -> list[tuple[Arm, str]]:
    """The pairs of :func:`pairs` whose both runs were measured."""
    return [(a, t) for a, t in pairs(arm_list) if a.name in summary.per and t in summary.per]


def pair_table(summary: Summary, arm_list: Sequence[Arm]) -> str:
    """Each paired arm less its twin, seed by seed: the final accuracy, and the gain over the
    frontier (each at its own work)."""
    rows = []
    for arm, twin in _measured_pairs(summary, arm_list):
        d = summary.paired(arm.name, twin)
        med = float(statistics.median(d)) if d else math.nan
        rows.append(
            [
                f"`{arm.name}` less `{twin}`",
                fmt_per_seed(d),
                _ahead(d),
                fmt_spread([100 * v for v in d], "{:+.2f}"),
                _beat_word(med, summary.spread),
                fmt_spread([100 * v for v in summary.paired(arm.name, twin, "above")], "{:+.2f}"),
            ]
        )
    headers = [
        "pair",
        "final accuracy, per seed (points)",
        "seeds ahead",
        "median (min–max)",
        f"against the seed spread ({fmt_points(summary.spread, False)})",
        "gain over the frontier, each at its own work (points)",
    ]
    return markdown_table(headers, rows)


def _ahead(diffs: Sequence[float]) -> str:
    """In how many seeds the first of a pair ended ahead.

    Example:
        >>> _ahead([0.01, -0.02, 0.03])
        '2 of 3'
    """
    return f"{sum(d > 0 for d in diffs)} of {len(diffs)}"


def _beat_word(d: float, spread: float) -> str:
    if math.isnan(d):
        return "n/a"
    if d > spread:
        return "**ahead by more than the spread**"
    if d < -spread:
        return "behind by more than the spread"
    return "within the spread"


def _median_pair(summary: Summary, name: str, twin: str) -> float:
    d = summary.paired(name, twin)
    return float(statistics.median(d)) if d else math.nan


def verdicts(summary: Summary, arm_list: Sequence[Arm]) -> list[str]:
    """Plain sentences from the numbers: what beat training less, whether the scoring pass
    paid, and whether the loss-based choice beat chance."""
    spread = fmt_points(summary.spread, False)
    present = [a for a in arm_list if a.name in summary.per]
    out = []
    above = {
        a.name: summary.median(a.name, "above")
        for a in present
        if a.mode != "plain" and not math.isnan(summary.median(a.name, "above"))
    }
    winners = [n for n, v in above.items() if v > summary.spread]
    if winners:
        out.append(
            "**Beats training less:** "
            + ", ".join(f"`{n}` ({fmt_points(above[n])})" for n in winners)
            + f" end above the frontier by more than the seed spread ({spread})."
        )
    elif above:
        best = max(above, key=above.__getitem__)
        out.append(
            f"**No arm beats training less by more than the seed spread ({spread}).** The "
            f"best, `{best}`, ends {fmt_points(above[best])} against the frontier at its work."
        )
    for label, modes in (("The scoring pass", ("scoring", "hybrid")), ("Loss reuse", ("reuse",))):
        best_arm = best_of(summary, present, modes)
        if best_arm is None:
            continue
        gain = summary.median(best_arm.name, "above")
        out.append(
            f"**{label}:** its best setting, `{best_arm.name}`, ends {fmt_points(gain)} "
            "against the "
            f"frontier at its work ({summary.median(best_arm.name, 'work'):.2f} work units; "
            f"per seed {fmt_per_seed(summary.per[best_arm.name]['above'])}): "
            + (
                "above it by more than the seed spread."
                if gain > summary.spread
                else "not above it by more than the seed spread."
            )
        )
    chance = []
    for arm, twin in _measured_pairs(summary, arm_list):
        d = _median_pair(summary, arm.name, twin)
        what = "its random control" if arm.mode != "hybrid" else "loss reuse at the same keep"
        chance.append(
            f"`{arm.name}` less {what} `{twin}`: {fmt_points(d)} (median paired seed; ahead in "
            f"{_ahead(summary.paired(arm.name, twin))} seeds), "
            f"{_beat_word(d, summary.spread).strip('*')}"
        )
    if chance:
        out.append(
            f"**Against their controls (final accuracy, seed spread {spread}):** "
            + "; ".join(chance)
            + "."
        )
    return out


def _styles(arm_list: Sequence[Arm]) -> dict[str, dict[str, Any]]:
    """A line style per mode (the hybrid's after a sift delay its own); a colour per policy,
    its random control a lighter shade of it."""
    from matplotlib import colormaps

    tab20 = colormaps["tab20"]
    dashes: dict[str, Any] = {"reuse": "--", "scoring": "-", "hybrid": "-."}
    delayed = (0, (4, 1.5, 1, 1.5, 1, 1.5))  # dash-dot-dot
    hues = iter([0, 1, 2, 3, 4, 5, 8, 9, 6, 7] * 2)  # tab20's pairs: a dark and a light shade
    hue: dict[str, int] = {}
    for arm in arm_list:
        if arm.mode != "plain" and not arm.uniform:
            hue[arm.name] = next(hues)
    styles: dict[str, dict[str, Any]] = {PLAIN: {"color": "dimgrey"}}
    for arm in arm_list:
        if arm.mode == "plain":
            continue
        twin_of = next((a.name for a in arm_list if a.twin == arm.name and a.name in hue), None)
        colour: Any
        if arm.name in hue:
            colour = tab20(2 * hue[arm.name])
        elif twin_of is not None:  # a random control: its policy's lighter shade
            colour = tab20(2 * hue[twin_of] + 1)
        else:
            colour = "black"
        dash = delayed if arm.sift_delay_epochs else dashes[arm.mode]
        styles[arm.name] = {"color": colour, "linestyle": dash}
    return styles


def figure(
    seed: SeedRuns,
    arm_list: Sequence[Arm],
    setting: Setting,
    costs: Costs,
    path: Path,
    label: str = "a shifted variant",
) -> Path:
    """One seed's accuracy against work units, every run, with the train-less frontier."""
    runs = seed.by_name()
    n = runs[PLAIN].planned_samples // setting.epochs
    start = seed.pre_shifted_accuracy  # every run starts from the pretrained weights
    curves = [
        dataclasses.replace(
            r,
            times=[0.0, *work_curve(r, _f_over_t(r.name, arm_list, setting, costs), n)],
            values=[start, *r.values],
        )
        for r in seed.results
    ]
    styles = _styles(arm_list)
    for c in curves:
        if c.name.startswith(PLAIN + ","):
            styles[c.name] = {"color": "grey", "linestyle": ":" if on_frontier(c.name) else "--"}
    fig = runs_figure(
        curves,
        scale=100.0,
        ylabel="test accuracy on the variant fine-tuned on (%)",
        xlabel="work units ((trained + scored x F/T) / training-set size)",
        title=f"Fine-tuning a pretrained ConvNet on MNIST-1D, {label}, seed {seed.seed}",
        reference=PLAIN,
        styles=styles,
    )
    ax = fig.axes[0]
    ends = sorted((c.times[-1], 100 * c.final) for c in curves if on_frontier(c.name))
    ax.plot(
        [x for x, _ in ends], [y for _, y in ends], color="black", marker="s", linewidth=2.2,
        alpha=0.6, label="train-less frontier",
    )  # fmt: skip
    finals = [100 * c.final for c in curves]
    ax.set_ylim(min(finals) - 3, max(finals) + 1)  # the end game; the start may lie far below
    ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.14), ncol=2, fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


# ----------------------------------------------------------------------------- the report
def intro(setting: Setting, costs: Costs, pre: Sequence[SeedRuns], n_train: int) -> str:
    """What the benchmark runs and how it counts (``pre``: one task's seeds, for the
    pretrained model's accuracy on its own variant, the same on every task)."""
    own = [100 * s.pre_accuracy for s in pre]
    keeps = ", ".join(f"{k:g}" for k in KEEPS)
    delays = " and ".join(
        f"a sift delay of {_epochs(d)} (the first trained whole, as loss reuse trains it; "
        "after it the pass scores the stale samples)"
        if d
        else "no sift delay (the pass sifts the first epoch)"
        for d in HYBRID_DELAYS
    )
    return "\n\n".join(
        [
            "A model that already knows most of its data, where the scoring pass should pay "
            "most: its losses are informative from the first step. The demo's ConvNet (width "
            f"{setting.width}) is pretrained per seed for {_epochs(setting.pre_epochs)} (AdamW lr "
            f"{setting.pre_lr:g}, cosine) on {round(0.8 * setting.pre_samples):,} samples of "
            f"MNIST-1D as `mnist1d` generates it by default ({PRETRAIN.describe()}); it reaches "
            f"{fmt_spread(own, '{:.1f}', ' %')} on that variant's test set. Each seed's "
            f"pretrained model is then fine-tuned on {len(SHIFTS)} tasks, each {n_train:,} "
            f"samples of a shifted variant ({', '.join(s.label for s in SHIFTS)}, below); the "
            f"metric is the accuracy on that variant's {setting.samples - n_train:,} test "
            "samples (chance: 10 %).",
            "Per seed every arm starts from the seed's pretrained weights, reads the data in "
            f"the same first order and takes AdamW steps of {setting.batch_size} samples (lr "
            f"{setting.lr:g}) on a cosine schedule that follows the data, so that it ends where "
            "the run's training ends. Arms, the same on every task: `plain` at "
            f"{setting.epochs} epochs and the train-less control, plain at "
            f"{', '.join(map(str, setting.control_epochs))} of {setting.epochs} epochs, each "
            "with its own complete schedule (the frontier joins their end points); loss reuse "
            f"(`Reuse()`: `max_age=3`) with `RelativeProbabilistic(keep=k)` and its random "
            f"control `Uniform(keep=k)` at k = {keeps}, and `InfoBatch(prune={PRUNE:g})` with "
            "the paper's sampler settings (`InfoBatch.reuse_kwargs`: 1/p weights, the last "
            "12.5 % of epochs on all data, no staleness limit); the scoring mode (raw batches "
            f"of {setting.raw_batch_size}, no sift delay) with `TopK({SCORING_KEEP:g})`, "
            f"`RelativeProbabilistic(beta=1)` and the random control `Uniform(keep="
            f"{SCORING_KEEP:g})`; "
            "the hybrid mode (`Reuse(hybrid=True)`: loss reuse whose undecided samples, never "
            "scored or stale, go through the scoring pass and are sifted by the same policy) "
            f"with `RelativeProbabilistic(keep=k)` at k = {keeps}, with {delays}; history "
            f"{setting.history} for `RelativeProbabilistic` (`InfoBatch`'s: the "
            "training-set size, so that its mean is that of an epoch's scores). After those, "
            "plain at the matched work of each sifting arm: the whole number of epochs nearest "
            "its work units (a control run of that length serves where there is one).",
            "Work units = (samples trained + samples scored x F/T) / training-set size (a plain "
            "epoch is 1), F and T measured by `ss.profile` on the task's model, one thread, "
            f"{'one profile' if setting is SMOKE else 'medians of 3 profiles'} (the model and "
            "the samples' shape are the same on every task: one profile serves all): T = "
            f"{1e6 * costs.step_s:.1f} µs per sample at the step size; F/T = "
            + ", ".join(
                f"{costs.f_over_t(b):.3f} (batches of {b})" for b in sorted(costs.scoring_s)
            )
            + ". The scoring mode scores its raw batches, the hybrid mode the loss-reuse "
            "loader's batches of the step size. A run is above the frontier when its final "
            "accuracy beats the frontier's at its work by more than the seed spread (the range "
            "of plain's final accuracy over seeds, per task). Median (min–max) over seeds "
            f"{', '.join(str(s.seed) for s in pre)}; each figure shows seed {pre[0].seed}.",
        ]
    )


def task_intro(task: Shift, seeds: Sequence[SeedRuns]) -> str:
    """The task's variant, where the pretrained model starts on it and where plain ends."""
    start = [100 * s.pre_shifted_accuracy for s in seeds]
    plain = [100 * s.by_name()[PLAIN].final for s in seeds]
    return (
        f"The variant: {task.variant.describe()}. The pretrained model starts at "
        f"{fmt_spread(start, '{:.1f}', ' %')} on its test set; plain fine-tuning ends at "
        f"{fmt_spread(plain, '{:.1f}', ' %')}."
    )


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def targets(summary: Summary, arm_list: Sequence[Arm], label: str = "") -> list[Target]:
    """On one task (``label``, e.g. "the mild shift"): the scoring pass above the frontier;
    the hybrid's scoring pass above loss reuse at the same keep; loss reuse above its random
    control, per keep."""
    spread = fmt_points(summary.spread, False)
    on = f"{label or 'a shifted variant'}, "
    present = [a for a in arm_list if a.name in summary.per]
    best = best_of(summary, present, ("scoring", "hybrid"))
    gain = math.nan if best is None else summary.median(best.name, "above")
    out = [
        Target(
            f"Fine-tuning on {on}the scoring pass against the train-less "
            "frontier (MNIST-1D, work units, median seed)",
            f"on {on}some scoring-mode setting (scoring or hybrid) ends above "
            "the frontier by more than the seed spread",
            "n/a"
            if best is None
            else f"best `{best.name}` {fmt_points(gain)} (per seed "
            f"{fmt_per_seed(summary.per[best.name]['above'])}; seed spread {spread})",
            met=best is not None and gain > summary.spread,
        )
    ]
    hybrid = [(a, t) for a, t in _measured_pairs(summary, arm_list) if a.mode == "hybrid"]
    if hybrid:
        arm, twin = max(hybrid, key=lambda p: _median_pair(summary, p[0].name, p[1]))
        d = summary.paired(arm.name, twin)
        med = _median_pair(summary, arm.name, twin)
        out.append(
            Target(
                f"Fine-tuning on {on}the hybrid's scoring pass against loss "
                "reuse at the same keep (MNIST-1D, paired final accuracy, median seed)",
                f"on {on}some hybrid setting beats loss reuse at the same keep "
                "by more than the seed spread",
                f"best `{arm.name}` less `{twin}` {fmt_points(med)} "
                f"(per seed {fmt_per_seed(d)}; seed "
                f"spread {spread})",
                met=med > summary.spread,
            )
        )
    for arm, twin in _measured_pairs(summary, arm_list):
        if arm.mode != "reuse":
            continue
        d = summary.paired(arm.name, twin)
        med = float(statistics.median(d)) if d else math.nan
        keep = getattr(arm.policy, "keep", None)
        out.append(
            Target(
                f"Fine-tuning on {on}loss reuse against its Uniform twin (keep "
                f"{keep:g}, MNIST-1D, paired final accuracy, median seed)",
                f"on {on}loss reuse beats its Uniform twin by more than the seed "
                f"spread at keep {keep:g}",
                f"`{arm.name}` less `{twin}` {fmt_points(med)} (per seed {fmt_per_seed(d)}; seed "
                f"spread {spread})",
                met=med > summary.spread,
            )
        )
    return out


def target_sentences(goals: Sequence[Target]) -> list[str]:
    """The targets missed and met, in plain words.

    Example:
        >>> target_sentences([Target("a", "x beats y", "+1", met=False)])
        ['**Targets missed:** x beats y.']
    """
    out = []
    for met, label in ((False, "**Targets missed:**"), (True, "**Targets met:**")):
        goals_here = [t.goal for t in goals if t.met == met]
        if goals_here:
            out.append(f"{label} {'; '.join(goals_here)}.")
    return out


# ----------------------------------------------------------------------------- across tasks
@dataclass(frozen=True)
class Paid:
    """Where the scoring pass paid on one task, from its summary.

    Attributes:
        label: the task's name in the report.
        start: the pretrained model's accuracy on the task (median seed).
        plain: plain fine-tuning's final accuracy (median seed).
        spread: the seed spread.
        against_reuse: each hybrid arm less loss reuse at the same keep (median paired seed).
        scored: each hybrid arm's samples scored, in training sets' worth (median seed).
        first_epoch: per keep, the hybrid with no sift delay less the one with a delay
            (median paired seed).
        best_pass: the scoring-pass arm (scoring or hybrid) furthest above the frontier, and
            its median gain over it; best_reuse and best_scoring likewise for loss reuse and
            for the scoring mode alone.
    """

    label: str
    start: float
    plain: float
    spread: float
    against_reuse: dict[str, float]
    scored: dict[str, float]
    first_epoch: dict[float, float]
    best_pass: tuple[str, float] | None
    best_reuse: tuple[str, float] | None
    best_scoring: tuple[str, float] | None

    @property
    def paid_against_reuse(self) -> list[str]:
        """The hybrid arms ahead of loss reuse at the same keep by more than the spread."""
        return [n for n, d in self.against_reuse.items() if d > self.spread]

    @property
    def paid_against_frontier(self) -> bool:
        """Whether the scoring pass's best setting ends above the frontier by more than the
        spread."""
        return self.best_pass is not None and self.best_pass[1] > self.spread


def paid(label: str, summary: Summary, seeds: Sequence[SeedRuns], arm_list: Sequence[Arm]) -> Paid:
    """What :class:`Paid` records for one task."""
    present = [a for a in arm_list if a.name in summary.per]

    def best(modes: Sequence[str]) -> tuple[str, float] | None:
        arm = best_of(summary, present, modes)
        return None if arm is None else (arm.name, summary.median(arm.name, "above"))

    delays = [d for d in HYBRID_DELAYS if d]
    first_epoch = {
        k: _median_pair(summary, hybrid_name(k, 0), hybrid_name(k, delays[0]))
        for k in KEEPS
        if delays and {hybrid_name(k, 0), hybrid_name(k, delays[0])} <= summary.per.keys()
    }
    hybrid = [(a, t) for a, t in _measured_pairs(summary, arm_list) if a.mode == "hybrid"]
    return Paid(
        label,
        statistics.median(s.pre_shifted_accuracy for s in seeds),
        summary.median(PLAIN, "final"),
        summary.spread,
        {a.name: _median_pair(summary, a.name, t) for a, t in hybrid},
        {
            a.name: summary.median(a.name, "scored") if "scored" in summary.per[a.name] else 0.0
            for a, _ in hybrid
        },
        first_epoch,
        best(("scoring", "hybrid")),
        best(("reuse",)),
        best(("scoring",)),
    )


def _listing(names: Sequence[str]) -> str:
    quoted = [f"`{n}`" for n in names]
    return ", ".join(quoted[:-1]) + " and " + quoted[-1] if len(quoted) > 1 else "".join(quoted)


def _task_paid_sentence(t: Paid) -> str:
    """One task's facts in a sentence: the pass against loss reuse, the first epoch, the
    frontier."""
    spread = fmt_points(t.spread, False)
    parts = [
        f"On {t.label} (the pretrained model starts at {100 * t.start:.1f} %, plain "
        f"fine-tuning ends at {100 * t.plain:.1f} %; seed spread {spread}),"
    ]
    if t.against_reuse:
        ahead, behind = (
            t.paid_against_reuse,
            [n for n, d in t.against_reuse.items() if d < -t.spread],
        )
        diffs = "; ".join(
            f"`{n}` {fmt_points(d)} (scoring {t.scored.get(n, 0.0):.2f} training sets' worth)"
            for n, d in t.against_reuse.items()
        )
        parts.append(
            "the hybrid's scoring pass against loss reuse at the same keep (median paired "
            f"seed; the samples it scored over the run): {diffs}: "
            + (f"it paid in {_listing(ahead)}" if ahead else "it paid in no setting")
            + (f", and lost by more than the spread in {_listing(behind)}" if behind else "")
            + "."
        )
    if t.first_epoch:
        parts.append(
            "Sifting the first epoch (no sift delay) less sifting after it: "
            + ", ".join(f"{fmt_points(d)} at keep {k:g}" for k, d in t.first_epoch.items())
            + "."
        )
    if t.best_pass is not None:
        name, gain = t.best_pass
        verdict = "above it" if gain > t.spread else "not above it"
        line = (
            f"Against the frontier the scoring pass's best setting, `{name}`, ends "
            f"{fmt_points(gain)} ({verdict} by more than the spread)"
        )
        if t.best_scoring is not None and t.best_scoring[0] != name:
            scoring_name, scoring_gain = t.best_scoring
            line += f", the scoring mode's best, `{scoring_name}`, {fmt_points(scoring_gain)}"
        if t.best_reuse is not None:
            line += (
                f"; loss reuse's best, `{t.best_reuse[0]}`, {fmt_points(t.best_reuse[1])} (the "
                f"scoring pass's best less it: {fmt_points(gain - t.best_reuse[1])})"
            )
        parts.append(line + ".")
    return " ".join(parts)


def closing(tasks: Sequence[Paid]) -> str:
    """A paragraph from the numbers: across the tasks, where the scoring pass (scoring mode,
    hybrid) paid and where not, against loss reuse and the frontier.

    Example:
        >>> t = Paid("the mild shift", 0.86, 0.93, 0.005, {"hybrid X": 0.01}, {"hybrid X": 1.5},
        ...          {0.3: -0.01}, ("hybrid X", 0.002), ("reuse Y", 0.004), ("scoring Z", -0.01))
        >>> text = closing([t])
        >>> "it paid in `hybrid X`" in text, "above the frontier by more than" in text
        (True, True)
    """
    against_reuse = [t.label for t in tasks if t.paid_against_reuse]
    frontier = [t.label for t in tasks if t.paid_against_frontier]
    ahead_of_reuse = [
        t.label
        for t in tasks
        if t.best_pass is not None
        and t.best_reuse is not None
        and t.best_pass[1] - t.best_reuse[1] > t.spread
    ]

    def where(labels: Sequence[str]) -> str:
        return f"on {' and '.join(labels)}" if labels else "on neither task"

    summary = (
        "**In all:** the scoring pass beat loss reuse at the same keep by more than the seed "
        f"spread {where(against_reuse)}; its best setting ended above the frontier by more "
        f"than the seed spread {where(frontier)}, and further above it than loss reuse's best "
        f"by more than the spread {where(ahead_of_reuse)}."
    )
    return "\n\n".join([*(_task_paid_sentence(t) for t in tasks), summary])


# ----------------------------------------------------------------------------- rendering
def task_section(
    task: Shift,
    seeds: Sequence[SeedRuns],
    arm_list: Sequence[Arm],
    setting: Setting,
    costs: Costs,
    img_dir: Path,
) -> tuple[str, list[Target], Paid]:
    """One task's subsection (its tables, pairs, verdicts, targets and figure), its targets
    and where its scoring pass paid."""
    summary = summarise(
        [measure_seed(s, arm_list, setting, costs) for s in seeds], [s.seed for s in seeds]
    )
    image = figure(seeds[0], arm_list, setting, costs, img_dir / task.image, task.label)
    goals = targets(summary, arm_list, task.label)
    body = [
        f"### Fine-tuning on {task.label}",
        task_intro(task, seeds),
        arm_table(summary, arm_list),
        "Paired seed by seed, from the same weights in the same first order: each policy "
        "less its random control in the same mode (`Uniform` at the same keep), and each "
        "hybrid arm less loss reuse at the same keep (what its scoring pass adds).",
        pair_table(summary, arm_list),
        *verdicts(summary, arm_list),
        *target_sentences(goals),
        f"![Fine-tuning on {task.label}: accuracy against work units, seed {seeds[0].seed}]"
        f"(img/{image.name})",
    ]
    return "\n\n".join(body), goals, paid(task.label, summary, seeds, arm_list)


def render(
    by_task: Mapping[str, Sequence[SeedRuns]],
    costs: Costs,
    smoke: bool,
    minutes: float,
    img_dir: Path,
) -> Section:
    """The report's section from the measurements (each task's seeds, by task key)."""
    setting = SMOKE if smoke else FULL
    first = by_task[SHIFTS[0].key]
    n_train = first[0].by_name()[PLAIN].planned_samples // setting.epochs
    arm_list = arms(setting, n_train)
    body = [intro(setting, costs, first, n_train)]
    goals: list[Target] = []
    facts = []
    for task in SHIFTS:
        text, task_goals, task_paid = task_section(
            task, by_task[task.key], arm_list, setting, costs, img_dir
        )
        body.append(text)
        goals += task_goals
        facts.append(task_paid)
    body += [
        "### Across the tasks: where the scoring pass paid",
        closing(facts),
        f"The benchmark took {minutes:.1f} min of wall time (data generation, profiles, "
        "pretraining and training; seeds in worker processes of one thread each).",
    ]
    return Section(
        "Fine-tuning a pretrained model: loss reuse, the scoring pass and the hybrid",
        "\n\n".join(body),
        tuple(goals),
    )


def _load(path: Path) -> tuple[dict[str, list[SeedRuns]], Costs, float]:
    """The measurements saved in ``path`` (by :func:`run`)."""
    with open(path, "rb") as f:
        saved = pickle.load(f)
    if not (isinstance(saved, dict) and saved.get("version") == RESULTS_VERSION):
        raise ValueError(
            f"Expected {RESULTS_ENV}={str(path)!r} to hold this benchmark's measurements of "
            f"every task (layout {RESULTS_VERSION}), but it holds another layout; delete the "
            f"file or name a new one in {RESULTS_ENV} to measure again."
        )
    return saved["tasks"], saved["costs"], saved["minutes"]


def run(smoke: bool = False, img_dir: Path | None = None, jobs: int | None = None) -> Section:
    """Measures the costs, trains every arm of every task and seed and returns the report's
    section.

    With the environment variable ``SMARTSIFT_FINETUNE_RESULTS`` naming a file, the
    measurements are saved there, and a later run with the file present renders from them.
    """
    img_dir = IMG_DIR if img_dir is None else img_dir
    jobs = 1 if smoke else (jobs or min(2, os.cpu_count() or 1))
    saved = os.environ.get(RESULTS_ENV)
    if saved and Path(saved).is_file():
        by_task, costs, minutes = _load(Path(saved))
        return render(by_task, costs, smoke, minutes, img_dir)
    setting = SMOKE if smoke else FULL
    start = time.perf_counter()
    threads = torch.get_num_threads()
    try:
        data = _data(SHIFTS[0].key, smoke)
        costs = measure_costs(setting, data[0], smoke)
        torch.set_num_threads(1)
        by_task = run_all(SEEDS[:1] if smoke else SEEDS, smoke, jobs, costs)
    finally:
        torch.set_num_threads(threads)
    minutes = (time.perf_counter() - start) / 60
    if saved:
        with open(saved, "wb") as f:
            record = {"version": RESULTS_VERSION, "tasks": by_task, "costs": costs}
            pickle.dump({**record, "minutes": minutes}, f)
    return render(by_task, costs, smoke, minutes, img_dir)


def main(argv: list[str] | None = None) -> None:
    benchmark_main(run, __doc__, argv, smoke_figures="finetune")


if __name__ == "__main__":
    main_as_module("benchmarks.finetune")
