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
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

__all__ = [
    "DEFAULT_DATASET",
    "ImageData",
    "load_image_dataset",
    "images_to_array",
    "paper_preprocessing",
    "processor_transform",
    "random_crop_flip",
    "cache_root",
]

DEFAULT_DATASET = "digits"
_IMAGE_COLUMNS = ("img", "image", "pixel_values", "images")
_LABEL_COLUMNS = ("label", "labels", "fine_label", "coarse_label")
_TRAIN_SPLITS = ("train",)
_VALIDATION_SPLITS = ("validation", "valid", "val", "test")


@dataclass
class ImageData:
    """A resolved image classification data set.

    Attributes:
        train, validation: `datasets.Dataset` splits.
        image_column, label_column: the column names in both splits.
        label_names: class names (from a ``ClassLabel`` feature, else ``str`` of each label id).
        source: what was loaded, for reports and model cards.
    """

    train: datasets.Dataset
    validation: datasets.Dataset
    image_column: str
    label_column: str
    label_names: list[str]
    source: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


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
    return datasets.load_dataset("imagefolder", data_dir=str(path))


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

    Raises:
        ValueError: naming the argument when a path does not exist, a column is missing, or a number is
            out of range.
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
    elif Path(dataset_name).expanduser().exists():
        path = Path(dataset_name).expanduser()
        splits, source = _local_directory(path), str(path)
    elif dataset_name.startswith((".", "/", "~")) or os.sep in dataset_name and dataset_name.count("/") > 1:
        raise ValueError(f"dataset_name: local path {dataset_name!r} does not exist")
    else:
        try:
            splits = datasets.load_dataset(dataset_name, dataset_config_name)
        except Exception as err:  # offline / unknown id: say what to do instead of a long traceback
            raise ValueError(
                f"dataset_name: could not load {dataset_name!r} with datasets.load_dataset ({type(err).__name__}: "
                f"{err}). Offline (HF_HUB_OFFLINE=1) only cached Hub data sets load; pass a local directory, "
                "parquet files (--train_file), or omit it for the embedded 'digits' data"
            ) from err
        source = dataset_name

    train_name = next((s for s in _TRAIN_SPLITS if s in splits), None)
    if train_name is None:
        raise ValueError(f"dataset_name: {source!r} has no 'train' split; splits are {list(splits)}")
    train = splits[train_name]
    image_column = _pick_column(train.column_names, _IMAGE_COLUMNS, image_column, "image", "image_column")
    label_column = _pick_column(train.column_names, _LABEL_COLUMNS, label_column, "label", "label_column")

    validation_name = next((s for s in _VALIDATION_SPLITS if s in splits), None)
    if validation_name is not None:
        validation = splits[validation_name]
    else:
        stratify = label_column if isinstance(train.features[label_column], datasets.ClassLabel) else None
        parts = train.train_test_split(test_size=train_val_split, seed=seed, stratify_by_column=stratify)
        train, validation = parts["train"], parts["test"]

    if not isinstance(train.features[label_column], datasets.ClassLabel):
        train, validation = _encode_labels(train, validation, label_column)
    label_names = list(train.features[label_column].names)
    if max_train_samples is not None:
        train = _first_rows(train, max_train_samples, label_column, len(label_names), "max_train_samples")
    if max_eval_samples is not None:
        validation = _first_rows(
            validation, max_eval_samples, label_column, len(label_names), "max_eval_samples"
        )
    return ImageData(train, validation, image_column, label_column, label_names, source)


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
    if path is not None and path.exists():
        array = np.load(path, mmap_mode=None)
        if num_channels is None or array.shape[1] == num_channels:
            return array
    first = dataset[0][image_column]
    mode = {1: "L", 3: "RGB"}.get(num_channels) or ("L" if first.mode in ("L", "1", "I", "F") else "RGB")
    width, height = (image_size, image_size) if image_size else first.size
    channels = 1 if mode == "L" else 3
    array = np.empty((len(dataset), channels, height, width), dtype=np.float32)
    for start in range(0, len(dataset), 1024):
        batch = dataset[start : start + 1024][image_column]
        for offset, image in enumerate(batch):
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
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, array)
        os.replace(partial, path)  # atomic: a concurrent reader never sees half a file
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
        runs once per batch, not once per image.
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
