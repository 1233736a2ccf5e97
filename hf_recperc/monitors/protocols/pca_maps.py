"""PCA of patch features shown as RGB maps: where the top components and the bottom ones look on a few images.

The PCA (:class:`~hf_recperc.spectral.PCA`) is fitted on every patch token of the images given; each patch is then
coloured by its coordinates on components 1-3 (top row: the high-variance directions, where a ViT's patch features
usually draw the objects) and on the last three components (bottom row: the low-variance directions, docs/science.md
section 2). Each channel is min-max scaled to [0, 1] over all the images, so the images share one colour scale.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from ...results import PCA_MAPS
from ...spectral import PCA, as_float_tensor
from ...validation import check_positive_int
from ..base import EVAL, MonitorBatch

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["PCA_MAPS", "pca_rgb_maps", "pca_maps_figure", "PCAMapsMonitor"]


_CHANNELS = 3  # RGB


def _grid(grid_size, num_patches: int) -> tuple[int, int]:
    """``(rows, cols)`` of the patch grid; ``grid_size=None``: a square grid of ``num_patches``."""
    if grid_size is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ValueError(
                f"grid_size: {num_patches} patch tokens per image do not form a square grid; pass (rows, cols)"
            )
        grid_size = side
    rows, cols = (grid_size, grid_size) if isinstance(grid_size, int) else tuple(grid_size)
    check_positive_int("grid_size", rows)
    check_positive_int("grid_size", cols)
    if rows * cols != num_patches:
        raise ValueError(
            f"grid_size: {rows} x {cols} = {rows * cols} patches, but the tokens hold {num_patches} patch tokens "
            "per image (set num_prefix_tokens to drop CLS/register tokens)"
        )
    return rows, cols


def _unit_range(values: torch.Tensor) -> torch.Tensor:
    """Each column of `(n, 3)` scaled to [0, 1] (a constant column becomes 0.5)."""
    low, high = values.min(0).values, values.max(0).values
    span = high - low
    return torch.where(span > 0, (values - low) / span.clamp_min(1e-300), torch.full_like(values, 0.5))


def pca_rgb_maps(tokens, grid_size, num_prefix_tokens: int = 0) -> dict[str, torch.Tensor]:
    """RGB maps `(B, rows, cols, 3)` in [0, 1] of the top and bottom three principal components of patch tokens.

    Args:
        tokens (`torch.Tensor` of shape `(B, T, D)`): hidden states of ``B`` images (``D >= 3``).
        grid_size: ``rows`` or ``(rows, cols)`` of the patch grid; ``rows * cols = T - num_prefix_tokens``
            (``None``: a square grid).
        num_prefix_tokens: leading CLS/register tokens to drop.

    Returns:
        ``{"top": (B, rows, cols, 3), "bottom": (B, rows, cols, 3)}`` float64 tensors in [0, 1].
    """
    tokens = as_float_tensor(tokens, "tokens", ndim=3)
    if not 0 <= num_prefix_tokens < tokens.shape[1]:
        raise ValueError(
            f"num_prefix_tokens: expected an integer in [0, {tokens.shape[1] - 1}], got {num_prefix_tokens!r}"
        )
    patches = tokens[:, num_prefix_tokens:]  # (B, P, D)
    batch, num_patches, dim = patches.shape
    rows, cols = _grid(grid_size, num_patches)
    if dim < _CHANNELS:
        raise ValueError(
            f"tokens: expected at least {_CHANNELS} features per token for an RGB map, got {dim}"
        )
    flat = patches.reshape(batch * num_patches, dim)  # (B P, D)
    pca = PCA().fit(flat)
    maps = {}
    for name, spec in (("top", f"first:{_CHANNELS}"), ("bottom", f"last:{_CHANNELS}")):
        coordinates = _unit_range(pca.transform(flat, spec))  # (B P, 3)
        maps[name] = coordinates.reshape(batch, rows, cols, _CHANNELS)
    return maps


def pca_maps_figure(tokens, grid_size, num_prefix_tokens: int = 0, images=None) -> Figure:
    """A figure of :func:`pca_rgb_maps`: one column per image; rows: the images (when given), components 1-3,
    the last three components.

    Args:
        tokens, grid_size, num_prefix_tokens: see :func:`pca_rgb_maps`.
        images (array of shape `(B, H, W, 3)` in [0, 1], optional): the images, drawn above their maps.

    Returns:
        A :class:`~matplotlib.figure.Figure` (no pyplot state).
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (matplotlib only when drawing)

    maps = pca_rgb_maps(tokens, grid_size, num_prefix_tokens)
    batch = maps["top"].shape[0]
    panels = ([("image", images)] if images is not None else []) + [
        ("components 1-3", maps["top"]),
        ("last 3 components", maps["bottom"]),
    ]
    if images is not None and len(images) != batch:
        raise ValueError(f"images: expected {batch} images (one per token sequence), got {len(images)}")
    figure = Figure(figsize=(2.0 * batch, 2.1 * len(panels)))
    axes = figure.subplots(len(panels), batch, squeeze=False)
    for row, (title, pictures) in enumerate(panels):
        for column in range(batch):
            axis = axes[row][column]
            picture = pictures[column]
            axis.imshow(
                picture.numpy() if isinstance(picture, torch.Tensor) else picture, interpolation="nearest"
            )
            axis.set_title(f"{column}: {title}", fontsize=8)
            axis.set_axis_off()
    figure.suptitle("PCA of patch features (top vs bottom components)", fontsize=9)
    return figure


class PCAMapsMonitor:
    """The PCA RGB maps of the first ``num_images`` ``"eval"`` images as a monitor figure (``pca_maps``).

    Reads a token feature (`(B, T, D)` entry of :attr:`MonitorBatch.features`) and, when the batch has them, the
    ``pixel_values`` to draw above the maps. Reports no numbers; ``figures()`` gives ``{"pca_maps": Figure}``. The
    images are the first ones of this process's shard (a picture, not a statistic: nothing to merge).

    Args:
        feature: the token feature's name; grid_size, num_prefix_tokens: see :func:`pca_rgb_maps`;
        num_images: images shown; figure_name: the figure's file stem (a report names one per layer).
    """

    name = PCA_MAPS

    def __init__(
        self,
        grid_size=None,
        feature: str = "tokens",
        num_prefix_tokens: int = 1,
        num_images: int = 4,
        figure_name: str = PCA_MAPS,
    ):
        check_positive_int("num_images", num_images)
        self.grid_size, self.num_prefix_tokens, self.num_images = grid_size, num_prefix_tokens, num_images
        self.feature, self.figure_name = feature, figure_name
        self.features = (feature,)
        self.reset()

    def reset(self) -> None:
        self._tokens: list[torch.Tensor] = []
        self._images: list[torch.Tensor] = []

    def update(self, batch: MonitorBatch) -> None:
        kept = sum(len(t) for t in self._tokens)
        if batch.split != EVAL or kept >= self.num_images or self.feature not in batch.features:
            return
        take = self.num_images - kept
        self._tokens.append(batch.features[self.feature][:take].detach().float().cpu())
        if batch.pixel_values is not None:
            self._images.append(batch.pixel_values[:take].detach().float().cpu())

    def all_reduce(self) -> None:
        pass

    def compute(self) -> dict[str, float]:
        return {}

    def figures(self) -> dict:
        if not self._tokens:
            return {}
        tokens = torch.cat(self._tokens)
        images = None
        if self._images and sum(len(i) for i in self._images) == len(tokens):
            pixels = torch.cat(
                self._images
            )  # (B, C, H, W), any normalisation: shown min-max scaled per image
            low = pixels.flatten(1).min(1).values[:, None, None, None]
            high = pixels.flatten(1).max(1).values[:, None, None, None]
            pixels = ((pixels - low) / (high - low).clamp_min(1e-12)).permute(0, 2, 3, 1)  # (B, H, W, C)
            images = pixels.expand(-1, -1, -1, 3) if pixels.shape[-1] == 1 else pixels[..., :3]
        return {
            self.figure_name: pca_maps_figure(tokens, self.grid_size, self.num_prefix_tokens, images=images)
        }
