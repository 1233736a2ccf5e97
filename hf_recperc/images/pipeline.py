"""From sources to model inputs: the datasets of a run, their loaders and samplers, and the device pipeline.

Two paths, one interface (:class:`DevicePipeline`):

* ``--pixel_store`` (default): images decoded once into a uint8 store (:mod:`hf_recperc.images.store`); a loader
  batch is ``{"pixels": uint8 (B, C, S, S), "labels"}`` gathered from the memory-mapped array, and the pipeline
  normalises (and augments) it on the training device;
* ``--pixel_store false``: the image processor per batch (:class:`~hf_recperc.images.datasets.ProcessedImages`),
  for an image processor the store does not reproduce; the loader yields normalised ``pixel_values`` and the
  pipeline only augments;
* ``--streaming``: this process's batches of a shuffled stream
  (:class:`~hf_recperc.images.datasets.StreamedImages`), uint8 like the store.

Random augmentation always runs on the batch tensor with the step's generator, seeded by
``(seed, micro-batch, process)`` (:func:`step_seed`), so a resumed run replays exactly the same crops and flips
(:mod:`hf_recperc.images.augment`). It is two steps (:class:`DevicePipeline`): the augmentation, uint8 -> uint8 at
the model's size on the store and stream paths (rounded, as PIL-based reference pipelines do), then the
normalisation to float, without randomness. On a CPU-only run with loader workers, the workers run the first
(:class:`WorkerAugmentation`): a worker knows the micro-batch it makes, so it seeds the step's generator itself and
hands its state on with the uint8 batch; the training step continues from that state and normalises. Same batches,
same draws, whatever the worker count (docs/data_path.md).
"""

from __future__ import annotations

import hashlib
import logging
import struct
from collections.abc import Iterator

import numpy as np
import torch

from .augment import normalise_uint8, random_crop_flip, random_resized_crop_flip, round_to_uint8
from .datasets import (
    ProcessedImages,
    StoredImages,
    StreamedImages,
    collate_stored,
    materialise,
    processor_transform,
    split_labels,
)
from .decode import cache_key
from .shards import LaneStream, RaiseWorkerErrors, lane_stream
from .sources import ImageData, StreamData
from .store import decode_uint8, jpeg_store

__all__ = [
    "derived_seed",
    "step_seed",
    "EpochShuffleSampler",
    "build_datasets",
    "stream_datasets",
    "training_data",
    "check_monitor_rows",
    "PROBE_MONITORS",
    "DevicePipeline",
    "training_pipeline",
    "WorkerAugmentation",
    "AugmentedRows",
]

logger = logging.getLogger(__name__)
# The monitors that fit a linear probe on the training rows: a probe separates classes, so it needs two at least.
PROBE_MONITORS = ("subspace", "layers")


def derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, without the collisions of ``seed + epoch`` (seed 1 epoch 0 = seed 0 epoch 1)."""
    return int(
        np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    )


def step_seed(seed: int, micro_batch: int, process: int) -> int:
    """The 63-bit seed of one training micro-batch on one process: a hash of the three keys (collision-free in
    practice like :func:`derived_seed`, and 100x cheaper: it runs every step)."""
    digest = hashlib.blake2b(struct.pack("<3q", seed, micro_batch, process), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Every process draws the same permutation (accelerate then shards the batches), and a resumed run draws the
    epoch's permutation again from scratch: no generator state has to survive a restart. With ``positions``, it
    yields ``(epoch, position, index)`` instead of ``index``: where each row stands in the epoch, from which
    :class:`AugmentedRows` knows the batch a loader worker makes.
    """

    def __init__(self, num_samples: int, seed: int, positions: bool = False):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0
        self.positions = positions

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(derived_seed(self.seed, self.epoch))
        order = torch.randperm(self.num_samples, generator=generator).tolist()
        if self.positions:
            return ((self.epoch, position, index) for position, index in enumerate(order))
        return iter(order)


def build_datasets(
    data: ImageData, config, image_processor, use_store: bool, cache: bool = True, decode_device: str = "cpu",
    workers: int = 0, accelerator=None, store_image_size: int | None = None, store_format: str = "uint8",
):  # fmt: skip
    """The training and validation datasets of either path, and a log phrase saying which path is used
    (``decode_device``: where the store's JPEGs are decoded, :func:`hf_recperc.images.decode.decode_batch`).

    The store is decoded by every process of ``accelerator`` and ``workers`` loader workers each
    (:func:`~hf_recperc.images.store.decode_uint8`), at ``store_image_size`` (default: the model's size; larger keeps
    pixels for ``RandomResizedCrop``, :class:`DevicePipeline` brings batches to the model's size).

    Returns:
        ``(train, validation, description)``; the datasets yield ``{"pixels", "labels"}`` (store) or
        ``{"pixel_values", "labels"}`` (processor).
    """
    splits = (data.train, data.validation)
    if not use_store:
        transform = processor_transform(
            image_processor, data.image_column, data.label_column, config.num_channels, data.label_names
        )
        description = "data path: image processor per batch (PIL decode every epoch)"
        # Decoded by us row by row (ProcessedImages), so an unreadable image names its row and file.
        train, validation = (ProcessedImages(split, transform, data.image_column) for split in splits)
        return train, validation, description
    built, where = [], []
    for split in splits:
        shape = (config.num_channels, store_image_size or config.image_size)
        if store_format == "jpeg":  # the compact store (docs/data_path.md)
            pixels, phrase = jpeg_store(split, data.image_column, *shape, cache, workers, accelerator)
            key = cache_key(split, data.image_column, *shape) + "-jpeg" if cache else None
            built.append(StoredImages(pixels, split_labels(split, data.label_column, data.label_names), key))
            where.append(phrase)
            continue
        pixels, phrase = decode_uint8(
            split, data.image_column, *shape, cache, decode_device=decode_device, workers=workers,
            accelerator=accelerator,
        )  # fmt: skip
        key = cache_key(split, data.image_column, *shape, decode_device) if cache else None
        built.append(StoredImages(pixels, split_labels(split, data.label_column, data.label_names), key))
        where.append(phrase)
    description = f"data path: {store_format} pixel store (train {where[0]}; validation {where[1]})"
    return built[0], built[1], description


def stream_datasets(data: StreamData, config, args, accelerator, buffer_size: int, lanes: int = 8):
    """``(train, probe, validation)`` of a streamed run: this process's training stream (a
    :class:`~hf_recperc.images.shards.LaneStream` over local parquet files, else :class:`StreamedImages`) and the
    monitors' materialised stores (the first rows of the unshuffled training stream and of the validation stream)."""
    probe = materialise(data, "train", args.probe_max_train_samples, config)
    validation = materialise(data, "validation", args.monitor_max_eval_samples or None, config)
    if data.files.get("train"):
        batch = args.per_device_train_batch_size
        return lane_stream(data, config, batch, args.seed, buffer_size, lanes, accelerator), probe, validation
    train = StreamedImages(
        data, config, args.per_device_train_batch_size, args.seed, buffer_size,
        accelerator.process_index, accelerator.num_processes,
    )  # fmt: skip
    return train, probe, validation


def training_data(data, config, image_processor, data_args, args, accelerator, options: dict, pipeline=None):
    """The datasets and the training loader of a run.

    Args:
        data: :class:`~hf_recperc.images.sources.ImageData`, or :class:`~hf_recperc.images.sources.StreamData` with
            ``--streaming``.
        options: ``DataLoader`` keyword arguments (workers, pinned memory, ``collate_fn``).
        pipeline: the run's :class:`DevicePipeline`; on a CPU training device with loader workers, the workers run
            its training augmentation (:class:`WorkerAugmentation`) and the batches hold augmented pixels at the
            model's size (uint8 on the store and stream paths), which the training step normalises.

    Returns:
        ``(train, probe, validation, train_loader, sampler, description)``: the datasets the training loader and
        the monitors read (``probe`` is ``train`` for a map-style split, materialised first rows for a stream), the
        :class:`EpochShuffleSampler` (``None`` for a stream, whose order is the shuffled stream's) and a log line
        naming the data path.
    """
    if data_args.streaming:
        check_stream_workers(data, data_args)  # before the monitors' rows are decoded
        train, probe, validation = stream_datasets(
            data, config, args, accelerator, data_args.shuffle_buffer_size, data_args.stream_lanes
        )
        check_monitor_rows(data, probe.labels, len(validation), args, accelerator.num_processes)
        augment = worker_augmentation(
            pipeline, data_args.dataloader_num_workers, args.seed, accelerator, len(train)
        )
        if augment is not None and isinstance(train, LaneStream):
            train.augment = augment
        elif augment is not None and accelerator.is_main_process:
            logger.info("a Hub stream is augmented in the main process (its rows are read there)")
        loader = stream_loader(train, data_args, options, accelerator.is_main_process)
        description = f"data path: stream of {data.source}, shuffle buffer {data_args.shuffle_buffer_size}"
        return train, probe, validation, loader, None, description + augmented_where(train)
    # Before any decoding: the labels are one columnar read, the decoded store can take minutes.
    probe_rows = min(len(data.train), args.probe_max_train_samples or len(data.train))
    probe_labels = split_labels(data.train.select(range(probe_rows)), data.label_column, data.label_names)
    check_monitor_rows(data, probe_labels, len(data.validation), args, accelerator.num_processes)
    check_store_image_size(data_args, config)
    # Every process decodes its share of the store with its workers (the processor path decodes per batch).
    train, validation, description = build_datasets(
        data, config, image_processor, data_args.pixel_store, decode_device=data_args.decode_device,
        workers=data_args.dataloader_num_workers, accelerator=accelerator, store_image_size=data_args.store_image_size,
        store_format=data_args.store_format,
    )  # fmt: skip
    batch_size, processes = args.per_device_train_batch_size, accelerator.num_processes
    # The batches of this process per epoch, as accelerate shards them (full batches only).
    augment = worker_augmentation(
        pipeline,
        data_args.dataloader_num_workers,
        args.seed,
        accelerator,
        len(train) // batch_size // processes,
    )
    sampler = EpochShuffleSampler(len(train), args.seed, positions=augment is not None)
    rows = train if augment is None else AugmentedRows(train, augment, batch_size, processes)
    loader = torch.utils.data.DataLoader(
        rows, batch_size=batch_size, sampler=sampler, drop_last=True, **options
    )  # full batches only: BatchNorm
    return train, train, validation, loader, sampler, description + augmented_where(rows)


def worker_augmentation(pipeline, workers: int, seed: int, accelerator, batches_per_epoch: int):
    """The :class:`WorkerAugmentation` of a run whose training device is the CPU and that has loader workers (the
    workers then run the augmentation in parallel, instead of the main process after them), else ``None``: on an
    accelerator the augmentation stays batched on the device."""
    if pipeline is None or pipeline.device.type != "cpu" or not workers:
        return None
    return WorkerAugmentation(pipeline, seed, accelerator.process_index, batches_per_epoch)


def augmented_where(train) -> str:
    """The end of the data-path log line: where the training batches are augmented (and normalised, uint8 paths)."""
    if isinstance(train, AugmentedRows) or getattr(train, "augment", None) is not None:
        return (
            "; augmentation in the loader workers (CPU training device), with the step's generator, to uint8; "
            "normalisation in the training step"
        )
    return "; augmentation (to uint8) and normalisation batched on the training device"


def check_store_image_size(data_args, config) -> None:
    """``--store_image_size`` must be at least the model's image size; it and ``--store_format`` need the store.

    Raises:
        ValueError: naming ``store_image_size`` or ``store_format``.
    """
    if data_args.store_format != "uint8" and not data_args.pixel_store:
        raise ValueError(
            f"store_format: {data_args.store_format!r} needs the pixel store (--pixel_store true)"
        )
    size = data_args.store_image_size
    if size is None:
        return
    if size < config.image_size:
        raise ValueError(
            f"store_image_size: {size} is smaller than the model's image_size {config.image_size}; store at least "
            "the size the model sees (larger keeps pixels for --random_resized_crop)"
        )
    if not data_args.pixel_store:
        raise ValueError("store_image_size: needs the pixel store (--pixel_store true)")


def check_stream_workers(data, data_args) -> None:
    """Refuse a worker count that cannot share the lanes of a local parquet stream.

    Raises:
        ValueError: naming ``dataloader_num_workers`` when it does not divide ``--stream_lanes``.
    """
    workers, lanes = data_args.dataloader_num_workers, data_args.stream_lanes
    if data.files.get("train") and workers and lanes % workers:
        raise ValueError(
            f"dataloader_num_workers: {workers} workers cannot share the {lanes} lanes of a stream "
            f"(--stream_lanes); use a divisor of {lanes}, or --stream_lanes a multiple of {workers} (the batches "
            "depend on --stream_lanes, not on the workers)"
        )


def stream_loader(train, data_args, options: dict, main_process: bool):
    """The loader of a training stream: ``--dataloader_num_workers`` workers over the lanes of a
    :class:`~hf_recperc.images.shards.LaneStream` (a worker's error is one line in the main process); a Hub stream
    is read in the main process, which the log says."""
    workers = data_args.dataloader_num_workers
    if isinstance(train, LaneStream):
        return RaiseWorkerErrors(torch.utils.data.DataLoader(train, batch_size=None, **options))
    if workers and main_process:
        logger.warning(
            f"dataloader_num_workers={workers}: a Hub stream (no local parquet files) is read and decoded in the "
            "main process, every process keeping every W-th row; the workers load the monitors' rows only"
        )
    return torch.utils.data.DataLoader(train, batch_size=None, pin_memory=options["pin_memory"])


def check_monitor_rows(data, probe_labels: np.ndarray, num_validation: int, args, num_processes: int) -> None:
    """Refuse, before training, what would make the first evaluation fail (it used to, after the first steps).

    Args:
        data: the run's :class:`~hf_recperc.images.sources.ImageData` or stream (label column, class names, source).
        probe_labels: `(N,)` class ids of the training rows the monitors fit on (the first
            ``--probe_max_train_samples``).
        num_validation: rows of the validation split (of the materialised subset, for a stream).
        args: the :class:`~hf_recperc.training.arguments.PretrainingArguments` (monitors, row caps).
        num_processes: every process fits and scores its own shard, so each needs one row at least.

    Raises:
        ValueError: naming ``label_column`` when a probe monitor would fit on fewer than two classes,
            ``knn_k`` when it is more than the kNN bank's rows, or ``monitor_max_eval_samples`` /
            ``probe_max_train_samples`` when a process would get no row.
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
    if "knn" in args.monitors and args.knn_k > len(probe_labels):  # the card would state a k never used
        raise ValueError(
            f"knn_k: {args.knn_k} neighbours asked, but the kNN bank holds the {len(probe_labels)} training rows "
            "the monitors fit on (the first --probe_max_train_samples); pass a smaller --knn_k"
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


class DevicePipeline:
    """Loader batch -> model inputs on the training device: normalisation (store path) and augmentation.

    Args:
        config: the model configuration (``image_mean``, ``image_std``).
        device: the training device.
        crop_padding, flip: CIFAR augmentation (:func:`hf_recperc.images.augment.random_crop_flip`).
        resized_crop_scale: ``(lo, hi)`` turns on MAE's ``RandomResizedCrop`` (+ flip when ``flip``) instead.
        channels_last: hand conv models NHWC tensors (faster convolutions on most back ends).
    """

    def __init__(
        self, config, device, crop_padding=0, flip=False, resized_crop_scale=None, channels_last=False
    ):
        self.device = torch.device(device)
        self.mean = torch.tensor(config.image_mean, dtype=torch.float32, device=self.device) * 255.0
        self.std = torch.tensor(config.image_std, dtype=torch.float32, device=self.device) * 255.0
        self.crop_padding, self.flip = crop_padding, flip
        self.resized_crop_scale = resized_crop_scale
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.image_size = getattr(config, "image_size", None)  # the model's; a larger store is resized to it

    def pixel_values(self, batch: dict, model_size: bool = True) -> torch.Tensor:
        """`(B, C, S, S)` float pixel values of a loader batch (either path), on the device, not augmented; a store
        kept larger than the model's size (``--store_image_size``) is resized to it unless ``model_size=False``."""
        if "pixels" not in batch:
            return batch["pixel_values"].to(self.device, non_blocking=True)
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        pixel_values = normalise_uint8(pixels, self.mean, self.std)
        return self.to_model_size(pixel_values) if model_size else pixel_values

    def to_model_size(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """`(B, C, H, W)` -> `(B, C, S, S)` at the model's ``image_size`` (antialiased bilinear, as the store's
        resize), unchanged when already there."""
        if self.at_model_size(pixel_values):
            return pixel_values
        size = (self.image_size, self.image_size)
        return torch.nn.functional.interpolate(
            pixel_values, size=size, mode="bilinear", antialias=True, align_corners=False
        )

    def at_model_size(self, pixels: torch.Tensor) -> bool:
        """Whether `(B, C, H, W)` ``pixels`` are at the model's size (any size when the configuration has none)."""
        return self.image_size is None or pixels.shape[-2:] == (self.image_size, self.image_size)

    def evaluation(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"pixel_values", "labels"}`` for the monitors: normalised, never augmented."""
        return {
            "pixel_values": self.pixel_values(batch).contiguous(memory_format=self.memory_format),
            "labels": batch["labels"].to(self.device, non_blocking=True),
        }

    def training(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Augmented and normalised `(B, C, S, S)` pixel values: :meth:`augment` (every draw from ``generator``),
        then :meth:`normalise` (no randomness).

        A batch a loader worker augmented already (:class:`WorkerAugmentation`) is checked to be this step's (its
        seed is ``generator``'s), ``generator`` continues from the worker's state after its draws, and only the
        normalisation runs here.
        """
        if "generator_state" in batch:
            return self.normalise(self.from_worker(batch, generator))
        return self.normalise(self.augment(batch, generator))

    def augment(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The training augmentation of a loader batch on the device, at the model's size; every draw comes from
        ``generator``.

        Store and stream batches stay uint8, as in the reference pipelines (PIL's ``RandomResizedCrop`` gives uint8
        images before ``ToTensor``/``Normalize``): ``pixels`` `(B, C, H, W)` uint8 -> `(B, C, S, S)` uint8, a resampled
        crop or resize rounded to the nearest grey level (docs/data_path.md). The processor path's ``pixel_values``
        (normalised already) are augmented as floats.
        """
        if "pixels" not in batch:
            return self.crop_flip_resize(batch["pixel_values"].to(self.device, non_blocking=True), generator)
        pixels = batch["pixels"].to(self.device, non_blocking=True)
        if self.resized_crop_scale is not None or self.at_model_size(pixels):
            # Crops and flips move pixels (exact on uint8); RandomResizedCrop resamples uint8 to uint8, rounded.
            return self.crop_flip_resize(pixels, generator)
        return round_to_uint8(self.crop_flip_resize(pixels.float(), generator))

    def crop_flip_resize(self, pixel_values: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """`(B, C, H, W)` -> `(B, C, S, S)`: ``RandomResizedCrop`` (+ flip) drawn on the stored pixels (a larger store
        keeps detail) and resized straight to the model's size, or the model's size then crop and flip."""
        if self.resized_crop_scale is not None:  # straight from the stored pixels to the model's size
            return random_resized_crop_flip(
                pixel_values, size=self.image_size, scale=self.resized_crop_scale, flip=self.flip,
                generator=generator,
            )  # fmt: skip
        pixel_values = self.to_model_size(pixel_values)
        if self.crop_padding or self.flip:
            pixel_values = random_crop_flip(
                pixel_values, padding=self.crop_padding, flip=self.flip, generator=generator
            )
        return pixel_values

    def normalise(self, pixels: torch.Tensor) -> torch.Tensor:
        """Augmented pixels (:meth:`augment`) -> the model's input: uint8 `(B, C, S, S)` rescaled and normalised to
        float (floats, the processor path's, pass as they are), in the model's memory format. No randomness."""
        pixel_values = normalise_uint8(pixels, self.mean, self.std) if pixels.dtype == torch.uint8 else pixels
        return pixel_values.contiguous(memory_format=self.memory_format)

    def from_worker(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """The augmented pixels of a batch a loader worker made (:meth:`augment`'s output, uint8 on the uint8
        paths), on the device; ``generator`` takes the worker's state."""
        if generator.initial_seed() != int(batch["step_seed"]):
            raise RuntimeError(
                f"a loader worker augmented this batch with seed {int(batch['step_seed'])}, the training step's "
                f"generator has {generator.initial_seed()}: the worker computed another micro-batch index"
            )
        generator.set_state(batch["generator_state"])
        return batch["augmented"].to(self.device, non_blocking=True)


def training_pipeline(config, device, data_args, channels_last: bool = False) -> DevicePipeline:
    """The :class:`DevicePipeline` of a run's arguments (``--random_crop_padding``, ``--random_flip``,
    ``--random_resized_crop``)."""
    crop_scale = (data_args.random_resized_crop, 1.0) if data_args.random_resized_crop else None
    return DevicePipeline(
        config, device, data_args.random_crop_padding, data_args.random_flip, crop_scale,
        channels_last=channels_last,
    )  # fmt: skip


class WorkerAugmentation:
    """The training step's augmentation of one batch, run in the loader worker that makes it (CPU training device).

    The training step of micro-batch ``m`` on process ``p`` draws everything from a generator seeded by
    ``step_seed(seed, m, p)``, augmentation first (:meth:`DevicePipeline.training`), then the model's noise and
    masks. A worker knows ``m = epoch * batches_per_epoch + batch_in_epoch`` of the batch it makes, so it seeds the
    same CPU generator, augments (:meth:`DevicePipeline.augment`: uint8 at the model's size, a quarter of the
    float32 bytes to hand over) and returns the generator's state after those draws: the step checks the seed,
    continues from that state and normalises. The draws and pixels are those of augmenting in the main process.

    Args:
        pipeline: the run's :class:`DevicePipeline` (on the CPU).
        seed, process_index: the run's seed and this process.
        batches_per_epoch: this process's batches per epoch (the trainer's count).
    """

    def __init__(self, pipeline: DevicePipeline, seed: int, process_index: int, batches_per_epoch: int):
        self.pipeline, self.seed = pipeline, seed
        self.process_index, self.batches_per_epoch = process_index, batches_per_epoch

    def __call__(self, batch: dict, epoch: int, batch_in_epoch: int) -> dict:
        """``batch`` (``pixels`` or ``pixel_values``, ``labels``, ...) -> its other keys with ``augmented``
        `(B, C, S, S)` at the model's size (uint8 from ``pixels``, float from ``pixel_values``), ``step_seed`` and
        ``generator_state``."""
        seed = step_seed(self.seed, epoch * self.batches_per_epoch + batch_in_epoch, self.process_index)
        generator = torch.Generator().manual_seed(seed)
        augmented = self.pipeline.augment(batch, generator)
        rest = {key: value for key, value in batch.items() if key not in ("pixels", "pixel_values")}
        return rest | {
            "augmented": augmented,
            "step_seed": torch.tensor(seed, dtype=torch.int64),
            "generator_state": generator.get_state(),
        }


class AugmentedRows(torch.utils.data.Dataset):
    """A map-style training split (:class:`~hf_recperc.images.datasets.StoredImages` or
    :class:`~hf_recperc.images.datasets.ProcessedImages`) read through an ``EpochShuffleSampler(positions=True)``:
    a batch per read, augmented in the worker that reads it (:class:`WorkerAugmentation`).

    The rows' positions in the epoch give the batch: accelerate's ``BatchSamplerShard`` (``drop_last``) hands the
    epoch's batch ``g`` to process ``g % P`` as its batch ``g // P``.
    """

    def __init__(self, rows, augment: WorkerAugmentation, batch_size: int, num_processes: int):
        self.rows, self.augment = rows, augment
        self.batch_size, self.num_processes = batch_size, num_processes

    def __len__(self) -> int:
        return len(self.rows)

    def __getitems__(self, tagged) -> dict:
        """``tagged``: the batch's ``(epoch, position, index)`` triples, in order."""
        epoch, first, _ = tagged[0]
        batch_of_epoch = first // self.batch_size
        batch_in_epoch, process = divmod(batch_of_epoch, self.num_processes)
        if process != self.augment.process_index or tagged[-1][1] // self.batch_size != batch_of_epoch:
            raise RuntimeError(
                f"a loader worker of process {self.augment.process_index} got rows {first}..{tagged[-1][1]} of "
                f"epoch {epoch}, not one batch of its own: the batches are not sharded as the augmentation expects"
            )
        batch = collate_stored(self.rows.__getitems__([index for _, _, index in tagged]))
        return self.augment(batch, epoch, batch_in_epoch)
