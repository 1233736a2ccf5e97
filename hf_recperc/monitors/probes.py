"""Linear probes as monitors: the subspace-restricted probe (the ``evaluate`` metric's code) and the model's own
online probe.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch

from ..probing import SubspaceProbe
from ..results import ONLINE_PROBE_ACCURACY, SUBSPACE_FIELDS, subspace_key
from ..spectral import parse_subspace, subspace_indices
from .base import EVAL, TRAIN, MonitorBatch, distributed_sum, gather_rows

__all__ = ["SubspaceProbeMonitor", "OnlineProbeMonitor", "score_subspace_probe"]

DEFAULT_SUBSPACES = ("top:0.9", "bottom:0.2", "all")
logger = logging.getLogger(__name__)


def score_subspace_probe(probe: SubspaceProbe, X: torch.Tensor, y: torch.Tensor) -> dict[str, float | int]:
    """``probe.score(X, y)``, with empty subspaces reported instead of raised.

    Early in training embeddings can be degenerate (a ViT MAE's CLS token may vary along one direction holding
    95% of the variance, so ``top:0.9`` keeps no component). One evaluation must not stop the run: an empty
    subspace gets accuracy NaN, 0 dims and explained variance 0.0, with a warning.

    Returns:
        ``accuracy/S``, ``dims/S``, ``explained_variance/S`` for every subspace of ``probe.subspaces``, and
        ``num_train``.
    """
    original = probe.subspaces
    requested = list(original)
    valid = []
    for spec in requested:
        try:
            subspace_indices(spec, probe.explained_variance_ratio_)
            valid.append(spec)
        except ValueError as err:
            logger.warning(f"subspace probe: {err}; reported as NaN")
    scores: dict[str, float | int] = {"num_train": int(probe.n_samples_seen_)}
    if valid:
        probe.subspaces = valid  # an estimator parameter: score only what exists, then restore
        try:
            scores.update(probe.score(X, y))
        finally:
            probe.subspaces = original
    for spec in requested:
        scores.setdefault(f"accuracy/{spec}", float("nan"))
        scores.setdefault(f"dims/{spec}", 0)
        scores.setdefault(f"explained_variance/{spec}", 0.0)
    return {k: v for k, v in scores.items() if not isinstance(v, str)}


class SubspaceProbeMonitor:
    """:class:`~hf_recperc.probing.SubspaceProbe` on one feature: fitted on the ``"train"`` rows (streamed float64
    statistics, summed across processes), scored on the ``"eval"`` rows (gathered from every process).

    Reports ``subspace_probe/{accuracy,dims,explained_variance}/<S>`` and ``subspace_probe/num_train`` (with
    ``prefix`` in front, e.g. ``layers/layer_3/cls/`` for per-layer probes, whose keys then drop the
    ``subspace_probe/`` level).

    Args:
        feature: which :attr:`MonitorBatch.features` entry to read.
        subspaces, ridge, standardize: see :class:`~hf_recperc.probing.SubspaceProbe`.
        prefix: replaces the ``subspace_probe/`` key level when given.
    """

    name = "subspace"

    def __init__(
        self,
        feature: str = "embedding",
        subspaces: Sequence[str] = DEFAULT_SUBSPACES,
        ridge: float = 1e-3,
        standardize: bool = False,
        prefix: str | None = None,
    ):
        self.feature, self.subspaces = feature, list(subspaces)
        self.ridge, self.standardize = ridge, standardize
        self.prefix = (
            subspace_key("", "").removesuffix("/") if prefix is None else prefix
        )  # "subspace_probe/"
        self.features = (feature,)
        for spec in self.subspaces:
            parse_subspace(spec)  # a malformed spec fails here, not after the first evaluation pass
        self.reset()

    def reset(self) -> None:
        self.probe = SubspaceProbe(subspaces=self.subspaces, ridge=self.ridge, standardize=self.standardize)
        self._eval_rows: list[torch.Tensor] = []
        self._eval_labels: list[torch.Tensor] = []
        self._reduced = False

    def update(self, batch: MonitorBatch) -> None:
        rows = batch.features[self.feature].detach()
        if batch.split == TRAIN:
            self.probe.partial_fit(rows.double(), batch.labels)
        elif batch.split == EVAL:
            self._eval_rows.append(rows.float())
            self._eval_labels.append(batch.labels.detach())

    def all_reduce(self) -> None:
        if not self._reduced:
            self.probe.all_reduce()
            self._reduced = True

    def eval_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ``"eval"`` rows of every process, `(N_eval, D)` float64, and their labels `(N_eval,)` (collective:
        call on every process)."""
        return gather_rows(torch.cat(self._eval_rows)).double(), gather_rows(torch.cat(self._eval_labels))

    def compute(self) -> dict[str, float]:
        self.all_reduce()
        X, y = self.eval_data()  # (N_eval, D) on every process
        scores = score_subspace_probe(self.probe, X, y)
        keys = [f"{name}/{spec}" for name in SUBSPACE_FIELDS for spec in self.subspaces] + ["num_train"]
        return {f"{self.prefix}{key}": scores[key] for key in keys}

    def figures(self) -> dict:
        return {}


def subspace_probe_keys(subspaces: Sequence[str]) -> list[str]:
    """The keys a default :class:`SubspaceProbeMonitor` reports (without the ``eval/`` prefix)."""
    return [subspace_key(name, spec) for name in SUBSPACE_FIELDS for spec in subspaces]


class OnlineProbeMonitor:
    """Accuracy of the model's own linear probe (:attr:`MonitorBatch.logits`) on the ``"eval"`` rows."""

    name = "online_probe"
    features = ()

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._counts = torch.zeros(2, dtype=torch.float64)

    def update(self, batch: MonitorBatch) -> None:
        if batch.split != EVAL or batch.logits is None:
            return
        correct = (batch.logits.argmax(-1) == batch.labels).sum()
        self._counts = self._counts.to(correct.device) + torch.stack(
            [correct.double(), torch.tensor(float(batch.labels.numel()), device=correct.device)]
        )

    def all_reduce(self) -> None:
        distributed_sum(self._counts)

    def compute(self) -> dict[str, float]:
        correct, total = self._counts.tolist()
        return {ONLINE_PROBE_ACCURACY: correct / total if total else float("nan")}

    def figures(self) -> dict:
        return {}
