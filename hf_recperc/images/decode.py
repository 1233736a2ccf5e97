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
import warnings
from io import BytesIO
from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps

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
    "decode_batch",
    "check_decode_device",
    "DRAFT_FACTOR",
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

    The one decode routine of the store, the float view and the streams (docs/design.md, "Decoding"): JPEG and
    8-bit PNG bytes holding RGB or grayscale pixels are decoded by libjpeg-turbo / libpng through
    ``torchvision.io.decode_image`` (EXIF orientation applied, as ``datasets`` does); a JPEG at least
    :data:`DRAFT_FACTOR` times larger than ``S`` on both sides is decoded at a reduced scale in the DCT domain
    (PIL's ``Image.draft``) before the resize; everything else (CMYK, palette, 16-bit, grayscale + alpha, a mode
    set on the column, a model with fewer channels than the image) goes through PIL (:func:`decode_image`).

    Args:
        value: an undecoded ``datasets.Image`` value (``{"bytes", "path"}`` or a path) or a ``PIL`` image.
        row, image_column: where it comes from, for the error message.
        num_channels: 1 (``L``) or 3 (``RGB``).
        image_size: the side ``S`` (``None``: keep the image's own size).
        decoder: the column's ``datasets.Image`` feature (its ``mode`` is applied), if any.

    Raises:
        ValueError: ``image_column: row N (file ...) is not a readable image: ...``.
    """
    data = None if decoder is not None and decoder.mode else _encoded_bytes(value)
    route = _fast_route(data, num_channels, image_size) if data is not None else None
    if route is not None:
        try:
            pixels = (
                _draft_decode(data, num_channels, image_size)
                if route == "draft"
                else _libjpeg_png(data, num_channels)
            )
        except (RuntimeError, OSError, ValueError, SyntaxError):
            pixels = None  # PIL decodes it again below and names the row in its error
        if pixels is not None:
            if image_size is None or pixels.shape[1:] == (image_size, image_size):
                return pixels.numpy(), False
            return resize_uint8(pixels, image_size).numpy(), True
    return image_to_uint8(decode_image(value, row, image_column, decoder), num_channels, image_size)


def decode_batch(
    values,
    rows,
    image_column: str,
    num_channels: int,
    image_size: int | None,
    decoder=None,
    device: str = "cpu",
) -> list[tuple[np.ndarray, bool]]:
    """:func:`decode_pixels` of several images; with ``device="cuda"``, the JPEGs among them are decoded in one
    batch by nvJPEG (``torchvision.io.decode_jpeg(..., device="cuda")``) and resized on the GPU.

    A JPEG with an EXIF orientation (nvJPEG does not apply it), a truncated one, and every other image are decoded
    on the CPU by :func:`decode_pixels`, and so is the whole batch when nvJPEG refuses it; an unreadable image
    fails there, naming its row. nvJPEG's pixels differ from libjpeg-turbo's by a few grey levels
    (docs/design.md, "Decoding"): a GPU-decoded store gets its own cache key.
    """
    values, rows = list(values), list(rows)
    results: list = [None] * len(values)
    if torch.device(device).type == "cuda":
        on_gpu = [i for i, value in enumerate(values) if _nvjpeg_route(value, num_channels, decoder)]
        if on_gpu:
            for i, pixels in zip(on_gpu, _nvjpeg(values, on_gpu, num_channels, image_size, device)):
                results[i] = pixels
    for i, (value, row) in enumerate(zip(values, rows)):
        if results[i] is None:
            results[i] = decode_pixels(value, row, image_column, num_channels, image_size, decoder)
    return results


def _nvjpeg_route(value, num_channels: int, decoder) -> bool:
    """Whether nvJPEG can decode ``value`` to the pixels the CPU routes give (upright RGB / grayscale JPEG)."""
    data = None if decoder is not None and decoder.mode else _encoded_bytes(value)
    if data is None or _fast_route(data, num_channels, None) != "libjpeg" or not data.startswith(_JPEG):
        return False
    with Image.open(BytesIO(data)) as probe:  # the header, EXIF included
        return probe.getexif().get(ExifTags.Base.Orientation) in (None, 1)


def _nvjpeg(values, chosen: list[int], num_channels: int, image_size: int | None, device: str) -> list:
    """`(pixels, resized)` of ``values[i]`` for ``i`` in ``chosen`` decoded in one nvJPEG batch, or ``None`` each when
    nvJPEG refuses the batch (the CPU decodes them then)."""
    from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415

    encoded = [torch.frombuffer(bytearray(_encoded_bytes(values[i])), dtype=torch.uint8) for i in chosen]
    mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
    try:
        decoded = decode_jpeg(encoded, mode=mode, device=device)
    except RuntimeError:
        return [None] * len(chosen)
    results = []
    for pixels in decoded:  # (C, h, w) uint8 on the GPU
        resized = image_size is not None and tuple(pixels.shape[1:]) != (image_size, image_size)
        results.append(((resize_uint8(pixels, image_size) if resized else pixels).cpu().numpy(), resized))
    return results


def check_decode_device(decode_device: str) -> None:
    """``--decode_device``: ``"cpu"``, or ``"cuda"`` where CUDA is present (a one-line error otherwise)."""
    if decode_device not in ("cpu", "cuda"):
        raise ValueError(f"decode_device: expected 'cpu' or 'cuda', got {decode_device!r}")
    if decode_device == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            "decode_device: 'cuda' decodes JPEGs with nvJPEG on a CUDA GPU, but torch sees none here "
            "(torch.cuda.is_available() is False); use --decode_device cpu"
        )


# A JPEG at least this many times the target side (both sides) is decoded at a reduced scale (Image.draft).
DRAFT_FACTOR = 2
_JPEG, _PNG = b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n"
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec (not a dependency): they still work and
# are the fastest at hand; silence the notice per call, once.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")


def _encoded_bytes(value) -> bytes | None:
    """The encoded bytes of an undecoded value when they are at hand (embedded, or a local file), else ``None``."""
    if isinstance(value, dict):
        if value.get("bytes") is not None:
            return value["bytes"]
        value = value.get("path")
    if isinstance(value, (str, os.PathLike)) and os.path.isfile(value):
        with open(value, "rb") as file:
            return file.read()
    return None


def _fast_route(data: bytes, num_channels: int, image_size: int | None) -> str | None:
    """``"libjpeg"`` (torchvision), ``"draft"`` (PIL at a reduced DCT scale) or ``None`` (PIL, the reference)."""
    is_jpeg, is_png = data.startswith(_JPEG), data.startswith(_PNG)
    if not (is_jpeg or is_png):
        return None
    if is_jpeg and not data.rstrip(b"\x00").endswith(b"\xff\xd9"):
        return None  # truncated: libjpeg would fill in grey, PIL refuses (and names the row)
    if is_png and (len(data) < 26 or data[24] != 8):
        return None  # IHDR bit depth: 16-bit PNGs are reduced to 8 bits by PIL's rules
    try:
        with Image.open(BytesIO(data)) as probe:  # reads the header only
            mode, (width, height) = probe.mode, probe.size
    except Exception:  # noqa: BLE001  (PIL raises many types; the PIL path reports it with the row)
        return None
    colour_modes = ("RGB", "L") if is_jpeg else ("RGB", "L", "RGBA")
    if mode not in colour_modes or (num_channels == 1 and mode != "L") or num_channels not in (1, 3):
        return None
    if is_jpeg and image_size and min(width, height) >= DRAFT_FACTOR * image_size:
        return "draft"
    return "libjpeg"


def _libjpeg_png(data: bytes, num_channels: int) -> torch.Tensor:
    """`(C, h, w)` uint8 of JPEG/PNG bytes by torchvision (libjpeg-turbo, libpng), upright by EXIF orientation;
    grayscale replicated to 3 channels and PNG alpha dropped by the codec, as PIL's ``convert("RGB")`` does."""
    from torchvision.io import ImageReadMode, decode_image  # noqa: PLC0415

    mode = ImageReadMode.GRAY if num_channels == 1 else ImageReadMode.RGB
    return decode_image(
        torch.frombuffer(bytearray(data), dtype=torch.uint8), mode, apply_exif_orientation=True
    )


def _draft_decode(data: bytes, num_channels: int, image_size: int) -> torch.Tensor:
    """`(C, h, w)` uint8 of a large JPEG decoded at the largest DCT scale (1/2, 1/4, 1/8) that keeps both sides
    at least ``image_size`` (PIL's ``Image.draft``), upright by EXIF orientation as ``datasets`` decodes it."""
    with Image.open(BytesIO(data)) as image:
        image.draft(image.mode, (image_size, image_size))
        image = _upright(image).convert(image_mode(num_channels))
        pixels = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(
        np.ascontiguousarray(pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1))
    )


def _upright(image: Image.Image) -> Image.Image:
    """``image`` turned by its EXIF orientation, the way ``datasets.Image`` decodes."""
    if image.getexif().get(ExifTags.Base.Orientation) is not None:
        return ImageOps.exif_transpose(image)
    return image


def cache_root(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where hf_recperc caches decoded pixels and fitted PCAs: ``cache_dir`` when given, else
    ``$HF_RECPERC_CACHE``, else ``~/.cache/hf_recperc`` (the one place that decides it)."""
    return Path(cache_dir or os.environ.get("HF_RECPERC_CACHE") or Path.home() / ".cache" / "hf_recperc")


def cache_key(
    dataset: datasets.Dataset,
    image_column: str,
    num_channels: int,
    image_size: int | None,
    decode_device: str = "cpu",
) -> str | None:
    """The one key of a split's decoded pixels: its fingerprint (which ``select``/``map`` update deterministically)
    and how it is decoded; ``None`` for in-memory data sets, whose fingerprint is random per process (nothing to
    reuse across runs). Every cached view of decoded images (the training store, the float arrays of the
    experiments) is found by this key (:func:`cache_file`); ``decode_device`` (:func:`decode_batch`) is part of it
    when not the CPU."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None or not dataset.cache_files:
        return None
    text = f"{fingerprint}:{image_column}:{num_channels}:{image_size}:{_CACHE_VERSION}"
    if decode_device != "cpu":  # nvJPEG's pixels are not libjpeg-turbo's: never mix the two in one store
        text += f":{decode_device}"
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
