"""Type predicates for argument checks: a bool is neither a count nor a number here, although Python says so."""

from __future__ import annotations

import math
from collections.abc import Iterable
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


def non_finite(tensors: Iterable[tuple[str, Any]], limit: int = 5) -> list[str]:
    """Names of the floating-point tensors among ``(name, tensor)`` pairs that hold a NaN or an infinity.

    At most ``limit`` names are returned (the check stops there). Integer tensors are always finite.

    Example:
        >>> import torch
        >>> non_finite([("a", torch.ones(2)), ("b", torch.tensor([1.0, float("nan")])), ("c", torch.arange(3))])
        ['b']
    """
    import torch

    found = []
    for name, tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point() or tensor.device.type == "meta":
            continue
        if not bool(torch.isfinite(tensor).all()):
            found.append(name)
            if len(found) >= limit:
                break
    return found
