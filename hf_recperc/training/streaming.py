"""``--streaming``: train on a data set read as a stream (``datasets.IterableDataset``), for sets that do not fit.

* The source: local parquet files (a directory of ``train*.parquet`` files such as ``path/to/cifar10``, or ``--train_file``) or a Hub
  id, opened with ``load_dataset(..., streaming=True)``; images stay encoded until a process keeps them.
* Order: each epoch is ``stream.shuffle(seed, buffer_size)`` with ``set_epoch(epoch)``, a deterministic function
  of ``(seed, epoch)``, the same on every process.
* Sharding: process ``p`` of ``W`` keeps the rows ``i`` with ``i % W == p`` of that order (disjoint, and every
  process gets the same number of batches, ``(rows // W) // batch_size``, so none waits for another at an epoch's
  end). Every process reads the whole stream but decodes only its own rows.
* Exact resume: the position is the trainer state's ``(epoch, batch_in_epoch)``; a resumed run replays the epoch's
  order and skips the rows already consumed without decoding them (the skip costs reading, not decoding, them).
* The monitors read materialised subsets: the first ``--probe_max_train_samples`` rows of the unshuffled training
  stream and the first ``--monitor_max_eval_samples`` rows of the validation stream, decoded once in memory.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from ..data import (
    _IMAGE_COLUMNS,
    _LABEL_COLUMNS,
    _VALIDATION_SPLITS,
    _pick_column,
    decode_image,
    image_shape,
    unreadable_image,
)
from ..pixel_store import image_to_uint8
from .datapath import StoredImages

__all__ = ["StreamData", "load_stream", "StreamedImages", "materialise", "stream_datasets"]


@dataclass
class StreamData:
    """A streamed data set: :class:`hf_recperc.data.ImageData`'s fields, with ``IterableDataset`` splits (unshuffled,
    images undecoded), the number of training rows (from the data set's metadata) and, for local parquet, the files
    of each split (``"train"``, ``"validation"``) in reading order."""

    train: datasets.IterableDataset
    validation: datasets.IterableDataset
    image_column: str
    label_column: str
    label_names: list[str]
    source: str
    num_train_rows: int
    files: dict[str, list[str]] = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def first_image_shape(self) -> tuple[int, int, int]:
        """`(num_channels, height, width)` of the stream's first training image (picks the preset that fits)."""
        first = next(iter(self.train))[self.image_column]
        return image_shape(self.decode("train", first, row=0))

    def decode(self, split: str, value, row: int | None = None) -> Image.Image:
        """One image of the ``"train"`` or ``"validation"`` stream, decoded (:func:`hf_recperc.data.decode_image`).

        Args:
            split: the stream it comes from.
            value: the undecoded image (``{"bytes", "path"}``).
            row: its index in the unshuffled split, when known (the first rows); else it is found on error.

        Raises:
            ValueError: ``image_column: row N of FILE (file ...) is not a readable image: ...``, the row counted in
                its parquet file (or in the split of a Hub data set). A row reached through the shuffled stream is
                found by reading the split again, undecoded, up to it: a cost paid on that error only.
        """
        try:
            return decode_image(value, -1 if row is None else row, self.image_column)
        except ValueError as err:
            error = err.__cause__ or err
        if row is None:
            row = self._find_row(split, value)
        file_row, source = self._locate(split, row)
        raise unreadable_image(value, file_row, self.image_column, error, source) from error

    def _find_row(self, split: str, value) -> int | None:
        """Index in the unshuffled split of the first row whose (undecoded) image is ``value``."""
        stream = (self.train if split == "train" else self.validation).select_columns([self.image_column])
        return next((i for i, row in enumerate(stream) if row[self.image_column] == value), None)

    def _locate(self, split: str, row: int | None) -> tuple[int | str, str]:
        """``(row in its file, file)`` of a row of the split; ``(row, "the split of SOURCE")`` without local files."""
        where = f"the {split!r} split of {self.source!r}"
        if row is None:
            return "?", f"{where} (a row the shuffled stream reached)"
        offset = row
        for file in self.files.get(split, []):
            rows = _parquet_rows([file])
            if offset < rows:
                return offset, repr(file)
            offset -= rows
        return row, where


def _parquet_rows(files: list[str]) -> int:
    """Rows of parquet files, from their footers (no data read)."""
    import pyarrow.parquet as pq  # noqa: PLC0415

    return sum(pq.ParquetFile(file).metadata.num_rows for file in files)


def _open(data_args) -> tuple[datasets.IterableDatasetDict, str, int | None, dict[str, list[str]]]:
    """The streamed splits, the source's name, the training rows when the files say it, and the local parquet
    files of each split (none for a Hub id)."""
    name = data_args.dataset_name
    if data_args.train_file is not None:
        files = {"train": data_args.train_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        splits = datasets.load_dataset("parquet", data_files=files, streaming=True)
        listed = {split: [file] for split, file in files.items()}
        return splits, data_args.train_file, _parquet_rows([data_args.train_file]), listed
    if name is None or name == "digits":
        raise ValueError(
            "streaming: needs parquet files or a Hub id (--dataset_name / --train_file), not 'digits'"
        )
    path = Path(name).expanduser()
    if path.is_dir():
        files: dict[str, list[str]] = {}
        for file in sorted(path.glob("*.parquet")):
            files.setdefault(file.stem.split("-")[0], []).append(str(file))
        if "train" not in files:
            raise ValueError(f"streaming: {name!r} holds no train*.parquet file to stream")
        splits = datasets.load_dataset("parquet", data_files=files, streaming=True)
        return splits, str(path), _parquet_rows(files["train"]), files
    splits = datasets.load_dataset(name, data_args.dataset_config_name, streaming=True)
    info = (splits["train"].info.splits or {}).get("train") if "train" in splits else None
    return splits, name, info.num_examples if info is not None else None, {}


def load_stream(data_args) -> StreamData:
    """Open the training and validation splits of ``data_args`` as streams (``--streaming``).

    Raises:
        ValueError: no validation split, no class names (a ``ClassLabel`` label column), or an unknown row count.
    """
    splits, source, rows, files = _open(data_args)
    validation_name = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if validation_name is None:
        raise ValueError(f"streaming: {source!r} has no validation/test split; streams cannot carve one out")
    train, validation = splits["train"], splits[validation_name]
    columns = list(train.features or {})
    image_column = _pick_column(columns, _IMAGE_COLUMNS, data_args.image_column, "image", "image_column")
    label_column = _pick_column(columns, _LABEL_COLUMNS, data_args.label_column, "label", "label_column")
    label_feature = train.features[label_column]
    if not isinstance(label_feature, datasets.ClassLabel):
        raise ValueError(
            f"label_column: streaming needs a ClassLabel column (class names), got {label_feature}"
        )
    if not rows:
        raise ValueError(
            f"streaming: {source!r} does not say how many training rows it has (no split metadata)"
        )
    if data_args.max_train_samples is not None:
        rows = min(rows, data_args.max_train_samples)
        train = train.take(rows)
    undecoded = datasets.Image(decode=False)  # decode only the rows a process keeps
    train, validation = (
        train.cast_column(image_column, undecoded),
        validation.cast_column(image_column, undecoded),
    )
    files = {"train": files.get("train", []), "validation": files.get(validation_name, [])}
    names = list(label_feature.names)
    return StreamData(train, validation, image_column, label_column, names, source, rows, files)


def materialise(data: StreamData, split: str, rows: int | None, config) -> StoredImages:
    """The first ``rows`` rows of the ``"train"`` or ``"validation"`` stream (all when ``None``), decoded once into
    an in-memory store."""
    stream = data.train if split == "train" else data.validation
    chosen = stream if rows is None else stream.take(rows)
    pixels, labels = [], []
    for index, row in enumerate(chosen):
        image = data.decode(split, row[data.image_column], row=index)
        pixels.append(image_to_uint8(image, config.num_channels, config.image_size)[0])
        labels.append(row[data.label_column])
    if not pixels:
        raise ValueError("streaming: the stream has no rows to evaluate on")
    return StoredImages(np.stack(pixels), np.asarray(labels, dtype=np.int64))


class StreamedImages(torch.utils.data.IterableDataset):
    """This process's batches of one epoch of the shuffled stream: ``{"pixels": uint8 (B, C, S, S), "labels"}``.

    Args:
        data: the :class:`StreamData`.
        config: the model configuration (channels, image size).
        batch_size: rows per batch of this process.
        seed, buffer_size: the shuffle (``IterableDataset.shuffle``).
        process_index, num_processes: this process's rows are those ``i % num_processes == process_index``.
    """

    def __init__(self, data: StreamData, config, batch_size, seed, buffer_size, process_index, num_processes):
        self.data, self.stream = data, data.train.shuffle(seed=seed, buffer_size=buffer_size)
        self.image_column, self.label_column = data.image_column, data.label_column
        self.config, self.batch_size = config, batch_size
        self.process_index, self.num_processes = process_index, num_processes
        self.batches_per_epoch = (data.num_train_rows // num_processes) // batch_size
        self.epoch, self.skip = 0, 0

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
            images = [self.data.decode("train", row[self.image_column]) for row in batch]
            pixels = np.stack([image_to_uint8(image, channels, size)[0] for image in images])
            labels = np.asarray([row[self.label_column] for row in batch], dtype=np.int64)
            yield {"pixels": torch.from_numpy(pixels), "labels": torch.from_numpy(labels)}


def stream_datasets(data: StreamData, config, args, accelerator, buffer_size: int):
    """``(train, probe, validation)`` of a streamed run: this process's :class:`StreamedImages` and the monitors'
    materialised stores (the first rows of the unshuffled training stream and of the validation stream)."""
    probe = materialise(data, "train", args.probe_max_train_samples, config)
    validation = materialise(data, "validation", args.monitor_max_eval_samples or None, config)
    train = StreamedImages(
        data, config, args.per_device_train_batch_size, args.seed, buffer_size,
        accelerator.process_index, accelerator.num_processes,
    )  # fmt: skip
    return train, probe, validation
