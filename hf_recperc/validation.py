"""Argument checks shared by every module: one message format, ``name: expected ..., got ...``.

Public entry points validate early and name the argument (see ``docs/design.md``, "Errors and bad input").
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

# A Hub repository id: 'name' or 'namespace/name', letters, digits, '-', '_', '.', no '--' or '..', <= 96 chars.
HUB_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

__all__ = [
    "check_positive_int",
    "check_finite_number",
    "check_positive_number",
    "is_finite_number",
    "check_hub_repo_id",
    "HUB_REPO_ID",
]


def is_finite_number(value: Any) -> bool:
    """A real, finite number: Python or NumPy int/float (``bool`` excluded: ``True`` is not a learning rate)."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(
    name: str, value: Any, allow_none: bool = False, maximum: int | None = None
) -> int | None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (and <= ``maximum`` when given), or ``None``
    when allowed; return it as a Python ``int`` (NumPy integers are accepted and converted)."""
    if value is None and allow_none:
        return None
    is_int = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not is_int or value < 1 or (maximum is not None and value > maximum):
        expected = f"an integer in [1, {maximum}]" if maximum is not None else "an integer >= 1"
        raise ValueError(f"{name}: expected {expected}{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def check_finite_number(name: str, value: Any, minimum: float | None = None) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number (>= ``minimum`` when given); return it as float."""
    if not is_finite_number(value) or (minimum is not None and value < minimum):
        bound = f" >= {minimum:g}" if minimum is not None else ""
        raise ValueError(f"{name}: expected a finite number{bound}, got {value!r}")
    return float(value)


def check_hub_repo_id(name: str, value: Any) -> str:
    """Raise ``ValueError`` unless ``value`` is a valid Hub repository id (``user/name``); return it."""
    if not isinstance(value, str) or not HUB_REPO_ID.match(value) or value.endswith((".git", "-", ".")):
        raise ValueError(
            f"{name}: expected a Hub repository id 'user/name' (letters, digits, '-', '_', '.'), got {value!r}"
        )
    return value


def check_positive_number(name: str, value: Any) -> float:
    """Raise ``ValueError`` unless ``value`` is a finite number > 0 (a learning rate, a scale); return a float."""
    if not is_finite_number(value) or value <= 0:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)
