"""The training loader of either data source: a map-style split (uint8 store or image processor) or a stream."""

from __future__ import annotations

import torch

from .builders import EpochShuffleSampler
from .datapath import build_datasets
from .streaming import stream_datasets

__all__ = ["training_data"]


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
        # One stream per process, iterated in the main process (its position is the trainer state's).
        loader = torch.utils.data.DataLoader(train, batch_size=None, pin_memory=options["pin_memory"])
        description = f"data path: stream of {data.source}, shuffle buffer {data_args.shuffle_buffer_size}"
        return train, probe, validation, loader, None, description
    with accelerator.main_process_first():  # one process decodes and caches, the others read the cache
        train, validation, description = build_datasets(data, config, image_processor, data_args.pixel_store)
    sampler = EpochShuffleSampler(len(train), args.seed)
    loader = torch.utils.data.DataLoader(
        train, batch_size=args.per_device_train_batch_size, sampler=sampler, drop_last=True, **options
    )  # full batches only: BatchNorm
    return train, train, validation, loader, sampler, description
