"""The run's output directory, guarded: checked before training, locked while in use, published as a set.

What a run promises about ``output_dir`` (docs/design.md, "reliability"):

* it never overwrites a file it did not write: a file of the user's own under a name the run would write (say
  ``README.md`` in a checkout) is refused *before* training, naming the file;
* every problem publishing would hit (a file where the directory should be, no write permission, a mount point
  that cannot be renamed) is found at start, not after hours of training;
* the files of a run are replaced or removed as a set: a manifest (``.hf_recperc_manifest.json``) lists what the
  last run wrote, so a new run removes what the old one wrote and no longer writes (a stale ``band_errors.png``);
* one run at a time: a lock file names the owner's PID and host, a second run is refused;
* leftovers of a killed run (staging directories, a directory set aside mid-swap) are cleaned at the next start,
  and only those of dead processes.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from pathlib import Path

__all__ = ["OutputDirectory", "MANIFEST", "RUN_FILES", "earlier_run_error", "refuse_earlier_run"]

logger = logging.getLogger("hf_recperc.training")

MANIFEST = ".hf_recperc_manifest.json"
# Every name a run may publish at the top level of output_dir (figures depend on the monitors); a user's file under
# one of these names is a collision. The remote-code files are computed (remote_code_files).
RUN_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "results.json",
        "history.json",
    }
    | {
        f"{name}.png"
        for name in (
            "reconstructions",
            "probe_accuracy",
            "band_errors",
            "eigenvalue_spectrum",
            "accuracy_per_layer",
            "eigenvalue_spectrum_per_layer",
        )
    }
)


def remote_code_files() -> frozenset[str]:
    """The ``.py`` files ``save_pretrained`` copies for ``trust_remote_code`` (our modeling modules and what they
    import, as transformers resolves it)."""
    from transformers.dynamic_module_utils import get_relative_import_files  # noqa: PLC0415

    from .. import modeling_recperc, modeling_recperc_mae  # noqa: PLC0415

    files = {modeling_recperc.__file__, modeling_recperc_mae.__file__}
    for module in list(files):
        files.update(get_relative_import_files(module))
    return frozenset(Path(name).name for name in files)


# What the run itself keeps in output_dir besides the published files; never a collision.
RUN_DIRECTORIES = ("checkpoints", "logs")


def earlier_run_error(output_dir: str | Path, checkpoint: str) -> ValueError:
    """The one-line refusal of a fresh run into an ``output_dir`` that holds an earlier run's ``checkpoint``, with
    the three ways out (continue, start over, go elsewhere)."""
    return ValueError(
        f"output_dir: {str(output_dir)!r} holds an earlier run ({checkpoint}); add --resume_from_checkpoint latest "
        "to continue it, --overwrite_output_dir to start over, or choose another --output_dir"
    )


def refuse_earlier_run(output_dir: str | Path, resume_from_checkpoint: str | None, overwrite: bool) -> None:
    """Raise :func:`earlier_run_error` when a fresh run (neither ``resume_from_checkpoint`` nor ``overwrite``) would
    start in an ``output_dir`` holding checkpoints. Standard library only, so that the command refuses within a
    second of starting, before torch is imported; the loop checks again (``checkpointing.resolve_resume``) with
    the same message. A checkpoint is a ``checkpoints/checkpoint-<step>`` directory (``training/state.py``)."""
    if resume_from_checkpoint is not None or overwrite:
        return
    steps = [
        int(path.name.removeprefix("checkpoint-"))
        for path in (Path(output_dir) / "checkpoints").glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit()
    ]
    if steps:
        raise earlier_run_error(Path(output_dir).resolve(), f"checkpoint-{max(steps)}")


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


class OutputDirectory:
    """``output_dir`` of one run (used by the main process only).

    Args:
        path: the output directory (resolved: ``.`` works).
    """

    def __init__(self, path: str | Path):
        self.path = Path(path).resolve()
        self.lock_path = self.path.with_name(f".{self.path.name}.lock")
        # Publish by renaming files, not the directory (mount points, read-only parents).
        self.file_by_file = False
        self.locked = False  # whether this object holds the lock (only then does it release it)
        self.created = False  # whether this run created output_dir (an empty one is removed on a failure)

    # ---------------------------------------------------------------------------------------------- at start

    def prepare(self) -> None:
        """Before any costly work: check that publishing will work, take the lock, clean up after killed runs,
        refuse to overwrite the user's files (``ValueError`` naming ``output_dir``)."""
        self._check_writable()
        self.acquire_lock()
        try:
            self.clean_leftovers()
            collisions = self.collisions()
            if collisions:
                raise ValueError(
                    f"output_dir: {str(self.path)!r} holds files this run would overwrite but did not write: "
                    f"{', '.join(sorted(collisions))}; choose another --output_dir or move them"
                )
        except BaseException:
            self.release_lock()
            raise

    def _check_writable(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise ValueError(
                f"output_dir: {str(path)!r} is a file, expected a directory (or a path to create)"
            )
        try:
            self.created = not path.exists()
            path.mkdir(parents=True, exist_ok=True)
            probe = path / f".hf_recperc_write_test-{os.getpid()}"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ValueError(f"output_dir: {str(path)!r} is not writable ({err.strerror or err})") from err
        # A mount point (a container volume) cannot be renamed; a read-only parent cannot hold a staging sibling.
        self.file_by_file = os.path.ismount(path) or not os.access(path.parent, os.W_OK)
        if self.file_by_file:
            logger.info(
                f"output_dir {path} is a mount point or its parent is read-only: publishing file by file"
            )

    def collisions(self) -> set[str]:
        """Files under a name the run writes that no earlier run wrote (the user's own)."""
        if not self.path.is_dir():
            return set()
        ours = set(self.manifest()) or (RUN_FILES if (self.path / "results.json").is_file() else set())
        return {
            entry.name for entry in self.path.iterdir() if entry.name in RUN_FILES and entry.name not in ours
        }

    def manifest(self) -> list[str]:
        """The files the last run published here (empty when none did)."""
        return _manifest_of(self.path)

    def acquire_lock(self) -> None:
        """Take the lock, or refuse while another live run holds it; a dead owner's lock is taken over."""
        lock = self.lock_path if os.access(self.path.parent, os.W_OK) else self.path / ".hf_recperc.lock"
        self.lock_path = lock
        owner = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                descriptor = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                self._check_lock_owner(lock)
                continue  # the stale lock was removed: try again
            with os.fdopen(descriptor, "w") as handle:
                json.dump(owner, handle)
            self.locked = True
            return
        raise ValueError(f"output_dir: could not take the lock {lock}")

    def _check_lock_owner(self, lock: Path) -> None:
        try:
            holder = json.loads(lock.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = -1, socket.gethostname()  # unreadable (a run killed mid-write): treat as dead
        if host != socket.gethostname() or (pid > 0 and _process_alive(pid)):
            raise ValueError(
                f"output_dir: {str(self.path)!r} is in use by another run (process {pid} on {host}, lock file "
                f"{lock}); wait for it to finish, or use another --output_dir"
            )
        logger.info(f"removed the lock of process {pid}, which no longer runs ({lock})")
        lock.unlink(missing_ok=True)

    def release_lock(self) -> None:
        """Release the lock; remove ``output_dir`` again if this run created it and wrote nothing into it."""
        if self.locked:
            self.lock_path.unlink(missing_ok=True)
            self.locked = False
        if self.created and self.path.is_dir() and not any(self.path.iterdir()):
            self.path.rmdir()

    def clean_leftovers(self) -> None:
        """Staging and set-aside directories of runs killed while publishing (dead PIDs only): a directory set
        aside mid-swap is put back when ``output_dir`` is empty, its extra files carried over otherwise."""
        prefix = f".{self.path.name}."
        for entry in [*self.path.parent.glob(f"{prefix}*-*"), *self.path.glob(f"{prefix}staging-*")]:
            kind, _, pid = entry.name.removeprefix(prefix).rpartition("-")
            if kind not in ("staging", "old") or not pid.isdigit() or _process_alive(int(pid)):
                continue
            if kind == "old" and not any(p.name != self.lock_path.name for p in self.path.iterdir()):
                shutil.rmtree(self.path)  # the empty directory this start created
                os.replace(entry, self.path)
                logger.info(f"restored the previous output of a run killed while publishing ({entry.name})")
                continue
            if kind == "old":
                stale = set(_manifest_of(entry)) - set(self.manifest())
                self._carry_over(entry, stale)
            shutil.rmtree(entry, ignore_errors=True)
            logger.info(f"removed {entry}, left by process {pid} (no longer running)")
        for entry in (self.path / "checkpoints").glob(".tmp-*"):
            shutil.rmtree(entry, ignore_errors=True)  # an interrupted checkpoint; the previous one is whole

    # ------------------------------------------------------------------------------------------------ publish

    def publish(self, staging: Path) -> None:
        """Make ``staging``'s files the published set: replace the previous run's files, remove those it wrote
        that this run did not, keep everything else (checkpoints, logs, the user's files)."""
        written = sorted(entry.name for entry in staging.iterdir())
        (staging / MANIFEST).write_text(json.dumps({"files": written}, indent=1) + "\n")
        stale = set(self.manifest()) - set(written)
        if self.file_by_file:
            for name in written + [MANIFEST]:
                os.replace(staging / name, self.path / name)  # one rename per file, each atomic
            for name in stale:
                _remove(self.path / name)
            shutil.rmtree(staging, ignore_errors=True)
            return
        previous = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
        os.replace(self.path, previous)
        os.replace(
            staging, self.path
        )  # between the two renames output_dir is briefly absent, never half-written
        self._carry_over(previous, stale)
        shutil.rmtree(previous, ignore_errors=True)

    def _carry_over(self, previous: Path, stale: set[str]) -> None:
        """Move what the new output does not have back from ``previous``, except the old run's stale files."""
        for entry in previous.iterdir():
            if entry.name not in stale and not (self.path / entry.name).exists():
                os.replace(entry, self.path / entry.name)

    def staging(self) -> Path:
        """A fresh staging directory beside ``output_dir`` (inside it when publishing file by file)."""
        base = self.path if self.file_by_file else self.path.parent
        staging = base / f".{self.path.name}.staging-{os.getpid()}"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        return staging


def _manifest_of(directory: Path) -> list[str]:
    try:
        return list(json.loads((directory / MANIFEST).read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
