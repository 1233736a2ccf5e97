"""The contract every measurement follows, and the batch it reads.

A :class:`Monitor` sees every evaluation batch on every process (``update``), merges what it gathered across
processes (``all_reduce``), then reports numbers (``compute``) and, optionally, figures (``figures``). The trainer
(:mod:`hf_recperc.training`) and the perception report run the same monitors; a user can pass their own.

Two splits reach a monitor: ``"train"`` rows are what it may *fit* on (probe statistics, the kNN bank), ``"eval"``
rows are what it *scores*. Every process sees its own disjoint shard of each split, with no padding duplicates, so
``all_reduce`` only has to sum (or concatenate) to reach the one-process answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch

from ..distributed import distributed_sum, gather_rows, is_distributed

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["Monitor", "MonitorBatch", "TRAIN", "EVAL", "gather_rows", "distributed_sum", "is_distributed"]

TRAIN, EVAL = "train", "eval"


@dataclass
class MonitorBatch:
    """What one batch of the evaluation pass offers the monitors. Every field but ``split`` may be absent.

    Args:
        split: ``"train"`` (rows to fit on) or ``"eval"`` (rows to score).
        labels (`torch.LongTensor` of shape `(batch_size,)`): class ids.
        features: feature name -> `(batch_size, dim)` tensor, e.g. ``"embedding"`` (the model's
            ``get_embeddings``) or ``"layer_3/cls"`` (a pooled hidden state, :mod:`hf_recperc.monitors.layers`).
            Any floating dtype: monitors accumulate in float64.
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): clean inputs.
        reconstruction (same shape as ``pixel_values``): what the reconstruction metrics score.
        reconstruction_weight (`torch.FloatTensor` of shape `(batch_size, 1, height, width)`): where the
            reconstruction is scored (1) or not (0); ``None`` scores every pixel.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): the model's own (online) probe.
    """

    split: str
    labels: torch.Tensor | None = None
    features: dict[str, torch.Tensor] = field(default_factory=dict)
    pixel_values: torch.Tensor | None = None
    reconstruction: torch.Tensor | None = None
    reconstruction_weight: torch.Tensor | None = None
    logits: torch.Tensor | None = None


@runtime_checkable
class Monitor(Protocol):
    """A measurement. ``name`` identifies it (``--monitors NAME``); ``features`` lists the feature names it reads
    from :attr:`MonitorBatch.features` (the trainer computes only what some monitor asks for)."""

    name: str
    features: tuple[str, ...]

    def reset(self) -> None:
        """Forget every batch seen (called before each evaluation pass)."""

    def update(self, batch: MonitorBatch) -> None:
        """Accumulate one batch of this process's shard."""

    def all_reduce(self) -> None:
        """Merge the accumulated state of every process (a no-op without ``torch.distributed``)."""

    def compute(self) -> dict[str, float]:
        """The numbers, keyed without the ``eval/`` prefix (:mod:`hf_recperc.results`); the same on every process."""

    def figures(self) -> dict[str, Figure]:
        """Figures of the last ``compute``: file stem -> matplotlib Figure (may be empty)."""


def concat_or_empty(
    chunks: list[torch.Tensor], width: int | None = None, dtype=torch.float32
) -> torch.Tensor:
    """``torch.cat(chunks)``, or an empty `(0, width)` tensor (a process whose shard was empty)."""
    if chunks:
        return torch.cat(chunks)
    return torch.zeros((0,) if width is None else (0, width), dtype=dtype)


def as_float_dict(values: dict[str, Any]) -> dict[str, float]:
    """Python floats / ints out (JSON, trackers, model cards)."""
    return {k: (int(v) if isinstance(v, int) else float(v)) for k, v in values.items()}
