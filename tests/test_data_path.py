"""The training data path: the uint8 store + on-device normalisation reproduces the image processor."""

import logging
import os
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
from conftest import CIFAR10
from PIL import Image

from hf_recperc import RecPercAEConfig
from hf_recperc.images import (
    decode_uint8,
    load_image_dataset,
    normalise_uint8,
    processor_transform,
    random_resized_crop_flip,
)
from hf_recperc.images.datasets import StoredImages, collate_stored
from hf_recperc.images.pipeline import DevicePipeline, build_datasets
from hf_recperc.processing import image_processor_for


def processor_pixels(split, image_column, config):
    """What the per-image path (the saved image processor) feeds the model: `(N, C, S, S)`."""
    transform = processor_transform(image_processor_for(config), image_column, "label", config.num_channels)
    return transform({image_column: split[image_column], "label": split["label"]})["pixel_values"]


def store_pixels(split, image_column, config, cache=False):
    pixels, _ = decode_uint8(split, image_column, config.num_channels, config.image_size, cache=cache)
    mean = torch.tensor(config.image_mean) * 255.0
    std = torch.tensor(config.image_std) * 255.0
    return normalise_uint8(torch.from_numpy(np.asarray(pixels)), mean, std)


def test_store_matches_the_image_processor_on_digits():
    data = load_image_dataset("digits")
    split = data.train.select(range(300))
    config = RecPercAEConfig.preset("digits-mlp")
    expected = processor_pixels(split, data.image_column, config)
    assert expected.shape == (300, 1, 8, 8)
    torch.testing.assert_close(store_pixels(split, data.image_column, config), expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("image_size", [32, 48, 24])  # as stored, upsampled, downsampled (antialiased)
def test_store_matches_the_image_processor_on_cifar(image_size):
    if not CIFAR10.exists():
        pytest.skip("CIFAR-10 parquet files not found")
    data = load_image_dataset(str(CIFAR10), max_train_samples=200, max_eval_samples=100)
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=image_size)
    expected = processor_pixels(data.train, data.image_column, config)
    got = store_pixels(data.train, data.image_column, config)
    # A resize rounds to uint8 in both paths; the same torchvision kernel gives the same bytes.
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def test_images_of_mixed_sizes_are_resized_once_like_the_processor():
    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((16, 16), (20, 12))
    ]
    split = datasets.Dataset.from_dict(
        {"image": images, "label": [0, 1]},
        features=datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")}),
    )
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=16, num_labels=2)
    expected = processor_pixels(split, "image", config)
    torch.testing.assert_close(store_pixels(split, "image", config), expected, atol=1e-5, rtol=0)


def test_the_store_is_cached_and_reused(tmp_path, monkeypatch):
    if not CIFAR10.exists():
        pytest.skip("CIFAR-10 parquet files not found")
    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path))
    data = load_image_dataset(str(CIFAR10), max_train_samples=100, max_eval_samples=100)
    first, where = decode_uint8(data.train, data.image_column, 3, 32)
    assert (
        where.startswith("decoded, cached at") and first.dtype == np.uint8 and first.shape == (100, 3, 32, 32)
    )
    again, where = decode_uint8(data.train, data.image_column, 3, 32)
    assert where.startswith("cached at") and isinstance(again, np.memmap)
    np.testing.assert_array_equal(first, again)
    other, where = decode_uint8(data.train.select(range(50)), data.image_column, 3, 32)
    assert where.startswith("decoded")  # another subset is another store
    np.testing.assert_array_equal(other, first[:50])


def test_stored_images_batches_through_a_loader_with_workers_and_subsets():
    pixels = np.arange(6 * 1 * 2 * 2, dtype=np.uint8).reshape(6, 1, 2, 2)
    dataset = StoredImages(pixels, np.arange(6))
    subset = torch.utils.data.Subset(dataset, [5, 1, 3])
    loader = torch.utils.data.DataLoader(subset, batch_size=2, collate_fn=collate_stored, num_workers=1)
    batches = list(loader)
    assert [b["labels"].tolist() for b in batches] == [[5, 1], [3]]
    assert torch.equal(batches[0]["pixels"][0], torch.from_numpy(pixels[5]))


def test_both_paths_give_the_same_loader_batches():
    data = load_image_dataset("digits", max_train_samples=64, max_eval_samples=64)
    config = RecPercAEConfig.preset("digits-mlp")
    processor = image_processor_for(config)
    pipeline = DevicePipeline(config, "cpu")
    batches = []
    for use_store in (True, False):
        train, _, description = build_datasets(data, config, processor, use_store)
        assert ("uint8" in description) == use_store
        loader = torch.utils.data.DataLoader(train, batch_size=32, collate_fn=collate_stored)
        batches.append(pipeline.evaluation(next(iter(loader))))
    torch.testing.assert_close(batches[0]["pixel_values"], batches[1]["pixel_values"], atol=1e-5, rtol=0)
    assert torch.equal(batches[0]["labels"], batches[1]["labels"])


def test_random_resized_crop_full_box_without_flip_is_identity():
    images = torch.randn(3, 3, 8, 8)
    same = random_resized_crop_flip(images, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    torch.testing.assert_close(same, images, atol=1e-5, rtol=0)
    wide = torch.randn(3, 3, 8, 10)  # without a size, the output keeps the input's height and width
    same = random_resized_crop_flip(wide, scale=(1.0, 1.0), ratio=(1.25, 1.25), flip=False)
    torch.testing.assert_close(same, wide, atol=1e-5, rtol=0)


def test_random_resized_crop_is_reproducible_random_and_flips():
    images = torch.randn(16, 3, 8, 8)

    def draw(seed, **kw):
        return random_resized_crop_flip(images, generator=torch.Generator().manual_seed(seed), **kw)

    assert torch.equal(draw(0), draw(0)) and not torch.equal(draw(0), draw(1))
    assert draw(0).shape == images.shape
    flipped = draw(0, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=True)
    is_flipped = [torch.allclose(f, i.flip(-1), atol=1e-5) for f, i in zip(flipped, images)]
    is_same = [torch.allclose(f, i, atol=1e-5) for f, i in zip(flipped, images)]
    assert all(a or b for a, b in zip(is_flipped, is_same)) and 0 < sum(is_flipped) < 16
    with pytest.raises(ValueError, match="scale"):
        random_resized_crop_flip(images, scale=(0.0, 1.0))


def test_random_resized_crop_is_torchvisions_resized_crop_of_its_boxes():
    """Each output is torchvision's ``resized_crop`` (bilinear, antialiased) of a whole-pixel box inside the image,
    uint8 in and out, then mirrored or not; boxes hold their drawn area and aspect ratio (arXiv 2402.11337, section
    5 trains MAE with this augmentation; docs/data_path.md)."""
    from torchvision.transforms.v2 import functional as tvf

    from hf_recperc.images.augment import crop_boxes

    images = torch.randint(0, 256, (64, 3, 40, 48), dtype=torch.uint8)
    options = {"scale": (0.2, 1.0), "ratio": (3 / 4, 4 / 3), "flip": True}
    out = random_resized_crop_flip(images, size=24, generator=torch.Generator().manual_seed(3), **options)
    boxes, mirrored = crop_boxes(images, generator=torch.Generator().manual_seed(3), **options)
    assert out.shape == (64, 3, 24, 24) and out.dtype == torch.uint8
    assert 0 < int(mirrored.sum()) < 64
    for image, crop, (top, left, height, width), flipped in zip(
        images, out, boxes.tolist(), mirrored.tolist()
    ):
        assert 0 <= top and top + height <= 40 and 0 <= left and left + width <= 48
        expected = tvf.resized_crop(image, top, left, height, width, [24, 24], antialias=True)
        assert torch.equal(crop, expected.flip(-1) if flipped else expected)
    area = (boxes[:, 2] * boxes[:, 3]).float() / (40 * 48)
    fits = (boxes[:, 2] < 40) & (boxes[:, 3] < 48)  # boxes shrunk to fit keep neither area nor ratio
    assert area.min() > 0.18 and area.max() <= 1.0 and fits.sum() > 40
    aspect = boxes[fits, 3].float() / boxes[fits, 2].float()
    assert aspect.min() > 0.7 and aspect.max() < 1.45


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("store, scale", [(30, (0.1, 1.0)), (48, (0.5, 1.0))], ids=["enlarging", "shrinking"])
def test_random_resized_crop_on_accelerators_is_the_cpu_resize(dtype, store, scale):
    """The accelerator route (two batched matrix products, no host sync) gives the CPU route's crops, enlarged or
    shrunk (a store kept larger than the model) with the same antialiased bilinear filter: to float rounding, and
    within a grey level on uint8 (torch's CPU resize of uint8 computes in fixed point)."""
    from hf_recperc.images.augment import _resize_crops, _sample_crops, crop_boxes

    images = torch.randint(0, 256, (32, 3, store, store - 2), dtype=torch.uint8).to(dtype)
    boxes, mirrored = crop_boxes(
        images, scale=scale, ratio=(3 / 4, 4 / 3), flip=True, generator=torch.Generator().manual_seed(0)
    )
    size = (32, 34) if store == 30 else (24, 20)
    assert ((boxes[:, 2] < size[0]) if store == 30 else (boxes[:, 2] > size[0])).all()
    cpu, accelerator = (
        _resize_crops(images, boxes, mirrored, size),
        _sample_crops(images, boxes, mirrored, size),
    )
    assert accelerator.dtype == cpu.dtype == dtype and accelerator.shape == (32, 3, *size)
    tolerance = {torch.uint8: 1.0, torch.float32: 1e-3, torch.bfloat16: 2.0}[dtype]  # grey levels
    assert (cpu.float() - accelerator.float()).abs().max() <= tolerance


class _AugmentInWorker(torch.utils.data.Dataset):
    """Augments one fixed batch (seeded by the index) and says whether the result was made in shared memory."""

    images = torch.randint(
        0, 256, (4, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )

    def __len__(self):
        return 2

    def __getitem__(self, index):
        out = random_resized_crop_flip(self.images, size=12, generator=torch.Generator().manual_seed(index))
        return out.clone(), out.is_shared()


def test_augmented_batches_are_made_in_shared_memory_inside_loader_workers():
    """A worker's augmented batch is allocated where the hand-over to the main process reads it (no copy), and
    equals the main process's."""
    in_main = [_AugmentInWorker()[index] for index in range(2)]
    loader = torch.utils.data.DataLoader(_AugmentInWorker(), batch_size=None, num_workers=1)
    for (pixels, shared), (expected, shared_in_main) in zip(loader, in_main):
        assert shared and not shared_in_main
        assert torch.equal(pixels, expected)


def _parquet_split(path, rows=12, corrupt_row=None):
    """A file-backed split (so its decoded pixels are cached) of 8x8 RGB PNGs; ``corrupt_row`` holds no image."""
    import io

    rng = np.random.default_rng(0)
    images = []
    for row in range(rows):
        encoded = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(encoded, "PNG")
        images.append({"bytes": b"no image" if row == corrupt_row else encoded.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = {"image": images, "label": [row % 2 for row in range(rows)]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return load_image_dataset(train_file=str(path), validation_file=str(path))


@pytest.mark.parametrize("damage", ["truncated", "header"])
def test_a_damaged_pixel_store_is_named_and_rebuilt(tmp_path, monkeypatch, caplog, damage):
    """Trust 17: a truncated uint8 store failed every later run with numpy's "mmap length is greater than file
    size", naming no file; now its header and size are checked, and a damaged store is logged by name and rebuilt."""
    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "cache"))
    data = _parquet_split(tmp_path / "train.parquet")
    first, where = decode_uint8(data.train, "image", 3, 8)
    expected, path = np.array(first), where.removeprefix("decoded, cached at ")
    size = Path(path).stat().st_size
    del first  # the memory map
    if damage == "truncated":
        os.truncate(path, size - 100)
    else:
        with open(path, "r+b") as file:
            file.write(b"garbage!")
    with caplog.at_level(logging.WARNING, logger="hf_recperc.images.decode"):
        again, where = decode_uint8(data.train, "image", 3, 8)
    assert where == f"decoded, cached at {path}"
    assert f"cache {path!r} is damaged" in caplog.text and "rebuild" in caplog.text
    np.testing.assert_array_equal(again, expected)
    assert Path(path).stat().st_size == size  # rebuilt whole: the next run reads it
    assert decode_uint8(data.train, "image", 3, 8)[1] == f"cached at {path}"


def test_a_truncated_float_pixel_cache_is_rebuilt(tmp_path, monkeypatch, caplog):
    """Trust 17: the experiments' float pixel cache (``images_to_array``) gets the same check as the uint8 store."""
    from hf_recperc.images import images_to_array

    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "cache"))
    data = _parquet_split(tmp_path / "train.parquet")
    expected = images_to_array(data.train, "image")
    (path,) = (tmp_path / "cache" / "uint8").glob("*.npy")
    os.truncate(path, path.stat().st_size - 64)
    with caplog.at_level(logging.WARNING, logger="hf_recperc.images.decode"):
        np.testing.assert_array_equal(images_to_array(data.train, "image"), expected)
    assert f"cache {str(path)!r} is damaged" in caplog.text


def test_the_processor_path_names_an_unreadable_images_row(tmp_path):
    """Trust (images): ``--pixel_store false`` lost the error naming a bad row (``with_transform`` decodes inside
    datasets); it now decodes through the same routine as the store and names the row."""
    data = _parquet_split(tmp_path / "train.parquet", corrupt_row=5)
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=8, num_labels=2)
    train, _, _ = build_datasets(data, config, image_processor_for(config), use_store=False, cache=False)
    loader = torch.utils.data.DataLoader(train, batch_size=4, collate_fn=collate_stored)
    with pytest.raises(ValueError, match=r"^image: row 5 \(embedded bytes\) is not a readable image"):
        list(loader)
    with pytest.raises(ValueError, match=r"^image: row 5 \(embedded bytes\) is not a readable image"):
        build_datasets(data, config, image_processor_for(config), use_store=True, cache=False)
