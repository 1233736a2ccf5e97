"""Normalisation and random augmentation of image batches, batched on the batch's device.

Random augmentation is never drawn per image: a batch's draws come at once from an explicit generator (the training
step's, seeded by micro-batch; on a CPU training device the loader worker making the batch seeds the same one), so
that a run resumed from a checkpoint replays exactly the same crops and flips whatever the number of data-loader
workers (docs/design.md, "Data flow"; docs/data_path.md).

* :func:`normalise_uint8`: the image processor's rescale + normalise of stored uint8 batches;
* :func:`round_to_uint8`: resampled pixels back to uint8 (the training augmentation's output on uint8 paths);
* :func:`random_crop_flip`: the CIFAR recipe (pad, crop, flip);
* :func:`random_resized_crop_flip`: MAE's ``RandomResizedCrop`` + flip;
* :func:`paper_preprocessing`: docs/science.md section 2's per-image normalisation of pixel arrays.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "normalise_uint8",
    "round_to_uint8",
    "random_crop_flip",
    "random_resized_crop_flip",
    "paper_preprocessing",
]


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


def round_to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """Resampled grey levels (float, in ``[0, 255]`` up to resampling overshoot) -> the nearest uint8, clamped.

    The reference pipelines resample uint8 images with PIL (``RandomResizedCrop``, ``Resize``), which rounds to
    uint8 before ``ToTensor``/``Normalize``; the training augmentation does the same on uint8 batches.

    Args:
        pixels (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`).

    Returns:
        `torch.ByteTensor` of the same shape.
    """
    return pixels.round().clamp_(0, 255).to(torch.uint8)


def random_resized_crop_flip(
    pixel_values: torch.Tensor,
    *,
    size: int | None = None,
    scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """``RandomResizedCrop`` + horizontal flip (MAE's training augmentation), batched, one draw per image.

    Each image gets a box of ``w x h`` whole pixels (torchvision's): area ``a * H * W`` with ``a ~ U(scale)``,
    aspect ratio ``w / h`` log-uniform in ``ratio``, at a uniform position, resized to ``size x size`` by bilinear
    interpolation (``align_corners=False``) and mirrored left-right with probability 1/2 when ``flip``. Unlike
    torchvision's rejection loop (10 tries, then a centre crop), a box that does not fit is shrunk to fit: the same
    distribution wherever the box fits, with no rejection loop.

    On the CPU each crop is resized on its own (``interpolate``, antialiased; uint8 stays uint8, rounded as PIL
    does): small per-image work that stays in cache, 4-5x faster than sampling the whole batch in float. On
    accelerators the same resize runs for the whole batch as two batched matrix products (no host sync); the two
    agree within float rounding (a grey level on uint8, whose CPU resize computes in fixed point).

    Args:
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): float or uint8 images.
        size: the output's side (default: the input's height and width).
        scale, ratio: as torchvision's ``RandomResizedCrop``.
        flip: mirror left-right with probability 1/2.
        generator: source of randomness, on ``pixel_values``' device.

    Returns:
        `torch.Tensor` of shape `(batch_size, num_channels, size, size)` (`(..., height, width)` without ``size``),
        of ``pixel_values``' dtype.
    """
    if pixel_values.ndim != 4:
        raise ValueError(f"pixel_values: expected (B, C, H, W), got {tuple(pixel_values.shape)}")
    if not (0 < scale[0] <= scale[1] <= 1) or not (0 < ratio[0] <= ratio[1]):
        raise ValueError(f"scale {scale} / ratio {ratio}: expected 0 < lo <= hi (<= 1 for scale)")
    size = tuple(pixel_values.shape[-2:]) if size is None else (size, size)  # (rows, columns)
    boxes, mirrored = crop_boxes(pixel_values, scale=scale, ratio=ratio, flip=flip, generator=generator)
    if pixel_values.device.type == "cpu":
        return _resize_crops(pixel_values, boxes, mirrored, size)
    return _sample_crops(pixel_values, boxes, mirrored, size)


def crop_boxes(
    pixel_values: torch.Tensor,
    *,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    flip: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The boxes of :func:`random_resized_crop_flip`: five uniform draws per image, on the batch's device.

    Returns:
        ``boxes`` `(B, 4)` int64 ``(top, left, height, width)`` in pixels, inside the image; ``mirrored`` `(B,)` bool.
    """
    batch, _, height, width = pixel_values.shape
    draws = torch.rand(
        batch, 5, generator=generator, device=pixel_values.device, dtype=torch.float32
    )  # (B, 5)
    area = (scale[0] + (scale[1] - scale[0]) * draws[:, 0]) * (height * width)
    log_ratio = math.log(ratio[0]) + (math.log(ratio[1]) - math.log(ratio[0])) * draws[:, 1]
    aspect = torch.exp(log_ratio)  # width / height of the box
    box_w = torch.round(torch.sqrt(area * aspect)).clamp(1, width)
    box_h = torch.round(torch.sqrt(area / aspect)).clamp(1, height)
    top = torch.minimum(torch.floor(draws[:, 2] * (height - box_h + 1)), height - box_h)
    left = torch.minimum(torch.floor(draws[:, 3] * (width - box_w + 1)), width - box_w)
    mirrored = draws[:, 4] < 0.5 if flip else torch.zeros(batch, dtype=torch.bool, device=draws.device)
    return torch.stack([top, left, box_h, box_w], dim=1).long(), mirrored


def _resize_crops(
    pixel_values: torch.Tensor, boxes: torch.Tensor, mirrored: torch.Tensor, size: tuple[int, int]
):
    """CPU: a slice and an antialiased bilinear resize per image (uint8 in, uint8 out: torch's fast path)."""
    # torch has no antialiased resize in half precision on the CPU.
    if pixel_values.dtype in (torch.float16, torch.bfloat16):
        return _resize_crops(pixel_values.float(), boxes, mirrored, size).to(pixel_values.dtype)
    out = new_batch(pixel_values, (pixel_values.shape[0], pixel_values.shape[1], *size))
    for i, ((top, left, height, width), flipped) in enumerate(zip(boxes.tolist(), mirrored.tolist())):
        crop = pixel_values[i : i + 1, :, top : top + height, left : left + width]
        resized = torch.nn.functional.interpolate(
            crop, size=size, mode="bilinear", antialias=True, align_corners=False
        )[0]
        out[i] = resized.flip(-1) if flipped else resized
    return out


def new_batch(like: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """An uninitialised tensor of ``like``'s dtype and device for an augmented batch; in shared memory inside a
    loader worker, as torch's ``default_collate`` allocates its batches there, so that handing the batch to the
    main process does not copy it (measured with ``benchmarks/data_path.py``'s CPU lines, batches of 32 at 224 px:
    the stream's workers 45.3-45.9 ms per batch against 46.0-46.5 ms, the store's 9.0-9.1 against 9.3-9.6)."""
    if like.device.type != "cpu" or torch.utils.data.get_worker_info() is None:
        return like.new_empty(shape)
    storage = torch.UntypedStorage._new_shared(math.prod(shape) * like.element_size())
    return like.new_empty(0).set_(storage).view(shape)


def _sample_crops(
    pixel_values: torch.Tensor, boxes: torch.Tensor, mirrored: torch.Tensor, size: tuple[int, int]
):
    """Accelerators: the CPU route's antialiased bilinear resize for the whole batch at once, as two batched matrix
    products with each crop's row and column weights (:func:`_resize_weights`), no host sync; in float, uint8 is
    rounded back. `(B, C, H, W)` -> `(B, C, rows, columns)`."""
    _, _, height, width = pixel_values.shape
    boxes = boxes.to(torch.float32)
    rows = _resize_weights(boxes[:, 0], boxes[:, 2], height, size[0])  # (B, rows, H)
    columns = _resize_weights(boxes[:, 1], boxes[:, 3], width, size[1])  # (B, columns, W)
    columns = torch.where(mirrored[:, None, None], columns.flip(1), columns)
    resized = rows[:, None] @ pixel_values.float() @ columns[:, None].transpose(-1, -2)
    return round_to_uint8(resized) if pixel_values.dtype == torch.uint8 else resized.to(pixel_values.dtype)


def _resize_weights(start: torch.Tensor, extent: torch.Tensor, side: int, samples: int) -> torch.Tensor:
    """`(B, samples, side)` weights of torch's antialiased bilinear ``interpolate`` (``align_corners=False``) of each
    box ``[start, start + extent)`` `(B,)` of an axis of ``side`` pixels to ``samples`` pixels: a triangle filter as
    wide as one output pixel when shrinking (one input pixel when enlarging), cut to the box and each row summing to
    1, zero outside the box; the same windows as torch's CPU kernel."""
    scale = extent / samples  # (B,) input pixels per output pixel
    support = scale.clamp(min=1.0)
    steps = torch.arange(samples, device=start.device, dtype=torch.float32) + 0.5  # (S,)
    centre = scale[:, None] * steps  # (B, S), in box coordinates
    low = torch.floor(centre - support[:, None] + 0.5).clamp(min=0)
    high = torch.minimum(torch.floor(centre + support[:, None] + 0.5), extent[:, None])
    # (B, side): every pixel of the axis in box coordinates.
    pixel = torch.arange(side, device=start.device, dtype=torch.float32) - start[:, None]
    offset = (pixel[:, None, :] - centre[..., None] + 0.5) / support[:, None, None]  # (B, S, side)
    inside = (pixel[:, None, :] >= low[..., None]) & (pixel[:, None, :] < high[..., None])
    weights = (1 - offset.abs()).clamp(min=0) * inside
    return weights / weights.sum(-1, keepdim=True)


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
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): images, float or
            uint8 (crops and flips only move pixels).
        padding: pixels of padding per side; 0 disables cropping.
        flip: whether to flip half of the images horizontally.
        generator: source of randomness (default: torch's global generator).
        padding_mode: ``"reflect"`` or ``"zeros"``.

    Returns:
        A tensor of the same shape and dtype, on the batch's device.
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
