"""``torch.distributed`` helpers shared by every statistic that merges across processes (probes, monitors, the
report): each is a no-op in a single process, so the same code runs alone or under ``accelerate launch``. Plus
:class:`FileExchange`, the evaluate metric's merge through files when there is no process group."""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import torch

from .publish.atomic import atomic_path, clean_partials

__all__ = ["is_distributed", "distributed_sum", "gather_rows", "run_on_main_process", "FileExchange"]


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` group of more than one process."""
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and (torch.distributed.get_world_size() > 1)
    )


def distributed_sum(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over processes (in place, and returned); unchanged in one process."""
    if is_distributed():
        torch.distributed.all_reduce(values)
    return values


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate every process's `(n_p, ...)` rows, in rank order, on every process: `(sum_p n_p, ...)`.

    Shards may differ in length (the last one is shorter): each is padded to the longest, gathered, and trimmed.
    """
    if not is_distributed():
        return rows
    world = torch.distributed.get_world_size()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    torch.distributed.all_gather(counts, count)
    longest = int(max(c.item() for c in counts))
    padded = rows.new_zeros((longest, *rows.shape[1:]))
    padded[: rows.shape[0]] = rows
    gathered = [torch.zeros_like(padded) for _ in range(world)]
    torch.distributed.all_gather(gathered, padded)
    return torch.cat([g[: int(c.item())] for g, c in zip(gathered, counts)])


def run_on_main_process(accelerator, work) -> None:
    """Run ``work()`` on the main process only; a ``ValueError`` it raises is raised on every process (with the
    same message), so that no process waits forever for a main process that stopped."""
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415

    message = [None]
    if accelerator.is_main_process:
        try:
            work()
        except ValueError as err:
            message[0] = str(err)
    if accelerator.num_processes > 1:
        broadcast_object_list(message)
    if message[0] is not None:
        raise ValueError(message[0])


# Interval at which a process looks again for a file or a lock of another process.
_POLL_SECONDS = 0.05
# Tokens of the exchanges this (operating-system) process already sent a state to: a token still published by a
# process 0 that is finishing that exchange must not be taken for the next one.
_SENT_TOKENS: set[str] = set()


class FileExchange:
    """Process states sent to process 0 through files, for evaluate's ``num_process`` / ``process_id`` mode.

    Follows evaluate's own handshake (``evaluate.EvaluationModule``: a lock that process 0 holds while it collects,
    a rendez-vous lock, files named by ``experiment_id``), and adds a per-exchange token so that a file left by a
    crashed evaluation with the same ``experiment_id`` is never merged:

    * process 0, holding the rendez-vous lock, takes its own lock (refusing a second live evaluation of the same
      name), deletes the state files of dead exchanges and publishes a fresh random token, then releases the
      rendez-vous. It reads ``NAME-P.TOKEN.probe.pt`` of every process ``P > 0`` in order, deletes each once
      read, then withdraws the token and releases its lock.
    * process ``P > 0`` waits until process 0 holds its lock, reads the token under the rendez-vous lock (so it is
      the token of that live process 0, never one left by a dead one, nor one it already answered), writes its
      file atomically (temporary name, then rename) and waits until process 0 has taken it, so that its next
      evaluation cannot overwrite a state not yet read.

    Args:
        directory: where the files live (the metric's ``data_dir``).
        name: the exchange's name, e.g. ``f"{experiment_id}-{num_process}"``.
        num_process, process_id: as in evaluate.
        timeout: seconds to wait for the other processes (evaluate's ``timeout``).
    """

    def __init__(
        self, directory: str | os.PathLike, name: str, num_process: int, process_id: int, timeout: float
    ):
        self.directory, self.name = Path(directory), name
        self.num_process, self.process_id, self.timeout = num_process, process_id, timeout

    def _path(self, suffix: str) -> Path:
        return self.directory / f"{self.name}{suffix}"

    def _lock(self, suffix: str):
        from filelock import FileLock  # noqa: PLC0415  (only in evaluate's multi-process mode)

        return FileLock(str(self._path(suffix)))

    def _state_path(self, process_id: int, token: str) -> Path:
        return self._path(f"-{process_id}.{token}.probe.pt")

    # ---------------------------------------------------------------------------------------- process 0

    def receive(self, merge: Callable[[dict], None]) -> None:
        """Process 0: call ``merge(state)`` with the state of every process ``1 .. num_process - 1``, in order."""
        from filelock import Timeout  # noqa: PLC0415

        own, rendez_vous = self._lock("-0.probe.lock"), self._lock("-rdv.probe.lock")
        try:
            rendez_vous.acquire(timeout=self.timeout)
            own.acquire(timeout=1)
        except Timeout:
            rendez_vous.release()  # a no-op when it was not taken
            raise ValueError(
                f"experiment_id: another evaluation named {self.name!r} is collecting in {self.directory}; "
                "give concurrent evaluations distinct experiment_id values"
            ) from None
        try:
            self._remove_state_files()  # of dead exchanges: no live process has this exchange's token yet
            token = uuid.uuid4().hex
            self._write_atomically(self._path(".probe-token"), lambda path: Path(path).write_text(token))
        except BaseException:
            own.release()
            raise
        finally:
            rendez_vous.release()
        try:
            deadline = time.monotonic() + self.timeout
            for process_id in range(1, self.num_process):
                path = self._state_path(process_id, token)
                while not path.exists():
                    if time.monotonic() > deadline:
                        raise ValueError(
                            f"num_process: waited {self.timeout} s for process {process_id}'s state ({path}); "
                            "every process must call compute() with the same experiment_id"
                        )
                    time.sleep(_POLL_SECONDS)
                state = torch.load(path, weights_only=True)
                path.unlink()
                merge(state)
        finally:
            self._path(".probe-token").unlink(missing_ok=True)
            self._remove_state_files(token)
            own.release()

    def _remove_state_files(self, token: str | None = None) -> None:
        """Delete this exchange's state files (finished or partial): all of them, or those of ``token``; and
        partial files of writers that no longer run."""
        clean_partials(self.directory)
        prefix = f"{self.name}-"
        for entry in os.scandir(self.directory):
            rest = entry.name[len(prefix) :] if entry.name.startswith(prefix) else ""
            process, _, tail = rest.partition(".")
            file_token, _, kind = tail.partition(".")
            ours = kind in ("probe.pt", "probe.pt.partial") and (token is None or file_token == token)
            # Files of older versions carried no token.
            untokened = token is None and tail in ("probe.pt", "probe.pt.partial")
            if process.isdigit() and (ours or untokened):
                Path(entry.path).unlink(missing_ok=True)

    # ------------------------------------------------------------------------------------ processes > 0

    def send(self, state: dict) -> None:
        """Process ``P > 0``: hand ``state`` to process 0 and return once process 0 has read it."""
        deadline = time.monotonic() + self.timeout
        token = self._await_token(deadline)
        path = self._state_path(self.process_id, token)
        self._write_atomically(path, lambda partial: torch.save(state, partial))
        _SENT_TOKENS.add(token)
        while path.exists():
            if time.monotonic() > deadline:
                path.unlink(missing_ok=True)
                raise ValueError(
                    f"num_process: process 0 did not collect process {self.process_id}'s state within "
                    f"{self.timeout} s; every process must call compute() with the same experiment_id"
                )
            time.sleep(_POLL_SECONDS)

    def _await_token(self, deadline: float) -> str:
        """The token of the live process 0's exchange, once it is published (see the class docstring)."""
        while True:
            if self._process_zero_collecting():
                token = self._read_token(max(deadline - time.monotonic(), 0))
                if token and token not in _SENT_TOKENS:
                    return token
            if time.monotonic() > deadline:
                raise ValueError(
                    f"num_process: process {self.process_id} waited {self.timeout} s for process 0 to collect "
                    f"({self.name!r} in {self.directory}); every process must call compute() with the same "
                    "experiment_id"
                )
            time.sleep(_POLL_SECONDS)

    def _read_token(self, timeout: float) -> str | None:
        """The published token, read under the rendez-vous lock (``None`` when none is published or the lock
        stays taken)."""
        from filelock import Timeout  # noqa: PLC0415

        try:
            with self._lock("-rdv.probe.lock").acquire(timeout=timeout):
                token_path = self._path(".probe-token")
                return token_path.read_text() if token_path.exists() else None
        except Timeout:
            return None

    def _process_zero_collecting(self) -> bool:
        """Whether process 0 holds its lock (evaluate's "file free lock" test: try to take it, give it back)."""
        from filelock import Timeout  # noqa: PLC0415

        lock = self._lock("-0.probe.lock")
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        return False

    @staticmethod
    def _write_atomically(path: Path, write: Callable[[str], None]) -> None:
        with atomic_path(path) as partial:  # a killed writer's partial file: clean_partials removes it
            write(str(partial))
