"""Our models behave like transformers / timm citizens where users rely on it (Citizen 1-8).

transformers' own test mixins run on every family in tests/test_transformers_conformance.py; these tests pin the
behaviours a user reaches through transformers' machinery (config flags, ``Trainer``, ``from_pretrained``,
``pipeline``) and timm's model zoo.
"""

import numpy as np
import pytest
import torch
from conftest import TINY_MAE
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModel, Trainer, TrainingArguments, pipeline

from hf_recperc import (
    RecPercAEConfig,
    RecPercAEForImageClassification,
    RecPercAEForPreTraining,
    RecPercAEModel,
    RecPercMAEConfig,
    RecPercMAEForImageClassification,
    RecPercMAEForPreTraining,
    RecPercMAEModel,
)

AE = dict(encoder="conv", image_size=9, num_channels=2, latent_dim=6, depth=2, width=4, num_labels=3)
MAE = dict(TINY_MAE, num_labels=3)
AE_CLASSES = (RecPercAEModel, RecPercAEForPreTraining, RecPercAEForImageClassification)
MAE_CLASSES = (RecPercMAEModel, RecPercMAEForPreTraining, RecPercMAEForImageClassification)
ALL_CLASSES = [(cls, AE) for cls in AE_CLASSES] + [(cls, MAE) for cls in MAE_CLASSES]


def _inputs(cls, fields, batch_size=2):
    generator = torch.Generator().manual_seed(0)
    side, channels = fields["image_size"], fields["num_channels"]
    inputs = {"pixel_values": torch.randn(batch_size, channels, side, side, generator=generator)}
    if cls is RecPercMAEForPreTraining:
        inputs["noise"] = torch.rand(batch_size, (side // fields["patch_size"]) ** 2, generator=generator)
    return inputs


def _config(fields, **overrides):
    config_class = RecPercMAEConfig if "patch_size" in fields else RecPercAEConfig
    config = config_class(**fields)
    for name, value in overrides.items():
        setattr(config, name, value)
    return config


def _id(value):
    return getattr(value, "__name__", None)


@pytest.mark.parametrize("cls, fields", ALL_CLASSES, ids=[c.__name__ for c, _ in ALL_CLASSES])
def test_output_hidden_states_from_the_config(cls, fields):
    """Citizen 1: `config.output_hidden_states = True` returns hidden states from every class, heads included."""
    model = cls(_config(fields, output_hidden_states=True)).eval()
    with torch.no_grad():
        from_config = model(**_inputs(cls, fields)).hidden_states
        overridden = model(**_inputs(cls, fields), output_hidden_states=False).hidden_states
    assert from_config is not None and len(from_config) == model.num_hidden_layers + 1
    assert all(isinstance(state, torch.Tensor) for state in from_config)
    assert overridden is None  # the keyword wins over the config, as in transformers


@pytest.mark.parametrize("cls", MAE_CLASSES, ids=_id)
@pytest.mark.parametrize("how", ["keyword", "config"])
def test_mae_attentions(cls, how):
    """Citizen 2: the MAE family returns each layer's attention weights (eager attention), as ViTMAE does."""
    config = _config(MAE)
    config._attn_implementation = "eager"
    keyword = {"output_attentions": True} if how == "keyword" else {}
    if how == "config":
        config.output_attentions = True
    model = cls(config).eval()
    with torch.no_grad():
        attentions = model(**_inputs(cls, MAE), **keyword).attentions
    assert attentions is not None and len(attentions) == MAE["num_hidden_layers"]
    tokens = attentions[0].shape[-1]
    assert attentions[0].shape == (2, MAE["num_attention_heads"], tokens, tokens)
    torch.testing.assert_close(attentions[0].sum(-1), torch.ones(attentions[0].shape[:-1]))  # softmax rows


@pytest.mark.parametrize("cls, fields", ALL_CLASSES, ids=[c.__name__ for c, _ in ALL_CLASSES])
@pytest.mark.parametrize("how", ["keyword", "config"])
def test_return_dict_false_gives_the_tuple(cls, fields, how):
    """Citizen 3: `return_dict=False` (keyword or config) returns `to_tuple()` of the dict output; it used to be
    ignored, and crashed `RecPercMAEForPreTraining`."""
    model = cls(_config(fields)).eval()
    inputs = _inputs(cls, fields)
    with torch.no_grad():
        expected = model(**inputs, return_dict=True).to_tuple()
        if how == "config":
            model.config.return_dict = False
            as_tuple = model(**inputs)
        else:
            as_tuple = model(**inputs, return_dict=False)
    assert isinstance(as_tuple, tuple) and len(as_tuple) == len(expected)
    for a, b in zip(as_tuple, expected):
        assert torch.equal(a, b)


@pytest.mark.parametrize("cls, fields", ALL_CLASSES, ids=[c.__name__ for c, _ in ALL_CLASSES])
def test_selected_hidden_states(cls, fields):
    """Citizen 4: `output_hidden_states=[0, 2, -1]` keeps those states (negative from the end) and `None` elsewhere,
    transformers' convention; the MAE model used to return every layer."""
    model = cls(_config(fields, num_hidden_layers=3) if "patch_size" in fields else _config(fields)).eval()
    inputs = _inputs(cls, fields)
    with torch.no_grad():
        every = model(**inputs, output_hidden_states=True).hidden_states
        selected = model(**inputs, output_hidden_states=[0, 2, -1]).hidden_states
    assert len(selected) == len(every) >= 3
    kept = {0, 2, len(every) - 1}
    for i, (state, full) in enumerate(zip(selected, every)):
        if i in kept:
            assert torch.equal(state, full)
        else:
            assert state is None, i


@pytest.mark.parametrize("cls", [RecPercAEForImageClassification, RecPercMAEForImageClassification], ids=_id)
@pytest.mark.parametrize(
    "problem, num_labels, make_labels, reference",
    [
        (
            "regression",
            1,
            lambda: torch.tensor([0.5, -1.0]),
            lambda z, y: torch.nn.functional.mse_loss(z[:, 0], y),
        ),
        (
            "regression",
            2,
            lambda: torch.tensor([[0.5, 1.0], [0.0, -1.0]]),
            torch.nn.functional.mse_loss,
        ),
        (
            "multi_label_classification",
            3,
            lambda: torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]),
            torch.nn.functional.binary_cross_entropy_with_logits,
        ),
        ("single_label_classification", 3, lambda: torch.tensor([2, 0]), torch.nn.functional.cross_entropy),
    ],
)
def test_problem_types(cls, problem, num_labels, make_labels, reference):
    """Citizen 5: the classification heads honour `config.problem_type` (regression, multi-label) with
    transformers' losses; float labels used to raise 'expected integer class ids'."""
    fields = MAE if cls is RecPercMAEForImageClassification else AE
    model = cls(_config({**fields, "num_labels": num_labels}, problem_type=problem))
    labels = make_labels()
    out = model(**_inputs(cls, fields), labels=labels)
    torch.testing.assert_close(out.loss, reference(out.logits, labels))
    out.loss.backward()


def test_problem_type_inferred_like_transformers():
    """Citizen 5: with no problem type, one label means regression (transformers' rule, recorded in the config)."""
    model = RecPercAEForImageClassification(_config({**AE, "num_labels": 1}))
    model(**_inputs(RecPercAEModel, AE), labels=torch.tensor([0.2, 0.3]))
    assert model.config.problem_type == "regression"


def test_trainer_fine_tunes_a_regression_head(tmp_path):
    """Citizen 5: `Trainer` fine-tunes a classification head on float regression targets."""
    model = RecPercAEForImageClassification(_config({**AE, "num_labels": 1}, problem_type="regression"))
    generator = torch.Generator().manual_seed(0)
    rows = [
        {"pixel_values": torch.randn(2, 9, 9, generator=generator), "labels": torch.tensor(float(i % 3))}
        for i in range(8)
    ]
    args = TrainingArguments(
        output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4, report_to=[], use_cpu=True
    )
    result = Trainer(model=model, args=args, train_dataset=rows).train()
    assert np.isfinite(result.training_loss)


def test_timm_backbone_weights_missing_from_a_checkpoint_get_timm_init(tmp_path):
    """Citizen 6: backbone tensors a checkpoint lacks get timm's initial values (BatchNorm statistics 0 / 1,
    finite weights), not uninitialised memory; the loaded ones keep the checkpoint's values."""
    config = RecPercAEConfig(encoder="timm:test_resnet", image_size=16, num_channels=3, latent_dim=6, width=8)
    model = RecPercAEModel(config)
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(0.01)  # distinguishable from any initialisation
    model.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    missing = {key for key in weights if key.startswith("encoder.backbone.layer")}
    save_file({k: v for k, v in weights.items() if k not in missing}, tmp_path / "model.safetensors")

    loaded, info = RecPercAEModel.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == missing
    state = loaded.state_dict()
    for key in missing:
        assert torch.isfinite(state[key]).all(), key
        if key.endswith("running_var"):
            assert torch.equal(state[key], torch.ones_like(state[key])), key
        if key.endswith(("running_mean", "num_batches_tracked")):
            assert not state[key].any(), key
    assert any(key.endswith("conv1.weight") and not torch.all(state[key] == 0.01) for key in missing)
    for key, value in weights.items():
        if key not in missing:
            assert torch.equal(state[key], value), key
    with torch.no_grad():
        assert torch.isfinite(loaded.eval()(pixel_values=torch.randn(2, 3, 16, 16)).embeddings).all()


@pytest.mark.parametrize(
    "config",
    [
        RecPercAEConfig.preset("digits-mlp"),
        RecPercAEConfig.preset("cifar-conv-small"),
        RecPercMAEConfig.preset("digits-vit-tiny"),
    ],
    ids=["digits-mlp", "cifar-conv-small", "digits-vit-tiny"],
)
def test_feature_extraction_pipeline_from_a_saved_model(config, tmp_path):
    """Citizen 7: `pipeline("image-feature-extraction", model=run_dir)` (the model card's pipeline tag) returns
    the embeddings `AutoModel` gives on the image processor's pixels, for grayscale 8 px digits (the default run)
    and colour CIFAR models; the saved processor converts images to the model's channels."""
    model_class = (
        RecPercMAEForPreTraining if isinstance(config, RecPercMAEConfig) else RecPercAEForPreTraining
    )
    model_class(config).eval().save_pretrained(tmp_path)
    rng = np.random.default_rng(0)
    side = config.image_size + 5  # the processor resizes
    images = [Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)) for _ in range(2)]

    extractor = pipeline("image-feature-extraction", model=str(tmp_path))
    features = extractor(images, pool=True, return_tensors=True)

    encoder = AutoModel.from_pretrained(tmp_path).eval()
    pixels = extractor.image_processor(images, return_tensors="pt").pixel_values
    assert pixels.shape == (2, config.num_channels, config.image_size, config.image_size)
    grayscale = [image.convert("L" if config.num_channels == 1 else "RGB") for image in images]
    expected_pixels = extractor.image_processor(grayscale, return_tensors="pt").pixel_values
    assert torch.equal(pixels, expected_pixels)  # the same conversion as the trainer's data path
    with torch.no_grad():
        expected = encoder(pixel_values=pixels).embeddings
    torch.testing.assert_close(torch.cat([f.reshape(1, -1) for f in features]), expected)


# Citizen 8: timm encoders, among them ones whose head has a pre-logits layer (`head_hidden_size` features out of
# the pooled backbone, not `num_features`): MobileNetV3, LCNet, GhostNet, EfficientViT, HGNetV2, MambaOut,
# MobileNetV4, FBNetV3, RepGhostNet. All build offline from timm's config (pretrained=False).
TIMM_ENCODERS = (
    "mobilenetv3_small_050",
    "lcnet_050",
    "ghostnet_050",
    "efficientvit_b0",
    "hgnetv2_b0",
    "mambaout_femto",
    "mobilenetv4_conv_small_050",
    "fbnetv3_b",
    "repghostnet_050",
    "resnet10t",
    "convnext_atto",
    "efficientnet_b0",
    "regnetx_002",
    "tinynet_e",
    "edgenext_xx_small",
)


@pytest.mark.parametrize("name", TIMM_ENCODERS)
def test_timm_encoder_trains_and_round_trips(name, tmp_path, one_thread):
    """Citizen 8: every listed `timm:` encoder builds, runs forward (hidden states too) and backward, and loads
    back from `save_pretrained` with the same outputs (32 px images, batch 2)."""
    config = RecPercAEConfig(encoder=f"timm:{name}", image_size=32, num_channels=3, latent_dim=8, width=8)
    model = RecPercAEForPreTraining(config)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(2, 3, 32, 32, generator=generator)
    out = model(pixel_values=pixels, labels=torch.tensor([0, 1]), output_hidden_states=True)
    assert out.embeddings.shape == (2, 8) and out.reconstruction.shape == pixels.shape
    assert len(out.hidden_states) == model.num_hidden_layers + 1
    out.loss.backward()
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    model.eval().save_pretrained(tmp_path)
    reloaded, info = RecPercAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not any(info[key] for key in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        a = model(pixel_values=pixels).reconstruction
        b = reloaded.eval()(pixel_values=pixels).reconstruction
    # Same weights bit for bit; loaded tensors may have other strides, so convolutions may round differently.
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
