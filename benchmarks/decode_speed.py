"""Decode rate of :func:`hf_recperc.images.decode.decode_pixels` against the PIL path it replaced.

Makes an ImageNet-like set in memory (JPEG photos-like mosaics around 500 x 375, quality 90), then decodes every
image to a `(3, S, S)` uint8 array, one thread, interleaving the two routes over ``--repeats`` rounds:

* ``pil``: ``datasets.Image().decode_example`` + ``convert("RGB")`` + torchvision's antialiased resize (the old
  ``pixel_store.image_to_uint8`` path, still the fallback of :func:`decode_pixels`);
* ``new``: :func:`decode_pixels` (libjpeg-turbo through ``torchvision.io``, the JPEG draft when ``S`` is at most
  half the image's sides; docs/design.md, "Decoding").

Prints images/s of each and the ratio last. Usage::

    OMP_NUM_THREADS=1 python benchmarks/decode_speed.py --sizes 224 112 --count 200
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch


def imagenet_like(count: int, seed: int = 0) -> list[bytes]:
    """``count`` JPEG images (quality 90) of 440-560 x 330-420 px: smooth colour fields, noise and sharp blocks."""
    from PIL import Image  # noqa: PLC0415

    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        height, width = int(rng.integers(330, 421)), int(rng.integers(440, 561))
        y, x = np.mgrid[0:height, 0:width] / max(height, width)
        phase = rng.uniform(0, 6, 3)
        base = np.stack(
            [np.sin(7 * x + phase[0]), np.cos(5 * y + phase[1]), np.sin(4 * (x + y) + phase[2])], -1
        )
        pixels = (base * 90 + 128 + rng.normal(0, 10, (height, width, 3))).clip(0, 255).astype(np.uint8)
        for _ in range(6):
            top, left = int(rng.integers(0, height - 40)), int(rng.integers(0, width - 40))
            pixels[top : top + 40, left : left + 40] = rng.integers(0, 256, 3)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(buffer.getvalue())
    return images


def pil_route(values, size: int) -> None:
    from hf_recperc.images.decode import decode_image, image_to_uint8  # noqa: PLC0415

    for row, value in enumerate(values):
        image_to_uint8(decode_image(value, row, "image"), 3, size)


def new_route(values, size: int) -> None:
    from hf_recperc.images.decode import decode_pixels  # noqa: PLC0415

    for row, value in enumerate(values):
        decode_pixels(value, row, "image", 3, size)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="images in the set")
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 112], help="target sides S")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds (the best is kept)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    values = [{"bytes": data, "path": None} for data in imagenet_like(args.count)]
    ratios = []
    for size in args.sizes:
        best = {"pil": float("inf"), "new": float("inf")}
        for _ in range(args.repeats):
            for name, route in (("pil", pil_route), ("new", new_route)):
                start = time.perf_counter()
                route(values, size)
                best[name] = min(best[name], time.perf_counter() - start)
        rates = {name: args.count / seconds for name, seconds in best.items()}
        print(f"S={size}: PIL path {rates['pil']:.0f} images/s, decode_pixels {rates['new']:.0f} images/s")
        ratios.append((size, rates["new"] / rates["pil"]))
    for size, ratio in ratios:
        print(f"ratio decode_pixels / PIL path at S={size}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
