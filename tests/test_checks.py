"""The shared argument checks: what each accepts, and the exact message of what it refuses."""

from __future__ import annotations

import math
from typing import Any

import pytest

import smartsift as ss
from smartsift.engine.checks import (
    check_fraction,
    check_instance,
    check_int,
    check_optional_int,
    check_policy,
    check_real,
    is_int,
    is_real,
)


def test_is_int_and_is_real() -> None:
    assert [is_int(v) for v in (0, -3, True, 1.0, "1", None)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    values = (0, 2.5, -1e9, True, math.nan, math.inf, "0.5", None)
    assert [is_real(v) for v in values] == [True, True, True, False, False, False, False, False]


@pytest.mark.parametrize(
    ("minimum", "words", "value", "message"),
    [
        (0, True, -1, "Expected `n` to be a non-negative int, but got -1."),
        (1, True, 0, "Expected `n` to be a positive int, but got 0."),
        (2, True, 1, "Expected `n` to be an int >= 2, but got 1."),
        (None, True, 1.5, "Expected `n` to be an int, but got 1.5."),
        (0, False, -1, "Expected `n` to be an int >= 0, but got -1."),
        (1, False, True, "Expected `n` to be an int >= 1, but got True."),
    ],
)
def test_check_int_refuses_with_the_minimum_in_words_or_as_a_bound(
    minimum: int | None, words: bool, value: Any, message: str
) -> None:
    with pytest.raises(ValueError) as err:
        check_int("n", value, minimum, words=words)
    assert str(err.value) == message


def test_check_int_accepts_ints_from_the_minimum_and_names_what_they_count() -> None:
    for value in (1, 2, 10**12):
        check_int("n", value, 1)
    check_int("n", -5, None)
    with pytest.raises(ValueError) as err:
        check_int("sift_delay", -1, 0, "raw batches")
    assert (
        str(err.value)
        == "Expected `sift_delay` to be a non-negative int (raw batches), but got -1."
    )


def test_check_optional_int_accepts_none() -> None:
    check_optional_int("batch_size", None, 1)
    check_optional_int("batch_size", 4, 1)
    with pytest.raises(ValueError) as err:
        check_optional_int("batch_size", 0, 1)
    assert str(err.value) == "Expected `batch_size` to be a positive int or None, but got 0."
    with pytest.raises(ValueError) as err:
        check_optional_int("max_age", -1, 0, words=False)
    assert str(err.value) == "Expected `max_age` to be an int >= 0 or None, but got -1."
    with pytest.raises(ValueError, match=r"`rank` to be an int or None, but got '0'\."):
        check_optional_int("rank", "0", None)


def test_check_real() -> None:
    for value in (1, 1.0, 2.5, 1e6):
        check_real("max_weight", value, 1)
    check_real("max_weight", None, 1, optional=True)
    check_real("shift", -3.5)
    for value, message in [
        (0.5, "Expected `max_weight` to be a float >= 1, but got 0.5."),
        (True, "Expected `max_weight` to be a float >= 1, but got True."),
        (math.nan, "Expected `max_weight` to be a float >= 1, but got nan."),
        (math.inf, "Expected `max_weight` to be a float >= 1, but got inf."),
        (None, "Expected `max_weight` to be a float >= 1, but got None."),
    ]:
        with pytest.raises(ValueError) as err:
            check_real("max_weight", value, 1)
        assert str(err.value) == message
    with pytest.raises(ValueError) as err:
        check_real("min_delta", -0.1, 0, optional=True)
    assert (
        str(err.value) == "Expected `min_delta` to be a non-negative float or None, but got -0.1."
    )


@pytest.mark.parametrize(
    ("low_open", "high_open", "accepted", "refused", "interval"),
    [
        (False, False, [0, 0.5, 1], [-0.1, 1.01], "[0, 1]"),
        (True, False, [0.5, 1], [0, 0.0], "(0, 1]"),
        (False, True, [0, 0.0, 0.99], [1, 1.0], "[0, 1)"),
        (True, True, [1e-9, 0.5], [0.0, 1.0], "(0, 1)"),
    ],
)
def test_check_fraction_honours_open_and_closed_ends(
    low_open: bool, high_open: bool, accepted: list[Any], refused: list[Any], interval: str
) -> None:
    for value in accepted:
        check_fraction("keep", value, low_open=low_open, high_open=high_open)
    for value in [*refused, math.nan, True, "0.5", None]:
        with pytest.raises(ValueError) as err:
            check_fraction("keep", value, low_open=low_open, high_open=high_open)
        assert str(err.value) == f"Expected `keep` to be a float in {interval}, but got {value!r}."


def test_the_type_checks_raise_type_error() -> None:
    check_instance("table", {}, dict, "a dict")
    with pytest.raises(TypeError) as err:
        check_instance("table", [1], dict, "a dict")
    assert str(err.value) == "Expected `table` to be a dict, but got [1]."
    check_policy(ss.TopK(keep=0.5))
    with pytest.raises(TypeError, match=r"`policy` to be a smartsift Policy .*but got 'topk'\."):
        check_policy("topk")
