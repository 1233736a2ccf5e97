"""The one decode routine (hf_recperc.images.decode): every image kind decodes to PIL's pixels within the documented
tolerance (docs/design.md, "Decoding"). Its bad inputs (a damaged JPEG, --decode_device cuda without CUDA) are tested
in tests/test_bad_inputs.py.

Speed is measured by benchmarks/decode_speed.py, not asserted here.
"""

import io

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_recperc.images.decode import (
    _fast_route,
    decode_batch,
    decode_image,
    decode_pixels,
    image_to_uint8,
)

# docs/design.md, "Decoding": libjpeg-turbo / libpng through torchvision give PIL's pixels exactly; the JPEG
# draft (DCT-domain downscale) stays within these bounds of a full decode + the same resize.
EXACT = 0
DRAFT_MAX, DRAFT_MEAN = 32, 1.5


def _natural(height: int, width: int) -> Image.Image:
    """A photo-like RGB image: smooth colour fields, noise and a sharp-edged block (JPEG's hard case)."""
    rng = np.random.default_rng(height * width)
    y, x = np.mgrid[0:height, 0:width] / max(height, width)
    base = np.stack([np.sin(6 * x + 1) * 0.5 + 0.5, np.cos(5 * y) * 0.5 + 0.5, x * y], -1)
    pixels = (base * 200 + rng.normal(0, 12, (height, width, 3))).clip(0, 255).astype(np.uint8)
    pixels[height // 3 : height // 2, width // 4 : width // 2] = [250, 20, 30]
    return Image.fromarray(pixels)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _kinds(height: int = 90, width: int = 120) -> dict[str, bytes]:
    """One image of each kind a data set holds, encoded."""
    rgb = _natural(height, width)
    rotated = Image.Exif()
    rotated[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    sixteen = Image.fromarray(np.asarray(rgb.convert("L")).astype(np.uint16) * 257).convert("I;16")
    return {
        "jpeg_rgb": _encoded(rgb, "JPEG", quality=90),
        "jpeg_gray": _encoded(rgb.convert("L"), "JPEG", quality=90),
        "jpeg_cmyk": _encoded(rgb.convert("CMYK"), "JPEG", quality=90),
        "jpeg_exif_rotated": _encoded(rgb, "JPEG", quality=90, exif=rotated),
        "jpeg_progressive": _encoded(rgb, "JPEG", quality=90, progressive=True),
        "png_rgb": _encoded(rgb, "PNG"),
        "png_gray": _encoded(rgb.convert("L"), "PNG"),
        "png_palette": _encoded(rgb.convert("P"), "PNG"),
        "png_16bit": _encoded(sixteen, "PNG"),
        "png_rgba": _encoded(rgb.convert("RGBA"), "PNG"),
    }


def _reference(value, num_channels: int, image_size):
    """What the old route gave: ``datasets.Image`` decode (EXIF applied), ``convert``, torchvision's resize."""
    return image_to_uint8(decode_image(value, 0, "image"), num_channels, image_size)[0]


@pytest.mark.parametrize("kind", sorted(_kinds()))
@pytest.mark.parametrize("num_channels", [3, 1])
@pytest.mark.parametrize("image_size", [None, 64, 200])
def test_every_image_kind_decodes_to_pils_pixels(kind, num_channels, image_size):
    """Fast decode: each kind (JPEG RGB / grayscale / CMYK / EXIF-rotated / progressive, PNG RGB / grayscale /
    palette / 16-bit / RGBA) gives PIL's ``convert`` + resize pixels exactly when no draft applies."""
    value = {"bytes": _kinds()[kind], "path": None}
    pixels, _ = decode_pixels(value, 0, "image", num_channels, image_size)
    expected = _reference(value, num_channels, image_size)
    assert pixels.dtype == np.uint8 and pixels.shape == expected.shape
    assert np.abs(pixels.astype(int) - expected.astype(int)).max() <= EXACT


def test_the_fast_routes_are_taken_where_they_apply():
    """Fast decode: libjpeg-turbo/libpng for RGB and grayscale JPEG/PNG, PIL for CMYK, palette and 16-bit, and the
    draft only when the image is at least twice the target on both sides (else the test above proves nothing)."""
    kinds = _kinds()
    routes = {kind: _fast_route(data, 3, 64) for kind, data in kinds.items()}
    assert routes == {
        "jpeg_rgb": "libjpeg",
        "jpeg_gray": "libjpeg",
        "jpeg_cmyk": None,
        "jpeg_exif_rotated": "libjpeg",
        "jpeg_progressive": "libjpeg",
        "png_rgb": "libjpeg",
        "png_gray": "libjpeg",
        "png_palette": None,
        "png_16bit": None,
        "png_rgba": "libjpeg",
    }
    assert _fast_route(kinds["jpeg_rgb"], 1, 64) is None  # RGB -> L: PIL's own luma weights
    assert _fast_route(kinds["jpeg_rgb"], 3, 45) == "draft"  # 90 x 120 is 2x 45 on both sides


@pytest.mark.parametrize("kind", ["jpeg_rgb", "jpeg_gray", "jpeg_exif_rotated", "jpeg_progressive"])
@pytest.mark.parametrize("image_size", [64, 96, 160])
def test_the_jpeg_draft_stays_within_the_documented_tolerance(kind, image_size):
    """Fast decode: a JPEG at least 2x the target is decoded at a reduced DCT scale; its pixels stay within
    docs/design.md's bound of the full decode + resize (max and mean absolute difference, uint8)."""
    data = _kinds(375, 500)[kind]
    assert _fast_route(data, 3, image_size) == "draft"
    value = {"bytes": data, "path": None}
    pixels, resized = decode_pixels(value, 0, "image", 3, image_size)
    difference = np.abs(pixels.astype(int) - _reference(value, 3, image_size).astype(int))
    assert resized and pixels.shape == (3, image_size, image_size)
    assert difference.max() <= DRAFT_MAX and difference.mean() <= DRAFT_MEAN


def test_a_stored_file_path_decodes_like_embedded_bytes(tmp_path):
    """Fast decode: an image column holding file paths (imagefolder) takes the same route as embedded bytes."""
    data = _kinds()["jpeg_rgb"]
    (tmp_path / "a.jpg").write_bytes(data)
    from_path = decode_pixels({"bytes": None, "path": str(tmp_path / "a.jpg")}, 0, "image", 3, 64)[0]
    np.testing.assert_array_equal(
        from_path, decode_pixels({"bytes": data, "path": None}, 0, "image", 3, 64)[0]
    )


def test_the_store_of_a_png_data_set_is_unchanged(tmp_path):
    """Exactness: a PNG data set (CIFAR-10, digits are stored as PNG) gives the same uint8 store through the fast
    route as through PIL, so training on it is bit-identical to before."""
    from hf_recperc.images import decode_uint8

    images = [_natural(32, 32) for _ in range(3)] + [_natural(40, 36).convert("L")]
    split = datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()})
    )
    pixels, _ = decode_uint8(split, "image", 3, 32, cache=False)
    expected = np.stack([image_to_uint8(image, 3, 32)[0] for image in images])
    np.testing.assert_array_equal(pixels, expected)


def test_decode_batch_on_the_cpu_is_decode_pixels():
    """decode_batch (the store's loop, nvJPEG-capable) gives decode_pixels' pixels image by image on the CPU."""
    values = [{"bytes": data, "path": None} for data in _kinds().values()]
    batch = decode_batch(values, range(len(values)), "image", 3, 48)
    for row, (value, (pixels, _)) in enumerate(zip(values, batch)):
        np.testing.assert_array_equal(pixels, decode_pixels(value, row, "image", 3, 48)[0])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (nvJPEG)")
def test_nvjpeg_decodes_close_to_libjpeg():
    """GPU decode: nvJPEG batches stay within the draft's bound of the CPU route (run where a GPU is lent)."""
    values = [{"bytes": data, "path": None} for data in _kinds(375, 500).values()]
    on_gpu = decode_batch(values, range(len(values)), "image", 3, 224, device="cuda")
    for value, (pixels, _) in zip(values, on_gpu):
        difference = np.abs(pixels.astype(int) - decode_pixels(value, 0, "image", 3, 224)[0].astype(int))
        assert difference.max() <= DRAFT_MAX and difference.mean() <= DRAFT_MEAN
