"""Training transforms of hf_recperc.images: the image-processor transform and the tensor augmentation."""

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_recperc import RecPercAEConfig, image_processor_for
from hf_recperc.images import cache_root, load_image_dataset, processor_transform, random_crop_flip
from hf_recperc.images.augment import _gather_windows, _slice_windows


@pytest.fixture(scope="module")
def digits():
    return load_image_dataset(max_train_samples=16, max_eval_samples=8)


def test_processor_transform_gives_normalised_batches(digits):
    config = RecPercAEConfig.preset("digits-mlp")
    processor = image_processor_for(config)
    transform = processor_transform(processor, digits.image_column, digits.label_column, config.num_channels)
    batch = digits.train.with_transform(transform)[:5]
    assert batch["pixel_values"].shape == (5, 1, 8, 8)
    assert batch["pixel_values"].dtype == torch.float32
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == digits.train[:5]["label"]
    # The processor's normalisation, (x / 255 - mean) / std, on the raw grey levels.
    raw = np.asarray(digits.train[0]["image"], dtype=np.float32) / 255.0
    expected = (raw - config.image_mean[0]) / config.image_std[0]
    np.testing.assert_allclose(batch["pixel_values"][0, 0].numpy(), expected, atol=1e-5)


def test_processor_transform_converts_channels_and_string_labels():
    images = [Image.fromarray(np.full((8, 8), 10 * i, dtype=np.uint8), mode="L") for i in range(3)]
    rows = datasets.Dataset.from_dict({"image": images, "label": ["cat", "dog", "cat"]}).cast_column(
        "image", datasets.Image()
    )
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=8)
    transform = processor_transform(
        image_processor_for(config), "image", "label", 3, label_names=["cat", "dog"]
    )
    batch = rows.with_transform(transform)[:3]
    assert batch["pixel_values"].shape == (3, 3, 8, 8)  # grey images converted to RGB
    assert batch["labels"].tolist() == [0, 1, 0]


def test_processor_transform_rejects_other_channel_counts():
    with pytest.raises(ValueError, match="num_channels"):
        processor_transform(None, "image", "label", 2)


def test_random_crop_flip_off_is_identity():
    x = torch.randn(4, 3, 6, 6)
    assert torch.equal(random_crop_flip(x), x)


def test_random_crop_flip_draws_windows_of_the_padded_image():
    x = torch.arange(2 * 2 * 5 * 5, dtype=torch.float32).reshape(2, 2, 5, 5)
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="reflect")
    out = random_crop_flip(x, padding=2, flip=True, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape
    for image in range(2):
        windows = [
            window
            for top in range(5)
            for left in range(5)
            for window in (padded[image, :, top : top + 5, left : left + 5],)
        ]
        candidates = windows + [w.flip(-1) for w in windows]
        # One offset and one flip for all channels of an image.
        assert any(torch.equal(out[image], c) for c in candidates)


def test_random_crop_flip_is_reproducible_and_random():
    x = torch.randn(16, 1, 8, 8)
    first = random_crop_flip(x, padding=1, flip=True, generator=torch.Generator().manual_seed(3))
    again = random_crop_flip(x, padding=1, flip=True, generator=torch.Generator().manual_seed(3))
    other = random_crop_flip(x, padding=1, flip=True, generator=torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    flipped = random_crop_flip(x, flip=True, generator=torch.Generator().manual_seed(0))
    mirrored = [torch.equal(f, i.flip(-1)) for f, i in zip(flipped, x)]
    assert 0 < sum(mirrored) < len(x)  # some images flipped, some not


@pytest.mark.parametrize("padding", [-1, 1.5, 8])
def test_random_crop_flip_rejects_bad_padding(padding):
    with pytest.raises(ValueError, match="padding"):
        random_crop_flip(torch.zeros(1, 1, 8, 8), padding=padding)


def test_random_crop_flip_zeros_is_a_shift_or_flip_of_each_image():
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(16, 2, 6, 6)
    out = random_crop_flip(images, padding=2, flip=True, generator=generator, padding_mode="zeros")
    assert out.shape == images.shape
    for original, augmented in zip(images, out):
        padded = torch.nn.functional.pad(original, (2, 2, 2, 2))
        candidates = [padded[:, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        candidates += [padded.flip(-1)[:, dy : dy + 6, dx : dx + 6] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(augmented, c) for c in candidates)
    # seeded: the same generator state gives the same batch
    again = random_crop_flip(
        images, padding=2, flip=True, generator=torch.Generator().manual_seed(0), padding_mode="zeros"
    )
    assert torch.equal(out, again)


def test_crop_windows_slices_and_gather_agree():
    # CPU crops by slicing, accelerators by one gather: both must cut the same windows.
    padded = torch.randn(5, 3, 10, 12)
    offsets = torch.randint(0, 5, (2, 5), generator=torch.Generator().manual_seed(1))
    assert torch.equal(_slice_windows(padded, offsets, 6, 8), _gather_windows(padded, offsets, 6, 8))


def test_random_crop_flip_zeros_allows_padding_beyond_the_image():
    out = random_crop_flip(
        torch.ones(3, 1, 4, 4), padding=4, padding_mode="zeros", generator=torch.Generator()
    )
    assert out.shape == (3, 1, 4, 4)


def test_random_crop_flip_rejects_unknown_padding_mode():
    with pytest.raises(ValueError, match="padding_mode: expected one of"):
        random_crop_flip(torch.zeros(1, 1, 8, 8), padding=1, padding_mode="circular")


def _write_parquet(path, labels):
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)) for _ in labels]
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "label": datasets.Value("string" if isinstance(labels[0], str) else "int64"),
        }
    )
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))
    return str(path)


@pytest.mark.parametrize(
    "labels, names",
    [([3, 10, 7, 3] * 5, ["3", "7", "10"]), (["cat", "dog", "ant", "dog"] * 5, ["ant", "cat", "dog"])],
)
def test_plain_label_columns_become_shared_class_ids(tmp_path, labels, names):
    train = _write_parquet(tmp_path / "train.parquet", labels)
    valid = _write_parquet(tmp_path / "valid.parquet", labels[:6])
    data = load_image_dataset(train_file=train, validation_file=valid)
    assert data.label_names == names and data.num_labels == 3
    ids = [names.index(str(v)) for v in labels]
    assert data.train[data.label_column] == ids
    assert data.validation[data.label_column] == ids[:6]
    # The pixel-space experiments read the same ids.
    from hf_recperc.cli import DataArguments
    from hf_recperc.experiments import load_pixel_splits

    splits = load_pixel_splits(DataArguments(train_file=train, validation_file=valid))
    assert splits.train_labels.tolist() == ids


def test_a_class_sorted_subset_warns(tmp_path):
    train = _write_parquet(tmp_path / "train.parquet", [0] * 10 + [1] * 10)
    valid = _write_parquet(tmp_path / "valid.parquet", [0, 1])
    with pytest.warns(
        UserWarning, match="max_train_samples=5 keeps the first rows, which hold 1 of 2 classes"
    ):
        data = load_image_dataset(train_file=train, validation_file=valid, max_train_samples=5)
    assert len(data.train) == 5


def test_images_of_mixed_sizes_need_and_accept_image_size(tmp_path):
    from hf_recperc.images import images_to_array

    images = [Image.new("RGB", (8, 8), "red"), Image.new("RGB", (12, 10), "blue")]
    split = datasets.Dataset.from_dict(
        {"image": images}, features=datasets.Features({"image": datasets.Image()})
    )
    with pytest.raises(ValueError, match=r"image 1 is 12x10 but the first is 8x8; pass image_size"):
        images_to_array(split, "image")
    array = images_to_array(split, "image", image_size=6)
    assert array.shape == (2, 3, 6, 6)
    np.testing.assert_allclose(array[1, 2], 1.0)  # blue stays blue after resizing


def test_cache_root_precedence(monkeypatch, tmp_path):
    # cache_dir beats $HF_RECPERC_CACHE, which beats ~/.cache/hf_recperc (an empty variable counts as unset).
    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "env"))
    assert cache_root(tmp_path / "flag") == tmp_path / "flag"
    assert cache_root() == tmp_path / "env"
    monkeypatch.setenv("HF_RECPERC_CACHE", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "hf_recperc"
