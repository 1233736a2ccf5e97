"""Reliability (issue 12): no silent wrong numbers, no lost files, one-line errors. One test per row."""

import pytest

from hf_recperc.models import preset_for_data
from hf_recperc.models.ae.configuration_recperc import RecPercAEConfig, check_config_overrides
from hf_recperc.models.mae.configuration_recperc_mae import RecPercMAEConfig


# Row 3: a typo in --config_overrides was stored in config.json and ignored by the model.
def test_unknown_config_override_is_an_error_naming_the_closest_field():
    with pytest.raises(
        ValueError,
        match=r"^config_overrides: unknown field 'latnet_dim' for recperc_ae; did you mean 'latent_dim'\?$",
    ):
        RecPercAEConfig.preset("digits-mlp", latnet_dim=64)
    # Inherited fields count (ViTMAEConfig's mask_ratio, PreTrainedConfig's id2label, the num_labels property).
    with pytest.raises(ValueError, match=r"'mask_ration' for recperc_mae; did you mean 'mask_ratio'\?"):
        RecPercMAEConfig.preset("digits-vit-tiny", mask_ration=0.5)
    check_config_overrides(RecPercMAEConfig, {"mask_ratio": 0.5, "id2label": {0: "a"}, "num_labels": 1})
    config = RecPercAEConfig.preset("digits-mlp", latent_dim=12, num_labels=3)
    assert config.latent_dim == 12 and config.num_labels == 3


# Row 4: a CIFAR-10 directory with no --preset trained the 8x8 grayscale digits-mlp on downscaled images.
def test_preset_follows_the_data_or_names_the_presets_that_fit(tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    from hf_recperc.images import load_image_dataset

    assert load_image_dataset().first_image_shape() == (1, 8, 8)
    images = [Image.fromarray(np.zeros((32, 32, 3), dtype=np.uint8))] * 4
    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    rows = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 0, 1]}, features=features)
    rows.to_parquet(str(tmp_path / "train.parquet"))
    assert load_image_dataset(str(tmp_path), train_val_split=0.5).first_image_shape() == (3, 32, 32)
    assert preset_for_data("ae", 32, 3) == "cifar-conv-small"
    assert preset_for_data("ae", 8, 1) == "digits-mlp"
    assert preset_for_data("mae", 32, 3) == "cifar-vit-tiny"
    assert preset_for_data("mae", 8, 1) == "digits-vit-tiny"
    with pytest.raises(
        ValueError,
        match=r"images of 64x64x3 .* match no ae preset .*fit with --config_overrides image_size=64: "
        r"\['cifar-conv-small', 'cifar-resnet18'\]",
    ):
        preset_for_data("ae", 64, 3)
    with pytest.raises(ValueError, match=r"family: expected one of \('ae', 'mae'\), got 'vae'"):
        preset_for_data("vae", 32, 3)


# Row 14: loading the encoder of our own pre-training checkpoint printed a LOAD REPORT of UNEXPECTED keys.
@pytest.mark.parametrize("family", ["ae", "mae"])
def test_loading_the_encoder_of_a_pretraining_checkpoint_is_quiet(tmp_path, family, one_thread):
    import logging

    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    from hf_recperc import RecPercAEForPreTraining, RecPercMAEForPreTraining

    if family == "ae":
        model = RecPercAEForPreTraining(RecPercAEConfig.preset("digits-mlp"))
    else:
        model = RecPercMAEForPreTraining(RecPercMAEConfig.preset("digits-vit-tiny"))
    model.save_pretrained(tmp_path)

    records: list[logging.LogRecord] = []
    collector = logging.Handler(logging.WARNING)
    collector.emit = records.append
    library_logger = logging.getLogger("transformers")  # transformers' own root logger (no propagation)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()  # the level at which transformers prints its LOAD REPORT
    library_logger.addHandler(collector)
    try:
        encoder = AutoModel.from_pretrained(tmp_path)
    finally:
        library_logger.removeHandler(collector)
        hf_logging.set_verbosity(verbosity)
    printed = "\n".join(record.getMessage() for record in records)
    assert "LOAD REPORT" not in printed and "UNEXPECTED" not in printed, printed
    assert type(encoder) is type(model.base_model)
    expected = model.base_model.state_dict()
    loaded = encoder.state_dict()
    assert loaded.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------------------------- data


def _write_parquet(path, labels, label_feature):
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((4, 4, 3), 20 * i, dtype=np.uint8)) for i in range(len(labels))]
    features = datasets.Features({"image": datasets.Image(), "label": label_feature})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))
    return str(path)


# Row 4: integer labels containing -1 became an extra class "-1".
def test_negative_integer_labels_are_an_error(tmp_path):
    import datasets

    from hf_recperc.images import load_image_dataset

    train = _write_parquet(tmp_path / "train.parquet", [0, 1, -1, 1, 0, 1], datasets.Value("int64"))
    valid = _write_parquet(tmp_path / "valid.parquet", [0, 1], datasets.Value("int64"))
    with pytest.raises(
        ValueError,
        match=r"^label_column: 'label' of the 'train' split holds the negative label -1 at row 2 \(1 rows\); "
        r"expected class ids >= 0",
    ):
        load_image_dataset(train_file=train, validation_file=valid)


# Row 10: an empty directory, a corrupt image and a missing model gave tracebacks, not one-line errors.
def test_empty_directory_corrupt_image_and_missing_model_are_one_line_errors(tmp_path, monkeypatch):
    import datasets
    import numpy as np
    import torch
    from PIL import Image

    from hf_recperc import RecPercAEConfig, image_processor_for
    from hf_recperc.images import ProcessedImages, images_to_array, load_image_dataset, processor_transform
    from hf_recperc.validation import check_model_path

    (tmp_path / "empty").mkdir()
    with pytest.raises(
        ValueError, match=r"^dataset_name: directory '.*empty' holds no data set \(it is empty\)"
    ):
        load_image_dataset(str(tmp_path / "empty"))

    for split_dir, name in (("train", "a"), ("train", "b"), ("test", "a"), ("test", "b")):
        folder = tmp_path / "folder" / split_dir / name
        folder.mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "folder" / "train" / "b" / "bad.png").write_bytes(b"not a png")
    data = load_image_dataset(str(tmp_path / "folder"))
    split = data.train
    paths = [value["path"] for value in split.cast_column("image", datasets.Image(decode=False))["image"]]
    bad_row = next(row for row, path in enumerate(paths) if path.endswith("bad.png"))
    message = rf"^image: row {bad_row} \(file '.*bad\.png'\) is not a readable image: UnidentifiedImageError"
    with pytest.raises(ValueError, match=message):
        images_to_array(split, data.image_column, cache=False)
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=4)
    transform = processor_transform(image_processor_for(config), data.image_column, data.label_column, 3)
    loader = torch.utils.data.DataLoader(
        ProcessedImages(split, transform, data.image_column), batch_size=len(split)
    )
    with pytest.raises(ValueError, match=message):
        next(iter(loader))
    good = ProcessedImages(data.validation, transform, "image")
    assert next(iter(torch.utils.data.DataLoader(good, batch_size=2)))["pixel_values"].shape == (2, 3, 4, 4)
    # A drop-in for `split.with_transform(transform)`: the same tensors, by row and by slice.
    reference = data.validation.with_transform(transform)[:3]
    for key in ("pixel_values", "labels"):
        assert torch.equal(good[:3][key], reference[key])
        assert torch.equal(good[1][key], reference[key][1])

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"^model_name_or_path: local path 'folder/model' does not exist"):
        check_model_path("folder/model")
    with pytest.raises(ValueError, match=r"^model_name_or_path: 'empty' is a directory without config\.json"):
        check_model_path("empty")
    with pytest.raises(ValueError, match=r"'org/model' is not a local path and HF_HUB_OFFLINE is set"):
        check_model_path("org/model")


# Row 11: ClassLabel values out of range (datasets stores a missing label as -1) went through unchecked.
def test_class_label_values_out_of_range_are_an_error(tmp_path):
    import datasets

    from hf_recperc.images import load_image_dataset

    names = datasets.ClassLabel(names=["cat", "dog"])
    train = _write_parquet(tmp_path / "train.parquet", [0, 1, 1, 0], names)
    valid = _write_parquet(tmp_path / "valid.parquet", [0, -1, 1], names)
    with pytest.raises(
        ValueError,
        match=r"^label_column: 'label' of the 'validation' split holds -1 at row 1 \(ClassLabel's -1 means a "
        r"missing label\); expected class ids in \[0, 2\)",
    ):
        load_image_dataset(train_file=train, validation_file=valid)


# Row 12: a missing relative path such as data/x was taken for a Hub id and retried over the network.
def test_missing_local_path_or_uncached_offline_id_fails_at_once(tmp_path, monkeypatch):
    import datasets
    import huggingface_hub.constants

    from hf_recperc.images import load_image_dataset

    def no_network(*args, **kwargs):
        raise AssertionError(f"datasets.load_dataset{args} was called: it would go to the Hub")

    monkeypatch.setattr(datasets, "load_dataset", no_network)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "cifar").mkdir()
    with pytest.raises(
        ValueError, match=r"^dataset_name: local path 'data/x' does not exist \('data' holds \['cifar'\]\)$"
    ):
        load_image_dataset("data/x")
    with pytest.raises(
        ValueError, match=r"^dataset_name: 'my data' is neither an existing local path nor a valid Hub id"
    ):
        load_image_dataset("my data")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    # Empty caches, whatever this machine holds.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_home" / "datasets")
    with pytest.raises(
        ValueError, match=r"^dataset_name: 'org/unknown' is not a local path and HF_HUB_OFFLINE is set"
    ):
        load_image_dataset("org/unknown")


# Row 13: labels stored as unsigned integers (uint8, uint32) load as class ids.
@pytest.mark.parametrize("dtype", ["uint8", "uint32"])
def test_unsigned_integer_labels_are_accepted(tmp_path, dtype):
    import datasets

    from hf_recperc.images import load_image_dataset

    train = _write_parquet(tmp_path / "train.parquet", [2, 0, 7, 2, 0, 7], datasets.Value(dtype))
    valid = _write_parquet(tmp_path / "valid.parquet", [7, 0], datasets.Value(dtype))
    data = load_image_dataset(train_file=train, validation_file=valid)
    assert data.label_names == ["0", "2", "7"]
    assert data.train["label"][:] == [1, 0, 2, 1, 0, 2] and data.validation["label"][:] == [2, 0]


# Row 15: `import hf_recperc` imported torch, transformers' modelling code, datasets and timm (seconds per --help).
def test_import_is_light_and_auto_classes_still_find_our_models(tmp_path):
    import os
    import subprocess
    import sys

    from hf_recperc import RecPercAEConfig, RecPercAEForPreTraining

    RecPercAEForPreTraining(RecPercAEConfig.preset("digits-mlp")).save_pretrained(tmp_path)
    check = (
        "import sys\n"
        "import hf_recperc\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'datasets', 'timm', 'sklearn') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
        "assert 'SubspaceProbe' in dir(hf_recperc) and 'SubspaceProbe' in hf_recperc.__all__\n"
        "from transformers import AutoModel\n"
        "assert 'hf_recperc.models' not in sys.modules\n"
        "import hf_recperc.models\n"  # Citizen 11: importing the model package registers the families
        f"model = AutoModel.from_pretrained({str(tmp_path)!r})\n"
        "assert type(model) is hf_recperc.RecPercAEModel, type(model)\n"
        "assert hf_recperc.images.DEFAULT_DATASET == 'digits'\n"  # submodules load on access too
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-3000:]
