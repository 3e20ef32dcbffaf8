"""The shared type predicates of argument checks."""

from __future__ import annotations

import doctest

import pytest

from peft_mpn.utils import checks
from peft_mpn.utils.checks import is_int, is_real


@pytest.mark.parametrize(
    ("value", "least", "expected"),
    [(3, None, True), (0, 0, True), (0, 1, False), (-2, None, True), (True, None, False), (2.0, None, False)],
)
def test_is_int(value, least, expected):
    assert is_int(value, least) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0.5, True), (3, True), (float("nan"), False), (float("inf"), False), ("1", False), (False, False)],
)
def test_is_real(value, expected):
    assert is_real(value) is expected


def test_docstring_examples():
    assert doctest.testmod(checks).failed == 0
