"""Joining samples of batches padded to different sequence lengths.

A collator that pads each batch to its own longest sequence gives raw batches whose tensors
differ in length, so their kept samples cannot be joined as they are. A :class:`Padding` spec
says which fields are padded sequences, with which pad value and along which dimension;
:func:`join_padded` then re-pads every piece of such a field to the longest along its sequence
dimension (on the spec's side) and joins them, optionally trimming the result to the longest
real length so that no step pays for padding none of its samples needs.
:func:`padded_layout` is :func:`~smartsift.batches.structure.signature` with the sequence
dimension of padded fields ignored, to check early that two raw batches can be joined.

Example:
    >>> import torch
    >>> spec = Padding.huggingface(pad_token_id=0, trim=True)
    >>> a = {"input_ids": torch.tensor([[5, 6, 7, 0]]),
    ...      "attention_mask": torch.tensor([[1, 1, 1, 0]]), "labels": torch.tensor([1])}
    >>> b = {"input_ids": torch.tensor([[8, 0]]),
    ...      "attention_mask": torch.tensor([[1, 0]]), "labels": torch.tensor([0])}
    >>> spec.layout(a) == spec.layout(b)
    True
    >>> spec.join([a, b])["input_ids"].tolist()
    [[5, 6, 7], [8, 0, 0]]
    >>> spec.join([a, b])["labels"].tolist()  # class labels (B,) have no sequence to pad
    [1, 0]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F

from smartsift.batches.structure import (
    is_namedtuple,
    is_sample_sequence,
    rebuild_mapping,
    rebuild_sequence,
    signature,
)

__all__ = ["PadField", "Padding", "join_padded", "padded_layout"]

Number = int | float | bool
Array = torch.Tensor | np.ndarray


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, bool))


@dataclass(frozen=True)
class PadField:
    """How one padded field is padded.

    Attributes:
        value: the pad value of this field (e.g. the pad token id, 0 for a mask, -100 for labels).
        dim: the sequence dimension; negative counts from the end. A tensor with no such
            dimension besides the sample dimension 0 (such as ``(B,)`` class labels under
            ``dim=-1``) is not padded.
        group: fields of one group are trimmed to one common width (inputs and their labels
            must stay aligned); fields of different groups are trimmed independently.

    Example:
        >>> PadField(-100, dim=-1).dim
        -1
    """

    value: Number = 0
    dim: int = 1
    group: str = "input"

    def __post_init__(self) -> None:
        if not _is_number(self.value):
            raise ValueError(
                f"Expected `value` to be the pad value, a number, but got {self.value!r}."
            )
        if not isinstance(self.dim, int) or isinstance(self.dim, bool) or self.dim == 0:
            raise ValueError(
                f"Expected `dim` to be a non-zero int (the sequence dimension; dimension 0 holds "
                f"the samples), but got {self.dim!r}."
            )
        if not isinstance(self.group, str) or not self.group:
            raise ValueError(f"Expected `group` to be a non-empty str, but got {self.group!r}.")


def _normalize_key(key: Any) -> str | tuple[Any, ...]:
    if isinstance(key, str):
        return key
    if isinstance(key, int) and not isinstance(key, bool):
        return (key,)
    if (
        isinstance(key, tuple)
        and key
        and all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in key)
    ):
        return key
    raise ValueError(
        "Expected each key of `fields` to be a field name (str, matched at any depth), a "
        f"position in a top-level tuple (int) or a path from the batch's root (a tuple of str "
        f"and int, e.g. ('inputs', 'input_ids')), but got {key!r}."
    )


@dataclass(frozen=True)
class Padding:
    """Which fields of a batch are padded sequences, and how to re-pad and trim them.

    Args:
        fields: per field, its pad value or a :class:`PadField`. A key is a field name (a dict
            key or a named tuple field, at any depth), a position in a top-level tuple (int),
            or a path from the batch's root (a tuple); a path wins over a name. A plain pad
            value pads along dimension 1.
        default_pad: pad value for every tensor not named in ``fields`` that has a dimension 1;
            ``None`` (default): such tensors are not padded and must have equal shapes.
        side: ``"right"`` or ``"left"``, where the pad values are (the tokenizer's
            ``padding_side``).
        trim: trim each group of fields to the longest real length in the joined batch. A
            position is cut only where every field of the group holds its pad value for every
            sample, so an attention mask (pad 0) keeps real tokens whose id equals the pad id.
        pad_to_multiple_of: round each padded field's width up to a multiple of this.

    Raises:
        ValueError: if a setting is invalid.

    Example:
        >>> spec = Padding({"tokens": 0, "labels": PadField(-100)}, side="left")
        >>> spec.field_for(("tokens",)), spec.field_for(("x",))
        (PadField(value=0, dim=1, group='input'), None)
    """

    fields: Mapping[Any, Number | PadField] | tuple[tuple[Any, PadField], ...] = ()
    default_pad: Number | None = None
    side: Literal["right", "left"] = "right"
    trim: bool = False
    pad_to_multiple_of: int | None = None
    _by_name: dict[str, PadField] = field(init=False, repr=False, compare=False, hash=False)
    _by_path: dict[tuple[Any, ...], PadField] = field(
        init=False, repr=False, compare=False, hash=False
    )

    def __post_init__(self) -> None:
        items = self.fields.items() if isinstance(self.fields, Mapping) else self.fields
        try:
            pairs = [(k, v) for k, v in items]
        except (TypeError, ValueError):
            raise ValueError(
                "Expected `fields` to be a mapping of field to pad value or PadField, e.g. "
                f"{{'input_ids': 0, 'labels': -100}}, but got {self.fields!r}."
            ) from None
        normalized: list[tuple[Any, PadField]] = []
        by_name: dict[str, PadField] = {}
        by_path: dict[tuple[Any, ...], PadField] = {}
        for key, spec in pairs:
            nkey = _normalize_key(key)
            if _is_number(spec):
                spec = PadField(spec)  # type: ignore[arg-type]
            elif not isinstance(spec, PadField):
                raise ValueError(
                    f"Expected the value of field {key!r} in `fields` to be a pad value (a "
                    f"number) or a PadField, but got {spec!r}."
                )
            normalized.append((nkey, spec))
            if isinstance(nkey, str):
                by_name[nkey] = spec
            else:
                by_path[nkey] = spec
        normalized.sort(key=lambda pair: repr(pair[0]))  # equal specs compare equal
        object.__setattr__(self, "fields", tuple(normalized))
        object.__setattr__(self, "_by_name", by_name)
        object.__setattr__(self, "_by_path", by_path)
        if self.default_pad is not None and not _is_number(self.default_pad):
            raise ValueError(
                f"Expected `default_pad` to be a number or None, but got {self.default_pad!r}."
            )
        if self.side not in ("right", "left"):
            raise ValueError(f"Expected `side` to be 'right' or 'left', but got {self.side!r}.")
        if not isinstance(self.trim, bool):
            raise ValueError(f"Expected `trim` to be a bool, but got {self.trim!r}.")
        m = self.pad_to_multiple_of
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise ValueError(
                f"Expected `pad_to_multiple_of` to be a positive int or None, but got {m!r}."
            )

    @classmethod
    def huggingface(
        cls,
        tokenizer: Any = None,
        *,
        pad_token_id: int | None = None,
        side: Literal["right", "left"] | None = None,
        label_pad_token_id: int = -100,
        seq2seq: bool = False,
        trim: bool = False,
        pad_to_multiple_of: int | None = None,
        default_pad: Number | None = None,
    ) -> Padding:
        """The spec for batches of Hugging Face padding collators.

        Covers ``DataCollatorWithPadding``, ``DataCollatorForLanguageModeling``,
        ``DataCollatorForTokenClassification``, ``DataCollatorForSeq2Seq`` and
        ``DataCollatorForMultipleChoice``: ``input_ids`` and ``decoder_input_ids`` get the pad
        id, ``attention_mask``, ``decoder_attention_mask`` and ``position_ids`` 0,
        ``token_type_ids`` the tokenizer's ``pad_token_type_id`` (0 without a tokenizer),
        ``special_tokens_mask`` 1, ``labels`` (and ``label``) ``label_pad_token_id``, all along
        the last dimension. ``(B,)`` class labels have no sequence dimension and are not
        padded.

        Args:
            tokenizer: a tokenizer, or any object with ``pad_token_id`` and ``padding_side``;
                read when ``pad_token_id`` or ``side`` is not given.
            pad_token_id: the pad id of ``input_ids``.
            side: ``"right"`` or ``"left"``; default: the tokenizer's, else ``"right"``.
            label_pad_token_id: the collator's pad value of labels.
            seq2seq: labels and decoder fields have their own length (encoder-decoder models),
                so they are trimmed apart from the inputs. Leave False for causal language
                models, whose labels are aligned with ``input_ids``.
            trim, pad_to_multiple_of, default_pad: as for :class:`Padding`.

        Example:
            >>> class Tok:
            ...     pad_token_id, padding_side = 3, "left"
            >>> spec = Padding.huggingface(Tok())
            >>> spec.side, spec.field_for(("input_ids",)).value, spec.field_for(("labels",)).value
            ('left', 3, -100)
        """
        if tokenizer is not None and (
            _is_number(tokenizer) or not hasattr(tokenizer, "pad_token_id")
        ):
            raise ValueError(
                "Expected `tokenizer` to be a tokenizer-like object with `pad_token_id` and "
                f"`padding_side`, but got {tokenizer!r}; pass a pad id as `pad_token_id=`."
            )
        if pad_token_id is None and tokenizer is not None:
            pad_token_id = tokenizer.pad_token_id
        if pad_token_id is None:
            raise ValueError(
                "Expected `pad_token_id` or a `tokenizer` with a pad token, but got neither. "
                "Pass `pad_token_id=` (a tokenizer without a pad token, such as GPT-2's, is "
                "usually given one with `tokenizer.pad_token = tokenizer.eos_token`)."
            )
        if side is None:
            side = getattr(tokenizer, "padding_side", "right") if tokenizer is not None else "right"
        type_pad = getattr(tokenizer, "pad_token_type_id", 0) if tokenizer is not None else 0
        if not isinstance(seq2seq, bool):
            raise ValueError(f"Expected `seq2seq` to be a bool, but got {seq2seq!r}.")
        target = "target" if seq2seq else "input"
        fields = {
            "input_ids": PadField(pad_token_id, dim=-1),
            "attention_mask": PadField(0, dim=-1),
            "token_type_ids": PadField(type_pad, dim=-1),
            "special_tokens_mask": PadField(1, dim=-1),
            "position_ids": PadField(0, dim=-1),
            "labels": PadField(label_pad_token_id, dim=-1, group=target),
            "label": PadField(label_pad_token_id, dim=-1, group=target),
            "decoder_input_ids": PadField(pad_token_id, dim=-1, group=target),
            "decoder_attention_mask": PadField(0, dim=-1, group=target),
        }
        return cls(
            fields,
            default_pad=default_pad,
            side=side,  # type: ignore[arg-type]
            trim=trim,
            pad_to_multiple_of=pad_to_multiple_of,
        )

    def field_for(self, path: tuple[Any, ...], name: Any = None) -> PadField | None:
        """Returns how the entry at ``path`` (keys from the batch's root) is padded, or None.

        ``name`` is the entry's field name when it is not the last key of ``path`` (a named
        tuple field, reached by position).
        """
        spec = self._by_path.get(path)
        if spec is not None:
            return spec
        if name is None and path and isinstance(path[-1], str):
            name = path[-1]
        if isinstance(name, str):
            spec = self._by_name.get(name)
            if spec is not None:
                return spec
        return None if self.default_pad is None else PadField(self.default_pad)

    def layout(self, batch: Any) -> tuple[Any, ...]:
        """Shortcut for :func:`padded_layout` with this spec."""
        return padded_layout(batch, self)

    def join(self, pieces: Sequence[Any]) -> Any:
        """Shortcut for :func:`join_padded` with this spec."""
        return join_padded(pieces, self)


def _seq_dim(x: Array, spec: PadField | None) -> int | None:
    """The dimension along which ``x`` is padded, or None when it is not padded."""
    if spec is None:
        return None
    d = spec.dim if spec.dim > 0 else x.ndim + spec.dim
    return d if 1 <= d < x.ndim else None


def _show(path: tuple[Any, ...]) -> str:
    return "batch" + "".join(f"[{k!r}]" for k in path)


def _children(obj: Any) -> Iterator[tuple[Any, Any, Any]]:
    """Yields (key, name, child) of a container; ``name`` is a named tuple's field name."""
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield k, None, v
    elif is_namedtuple(obj):
        for i, (n, v) in enumerate(zip(obj._fields, obj, strict=True)):
            yield i, n, v
    else:
        for i, v in enumerate(obj):
            yield i, None, v


def _is_structure(obj: Any) -> bool:
    return isinstance(obj, Mapping) or (
        isinstance(obj, (list, tuple)) and not is_sample_sequence(obj)
    )


def _rebuild(tmpl: Any, children: list[Any]) -> Any:
    if isinstance(tmpl, Mapping):
        return rebuild_mapping(tmpl, dict(zip(tmpl.keys(), children, strict=True)))
    return rebuild_sequence(tmpl, children)


def _take(x: Array, d: int, start: int, length: int) -> Any:
    if isinstance(x, torch.Tensor):
        return x.narrow(d, start, length)
    return x[(slice(None),) * d + (slice(start, start + length),)]


def padded_layout(batch: Any, spec: Padding) -> tuple[Any, ...]:
    """Returns the batch's :func:`~smartsift.batches.structure.signature` with the sequence
    dimension of its padded fields ignored (shown as 0): raw batches with equal layouts can be
    joined by :func:`join_padded`.

    Raises:
        UnsupportedBatchError: if the batch holds a type that cannot be sliced.

    Example:
        >>> spec = Padding({"ids": 0})
        >>> spec.layout({"ids": torch.zeros(2, 5)}) == spec.layout({"ids": torch.ones(3, 9)})
        True
        >>> spec.layout({"ids": torch.zeros(2, 5)}) == spec.layout({"ids": torch.zeros(2, 5, 1)})
        False
    """

    def go(obj: Any, path: tuple[Any, ...], name: Any) -> Any:
        if isinstance(obj, (torch.Tensor, np.ndarray)):
            d = _seq_dim(obj, spec.field_for(path, name))
            return obj if d is None else _take(obj, d, 0, 0)
        if _is_structure(obj):
            return _rebuild(obj, [go(v, (*path, k), n) for k, n, v in _children(obj)])
        return obj

    return signature(go(batch, (), None))


class _Leaf:
    """A per-sample entry of the template and the matching entries of every piece."""

    __slots__ = ("dim", "name", "parts", "path", "spec", "tmpl", "width")

    def __init__(self, path: tuple[Any, ...], name: Any, tmpl: Any, parts: list[Any]) -> None:
        self.path, self.name, self.tmpl, self.parts = path, name, tmpl, parts
        self.spec: PadField | None = None
        self.dim: int | None = None
        self.width = 0


def _collect(
    parts: list[Any], tmpl: Any, path: tuple[Any, ...], name: Any, out: list[_Leaf]
) -> None:
    """Collects the per-sample entries in the order :func:`_build` consumes them."""
    if isinstance(tmpl, (torch.Tensor, np.ndarray)):
        if tmpl.ndim > 0:
            if isinstance(tmpl, np.ndarray):  # a piece restored from a checkpoint holds tensors
                parts = [p.numpy(force=True) if isinstance(p, torch.Tensor) else p for p in parts]
            out.append(_Leaf(path, name, tmpl, parts))
    elif is_sample_sequence(tmpl):
        out.append(_Leaf(path, name, tmpl, parts))
    elif _is_structure(tmpl):
        for k, n, v in _children(tmpl):
            try:
                sub = [p[k] for p in parts]
            except (KeyError, IndexError, TypeError):
                raise ValueError(
                    f"Cannot join batches that differ in structure: {_show((*path, k))} is "
                    "missing from some of them."
                ) from None
            _collect(sub, v, (*path, k), n, out)
        if isinstance(tmpl, (list, tuple)) and any(len(p) != len(tmpl) for p in parts):
            raise ValueError(f"Cannot join batches that differ in structure at {_show(path)}.")


def _build(tmpl: Any, joined: Iterator[Any]) -> Any:
    if isinstance(tmpl, (torch.Tensor, np.ndarray)):
        return next(joined) if tmpl.ndim > 0 else tmpl
    if is_sample_sequence(tmpl):
        return next(joined)
    if _is_structure(tmpl):
        return _rebuild(tmpl, [_build(v, joined) for _, _, v in _children(tmpl)])
    return tmpl


def _check_parts(leaf: _Leaf) -> None:
    """Raises a clear error if the pieces of a tensor entry cannot be joined."""
    d, tmpl = leaf.dim, leaf.tmpl
    kind = type(tmpl) if isinstance(tmpl, np.ndarray) else torch.Tensor
    if not all(isinstance(p, kind) and p.ndim == tmpl.ndim for p in leaf.parts):
        raise ValueError(
            f"Cannot join batches that differ in structure at {_show(leaf.path)}: "
            f"{[type(p).__name__ + str(getattr(p, 'shape', '')) for p in leaf.parts]}."
        )
    shapes_ok = all(
        p.shape[i] == tmpl.shape[i] for p in leaf.parts for i in range(1, tmpl.ndim) if i != d
    )
    kinds_ok = all(
        p.dtype == tmpl.dtype and (not isinstance(p, torch.Tensor) or p.device == tmpl.device)
        for p in leaf.parts
    )
    if shapes_ok and kinds_ok:
        return
    what = [(tuple(p.shape), str(p.dtype)) for p in leaf.parts]
    where = _show(leaf.path)
    if d is not None or shapes_ok:
        raise ValueError(
            f"Cannot join {where} of batches with shapes and dtypes {what}: apart from the "
            "sample dimension 0"
            + (f" and the sequence dimension {d} of this padded field" if d is not None else "")
            + ", their shapes, dtypes and devices must match."
        )
    key = leaf.name if leaf.name is not None else leaf.path[-1] if leaf.path else None
    if isinstance(key, str):
        hint = repr(key)
    else:
        hint = repr(leaf.path[0]) if len(leaf.path) == 1 else repr(leaf.path)
    raise ValueError(
        f"Cannot join {where} of batches with shapes and dtypes {what}: it is not a padded "
        "field of the Padding spec, so its trailing shapes must match. If it is a padded "
        f"sequence, name it in the spec: Padding(fields={{{hint}: PAD_VALUE}}) pads along "
        f"dimension 1, or {{{hint}: PadField(PAD_VALUE, dim=...)}} along another; "
        "`default_pad=` pads every field not named."
    )


def _real_positions(x: Array, d: int, pad: Number) -> Array:
    """Which positions along ``d`` hold a value other than ``pad`` in some sample: ``(L,)``."""
    others = tuple(i for i in range(x.ndim) if i != d)
    if isinstance(x, torch.Tensor):
        return (
            (x != pad).any(dim=others) if x.numel() else x.new_zeros(x.shape[d], dtype=torch.bool)
        )
    return (x != pad).any(axis=others)


def _extents(positions: list[Array], side: str) -> list[int]:
    """The real length of each ``(L,)`` positions vector, counted from the side opposite the
    padding. Tensors are read with one transfer per device, not one per vector."""
    host: list[Any] = [p if isinstance(p, np.ndarray) else None for p in positions]
    by_device: dict[torch.device, list[int]] = {}
    for i, p in enumerate(positions):
        if isinstance(p, torch.Tensor):
            by_device.setdefault(p.device, []).append(i)
    for idx in by_device.values():
        vectors = [positions[i] for i in idx]
        flat = torch.cat(vectors).cpu().numpy()  # type: ignore[arg-type]
        bounds = np.cumsum([v.shape[0] for v in vectors])[:-1]
        for i, real in zip(idx, np.split(flat, bounds), strict=True):
            host[i] = real
    out = []
    for real in host:
        hits = np.flatnonzero(real)
        if hits.size == 0:
            out.append(0)
        else:
            out.append(int(hits[-1] + 1 if side == "right" else len(real) - hits[0]))
    return out


def _pad_join(leaf: _Leaf, side: str) -> Array:
    """Joins the pieces of a padded entry at ``leaf.width`` along its sequence dimension."""
    d, w, parts, tmpl = leaf.dim, leaf.width, leaf.parts, leaf.tmpl
    assert d is not None and leaf.spec is not None
    pad = leaf.spec.value
    if isinstance(tmpl, torch.Tensor):
        if all(p.shape[d] == w for p in parts):
            return parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
        resized = []
        for p in parts:
            extra = w - p.shape[d]  # negative: trimmed
            if extra:
                # One pad per piece: (left, right) amounts for dim d, nothing after it.
                amounts = [0, 0] * (p.ndim - 1 - d) + (
                    [0, extra] if side == "right" else [extra, 0]
                )
                p = F.pad(p, amounts, value=pad)
            resized.append(p)
        return resized[0] if len(resized) == 1 else torch.cat(resized, dim=0)
    shape = list(tmpl.shape)
    shape[0], shape[d] = sum(p.shape[0] for p in parts), w
    out = np.full(shape, pad, dtype=tmpl.dtype)
    row = 0
    for p in parts:
        n, length = p.shape[0], p.shape[d]
        keep = min(length, w)
        # Right padding keeps a piece's first positions, left padding its last ones.
        dst, src = (0, 0) if side == "right" else (w - keep, length - keep)
        _take(out[row : row + n], d, dst, keep)[...] = _take(p, d, src, keep)
        row += n
    return out


def join_padded(pieces: Sequence[Any], spec: Padding) -> Any:
    """Joins batches along the sample dimension, re-padding the spec's padded fields.

    Like :func:`smartsift.batches.structure.concat` (container types and metadata come from the last
    piece), but each padded field of every piece is first re-padded with its pad value, on the
    spec's side, to the longest of the pieces along its sequence dimension; with ``trim``, each
    group of padded fields is then cut to the longest real length in the joined batch. One
    ``pad`` per piece and field and one concatenation per field; no loop over samples.

    Raises:
        ValueError: if the pieces differ in structure, or an entry that is not a padded field
            of the spec differs in trailing shape (the message says how to name it).

    Example:
        >>> spec = Padding({"ids": 0, "labels": -100}, side="left")
        >>> a = {"ids": torch.tensor([[0, 4, 5]]), "labels": torch.tensor([[-100, 4, 5]])}
        >>> b = {"ids": torch.tensor([[6]]), "labels": torch.tensor([[6]])}
        >>> joined = join_padded([a, b], spec)
        >>> joined["ids"].tolist(), joined["labels"].tolist()
        ([[0, 4, 5], [0, 0, 6]], [[-100, 4, 5], [-100, -100, 6]])
    """
    if not pieces:
        raise ValueError("Expected `pieces` to hold at least one batch, but got none.")
    if len(pieces) == 1 and not spec.trim and spec.pad_to_multiple_of is None:
        return pieces[0]
    template = pieces[-1]
    leaves: list[_Leaf] = []
    _collect(list(pieces), template, (), None, leaves)
    padded: list[_Leaf] = []
    for leaf in leaves:
        if isinstance(leaf.tmpl, (torch.Tensor, np.ndarray)):
            leaf.spec = spec.field_for(leaf.path, leaf.name)
            leaf.dim = _seq_dim(leaf.tmpl, leaf.spec)
            _check_parts(leaf)
            if leaf.dim is not None:
                leaf.width = max(p.shape[leaf.dim] for p in leaf.parts)
                padded.append(leaf)
    if spec.trim and padded:
        owners, positions = [], []
        for leaf in padded:
            assert leaf.spec is not None and leaf.dim is not None
            for p in leaf.parts:
                owners.append(leaf.spec.group)
                positions.append(_real_positions(p, leaf.dim, leaf.spec.value))
        longest: dict[str, int] = {}
        for group, n in zip(owners, _extents(positions, spec.side), strict=True):
            longest[group] = max(longest.get(group, 0), n)
        for leaf in padded:
            assert leaf.spec is not None
            leaf.width = min(leaf.width, longest[leaf.spec.group])
    if spec.pad_to_multiple_of is not None:
        m = spec.pad_to_multiple_of
        for leaf in padded:
            leaf.width = math.ceil(leaf.width / m) * m
    joined: list[Any] = []
    for leaf in leaves:
        if len(leaf.parts) == 1 and leaf.dim is None:
            joined.append(leaf.parts[0])
        elif leaf.dim is not None:
            joined.append(_pad_join(leaf, spec.side))
        elif isinstance(leaf.tmpl, torch.Tensor):
            joined.append(torch.cat(leaf.parts, dim=0))
        elif isinstance(leaf.tmpl, np.ndarray):
            joined.append(np.concatenate(leaf.parts, axis=0))
        else:  # a per-sample list or tuple of plain values
            items = [item for p in leaf.parts for item in p]
            joined.append(tuple(items) if isinstance(leaf.tmpl, tuple) else items)
    return _build(template, iter(joined))
