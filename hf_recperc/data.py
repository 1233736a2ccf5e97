"""Image data sets for every script: Hub ids, local files, and the embedded default.

:func:`load_image_dataset` resolves what a user names into a train and a validation split with a known
image column and label column:

* ``None`` or ``"digits"``: scikit-learn's 8x8 handwritten digits, shipped inside scikit-learn, so every
  script runs offline on a fresh machine;
* a local directory: ``train.parquet`` / ``test.parquet`` style parquet files, a ``save_to_disk``
  directory, or an ``imagefolder`` tree;
* parquet files named with ``train_file`` / ``validation_file``;
* anything else is passed to ``datasets.load_dataset`` (a Hub id such as ``uoft-cs/cifar10``).

:func:`images_to_array` decodes a split into one float32 array `(N, C, H, W)` in ``[0, 1]``, cached on disk
by the split's fingerprint, for the pixel-space tools (PCA, probes, linear theory, E2 projections);
:func:`paper_preprocessing` applies docs/science.md section 2's normalisation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from .publish.atomic import prepare_cache_dir, save_npy
from .validation import check_name_or_path, hub_offline

__all__ = [
    "DEFAULT_DATASET",
    "ImageData",
    "ProcessedImages",
    "decode_image",
    "unreadable_image",
    "load_image_dataset",
    "images_to_array",
    "paper_preprocessing",
    "processor_transform",
    "random_crop_flip",
    "cache_root",
    "load_cached_array",
    "split_conflict",
]

logger = logging.getLogger(__name__)

DEFAULT_DATASET = "digits"
_IMAGE_COLUMNS = ("img", "image", "pixel_values", "images")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label")
_TRAIN_SPLITS = ("train",)
_GRAY_MODES = ("L", "1", "I", "F")
_VALIDATION_SPLITS = ("validation", "valid", "val", "test")


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
        undecoded, decoder = _undecoded(self.train, self.image_column)
        return image_shape(decode_image(undecoded[0][self.image_column], 0, self.image_column, decoder))


def image_shape(image: Image.Image) -> tuple[int, int, int]:
    """`(num_channels, height, width)` of a PIL image as the models see it: grayscale modes (``L``, ``1``, ``I``,
    ``F``) are 1 channel, every other mode 3 (images are converted to ``L`` or ``RGB``)."""
    return (1 if image.mode in _GRAY_MODES else 3), image.size[1], image.size[0]


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
    value; plain columns are then mapped to ids ``0..C-1`` (see ``_encode_labels``). Both are checked once, at
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

    if train_file is not None or validation_file is not None:
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
        splits, source = datasets.load_dataset(builder, data_files=files), str(train_file)
    elif dataset_name in (None, DEFAULT_DATASET):
        splits, source = _digits_dataset(), DEFAULT_DATASET
    elif check_name_or_path("dataset_name", dataset_name) == "local":
        path = Path(dataset_name).expanduser()
        if not path.is_dir():
            raise ValueError(
                f"dataset_name: {dataset_name!r} is a file; expected a directory or a Hub id "
                "(pass a single parquet/csv/json file as --train_file)"
            )
        splits, source = _local_directory(path), str(path)
    else:
        if hub_offline() and not _in_dataset_caches(dataset_name):
            raise ValueError(
                f"dataset_name: {dataset_name!r} is not a local path and HF_HUB_OFFLINE is set, but it is in no "
                "cache (Hub or datasets); pass a local directory, parquet files (--train_file), or omit it for "
                "the embedded 'digits' data"
            )
        try:
            splits = datasets.load_dataset(dataset_name, dataset_config_name)
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
        source = dataset_name

    train_name = next((s for s in _TRAIN_SPLITS if s in splits), None)
    if train_name is None:
        raise ValueError(f"dataset_name: {source!r} has no 'train' split; splits are {list(splits)}")
    train = splits[train_name]
    image_column = _pick_column(train.column_names, _IMAGE_COLUMNS, image_column, "image", "image_column")
    label_column = _pick_column(train.column_names, _LABEL_COLUMNS, label_column, "label", "label_column")

    _check_labels(train, label_column, train_name)
    validation_name = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if validation_name is not None:
        validation = splits[validation_name]
        for argument, column in (("image_column", image_column), ("label_column", label_column)):
            if column not in validation.column_names:
                raise ValueError(
                    f"{argument}: column {column!r} is in the {train_name!r} split but not in the "
                    f"{validation_name!r} split, whose columns are {validation.column_names}"
                )
        _check_labels(validation, label_column, validation_name)
        split = {"train_split": train_name, "validation_split": validation_name, "carved": False}
    else:
        train, validation, carve = _carve_validation(train, label_column, train_val_split, seed)
        split = {"train_split": train_name, **carve}

    if not isinstance(train.features[label_column], datasets.ClassLabel):
        train, validation = _encode_labels(train, validation, label_column)
    label_names = list(train.features[label_column].names)
    if max_train_samples is not None:
        train = _first_rows(train, max_train_samples, label_column, len(label_names), "max_train_samples")
    if max_eval_samples is not None:
        validation = _first_rows(
            validation, max_eval_samples, label_column, len(label_names), "max_eval_samples"
        )
    return ImageData(train, validation, image_column, label_column, label_names, source, split)


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


def _encode_labels(train: datasets.Dataset, validation: datasets.Dataset, label_column: str):
    """Plain label columns (ints such as 1..10, or strings) -> one shared ``ClassLabel`` with ids 0..C-1.

    Every consumer (models, probes, metrics) then sees class ids, and train and validation agree on them.
    Names sort numerically when every label is a number, else as strings.
    """
    as_text = datasets.Value("string")
    train, validation = (
        train.cast_column(label_column, as_text),
        validation.cast_column(label_column, as_text),
    )
    values = set(train.unique(label_column)) | set(validation.unique(label_column))
    if None in values:
        raise ValueError(f"label_column: {label_column!r} has missing labels; every image needs one")
    try:
        names = sorted(values, key=float)
    except ValueError:
        names = sorted(values)
    label = datasets.ClassLabel(names=names)
    return train.cast_column(label_column, label), validation.cast_column(label_column, label)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hf_recperc caches decoded pixels and fitted PCAs: ``cache_dir`` when given, else
    ``$HF_RECPERC_CACHE``, else ``~/.cache/hf_recperc`` (the one place that decides it)."""
    return Path(cache_dir or os.environ.get("HF_RECPERC_CACHE") or Path.home() / ".cache" / "hf_recperc")


def load_cached_array(
    path: Path | None, dtype, shape: tuple[int | None, ...], mmap_mode: str | None = "r"
) -> np.ndarray | None:
    """A cached ``.npy`` array, or ``None`` (decode again) when there is none (or no ``path``) or it is not whole.

    A cache can be cut short (a full disk, an interrupted copy, a file written before writes were atomic); numpy
    then fails with "mmap length is greater than file size", naming no file, and every later run fails the same way.
    So the header is read first and the file's size checked against it; a damaged file is logged, and the caller
    decodes again and replaces it.

    Args:
        path: the ``.npy`` file.
        dtype: the dtype it must hold (in C order).
        shape: the shape it must have; ``None`` entries match any length.
        mmap_mode: passed to ``np.load`` (``None`` reads it into memory).
    """
    if path is None or not path.exists():
        return None
    try:
        stored_shape, fortran_order, stored_dtype, data_offset, size = _npy_header(path)
    except (OSError, ValueError, EOFError) as err:  # numpy reports a bad header as ValueError
        return _damaged_cache(path, f"unreadable header: {' '.join(str(err).split())}")
    if stored_dtype != np.dtype(dtype) or fortran_order:
        found = f"{stored_dtype}{' in Fortran order' if fortran_order else ''}"
        return _damaged_cache(path, f"holds {found}, expected {np.dtype(dtype)}")
    if len(stored_shape) != len(shape) or any(e is not None and e != s for s, e in zip(stored_shape, shape)):
        return _damaged_cache(path, f"holds shape {stored_shape}, expected {tuple(shape)}")
    expected_size = data_offset + int(np.prod(stored_shape)) * stored_dtype.itemsize
    if size != expected_size:
        return _damaged_cache(path, f"{size:,} bytes, expected {expected_size:,} for shape {stored_shape}")
    return np.load(path, mmap_mode=mmap_mode)


def _npy_header(path: Path) -> tuple[tuple[int, ...], bool, np.dtype, int, int]:
    """``(shape, fortran_order, dtype, data offset, file size)`` of a ``.npy`` file (numpy's format 1.0 / 2.0, what
    ``np.save`` writes), without reading its data."""
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        if version not in readers:
            raise ValueError(f"npy format version {version}, expected 1.0 or 2.0")
        shape, fortran_order, dtype = readers[version](file)
        return shape, fortran_order, dtype, file.tell(), os.fstat(file.fileno()).st_size


def _damaged_cache(path: Path, reason: str) -> None:
    logger.warning(f"cache {str(path)!r} is damaged ({reason}): decoding the images again to rebuild it")
    return None


def decode_image(value, row: int, image_column: str, decoder: datasets.Image | None = None) -> Image.Image:
    """One image of a split, decoded, or a one-line ``ValueError`` naming its row and file.

    Args:
        value: a ``PIL.Image.Image`` (returned as is) or an undecoded ``datasets.Image`` value, a dict
            ``{"bytes": ..., "path": ...}`` or a path.
        row: the row of the split it comes from, for the message.
        image_column: the column it comes from, for the message.
        decoder: the column's ``datasets.Image`` feature (its ``mode`` is applied); default: no mode change.

    Raises:
        ValueError: ``image_column: row N (file ...) is not a readable image: ...`` for a truncated, corrupt or
            missing file (:func:`unreadable_image`).
    """
    if isinstance(value, Image.Image):
        return value
    try:
        return (decoder or datasets.Image()).decode_example(value)
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ... by format
        raise unreadable_image(value, row, image_column, err) from err


def unreadable_image(value, row: int, image_column: str, error: BaseException, source: str | None = None):
    """The one-line ``ValueError`` of an image that does not decode: its column, row (``of source`` when given),
    file (``path`` of an undecoded value, else its embedded bytes) and PIL's reason."""
    path = value.get("path") if isinstance(value, dict) else value
    reason = " ".join(f"{type(error).__name__}: {error}".split())
    where = f"row {row} of {source}" if source else f"row {row}"
    stored = f"file {path!r}" if path else "embedded bytes"
    return ValueError(f"{image_column}: {where} ({stored}) is not a readable image: {reason}")


def _undecoded(split: datasets.Dataset, image_column: str) -> tuple[datasets.Dataset, datasets.Image | None]:
    """The split with its image column left undecoded (a metadata change), and the feature that decodes it.

    Decoding rows ourselves (:func:`decode_image`) is what lets an unreadable file name its row: inside
    ``datasets`` the error surfaces as a PIL traceback that says neither.
    """
    feature = split.features[image_column]
    if not isinstance(feature, datasets.Image) or not feature.decode:
        return split, None
    return (
        split.cast_column(image_column, datasets.Image(mode=feature.mode, decode=False)),
        datasets.Image(mode=feature.mode),
    )


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
        self.split, self.decoder = _undecoded(split, image_column)
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


def _cache_path(dataset: datasets.Dataset, image_column: str, cache_dir: str | None) -> Path | None:
    fingerprint = getattr(dataset, "_fingerprint", None)
    # In-memory data sets (the embedded digits) get a random fingerprint per process: nothing to reuse.
    if fingerprint is None or not dataset.cache_files:
        return None
    key = hashlib.sha1(f"{fingerprint}:{image_column}:v1".encode()).hexdigest()[:16]
    return cache_root(cache_dir) / "pixels" / f"{key}.npy"


def images_to_array(
    dataset: datasets.Dataset,
    image_column: str,
    *,
    num_channels: int | None = None,
    image_size: int | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
) -> np.ndarray:
    """Decode a split's images into one float32 array of shape `(N, C, H, W)` with values in ``[0, 1]``.

    All images must share one size, or pass ``image_size`` to resize every image (bilinear) to
    ``image_size x image_size``. ``num_channels`` forces 1 (``L``) or 3 (``RGB``) channels; by default it
    follows the first image's mode. The decoded
    array is cached as ``.npy`` under ``~/.cache/hf_recperc`` (or ``HF_RECPERC_CACHE``), keyed by the
    split's fingerprint, since decoding 50,000 JPEGs costs tens of seconds.
    """
    if len(dataset) == 0:
        raise ValueError("dataset: the split is empty")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size: expected a positive integer or None, got {image_size!r}")
    path = _cache_path(dataset, f"{image_column}@{image_size}", cache_dir) if cache else None
    cached = load_cached_array(path, np.float32, (len(dataset), None, image_size, image_size), mmap_mode=None)
    if cached is not None and (num_channels is None or cached.shape[1] == num_channels):
        return cached
    undecoded, decoder = _undecoded(dataset, image_column)
    first = decode_image(undecoded[0][image_column], 0, image_column, decoder)
    mode = {1: "L", 3: "RGB"}.get(num_channels) or ("L" if first.mode in _GRAY_MODES else "RGB")
    width, height = (image_size, image_size) if image_size else first.size
    channels = 1 if mode == "L" else 3
    array = np.empty((len(dataset), channels, height, width), dtype=np.float32)
    for start in range(0, len(dataset), 1024):
        batch = undecoded[start : start + 1024][image_column]
        for offset, value in enumerate(batch):
            image = decode_image(value, start + offset, image_column, decoder)
            if image_size and image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
            if image.size != (width, height):
                raise ValueError(
                    f"dataset: image {start + offset} is {image.size[0]}x{image.size[1]} but the first is "
                    f"{width}x{height}; pass image_size (--image_size N) to resize every image"
                )
            pixels = np.asarray(image.convert(mode), dtype=np.float32) / 255.0
            array[start + offset] = pixels[None] if channels == 1 else pixels.transpose(2, 0, 1)
    if path is not None:
        prepare_cache_dir(path.parent)
        save_npy(path, array)  # atomic: a concurrent reader never sees half a file
    return array


def paper_preprocessing(train: np.ndarray, *others: np.ndarray, eps: float = 1e-6):
    """docs/science.md section 2: divide each image by its own pixel std (+eps), subtract the train mean image.

    Args:
        train: images of shape `(N, ...)` (any trailing shape); the mean is taken over this split.
        others: further splits of the same trailing shape (e.g. test), normalised with the train mean.

    Returns:
        Flattened float32 arrays of shape `(N, D)`, one per input, in the order given.
    """

    def per_image(x: np.ndarray) -> np.ndarray:
        flat = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        return flat / (flat.std(axis=1, keepdims=True, dtype=np.float64).astype(np.float32) + eps)

    scaled_train = per_image(train)
    mean = scaled_train.mean(axis=0, dtype=np.float64).astype(np.float32)
    results = [scaled_train - mean] + [per_image(x) - mean for x in others]
    return results[0] if not others else tuple(results)


# ----------------------------------------------------------------------------------------------------------
# Training transforms (used by hf_recperc.training)
#
# Deterministic per-image processing (decode, channel mode, resize, rescale, normalise) is the model's image
# processor, applied lazily with `Dataset.with_transform`. Random augmentation is *not* done there: it runs
# on the batch tensor with an explicit generator (`random_crop_flip`), so that a run resumed from a checkpoint
# replays exactly the same crops and flips whatever the number of data-loader workers.


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
    label_ids = {name: index for index, name in enumerate(label_names)} if label_names is not None else None

    def transform(batch: dict) -> dict:
        images = [image.convert(mode) for image in batch[image_column]]
        pixel_values = image_processor(images, return_tensors="pt")["pixel_values"]  # (B, C, H, W)
        labels = batch[label_column]
        if labels and not isinstance(labels[0], (int, np.integer)):
            labels = [label_ids[str(label)] for label in labels]
        return {"pixel_values": pixel_values, "labels": torch.as_tensor(labels, dtype=torch.long)}

    return transform


_PADDING_MODES = {"reflect": "reflect", "zeros": "constant"}


def random_crop_flip(
    pixel_values: torch.Tensor,
    *,
    padding: int = 0,
    flip: bool = False,
    generator: torch.Generator | None = None,
    padding_mode: str = "reflect",
) -> torch.Tensor:
    """Random crop (after padding) and random horizontal flip of a batch, one draw per image.

    The CIFAR recipe: pad each side by ``padding`` pixels, crop back to the original size at a uniformly
    random offset, and mirror left-right with probability 1/2. ``padding_mode="reflect"`` (the default,
    used for pre-training) mirrors the border; ``"zeros"`` fills with 0, the E2 recipe for projected images
    (docs/science.md, E2), which are centred so that 0 is the data's mean value. The random numbers are
    drawn on ``generator``'s device (CPU or the batch's) and moved to the batch, so a CPU generator keeps a
    run reproducible on any device.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): images.
        padding: pixels of padding per side; 0 disables cropping.
        flip: whether to flip half of the images horizontally.
        generator: source of randomness (default: torch's global generator).
        padding_mode: ``"reflect"`` or ``"zeros"``.

    Returns:
        `torch.FloatTensor` of the same shape, on the batch's device.
    """
    if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
        raise ValueError(f"padding: expected an integer >= 0, got {padding!r}")
    if padding_mode not in _PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {sorted(_PADDING_MODES)}, got {padding_mode!r}")
    if pixel_values.ndim != 4:
        raise ValueError(
            f"pixel_values: expected (batch_size, num_channels, height, width), got {tuple(pixel_values.shape)}"
        )
    batch_size, _, height, width = pixel_values.shape
    draw_device = generator.device if generator is not None else pixel_values.device
    if padding > 0:
        if padding_mode == "reflect" and padding >= min(height, width):
            raise ValueError(
                f"padding: {padding} must be smaller than the image size {height}x{width} (reflect padding)"
            )
        top = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=draw_device)
        left = torch.randint(0, 2 * padding + 1, (batch_size,), generator=generator, device=draw_device)
        offsets = torch.stack([top, left])  # (2, B)
        padded = torch.nn.functional.pad(pixel_values, (padding,) * 4, mode=_PADDING_MODES[padding_mode])
        pixel_values = _crop_windows(padded, offsets.to(pixel_values.device), height, width)
    if flip:
        flipped = (torch.rand(batch_size, generator=generator, device=draw_device) < 0.5).to(
            pixel_values.device
        )
        pixel_values = torch.where(flipped[:, None, None, None], pixel_values.flip(-1), pixel_values)
    return pixel_values


def _crop_windows(padded: torch.Tensor, offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """One ``height x width`` window per image of ``padded`` `(B, C, H+2p, W+2p)` whose top-left corners are
    ``offsets`` `(2, B)` (rows, then columns); returns `(B, C, H, W)`."""
    if padded.device.type == "cpu":
        # A slice per image: on CPU this is 2-3x faster than one advanced-indexing gather of all windows.
        return _slice_windows(padded, offsets, height, width)
    return _gather_windows(padded, offsets, height, width)


def _slice_windows(padded: torch.Tensor, offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    corners = offsets.T.tolist()  # (B, 2)
    return torch.stack(
        [padded[i, :, top : top + height, left : left + width] for i, (top, left) in enumerate(corners)]
    )


def _gather_windows(padded: torch.Tensor, offsets: torch.Tensor, height: int, width: int) -> torch.Tensor:
    # One advanced-indexing gather: no per-image Python loop, no host sync on accelerators.
    device = padded.device
    rows = (offsets[0][:, None] + torch.arange(height, device=device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (offsets[1][:, None] + torch.arange(width, device=device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(padded.shape[0], device=device)[:, None, None, None]
    channels = torch.arange(padded.shape[1], device=device)[None, :, None, None]
    return padded[batch, channels, rows, cols]  # (B, C, H, W)
