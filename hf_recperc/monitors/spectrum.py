"""Shape of the embeddings' eigen-spectrum: effective rank (RankMe), power-law decay (alpha-ReQ), participation
ratio and the number of components holding 90% of the variance.

All four come from the eigenvalues ``l_1 >= ... >= l_D`` of the covariance of the centred features, the same
eigenvalues the subspace probe's PCA computes (so a :class:`SpectrumMonitor` linked to a
:class:`~hf_recperc.monitors.probes.SubspaceProbeMonitor` runs no second eigendecomposition):

* RankMe (Garrido et al. 2023): ``exp(-sum_i p_i log p_i)`` with ``p_i = s_i / sum_j s_j`` and ``s_i = sqrt(l_i)``
  the singular values of the centred features (the scale cancels).
* alpha-ReQ (Agrawal et al. 2022): ``l_i ~ i^-alpha``; ``alpha`` is minus the least-squares slope of ``log l_i``
  on ``log i`` over the non-zero eigenvalues.
* participation ratio: ``(sum l)^2 / sum l^2``.
* ``components_90``: the smallest ``k`` with ``l_1 + ... + l_k >= 0.9 sum l``.
"""

from __future__ import annotations

import math

import torch

from ..results import SPECTRUM_FIELDS, spectrum_key
from ..spectral import PCA, SecondMoments
from .base import TRAIN, MonitorBatch

__all__ = [
    "SpectrumMonitor",
    "spectrum_statistics",
    "nonzero_eigenvalues",
    "spectrum_figure",
    "feature_label",
]


def nonzero_eigenvalues(eigenvalues: torch.Tensor) -> torch.Tensor:
    """Descending eigenvalues above the solver's noise floor (``l_1 * D * eps`` of their dtype), as float64.

    Rank-deficient features (fewer rows than dimensions, dead units) have eigenvalues that are zero up to rounding;
    their logarithms would dominate the power-law fit.
    """
    values = eigenvalues.detach().double().flatten().sort(descending=True).values
    if values.numel() == 0 or not torch.isfinite(values).all():
        raise ValueError("eigenvalues: expected a non-empty vector of finite eigenvalues")
    floor = values[0].clamp_min(0) * values.numel() * torch.finfo(eigenvalues.dtype).eps
    return values[values > floor]


def spectrum_statistics(eigenvalues: torch.Tensor, fraction: float = 0.9) -> dict[str, float]:
    """RankMe, alpha, participation ratio and ``components_90`` from covariance eigenvalues `(D,)`.

    Returns:
        ``{"effective_rank", "alpha", "participation_ratio", "components_90"}`` as Python numbers; ``alpha`` is NaN
        when fewer than two eigenvalues are non-zero.
    """
    values = nonzero_eigenvalues(eigenvalues)  # (r,)
    if values.numel() == 0:
        return dict(zip(SPECTRUM_FIELDS, (0.0, math.nan, 0.0, 0)))
    singular = values.sqrt()
    p = singular / singular.sum()
    effective_rank = float(torch.exp(-(p * p.log()).sum()))
    alpha = math.nan
    if values.numel() >= 2:
        x = torch.arange(1, values.numel() + 1, dtype=torch.float64, device=values.device).log()
        y = values.log()
        x_centred = x - x.mean()
        alpha = float(-(x_centred * (y - y.mean())).sum() / (x_centred**2).sum())
    participation = float(values.sum() ** 2 / (values**2).sum())
    cumulative = values.cumsum(0) / values.sum()
    components = (
        int(
            torch.searchsorted(
                cumulative, torch.tensor(fraction - 1e-12, dtype=torch.float64, device=cumulative.device)
            )
        )
        + 1
    )
    return dict(zip(SPECTRUM_FIELDS, (effective_rank, alpha, participation, min(components, values.numel()))))


def spectrum_figure(
    eigenvalues: dict[str, torch.Tensor], title: str = "Eigenvalue spectrum of the embeddings"
):
    """Log-log plot of one or more eigenvalue spectra (feature name -> descending eigenvalues); every line is
    labelled in the legend (``layer_2/mean`` reads "layer 2, mean-pooled"), one line included."""
    from ..plotting import new_figure  # noqa: PLC0415  (matplotlib only when drawing)

    figure, axis = new_figure()
    for name, values in eigenvalues.items():
        values = nonzero_eigenvalues(values)
        axis.loglog(
            range(1, values.numel() + 1), (values / values.sum()).cpu().numpy(), label=feature_label(name)
        )
    axis.set(xlabel="component i", ylabel="explained variance ratio l_i / sum l", title=title)
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3, which="both")
    return figure


def feature_label(name: str) -> str:
    """A feature name in words: ``"layer_2/mean"`` -> ``"layer 2, mean-pooled"``; ``"embedding"`` unchanged."""
    layer, _, pooling = name.partition("/")
    if not layer.startswith("layer_") or not pooling:
        return name
    return f"layer {layer.removeprefix('layer_')}, {pooling}-pooled"


class SpectrumMonitor:
    """Spectrum statistics of one feature, from the ``"train"`` rows.

    Args:
        feature: which :attr:`MonitorBatch.features` entry to read.
        source: a :class:`~hf_recperc.monitors.probes.SubspaceProbeMonitor` of the same feature; its fitted
            PCA's eigenvalues are reused. Without one the monitor streams its own float64 second moments.
        prefix: key prefix.
    """

    name = "spectrum"

    def __init__(self, feature: str = "embedding", source=None, prefix: str = ""):
        self.feature, self.source, self.prefix = feature, source, prefix
        self.features = (feature,)
        self.reset()

    def reset(self) -> None:
        self._moments = SecondMoments() if self.source is None else None
        self.eigenvalues_: torch.Tensor | None = None

    def update(self, batch: MonitorBatch) -> None:
        if self._moments is not None and batch.split == TRAIN:
            self._moments.update(batch.features[self.feature].detach().double())

    def all_reduce(self) -> None:
        if self._moments is not None:
            self._moments.all_reduce()

    def compute(self) -> dict[str, float]:
        if self.source is not None:
            self.eigenvalues_ = self.source.probe.eigenvalues_
        else:
            self.eigenvalues_ = PCA().fit_from_moments(self._moments).eigenvalues_
        statistics = spectrum_statistics(self.eigenvalues_)
        return {f"{self.prefix}{spectrum_key(name)}": statistics[name] for name in SPECTRUM_FIELDS}

    def figures(self) -> dict:
        if self.eigenvalues_ is None:
            return {}
        return {"eigenvalue_spectrum": spectrum_figure({self.feature: self.eigenvalues_})}
