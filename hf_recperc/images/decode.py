"""Decoding one image, and the files decoded images are cached in: the one place images become pixels.

* :func:`decode_image`: a stored value (``{"bytes", "path"}``, a path, or a ``PIL`` image) -> a ``PIL`` image, or
  the one-line ``ValueError`` naming its row and file (:func:`unreadable_image`) for a corrupt one;
* :func:`decode_pixels` / :func:`image_to_uint8`: -> a `(C, S, S)` uint8 array at the model's channels and size,
  resized as the model's image processor resizes (torchvision, bilinear, antialiased);
* :func:`cache_key`, :func:`cache_file`, :func:`load_cached_array`, :func:`write_cached_array`: the one cache-key
  scheme and the one atomic write of every decoded-pixel cache (:mod:`hf_recperc.images.store` builds on them).

docs/design.md, "Decoding", says which decoder reads which image and how far its pixels may be from PIL's.
"""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image

from ..processing import image_mode
from ..publish.atomic import prepare_cache_dir, save_npy

__all__ = [
    "GRAY_MODES",
    "image_mode",
    "image_shape",
    "decode_image",
    "unreadable_image",
    "undecoded",
    "decode_pixels",
    "image_to_uint8",
    "resize_uint8",
    "cache_root",
    "cache_key",
    "cache_file",
    "load_cached_array",
    "write_cached_array",
]

logger = logging.getLogger(__name__)

GRAY_MODES = ("L", "1", "I", "F")
_CACHE_VERSION = "v2"  # bump when the decoded values change (v2: one key scheme for every view)


def image_shape(image: Image.Image) -> tuple[int, int, int]:
    """`(num_channels, height, width)` of a PIL image as the models see it: grayscale modes (``L``, ``1``, ``I``,
    ``F``) are 1 channel, every other mode 3 (images are converted to ``L`` or ``RGB``)."""
    return (1 if image.mode in GRAY_MODES else 3), image.size[1], image.size[0]


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


def undecoded(split: datasets.Dataset, image_column: str) -> tuple[datasets.Dataset, datasets.Image | None]:
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


def resize_uint8(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """`(C, h, w)` (or `(B, C, h, w)`) uint8 -> `(..., C, size, size)` uint8 with the image processor's resize
    (torchvision, bilinear, antialiased)."""
    from torchvision.transforms.v2 import functional as tvF  # noqa: PLC0415  (only for resized images)

    return tvF.resize(pixels, [size, size], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)


def image_to_uint8(image, num_channels: int, image_size: int | None) -> tuple[np.ndarray, bool]:
    """One decoded image (PIL, from :func:`decode_image`) -> `(C, S, S)` uint8 (`(C, h, w)` when ``image_size`` is
    ``None``), and whether it had to be resized."""
    mode = image_mode(num_channels) or "RGB"  # the saved image processor converts the same way
    pixels = np.asarray(image.convert(mode) if isinstance(image, Image.Image) else image, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, h, w)
    if image_size is None or pixels.shape[1:] == (image_size, image_size):
        return pixels, False
    return resize_uint8(torch.from_numpy(np.ascontiguousarray(pixels)), image_size).numpy(), True


def decode_pixels(
    value, row: int, image_column: str, num_channels: int, image_size: int | None, decoder=None
) -> tuple[np.ndarray, bool]:
    """One stored image -> `(C, S, S)` uint8 at the model's channels and size, and whether it was resized.

    The one decode routine of the store, the float view and the streams (docs/design.md, "Decoding").

    Args:
        value: an undecoded ``datasets.Image`` value (``{"bytes", "path"}`` or a path) or a ``PIL`` image.
        row, image_column: where it comes from, for the error message.
        num_channels: 1 (``L``) or 3 (``RGB``).
        image_size: the side ``S`` (``None``: keep the image's own size).
        decoder: the column's ``datasets.Image`` feature (its ``mode`` is applied), if any.

    Raises:
        ValueError: ``image_column: row N (file ...) is not a readable image: ...``.
    """
    return image_to_uint8(decode_image(value, row, image_column, decoder), num_channels, image_size)


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hf_recperc caches decoded pixels and fitted PCAs: ``cache_dir`` when given, else
    ``$HF_RECPERC_CACHE``, else ``~/.cache/hf_recperc`` (the one place that decides it)."""
    return Path(cache_dir or os.environ.get("HF_RECPERC_CACHE") or Path.home() / ".cache" / "hf_recperc")


def cache_key(
    dataset: datasets.Dataset, image_column: str, num_channels: int, image_size: int | None
) -> str | None:
    """The one key of a split's decoded pixels: its fingerprint (which ``select``/``map`` update deterministically)
    and how it is decoded; ``None`` for in-memory data sets, whose fingerprint is random per process (nothing to
    reuse across runs). Every cached view of decoded images (the training store, the float arrays of the
    experiments) is found by this key (:func:`cache_file`)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None or not dataset.cache_files:
        return None
    text = f"{fingerprint}:{image_column}:{num_channels}:{image_size}:{_CACHE_VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def cache_file(key: str | None, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The ``.npy`` file of the uint8 pixels cached under ``key`` (``None`` without a key)."""
    return None if key is None else cache_root(cache_dir) / "uint8" / f"{key}.npy"


def write_cached_array(path: Path, array: np.ndarray) -> None:
    """Write a decoded-pixel cache atomically: a concurrent reader never sees half a file."""
    prepare_cache_dir(path.parent)
    save_npy(path, array)


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
