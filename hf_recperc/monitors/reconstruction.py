"""Reconstruction quality as monitors: the mean squared error, and the error per band of the data's pixel
spectrum (when each band is learned: arXiv 2402.11337, section 3; docs/science.md, E4).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..results import DEFAULT_BAND_EDGES, RECONSTRUCTION_MSE, band_key
from ..spectral import PCA, SecondMoments
from .base import EVAL, MonitorBatch, distributed_sum

__all__ = ["ReconstructionMonitor", "BandErrorMonitor", "SpectralBands", "DEFAULT_BAND_EDGES", "band_names"]


def band_names(edges: Sequence[float]) -> list[str]:
    """``[0, 0.5, 1]`` -> ``["0.00-0.50", "0.50-1.00"]``."""
    return [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]


class ReconstructionMonitor:
    """Mean squared error of :attr:`MonitorBatch.reconstruction` against the clean ``pixel_values`` on the
    ``"eval"`` rows, over the pixels ``reconstruction_weight`` selects (all when ``None``)."""

    name = "reconstruction"
    features = ()

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(2, dtype=torch.float64)  # squared error, values scored

    def update(self, batch: MonitorBatch) -> None:
        if batch.split != EVAL or batch.reconstruction is None:
            return
        error = (batch.reconstruction.float() - batch.pixel_values.float()) ** 2  # (B, C, H, W)
        weight = batch.reconstruction_weight
        weight = torch.ones_like(error[:, :1]) if weight is None else weight.to(error.dtype)  # (B, 1, H, W)
        sums = torch.stack(
            [(error * weight).sum(dtype=torch.float64), weight.expand_as(error).sum(dtype=torch.float64)]
        )
        self._sums = self._sums.to(sums.device) + sums

    def all_reduce(self) -> None:
        distributed_sum(self._sums)

    def compute(self) -> dict[str, float]:
        squared_error, count = self._sums.tolist()
        return {RECONSTRUCTION_MSE: squared_error / count if count else float("nan")}

    def figures(self) -> dict:
        return {}


class SpectralBands:
    """Relative reconstruction error per band of the training data's pixel spectrum (docs/science.md, E4).

    Band ``b`` with edges ``(lo, hi]`` holds the principal components whose cumulative explained variance
    satisfies ``lo < c_i <= hi`` (so the first band is exactly ``top:hi``). Only the components below the last
    band's lower edge are kept as a basis; the last band's energy is the total minus the others' (the full basis
    is orthonormal), which keeps the cost at ``O(D K)`` per image instead of ``O(D^2)``.

    Args:
        pca: a fitted :class:`~hf_recperc.spectral.PCA` of flattened training images `(N, C*H*W)`.
        edges: increasing cumulative fractions from 0 to 1.
        device: where the per-batch projections run (float64, float32 on MPS which lacks float64).
    """

    def __init__(self, pca: PCA, edges: Sequence[float], device: torch.device | str = "cpu"):
        self.names = band_names(edges)
        cumulative = torch.cumsum(pca.explained_variance_ratio_, 0)
        tolerance = 1e-10  # as spectral.subspace_indices: 0.9 must not read as 0.9000000000000001
        boundaries = torch.tensor(edges[1:-1], dtype=cumulative.dtype, device=cumulative.device)
        band = torch.bucketize(cumulative - tolerance, boundaries)  # (D,)
        keep = band < len(self.names) - 1
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.mean = pca.mean_.to(device=device, dtype=self.dtype)  # (D,)
        self.basis = pca.components_[keep].T.to(device=device, dtype=self.dtype)  # (D, K)
        self.band_of = band[keep].to(device)  # (K,)
        self.dims = torch.bincount(band, minlength=len(self.names)).tolist()

    @classmethod
    def from_pixels(
        cls, batches, edges: Sequence[float], device: torch.device | str = "cpu"
    ) -> SpectralBands:
        """PCA of the flattened pixels of ``batches`` (an iterable of `(B, C, H, W)` tensors, this process's
        shard), streamed in float64 and summed across processes."""
        moments = SecondMoments()
        for pixel_values in batches:
            moments.update(pixel_values.to(device).flatten(1))  # (B, D)
        moments.all_reduce()
        return cls(PCA().fit_from_moments(moments), edges, device=device)

    def energies(
        self, pixel_values: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image band energies of the error and of the centred image.

        Returns:
            ``(error, signal)``, each of shape `(B, num_bands)`: ``||U_b^T (r - x)||^2`` and
            ``||U_b^T (x - mean)||^2``.
        """
        x = pixel_values.flatten(1).to(self.dtype)  # (B, D)
        residual = reconstruction.flatten(1).to(self.dtype) - x  # (B, D)
        centred = x - self.mean  # (B, D)
        return self._per_band(residual), self._per_band(centred)

    def _per_band(self, vectors: torch.Tensor) -> torch.Tensor:
        coordinates = (vectors @ self.basis) ** 2  # (B, K)
        energy = torch.zeros(vectors.shape[0], len(self.names), dtype=self.dtype, device=vectors.device)
        energy.index_add_(1, self.band_of, coordinates)  # (B, bands): all but the last band
        energy[:, -1] = (vectors**2).sum(1) - energy[:, :-1].sum(1)  # complement in an orthonormal basis
        return energy.clamp_min(0)


class BandErrorMonitor:
    """``band_error/<lo>-<hi>``: ``sum ||U_b^T (r - x)||^2 / sum ||U_b^T (x - mean)||^2`` over the ``"eval"`` rows,
    for the bands of a :class:`SpectralBands` (computed once from the training pixels by whoever builds the
    monitor). Without bands (images too large for a pixel PCA) every band reports NaN ("not measured").

    Values above 1 mean the reconstruction is further from the image in that band than the data mean is.
    """

    name = "band_errors"
    features = ()

    def __init__(self, bands: SpectralBands | None, edges: Sequence[float] = DEFAULT_BAND_EDGES):
        self.bands = bands
        self.names = bands.names if bands is not None else band_names(edges)
        self.reset()

    def reset(self) -> None:
        self._sums = torch.zeros(2, len(self.names), dtype=torch.float64)  # error, signal per band

    def update(self, batch: MonitorBatch) -> None:
        if self.bands is None or batch.split != EVAL or batch.reconstruction is None:
            return
        error, signal = self.bands.energies(
            batch.pixel_values, batch.reconstruction.float()
        )  # 2 x (B, bands)
        sums = torch.stack([error.sum(0), signal.sum(0)]).double()
        self._sums = self._sums.to(sums.device) + sums

    def all_reduce(self) -> None:
        distributed_sum(self._sums)

    def compute(self) -> dict[str, float]:
        error, signal = self._sums.cpu()
        return {
            band_key(name): float(error[i] / signal[i])
            if self.bands is not None and signal[i] > 0
            else float("nan")
            for i, name in enumerate(self.names)
        }

    def figures(self) -> dict:
        return {}
