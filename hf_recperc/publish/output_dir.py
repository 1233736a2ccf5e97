"""The one guarded writer of every command: an output folder checked before work, published as a set.

What a command promises about the folder it writes (docs/design.md, "reliability"):

* it never overwrites a file it did not write: a file of the user's own under a name the command writes (say
  ``README.md`` in a checkout, ``report.md`` in a notes folder) is refused *before* any costly work, naming the
  folder and the files. "Written by the command" means listed in the command's own manifest
  (``.hf_recperc_manifest[.COMMAND].json``): two commands writing into one folder (a report into the model's
  folder) each own their files only;
* its files are replaced or removed as a set: the manifest lists what the last run published, and a new run removes
  what the old one wrote and no longer writes (a stale figure). The manifest is not trusted: only plain file names
  inside the folder that the command declares (:class:`Outputs`) are ever removed, never a directory;
* publishing keeps the folder itself as it was: mode, group and setgid bit are carried over to the new copy, and a
  folder that cannot be recreated as it was (a mount point, a read-only parent, another owner, a group this user
  is not in) is published file by file instead;
* one writer at a time: a lock file names the owner's PID and host, a second run is refused;
* leftovers of killed runs (staging directories, a directory set aside mid-swap, partial files) are cleaned at the
  next start, and only those of dead processes.

:meth:`OutputDirectory.prepare` / :meth:`~OutputDirectory.staging` / :meth:`~OutputDirectory.publish` serve a run
that holds the folder for hours (the trainer); :meth:`~OutputDirectory.check` (before work) and
:meth:`~OutputDirectory.write` (at the end) serve every other command.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from .atomic import HOST, atomic_path, clean_partials, owner_alive, process_alive, write_json

__all__ = ["OutputDirectory", "Outputs", "MANIFEST", "file_output", "manifest_name", "json_marker"]

logger = logging.getLogger("hf_recperc.publish")

MANIFEST = ".hf_recperc_manifest.json"  # the trainer's (the first command that had one)
# How long a short command waits for another writer's lock when it publishes (its check found the folder free).
LOCK_WAIT_S = 30.0


def manifest_name(command: str) -> str:
    """The manifest file of ``command``: ``.hf_recperc_manifest.json`` for the trainer, else one per command."""
    return MANIFEST if command == "pretrain" else f".hf_recperc_manifest.{command}.json"


@dataclass(frozen=True)
class Outputs:
    """What one command writes into an output folder.

    Attributes:
        command: the command's name; names its manifest.
        names: the top-level names it may write, as ``fnmatch`` patterns (``accuracy_curve_*.png``). A user's file
            under one of them is a collision; only these names are ever removed as stale.
        replace_set: publishing removes the files of the previous set that the new one does not write (a stale
            figure). ``False`` adds files to the set (one figure among others in a user's folder).
        whole_directory: the folder is the command's output (locked, published by swapping in a staging copy when
            possible). ``False``: a file in a user's folder, renamed into place alone, no lock or staging sibling.
        legacy: whether a folder without this command's manifest holds the output of an earlier version (whose
            declared files then count as the command's), e.g. :func:`json_marker`.
    """

    command: str
    names: frozenset[str]
    replace_set: bool = True
    whole_directory: bool = True
    legacy: Callable[[Path], bool] | None = None

    def declares(self, name: str) -> bool:
        """Whether ``name`` is a plain file name this command writes."""
        return _plain_name(name) and any(fnmatchcase(name, pattern) for pattern in self.names)


def json_marker(file_name: str, keys: Collection[str]) -> Callable[[Path], bool]:
    """A :attr:`Outputs.legacy` test: ``file_name`` in the folder is a JSON object with every one of ``keys``
    (what the command itself writes, and a user's file of that name does not)."""

    def written_by_an_earlier_version(directory: Path) -> bool:
        try:
            payload = json.loads((directory / file_name).read_text())
        except (OSError, ValueError):
            return False
        records = payload if isinstance(payload, list) and payload else [payload]
        return all(isinstance(record, dict) and set(keys) <= set(record) for record in records)

    return written_by_an_earlier_version


def _plain_name(name: object) -> bool:
    """A file name inside the folder: no separator, not ``.``/``..``, no NUL (a manifest entry may be anything)."""
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(char in name for char in ("/", "\\", "\0"))
    )


class OutputDirectory:
    """An output folder of one command, guarded (used by the main process only).

    Args:
        path: the folder (resolved: ``.`` works).
        outputs: what the command writes there.
    """

    def __init__(self, path: str | os.PathLike, outputs: Outputs):
        self.path = Path(path).resolve()
        self.outputs = outputs
        self.manifest_file = manifest_name(outputs.command)
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        # Publish by renaming files, not the directory (mount points, read-only parents, a folder not ours).
        self.file_by_file = not outputs.whole_directory
        self.locked = False  # whether this object holds the lock (only then does it release it)
        self.created = False  # whether this object created the folder (an empty one is removed on a failure)

    @property
    def argument(self) -> str:
        """How the folder is named in messages (the option every command calls it by)."""
        return "output_dir" if self.outputs.whole_directory else "output"

    # ------------------------------------------------------------------------------------------ before work

    def check(self, names: Collection[str] | None = None) -> None:
        """Before any costly work, writing nothing (but removing a dead run's lock): the folder can be written, no
        other run holds it, and none of ``names`` (default: every declared name) is a file of the user's. Raises
        ``ValueError``."""
        self._check_target()
        if self.outputs.whole_directory:
            lock = self._lock_file()
            if lock.exists():
                self._check_lock_owner(lock)
        self._refuse_collisions(names)

    def prepare(self) -> None:
        """A run that holds the folder until :meth:`release_lock`: check that publishing will work, take the lock,
        clean up after killed runs, refuse to overwrite the user's files (``ValueError`` naming the folder)."""
        self._open()
        self.acquire_lock()
        try:
            self.clean_leftovers()
            self._refuse_collisions()
        except BaseException:
            self.release_lock()
            raise

    def collisions(self, names: Collection[str] | None = None) -> set[str]:
        """Entries under a name the command writes (among ``names`` if given) that it did not write."""
        if not self.path.is_dir():
            return set()
        ours = self._ours()
        wanted = self.outputs.declares if names is None else set(names).__contains__
        return {entry.name for entry in self.path.iterdir() if wanted(entry.name) and entry.name not in ours}

    def _refuse_collisions(self, names: Collection[str] | None = None) -> None:
        collisions = sorted(self.collisions(names))
        if collisions and not self.outputs.whole_directory:
            raise ValueError(
                f"output: {str(self.path / collisions[0])!r} exists and was not written by this command; "
                "choose another --output or move it"
            )
        if collisions:
            raise ValueError(
                f"output_dir: {str(self.path)!r} holds files this run would overwrite but did not write: "
                f"{', '.join(collisions)}; choose another --output_dir or move them"
            )

    def manifest(self) -> list[str]:
        """The files this command last published here, as plain names (empty when it never did)."""
        return _manifest_of(self.path, self.manifest_file)

    def _ours(self) -> set[str]:
        """Names in the folder this command wrote: its manifest's, or every declared one in an earlier version's
        output (no manifest yet)."""
        listed = self.manifest()
        if listed or (self.path / self.manifest_file).exists():
            return set(listed)
        legacy = self.outputs.legacy
        if legacy is not None and legacy(self.path):
            # A file another command's manifest lists is that command's, never an earlier version of this one's.
            others = {
                name for manifest in self._other_manifests() for name in _manifest_of(self.path, manifest)
            }
            return {
                entry.name
                for entry in self.path.iterdir()
                if self.outputs.declares(entry.name) and entry.name not in others
            }
        return set()

    def _other_manifests(self) -> list[str]:
        """The manifest files of the other commands that published into this folder."""
        return [
            entry.name
            for entry in self.path.glob(".hf_recperc_manifest*.json")
            if entry.name != self.manifest_file
        ]

    def _check_target(self) -> None:
        """The folder is a directory or can be created (its nearest existing ancestor is a writable directory)."""
        path = self.path
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"{self.argument}: {str(path)!r} is a file, expected a directory (or a path to create)"
            )
        existing = path
        while not existing.exists():
            existing = existing.parent
        if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
            raise ValueError(
                f"{self.argument}: {str(path)!r} is not writable (no write permission on {existing})"
            )

    def _open(self) -> None:
        """Create the folder if needed, check that a file can be written in it, choose how to publish."""
        self._check_target()
        path = self.path
        try:
            self.created = self.created or not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".hf_recperc_write_test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ValueError(
                f"{self.argument}: {str(path)!r} is not writable ({err.strerror or err})"
            ) from err
        if not self.outputs.whole_directory:
            return
        reason = self._why_not_swap()
        self.file_by_file = reason is not None
        if reason:
            logger.info(f"output_dir {path} {reason}: publishing file by file")

    def _why_not_swap(self) -> str | None:
        """Why the folder cannot be replaced by a new copy of itself (``None``: it can)."""
        if os.path.ismount(self.path):
            return "is a mount point"
        if not os.access(self.path.parent, os.W_OK):
            return "has a read-only parent"
        info = self.path.stat()
        if info.st_uid != os.geteuid():
            return "belongs to another user"  # a copy would be ours
        if info.st_gid != os.getegid() and info.st_gid not in os.getgroups() and os.geteuid() != 0:
            return "belongs to a group this user is not in"  # a copy could not keep the group
        return None

    # ------------------------------------------------------------------------------------------------ lock

    def _lock_file(self) -> Path:
        return self.lock_path if os.access(self.path.parent, os.W_OK) else self.path / ".hf_recperc.lock"

    def acquire_lock(self, wait_s: float = 0.0) -> None:
        """Take the lock, or refuse while another live run holds it (after waiting up to ``wait_s`` seconds for
        it); a dead owner's lock is taken over."""
        lock = self.lock_path = self._lock_file()
        deadline = time.monotonic() + wait_s
        for attempt in range(1_000_000):
            try:
                descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                try:
                    self._check_lock_owner(lock)  # removes a dead owner's lock
                except ValueError:
                    if time.monotonic() >= deadline:
                        raise
                    time.sleep(0.2)
                if attempt >= 2 and time.monotonic() >= deadline:
                    break
                continue
            with os.fdopen(descriptor, "w") as handle:
                json.dump({"pid": os.getpid(), "host": HOST}, handle)
            self.locked = True
            return
        raise ValueError(f"output_dir: could not take the lock {lock}")

    def _check_lock_owner(self, lock: Path) -> None:
        try:
            holder = json.loads(lock.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except FileNotFoundError:
            return  # released meanwhile
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, HOST  # unreadable (a run killed mid-write): treat as dead
        if pid > 0 and owner_alive(_host_name(host), pid):
            raise ValueError(
                f"output_dir: {str(self.path)!r} is in use by another run (process {pid} on {host}, lock file "
                f"{lock}); wait for it to finish, or use another --{self.argument}"
            )
        logger.info(f"removed the lock of process {pid}, which no longer runs ({lock})")
        lock.unlink(missing_ok=True)

    def release_lock(self) -> None:
        """Release the lock; remove the folder again if this object created it and nothing was written into it."""
        if self.locked:
            self.lock_path.unlink(missing_ok=True)
            self.locked = False
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def clean_leftovers(self) -> None:
        """Staging and set-aside directories of runs killed while publishing, and their partial files (dead PIDs
        only): a directory set aside mid-swap is put back when the folder is empty, its extra files carried over
        otherwise."""
        clean_partials(self.path)
        if not self.outputs.whole_directory:
            return
        prefix = f".{self.path.name}."
        for entry in [*self.path.parent.glob(f"{prefix}*-*"), *self.path.glob(f"{prefix}staging-*")]:
            kind, _, pid = entry.name.removeprefix(prefix).rpartition("-")
            if kind not in ("staging", "old") or not pid.isdigit() or process_alive(int(pid)):
                continue
            if kind == "old" and not any(p.name != self.lock_path.name for p in self.path.iterdir()):
                shutil.rmtree(self.path)  # the empty directory this start created
                os.replace(entry, self.path)
                logger.info(f"restored the previous output of a run killed while publishing ({entry.name})")
                continue
            if kind == "old":
                stale = set(_manifest_of(entry, self.manifest_file)) - set(self.manifest())
                self._carry_over(entry, self._removable(stale, entry))
            shutil.rmtree(entry, ignore_errors=True)
            logger.info(f"removed {entry}, left by process {pid} (no longer running)")
        for entry in (self.path / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(entry, ignore_errors=True)  # an interrupted checkpoint; the previous one is whole

    # ------------------------------------------------------------------------------------------------ publish

    def staging(self) -> Path:
        """A fresh staging directory beside the folder (inside it when publishing file by file), with the folder's
        mode and group, so that files written into it get the group a setgid folder gives."""
        base = self.path if self.file_by_file else self.path.parent
        staging = base / f".{self.path.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        if not self.file_by_file:
            _copy_mode_and_group(self.path, staging)
        return staging

    def publish(self, staging: Path) -> None:
        """Make ``staging``'s files the published set: replace the previous run's files, remove those it wrote
        that this run did not (declared plain file names only), keep everything else (checkpoints, logs, the
        user's files). Refuses, keeping ``staging``, when a file of the user's appeared under one of the names
        since the start."""
        written = sorted(entry.name for entry in staging.iterdir())
        appeared = self.collisions(written)
        if appeared:
            raise ValueError(
                f"{self.argument}: {str(self.path)!r} now holds files this command would overwrite but did not "
                f"write: {', '.join(sorted(appeared))} (they appeared while it ran); its output is kept in "
                f"{staging}: move those files and copy it over"
            )
        previous_set = set(self.manifest())
        listed = sorted(previous_set | set(written)) if not self.outputs.replace_set else written
        write_json(staging / self.manifest_file, {"command": self.outputs.command, "files": listed}, indent=1)
        stale = self._removable(previous_set - set(written), self.path) if self.outputs.replace_set else set()
        if self.file_by_file:
            for name in [*written, self.manifest_file]:
                os.replace(staging / name, self.path / name)  # one rename per file, each atomic
            for name in stale:
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
            return
        previous = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        os.replace(self.path, previous)
        os.replace(
            staging, self.path
        )  # between the two renames the folder is briefly absent, never half-written
        self._carry_over(previous, stale)
        shutil.rmtree(previous, ignore_errors=True)

    def _removable(self, names: Collection[str], directory: Path) -> set[str]:
        """Of the names a manifest lists, those this command may remove from ``directory``: declared plain file
        names of regular files (a forged or damaged manifest never names a directory or a path outside)."""
        return {
            name
            for name in names
            if self.outputs.declares(name)
            and name != self.manifest_file
            and (directory / name).is_file()
            and not (directory / name).is_symlink()
        }

    def _carry_over(self, previous: Path, stale: set[str]) -> None:
        """Move what the new output does not have back from ``previous``, except the old run's stale files."""
        for entry in previous.iterdir():
            if entry.name not in stale and not (self.path / entry.name).exists():
                os.replace(entry, self.path / entry.name)

    def write(self, files: Mapping[str, Callable[[Path], Any]]) -> Path:
        """Write and publish a set of files at the end of a short command: ``files[name](path)`` writes one file
        at ``path`` (any writer: the set is staged, or the file renamed into place, by this method).

        Takes the lock for the publishing only (waiting up to :data:`LOCK_WAIT_S` for another writer), and refuses
        a file of the user's under one of the names (:meth:`check` found none before the work). Returns the folder.
        """
        undeclared = [name for name in files if not self.outputs.declares(name)]
        if undeclared:
            raise RuntimeError(
                f"{self.outputs.command} writes {undeclared}, which its Outputs do not declare"
            )
        self._open()
        if not self.outputs.whole_directory:
            return self._write_in_place(files)
        try:
            self.acquire_lock(wait_s=LOCK_WAIT_S)
            self.clean_leftovers()
            self._refuse_collisions(files)
            staging = self.staging()
            try:
                for name, write in files.items():
                    write(staging / name)
                self.publish(staging)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        finally:
            self.release_lock()
        return self.path

    def _write_in_place(self, files: Mapping[str, Callable[[Path], Any]]) -> Path:
        """A file or two added to a user's folder: each renamed into place alone, then listed in the manifest."""
        self._refuse_collisions(files)
        clean_partials(self.path)
        for name, write in files.items():
            with atomic_path(self.path / name) as partial:
                write(partial)
        listed = sorted(set(self.manifest()) | set(files))
        write_json(
            self.path / self.manifest_file, {"command": self.outputs.command, "files": listed}, indent=1
        )
        return self.path


def file_output(path: str | os.PathLike, command: str) -> tuple[OutputDirectory, str]:
    """The guarded folder of a command that writes one file (``--output fig.png``) and that file's name.

    The file is added to the folder (whatever else is there stays), listed in the command's manifest there, and
    refused when it exists and the command did not write it."""
    path = Path(path)
    if not _plain_name(path.name):
        raise ValueError(f"output: expected a file path, got {str(path)!r}")
    outputs = Outputs(command, frozenset({path.name}), replace_set=False, whole_directory=False)
    return OutputDirectory(path.parent, outputs), path.name


def _host_name(host: str) -> str:
    """A lock's host as :data:`HOST` spells it (earlier versions wrote ``socket.gethostname()`` as it is)."""
    return re.sub(r"[^A-Za-z0-9-]", "_", host) or "host"


def _manifest_of(directory: Path, manifest_file: str = MANIFEST) -> list[str]:
    """The plain names a manifest lists (anything else in it is ignored, never followed)."""
    try:
        listed = json.loads((directory / manifest_file).read_text())["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in listed if _plain_name(name)] if isinstance(listed, list) else []


def _copy_mode_and_group(original: Path, copy: Path) -> None:
    """Give ``copy`` the permission bits (setgid included) and group of ``original`` (if it exists)."""
    try:
        info = original.stat()
    except FileNotFoundError:
        return
    if copy.stat().st_gid != info.st_gid:
        os.chown(copy, -1, info.st_gid)
    os.chmod(copy, stat.S_IMODE(info.st_mode))
