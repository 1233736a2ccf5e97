"""Argument checks shared by every module: one message format, ``name: expected ..., got ...``.

Public entry points validate early and name the argument (see ``docs/design.md``, "Errors and bad input").
"""

from __future__ import annotations

import math
import re
from typing import Any

# A Hub repository id: 'name' or 'namespace/name', letters, digits, '-', '_', '.', no '--' or '..', <= 96 chars.
HUB_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

__all__ = [
    "check_positive_int",
    "check_finite_number",
    "is_finite_number",
    "check_hub_repo_id",
    "HUB_REPO_ID",
]


def is_finite_number(value: Any) -> bool:
    """A real, finite int or float (``bool`` excluded: ``True`` is not a learning rate)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is an integer >= 1 (or ``None`` when allowed)."""
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1{' or None' if allow_none else ''}, got {value!r}")


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
