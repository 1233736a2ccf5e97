"""The one evaluation pass: monitors fed from a :class:`FeatureSource` (docs/design.md, "The evaluation engine").

The trainer's source encodes its loaders with the model being trained (:mod:`hf_recperc.training.evaluation`), the
perception report's extracts pooled hidden states of any backbone (:mod:`hf_recperc.report.run`), an experiment's
may yield stored features; :func:`run_monitors` treats them alike: reset, feed every batch to every monitor, merge
across processes, compute.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from .base import Monitor, MonitorBatch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["FeatureSource", "run_monitors", "compute_monitors", "monitor_figures", "wanted_features"]


@runtime_checkable
class FeatureSource(Protocol):
    """Where the monitors' batches come from: ``"train"`` batches (rows to fit on) then ``"eval"`` batches (rows to
    score), this process's shard of each."""

    def batches(self, features: set[str]) -> Iterable[MonitorBatch]:
        """Yield :class:`MonitorBatch` objects holding (at least) the named ``features``."""


def wanted_features(monitors: Sequence[Monitor]) -> set[str]:
    """Every feature name some monitor reads (a source computes only these)."""
    return {name for monitor in monitors for name in monitor.features}


def compute_monitors(monitors: Sequence[Monitor]) -> dict[str, float]:
    """Merge every monitor across processes, then compute: flat keys (without ``eval/``)."""
    for monitor in monitors:
        monitor.all_reduce()
    metrics: dict[str, float] = {}
    for monitor in monitors:
        metrics.update(monitor.compute())
    return metrics


def run_monitors(
    monitors: Sequence[Monitor], source: FeatureSource, timings: dict[str, float] | None = None
) -> dict[str, float]:
    """Reset the monitors, feed them every batch of ``source``, merge and compute; flat keys (without ``eval/``).

    The same on every process of a ``torch.distributed`` group (each feeds its own shard).

    Args:
        timings: if given, receives ``feed_seconds`` (producing the batches and updating the monitors: feature
            extraction) and ``compute_seconds`` (merging and computing: the probes' solves).
    """
    started = time.perf_counter()
    for monitor in monitors:
        monitor.reset()
    for batch in source.batches(wanted_features(monitors)):
        for monitor in monitors:
            monitor.update(batch)
    fed = time.perf_counter()
    metrics = compute_monitors(monitors)
    if timings is not None:
        timings.update(feed_seconds=fed - started, compute_seconds=time.perf_counter() - fed)
    return metrics


def monitor_figures(monitors: Sequence[Monitor]) -> dict[str, Figure]:
    """File stem -> figure of every monitor's last ``compute``."""
    figures = {}
    for monitor in monitors:
        figures.update(monitor.figures())
    return figures
