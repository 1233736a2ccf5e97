"""Argument checks shared by every module: one message format, ``name: expected ..., got ...``.

Public entry points validate early and name the argument (see ``docs/design.md``, "Errors and bad input").
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["check_labels", "check_positive_int", "check_finite_number", "is_finite_number"]


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


def check_labels(name: str, labels: Any, num_rows: int | None = None, *, allow_float: bool = False):
    """Class ids as an int64 ``torch.Tensor`` of shape `(N,)` (device kept), or ``ValueError`` naming ``name``.

    The one label check behind the probe, the metric, the theory and the models (each adds its own: number of
    classes, range). Accepts numpy arrays, tensors and sequences of any integer dtype, unsigned included
    (``uint8`` / ``uint32`` ids are common in stored data sets); with ``allow_float``, floats holding whole
    numbers too. Rejects booleans, other dimensions, a length other than ``num_rows`` and negative ids.
    """
    import numpy as np  # local: configuration modules import this file and must not pull in torch
    import torch

    if isinstance(labels, torch.Tensor):
        tensor = labels
    else:
        array = np.asarray(labels)
        if array.dtype.kind == "u":
            # torch lacks most ops on uint16/32/64; int64 holds every realistic class id.
            if array.size and array.max() > np.iinfo(np.int64).max:
                raise ValueError(f"{name}: class ids must be < 2**63, got {array.max()}")
            array = array.astype(np.int64)
        if array.dtype.kind not in "biuf":
            raise ValueError(f"{name}: expected integer class ids, got dtype {array.dtype}")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 1 or (num_rows is not None and tensor.numel() != num_rows):
        expected = (
            f"{num_rows} integer labels (one per feature row)" if num_rows is not None else "a 1-D sequence"
        )
        raise ValueError(f"{name}: expected {expected}, got shape {tuple(tensor.shape)}")
    if tensor.dtype == torch.bool:
        raise ValueError(f"{name}: expected integer class ids, got dtype {tensor.dtype}")
    if tensor.is_floating_point():
        if not allow_float:
            raise ValueError(f"{name}: expected integer class ids, got dtype {tensor.dtype}")
        if not bool(torch.isfinite(tensor).all()) or not torch.equal(tensor, tensor.round()):
            raise ValueError(f"{name}: expected integer class ids, got non-integer values")
    tensor = tensor.to(torch.int64)
    if tensor.numel() and int(tensor.min()) < 0:
        raise ValueError(f"{name}: class ids must be >= 0, got {int(tensor.min())}")
    return tensor
