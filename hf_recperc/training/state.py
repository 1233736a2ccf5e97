"""The trainer's own state: the position in the run, the history and the run's arguments (what accelerate's
``save_state`` would not restore either, accelerate#1601: the iteration counter), saved as ``trainer_state.json``
in every checkpoint and checked against a schema when read.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..results import TRAIN_LOSSES

__all__ = ["TrainerState", "DeviceLossSums", "PhaseTimer", "TRAINER_STATE", "CHECKPOINT_PREFIX"]

TRAINER_STATE = "trainer_state.json"  # inside every checkpoint directory
CHECKPOINT_PREFIX = "checkpoint-"  # checkpoints/checkpoint-<step>


@dataclass
class TrainerState:
    """Position in the run and what was measured so far.

    Attributes:
        step: optimiser steps completed.
        epoch: epochs completed (the data order of epoch ``e`` is a function of ``(seed, e)``).
        batch_in_epoch: micro-batches of the current epoch already consumed.
        history: one flat record per evaluation (``history.json``).
        train_sums: per training loss, the sum over micro-batches since the last evaluation (this process's share;
            the main process holds the merged sums after a checkpoint).
        train_count: micro-batches summed in ``train_sums``.
        run_args: the arguments the run was started with (JSON-normalised), compared on resume.
    """

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    train_sums: dict[str, float] = field(default_factory=lambda: dict.fromkeys(TRAIN_LOSSES, 0.0))
    train_count: int = 0
    run_args: dict[str, Any] = field(default_factory=dict)

    def advance(self, batches_per_epoch: int) -> None:
        """One micro-batch consumed: move the data position, rolling over to the next epoch."""
        self.batch_in_epoch += 1
        if self.batch_in_epoch >= batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def clear_train_sums(self) -> None:
        self.train_sums, self.train_count = dict.fromkeys(TRAIN_LOSSES, 0.0), 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: Any) -> TrainerState:
        """The state in ``payload`` (``trainer_state.json``), after checking every field's type and range: a
        damaged file must not restart the step counter on trained weights. ``ValueError`` names the field."""
        _check_schema(payload)
        state = cls(**{k: payload[k] for k in cls.__dataclass_fields__})
        state.train_sums = dict.fromkeys(TRAIN_LOSSES, 0.0) | dict(state.train_sums)
        return state

    @classmethod
    def load(cls, path: str | Path) -> TrainerState:
        """Read ``trainer_state.json``; a corrupt or invalid file is a one-line ``ValueError`` naming it."""
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(
                f"resume_from_checkpoint: {path} is not a readable trainer state: {err}"
            ) from err
        try:
            return cls.from_dict(payload)
        except ValueError as err:
            raise ValueError(f"resume_from_checkpoint: {path} is not a valid trainer state: {err}") from err


def _is_count(value: Any) -> bool:
    return type(value) is int and value >= 0  # bool is an int subclass: type() excludes it


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


# field -> (check, what is expected): the schema of trainer_state.json, every field required.
_SCHEMA = {
    "step": (_is_count, "a non-negative integer"),
    "epoch": (_is_count, "a non-negative integer"),
    "batch_in_epoch": (_is_count, "a non-negative integer"),
    "history": (lambda v: isinstance(v, list) and all(isinstance(r, dict) for r in v), "a list of records"),
    "train_sums": (
        lambda v: isinstance(v, dict) and all(isinstance(k, str) and _is_number(x) for k, x in v.items()),
        "an object of numbers",
    ),
    "train_count": (_is_count, "a non-negative integer"),
    "run_args": (lambda v: isinstance(v, dict), "an object of the run's arguments"),
}


def _check_schema(payload: Any) -> None:
    if not isinstance(payload, dict):
        raise ValueError(
            f"expected a JSON object with the fields {', '.join(_SCHEMA)}, got {type(payload).__name__}"
        )
    for name, (valid, expected) in _SCHEMA.items():
        if name not in payload:
            raise ValueError(f"field {name!r} is missing (expected {expected})")
        if not valid(payload[name]):
            shown = repr(payload[name])
            raise ValueError(f"field {name!r}: expected {expected}, got {shown[:60]}")


class DeviceLossSums:
    """The training losses summed on the device, read by the host only at log lines and evaluations.

    Two rows of `(len(TRAIN_LOSSES),)` sums: since the last evaluation (folded into
    :attr:`TrainerState.train_sums` by :meth:`fold_into`) and since the last log line (:meth:`pop_log_mean`).
    float64, so that long sums stay exact (float32 on MPS, which has no float64).
    """

    def __init__(self, device: torch.device):
        dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.sums = torch.zeros(2, len(TRAIN_LOSSES), dtype=dtype, device=device)
        self.zero = torch.zeros((), device=device)
        self.log_count = 0

    def add(self, outputs) -> None:
        """One micro-batch's ``loss``, ``reconstruction_loss``, ``supervised_loss`` (``None`` counts 0)."""
        values = [getattr(outputs, name) for name in TRAIN_LOSSES]
        losses = torch.stack([self.zero if v is None else v.detach().float() for v in values])  # (3,)
        self.sums += losses.to(self.sums.dtype)  # broadcast over both rows
        self.log_count += 1

    def pop_log_mean(self) -> float:
        """Mean ``loss`` since the last call (one host read); restarts the count."""
        mean = float(self.sums[1, TRAIN_LOSSES.index("loss")]) / max(self.log_count, 1)
        self.sums[1].zero_()
        self.log_count = 0
        return mean

    def fold_into(self, train_sums: dict[str, float]) -> None:
        """Add the since-evaluation sums to ``train_sums`` (one host read) and restart them."""
        for name, value in zip(TRAIN_LOSSES, self.sums[0].tolist()):
            train_sums[name] += value
        self.sums[0].zero_()


class PhaseTimer:
    """Wall seconds per phase of a run: ``with timer("evaluate"): ...``; :meth:`finish` adds the derived ones.

    ``timings``: ``setup`` (data preparation until the first step, the pixel spectrum included), ``spectrum``,
    ``evaluate``, ``checkpoint``, ``publish``; then ``total``, ``monitor`` (spectrum + evaluations) and ``training``
    (the rest: the steps and their logging).
    """

    PHASES = ("setup", "spectrum", "evaluate", "checkpoint", "publish")

    def __init__(self):
        self.timings = dict.fromkeys(self.PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings[phase] += time.perf_counter() - start

    def finish(self, total: float) -> str:
        """Record the run's ``total`` seconds; returns a log line with the monitor's share."""
        timings = self.timings
        timings["total"] = total
        timings["monitor"] = timings["spectrum"] + timings["evaluate"]
        timings["training"] = total - sum(timings[k] for k in ("setup", "evaluate", "checkpoint", "publish"))
        phases = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
        return f"time: {phases} (monitor {100 * timings['monitor'] / max(total, 1e-9):.1f}% of the run)"
