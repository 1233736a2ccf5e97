"""The torch datasets of images, and the one label encoder.

* :class:`StoredImages`: rows of a decoded uint8 store (:mod:`hf_recperc.images.store`), a batch per read;
* :class:`ProcessedImages`: a split seen through the model's image processor (``--pixel_store false``);
* :class:`StreamedImages`: this process's batches of a shuffled stream (``--streaming``), and
  :func:`materialise`, the first rows of a stream decoded once for the monitors;
* :class:`LabelEncoder`: the one place a label becomes a class id (at load for plain columns, and per batch for
  hand-built data sets with string labels).
"""

from __future__ import annotations

import itertools

import datasets
import numpy as np
import torch

from .decode import decode_image, undecoded

__all__ = [
    "LabelEncoder",
    "StoredImages",
    "collate_stored",
    "split_labels",
    "ProcessedImages",
    "processor_transform",
    "StreamedImages",
    "materialise",
]


class LabelEncoder:
    """Labels -> class ids ``0..C-1``: the one place a label is encoded.

    Args:
        label_names: the class names in class-id order (``ImageData.label_names``), or ``None`` to pass ids through.

    Integer labels are class ids already (``datasets.ClassLabel`` columns, and plain columns once
    :meth:`fit`/:meth:`cast` made them one); any other label is looked up by its ``str`` among ``label_names``.
    """

    def __init__(self, label_names=None):
        self.label_names = None if label_names is None else [str(name) for name in label_names]
        self._ids = None if label_names is None else {name: i for i, name in enumerate(self.label_names)}

    @classmethod
    def fit(cls, label_column: str, *splits: datasets.Dataset) -> LabelEncoder:
        """The encoder of a plain label column (ints such as 1..10, or strings) shared by ``splits``: names sort
        numerically when every label is a number, else as strings, so train and validation agree on the ids."""
        values = set()
        for split in splits:
            values |= set(split.cast_column(label_column, datasets.Value("string")).unique(label_column))
        if None in values:
            raise ValueError(f"label_column: {label_column!r} has missing labels; every image needs one")
        try:
            names = sorted(values, key=float)
        except ValueError:
            names = sorted(values)
        return cls(names)

    def cast(self, split: datasets.Dataset, label_column: str) -> datasets.Dataset:
        """``split`` with its plain label column cast to the ``ClassLabel`` of these names (every consumer, models,
        probes and metrics, then reads class ids)."""
        as_text = split.cast_column(label_column, datasets.Value("string"))
        return as_text.cast_column(label_column, datasets.ClassLabel(names=self.label_names))

    @property
    def id2label(self) -> dict[int, str]:
        """``config.id2label`` of a model trained on these classes."""
        return dict(enumerate(self.label_names or []))

    @property
    def label2id(self) -> dict[str, int]:
        """``config.label2id`` of a model trained on these classes."""
        return dict(self._ids or {})

    def __call__(self, labels) -> np.ndarray:
        """`(N,)` int64 class ids of a list of labels."""
        labels = list(labels)
        if labels and self._ids is not None and not isinstance(labels[0], (int, np.integer)):
            labels = [self._ids[str(label)] for label in labels]
        return np.asarray(labels, dtype=np.int64)


class StoredImages(torch.utils.data.Dataset):
    """Rows of a uint8 store with their labels; fetched a whole batch at a time (``__getitems__``).

    Args:
        pixels: `(N, C, S, S)` uint8 array (memory-mapped or in memory).
        labels: `(N,)` int64 class ids.
        key: the store's cache key (:func:`hf_recperc.images.decode.cache_key`), ``None`` when not cached.
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
    return LabelEncoder(label_names)(split.select_columns([label_column])[:][label_column])


def processor_transform(
    image_processor, image_column: str, label_column: str, num_channels: int, label_names=None
):
    """A ``Dataset.with_transform`` function: rows -> ``{"pixel_values", "labels"}`` tensors.

    Args:
        image_processor: the model's image processor (e.g. :func:`hf_recperc.processing.image_processor_for`).
        image_column, label_column: the columns of :class:`ImageData`.
        num_channels: 1 (images converted to ``L``) or 3 (``RGB``), the model's ``config.num_channels``.
        label_names: for labels stored as strings, the names in class-id order (``ImageData.label_names``);
            integer labels are passed through.

    Returns:
        A callable mapping a batch dict to ``pixel_values`` (`torch.FloatTensor` of shape
        `(batch_size, num_channels, height, width)`) and ``labels`` (`torch.LongTensor` of shape `(batch_size,)`).
        ``datasets`` fetches a whole data-loader batch in one call (``Dataset.__getitems__``), so the processor
        runs once per batch, not once per image. Wrap the split in :class:`ProcessedImages` (rather than
        ``split.with_transform``) so that an unreadable image file names its row and file.
    """
    if num_channels not in (1, 3):
        raise ValueError(
            f"num_channels: images can be converted to 1 (L) or 3 (RGB) channels, got {num_channels!r}"
        )
    mode = "L" if num_channels == 1 else "RGB"
    encode = LabelEncoder(label_names)

    def transform(batch: dict) -> dict:
        images = [image.convert(mode) for image in batch[image_column]]
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]  # (B, C, H, W)
        return {"pixel_values": pixel_values, "labels": torch.from_numpy(encode(batch[label_column]))}

    return transform


class ProcessedImages(torch.utils.data.Dataset):
    """A split seen through a batch transform (:func:`processor_transform`), for a ``DataLoader``.

    It replaces ``split.with_transform(transform)``, with one difference: images are decoded here, row by row
    (:func:`decode_image`), so a corrupt file fails with ``ValueError("image_column: row N (file ...) is not a
    readable image: ...")`` instead of a traceback from inside ``datasets``. ``DataLoader`` fetches a whole
    batch with one ``__getitems__`` call, so the transform still runs once per batch.

    Args:
        split: a ``datasets.Dataset`` (e.g. ``ImageData.train``).
        transform: maps a batch dict (image column holding ``PIL`` images) to a dict of tensors.
        image_column: the image column of ``split``.
    """

    def __init__(self, split: datasets.Dataset, transform, image_column: str):
        if image_column not in split.column_names:
            raise ValueError(
                f"image_column: {image_column!r} is not a column of the split ({split.column_names})"
            )
        self.split, self.decoder = undecoded(split, image_column)
        self.transform = transform
        self.image_column = image_column

    def __len__(self) -> int:
        return len(self.split)

    def _batch(self, rows: list[int]) -> dict:
        batch = self.split[rows]
        batch[self.image_column] = [
            decode_image(value, row, self.image_column, self.decoder)
            for value, row in zip(batch[self.image_column], rows)
        ]
        return self.transform(batch)

    def __getitems__(self, rows) -> list[dict]:
        """One dict per row (what ``DataLoader``'s default collate stacks), from one transform call."""
        rows = [int(row) for row in rows]
        outputs = self._batch(rows)
        return [{key: values[i] for key, values in outputs.items()} for i in range(len(rows))]

    def __getitem__(self, key):
        """A row (``int``) as a dict of tensors, or a batch (``slice`` or list of rows) as batched tensors,
        like ``datasets.Dataset.__getitem__`` under ``with_transform``."""
        if isinstance(key, slice):
            return self._batch(list(range(len(self))[key]))
        if isinstance(key, (list, tuple, range)):
            return self._batch([int(row) for row in key])
        row = int(key)
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} is out of range for a split of {len(self)} rows")
        return self.__getitems__([row % len(self)])[0]


def materialise(data, split: str, rows: int | None, config) -> StoredImages:
    """The first ``rows`` rows of the ``"train"`` or ``"validation"`` stream (all when ``None``), decoded once into
    an in-memory store."""
    stream = data.train if split == "train" else data.validation
    chosen = stream if rows is None else stream.take(rows)
    pixels, labels = [], []
    for index, row in enumerate(chosen):
        pixels.append(
            data.pixels(split, row[data.image_column], config.num_channels, config.image_size, index)
        )
        labels.append(row[data.label_column])
    if not pixels:
        raise ValueError("streaming: the stream has no rows to evaluate on")
    return StoredImages(np.stack(pixels), LabelEncoder(data.label_names)(labels))


class StreamedImages(torch.utils.data.IterableDataset):
    """This process's batches of one epoch of the shuffled stream: ``{"pixels": uint8 (B, C, S, S), "labels"}``.

    Args:
        data: the :class:`~hf_recperc.images.sources.StreamData`.
        config: the model configuration (channels, image size).
        batch_size: rows per batch of this process.
        seed, buffer_size: the shuffle (``IterableDataset.shuffle``).
        process_index, num_processes: this process's rows are those ``i % num_processes == process_index``.
    """

    def __init__(self, data, config, batch_size, seed, buffer_size, process_index, num_processes):
        self.data, self.stream = data, data.train.shuffle(seed=seed, buffer_size=buffer_size)
        self.image_column, self.label_column = data.image_column, data.label_column
        self.config, self.batch_size = config, batch_size
        self.process_index, self.num_processes = process_index, num_processes
        self.batches_per_epoch = (data.num_train_rows // num_processes) // batch_size
        self.epoch, self.skip = 0, 0
        self.encode = LabelEncoder(data.label_names)

    def __len__(self) -> int:
        return self.batches_per_epoch

    def set_position(self, epoch: int, batches_done: int) -> None:
        """Iterate epoch ``epoch`` from its batch ``batches_done`` (a resumed run)."""
        self.epoch, self.skip = epoch, batches_done

    def __iter__(self):
        self.stream.set_epoch(self.epoch)
        mine = itertools.islice(iter(self.stream), self.process_index, None, self.num_processes)
        skipped = self.skip * self.batch_size  # rows consumed before a restart: read, never decoded
        rows = itertools.islice(mine, skipped, self.batches_per_epoch * self.batch_size)
        for _ in range(self.batches_per_epoch - self.skip):
            batch = list(itertools.islice(rows, self.batch_size))
            if len(batch) < self.batch_size:
                return
            size, channels = self.config.image_size, self.config.num_channels
            pixels = np.stack(
                [self.data.pixels("train", row[self.image_column], channels, size) for row in batch]
            )
            labels = self.encode([row[self.label_column] for row in batch])
            yield {"pixels": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)}
