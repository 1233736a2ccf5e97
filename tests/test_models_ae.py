"""The autoencoder family: every encoder variant and preset builds, trains, round-trips and validates input."""

import os

import numpy as np
import pytest
import torch
from conftest import assert_same_pretraining_outputs
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    PreTrainedModel,
    pipeline,
)

from hf_recperc import (
    RecPercAEConfig,
    RecPercAEForImageClassification,
    RecPercAEForPreTraining,
    RecPercAEModel,
    image_processor_for,
)

# One tiny configuration per encoder variant (timm: a 0.4M-parameter test ResNet).
VARIANTS = {
    "mlp": dict(encoder="mlp", image_size=8, num_channels=1, latent_dim=6, depth=2),
    "conv": dict(encoder="conv", image_size=9, num_channels=2, latent_dim=6, depth=2, width=4),
    "timm": dict(encoder="timm:test_resnet", image_size=16, num_channels=3, latent_dim=6, width=8),
}
NUM_LABELS = 3
CLASSES = (RecPercAEModel, RecPercAEForPreTraining, RecPercAEForImageClassification)


def _config(variant: str, **overrides) -> RecPercAEConfig:
    return RecPercAEConfig(**{**VARIANTS[variant], "num_labels": NUM_LABELS, **overrides})


def _batch(config, batch_size: int = 4, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.randn(
        batch_size, config.num_channels, config.image_size, config.image_size, generator=generator
    )
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    return pixels, labels


def _all_finite_grads(model) -> bool:
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    return all(g is None or torch.isfinite(g).all() for g in grads) and any(g is not None for g in grads)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("corruption", ["none", "gaussian:0.2", "mask:0.5:2"])
def test_pretraining_forward_backward(variant, corruption):
    config = _config(variant, corruption=corruption, guidance=0.01)
    model = RecPercAEForPreTraining(config)
    pixels, labels = _batch(config)
    out = model(pixel_values=pixels, labels=labels, generator=torch.Generator().manual_seed(0))
    batch, side = pixels.shape[0], config.image_size
    assert out.reconstruction.shape == pixels.shape
    assert out.embeddings.shape == (batch, config.latent_dim)
    assert out.logits.shape == (batch, NUM_LABELS)
    assert (out.pixel_mask is None) == (corruption != "mask:0.5:2")
    if out.pixel_mask is not None:
        assert out.pixel_mask.shape == (batch, 1, side, side)
    assert torch.isfinite(out.loss)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.01 * out.supervised_loss)
    out.loss.backward()
    assert _all_finite_grads(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_encoder_and_classifier_forward_backward(variant):
    config = _config(variant)
    pixels, labels = _batch(config)
    encoder = RecPercAEModel(config)
    out = encoder(pixel_values=pixels)
    assert out.embeddings.shape == (4, config.latent_dim)
    assert out.pooler_output is out.embeddings
    classifier = RecPercAEForImageClassification(config)
    out = classifier(pixel_values=pixels, labels=labels)
    assert out.logits.shape == (4, NUM_LABELS)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
    out.loss.backward()
    assert _all_finite_grads(classifier)


@pytest.mark.parametrize("name", RecPercAEConfig.presets())
def test_presets_train(name):
    config = RecPercAEConfig.preset(name)
    assert config.num_labels == 10
    model = RecPercAEForPreTraining(config)
    pixels, labels = _batch(config, batch_size=2)
    out = model(pixel_values=pixels, labels=labels, generator=torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and _all_finite_grads(model)
    assert RecPercAEConfig.preset(name, latent_dim=5).latent_dim == 5


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="digits-mlp"):
        RecPercAEConfig.preset("imagenet-huge")


@pytest.mark.parametrize("variant", VARIANTS)
def test_save_and_reload_through_auto_classes(variant, tmp_path):
    config = _config(variant, corruption="mask:0.5:2", guidance=0.1)
    model = RecPercAEForPreTraining(config)
    pixels, labels = _batch(config)
    model.train()
    model(pixel_values=pixels, labels=labels).loss.backward()  # move BatchNorm running stats off their init
    model.eval()
    model.save_pretrained(tmp_path)

    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)  # safetensors only

    reloaded = AutoModelForPreTraining.from_pretrained(tmp_path).eval()
    assert type(reloaded) is RecPercAEForPreTraining
    assert reloaded.config.to_dict() | {"_name_or_path": None} == config.to_dict() | {"_name_or_path": None}
    with torch.no_grad():
        a = model(pixel_values=pixels, labels=labels, generator=torch.Generator().manual_seed(3))
        b = reloaded(pixel_values=pixels, labels=labels, generator=torch.Generator().manual_seed(3))
    assert_same_pretraining_outputs(a, b)

    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is RecPercAEModel
    with torch.no_grad():
        assert torch.equal(encoder(pixel_values=pixels).embeddings, model.get_embeddings(pixels))

    classifier = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(classifier) is RecPercAEForImageClassification
    for key, value in model.model.state_dict().items():
        assert torch.equal(classifier.model.state_dict()[key], value), key

    assert type(AutoConfig.from_pretrained(tmp_path)) is RecPercAEConfig
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert (processor.size["height"], processor.size["width"]) == (config.image_size, config.image_size)
    assert list(processor.image_mean) == config.image_mean and list(processor.image_std) == config.image_std


def test_guidance_zero_probe_trains_without_shaping_the_encoder():
    config = _config("conv", guidance=0.0)
    model = RecPercAEForPreTraining(config)
    pixels, labels = _batch(config)
    out = model(pixel_values=pixels, labels=labels)
    assert torch.equal(out.loss, out.reconstruction_loss)  # bit for bit
    assert out.supervised_loss is not None and out.supervised_loss > 0

    encoder_params = list(model.model.parameters())
    probe_grads = torch.autograd.grad(out.supervised_loss, encoder_params, allow_unused=True)
    assert all(g is None for g in probe_grads), "the probe loss reached the encoder"

    out.loss.backward()
    assert model.probe.weight.grad is not None and model.probe.weight.grad.abs().sum() > 0
    # The encoder's gradient is exactly the reconstruction gradient: the same as without labels.
    with_labels = [p.grad.clone() for p in encoder_params]
    model.zero_grad()
    model(pixel_values=pixels).loss.backward()
    for a, p in zip(with_labels, encoder_params):
        assert torch.equal(a, p.grad)


def test_guidance_positive_shapes_the_encoder():
    config = _config("conv", guidance=0.5)
    model = RecPercAEForPreTraining(config)
    pixels, labels = _batch(config)
    out = model(pixel_values=pixels, labels=labels)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.5 * out.supervised_loss)
    grads = torch.autograd.grad(out.supervised_loss, list(model.model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


def test_without_labels_there_is_no_probe_loss():
    config = _config("mlp", guidance=0.5)
    out = RecPercAEForPreTraining(config)(pixel_values=_batch(config)[0])
    assert out.supervised_loss is None and torch.equal(out.loss, out.reconstruction_loss)
    assert out.logits is not None


@pytest.mark.parametrize("target", ["all", "masked"])
def test_reconstruction_target(target):
    config = _config("conv", corruption="mask:0.5:3", reconstruction_target=target)
    model = RecPercAEForPreTraining(config)
    pixels, _ = _batch(config)
    out = model(pixel_values=pixels, generator=torch.Generator().manual_seed(1))
    error = (out.reconstruction - pixels) ** 2  # (B, C, H, W)
    if target == "all":
        expected = error.mean()
    else:
        mask = out.pixel_mask.expand_as(error)
        expected = error[mask].mean()
    torch.testing.assert_close(out.reconstruction_loss, expected)


def test_corruption_is_reproducible_and_drives_the_output():
    config = _config("conv", corruption="gaussian:0.5")
    model = RecPercAEForPreTraining(config).eval()
    pixels, _ = _batch(config)
    with torch.no_grad():
        a = model(pixel_values=pixels, generator=torch.Generator().manual_seed(5)).reconstruction
        b = model(pixel_values=pixels, generator=torch.Generator().manual_seed(5)).reconstruction
        c = model(pixel_values=pixels, generator=torch.Generator().manual_seed(6)).reconstruction
        clean = model.get_embeddings(pixels)
        assert torch.equal(clean, model.get_embeddings(pixels))  # no corruption at feature extraction
        assert torch.equal(clean, model.model(pixel_values=pixels).embeddings)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_timm_backbone_keeps_timm_initialisation():
    import timm

    config = _config("timm")
    torch.manual_seed(0)
    reference = timm.create_model("test_resnet", pretrained=False, num_classes=0, in_chans=3).state_dict()
    for cls in CLASSES:
        torch.manual_seed(0)
        model = cls(config)
        backbone = model.base_model.encoder.backbone.state_dict()
        assert backbone.keys() == reference.keys()
        for key, value in reference.items():
            assert torch.equal(backbone[key], value), f"{cls.__name__}: {key} was re-initialised"
    # transformers' default initialisation would have replaced them (N(0, 0.02) convolutions):
    PreTrainedModel._init_weights(model, model.base_model.encoder.backbone.conv1[0])
    assert not torch.equal(model.base_model.encoder.backbone.conv1[0].weight, reference["conv1.0.weight"])


def test_image_feature_extraction_pipeline():
    config = _config("conv", num_channels=3)
    model = RecPercAEModel(config).eval()
    extractor = pipeline("image-feature-extraction", model=model, image_processor=image_processor_for(config))
    images = [Image.fromarray(np.full((20, 14, 3), v, dtype=np.uint8)) for v in (10, 200)]
    features = extractor(images)
    assert np.asarray(features[0]).shape[-1] == config.latent_dim
    pooled = extractor(images[0], pool=True, return_tensors=True)
    assert pooled.shape == (1, config.latent_dim)


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_pixel_values(cls):
    config = _config("conv")
    model = cls(config)
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(2, 3, 9, 9))
    with pytest.raises(ValueError, match="image_size"):
        model(pixel_values=torch.randn(2, 2, 8, 8))
    with pytest.raises(ValueError, match="pixel_values"):
        model(pixel_values=torch.randn(2, 9, 9))


@pytest.mark.parametrize("cls", [RecPercAEForPreTraining, RecPercAEForImageClassification])
@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [[0], [1]], [0.0, 1.0]])
def test_bad_labels(cls, labels):
    config = _config("mlp")
    with pytest.raises(ValueError, match="labels"):
        cls(config)(pixel_values=torch.randn(2, 1, 8, 8), labels=torch.tensor(labels))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(guidance=-0.1), "guidance"),
        (dict(guidance=float("nan")), "guidance"),
        (dict(encoder="transformer"), "encoder"),
        (dict(encoder="timm:no_such_net"), "no_such_net"),
        (dict(corruption="gaussian"), "corruption"),
        (dict(corruption="mask:2:4"), "corruption"),
        (dict(reconstruction_target="masked"), "reconstruction_target"),
        (dict(reconstruction_target="some"), "reconstruction_target"),
        (dict(output_activation="tanh"), "output_activation"),
        (dict(latent_dim=0), "latent_dim"),
        (dict(image_size=8.5), "image_size"),
        (dict(image_mean=[0.5, 0.5]), "image_mean"),
        (dict(num_labels=0), "num_labels"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        RecPercAEConfig(**{**VARIANTS["mlp"], **overrides})
