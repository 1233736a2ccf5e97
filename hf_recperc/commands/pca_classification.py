"""E2 (docs/science.md section 3): train a classifier on images projected onto top and bottom PCA subspaces.

Examples::

    # a few minutes on 2 CPU cores: the headline pair on CIFAR-10 with a small CNN on a training subset
    recperc-pca-classification --preset cpu --dataset_name path/to/cifar10 \\
        --subspaces top:0.9 bottom:0.2 --output_dir runs/e2_cpu

    # the authors' recipe (ResNet-9, AdamW 1e-3, wd 1e-3, OneCycle, batch 512, 50 epochs, crop + flip),
    # full data, fractions 0.1 .. 0.9 (empty top subspaces are skipped with a warning), bf16 on GPU
    recperc-pca-classification --preset paper --dataset_name path/to/cifar10 \\
        --device cuda --output_dir runs/e2_paper
    # GPU smoke run of the same: --max_steps 50 --subspaces top:0.9 bottom:0.2

Writes ``OUTPUT_DIR/results.json`` (one record per subspace, saved after each one) and
``OUTPUT_DIR/accuracy_vs_variance.png``. Arguments can also come from one JSON or YAML file
(``-c args.yaml``, flags on top).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..cli import parse_arguments
from ..experiment_plots import plot_accuracy_vs_variance
from ..experiments import (
    PRESETS,
    DataArguments,
    RunArguments,
    TrainConfig,
    config_from_preset,
    fit_pixel_pca,
    fraction_grid,
    load_pixel_splits,
    run_projection_experiment,
)
from ..publish import OutputDirectory, Outputs, json_marker, write_json
from ..spectral import parse_subspace
from . import configure_logging, run_command

logger = logging.getLogger("pca_classification")


@dataclass
class ExperimentArguments:
    """What to train; unset values come from the preset."""

    output_dir: str = field(metadata={"help": "Where results.json and the figure go."})
    preset: str = field(default="cpu", metadata={"help": f"One of {sorted(PRESETS)}."})
    subspaces: list[str] | None = field(
        default=None,
        metadata={"help": "Subspaces to train on, e.g. top:0.9 bottom:0.2 (empty ones are errors)."},
    )
    fractions: list[float] | None = field(
        default=None,
        metadata={
            "help": "A grid: top:f and bottom:f for each f (empty ones are skipped). Not with --subspaces."
        },
    )
    classifier: str | None = field(default=None, metadata={"help": "resnet9, small_cnn or mlp."})
    width: int | None = field(default=None, metadata={"help": "Classifier width (channels / hidden units)."})
    epochs: int | None = field(default=None, metadata={"help": "Training epochs."})
    max_steps: int | None = field(default=None, metadata={"help": "Cap on optimiser steps (smoke runs)."})
    batch_size: int | None = field(default=None, metadata={"help": "Training batch size."})
    lr: float | None = field(default=None, metadata={"help": "Peak (OneCycle) learning rate of AdamW."})
    weight_decay: float | None = field(default=None, metadata={"help": "AdamW weight decay."})
    augment: bool | None = field(default=None, metadata={"help": "Random crop (pad 4) + horizontal flip."})
    train_subset: int | None = field(
        default=None, metadata={"help": "Train the classifier on the first N training images (PCA uses all)."}
    )


# What the command writes into --output_dir (a user's file of these names is never overwritten).
PCA_CLASSIFICATION_OUTPUTS = Outputs(
    command="pca_classification",
    names=frozenset({"results.json", "accuracy_vs_variance.png"}),
    legacy=json_marker("results.json", ("subspace", "explained_variance", "accuracy")),
)


def _training_config(args: ExperimentArguments, run_args: RunArguments) -> tuple[TrainConfig, dict]:
    """``(config, preset_extras)`` of :func:`~hf_recperc.experiments.config_from_preset`: the preset with every
    training option given on the command line on top."""
    overrides = {
        k: v for k, v in asdict(args).items() if k not in ("output_dir", "preset", "subspaces", "fractions")
    }
    overrides.update(seed=run_args.seed, device=run_args.device, mixed_precision=run_args.mixed_precision,
                     disable_tqdm=run_args.disable_tqdm)  # fmt: skip
    return config_from_preset(args.preset, overrides)


def _requested_subspaces(args: ExperimentArguments, preset_extras: dict) -> tuple[list[str], bool]:
    """``(subspaces, skip_empty)``: ``--subspaces``, else ``--fractions``' grid, else the preset's (a grid skips
    its empty subspaces, a list names none); each spec parsed."""
    if args.subspaces:
        subspaces, skip_empty = args.subspaces, False
    elif args.fractions:
        subspaces, skip_empty = fraction_grid(args.fractions), True
    elif "subspaces" in preset_extras:
        subspaces, skip_empty = preset_extras["subspaces"], False
    else:
        subspaces, skip_empty = fraction_grid(preset_extras["fractions"]), True
    for spec in subspaces:
        parse_subspace(spec)  # a typo fails here, not after minutes of decoding and PCA
    return subspaces, skip_empty


def _print_summary(records: list[dict], output_dir: Path, start: float) -> None:
    """One line per subspace's record, then the files written and the wall time since ``start``."""
    results_file, figure = output_dir / "results.json", output_dir / "accuracy_vs_variance.png"
    for record in records:
        print(
            f"{record['subspace']:>12}  dims {record['dims']:5d}  explained variance {record['explained_variance']:.3f}"
            f"  accuracy {record['accuracy']:.4f}  ({record['seconds']:.0f} s)"
        )
    print(f"results: {results_file}\nfigure: {figure}\ntotal wall time: {time.perf_counter() - start:.0f} s")


def run(argv: Sequence[str] | None = None) -> list[dict]:
    """Parse ``argv``, train one classifier per subspace, write results and figure; returns the records."""
    args, data_args, run_args = parse_arguments((ExperimentArguments, DataArguments, RunArguments), argv)
    configure_logging(logging.INFO)
    if args.subspaces and args.fractions:
        raise ValueError("subspaces / fractions: give one of them, not both")
    config, preset_extras = _training_config(args, run_args)
    subspaces, skip_empty = _requested_subspaces(args, preset_extras)

    output = OutputDirectory(args.output_dir, PCA_CLASSIFICATION_OUTPUTS)
    output.check()  # a user's results.json: refused before decoding and PCA
    start = time.perf_counter()
    splits = load_pixel_splits(
        data_args, seed=run_args.seed, cache_dir=run_args.cache_dir, image_size=run_args.image_size
    )
    logger.info("data %s: train %s, eval %s", splits.source, splits.train_flat.shape, splits.eval_flat.shape)
    pca = fit_pixel_pca(splits.train_flat, cache_dir=run_args.cache_dir)

    records: list[dict] = []

    def save(record: dict) -> None:
        # Publish after every subspace so a long paper-scale run keeps what it has finished.
        records.append(record)
        output.write({"results.json": functools.partial(write_json, payload=list(records))})

    run_projection_experiment(
        splits,
        subspaces,
        config,
        pca=pca,
        skip_empty=skip_empty,
        cache_dir=run_args.cache_dir,
        on_record=save,
    )
    if not records:
        raise ValueError(f"subspaces: every requested subspace was empty on this data: {subspaces}")
    title = (
        f"{Path(splits.source).name}: {config.classifier}, {len(splits.train_flat[: config.train_subset])} "
        f"train images, {records[0]['epochs']:g} epochs"
    )
    output_dir = output.write(
        {
            "results.json": functools.partial(write_json, payload=records),
            "accuracy_vs_variance.png": functools.partial(plot_accuracy_vs_variance, records, title=title),
        }
    )
    _print_summary(records, output_dir, start)
    return records


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-pca-classification``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
