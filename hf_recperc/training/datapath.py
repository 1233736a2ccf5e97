"""The training loop's data path: which rows a batch holds, and how pixels reach the model.

Two paths, one interface (:class:`DevicePipeline`):

* ``--pixel_store`` (default): images decoded once into a uint8 store (:mod:`hf_recperc.pixel_store`); a loader
  batch is ``{"pixels": uint8 (B, C, S, S), "labels"}`` gathered from the memory-mapped array, and the pipeline
  normalises (and augments) it on the training device.
* ``--pixel_store false``: the image processor per batch (:class:`~hf_recperc.data.ProcessedImages`), for an image
  processor the store does not reproduce; the loader yields normalised ``pixel_values`` and the pipeline only
  augments.

Random augmentation always runs on the batch tensor with the step's generator (never in a loader worker), so a
resumed run replays exactly the same crops and flips.
"""

from __future__ import annotations

import numpy as np
import torch

from ..data import ImageData, ProcessedImages, processor_transform, random_crop_flip
from ..pixel_store import decode_uint8, normalise_uint8, random_resized_crop_flip, store_key

__all__ = ["StoredImages", "DevicePipeline", "build_datasets", "collate_stored", "split_labels"]


class StoredImages(torch.utils.data.Dataset):
    """Rows of a uint8 store with their labels; fetched a whole batch at a time (``__getitems__``).

    Args:
        pixels: `(N, C, S, S)` uint8 array (memory-mapped or in memory).
        labels: `(N,)` int64 class ids.
        key: the store's cache key (:func:`hf_recperc.pixel_store.store_key`), ``None`` when not cached.
    """

    def __init__(self, pixels: np.ndarray, labels: np.ndarray, key: str | None = None):
        if len(pixels) != len(labels):
            raise ValueError(f"pixels ({len(pixels)}) and labels ({len(labels)}) differ in length")
        self.pixels, self.labels, self.key = pixels, labels, key

    def __len__(self) -> int:
        return len(self.labels)

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        rows = np.asarray(indices, dtype=np.int64)
        # One fancy-indexed read per batch: a copy, so the tensor does not pin the memory map.
        return {"pixels": torch.from_numpy(self.pixels[rows]), "labels": torch.from_numpy(self.labels[rows])}

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        batch = self.__getitems__([index])
        return {"pixels": batch["pixels"][0], "labels": batch["labels"][0]}

    def __getstate__(self):  # a memory map is re-opened by workers, not pickled whole
        state = dict(self.__dict__)
        if isinstance(self.pixels, np.memmap):
            state["pixels"] = ("memmap", self.pixels.filename)
        return state

    def __setstate__(self, state):
        if isinstance(state["pixels"], tuple):
            state["pixels"] = np.load(state["pixels"][1], mmap_mode="r")
        self.__dict__.update(state)


def collate_stored(batch):
    """``collate_fn`` of a loader over :class:`StoredImages`: ``__getitems__`` already returns the batch dict."""
    return batch if isinstance(batch, dict) else torch.utils.data.default_collate(batch)


def split_labels(split, label_column: str, label_names) -> np.ndarray:
    """`(N,)` int64 class ids of a split (string labels mapped through ``label_names``)."""
    # One columnar read (``split[column]`` in datasets 5 iterates row by row: 0.2 s per 10,000 rows).
    labels = split.select_columns([label_column])[:][label_column]
    if labels and not isinstance(labels[0], (int, np.integer)):
        ids = {name: index for index, name in enumerate(label_names)}
        labels = [ids[str(label)] for label in labels]
    return np.asarray(labels, dtype=np.int64)


def build_datasets(data: ImageData, config, image_processor, use_store: bool, cache: bool = True):
    """The training and validation datasets of either path, and a log phrase saying which path is used.

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
        pixels, phrase = decode_uint8(split, data.image_column, config.num_channels, config.image_size, cache)
        key = store_key(split, data.image_column, config.num_channels, config.image_size) if cache else None
        built.append(StoredImages(pixels, split_labels(split, data.label_column, data.label_names), key))
        where.append(phrase)
    description = (
        f"data path: uint8 pixel store (train {where[0]}; validation {where[1]}), normalised and augmented "
        "batched on the training device"
    )
    return built[0], built[1], description


class DevicePipeline:
    """Loader batch -> model inputs on the training device: normalisation (store path) and augmentation.

    Args:
        config: the model configuration (``image_mean``, ``image_std``).
        device: the training device.
        crop_padding, flip: CIFAR augmentation (:func:`hf_recperc.data.random_crop_flip`).
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

    def pixel_values(self, batch: dict) -> torch.Tensor:
        """`(B, C, S, S)` float pixel values of a loader batch (either path), on the device, not augmented."""
        if "pixels" in batch:
            pixels = batch["pixels"].to(self.device, non_blocking=True)
            return normalise_uint8(pixels, self.mean, self.std)
        return batch["pixel_values"].to(self.device, non_blocking=True)

    def evaluation(self, batch: dict) -> dict[str, torch.Tensor]:
        """``{"pixel_values", "labels"}`` for the monitors: normalised, never augmented."""
        return {
            "pixel_values": self.pixel_values(batch).contiguous(memory_format=self.memory_format),
            "labels": batch["labels"].to(self.device, non_blocking=True),
        }

    def training(self, batch: dict, generator: torch.Generator) -> torch.Tensor:
        """Normalised and augmented `(B, C, S, S)` pixel values; every draw comes from ``generator``."""
        pixel_values = self.pixel_values(batch)
        if self.resized_crop_scale is not None:
            pixel_values = random_resized_crop_flip(
                pixel_values, scale=self.resized_crop_scale, flip=self.flip, generator=generator
            )
        elif self.crop_padding or self.flip:
            pixel_values = random_crop_flip(
                pixel_values, padding=self.crop_padding, flip=self.flip, generator=generator
            )
        return pixel_values.contiguous(memory_format=self.memory_format)
