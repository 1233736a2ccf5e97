"""Reliability (issue 12): no silent wrong numbers, no lost files, one-line errors. One test per row."""

import pytest

from hf_recperc.configuration_recperc import (
    RecPercAEConfig,
    RecPercMAEConfig,
    check_config_overrides,
    preset_for_data,
)


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
def test_preset_follows_the_data_or_names_the_presets_that_fit():
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
