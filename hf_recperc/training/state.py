"""The trainer's own state: what ``accelerator.save_state`` does not restore (accelerate#1601: the iteration
counter), saved as ``trainer_state.json`` in every checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..results import TRAIN_LOSSES

__all__ = ["TrainerState", "TRAINER_STATE", "CHECKPOINT_PREFIX"]

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
        if self.batch_in_epoch == batches_per_epoch:
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0

    def clear_train_sums(self) -> None:
        self.train_sums, self.train_count = dict.fromkeys(TRAIN_LOSSES, 0.0), 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> TrainerState:
        known = {k: payload[k] for k in cls.__dataclass_fields__ if k in payload}
        state = cls(**known)
        state.train_sums = dict.fromkeys(TRAIN_LOSSES, 0.0) | dict(state.train_sums)
        return state

    @classmethod
    def load(cls, path: str | Path) -> TrainerState:
        """Read ``trainer_state.json``; a corrupt file is a ``ValueError`` naming it."""
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, json.JSONDecodeError, TypeError) as err:
            raise ValueError(
                f"resume_from_checkpoint: {path} is not a readable trainer state: {err}"
            ) from err
