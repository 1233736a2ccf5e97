"""Where images come from: map-style splits and streams behind one protocol (:class:`ImageSource`).

:func:`load_image_dataset` resolves what a user names into a train and a validation split with a known
image column and label column (:class:`ImageData`):

* ``None`` or ``"digits"``: scikit-learn's 8x8 handwritten digits, shipped inside scikit-learn, so every
  script runs offline on a fresh machine;
* a local directory: ``train.parquet`` / ``test.parquet`` style parquet files, a ``save_to_disk``
  directory, or an ``imagefolder`` tree;
* parquet files named with ``train_file`` / ``validation_file``;
* anything else is passed to ``datasets.load_dataset`` (a Hub id such as ``uoft-cs/cifar10``).

:func:`load_stream` opens the same sources as streams (:class:`StreamData`, ``--streaming``). Pixels are made by
:mod:`hf_recperc.images.decode`; the torch datasets over either source are in :mod:`hf_recperc.images.datasets`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, runtime_checkable

import datasets
import numpy as np
from PIL import Image

from ..validation import check_name_or_path, hub_offline
from .datasets import LabelEncoder
from .decode import decode_image, decode_pixels, image_shape, undecoded, unreadable_image

__all__ = [
    "DEFAULT_DATASET",
    "ImageSource",
    "ImageData",
    "StreamData",
    "load_image_dataset",
    "load_stream",
    "split_conflict",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"
_IMAGE_COLUMNS = ("img", "image", "pixel_values", "images")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label")
_TRAIN_SPLITS = ("train",)
_VALIDATION_SPLITS = ("validation", "valid", "val", "test")


@runtime_checkable
class ImageSource(Protocol):
    """What the trainer, the report and the experiments read of a data set, map-style (:class:`ImageData`) or
    streamed (:class:`StreamData`): its columns, class names and where it came from, and its first image's shape."""

    image_column: str
    label_column: str
    label_names: list[str]
    source: str

    @property
    def num_labels(self) -> int: ...

    def first_image_shape(self) -> tuple[int, int, int]: ...


@dataclass
class ImageData:
    """A resolved image classification data set.

    Attributes:
        train, validation: `datasets.Dataset` splits.
        image_column, label_column: the column names in both splits.
        label_names: class names (from a ``ClassLabel`` feature, else ``str`` of each label id).
        source: what was loaded, for reports and model cards.
        split: how train and validation were made (see :func:`_carve_validation`): ``train_split``,
            ``validation_split`` (``None`` when carved), ``carved``, ``seed`` and ``fraction`` of a carve, and
            ``source_rows`` / ``fingerprint`` of the split it was carved from. Saved by the trainer in
            ``results.json`` (``run.data_split``) so that a report on the model evaluates the same rows.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    source: str
    split: dict = field(default_factory=dict)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def first_image_shape(self) -> tuple[int, int, int]:
        """`(num_channels, height, width)` of the first training image, channels as the models see them.

        Grayscale modes (``L``, ``1``, ``I``, ``F``) count as 1 channel, every other mode as 3 (images are
        converted to ``L`` or ``RGB``). With :func:`hf_recperc.models.preset_for_data`, this picks
        the preset that fits the data.
        """
        split, decoder = undecoded(self.train, self.image_column)
        return image_shape(decode_image(split[0][self.image_column], 0, self.image_column, decoder))


def _digits_dataset() -> datasets.DatasetDict:
    """scikit-learn's digits as an image data set (8x8 grayscale, 1,797 images, 10 classes)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    # Pixel values are counts 0..16 of the original 32x32 bitmap's 4x4 blocks; scale to 8-bit grey.
    pixels = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(d) for d in range(10)])}
    )
    table = {"image": [Image.fromarray(p, mode="L") for p in pixels], "label": digits.target.tolist()}
    return datasets.DatasetDict({"train": datasets.Dataset.from_dict(table, features=features)})


def _local_directory(path: Path) -> datasets.DatasetDict:
    if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
        loaded = datasets.load_from_disk(str(path))
        return loaded if isinstance(loaded, datasets.DatasetDict) else datasets.DatasetDict({"train": loaded})
    parquet = sorted(path.glob("*.parquet"))
    if parquet:
        files = {}
        for file in parquet:
            split = file.stem.split("-")[0]
            files.setdefault(split, []).append(str(file))
        if "train" not in files:
            raise ValueError(
                f"dataset_name: {str(path)!r} holds parquet files {[f.name for f in parquet]} but none is "
                "named train*.parquet; name them train.parquet / test.parquet or pass train_file"
            )
        return datasets.load_dataset("parquet", data_files=files)
    image_suffixes = {suffix for suffix, _ in Image.registered_extensions().items()}
    if next((f for f in path.rglob("*") if f.suffix.lower() in image_suffixes), None) is None:
        entries = sorted(entry.name for entry in path.iterdir())
        found = f"it holds {entries[:8]}{' ...' if len(entries) > 8 else ''}" if entries else "it is empty"
        raise ValueError(
            f"dataset_name: directory {str(path)!r} holds no data set ({found}); expected train*.parquet / "
            "test*.parquet files, a save_to_disk directory, or an imagefolder tree of images"
        )
    return datasets.load_dataset("imagefolder", data_dir=str(path))


def _in_dataset_caches(repo_id: str) -> bool:
    """Whether a Hub data set was ever downloaded here: the only way it can load with ``HF_HUB_OFFLINE`` set."""
    from huggingface_hub.constants import HF_HUB_CACHE  # noqa: PLC0415

    hub_copy = Path(HF_HUB_CACHE) / f"datasets--{repo_id.replace('/', '--')}"
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / repo_id.replace("/", "___")
    return hub_copy.is_dir() or prepared.is_dir()


def _pick_column(names, candidates, given, what, argument) -> str:
    if given is not None:
        if given not in names:
            raise ValueError(
                f"{argument}: column {given!r} is not in the data set; columns are {list(names)}"
            )
        return given
    for name in candidates:
        if name in names:
            return name
    raise ValueError(
        f"{argument}: no {what} column found among {list(names)} (looked for {list(candidates)}); "
        f"name it with --{argument}"
    )


def load_image_dataset(
    dataset_name: str | None = None,
    *,
    dataset_config_name: str | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    train_val_split: float = 0.2,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
) -> ImageData:
    """Load an image classification data set as a train and a validation split.

    Args:
        dataset_name: ``None``/``"digits"`` (embedded default), a local directory, or a Hub id.
        dataset_config_name: the Hub configuration name, if any.
        train_file, validation_file: parquet (or csv/json) files, instead of ``dataset_name``.
        image_column, label_column: column names; detected when omitted (``img``/``image``,
            ``label``/``labels``).
        train_val_split: fraction of train carved out (stratified by label, seeded) as validation when
            the data set has no validation/test split.
        max_train_samples, max_eval_samples: keep the first N rows of each split (after the split is
            made), for quick runs. Rows of the shipped CIFAR-10 parquet files are already shuffled.
        seed: seed of the validation carve-out.

    Labels are class ids: a ``ClassLabel`` column must hold ids in ``[0, num_classes)`` (``datasets`` stores a
    missing label as -1), and a plain integer column (any width, signed or unsigned) must hold no negative
    value; plain columns are then mapped to ids ``0..C-1`` (:class:`~hf_recperc.images.datasets.LabelEncoder`). Both are checked once, at
    load, on every split: a -1 never becomes an extra class. Images are decoded only when read; a file that is
    not a readable image raises there (:func:`decode_image`).

    Raises:
        ValueError: naming the argument when a path does not exist (or, not existing, is no valid Hub id), a
            directory holds no data set, a column is missing, a label is missing, negative or out of range,
            or a number is out of range.
    """
    if not (0 < train_val_split < 1):
        raise ValueError(f"train_val_split: expected a fraction in (0, 1), got {train_val_split!r}")
    for name, value in (("max_train_samples", max_train_samples), ("max_eval_samples", max_eval_samples)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ValueError(f"{name}: expected a positive integer or None, got {value!r}")
    splits, source = _load_splits(dataset_name, dataset_config_name, train_file, validation_file)
    train, validation, image_column, label_column, split = _train_and_validation(
        splits, source, image_column, label_column, train_val_split, seed
    )
    if not isinstance(train.features[label_column], datasets.ClassLabel):
        encoder = LabelEncoder.fit(label_column, train, validation)  # one id per name, shared by both splits
        train, validation = encoder.cast(train, label_column), encoder.cast(validation, label_column)
    label_names = list(train.features[label_column].names)
    if max_train_samples is not None:
        train = _first_rows(train, max_train_samples, label_column, len(label_names), "max_train_samples")
    if max_eval_samples is not None:
        validation = _first_rows(
            validation, max_eval_samples, label_column, len(label_names), "max_eval_samples"
        )
    return ImageData(train, validation, image_column, label_column, label_names, source, split)


def _load_splits(dataset_name, dataset_config_name, train_file, validation_file):
    """``(splits, source)``: the ``DatasetDict`` of files, the embedded digits, a local directory or a Hub id, and
    the name of where it came from (errors name the argument)."""
    if train_file is not None or validation_file is not None:
        return _load_files(train_file, validation_file)
    if dataset_name in (None, DEFAULT_DATASET):
        return _digits_dataset(), DEFAULT_DATASET
    if check_name_or_path("dataset_name", dataset_name) == "local":
        path = Path(dataset_name).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"dataset_name: {dataset_name!r} is a file; expected a directory or a Hub id "
                "(pass a single parquet/csv/json file as --train_file)"
            )
        return _local_directory(path), str(path)
    return _load_from_hub(dataset_name, dataset_config_name), dataset_name


def _load_files(train_file, validation_file):
    """``(splits, source)`` of ``--train_file`` (and ``--validation_file``): parquet, csv or json."""
    if train_file is None:
        raise ValueError("train_file: required when validation_file is given")
    files = {"train": train_file, **({"validation": validation_file} if validation_file else {})}
    for argument, file in (("train_file", train_file), ("validation_file", validation_file)):
        if file is not None and not Path(file).exists():
            raise ValueError(f"{argument}: {file!r} does not exist")
    extension = Path(train_file).suffix.lstrip(".")
    builder = {"parquet": "parquet", "csv": "csv", "json": "json", "jsonl": "json"}.get(extension)
    if builder is None:
        raise ValueError(f"train_file: expected a .parquet, .csv or .json file, got {train_file!r}")
    return datasets.load_dataset(builder, data_files=files), str(train_file)


def _load_from_hub(dataset_name: str, dataset_config_name):
    """The splits of a Hub id (or one in the local caches when offline); one line saying what to do otherwise."""
    if hub_offline() and not _in_dataset_caches(dataset_name):
        raise ValueError(
            f"dataset_name: {dataset_name!r} is not a local path and HF_HUB_OFFLINE is set, but it is in no "
            "cache (Hub or datasets); pass a local directory, parquet files (--train_file), or omit it for "
            "the embedded 'digits' data"
        )
    try:
        return datasets.load_dataset(dataset_name, dataset_config_name)
    except Exception as err:  # offline / unknown id: say what to do instead of a long traceback
        reason = " ".join(f"{type(err).__name__}: {err}".split())  # one line
        offline = (
            "HF_HUB_OFFLINE is set, so only cached Hub data sets load"
            if hub_offline()
            else "check the id and the network"
        )
        raise ValueError(
            f"dataset_name: could not load {dataset_name!r} from the Hub with datasets.load_dataset "
            f"({reason[:300]}); {offline}. Pass a local directory, parquet files (--train_file), or omit it "
            "for the embedded 'digits' data"
        ) from err


def _train_and_validation(splits, source: str, image_column, label_column, train_val_split: float, seed: int):
    """``(train, validation, image_column, label_column, split)``: the training split, its validation split (the
    data set's own, or carved from train: :func:`_carve_validation`), the detected columns, with labels checked on
    both, and the record of where the validation rows come from."""
    train_name = next((s for s in _TRAIN_SPLITS if s in splits), None)
    if train_name is None:
        raise ValueError(f"dataset_name: {source!r} has no 'train' split; splits are {list(splits)}")
    train = splits[train_name]
    image_column = _pick_column(train.column_names, _IMAGE_COLUMNS, image_column, "image", "image_column")
    label_column = _pick_column(train.column_names, _LABEL_COLUMNS, label_column, "label", "label_column")
    _check_labels(train, label_column, train_name)
    validation_name = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if validation_name is None:
        train, validation, carve = _carve_validation(train, label_column, train_val_split, seed)
        return train, validation, image_column, label_column, {"train_split": train_name, **carve}
    validation = splits[validation_name]
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        if column not in validation.column_names:
            raise ValueError(
                f"{argument}: column {column!r} is in the {train_name!r} split but not in the "
                f"{validation_name!r} split, whose columns are {validation.column_names}"
            )
    _check_labels(validation, label_column, validation_name)
    split = {"train_split": train_name, "validation_split": validation_name, "carved": False}
    return train, validation, image_column, label_column, split


def _carve_validation(train: datasets.Dataset, label_column: str, fraction: float, seed: int):
    """The one place a validation split is carved out of train (stratified by label when labels are classes).

    Which rows land in validation depends only on the seed, the fraction, the row count and (stratified) the labels
    in order, so the ``fingerprint`` hashes the row count and the labels: two loads with equal fingerprints, seeds
    and fractions carve the same rows. Returns ``(train, validation, split record)``.
    """
    stratify = label_column if isinstance(train.features[label_column], datasets.ClassLabel) else None
    parts = train.train_test_split(test_size=fraction, seed=seed, stratify_by_column=stratify)
    labels = json.dumps([str(label) for label in train[label_column]])
    record = {
        "validation_split": None,
        "carved": True,
        "seed": seed,
        "fraction": fraction,
        "source_rows": len(train),
        "fingerprint": hashlib.sha256(f"{len(train)}:{labels}".encode()).hexdigest()[:16],
    }
    return parts["train"], parts["test"], record


def split_conflict(expected: dict, actual: dict) -> str | None:
    """Why ``actual`` (an :attr:`ImageData.split`) would evaluate on rows that ``expected`` (a run's split) trained
    on, or ``None``: both carved from the same rows (same fingerprint) but with another seed or fraction."""
    if not (expected.get("carved") and actual.get("carved")):
        return None
    if expected.get("fingerprint") != actual.get("fingerprint"):
        return None  # other data: its carve cannot be compared
    for key, argument in (("seed", "seed"), ("fraction", "train_val_split")):
        if expected.get(key) != actual.get(key):
            return (
                f"{argument}: the model's run carved its validation split with seed {expected.get('seed')} and "
                f"fraction {expected.get('fraction')}, this data with seed {actual.get('seed')} and fraction "
                f"{actual.get('fraction')}: the evaluation rows would include the model's training images; use "
                "the run's values (the default)"
            )
    return None


def _check_labels(split: datasets.Dataset, label_column: str, split_name: str) -> None:
    """Every row has a class id: no missing label, no negative one, and ``ClassLabel`` ids below its size."""
    feature = split.features[label_column]
    if not isinstance(feature, (datasets.ClassLabel, datasets.Value)) or len(split) == 0:
        return
    values = split.with_format("arrow")[label_column]  # pyarrow.ChunkedArray: no decoding, no Python loop
    if values.null_count:
        row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0])
        raise ValueError(
            f"label_column: {label_column!r} of the {split_name!r} split has no label at row {row}; "
            "every image needs one"
        )
    if isinstance(feature, datasets.ClassLabel):
        ids = values.to_numpy()
        bad = np.flatnonzero((ids < 0) | (ids >= feature.num_classes))
        if bad.size:
            row = int(bad[0])
            missing = " (ClassLabel's -1 means a missing label)" if ids[row] == -1 else ""
            raise ValueError(
                f"label_column: {label_column!r} of the {split_name!r} split holds {int(ids[row])} at row {row}"
                f"{missing}; expected class ids in [0, {feature.num_classes}) ({feature.num_classes} names); "
                f"{bad.size} rows are out of range"
            )
    elif feature.dtype.startswith(("int", "float")):
        numbers = values.to_numpy()
        bad = np.flatnonzero(numbers < 0)
        if bad.size:
            row = int(bad[0])
            raise ValueError(
                f"label_column: {label_column!r} of the {split_name!r} split holds the negative label "
                f"{numbers[row]} at row {row} ({bad.size} rows); expected class ids >= 0 (a -1 usually marks "
                "an unlabelled image: drop those rows)"
            )


def _first_rows(split: datasets.Dataset, count: int, label_column: str, num_labels: int, argument: str):
    """The first ``count`` rows, with a warning when they miss classes (e.g. a class-sorted imagefolder)."""
    subset = split.select(range(min(count, len(split))))
    present = len(subset.unique(label_column))
    if present < num_labels:
        warnings.warn(
            f"{argument}={count} keeps the first rows, which hold {present} of {num_labels} classes: the data "
            "is probably sorted by class; shuffle it first (e.g. save a shuffled copy) for a representative subset",
            stacklevel=3,
        )
    return subset


# ----------------------------------------------------------------------------------------------------------
# Streamed sources (--streaming)


@dataclass
class StreamData:
    """A streamed data set: :class:`ImageData`'s fields, with ``IterableDataset`` splits (unshuffled,
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
        """One image of the ``"train"`` or ``"validation"`` stream as a PIL image
        (:func:`hf_recperc.images.decode.decode_image`); errors as :meth:`pixels`."""
        return self._naming_row(split, value, row, lambda at: decode_image(value, at, self.image_column))

    def pixels(
        self, split: str, value, num_channels: int, image_size: int, row: int | None = None
    ) -> np.ndarray:
        """One image of the ``"train"`` or ``"validation"`` stream as `(C, S, S)` uint8
        (:func:`hf_recperc.images.decode.decode_pixels`).

        Args:
            split: the stream it comes from.
            value: the undecoded image (``{"bytes", "path"}``).
            num_channels, image_size: the model's channels and image side.
            row: its index in the unshuffled split, when known (the first rows); else it is found on error.

        Raises:
            ValueError: ``image_column: row N of FILE (file ...) is not a readable image: ...``, the row counted in
                its parquet file (or in the split of a Hub data set). A row reached through the shuffled stream is
                found by reading the split again, undecoded, up to it: a cost paid on that error only.
        """

        def read(at: int) -> np.ndarray:
            return decode_pixels(value, at, self.image_column, num_channels, image_size)[0]

        return self._naming_row(split, value, row, read)

    def _naming_row(self, split: str, value, row: int | None, read):
        """``read(row)``, with an unreadable image's error naming its row in its file."""
        try:
            return read(-1 if row is None else row)
        except ValueError as err:
            if err.__cause__ is None:  # not an unreadable image (decode_image chains the reader's error)
                raise
            error = err.__cause__
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
    lazy = datasets.Image(decode=False)  # decode only the rows a process keeps
    train, validation = (
        train.cast_column(image_column, lazy),
        validation.cast_column(image_column, lazy),
    )
    files = {"train": files.get("train", []), "validation": files.get(validation_name, [])}
    names = list(label_feature.names)
    return StreamData(train, validation, image_column, label_column, names, source, rows, files)
