"""Images decoded once into a uint8 store, and the float view of it that the pixel-space tools read.

The training loop's fast data path (``--pixel_store``, the default). Decoding a PNG/JPEG with PIL and running the
image processor per batch costs more than a small model's step on a CPU (issue 11: ~30 ms per batch of 64 CIFAR
images); it also repeats every epoch. Here each image is decoded once into a `(N, C, S, S)` uint8 array, written as
``.npy`` beside the experiments' float pixel cache (``~/.cache/hf_recperc/uint8/``, or ``HF_RECPERC_CACHE``) and
memory-mapped by every later run; what remains per batch (to float, normalise, augment) runs batched on the training
device (:mod:`hf_recperc.images.augment`). :func:`images_to_array` is the same store seen as float32 in ``[0, 1]``,
for the pixel-space tools (PCA, probes, linear theory, E2 projections).

The values are those of the model's image processor (a transformers ``ViTImageProcessor``, torchvision backend),
to float tolerance: it converts each image to a uint8 tensor, resizes it to ``S x S`` with torchvision's antialiased
bilinear resize (a uint8 result), and normalises with ``(x - 255 * mean) / (255 * std)``. We run the same resize on
the same uint8 tensor once at decode time, so images of mixed sizes are handled too, and :func:`normalise_uint8`
does the same arithmetic on the device
(:func:`hf_recperc.images.augment.normalise_uint8`).
"""

from __future__ import annotations

import logging

import datasets
import numpy as np
import torch

from ..publish.atomic import finish_partial, partial_path, prepare_cache_dir
from .decode import (
    GRAY_MODES,
    cache_file,
    cache_key,
    decode_batch,
    decode_image,
    decode_pixels,
    load_cached_array,
    undecoded,
    write_cached_array,
)

__all__ = ["decode_uint8", "images_to_array", "jpeg_store", "JPEGPixels", "JPEG_QUALITY"]

logger = logging.getLogger(__name__)


def _decode(
    dataset: datasets.Dataset,
    image_column: str,
    num_channels: int,
    image_size: int | None,
    decode_device: str = "cpu",
) -> np.ndarray:
    """Every image of ``dataset`` -> `(N, C, S, S)` uint8; with ``image_size=None`` every image must have the first
    image's size."""
    # Decoded row by row by us: a corrupt file fails naming its row and file (decode.decode_image).
    split, decoder = undecoded(dataset, image_column)
    array, resized = None, 0
    for start in range(0, len(dataset), 1024):
        values = split[start : start + 1024][image_column]
        rows = range(start, start + len(values))
        decoded = decode_batch(values, rows, image_column, num_channels, image_size, decoder, decode_device)
        for row, (pixels, was_resized) in zip(rows, decoded):
            if array is None:
                array = np.empty((len(dataset), *pixels.shape), dtype=np.uint8)
            elif pixels.shape != array.shape[1:]:
                raise ValueError(
                    f"dataset: image {row} is {pixels.shape[2]}x{pixels.shape[1]} but the first is "
                    f"{array.shape[3]}x{array.shape[2]}; pass image_size (--image_size N) to resize every image"
                )
            array[row] = pixels
            resized += was_resized
    if resized:
        logger.info(f"pixel store: resized {resized} of {len(dataset)} images to {image_size}x{image_size}")
    return array


# Rows a loader worker decodes per task: large enough to amortise the hand-over, small enough to balance.
_CHUNK_ROWS = 64


def _identity(item):
    return item


class _RowChunks(torch.utils.data.Dataset):
    """Chunks of rows of a split for loader workers to decode: item ``i`` is ``(start, (k, C, S, S) uint8, resized)``
    or, for an unreadable image, ``(start, one-line message, 0)`` (never a worker traceback)."""

    def __init__(self, dataset, image_column, num_channels, image_size, chunks, quality=None, target=None):
        self.split, self.decoder = undecoded(dataset, image_column)
        self.image_column, self.num_channels, self.image_size = image_column, num_channels, image_size
        self.chunks, self.quality = chunks, quality  # quality: re-encode as JPEG (a list of byte tensors)
        # target: the partial .npy the rows go to, written by the worker itself (no pixels through the queue)
        self.target, self._out = target, None

    def __len__(self) -> int:
        return len(self.chunks)

    def __getitem__(self, index: int):
        rows = self.chunks[index]
        values = self.split[rows.start : rows.stop][self.image_column]
        pixels, resized = [], 0
        try:
            for row, value in zip(rows, values):
                image, was_resized = decode_pixels(
                    value, row, self.image_column, self.num_channels, self.image_size, self.decoder
                )
                pixels.append(image)
                resized += was_resized
        except ValueError as err:
            return rows.start, str(err), 0
        if self.quality is not None:
            from torchvision.io import encode_jpeg  # noqa: PLC0415

            return (
                rows.start,
                [encode_jpeg(torch.from_numpy(p), quality=self.quality) for p in pixels],
                resized,
            )
        if self.target is not None:
            if self._out is None:
                self._out = np.load(self.target, mmap_mode="r+")
            self._out[rows.start : rows.stop] = np.stack(pixels)
            self._out.flush()
            return rows.start, None, resized
        return rows.start, torch.from_numpy(np.stack(pixels)), resized


def _decode_share(
    dataset, image_column, num_channels, image_size, out, workers, process, processes, target=None
):
    """Decode this process's chunks of rows (``_CHUNK_ROWS`` each, chunk ``c`` going to process ``c % processes``)
    into ``out`` `(N, C, S, S)` with ``workers`` loader workers (each writing its rows into the ``.npy`` file
    ``target`` itself, when given); returns the first error message, or ``None``."""
    starts = range(process * _CHUNK_ROWS, len(dataset), processes * _CHUNK_ROWS)
    chunks = [range(start, min(start + _CHUNK_ROWS, len(dataset))) for start in starts]
    target = target if workers > 0 else None  # without workers this process writes through ``out``
    loader = torch.utils.data.DataLoader(
        _RowChunks(dataset, image_column, num_channels, image_size, chunks, target=target),
        batch_size=None, num_workers=workers, collate_fn=_identity,
    )  # fmt: skip
    resized = 0
    for start, pixels, count in loader:
        if isinstance(pixels, str):
            return pixels
        if pixels is not None:
            out[start : start + len(pixels)] = pixels.numpy()
        resized += count
    if resized:
        logger.info(f"pixel store: resized {resized} of {len(dataset)} images to {image_size}x{image_size}")
    return None


def _build_cached(dataset, image_column, num_channels, image_size, path, workers, accelerator) -> str | None:
    """Build the store at ``path`` with every process and its workers; returns the first error, or ``None``.

    The main process creates a partial ``.npy`` beside ``path`` (``publish.atomic``'s name, so a killed run's
    partial file is cleaned up by the next), every process decodes its share of the rows into it through a memory
    map, and the main process renames it into place only when no process met an error (else removes it).
    """
    from accelerate.utils import broadcast_object_list, gather_object  # noqa: PLC0415

    process, processes = accelerator.process_index, accelerator.num_processes
    shape = (len(dataset), num_channels, image_size, image_size)
    partial = [None]
    if accelerator.is_main_process:
        prepare_cache_dir(path.parent)
        partial = [str(partial_path(path))]
        np.lib.format.open_memmap(partial[0], mode="w+", dtype=np.uint8, shape=shape).flush()
    if processes > 1:
        broadcast_object_list(partial)
    out = np.load(partial[0], mmap_mode="r+")
    error = _decode_share(
        dataset, image_column, num_channels, image_size, out, workers, process, processes, target=partial[0]
    )
    out.flush()
    del out
    errors = gather_object([error]) if processes > 1 else [error]
    error = next((message for message in errors if message), None)
    if accelerator.is_main_process:
        finish_partial(partial[0], path, keep=error is None)
    accelerator.wait_for_everyone()
    return error


def _main_process_view(path, pixels, accelerator, shape):
    """The cached store as the main process found it: every process then builds, or none does (a store written
    meanwhile by another run must not leave one process waiting for the others)."""
    from accelerate.utils import broadcast_object_list  # noqa: PLC0415

    found = [pixels is not None]
    broadcast_object_list(found)
    if found[0] and pixels is None:
        pixels = load_cached_array(path, np.uint8, shape)
    return pixels if found[0] else None


class _OneProcess:
    """The accelerator of a build that no other process shares."""

    process_index, num_processes, is_main_process = 0, 1, True

    def wait_for_everyone(self) -> None:
        pass


# The compact store's JPEG quality: FFCV's default, a few grey levels from the uint8 store (docs/data_path.md).
JPEG_QUALITY = 90


class JPEGPixels:
    """A compact store: `(N, C, S, S)` images kept as JPEG bytes, decoded when read (libjpeg-turbo through
    ``torchvision.io.decode_jpeg``, in the loader's workers). It reads like the uint8 array it replaces
    (``len``, ``shape``, ``pixels[rows]``), so :class:`~hf_recperc.images.datasets.StoredImages` serves either.

    The file is one ``.npy`` of bytes: ``N + 1`` int64 offsets, then the JPEG files back to back.
    """

    def __init__(self, path, num_channels: int, image_size: int):
        self.path, self.num_channels, self.image_size = str(path), num_channels, image_size
        self._blob = None
        self.shape = (self._count(), num_channels, image_size, image_size)

    def _count(self) -> int:
        return int(np.frombuffer(self.blob[:8].tobytes(), dtype=np.int64)[0])

    @property
    def blob(self) -> np.ndarray:
        if self._blob is None:
            self._blob = np.load(self.path, mmap_mode="r")
        return self._blob

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows) -> np.ndarray:
        from torchvision.io import ImageReadMode, decode_jpeg  # noqa: PLC0415

        rows = np.atleast_1d(np.asarray(rows, dtype=np.int64))
        header = 8 * (len(self) + 2)
        offsets = np.frombuffer(self.blob[8:header].tobytes(), dtype=np.int64)
        mode = ImageReadMode.GRAY if self.num_channels == 1 else ImageReadMode.RGB
        images = [
            decode_jpeg(
                torch.from_numpy(np.array(self.blob[header + offsets[r] : header + offsets[r + 1]])),
                mode=mode,
            )
            for r in rows.tolist()
        ]
        return torch.stack(images).numpy()

    def __getstate__(self):  # workers re-open the memory map
        return {**self.__dict__, "_blob": None}


def _write_jpeg_store(dataset, image_column, num_channels, image_size, path, workers) -> str | None:
    """Encode every image (decoded and resized as the uint8 store) as JPEG with ``workers`` loader workers and write
    :class:`JPEGPixels`' file atomically; returns the first error message, or ``None`` (nothing written)."""
    from ..publish.atomic import atomic_path  # noqa: PLC0415

    starts = range(0, len(dataset), _CHUNK_ROWS)
    chunks = [range(start, min(start + _CHUNK_ROWS, len(dataset))) for start in starts]
    loader = torch.utils.data.DataLoader(
        _RowChunks(dataset, image_column, num_channels, image_size, chunks, JPEG_QUALITY),
        batch_size=None, num_workers=workers, collate_fn=_identity,
    )  # fmt: skip
    prepare_cache_dir(path.parent)
    scratch = partial_path(path.with_suffix(".bytes"))  # the JPEGs as they come; a dead run's is cleaned up
    try:
        sizes = []
        with open(scratch, "wb") as data:
            for _, encoded, _ in loader:
                if isinstance(encoded, str):
                    return encoded
                for jpeg in encoded:
                    data.write(jpeg.numpy().tobytes())
                    sizes.append(len(jpeg))
        header = np.concatenate([[len(sizes)], np.cumsum([0, *sizes])]).astype(np.int64).view(np.uint8)
        with atomic_path(path) as partial, open(scratch, "rb") as source:
            blob = np.lib.format.open_memmap(
                partial, mode="w+", dtype=np.uint8, shape=(len(header) + sum(sizes),)
            )
            blob[: len(header)], offset = header, len(header)
            while block := source.read(1 << 24):
                blob[offset : offset + len(block)] = np.frombuffer(block, dtype=np.uint8)
                offset += len(block)
            blob.flush()
            del blob
    finally:
        scratch.unlink(missing_ok=True)
    return None


def jpeg_store(
    dataset: datasets.Dataset, image_column: str, num_channels: int, image_size: int, cache: bool = True,
    workers: int = 0, accelerator=None,
) -> tuple[JPEGPixels, str]:  # fmt: skip
    """The compact store of a split (``--store_format jpeg``): :func:`decode_uint8`'s images re-encoded as JPEG
    (quality :data:`JPEG_QUALITY`), cached beside the uint8 stores under ``jpeg/``; the main process builds it with
    its ``workers``, the other processes wait for it. Returns ``(pixels, phrase for the log)``.

    Raises:
        ValueError: ``store_format``: an in-memory data set (nothing to cache); an unreadable image, naming its row.
    """
    key = cache_key(dataset, image_column, num_channels, image_size) if cache else None
    if key is None:
        raise ValueError(
            "store_format: 'jpeg' needs a data set loaded from files (a cached store); use 'uint8'"
        )
    path = cache_file(key).parent.parent / "jpeg" / f"{key}-q{JPEG_QUALITY}.npy"
    group = accelerator or _OneProcess()
    error, where = None, f"cached at {path}"
    if group.is_main_process and not path.is_file():
        error = _write_jpeg_store(dataset, image_column, num_channels, image_size, path, workers)
        where = f"encoded by {max(workers, 1)} worker(s), cached at {path}"
    if group.num_processes > 1:
        from accelerate.utils import broadcast_object_list  # noqa: PLC0415

        message = [error]
        broadcast_object_list(message)
        error = message[0]
    group.wait_for_everyone()
    if error is not None:
        raise ValueError(error)
    return JPEGPixels(path, num_channels, image_size), where


def decode_uint8(
    dataset: datasets.Dataset,
    image_column: str,
    num_channels: int,
    image_size: int | None,
    cache: bool = True,
    cache_dir: str | None = None,
    decode_device: str = "cpu",
    workers: int = 0,
    accelerator=None,
) -> tuple[np.ndarray, str]:
    """Decode every image of a split once, to the model's channel count and size.

    With ``workers`` and an ``accelerator`` of several processes, every process decodes its share of the rows with
    its loader workers, into one cached file (docs/data_path.md); every process must then call this together.

    Args:
        dataset: a split with a PIL image column (``datasets.Image`` feature).
        image_column: its name.
        num_channels: 1 (``L``) or 3 (``RGB``).
        image_size: the side ``S`` every image is resized to (only images of another size are resized); ``None``
            keeps the images' own size, which must then be the same for all.
        cache: read and write the on-disk store (data sets loaded from files only).
        cache_dir: the cache's root (default: :func:`hf_recperc.images.decode.cache_root`).
        decode_device: ``"cuda"`` decodes the JPEGs with nvJPEG (:func:`hf_recperc.images.decode.decode_batch`).
        workers: loader worker processes that decode (0: this process decodes).
        accelerator: the run's ``Accelerator`` (processes that share the build of a cached store), or ``None``.

    Returns:
        ``(pixels, where)``: a `(N, C, S, S)` uint8 array (memory-mapped when cached) and a phrase for the log
        (``"cached at ..."``, ``"decoded, cached at ..."`` or ``"decoded in memory"``).
    """
    _check_decode_arguments(dataset, num_channels, image_size)
    key = cache_key(dataset, image_column, num_channels, image_size, decode_device) if cache else None
    path = cache_file(key, cache_dir)
    # GPU decoding (nvJPEG) stays in this process: CUDA does not survive the fork of a loader worker.
    parallel = (
        image_size is not None
        and decode_device == "cpu"
        and (workers > 0 or (accelerator is not None and accelerator.num_processes > 1))
    )
    if path is None:
        return _decode_in_memory(
            dataset, image_column, num_channels, image_size, decode_device, workers if parallel else None
        )
    shape = (len(dataset), num_channels, image_size, image_size)  # (N, C, S, S)
    pixels = load_cached_array(path, np.uint8, shape)
    if accelerator is not None and accelerator.num_processes > 1 and image_size is not None:
        pixels = _main_process_view(path, pixels, accelerator, shape)
    if pixels is not None:
        return pixels, f"cached at {path}"
    if not parallel:
        write_cached_array(path, _decode(dataset, image_column, num_channels, image_size, decode_device))
        return np.load(path, mmap_mode="r"), f"decoded, cached at {path}"
    group = accelerator or _OneProcess()
    error = _build_cached(dataset, image_column, num_channels, image_size, path, workers, group)
    if error is not None:
        raise ValueError(error)
    by = f"{group.num_processes} process(es) x {max(workers, 1)} worker(s)"
    return np.load(path, mmap_mode="r"), f"decoded by {by}, cached at {path}"


def _check_decode_arguments(dataset: datasets.Dataset, num_channels: int, image_size: int | None) -> None:
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: images convert to 1 (L) or 3 (RGB) channels, got {num_channels!r}")
    if len(dataset) == 0:
        raise ValueError("dataset: the split is empty")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 1):
        raise ValueError(f"image_size: expected a positive integer or None, got {image_size!r}")


def _decode_in_memory(dataset, image_column, num_channels, image_size, decode_device, workers: int | None):
    """A split decoded without the cache: in this process (``workers=None``), or by ``workers`` loader workers
    into one array. Returns ``(pixels, where)`` as :func:`decode_uint8`."""
    if workers is None:
        return _decode(dataset, image_column, num_channels, image_size, decode_device), "decoded in memory"
    pixels = np.empty((len(dataset), num_channels, image_size, image_size), dtype=np.uint8)
    error = _decode_share(dataset, image_column, num_channels, image_size, pixels, workers, 0, 1)
    if error is not None:
        raise ValueError(error)
    return pixels, f"decoded in memory by {workers} worker(s)"


def images_to_array(
    dataset: datasets.Dataset,
    image_column: str,
    *,
    num_channels: int | None = None,
    image_size: int | None = None,
    cache: bool = True,
    cache_dir: str | None = None,
) -> np.ndarray:
    """A split's images as one float32 array of shape `(N, C, H, W)` with values in ``[0, 1]``: the uint8 store
    (:func:`decode_uint8`, the same decode and the same cache) divided by 255.

    All images must share one size, or pass ``image_size`` to resize every image to ``image_size x image_size``.
    ``num_channels`` forces 1 (``L``) or 3 (``RGB``) channels; by default it follows the first image's mode.
    """
    if len(dataset) == 0:
        raise ValueError("dataset: the split is empty")
    if num_channels is None:
        split, decoder = undecoded(dataset, image_column)
        first = decode_image(split[0][image_column], 0, image_column, decoder)
        num_channels = 1 if first.mode in GRAY_MODES else 3
    pixels, _ = decode_uint8(dataset, image_column, num_channels, image_size, cache, cache_dir)
    return np.asarray(pixels, dtype=np.float32) / 255.0
