"""Joining samples of batches padded to different lengths."""

from __future__ import annotations

import dataclasses
from collections import namedtuple
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from smartsift.batches.padding import Padding, PadField, join_padded, padded_layout

Batch = namedtuple("Batch", ["input_ids", "labels"])


def _pad_rows(rows: list[list[int]], width: int, pad: int, side: str) -> torch.Tensor:
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, row in enumerate(rows):
        if row:
            if side == "right":
                out[i, : len(row)] = torch.tensor(row)
            else:
                out[i, width - len(row) :] = torch.tensor(row)
    return out


def _real(row: torch.Tensor, n: int, side: str) -> list[int]:
    return row[:n].tolist() if side == "right" else row[row.numel() - n :].tolist()


def _padding(row: torch.Tensor, n: int, side: str) -> list[int]:
    return row[n:].tolist() if side == "right" else row[: row.numel() - n].tolist()


@st.composite
def _samples(draw: Any) -> dict[str, Any]:
    n = draw(st.integers(1, 10))
    lengths = draw(st.lists(st.integers(1, 7), min_size=n, max_size=n))
    pad = draw(st.integers(-3, 30))
    # Tokens may equal the pad id: the attention mask still tells the real ones.
    tokens = [draw(st.lists(st.integers(0, 30), min_size=k, max_size=k)) for k in lengths]
    ignored = [draw(st.lists(st.booleans(), min_size=k, max_size=k)) for k in lengths]
    cuts = draw(st.lists(st.integers(1, n - 1), max_size=3, unique=True)) if n > 1 else []
    extra = draw(st.lists(st.integers(0, 3), min_size=len(cuts) + 1, max_size=len(cuts) + 1))
    return {
        "lengths": lengths,
        "pad": pad,
        "tokens": tokens,
        "labels": [
            [-100 if i else t for t, i in zip(ts, ig, strict=True)]
            for ts, ig in zip(tokens, ignored, strict=True)
        ],
        "bounds": [0, *sorted(cuts), n],
        "extra": extra,  # some raw batches are padded beyond their longest sample
        "side": draw(st.sampled_from(["right", "left"])),
        "trim": draw(st.booleans()),
    }


def _dict_pieces(s: dict[str, Any]) -> list[dict[str, torch.Tensor]]:
    pieces = []
    for j, (a, b) in enumerate(zip(s["bounds"], s["bounds"][1:], strict=False)):
        width = max(s["lengths"][a:b]) + s["extra"][j]
        pieces.append(
            {
                "input_ids": _pad_rows(s["tokens"][a:b], width, s["pad"], s["side"]),
                "attention_mask": _pad_rows(
                    [[1] * k for k in s["lengths"][a:b]], width, 0, s["side"]
                ),
                "labels": _pad_rows(s["labels"][a:b], width, -100, s["side"]),
                "class_label": torch.arange(a, b),  # (B,): no sequence dimension, not padded
            }
        )
    return pieces


@settings(max_examples=150, deadline=None)
@given(_samples())
def test_dict_batches_keep_every_sample_intact(s: dict[str, Any]) -> None:
    side, pad, lengths = s["side"], s["pad"], s["lengths"]
    spec = Padding.huggingface(pad_token_id=pad, side=side, trim=s["trim"])
    pieces = _dict_pieces(s)
    assert len({spec.layout(p) for p in pieces}) == 1
    joined = spec.join(pieces)
    ids, mask, labels = joined["input_ids"], joined["attention_mask"], joined["labels"]
    width = max(lengths) if s["trim"] else max(p["input_ids"].shape[1] for p in pieces)
    assert ids.shape == mask.shape == labels.shape == (len(lengths), width)
    assert joined["class_label"].tolist() == list(range(len(lengths)))
    for i, n in enumerate(lengths):
        assert _real(ids[i], n, side) == s["tokens"][i]
        assert _real(mask[i], n, side) == [1] * n
        assert _real(labels[i], n, side) == s["labels"][i]
        assert set(_padding(ids[i], n, side)) <= {pad}
        assert set(_padding(mask[i], n, side)) <= {0}
        assert set(_padding(labels[i], n, side)) <= {-100}


@settings(max_examples=100, deadline=None)
@given(_samples())
def test_tuple_batches_without_a_mask_trim_to_the_longest_real_sample(s: dict[str, Any]) -> None:
    side, lengths = s["side"], s["lengths"]
    pad = 31  # no mask: the real tokens are those that differ from the pad id
    spec = Padding({0: pad, 1: PadField(-100)}, side=side, trim=s["trim"])
    pieces = []
    for j, (a, b) in enumerate(zip(s["bounds"], s["bounds"][1:], strict=False)):
        width = max(lengths[a:b]) + s["extra"][j]
        pieces.append(
            (
                _pad_rows(s["tokens"][a:b], width, pad, side),
                _pad_rows(s["labels"][a:b], width, -100, side),
                torch.arange(a, b),
            )
        )
    assert len({padded_layout(p, spec) for p in pieces}) == 1
    ids, labels, order = join_padded(pieces, spec)
    width = max(lengths) if s["trim"] else max(p[0].shape[1] for p in pieces)
    assert ids.shape == labels.shape == (len(lengths), width)
    assert order.tolist() == list(range(len(lengths)))
    for i, n in enumerate(lengths):
        assert _real(ids[i], n, side) == s["tokens"][i]
        assert _real(labels[i], n, side) == s["labels"][i]
        assert set(_padding(ids[i], n, side)) <= {pad}
        assert set(_padding(labels[i], n, side)) <= {-100}


def test_a_field_not_in_the_spec_names_itself_and_the_fix() -> None:
    spec = Padding.huggingface(pad_token_id=0)
    a = {"input_ids": torch.ones(2, 3, dtype=torch.long), "pixel_mask": torch.ones(2, 3)}
    b = {"input_ids": torch.ones(1, 5, dtype=torch.long), "pixel_mask": torch.ones(1, 5)}
    assert spec.layout(a) != spec.layout(b)
    with pytest.raises(ValueError, match=r"batch\['pixel_mask'\].*Padding\(fields=\{'pixel_mask'"):
        spec.join([a, b])
    # Named, or padded by default, it joins.
    for fixed in (
        Padding({"input_ids": 0, "pixel_mask": 0}),
        dataclasses.replace(spec, default_pad=0),
    ):
        assert fixed.layout(a) == fixed.layout(b)
        assert fixed.join([a, b])["pixel_mask"].tolist()[0] == [1, 1, 1, 0, 0]


def test_a_padded_field_must_match_apart_from_its_sequence_dimension() -> None:
    spec = Padding({"x": 0})
    with pytest.raises(ValueError, match=r"batch\['x'\].*sequence dimension 1 of this padded"):
        spec.join([{"x": torch.zeros(1, 2, 3)}, {"x": torch.zeros(1, 4, 5)}])
    with pytest.raises(ValueError, match=r"batch\['x'\].*int64"):
        spec.join([{"x": torch.zeros(1, 2)}, {"x": torch.zeros(1, 4, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"batch\['y'\].*dtypes and devices must match"):
        spec.join([{"y": torch.zeros(1, 2)}, {"y": torch.zeros(1, 2, dtype=torch.long)}])
    with pytest.raises(ValueError, match=r"differ in structure at batch\['x'\]"):
        spec.join([{"x": torch.zeros(1, 2)}, {"x": torch.zeros(1, 2, 1)}])
    with pytest.raises(ValueError, match=r"batch\[1\].*Padding\(fields=\{1: PAD_VALUE"):
        spec.join([(torch.zeros(1), torch.zeros(1, 2)), (torch.zeros(1), torch.zeros(1, 3))])
    with pytest.raises(ValueError, match="differ in structure"):
        spec.join([{"x": torch.zeros(1, 2)}, {"x": torch.zeros(1, 2), "y": torch.zeros(1)}])


def test_paths_names_and_structure_come_through() -> None:
    spec = Padding({("inputs", 0): 9, "labels": -1}, side="left")
    pieces = [
        {
            "inputs": (torch.tensor([[1, 2]]), ["a"]),
            "pair": Batch(torch.tensor([[5]]), torch.tensor([[5]])),
            "lr": 0.1,
        },
        {
            "inputs": (torch.tensor([[3, 4, 5]]), ["b"]),
            "pair": Batch(torch.tensor([[6]]), torch.tensor([[6]])),
            "lr": 0.2,
        },
    ]
    joined = spec.join(pieces)
    assert joined["inputs"][0].tolist() == [[9, 1, 2], [3, 4, 5]]
    assert joined["inputs"][1] == ["a", "b"]
    assert isinstance(joined["pair"], Batch)  # a named tuple's field is matched by name
    assert joined["pair"].labels.tolist() == [[5], [6]]
    assert joined["lr"] == 0.2  # metadata from the last piece
    # A path names one entry only: the same name elsewhere is not padded.
    with pytest.raises(ValueError, match=r"batch\['other'\]\[0\]"):
        spec.join([{"other": (torch.zeros(1, 2),)}, {"other": (torch.zeros(1, 3),)}])


def test_trim_cuts_only_what_every_field_of_a_group_pads() -> None:
    # Causal LM: the last real token equals the pad id (pad = eos); the mask keeps it.
    spec = Padding.huggingface(pad_token_id=2, trim=True)
    a = {
        "input_ids": torch.tensor([[7, 2, 2, 2, 2]]),
        "attention_mask": torch.tensor([[1, 1, 0, 0, 0]]),
        "labels": torch.tensor([[7, -100, -100, -100, -100]]),
    }
    joined = spec.join([a])  # one piece is trimmed too
    assert joined["input_ids"].tolist() == [[7, 2]]
    assert joined["labels"].tolist() == [[7, -100]]
    # Encoder-decoder: labels have their own length and are trimmed apart from the inputs.
    s2s = Padding.huggingface(pad_token_id=0, seq2seq=True, trim=True)
    b = {
        "input_ids": torch.tensor([[5, 0, 0, 0]]),
        "attention_mask": torch.tensor([[1, 0, 0, 0]]),
        "labels": torch.tensor([[4, 4, 4, 4, 4, -100]]),
    }
    c = {
        "input_ids": torch.tensor([[6, 6]]),
        "attention_mask": torch.tensor([[1, 1]]),
        "labels": torch.tensor([[4, -100]]),
    }
    joined = s2s.join([b, c])
    assert joined["input_ids"].tolist() == [[5, 0], [6, 6]]
    assert joined["labels"].tolist() == [[4, 4, 4, 4, 4], [4, -100, -100, -100, -100]]
    # In one group, the labels would hold the inputs' width: nothing real is ever cut.
    one = Padding.huggingface(pad_token_id=0, trim=True).join([b, c])
    assert one["input_ids"].shape == (2, 4) and one["labels"].shape == (2, 5)


def test_pad_to_multiple_of_and_numpy_batches() -> None:
    spec = Padding({"x": PadField(-1, dim=-1)}, trim=True, pad_to_multiple_of=4)
    a = {"x": np.array([[1, 2, -1, -1, -1, -1, -1, -1]]), "y": np.array([0])}
    b = {"x": np.array([[3, 4, 5, -1]]), "y": np.array([1])}
    joined = spec.join([a, b])
    assert isinstance(joined["x"], np.ndarray)
    assert joined["x"].tolist() == [[1, 2, -1, -1], [3, 4, 5, -1]]
    assert joined["y"].tolist() == [0, 1]
    # A piece restored from a checkpoint holds tensors where fresh batches hold arrays.
    restored = {"x": torch.tensor([[6, -1]]), "y": torch.tensor([2])}
    assert spec.join([restored, b])["x"].tolist() == [[6, -1, -1, -1], [3, 4, 5, -1]]
    left = Padding({"x": -1}, side="left", trim=True)
    c = {"x": np.array([[-1, -1, -1, 7], [-1, -1, 8, 9]])}
    assert left.join([c, {"x": np.array([[-1, 1]])}])["x"].tolist() == [[-1, 7], [8, 9], [-1, 1]]


def test_a_middle_sequence_dimension_is_padded() -> None:
    spec = Padding({"embeds": PadField(0.5, dim=1)}, side="left")
    a, b = torch.ones(2, 3, 4), torch.ones(1, 1, 4)
    assert spec.layout({"embeds": a}) == spec.layout({"embeds": b})
    joined = spec.join([{"embeds": a}, {"embeds": b}])["embeds"]
    assert joined.shape == (3, 3, 4)
    assert joined[2, :2].eq(0.5).all() and joined[2, 2].eq(1).all() and joined[:2].eq(1).all()


def test_multiple_choice_pads_the_last_dimension() -> None:
    spec = Padding.huggingface(pad_token_id=0)
    a = {"input_ids": torch.ones(2, 4, 3, dtype=torch.long), "labels": torch.tensor([0, 1])}
    b = {"input_ids": torch.ones(1, 4, 5, dtype=torch.long), "labels": torch.tensor([3])}
    joined = spec.join([a, b])
    assert joined["input_ids"].shape == (3, 4, 5)
    assert joined["input_ids"][:2, :, 3:].eq(0).all() and joined["labels"].tolist() == [0, 1, 3]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"side": "middle"}, "`side`"),
        ({"trim": "yes"}, "`trim`"),
        ({"fields": {1.5: 0}}, "each key of `fields`"),
        ({"fields": {"x": "pad"}}, "field 'x'"),
        ({"fields": [1, 2]}, "`fields`"),
        ({"default_pad": "0"}, "`default_pad`"),
        ({"pad_to_multiple_of": 0}, "`pad_to_multiple_of`"),
    ],
)
def test_invalid_settings_say_what_is_expected(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Padding(**kwargs)


def test_invalid_fields_and_huggingface_arguments() -> None:
    with pytest.raises(ValueError, match="`dim`"):
        PadField(0, dim=0)
    with pytest.raises(ValueError, match="`group`"):
        PadField(0, group="")
    with pytest.raises(ValueError, match="`pad_token_id` or a `tokenizer`"):
        Padding.huggingface()
    with pytest.raises(ValueError, match="tokenizer-like"):
        Padding.huggingface(0)
    assert Padding({"x": 0, "y": 1}) == Padding({"y": PadField(1), "x": PadField(0)})
    assert hash(Padding({"x": 0})) == hash(Padding({"x": PadField(0)}))


transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")


def _tokenizer(side: str) -> Any:
    """A word-level tokenizer built in memory (nothing is downloaded)."""
    vocab = {"[PAD]": 0, "[UNK]": 1, "[MASK]": 2, **{f"w{i}": i + 3 for i in range(20)}}
    model = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="[UNK]"))
    model.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=model, pad_token="[PAD]", unk_token="[UNK]", mask_token="[MASK]"
    )
    tok.padding_side = side
    return tok


_TEXTS = ["w1 w2 w3", "w4", "w5 w6", "w7 w8 w9 w10 w11 w12", "w13", "w14 w15 w16"]


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("trim", [False, True])
def test_huggingface_collators_join_as_if_collated_together(side: str, trim: bool) -> None:
    dc = transformers.data.data_collator
    tok = _tokenizer(side)
    spec = Padding.huggingface(tok, trim=trim)
    feats = [dict(tok(t)) for t in _TEXTS]
    classify = [{**f, "label": i % 2} for i, f in enumerate(feats)]
    tag = [{**f, "labels": [i] * len(f["input_ids"])} for i, f in enumerate(feats)]
    cases = [
        (dc.DataCollatorWithPadding(tok), classify, spec),
        (dc.DataCollatorForLanguageModeling(tok, mlm=False), feats, spec),
        (dc.DataCollatorForTokenClassification(tok), tag, spec),
        (
            dc.DataCollatorForSeq2Seq(tok),
            tag[::-1],
            Padding.huggingface(tok, trim=trim, seq2seq=True),
        ),
        (dc.DataCollatorWithPadding(tok, pad_to_multiple_of=4), classify, None),
    ]
    for collate, features, case_spec in cases:
        case_spec = case_spec or dataclasses.replace(spec, pad_to_multiple_of=4)
        # Two raw batches padded to different lengths join as if collated in one.
        first, second = collate(features[:3]), collate(features[3:])
        assert first["input_ids"].shape[1] != second["input_ids"].shape[1]
        assert case_spec.layout(first) == case_spec.layout(second)
        joined = case_spec.join([first, second])
        expected = collate(features)
        assert type(joined) is type(second)
        assert joined.keys() == expected.keys()
        for key in expected:
            assert torch.equal(joined[key], expected[key]), (collate, key)
    # Kept samples of a sifted batch: the longest is gone, and trim drops its padding.
    lm = dc.DataCollatorForLanguageModeling(tok, mlm=False)
    kept = {k: v[1:] for k, v in lm(feats[3:]).items()}
    joined = spec.join([lm(feats[:1]), kept])
    assert joined["input_ids"].shape[1] == (3 if trim else 6)


def test_huggingface_seq2seq_labels_keep_their_own_length() -> None:
    tok = _tokenizer("right")
    collate = transformers.data.data_collator.DataCollatorForSeq2Seq(tok)
    features = [{**dict(tok(t)), "labels": [5] * (2 * i + 1)} for i, t in enumerate(_TEXTS)]
    spec = Padding.huggingface(tok, seq2seq=True, trim=True)
    first, second = collate(features[:3]), collate(features[3:])
    kept = {k: v[1:2] for k, v in second.items()}  # "w13", with 9 labels (padded to 11)
    joined = spec.join([first, kept])
    assert joined["input_ids"].shape[1] == 3  # the longest input kept: "w1 w2 w3"
    assert joined["labels"].shape[1] == 9  # the longest target kept
    assert joined["labels"][3].tolist() == [5] * 9
    assert joined["labels"][0].tolist() == [5] + [-100] * 8
