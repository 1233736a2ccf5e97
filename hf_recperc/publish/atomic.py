"""Atomic file writes: every file the package writes appears whole or not at all.

A write goes to a partial file beside its target (``.STEM.tmp-HOST-PID.SUFFIX``: the suffix stays last, so that
writers that read the format from it still work), which one ``os.replace`` (atomic on POSIX) renames into place. A
write that fails (disk full, an error while serialising) removes its partial file; a killed process cannot, so
:func:`clean_partials` removes the partial files of processes that no longer run, and the cache writers call it
(:func:`prepare_cache_dir`) before they add an entry.

Every writer takes the final path: :func:`write_bytes`, :func:`write_text`, :func:`write_json`, :func:`save_npy`,
:func:`save_npz`, :func:`save_torch`, :func:`copy_file`; :func:`atomic_path` is the context manager under all of
them (and under ``plotting.save_figure``) for any other serialiser that writes to a path.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "HOST",
    "atomic_path",
    "clean_partials",
    "copy_file",
    "owner_alive",
    "partial_path",
    "finish_partial",
    "prepare_cache_dir",
    "process_alive",
    "save_npy",
    "save_npz",
    "save_torch",
    "write_bytes",
    "write_json",
    "write_text",
]

logger = logging.getLogger(__name__)

# This machine's name as it appears in partial files and locks ('.' would be read as a suffix).
HOST = re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"
# '.STEM.tmp-HOST-PID' plus the target's suffix: what atomic_path writes.
_PARTIAL = re.compile(r"^\.(?P<stem>.+)\.tmp-(?P<host>[A-Za-z0-9_-]+)-(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")
# What earlier versions wrote in the caches: 'KEY.PID.tmp', 'KEY.PID.tmp.npy', 'STEM.PID.tmp.npz' (no host).
_LEGACY_PARTIAL = re.compile(r"^(?P<stem>.+)\.(?P<pid>\d+)\.tmp(\.npy|\.npz)?$")
# A partial file of another machine (a shared cache) is only removed when nothing has touched it for this long.
_FOREIGN_PARTIAL_AGE_S = 24 * 3600


def process_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this machine (one owned by another user counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OverflowError:
        return False
    return True


def owner_alive(host: str, pid: int) -> bool:
    """Whether the process ``pid`` of ``host`` may still run: a process of another machine cannot be checked."""
    return host != HOST or process_alive(pid)


def partial_path(path: str | os.PathLike) -> Path:
    """The partial file of ``path`` for this process: ``dir/.STEM.tmp-HOST-PID.SUFFIX``."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp-{HOST}-{os.getpid()}{path.suffix}")


def finish_partial(partial: str | os.PathLike, path: str | os.PathLike, keep: bool) -> None:
    """End a partial file written outside :func:`atomic_path` (e.g. by several processes through a memory map):
    rename it into place when ``keep``, else remove it."""
    if keep:
        os.replace(partial, path)
    else:
        Path(partial).unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a partial path to write; on success it is renamed to ``path``, on any error it is removed.

    Example::

        with atomic_path(out / "table.csv") as partial:
            frame.to_csv(partial)
    """
    partial = partial_path(path)
    try:
        yield partial
        os.replace(partial, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()  # only left when the write or the rename failed


def replace_directory(staging: str | os.PathLike, final: str | os.PathLike) -> None:
    """Rename the whole directory ``staging`` to ``final``. A directory ``final`` may exist (a periodic checkpoint,
    then the final one of the same step): it is set aside, the new one renamed in, then the old one deleted, so a
    kill at any point leaves a whole directory under the final name or beside it (``.old-NAME``)."""
    final = Path(final)
    aside = final.with_name(f".old-{final.name}")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        os.replace(final, aside)
    os.replace(staging, final)
    shutil.rmtree(aside, ignore_errors=True)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    with atomic_path(path) as partial:
        partial.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(
    path: str | os.PathLike, payload: Any, *, indent: int | None = 2, allow_nan: bool = True
) -> Path:
    """Write ``payload`` as JSON (objects it cannot encode as ``str``) atomically; returns the path."""
    text = json.dumps(payload, indent=indent, default=str, allow_nan=allow_nan)
    return write_text(path, text + "\n")


def save_npy(path: str | os.PathLike, array) -> Path:
    """``np.save`` to ``path`` atomically (through an open file: numpy adds no ``.npy`` of its own)."""
    import numpy as np  # noqa: PLC0415

    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.save(handle, array)
    return Path(path)


def save_npz(path: str | os.PathLike, **arrays) -> Path:
    """``np.savez`` of ``arrays`` to ``path`` atomically."""
    import numpy as np  # noqa: PLC0415

    with atomic_path(path) as partial, open(partial, "wb") as handle:
        np.savez(handle, **arrays)
    return Path(path)


def save_torch(path: str | os.PathLike, payload) -> Path:
    """``torch.save`` of ``payload`` to ``path`` atomically."""
    import torch  # noqa: PLC0415

    with atomic_path(path) as partial:
        torch.save(payload, partial)
    return Path(path)


def copy_file(source: str | os.PathLike, path: str | os.PathLike) -> Path:
    """Copy ``source``'s bytes to ``path`` atomically."""
    with atomic_path(path) as partial:
        shutil.copyfile(source, partial)
    return Path(path)


def clean_partials(directory: str | os.PathLike, *, legacy: bool = False) -> list[Path]:
    """Remove the partial files in ``directory`` whose writer no longer runs; returns what was removed.

    Args:
        directory: where to look (not recursive); a missing directory holds nothing.
        legacy: also the partial names of earlier versions (``KEY.PID.tmp[.npy|.npz]``, no host): only in our
            own cache directories, where no user file can carry such a name.
    """
    removed = []
    try:
        entries = list(Path(directory).iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        if _abandoned(entry, legacy) and entry.is_file():
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
                removed.append(entry)
    if removed:
        logger.info(
            "removed %d partial file(s) of processes that no longer run in %s", len(removed), directory
        )
    return removed


def _abandoned(entry: Path, legacy: bool) -> bool:
    """Whether ``entry`` is a partial file whose writer has died (or, on another machine, gone quiet)."""
    match = _PARTIAL.match(entry.name)
    if match is not None:
        host, pid = match["host"], int(match["pid"])
    elif legacy and (match := _LEGACY_PARTIAL.match(entry.name)) is not None:
        host, pid = HOST, int(match["pid"])
    else:
        return False
    if host == HOST:
        return not process_alive(pid)
    try:
        return time.time() - entry.stat().st_mtime > _FOREIGN_PARTIAL_AGE_S
    except FileNotFoundError:
        return False


def prepare_cache_dir(directory: str | os.PathLike) -> Path:
    """Create a cache directory if needed and remove the partial files dead writers left in it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    clean_partials(directory, legacy=True)
    return directory
