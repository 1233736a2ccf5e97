"""The training pixels' spectrum (band errors' PCA), computed once per data set and cached on disk.

A PCA of `C*H*W` pixel values costs a `D x D` second-moment accumulation over the probe's rows plus an eigensolve
(12 s for 10,000 CIFAR images on one CPU thread, issue 11) and depends only on the data: the rows, the decoding
(the uint8 store's key) and the normalisation. The fitted mean, components and explained variance are saved under
``<cache>/spectrum/<key>.pt`` (``HF_RECPERC_CACHE``, beside the pixel store) and a later run on the same data
loads them.

With fewer rows ``N`` than pixel values ``D`` (2,000 CIFAR rows, 3,072 values: the default), the same eigenpairs
come from the `N x N` Gram matrix of the centred rows (dual PCA: ``X X^T u = l u`` gives the component
``X^T u / |X^T u|``), a 3.5x smaller eigenproblem; the zero eigenvalues of the rest of the space fall in the last
band, which the band errors never project on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

import torch

from ..images.decode import cache_root
from ..monitors import SpectralBands, gather_rows
from ..publish.atomic import prepare_cache_dir, save_torch
from ..spectral import PCA, SecondMoments

__all__ = ["cached_pixel_spectrum", "spectrum_key", "dual_pca"]

_FIELDS = ("mean_", "components_", "explained_variance_ratio_")


def spectrum_key(store_key: str | None, rows: int, config) -> str | None:
    """A key for the spectrum of the first ``rows`` rows of a stored split, as ``config`` normalises them."""
    if store_key is None:
        return None
    text = f"{store_key}:{rows}:{list(config.image_mean)}:{list(config.image_std)}:{config.image_size}:v1"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _load(path) -> PCA | None:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # read on use
    except (OSError, RuntimeError, EOFError):
        return None
    pca = PCA()
    for name in _FIELDS:
        setattr(pca, name, payload[name])
    return pca


def cached_pixel_spectrum(
    accelerator, key: str | None, batches: Callable[[], Iterable[torch.Tensor]], edges: Sequence[float]
) -> tuple[SpectralBands, str]:
    """The band-error spectrum of the pixels ``batches()`` yields (this process's shard), from the cache if
    every process finds it there.

    Args:
        accelerator: the run's ``Accelerator`` (device, process group, main process).
        key: :func:`spectrum_key`, or ``None`` (not cacheable: always computed).
        batches: yields `(B, C, H, W)` float pixel batches of this process's shard.
        edges: the bands' cumulative explained-variance edges.

    Returns:
        ``(bands, where)``: the :class:`~hf_recperc.monitors.SpectralBands` and ``"cached"`` / ``"computed"``.
    """
    device = accelerator.device
    path = cache_root() / "spectrum" / f"{key}.pt" if key else None
    pca = _load(path) if path is not None and path.exists() else None
    found = torch.tensor(float(pca is not None), device=device)
    # Every process must take the same branch: a computed spectrum all-reduces its moments.
    if accelerator.num_processes > 1 and accelerator.reduce(found, "sum").item() < accelerator.num_processes:
        pca = None
    if pca is not None:
        return SpectralBands(pca, edges, device=device), "cached"
    rows = torch.cat([pixel_values.to(device).flatten(1) for pixel_values in batches()])  # (n, D), this shard
    rows = gather_rows(rows)  # (N, D), every process's rows in rank order
    if rows.shape[0] < rows.shape[1]:
        pca = dual_pca(rows)
    else:  # as SpectralBands.from_pixels, keeping the PCA to save it
        pca = PCA().fit_from_moments(SecondMoments().update(rows))
    if path is not None and accelerator.is_main_process:
        prepare_cache_dir(path.parent)
        save_torch(path, {name: getattr(pca, name).cpu() for name in _FIELDS})
    return SpectralBands(pca, edges, device=device), "computed"


def dual_pca(rows: torch.Tensor) -> PCA:
    """The PCA fields band errors read (``mean_``, ``components_``, ``explained_variance_ratio_``) of ``N < D``
    rows `(N, D)`, from the eigenpairs of their `(N, N)` Gram matrix.

    Returns:
        A :class:`~hf_recperc.spectral.PCA` with ``components_`` `(D, D)` (rows, decreasing variance; rows past the
        rank are zero) and ``explained_variance_ratio_`` `(D,)` (zero past the rank).
    """
    count, dim = rows.shape
    mean = rows.double().mean(0)  # (D,)
    centred = (rows.double() - mean).to(rows.dtype)  # (N, D), input precision as SecondMoments' products
    gram = (centred @ centred.T).double()  # (N, N)
    values, vectors = torch.linalg.eigh(gram.to(rows.dtype))  # ascending, the solver in the input precision
    values, vectors = values.flip(0).double().clamp_min(0), vectors.flip(1).double()
    keep = values > values[0] * count * torch.finfo(rows.dtype).eps  # numerically non-zero eigenvalues
    directions = centred.double().T @ vectors[:, keep]  # (D, r), columns X^T u
    directions = directions / directions.norm(dim=0, keepdim=True)
    pca = PCA()
    pca.mean_ = mean
    pca.components_ = torch.zeros(dim, dim, dtype=torch.float64, device=rows.device)
    pca.components_[: int(keep.sum())] = directions.T
    ratio = torch.zeros(dim, dtype=torch.float64, device=rows.device)
    ratio[: int(keep.sum())] = values[keep] / values.sum()
    pca.explained_variance_ratio_ = ratio
    return pca
