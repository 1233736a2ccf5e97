"""The training loader of either data source: a map-style split (uint8 store or image processor) or a stream."""

from __future__ import annotations

import logging

import numpy as np
import torch

from .builders import EpochShuffleSampler
from .datapath import build_datasets, split_labels
from .streaming import stream_datasets

__all__ = ["training_data", "check_monitor_rows", "PROBE_MONITORS"]

logger = logging.getLogger(__name__)
# The monitors that fit a linear probe on the training rows: a probe separates classes, so it needs two at least.
PROBE_MONITORS = ("subspace", "layers")


def training_data(data, config, image_processor, data_args, args, accelerator, options: dict):
    """The datasets and the training loader of a run.

    Args:
        data: :class:`~hf_recperc.data.ImageData`, or :class:`~hf_recperc.training.streaming.StreamData` with
            ``--streaming``.
        options: ``DataLoader`` keyword arguments (workers, pinned memory, ``collate_fn``).

    Returns:
        ``(train, probe, validation, train_loader, sampler, description)``: the datasets the training loader and
        the monitors read (``probe`` is ``train`` for a map-style split, materialised first rows for a stream), the
        :class:`EpochShuffleSampler` (``None`` for a stream, whose order is the shuffled stream's) and a log line
        naming the data path.
    """
    if data_args.streaming:
        train, probe, validation = stream_datasets(
            data, config, args, accelerator, data_args.shuffle_buffer_size
        )
        check_monitor_rows(data, probe.labels, len(validation), args, accelerator.num_processes)
        # One stream per process, iterated in the main process (its position is the trainer state's). Loader
        # workers would each get a share of the stream's files from datasets (and their own shuffle): not the order.
        loader = torch.utils.data.DataLoader(train, batch_size=None, pin_memory=options["pin_memory"])
        if data_args.dataloader_num_workers and accelerator.is_main_process:
            logger.warning(
                f"dataloader_num_workers={data_args.dataloader_num_workers}: with --streaming the training stream is "
                "read and decoded in the main process; the workers load the monitors' materialised rows only"
            )
        description = f"data path: stream of {data.source}, shuffle buffer {data_args.shuffle_buffer_size}"
        return train, probe, validation, loader, None, description
    # Before any decoding: the labels are one columnar read, the decoded store can take minutes.
    probe_rows = min(len(data.train), args.probe_max_train_samples or len(data.train))
    probe_labels = split_labels(data.train.select(range(probe_rows)), data.label_column, data.label_names)
    check_monitor_rows(data, probe_labels, len(data.validation), args, accelerator.num_processes)
    with accelerator.main_process_first():  # one process decodes and caches, the others read the cache
        train, validation, description = build_datasets(data, config, image_processor, data_args.pixel_store)
    sampler = EpochShuffleSampler(len(train), args.seed)
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.per_device_train_batch_size, sampler=sampler, drop_last=True, **options
    )  # full batches only: BatchNorm
    return train, train, validation, loader, sampler, description


def check_monitor_rows(data, probe_labels: np.ndarray, num_validation: int, args, num_processes: int) -> None:
    """Refuse, before training, what would make the first evaluation fail (it used to, after the first steps).

    Args:
        data: the run's :class:`~hf_recperc.data.ImageData` or stream (label column, class names, source).
        probe_labels: `(N,)` class ids of the training rows the monitors fit on (the first
            ``--probe_max_train_samples``).
        num_validation: rows of the validation split (of the materialised subset, for a stream).
        args: the :class:`~hf_recperc.training.arguments.PretrainingArguments` (monitors, row caps).
        num_processes: every process fits and scores its own shard, so each needs one row at least.

    Raises:
        ValueError: naming ``label_column`` when a probe monitor would fit on fewer than two classes, or
            ``monitor_max_eval_samples`` / ``probe_max_train_samples`` when a process would get no row.
    """
    probes = [name for name in args.monitors if name in PROBE_MONITORS]
    classes = np.unique(probe_labels)
    if probes and classes.size < 2:
        names = [data.label_names[i] for i in classes.tolist()]
        raise ValueError(
            f"label_column: {data.label_column!r} of {data.source!r} holds {classes.size} class(es) {names} in "
            f"the {len(probe_labels)} training rows the probes fit on (the first --probe_max_train_samples rows); "
            f"the {' and '.join(probes)} monitors fit a linear probe, which needs at least 2 classes: use data "
            "with two classes or more, raise --probe_max_train_samples if the rows are sorted by class, or leave "
            f"{' and '.join(probes)} out of --monitors"
        )
    num_eval = min(num_validation, args.monitor_max_eval_samples or num_validation)
    for argument, rows, split in (
        ("probe_max_train_samples", len(probe_labels), "training"),
        ("monitor_max_eval_samples", num_eval, "validation"),
    ):
        if rows < num_processes:
            raise ValueError(
                f"{argument}: the monitors would read {rows} {split} row(s) over {num_processes} process(es); "
                f"every process needs one row at least (use more {split} rows or fewer processes)"
            )
