"""Argument checks shared by every module: one message format, ``name: expected ..., got ...``.

Public entry points validate early and name the argument (see ``docs/design.md``, "Errors and bad input").
"""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import Any

# A Hub repository id: 'name' or 'namespace/name', letters, digits, '-', '_', '.', no '--' or '..', <= 96 chars.
HUB_REPO_ID = re.compile(r"^(?!.*(--|\.\.))[A-Za-z0-9][\w.-]{0,95}(/[A-Za-z0-9][\w.-]{0,95})?$")

__all__ = [
    "check_labels",
    "check_positive_number",
    "HUB_REPO_ID",
    "check_finite_number",
    "check_hub_repo_id",
    "check_model_path",
    "check_name_or_path",
    "check_memory",
    "check_positive_int",
    "format_bytes",
    "hub_offline",
    "MEMORY_LIMIT_VARIABLE",
    "is_finite_number",
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


# ------------------------------------------------------------------------------------------ memory

# Overrides the memory a statistic may plan to use, in GiB (e.g. to count swap, or to cap a shared machine).
MEMORY_LIMIT_VARIABLE = "RECPERC_MEMORY_LIMIT_GB"


def format_bytes(num_bytes: float) -> str:
    """``80_000_000_000`` -> ``'74.5 GiB'`` (binary units, three significant digits)."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if num_bytes < 1024 or unit == "PiB":
            return f"{num_bytes:.3g} {unit}" if unit != "B" else f"{int(num_bytes)} B"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def available_memory(device=None) -> int:
    """Bytes a new allocation can take now: ``RECPERC_MEMORY_LIMIT_GB`` when set, else the free memory of a CUDA
    ``device`` (free plus what PyTorch's allocator holds unused), else the available RAM."""
    override = os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip()
    if override:
        try:
            return int(float(override) * 2**30)
        except ValueError:
            raise ValueError(f"{MEMORY_LIMIT_VARIABLE}: expected a number of GiB, got {override!r}") from None
    if device is not None and getattr(device, "type", str(device).split(":")[0]) == "cuda":
        import torch  # noqa: PLC0415  (configuration modules import this file and must not pull in torch)

        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    try:
        import psutil  # noqa: PLC0415  (a dependency of accelerate)

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil comes with accelerate
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def check_memory(name: str, what: str, peak_bytes: float, device=None, hint: str = "") -> None:
    """Raise ``ValueError`` naming ``name`` when a planned computation would need more than the available memory.

    Called before the first large allocation, so that a too-large input fails in a second with one line instead
    of swapping or being killed hours later. ``what`` says what is too large, e.g. ``"100,000 features need a
    100,000 x 100,000 float64 second-moment matrix (74.5 GiB)"``; ``peak_bytes`` is the estimated peak of the
    whole computation; ``hint`` says how to make it smaller.
    """
    limit = available_memory(device)
    if peak_bytes <= limit:
        return
    if os.environ.get(MEMORY_LIMIT_VARIABLE, "").strip():
        allowed = f"{MEMORY_LIMIT_VARIABLE} allows {format_bytes(limit)}"
    else:
        where = "GPU memory" if device is not None and str(device).startswith("cuda") else "memory"
        allowed = f"{format_bytes(limit)} of {where} is available (set {MEMORY_LIMIT_VARIABLE} to allow more)"
    raise ValueError(
        f"{name}: {what}; the computation needs about {format_bytes(peak_bytes)} but {allowed}"
        f"{'; ' + hint if hint else ''}"
    )


# ------------------------------------------------------------------------------------------ names and paths

_OFFLINE_VALUES = ("1", "ON", "YES", "TRUE")
# Suffixes of files, never of Hub ids: a name ending in one is a (missing) local path.
_FILE_SUFFIXES = (
    ".parquet",
    ".csv",
    ".json",
    ".jsonl",
    ".arrow",
    ".safetensors",
    ".bin",
    ".zip",
    ".tar",
    ".gz",
)


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set to a true value (``1``, ``ON``, ``YES``, ``TRUE``), read now."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in _OFFLINE_VALUES


def check_name_or_path(argument: str, name: str) -> str:
    """Tell an existing local path from a Hub id at once, before any network call.

    Returns ``"local"`` when ``name`` exists on disk and ``"hub"`` when it is a well-formed Hub id. A name that
    looks like a local path (starts with ``.``, ``/`` or ``~``; has more than one ``/``; ends in a file suffix
    such as ``.parquet``; or whose first component is an existing local directory, as ``data/x`` when ``data/``
    exists) but does not exist, and a name that is not a valid Hub id, raise at once instead of being tried on
    the Hub (where an unreachable network costs half a minute of retries).

    Raises:
        ValueError: naming ``argument`` and ``name``.
    """
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{argument}: expected a local path or a Hub id, got {name!r}")
    path = Path(name).expanduser()
    if path.exists():
        return "local"
    first = Path(name.replace("\\", "/").split("/")[0]).expanduser()
    looks_local = (
        name.startswith((".", "/", "~"))
        or "\\" in name
        or name.count("/") > 1
        or path.suffix.lower() in _FILE_SUFFIXES
        or ("/" in name and first.is_dir())
    )
    if looks_local:
        hint = ""
        if path.parent.is_dir() and str(path.parent) not in ("", "."):
            entries = sorted(entry.name for entry in path.parent.iterdir())
            hint = f" ({str(path.parent)!r} holds {entries[:8]}{' ...' if len(entries) > 8 else ''})"
        raise ValueError(f"{argument}: local path {name!r} does not exist{hint}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id  # noqa: PLC0415  (light, rarely needed)

    try:
        validate_repo_id(name)
    except HFValidationError as err:
        raise ValueError(
            f"{argument}: {name!r} is neither an existing local path nor a valid Hub id ({err})"
        ) from None
    return "hub"


def check_model_path(name_or_path: str, argument: str = "model_name_or_path") -> None:
    """Fail at once, with one line, when ``from_pretrained(name_or_path)`` cannot work.

    * a local path must be a directory holding ``config.json`` (a saved model);
    * otherwise ``name_or_path`` must be a valid Hub id (see :func:`check_name_or_path`), and with
      ``HF_HUB_OFFLINE`` set it must already be in the Hub cache.

    Raises:
        ValueError: naming ``argument``, the value and what was expected.
    """
    if check_name_or_path(argument, name_or_path) == "local":
        path = Path(name_or_path).expanduser()
        if not (path / "config.json").is_file():
            what = "a file" if path.is_file() else "a directory without config.json"
            raise ValueError(
                f"{argument}: {name_or_path!r} is {what}; expected a saved model directory "
                "(save_pretrained output, with config.json) or a Hub id"
            )
        return
    if hub_offline():
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415

        if not isinstance(try_to_load_from_cache(name_or_path, "config.json"), str):
            raise ValueError(
                f"{argument}: {name_or_path!r} is not a local path and HF_HUB_OFFLINE is set, but it is not in "
                "the Hub cache; pass a local model directory, or download it first without HF_HUB_OFFLINE"
            )


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
