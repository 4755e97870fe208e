"""Slicing and concatenating nested batches by sample.

A batch is any nesting of tensors, NumPy arrays, dicts (any ``Mapping``), tuples, named tuples
and lists. Tensors and arrays with at least one dimension are per-sample along dimension 0.
A list or tuple whose items are all plain values (``str``, ``bytes``, numbers, ``None``) is a
per-sample sequence, as ``default_collate`` builds for string fields (a list) and for per-sample
lists of strings (a list of tuples); other lists and tuples, and named tuples, are structure.
Scalars (0-d tensors, plain values) are metadata and pass through unchanged.

Batches that do not fit this model are handled by a :class:`BatchTransform`.

Example:
    >>> import torch
    >>> batch = {"x": torch.arange(4), "name": ["a", "b", "c", "d"], "lr": 0.1}
    >>> picked = select(batch, torch.tensor([1, 3]))
    >>> picked["x"].tolist(), picked["name"], picked["lr"]
    ([1, 3], ['b', 'd'], 0.1)
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch

__all__ = [
    "BatchTransform",
    "IdKey",
    "UnsupportedBatchError",
    "batch_size_of",
    "concat",
    "container_types",
    "inspect_batch",
    "is_namedtuple",
    "is_sample_sequence",
    "narrow",
    "per_sample_ints",
    "rebuild_mapping",
    "rebuild_sequence",
    "restore_types",
    "select",
    "signature",
    "to_device",
    "to_plain",
]

_ATOMS = (str, bytes, int, float, bool, type(None))

IdKey = str | int | tuple[str | int, ...]
"""Where a batch holds a per-sample entry: a dict key, a tuple position, or a path of those."""


class UnsupportedBatchError(TypeError):
    """A batch holds a value that smartsift cannot slice by sample."""


@runtime_checkable
class BatchTransform(Protocol):
    """Turns a batch that cannot be sliced into one that can, and back.

    ``transform`` maps a raw batch to a sliceable structure (tensors, dicts, tuples, lists) whose
    per-sample entries have the batch size along dimension 0; ``reverse_transform`` maps a
    sliceable structure of kept samples back to the batch type the training step expects.

    Example:
        >>> import torch
        >>> class Pair:
        ...     def __init__(self, x, y):
        ...         self.x, self.y = x, y
        >>> class PairTransform:
        ...     def transform(self, batch):
        ...         return {"x": batch.x, "y": batch.y}
        ...     def reverse_transform(self, data):
        ...         return Pair(data["x"], data["y"])
        >>> isinstance(PairTransform(), BatchTransform)
        True
        >>> t = PairTransform()
        >>> t.reverse_transform(select(t.transform(Pair(torch.arange(3), torch.ones(3))),
        ...                            torch.tensor([2]))).x
        tensor([2])
    """

    def transform(self, batch: Any) -> Any:
        """Returns the sliceable form of ``batch``."""
        ...

    def reverse_transform(self, data: Any) -> Any:
        """Returns the batch rebuilt from the sliceable form ``data``."""
        ...


def is_namedtuple(obj: Any) -> bool:
    """Whether ``obj`` is a named tuple (a tuple with ``_fields``)."""
    return isinstance(obj, tuple) and hasattr(obj, "_fields")


def is_sample_sequence(obj: Any) -> bool:
    """Whether ``obj`` is a non-empty list or tuple of plain values, one per sample (e.g. the
    strings of a batch of texts).

    Example:
        >>> is_sample_sequence(["a", "b"]), is_sample_sequence([[1], [2]])
        (True, False)
    """
    return (
        isinstance(obj, (list, tuple))
        and not is_namedtuple(obj)
        and len(obj) > 0
        and all(isinstance(item, _ATOMS) for item in obj)
    )


def rebuild_mapping(template: Mapping[Any, Any], items: dict[Any, Any]) -> Any:
    """``items`` in the mapping type of ``template`` (a plain dict if that type cannot be built
    from one)."""
    if type(template) is dict:
        return items
    try:
        return type(template)(items)  # type: ignore[call-arg]
    except Exception:  # a Mapping type that cannot be built from a dict
        return items


def rebuild_sequence(template: Sequence[Any], items: list[Any]) -> Any:
    """``items`` in the sequence type of ``template`` (named tuples and tuple subclasses
    included).

    Example:
        >>> rebuild_sequence((1, 2), [3, 4])
        (3, 4)
    """
    if is_namedtuple(template):
        return type(template)(*items)
    if isinstance(template, tuple):
        return tuple(items) if type(template) is tuple else type(template)(items)
    return items


_DTYPE_NAMES: dict[Any, str] = {}


def _dtype_name(dtype: Any) -> str:
    # "float32" for torch.float32 and numpy's float32 alike: arrays join CPU tensors.
    name = _DTYPE_NAMES.get(dtype)
    if name is None:
        name = _DTYPE_NAMES[dtype] = str(dtype).removeprefix("torch.")
    return name


def _walk(batch: Any, path: str, out: list[tuple[str, int]], layout: list[Any]) -> None:
    """Collects the per-sample entries' sizes and the batch's layout (see :func:`signature`)."""
    if isinstance(batch, torch.Tensor):
        if batch.ndim > 0:
            out.append((path, batch.shape[0]))
            layout.append((path, batch.shape[1:], _dtype_name(batch.dtype), batch.device.type))
    elif isinstance(batch, np.ndarray):
        if batch.ndim > 0:
            out.append((path, batch.shape[0]))
            layout.append((path, batch.shape[1:], _dtype_name(batch.dtype), "cpu"))
    elif isinstance(batch, Mapping):
        for key, value in batch.items():
            _walk(value, f"{path}[{key!r}]", out, layout)
    elif is_sample_sequence(batch):
        out.append((path, len(batch)))
    elif isinstance(batch, (list, tuple)):
        layout.append((path, len(batch)))
        for i, value in enumerate(batch):
            _walk(value, f"{path}[{i}]", out, layout)
    elif not isinstance(batch, _ATOMS):
        raise UnsupportedBatchError(
            f"Cannot slice a batch entry of type {type(batch).__name__} at batch{path}. "
            "smartsift slices tensors, NumPy arrays, dicts, tuples, named tuples and lists "
            "automatically; for other types pass `transform=` a BatchTransform whose "
            "transform(batch) returns a sliceable structure and whose reverse_transform(data) "
            "rebuilds your batch."
        )


def inspect_batch(batch: Any) -> tuple[int, tuple[Any, ...]]:
    """Returns the number of samples in ``batch`` and its :func:`signature`, in one walk.

    Raises:
        UnsupportedBatchError: if the batch holds a type that cannot be sliced, or holds no
            per-sample entry at all.
        ValueError: if per-sample entries disagree on the number of samples.

    Example:
        >>> import torch
        >>> inspect_batch((torch.zeros(8, 3), torch.zeros(8)))[0]
        8
    """
    sizes: list[tuple[str, int]] = []
    layout: list[Any] = []
    _walk(batch, "", sizes, layout)
    if not sizes:
        raise UnsupportedBatchError(
            f"The batch (type {type(batch).__name__}) holds no per-sample tensor, array or list, "
            "so smartsift cannot tell its samples apart. Pass `transform=` a BatchTransform "
            "that returns a sliceable structure."
        )
    first_path, n = sizes[0]
    for path, size in sizes[1:]:
        if size != n:
            raise ValueError(
                f"Per-sample entries of one batch have different lengths: batch{first_path or ''} "
                f"has {n} samples but batch{path} has {size}. Every tensor with a batch "
                "dimension must have the same size along dimension 0; wrap per-batch values "
                "that are not per-sample in a 0-d tensor or a plain Python value."
            )
    return int(n), tuple(layout)


def batch_size_of(batch: Any) -> int:
    """Returns the number of samples in ``batch`` (see :func:`inspect_batch` for the errors).

    Example:
        >>> import torch
        >>> batch_size_of((torch.zeros(8, 3), torch.zeros(8)))
        8
    """
    return inspect_batch(batch)[0]


def select(batch: Any, index: torch.Tensor) -> Any:
    """Returns the samples of ``batch`` at ``index`` (a 1-D int64 CPU tensor), in that order."""
    cache: dict[torch.device, torch.Tensor] = {}
    index_np: list[np.ndarray] = []
    index_list: list[list[int]] = []

    def on(device: torch.device) -> torch.Tensor:
        idx = cache.get(device)
        if idx is None:
            idx = cache[device] = index.to(device, non_blocking=True)
        return idx

    def go(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.index_select(0, on(obj.device)) if obj.ndim > 0 else obj
        kind = type(obj)
        if (kind is tuple or kind is list) and not isinstance(obj[0] if obj else 0, _ATOMS):
            return kind(go(v) for v in obj)  # the common case: a plain tuple/list of tensors
        if kind is dict:
            return {k: go(v) for k, v in obj.items()}
        if isinstance(obj, np.ndarray):
            if obj.ndim == 0:
                return obj
            if not index_np:
                index_np.append(index.numpy())
            return obj[index_np[0]]
        if isinstance(obj, Mapping):
            return rebuild_mapping(obj, {k: go(v) for k, v in obj.items()})
        if is_sample_sequence(obj):
            if not index_list:
                index_list.append(index.tolist())
            picked = [obj[i] for i in index_list[0]]
            return tuple(picked) if isinstance(obj, tuple) else picked
        if isinstance(obj, (list, tuple)):
            return rebuild_sequence(obj, [go(v) for v in obj])
        return obj

    return go(batch)


def narrow(batch: Any, start: int, length: int) -> Any:
    """Returns samples ``start`` to ``start + length`` of ``batch``; tensors are views."""

    def go(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor | np.ndarray):
            return obj[start : start + length] if obj.ndim > 0 else obj
        kind = type(obj)
        if (kind is tuple or kind is list) and not isinstance(obj[0] if obj else 0, _ATOMS):
            return kind(go(v) for v in obj)
        if kind is dict:
            return {k: go(v) for k, v in obj.items()}
        if isinstance(obj, Mapping):
            return rebuild_mapping(obj, {k: go(v) for k, v in obj.items()})
        if is_sample_sequence(obj):
            return obj[start : start + length]
        if isinstance(obj, (list, tuple)):
            return rebuild_sequence(obj, [go(v) for v in obj])
        return obj

    return go(batch)


def concat(pieces: Sequence[Any]) -> Any:
    """Joins batches of one structure along the sample dimension.

    Container types and metadata are taken from the last piece, so pieces restored from a
    checkpoint as plain containers regain the types of fresh batches.

    Raises:
        ValueError: if the pieces' structures or trailing shapes differ.
    """
    if len(pieces) == 1:
        return pieces[0]
    template = pieces[-1]

    def go(parts: list[Any], tmpl: Any, path: str) -> Any:
        if isinstance(tmpl, torch.Tensor):
            if tmpl.ndim == 0:
                return tmpl
            try:
                return torch.cat(parts, dim=0)
            except (RuntimeError, TypeError) as err:
                shapes = [tuple(p.shape) if isinstance(p, torch.Tensor) else type(p) for p in parts]
                raise ValueError(
                    f"Cannot join kept samples of batch{path} from different raw batches: shapes "
                    f"{shapes}. Refined batches mix samples of several raw batches, so per-sample "
                    "tensors need the same trailing shape in every batch (pad sequences to a "
                    "fixed length, or pass a BatchTransform that does)."
                ) from err
        if isinstance(tmpl, np.ndarray):
            return tmpl if tmpl.ndim == 0 else np.concatenate(parts, axis=0)
        if isinstance(tmpl, Mapping):
            return rebuild_mapping(
                tmpl, {k: go([p[k] for p in parts], v, f"{path}[{k!r}]") for k, v in tmpl.items()}
            )
        if is_sample_sequence(tmpl):
            joined = [item for p in parts for item in p]
            return tuple(joined) if isinstance(tmpl, tuple) else joined
        if isinstance(tmpl, (list, tuple)):
            if any(len(p) != len(tmpl) for p in parts):
                raise ValueError(f"Batches differ in structure at batch{path}.")
            return rebuild_sequence(
                tmpl, [go([p[i] for p in parts], v, f"{path}[{i}]") for i, v in enumerate(tmpl)]
            )
        return tmpl

    return go(list(pieces), template, "")


def signature(batch: Any) -> tuple[Any, ...]:
    """Returns what must match for two batches' samples to be joined: structure, trailing
    shapes, dtypes and devices of the per-sample entries.

    Example:
        >>> signature((torch.zeros(4, 3), torch.zeros(4))) == signature((torch.ones(2, 3),
        ...                                                              torch.ones(2)))
        True
        >>> signature(torch.zeros(4, 3)) == signature(torch.zeros(4, 5))
        False
    """
    return inspect_batch(batch)[1]


def to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """Moves every tensor of ``batch`` to ``device``; other values are returned as they are."""

    def go(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.to(device, non_blocking=non_blocking)
        if isinstance(obj, Mapping):
            return rebuild_mapping(obj, {k: go(v) for k, v in obj.items()})
        if isinstance(obj, (list, tuple)) and not is_sample_sequence(obj):
            return rebuild_sequence(obj, [go(v) for v in obj])
        return obj

    return go(batch)


def to_plain(batch: Any) -> Any:
    """Returns ``batch`` with CPU tensors and plain ``dict``/``list``/``tuple`` containers.

    The result loads with ``torch.load(..., weights_only=True)``.
    """

    def go(obj: Any) -> Any:
        if isinstance(obj, torch.Tensor):
            return obj.detach().cpu()
        if isinstance(obj, np.ndarray):
            return torch.from_numpy(np.ascontiguousarray(obj)) if obj.ndim > 0 else obj.item()
        if isinstance(obj, Mapping):
            return {k: go(v) for k, v in obj.items()}
        if isinstance(obj, tuple):
            return tuple(go(v) for v in obj)
        if isinstance(obj, list):
            return [go(v) for v in obj]
        return obj

    return go(batch)


def _type_name(kind: type) -> str:
    return f"{kind.__module__}:{kind.__qualname__}"


def container_types(batch: Any) -> Any:
    """Returns the non-plain container types of ``batch`` as a nest of plain values.

    Named tuples, tuple subclasses and ``Mapping`` types other than ``dict`` are named by
    ``"module:qualname"``; plain containers and leaves give ``None``. Saved beside a batch made
    plain by :func:`to_plain`, it lets :func:`restore_types` give the batch its types back.

    Example:
        >>> from collections import OrderedDict
        >>> container_types({"p": OrderedDict(a=1), "z": [3]})
        ['', {'p': ['collections:OrderedDict', {'a': None}], 'z': None}]
    """

    def go(obj: Any) -> Any:
        if isinstance(obj, Mapping):
            name = "" if type(obj) is dict else _type_name(type(obj))
            return [name, {k: go(v) for k, v in obj.items()}]
        if isinstance(obj, (list, tuple)) and not is_sample_sequence(obj):
            kind = type(obj)
            if kind in (list, tuple):
                children = [go(v) for v in obj]
                return None if all(c is None for c in children) else ["", children]
            return [_type_name(kind), [go(v) for v in obj]]
        return None

    return go(batch)


def _resolve(name: str) -> type | None:
    """The class ``"module:qualname"`` if its module is already imported (nothing is imported)."""
    module_name, _, qualname = name.partition(":")
    obj: Any = sys.modules.get(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
    return obj if isinstance(obj, type) else None


def restore_types(batch: Any, types: Any) -> Any:
    """Gives a plain ``batch`` back the container types recorded by :func:`container_types`.

    Only classes whose module is already imported are used (a checkpoint never causes an
    import); a class that cannot be found leaves the plain container in place.

    Example:
        >>> from collections import OrderedDict
        >>> restore_types({"a": 1}, container_types(OrderedDict(a=1)))
        OrderedDict([('a', 1)])
    """
    if types is None:
        return batch
    name, children = types
    if isinstance(batch, Mapping) and isinstance(children, Mapping):
        items = {k: restore_types(v, children.get(k)) for k, v in batch.items()}
        kind = _resolve(name) if name else None
        if kind is not None and issubclass(kind, Mapping):
            try:
                return cast(Any, kind)(items)
            except Exception:  # a Mapping type that cannot be built from a dict
                return items
        return items
    if isinstance(batch, (list, tuple)) and isinstance(children, list):
        items_list = [restore_types(v, t) for v, t in zip(batch, children, strict=False)]
        kind = _resolve(name) if name else None
        if kind is not None and issubclass(kind, tuple):
            return kind(*items_list) if hasattr(kind, "_fields") else kind(items_list)
        return tuple(items_list) if isinstance(batch, tuple) else items_list
    return batch


def _has_entry(batch: Any, part: str | int) -> bool:
    """Whether ``batch[part]`` is a dict entry or a tuple/list position (never tensor indexing)."""
    if isinstance(batch, Mapping):
        return part in batch
    if isinstance(batch, (list, tuple)):
        return isinstance(part, int) and -len(batch) <= part < len(batch)
    return False


def per_sample_ints(
    batch: Any, key: IdKey, size: int, name: str, noun: str = "integers"
) -> np.ndarray:
    """The ``size`` integers held in ``batch[key]`` (a path for nested batches), as int64.

    Args:
        batch: the batch (in sliceable form).
        key: a dict key, a tuple/list position, or a tuple of those for a nested entry.
        size: the batch's number of samples.
        name: how errors name the setting, e.g. ``"SiftAudit(id_key=0)"``.
        noun: what the integers are, for errors.

    Raises:
        ValueError: if the entry is missing or does not hold one integer per sample.

    Example:
        >>> per_sample_ints({"meta": {"id": [4, 5]}}, ("meta", "id"), 2, "id_key").tolist()
        [4, 5]
    """
    value = batch
    for part in key if isinstance(key, tuple) else (key,):
        if not _has_entry(value, part):
            raise ValueError(
                f"{name} found no entry {key!r} in a batch of type {type(batch).__name__}. "
                "Put it in the batch, e.g. by wrapping the dataset in smartsift.IndexedDataset "
                "(ids at position 0 of tuple samples, key 'index' of dict samples), or point the "
                "setting at the entry that holds it."
            )
        value = value[part]
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    out = np.asarray(value)
    if out.shape != (size,) or not np.issubdtype(out.dtype, np.integer):
        raise ValueError(
            f"{name} expected {size} {noun}, one per sample, but got shape {out.shape} of "
            f"dtype {out.dtype}."
        )
    return out.astype(np.int64, copy=True)
