"""Images decoded once into a compact uint8 store, and the batched, on-device transforms that read it.

The training loop's fast data path (``--pixel_store``, the default). Decoding a PNG/JPEG with PIL and running the
image processor per batch costs more than a small model's step on a CPU (issue 11: ~30 ms per batch of 64 CIFAR
images); it also repeats every epoch. Here each image is decoded once into a `(N, C, S, S)` uint8 array, written as
``.npy`` beside the experiments' float pixel cache (``~/.cache/hf_recperc/uint8/``, or ``HF_RECPERC_CACHE``) and
memory-mapped by every later run; what remains per batch (to float, normalise, augment) runs batched on the training
device.

The values are those of the model's image processor (a transformers ``ViTImageProcessor``, torchvision backend),
to float tolerance: it converts each image to a uint8 tensor, resizes it to ``S x S`` with torchvision's antialiased
bilinear resize (a uint8 result), and normalises with ``(x - 255 * mean) / (255 * std)``. We run the same resize on
the same uint8 tensor once at decode time, so images of mixed sizes are handled too, and :func:`normalise_uint8`
does the same arithmetic on the device.
"""

from __future__ import annotations

import hashlib
import logging

import datasets
import numpy as np
import torch
from PIL import Image

from .data import _undecoded, cache_root, decode_image, load_cached_array
from .processing import image_mode
from .publish.atomic import prepare_cache_dir, save_npy

__all__ = [
    "decode_uint8",
    "image_to_uint8",
    "store_key",
    "normalise_uint8",
    "random_resized_crop_flip",
]

logger = logging.getLogger(__name__)
_STORE_VERSION = "v1"  # bump when the stored values change


def store_key(dataset: datasets.Dataset, image_column: str, num_channels: int, image_size: int) -> str | None:
    """A key for the decoded store of ``dataset``: its fingerprint (which ``select``/``map`` update
    deterministically) and how it is decoded; ``None`` for in-memory data sets, whose fingerprint is random per
    process (nothing to reuse across runs)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is None or not dataset.cache_files:
        return None
    text = f"{fingerprint}:{image_column}:{num_channels}:{image_size}:{_STORE_VERSION}"
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _resize_uint8(pixels: torch.Tensor, size: int) -> torch.Tensor:
    """`(C, h, w)` uint8 -> `(C, size, size)` uint8 with the image processor's resize (torchvision, bilinear,
    antialiased)."""
    from torchvision.transforms.v2 import functional as tvF  # noqa: PLC0415  (only for resized images)

    return tvF.resize(pixels, [size, size], interpolation=tvF.InterpolationMode.BILINEAR, antialias=True)


def image_to_uint8(image, num_channels: int, image_size: int) -> tuple[np.ndarray, bool]:
    """One decoded image (PIL, from :func:`hf_recperc.data.decode_image`, which names an unreadable file's row) ->
    `(C, S, S)` uint8, and whether it had to be resized."""
    mode = image_mode(num_channels) or "RGB"  # the saved image processor converts the same way
    pixels = np.asarray(image.convert(mode) if isinstance(image, Image.Image) else image, dtype=np.uint8)
    pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)  # (C, h, w)
    if pixels.shape[1:] == (image_size, image_size):
        return pixels, False
    return _resize_uint8(torch.from_numpy(np.ascontiguousarray(pixels)), image_size).numpy(), True


def _decode(dataset: datasets.Dataset, image_column: str, num_channels: int, image_size: int) -> np.ndarray:
    array = np.empty((len(dataset), num_channels, image_size, image_size), dtype=np.uint8)
    resized = 0
    # Decoded row by row by us: a corrupt file fails naming its row and file (data.decode_image).
    undecoded, decoder = _undecoded(dataset, image_column)
    for start in range(0, len(dataset), 1024):
        for offset, value in enumerate(undecoded[start : start + 1024][image_column]):
            image = decode_image(value, start + offset, image_column, decoder)
            array[start + offset], was_resized = image_to_uint8(image, num_channels, image_size)
            resized += was_resized
    if resized:
        logger.info(f"pixel store: resized {resized} of {len(dataset)} images to {image_size}x{image_size}")
    return array


def decode_uint8(
    dataset: datasets.Dataset, image_column: str, num_channels: int, image_size: int, cache: bool = True
) -> tuple[np.ndarray, str]:
    """Decode every image of a split once, to the model's channel count and size.

    Args:
        dataset: a split with a PIL image column (``datasets.Image`` feature).
        image_column: its name.
        num_channels: 1 (``L``) or 3 (``RGB``).
        image_size: the side ``S`` every image is resized to (only images of another size are resized).
        cache: read and write the on-disk store (data sets loaded from files only).

    Returns:
        ``(pixels, where)``: a `(N, C, S, S)` uint8 array (memory-mapped when cached) and a phrase for the log
        (``"cached at ..."``, ``"decoded, cached at ..."`` or ``"decoded in memory"``).
    """
    if num_channels not in (1, 3):
        raise ValueError(f"num_channels: images convert to 1 (L) or 3 (RGB) channels, got {num_channels!r}")
    key = store_key(dataset, image_column, num_channels, image_size) if cache else None
    if key is None:
        return _decode(dataset, image_column, num_channels, image_size), "decoded in memory"
    path = cache_root() / "uint8" / f"{key}.npy"
    pixels = load_cached_array(path, np.uint8, (len(dataset), num_channels, image_size, image_size))
    if pixels is not None:
        return pixels, f"cached at {path}"
    pixels = _decode(dataset, image_column, num_channels, image_size)
    prepare_cache_dir(path.parent)
    save_npy(path, pixels)  # atomic: a concurrent reader never sees half a file
    return np.load(path, mmap_mode="r"), f"decoded, cached at {path}"


def normalise_uint8(pixels: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """The image processor's fused rescale + normalise on a batch, on its device.

    Args:
        pixels (`torch.ByteTensor` of shape `(batch_size, num_channels, height, width)`): stored images.
        mean, std (`torch.FloatTensor` of shape `(num_channels,)`): ``255 * image_mean`` and ``255 * image_std``
            (the processor folds the 1/255 rescale into them), on the same device.

    Returns:
        `torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`.
    """
    # In place on the one float copy: the same arithmetic as (x - mean) / std, without two more temporaries.
    return pixels.float().sub_(mean[:, None, None]).div_(std[:, None, None])


def random_resized_crop_flip(
    pixel_values: torch.Tensor,
    *,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``RandomResizedCrop`` + horizontal flip (MAE's training augmentation), batched, one draw per image.

    Each image gets a box of area ``a * H * W`` with ``a ~ U(scale)`` and aspect ratio ``r`` log-uniform in
    ``ratio``, at a uniform position, resized back to ``H x W`` by bilinear sampling (``grid_sample``). Unlike
    torchvision's rejection loop (10 tries, then a centre crop), a box that does not fit is shrunk to fit: the
    same distribution wherever the box fits, with no per-image Python loop.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`).
        scale, ratio: as torchvision's ``RandomResizedCrop``.
        flip: mirror left-right with probability 1/2.
        generator: source of randomness, on ``pixel_values``' device.

    Returns:
        `torch.FloatTensor` of the same shape.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values: expected (B, C, H, W), got {tuple(pixel_values.shape)}")
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"scale {scale} / ratio {ratio}: expected 0 < lo <= hi (<= 1 for scale)")
    batch, _, height, width = pixel_values.shape
    device, dtype = pixel_values.device, pixel_values.dtype
    draws = torch.rand(batch, 5, generator=generator, device=device, dtype=torch.float32)  # (B, 5)
    area = scale[0] + (scale[1] - scale[0]) * draws[:, 0]
    log_ratio = np.log(ratio[0]) + (np.log(ratio[1]) - np.log(ratio[0])) * draws[:, 1]
    aspect = torch.exp(log_ratio)  # width / height of the box, in pixels
    box_w = torch.sqrt(area * aspect * width / height).clamp(max=1.0)  # fractions of the image's side
    box_h = torch.sqrt(area / aspect * height / width).clamp(max=1.0)
    centre_x = (2 * draws[:, 2] - 1) * (1 - box_w)  # in [-1, 1] coordinates, the box stays inside
    centre_y = (2 * draws[:, 3] - 1) * (1 - box_h)
    sign = torch.where(draws[:, 4] < 0.5, -1.0, 1.0) if flip else torch.ones_like(box_w)
    theta = torch.zeros(batch, 2, 3, device=device, dtype=torch.float32)
    theta[:, 0, 0], theta[:, 0, 2] = box_w * sign, centre_x
    theta[:, 1, 1], theta[:, 1, 2] = box_h, centre_y
    grid = torch.nn.functional.affine_grid(theta, [batch, 1, height, width], align_corners=False)
    sampled = torch.nn.functional.grid_sample(
        pixel_values.float(), grid, mode="bilinear", padding_mode="border", align_corners=False
    )
    return sampled.to(dtype)
