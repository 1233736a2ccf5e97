"""E1 (docs/science.md section 3): images next to their projections onto the top and the bottom PCA subspaces.

Example::

    recperc-pca-figure --dataset_name path/to/cifar10 --output pca_figure.png

The default rows: ``top:0.75`` and ``bottom:0.25`` (the paper's 25% split; the two are orthogonal
complements, so they add up to the centred image) and ``bottom:0.1``. At CIFAR-10's 32 px, ``bottom:0.25``
still holds almost every component (3,062 of 3,072) and looks like the image itself; the edge-map look
of the paper's 224 px Imagenette figure appears at ``bottom:0.1``, while ``top:0.75`` (10 components)
is a blurred colour blob. A literal ``top:0.25`` is empty on CIFAR-10 (its first component alone explains
48% of the variance) and fails with spectral's error naming that share.
"""

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cli import parse_arguments
from ..experiment_plots import plot_projection_grid
from ..experiments import (
    DataArguments,
    PixelArguments,
    fit_pixel_pca,
    load_pixel_splits,
    project_images,
)
from ..publish import file_output
from ..spectral import parse_subspace
from ..validation import check_positive_int
from . import configure_logging, run_command


@dataclass
class FigureArguments:
    output: str = field(default="pca_figure.png", metadata={"help": "PNG file to write."})
    subspaces: list[str] = field(
        default_factory=lambda: ["top:0.75", "bottom:0.25", "bottom:0.1"],
        metadata={"help": "One row of projections per subspace (top:P, bottom:Q, first:K, last:K)."},
    )
    num_images: int = field(default=10, metadata={"help": "Images (columns), one per class first."})


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of ``count`` evaluation images: the first of each class, then the next ones in order."""
    first_of_class = [int(np.flatnonzero(labels == label)[0]) for label in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(first_of_class)]
    return np.array((first_of_class + rest)[:count])


def run(argv: Sequence[str] | None = None) -> Path:
    """Parse ``argv``, project evaluation images onto each subspace, write the figure; returns its path."""
    args, data_args, run_args = parse_arguments((FigureArguments, DataArguments, PixelArguments), argv)
    check_positive_int("num_images", args.num_images)
    for spec in args.subspaces:
        parse_subspace(spec)  # a typo fails here, before decoding and PCA
    configure_logging(logging.INFO)
    output, name = file_output(args.output, "pca_figure")
    output.check()  # a user's file at --output: refused before decoding and PCA

    splits = load_pixel_splits(
        data_args, seed=run_args.seed, cache_dir=run_args.cache_dir, image_size=run_args.image_size
    )
    pca = fit_pixel_pca(splits.train_flat, cache_dir=run_args.cache_dir)
    chosen = pick_images(splits.eval_labels, args.num_images)
    rows = {}
    for spec in args.subspaces:
        projected = project_images(pca, splits.eval_flat[chosen], spec, splits.image_shape)
        rows[f"{spec}\n{pca.subspace(spec).numel()} dims, {pca.explained_variance(spec):.0%} var."] = (
            projected
        )
    draw = functools.partial(
        plot_projection_grid,
        splits.eval_images[chosen],
        rows,
        column_titles=[splits.label_names[label] for label in splits.eval_labels[chosen]],
    )
    figure = output.write({name: draw}) / name
    print(f"figure: {figure}")
    return figure


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-pca-figure``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
