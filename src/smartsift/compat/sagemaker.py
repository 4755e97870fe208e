"""SageMaker smart sifting's API on smartsift: scripts written for it run after an import change.

Replace the reference's ``smart_sifting`` imports with ``from smartsift.compat.sagemaker
import (...)``. :class:`SiftingDataloader` is a shell over :class:`smartsift.SiftingDataLoader`
(held as ``.sifting_loader``); :class:`RelativeProbabilisticSiftConfig` maps to
``smartsift.RelativeProbabilistic`` and :class:`ThresholdSiftConfig` to
``smartsift.QuantileThreshold``; a :class:`Loss` and a :class:`SiftingBatchTransform` are adapted
to smartsift's ``loss_fn`` and ``BatchTransform``. ``docs/compat.md`` has the import table, the
whole mapping and every difference in behaviour.

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> class CELoss(Loss):
    ...     def loss(self, model, transformed_batch, original_batch=None):
    ...         x, y = original_batch
    ...         return torch.nn.functional.cross_entropy(model(x), y, reduction="none")
    >>> config = RelativeProbabilisticSiftConfig(
    ...     beta_value=1.0, loss_history_length=500,
    ...     loss_based_sift_config=LossConfig(sift_config=SiftingBaseConfig(sift_delay=2)))
    >>> data = TensorDataset(torch.randn(256, 8), torch.randint(0, 2, (256,)))
    >>> loader = SiftingDataloader(
    ...     sift_config=config, orig_dataloader=DataLoader(data, batch_size=32),
    ...     model=torch.nn.Linear(8, 2), loss_impl=CELoss(), seed=0)
    >>> trained = sum(len(x) for x, y in loader)
    >>> loader.stats.samples_seen, trained < 256
    (256, True)
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch

from smartsift.batches.structure import UnsupportedBatchError, batch_size_of
from smartsift.engine.checks import check_int
from smartsift.engine.stats import SiftStats
from smartsift.integrations.adapter import check_loader_kwargs
from smartsift.modes.loader import SiftingDataLoader
from smartsift.modes.scoring import LossFunctionError
from smartsift.policies import Policy, QuantileThreshold, RelativeProbabilistic

__all__ = [
    "ListBatch",
    "Loss",
    "LossConfig",
    "LossImplementationNotProvidedException",
    "RelativeProbabilisticSiftConfig",
    "SiftConfigValidationException",
    "SiftingBaseConfig",
    "SiftingBatch",
    "SiftingBatchTransform",
    "SiftingDataloader",
    "TensorBatch",
    "ThresholdSiftConfig",
    "UnsupportedDataFormatException",
]

_ATOMS = (str, bytes, int, float, bool, type(None))
# The key that marks the sliceable form of a SiftingBatch; its value names the class.
_TAG = "smartsift.compat.sifting_batch"


# --------------------------------------------------------------------------- exceptions
class SiftConfigValidationException(ValueError, TypeError):
    """An invalid sifting configuration or argument: a missing key, a wrong type or value.

    It is both a ``ValueError`` and a ``TypeError``, the two smartsift raises for bad settings.
    """


class UnsupportedDataFormatException(UnsupportedBatchError):
    """A batch that cannot be sifted as it is: pass ``batch_transforms`` a
    :class:`SiftingBatchTransform`. A :class:`smartsift.UnsupportedBatchError`."""


class LossImplementationNotProvidedException(LossFunctionError, TypeError):
    """``loss_impl`` is missing, does not implement ``loss``, or does not return one loss per
    sample. A :class:`smartsift.LossFunctionError` (a ``ValueError``) and a ``TypeError``."""


# The reference's names for smartsift's arguments, as error messages name them.
_REFERENCE_NAMES = {"`dataloader`": "`orig_dataloader`"}


@contextmanager
def _config_errors(names: Mapping[str, str] | None = None) -> Iterator[None]:
    """Raises smartsift's errors for bad settings as :class:`SiftConfigValidationException`,
    with the names in their messages replaced as ``names`` says."""
    try:
        yield
    except SiftConfigValidationException:
        raise
    except (TypeError, ValueError) as err:
        message = str(err)
        for ours, theirs in (names or {}).items():
            message = message.replace(ours, theirs)
        raise SiftConfigValidationException(message) from err


# --------------------------------------------------------------------------- configs
def _check_int(name: str, value: Any, minimum: int, meaning: str) -> None:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = int(value)  # a NumPy integer is an int here, as in the reference
    with _config_errors():
        check_int(name, value, minimum, meaning)


def _check_bool(name: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise SiftConfigValidationException(
            f"Expected `{name}` to be True or False, but got {value!r}."
        )


def _check_real(name: str, value: Any, ok: bool, expected: str, hint: str) -> None:
    real = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    if not (real and math.isfinite(value) and ok):
        raise SiftConfigValidationException(
            f"Expected `{name}` to be {expected}, but got {value!r}. {hint}"
        )


_C = TypeVar("_C")


def _coerce(cls: type[_C], value: Any, name: str) -> _C:
    """Returns ``value`` as a ``cls``: an instance as it is, a dict as ``cls(**value)``."""
    if isinstance(value, cls):
        return value
    keys = [f.name for f in fields(cls)]  # type: ignore[arg-type]
    if not isinstance(value, Mapping):
        raise SiftConfigValidationException(
            f"Expected `{name}` to be a {cls.__name__} or a dict with keys {keys}, but got "
            f"{value!r}."
        )
    unknown = [k for k in value if k not in keys]
    required = [
        f.name
        for f in fields(cls)  # type: ignore[arg-type]
        if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [k for k in required if k not in value]
    if unknown or missing:
        raise SiftConfigValidationException(
            f"Expected `{name}` to have the keys {keys} ({', '.join(required) or 'none'} "
            f"required), but got {dict(value)!r}: "
            + "; ".join(
                part
                for part in (
                    f"unknown key(s) {unknown}" if unknown else "",
                    f"missing key(s) {missing}" if missing else "",
                )
                if part
            )
            + "."
        )
    return cls(**value)


@dataclass
class SiftingBaseConfig:
    """When sifting starts: after ``sift_delay`` raw batches, once or at every epoch's start.

    Args:
        sift_delay: raw batches (training steps) passed through unsifted before sifting starts.
        repeat_delay_per_epoch: apply the delay at the start of every epoch.

    Raises:
        SiftConfigValidationException: if a value has the wrong type or range.

    Example:
        >>> SiftingBaseConfig()
        SiftingBaseConfig(sift_delay=1000, repeat_delay_per_epoch=False)
    """

    sift_delay: int = 1000
    repeat_delay_per_epoch: bool = False

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every field (called when built and again when a loader is built)."""
        _check_int("sift_delay", self.sift_delay, 0, "training steps before sifting starts")
        _check_bool("repeat_delay_per_epoch", self.repeat_delay_per_epoch)


@dataclass
class LossConfig:
    """The loss-based sifting settings: holds the :class:`SiftingBaseConfig`.

    Args:
        sift_config: a :class:`SiftingBaseConfig` or a dict of its fields.

    Example:
        >>> LossConfig(sift_config={"sift_delay": 10}).sift_config.sift_delay
        10
    """

    sift_config: SiftingBaseConfig = field(default_factory=SiftingBaseConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks (and turns a dict into) the ``sift_config``."""
        self.sift_config = _coerce(SiftingBaseConfig, self.sift_config, "sift_config")
        self.sift_config.validate()


def _loss_config(config: Any) -> LossConfig:
    loss_config = _coerce(LossConfig, config, "loss_based_sift_config")
    loss_config.validate()
    return loss_config


@dataclass
class RelativeProbabilisticSiftConfig:
    """The reference rule: keep a sample with probability ``percentile ** beta_value``.

    Maps to ``smartsift.RelativeProbabilistic(beta=beta_value, history=loss_history_length)``,
    which keeps about ``1/(1+beta_value)`` of the samples: 0.5 keeps 67 %, 1 keeps 50 %, 3
    keeps 25 %.

    Args:
        beta_value: positive selectivity; larger sifts out more.
        loss_history_length: how many recent losses a loss is ranked against.
        loss_based_sift_config: a :class:`LossConfig` (or a dict); its ``sift_config`` sets the
            delay. Default: ``LossConfig()``, a delay of 1000 raw batches.

    Raises:
        SiftConfigValidationException: if a value has the wrong type or range.

    Example:
        >>> RelativeProbabilisticSiftConfig(beta_value=2, loss_history_length=300).to_policy()
        RelativeProbabilistic(beta=2.0, history=300)
    """

    beta_value: float
    loss_history_length: int
    loss_based_sift_config: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every field, nested configs included."""
        beta = self.beta_value
        _check_real(
            "beta_value",
            beta,
            isinstance(beta, numbers.Real) and beta > 0,
            "a positive float",
            "beta_value=1 keeps about half of the samples, 2 a third, 3 a quarter.",
        )
        _check_int(
            "loss_history_length", self.loss_history_length, 1, "recent losses to rank against"
        )
        self.loss_based_sift_config = _loss_config(self.loss_based_sift_config)

    def to_policy(self) -> Policy:
        """Returns the smartsift policy these settings describe."""
        self.validate()
        return RelativeProbabilistic(
            beta=float(self.beta_value), history=int(self.loss_history_length)
        )


@dataclass
class ThresholdSiftConfig:
    """Deterministic: exclude the ``exclude_proportion`` of samples with the lowest losses.

    A smartsift extension (the reference documents "the proportion of data to exclude" but has
    no class for it): with 0.25, losses in the bottom quartile of the recent history are
    excluded. Maps to ``smartsift.QuantileThreshold(exclude=exclude_proportion,
    history=loss_history_length)``.

    Args:
        exclude_proportion: the fraction to exclude, in [0, 1).
        loss_history_length: how many recent losses the quantile is taken over.
        loss_based_sift_config: a :class:`LossConfig` (or a dict), as for
            :class:`RelativeProbabilisticSiftConfig`.

    Example:
        >>> ThresholdSiftConfig(exclude_proportion=0.25, loss_history_length=500).to_policy()
        QuantileThreshold(exclude=0.25, history=500)
    """

    exclude_proportion: float
    loss_history_length: int
    loss_based_sift_config: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Checks every field, nested configs included."""
        p = self.exclude_proportion
        _check_real(
            "exclude_proportion",
            p,
            isinstance(p, numbers.Real) and 0 <= p < 1,
            "a float in [0, 1)",
            "0.25 excludes the bottom quartile of the losses.",
        )
        _check_int(
            "loss_history_length", self.loss_history_length, 1, "recent losses to rank against"
        )
        self.loss_based_sift_config = _loss_config(self.loss_based_sift_config)

    def to_policy(self) -> Policy:
        """Returns the smartsift policy these settings describe."""
        self.validate()
        return QuantileThreshold(
            exclude=float(self.exclude_proportion), history=int(self.loss_history_length)
        )


_SiftConfig = RelativeProbabilisticSiftConfig | ThresholdSiftConfig


def _resolve_sift_config(sift_config: Any) -> tuple[Policy, SiftingBaseConfig]:
    """Returns the policy and the delay settings of a config object or dict."""
    if isinstance(sift_config, Mapping) and not isinstance(sift_config, _SiftConfig):
        cls: type[_SiftConfig] = (
            ThresholdSiftConfig
            if "exclude_proportion" in sift_config
            else RelativeProbabilisticSiftConfig
        )
        sift_config = _coerce(cls, sift_config, "sift_config")
    if not isinstance(sift_config, _SiftConfig):
        raise SiftConfigValidationException(
            "Expected `sift_config` to be a RelativeProbabilisticSiftConfig (or a dict of its "
            f"fields), but got {sift_config!r}. Build one with RelativeProbabilisticSiftConfig("
            "beta_value=1.0, loss_history_length=500, loss_based_sift_config=LossConfig("
            "sift_config=SiftingBaseConfig(sift_delay=...)))."
        )
    policy = sift_config.to_policy()
    return policy, sift_config.loss_based_sift_config.sift_config


# --------------------------------------------------------------------------- loss
class Loss:
    """The loss interface: ``loss(model, transformed_batch, original_batch)`` returns one loss
    per sample (a tensor of shape ``(B,)``; compute it with ``reduction="none"``).

    Subclass it and implement :meth:`loss`. Keep the criterion under another attribute name
    than ``loss`` (e.g. ``self.criterion``): an attribute named ``loss`` hides the method.

    Example:
        >>> import torch
        >>> class MSE(Loss):
        ...     def loss(self, model, transformed_batch, original_batch=None):
        ...         x, y = original_batch
        ...         return (model(x).squeeze(1) - y) ** 2
        >>> MSE().loss(torch.nn.Linear(2, 1), None, (torch.ones(3, 2), torch.zeros(3))).shape
        torch.Size([3])
    """

    def loss(
        self, model: torch.nn.Module, transformed_batch: Any, original_batch: Any = None
    ) -> torch.Tensor:
        """Returns the per-sample losses of a batch; subclasses implement it."""
        raise LossImplementationNotProvidedException(
            f"{type(self).__name__} does not implement loss(model, transformed_batch, "
            "original_batch); define it in your Loss subclass, returning one loss per sample."
        )


def _check_loss_impl(loss_impl: Any) -> None:
    if loss_impl is None:
        raise LossImplementationNotProvidedException(
            "Expected `loss_impl` to be a Loss whose loss(model, transformed_batch, "
            "original_batch) returns one loss per sample, but got None. Subclass "
            "smartsift.compat.sagemaker.Loss and pass an instance: loss_impl=MyLoss()."
        )
    method = getattr(loss_impl, "loss", None)
    if isinstance(method, torch.nn.Module):
        raise LossImplementationNotProvidedException(
            f"Expected `loss_impl.loss` to be a method, but {type(loss_impl).__name__} sets the "
            f"attribute `loss` to {type(method).__name__}, which hides the method. Store the "
            "criterion under another name, e.g. self.criterion = torch.nn.CrossEntropyLoss("
            "reduction='none'), and call it from loss()."
        )
    if not callable(method):
        raise LossImplementationNotProvidedException(
            "Expected `loss_impl` to have a method loss(model, transformed_batch, "
            f"original_batch), but got {type(loss_impl).__name__}. Subclass "
            "smartsift.compat.sagemaker.Loss."
        )
    if getattr(method, "__func__", None) is Loss.loss:
        raise LossImplementationNotProvidedException(
            f"Expected `loss_impl` to implement loss(), but {type(loss_impl).__name__} inherits "
            "the abstract one from Loss; define loss(self, model, transformed_batch, "
            "original_batch) returning one loss per sample."
        )


# --------------------------------------------------------------------------- batches
class SiftingBatch:
    """A batch data type that can be sifted and accumulated.

    Subclasses implement ``__len__``, :meth:`to_sliceable` (a structure smartsift slices by
    sample: tensors, NumPy arrays, dicts, tuples, lists) and :meth:`from_sliceable` (the batch
    rebuilt from such a structure holding only the kept samples). :class:`ListBatch` and
    :class:`TensorBatch` are ready-made.

    Example:
        >>> import torch
        >>> batch = TensorBatch(torch.arange(4), torch.tensor([0, 1, 0, 1]))
        >>> len(TensorBatch.from_sliceable(batch.to_sliceable()))
        4
    """

    _registry: ClassVar[dict[str, type[SiftingBatch]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        SiftingBatch._registry[_type_name(cls)] = cls

    def __len__(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement __len__.")

    def to_sliceable(self) -> Any:
        """Returns the batch as a structure smartsift slices along dimension 0."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement to_sliceable(), returning tensors, dicts, "
            "tuples or lists with the samples along dimension 0."
        )

    @classmethod
    def from_sliceable(cls, data: Any) -> SiftingBatch:
        """Returns the batch rebuilt from :meth:`to_sliceable`'s structure of kept samples."""
        raise NotImplementedError(f"{cls.__name__} must implement from_sliceable(data).")


def _type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _pack(items: list[Any]) -> Any:
    """A per-sample list as smartsift slices it: plain values stay a list, anything else
    (tensors, nested lists) goes into a 1-D NumPy object array, one item per element."""
    if items and all(isinstance(item, _ATOMS) for item in items):
        return list(items)
    return np.fromiter(items, dtype=object, count=len(items))


def _unpack(data: Any) -> list[Any]:
    return list(data)


class ListBatch(SiftingBatch):
    """A batch as lists with one item per sample: ``inputs`` and, optionally, ``labels``.

    Items may be anything (numbers, strings, tensors, nested lists); they are kept as objects,
    never converted.

    Args:
        inputs: one input per sample.
        labels: one label per sample, or None.

    Raises:
        UnsupportedDataFormatException: if ``inputs`` and ``labels`` differ in length.

    Example:
        >>> batch = ListBatch([[1, 2], [3, 4], [5, 6]], [0, 1, 1])
        >>> len(batch), ListBatch.from_sliceable(batch.to_sliceable()).inputs
        (3, [[1, 2], [3, 4], [5, 6]])
    """

    def __init__(self, inputs: Any, labels: Any = None) -> None:
        self.inputs = list(inputs)
        self.labels = None if labels is None else list(labels)
        if self.labels is not None and len(self.labels) != len(self.inputs):
            raise UnsupportedDataFormatException(
                f"Expected one label per input in ListBatch, but got {len(self.inputs)} inputs "
                f"and {len(self.labels)} labels."
            )

    def __len__(self) -> int:
        return len(self.inputs)

    def __repr__(self) -> str:
        labels = "" if self.labels is None else f", labels=<{len(self.labels)} items>"
        return f"ListBatch(inputs=<{len(self.inputs)} items>{labels})"

    def to_sliceable(self) -> Any:
        """``{"inputs": ..., "labels": ...}`` with each list packed for slicing."""
        labels = None if self.labels is None else _pack(self.labels)
        return {"inputs": _pack(self.inputs), "labels": labels}

    @classmethod
    def from_sliceable(cls, data: Any) -> ListBatch:
        """Returns the ``ListBatch`` of the kept samples."""
        labels = data["labels"]
        return cls(_unpack(data["inputs"]), None if labels is None else _unpack(labels))


class TensorBatch(SiftingBatch):
    """A batch as tensors with the samples along dimension 0: ``inputs`` and, optionally,
    ``labels`` (each may also be a tuple, list or dict of such tensors).

    Args:
        inputs: the inputs, shape ``(B, ...)``.
        labels: the labels, shape ``(B, ...)``, or None.

    Example:
        >>> import torch
        >>> batch = TensorBatch(torch.zeros(5, 3), torch.arange(5))
        >>> len(batch), TensorBatch.from_sliceable(batch.to_sliceable()).labels.tolist()
        (5, [0, 1, 2, 3, 4])
    """

    def __init__(self, inputs: Any, labels: Any = None) -> None:
        self.inputs = inputs
        self.labels = labels

    def __len__(self) -> int:
        return batch_size_of(self.inputs)

    def __repr__(self) -> str:
        return f"TensorBatch(<{len(self)} samples>, labels={self.labels is not None})"

    def to_sliceable(self) -> Any:
        """``{"inputs": inputs, "labels": labels}``."""
        return {"inputs": self.inputs, "labels": self.labels}

    @classmethod
    def from_sliceable(cls, data: Any) -> TensorBatch:
        """Returns the ``TensorBatch`` of the kept samples."""
        return cls(data["inputs"], data["labels"])


class SiftingBatchTransform:
    """Turns a batch that cannot be sifted as it is into a :class:`SiftingBatch`, and back.

    Subclasses implement ``transform(batch)`` → a ``SiftingBatch`` (usually a
    :class:`ListBatch` or :class:`TensorBatch`) and ``reverse_transform(sifting_batch)`` → the
    batch type the training step expects.

    Example:
        >>> import torch
        >>> class PairTransform(SiftingBatchTransform):
        ...     def transform(self, batch):
        ...         return TensorBatch(batch["x"], batch["y"])
        ...     def reverse_transform(self, tensor_batch):
        ...         return {"x": tensor_batch.inputs, "y": tensor_batch.labels}
        >>> t = PairTransform()
        >>> sifting_batch = t.transform({"x": torch.ones(2, 3), "y": torch.zeros(2)})
        >>> t.reverse_transform(sifting_batch)["x"].shape
        torch.Size([2, 3])
    """

    def transform(self, batch: Any) -> SiftingBatch:
        """Returns the :class:`SiftingBatch` form of ``batch``."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement transform(batch) -> SiftingBatch."
        )

    def reverse_transform(self, sifting_batch: Any) -> Any:
        """Returns the training batch rebuilt from a :class:`SiftingBatch` of kept samples."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement reverse_transform(sifting_batch)."
        )


def _check_transform(batch_transforms: Any) -> None:
    if batch_transforms is None:
        return
    for name in ("transform", "reverse_transform"):
        method = getattr(batch_transforms, name, None)
        inherited = getattr(method, "__func__", None) is getattr(SiftingBatchTransform, name)
        if not callable(method) or inherited:
            raise SiftConfigValidationException(
                f"Expected `batch_transforms` to implement transform(batch) and "
                f"reverse_transform(sifting_batch), but {type(batch_transforms).__name__} "
                f"lacks {name}(). Subclass SiftingBatchTransform and define both, or pass "
                "batch_transforms=None for tensors, tuples, lists and dicts."
            )


class _TransformAdapter:
    """A smartsift ``BatchTransform`` over a reference ``SiftingBatchTransform``.

    The sliceable form of a ``SiftingBatch`` is ``{_TAG: class name, "fields":
    batch.to_sliceable()}``; other results of ``transform`` pass through as they are. The last
    raw batch and its ``SiftingBatch`` are remembered so that the loss gets the same object
    without transforming the batch twice.
    """

    def __init__(self, user: Any) -> None:
        self.user = user
        self._last: tuple[Any, Any] | None = None

    def transform(self, batch: Any) -> Any:
        sifting = self.user.transform(batch)
        self._last = (batch, sifting)
        if isinstance(sifting, SiftingBatch):
            return {_TAG: _type_name(type(sifting)), "fields": sifting.to_sliceable()}
        return sifting

    def sifting_batch(self, batch: Any) -> Any:
        last, self._last = self._last, None
        if last is not None and last[0] is batch:
            return last[1]
        return self.user.transform(batch)

    def reverse_transform(self, data: Any) -> Any:
        if isinstance(data, Mapping) and _TAG in data:
            cls = SiftingBatch._registry.get(data[_TAG])
            if cls is None:
                raise UnsupportedDataFormatException(
                    f"Cannot rebuild a SiftingBatch of class {data[_TAG]}: it is not defined in "
                    "this process. Import the module that defines it before iterating."
                )
            data = cls.from_sliceable(data["fields"])
        return self.user.reverse_transform(data)


class _LossAdapter:
    """smartsift's ``loss_fn(model, batch)`` over a reference ``Loss``."""

    def __init__(self, loss_impl: Any, transform: _TransformAdapter | None) -> None:
        self.loss_impl = loss_impl
        self.transform = transform

    def __call__(self, model: torch.nn.Module, batch: Any) -> torch.Tensor:
        transform = self.transform
        transformed = transform.sifting_batch(batch) if transform is not None else batch
        try:
            losses: torch.Tensor = self.loss_impl.loss(model, transformed, batch)
        except NotImplementedError as err:
            raise LossImplementationNotProvidedException(
                f"{type(self.loss_impl).__name__}.loss is not implemented ({err}); define "
                "loss(self, model, transformed_batch, original_batch) returning one loss per "
                "sample."
            ) from err
        return losses


# --------------------------------------------------------------------------- the loader
_SET_BY_CONFIG = {  # SiftingDataLoader's arguments this module sets, and how to give them
    "dataloader": "pass the loader as `orig_dataloader`",
    "loss_fn": "give the loss through `loss_impl`",
    "policy": "give the policy through `sift_config`",
    "sift_delay": "set it in the SiftingBaseConfig of `sift_config`",
    "repeat_delay_per_epoch": "set it in the SiftingBaseConfig of `sift_config`",
    "transform": "give the transform through `batch_transforms`",
}


class SiftingDataloader:
    """Wraps a data loader; yields refined batches of the samples worth training on.

    A thin shell over :class:`smartsift.SiftingDataLoader` (``.sifting_loader``) with the
    reference's signature; ``docs/compat.md`` has the mapping and the differences.

    Args:
        sift_config: a :class:`RelativeProbabilisticSiftConfig` (or a dict of its fields, or a
            :class:`ThresholdSiftConfig`).
        orig_dataloader: the data loader to wrap (any re-iterable of batches).
        batch_transforms: a :class:`SiftingBatchTransform` for batches smartsift cannot slice
            as they are; None for tensors, tuples, lists and dicts.
        model: the model being trained.
        loss_impl: a :class:`Loss` whose ``loss(model, transformed_batch, original_batch)``
            returns one loss per sample.
        log_batch_data: log the loader's stats after every raw batch (``smartsift`` logger,
            INFO level).
        **smartsift_kwargs: further keyword arguments of :class:`smartsift.SiftingDataLoader`,
            e.g. ``seed``, ``device``, ``batch_size``, ``drop_last``, ``nonfinite``.

    Raises:
        SiftConfigValidationException: if a setting or argument is invalid.
        LossImplementationNotProvidedException: if ``loss_impl`` is missing or unusable.
    """

    def __init__(
        self,
        sift_config: Any,
        orig_dataloader: Any,
        batch_transforms: Any = None,
        model: Any = None,
        loss_impl: Any = None,
        log_batch_data: bool = False,
        **smartsift_kwargs: Any,
    ) -> None:
        policy, base = _resolve_sift_config(sift_config)
        _check_bool("log_batch_data", log_batch_data)
        _check_loss_impl(loss_impl)
        _check_transform(batch_transforms)
        with _config_errors():
            smartsift_kwargs = check_loader_kwargs(
                smartsift_kwargs, caller="SiftingDataloader", reserved=_SET_BY_CONFIG
            )
        transform = _TransformAdapter(batch_transforms) if batch_transforms is not None else None
        smartsift_kwargs.setdefault("log_interval", 1 if log_batch_data else None)
        # The reference API takes no seed: a script that seeds torch gets the same sifting.
        smartsift_kwargs.setdefault("seed", torch.initial_seed() % 2**62)
        # The loader checks `orig_dataloader`, `model` and the keyword arguments.
        with _config_errors(_REFERENCE_NAMES):
            self.sifting_loader = SiftingDataLoader(
                orig_dataloader,
                model,
                _LossAdapter(loss_impl, transform),
                policy,
                sift_delay=int(base.sift_delay),
                repeat_delay_per_epoch=bool(base.repeat_delay_per_epoch),
                transform=transform,
                **smartsift_kwargs,
            )
        self.sift_config = sift_config
        self.orig_dataloader = orig_dataloader
        self.batch_transforms = batch_transforms
        self.model = model
        self.loss_impl = loss_impl
        self.log_batch_data = log_batch_data

    def __iter__(self) -> Iterator[Any]:
        return _reference_errors(iter(self.sifting_loader))

    def __len__(self) -> int:
        """An estimate of the refined batches per epoch (see ``SiftingDataLoader.__len__``)."""
        return len(self.sifting_loader)

    @property
    def stats(self) -> SiftStats:
        """Samples seen, kept, sifted, trained; steps; keep rates; seconds per stage."""
        return self.sifting_loader.stats

    @property
    def batch_size(self) -> int | None:
        """The refined batch size."""
        return self.sifting_loader.batch_size

    @property
    def dataset(self) -> Any:
        """The wrapped loader's dataset."""
        return self.sifting_loader.dataset

    @property
    def sampler(self) -> Any:
        """The wrapped loader's sampler."""
        return self.sifting_loader.sampler

    def global_stats(self) -> SiftStats:
        """Stats summed over DDP ranks (a collective: call it on every rank)."""
        return self.sifting_loader.global_stats()

    def set_epoch(self, epoch: int) -> None:
        """Forwards ``epoch`` to the wrapped loader's sampler (a ``DistributedSampler``)."""
        self.sifting_loader.set_epoch(epoch)

    def state_dict(self) -> dict[str, Any]:
        """The loader's checkpoint (see ``SiftingDataLoader.state_dict``)."""
        return self.sifting_loader.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores a checkpoint from :meth:`state_dict`."""
        self.sifting_loader.load_state_dict(state)


def _reference_errors(batches: Iterator[Any]) -> Iterator[Any]:
    """Yields ``batches``; smartsift's batch and loss errors come out as the reference's."""
    try:
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            except (UnsupportedBatchError, LossFunctionError) as err:
                compat = _as_reference_error(err)
                if compat is err:
                    raise
                raise compat from err
            yield batch
    finally:
        close = getattr(batches, "close", None)
        if callable(close):
            close()


def _as_reference_error(err: Exception) -> Exception:
    if isinstance(err, (UnsupportedDataFormatException, LossImplementationNotProvidedException)):
        return err
    if isinstance(err, UnsupportedBatchError):
        compat: Exception = UnsupportedDataFormatException(
            f"{err} (With the reference API: pass batch_transforms a SiftingBatchTransform.)"
        )
    else:
        compat = LossImplementationNotProvidedException(
            f"{err} (With the reference API: fix loss_impl.loss.)"
        )
    for note in getattr(err, "__notes__", []):
        if hasattr(compat, "add_note"):  # Python 3.11+
            compat.add_note(note)
    return compat
