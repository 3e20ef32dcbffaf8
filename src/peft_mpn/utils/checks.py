"""Type predicates for argument checks: a bool is neither a count nor a number here, although Python says so."""

from __future__ import annotations

import math
from typing import Any


def is_int(value: Any, least: int | None = None) -> bool:
    """Whether ``value`` is an int (not a bool) and, if ``least`` is given, at least ``least``.

    Example:
        >>> is_int(3, least=1), is_int(True), is_int(2.0), is_int(0, least=1)
        (True, False, False, False)
    """
    return not isinstance(value, bool) and isinstance(value, int) and (least is None or value >= least)


def is_real(value: Any) -> bool:
    """Whether ``value`` is a finite int or float (not a bool, NaN or infinity).

    Example:
        >>> is_real(0.5), is_real(float("nan")), is_real("1"), is_real(False)
        (True, False, False, False)
    """
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
