"""Small, generic figure helpers shared by the scripts: arrays in, a PNG file out.

Figures are drawn on a :class:`matplotlib.figure.Figure` (no ``pyplot`` global state, no GUI backend
needed), written to a temporary sibling and renamed, so a failed run never leaves half a PNG.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure

from .publish.atomic import atomic_path

__all__ = ["plot_curve_panels", "new_figure", "save_figure", "style_axis"]

Curve = tuple[Sequence[float], Sequence[float]]


def plot_curve_panels(
    panels: Mapping[str, Mapping[str, Curve]],
    path: str | os.PathLike,
    *,
    xlabel: str,
    ylabel: str,
    title: str | None = None,
    logx: bool = False,
    colormap: str | None = None,
    reference: float | None = None,
    ncols: int | None = None,
    min_yspan: float | None = None,
    panel_size: tuple[float, float] = (4.2, 3.2),
    dpi: int = 100,
) -> Path:
    """Draw line plots, one panel per entry of ``panels``, one line per curve; save as PNG.

    Args:
        panels: ``{panel title: {curve label: (x, y)}}``; ``x`` and ``y`` are 1-D arrays of one length.
        path: output file (``.png``); parent folders are created.
        xlabel, ylabel, title: axis labels (shared by all panels) and an optional figure title.
        logx: logarithmic x axis.
        colormap: a matplotlib colormap name to colour curves in order (e.g. increasing mask ratio);
            default: matplotlib's colour cycle.
        reference: draw a dashed horizontal line at this y (e.g. 0 for a benefit).
        ncols: panels per row (default: all in one row, up to 4).
        min_yspan: widen a panel's y range to at least this span (centred on its data), so that curves
            equal up to round-off look flat instead of being autoscaled to 1e-12.
        panel_size, dpi: size of one panel in inches, and resolution.

    Returns:
        The path written.

    Raises:
        ValueError: if ``panels`` is empty or a curve's ``x`` and ``y`` differ in length.
    """
    if not panels:
        raise ValueError("panels: expected at least one panel of curves, got none")
    ncols = ncols or min(len(panels), 4)
    nrows = math.ceil(len(panels) / ncols)
    figure = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows + (0.4 if title else 0)), dpi=dpi)
    axes = figure.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (panel_title, curves) in zip(axes, panels.items()):
        _plot_curves(ax, panel_title, curves, colormap)
        if reference is not None:
            ax.axhline(reference, color="0.5", linestyle="--", linewidth=0.8)
        if min_yspan is not None:
            _widen_ylim(ax, min_yspan)
        if logx:
            ax.set_xscale("log")
        style_axis(ax, panel_title, xlabel, ylabel)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    if title:
        figure.suptitle(title, fontsize=11)
    return save_figure(figure, path)


def _plot_curves(ax, panel_title: str, curves: Mapping[str, Curve], colormap: str | None) -> None:
    """One line per curve ``{label: (x, y)}`` (1-D, one length) on ``ax``, coloured in order along ``colormap``
    (default: matplotlib's colour cycle)."""
    colors = (
        colormaps[colormap](np.linspace(0.0, 0.9, max(len(curves), 1))) if colormap else [None] * len(curves)
    )
    for color, (label, (x, y)) in zip(colors, curves.items()):
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape or x.ndim != 1:
            raise ValueError(
                f"panels[{panel_title!r}][{label!r}]: x and y must be 1-D of one length, got {x.shape} and {y.shape}"
            )
        ax.plot(x, y, label=label, color=color, linewidth=1.4)


def _widen_ylim(ax, min_yspan: float) -> None:
    """Widen ``ax``'s y range to at least ``min_yspan``, centred on its data: curves equal up to round-off look
    flat instead of being autoscaled to 1e-12."""
    low, high = ax.get_ylim()
    if high - low < min_yspan:
        middle = (low + high) / 2
        ax.set_ylim(middle - min_yspan / 2, middle + min_yspan / 2)


def style_axis(ax, title: str | None, xlabel: str | None, ylabel: str | None) -> None:
    """The house look of one panel: small title, labels, light grid, a legend when something is labelled."""
    if title:
        ax.set_title(title, fontsize=10)
    if xlabel:
        ax.set_xlabel(xlabel)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, loc="best")


def new_figure(size: tuple[float, float] = (6.0, 4.0)) -> tuple[Figure, object]:
    """A one-axes :class:`~matplotlib.figure.Figure` (no pyplot state) with fixed margins, for figures drawn many
    times during training (``tight_layout`` costs more than the plot); returns ``(figure, axes)``."""
    figure = Figure(figsize=size)
    axis = figure.subplots()
    figure.subplots_adjust(left=0.13, right=0.97, top=0.91, bottom=0.13)
    return figure, axis


def save_figure(figure: Figure, path: str | os.PathLike, dpi: int | None = None, tight: bool = True) -> Path:
    """Lay out ``figure`` (``tight``: matplotlib's ``tight_layout``) and write it to ``path`` (format from the
    suffix, PNG by default), atomically: a temporary sibling renamed into place, so a failed run never leaves half a
    file. Returns the path."""
    if tight:
        figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as partial:
        figure.savefig(partial, format=path.suffix.lstrip(".") or "png", dpi=dpi or figure.dpi)
    return path
