"""The masked autoencoder family: ViTMAE compatibility, hybrid objective, unmasked features, input checks."""

import os

import pytest
import torch
from conftest import TINY_MAE, assert_same_pretraining_outputs
from transformers import (
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    AutoModelForPreTraining,
    ViTMAEConfig,
    ViTMAEForPreTraining,
    ViTMAEModel,
)

from hf_recperc import (
    RecPercMAEConfig,
    RecPercMAEForImageClassification,
    RecPercMAEForPreTraining,
    RecPercMAEModel,
)

TINY = TINY_MAE
NUM_PATCHES = (8 // 2) ** 2
NUM_LABELS = 3
CLASSES = (RecPercMAEModel, RecPercMAEForPreTraining, RecPercMAEForImageClassification)


def _config(**overrides) -> RecPercMAEConfig:
    return RecPercMAEConfig(**{**TINY, "num_labels": NUM_LABELS, **overrides})


def _batch(config, batch_size: int = 3, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    side = config.image_size
    pixels = torch.randn(batch_size, config.num_channels, side, side, generator=generator)
    labels = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    num_patches = (side // config.patch_size) ** 2
    noise = torch.rand(batch_size, num_patches, generator=generator)
    return pixels, labels, noise


def _randomise(model, seed: int = 0):
    """Give every parameter (the frozen sin-cos tables included) distinctive values, like a trained checkpoint."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


@pytest.mark.parametrize("name", RecPercMAEConfig.presets())
@pytest.mark.parametrize("pooling", ["cls", "mean"])
def test_presets_forward_backward(name, pooling):
    config = RecPercMAEConfig.preset(name, pooling=pooling, guidance=0.01)
    model = RecPercMAEForPreTraining(config)
    pixels, labels, noise = _batch(config, batch_size=2)
    out = model(pixel_values=pixels, labels=labels, noise=noise)
    assert out.reconstruction.shape == pixels.shape
    assert out.mask.shape == noise.shape
    assert out.embeddings.shape == out.logits.shape[:1] + (config.hidden_size,)
    assert out.logits.shape == (2, config.num_labels)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.01 * out.supervised_loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


@pytest.mark.parametrize("cls", [RecPercMAEModel, RecPercMAEForImageClassification])
def test_encoder_and_classifier(cls):
    config = _config()
    model = cls(config)
    pixels, labels, _ = _batch(config)
    if cls is RecPercMAEModel:
        out = model(pixel_values=pixels)
        assert out.last_hidden_state.shape == (3, 1 + NUM_PATCHES, config.hidden_size)
        assert out.embeddings.shape == (3, config.hidden_size) and out.pooler_output is out.embeddings
        out.embeddings.sum().backward()
    else:
        out = model(pixel_values=pixels, labels=labels)
        torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, labels))
        out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_fresh_model_has_sincos_position_embeddings():
    """transformers 5.24 leaves them at zero on a fresh ViTMAE; ours must carry position information."""
    model = RecPercMAEForPreTraining(_config())
    table = model.vit.embeddings.position_embeddings[0]  # (1 + L, D)
    assert torch.equal(table[0], torch.zeros_like(table[0]))  # the CLS row
    assert torch.unique(table[1:], dim=0).shape[0] == NUM_PATCHES  # every patch its own position
    assert table.abs().max() <= 1.0
    decoder_table = model.decoder.decoder_pos_embed[0]
    assert torch.unique(decoder_table[1:], dim=0).shape[0] == NUM_PATCHES
    assert model.vit.embeddings.cls_token.abs().sum() > 0 and model.decoder.mask_token.abs().sum() > 0


@pytest.mark.parametrize("norm_pix_loss", [False, True])
def test_vitmae_checkpoint_loads_with_same_loss(norm_pix_loss, tmp_path):
    upstream = ViTMAEForPreTraining(ViTMAEConfig(**TINY, norm_pix_loss=norm_pix_loss))
    _randomise(upstream)
    upstream.save_pretrained(tmp_path)

    model, info = RecPercMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"probe.weight", "probe.bias"}  # the only new weights
    assert not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.config.guidance == 0.0 and model.config.norm_pix_loss == norm_pix_loss

    pixels, labels, noise = _batch(model.config)
    upstream.eval(), model.eval()
    with torch.no_grad():
        expected = upstream(pixel_values=pixels, noise=noise)
        ours = model(pixel_values=pixels, labels=labels % model.config.num_labels, noise=noise)
    assert abs(ours.reconstruction_loss.item() - expected.loss.item()) <= 1e-6
    assert torch.equal(ours.loss, ours.reconstruction_loss)
    assert torch.equal(ours.mask, expected.mask)
    reconstruction = model.to_image(expected.logits, pixels)
    torch.testing.assert_close(ours.reconstruction, reconstruction)

    classifier, info = RecPercMAEForImageClassification.from_pretrained(tmp_path, output_loading_info=True)
    assert set(info["missing_keys"]) == {"classifier.weight", "classifier.bias"}
    for key, value in upstream.vit.state_dict().items():
        assert torch.equal(classifier.vit.state_dict()[key], value), key


def test_our_checkpoint_loads_back_into_vitmae(tmp_path):
    model = RecPercMAEForPreTraining(_config())
    _randomise(model, seed=3)
    model.save_pretrained(tmp_path)
    upstream, info = ViTMAEForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and set(info["unexpected_keys"]) == {"probe.weight", "probe.bias"}
    pixels, _, noise = _batch(model.config)
    model.eval(), upstream.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixels, noise=noise).reconstruction_loss,
            upstream(pixel_values=pixels, noise=noise).loss,
        )


def test_unmasked_encoder_matches_vitmae_without_masking():
    """Our feature path equals ViTMAEModel at mask_ratio 0 with an order-preserving noise."""
    model = RecPercMAEModel(_config(pooling="mean")).eval()
    _randomise(model)
    reference = ViTMAEModel(ViTMAEConfig(**TINY, mask_ratio=0.0)).eval()
    reference.load_state_dict(model.state_dict())
    pixels, _, _ = _batch(model.config)
    keep_order = torch.arange(NUM_PATCHES, dtype=torch.float32).expand(3, -1)
    with torch.no_grad():
        expected = reference(pixel_values=pixels, noise=keep_order).last_hidden_state
        out = model(pixel_values=pixels)
    torch.testing.assert_close(out.last_hidden_state, expected)
    torch.testing.assert_close(out.embeddings, expected[:, 1:].mean(1))


def test_get_embeddings_ignores_masking():
    config = _config()
    model = RecPercMAEForPreTraining(config).eval()
    pixels, _, noise = _batch(config)
    with torch.no_grad():
        features = model.get_embeddings(pixels)
        assert torch.equal(features, model.vit(pixel_values=pixels).embeddings)
        assert torch.equal(features, model.vit(pixel_values=pixels).last_hidden_state[:, 0])  # cls pooling
        masked = model(pixel_values=pixels, noise=noise).embeddings  # visible patches only
    assert features.shape == (3, config.hidden_size) and not torch.allclose(features, masked)


def test_guidance_zero_probe_trains_without_shaping_the_encoder():
    config = _config(guidance=0.0)
    model = RecPercMAEForPreTraining(config)
    pixels, labels, noise = _batch(config)
    out = model(pixel_values=pixels, labels=labels, noise=noise)
    assert torch.equal(out.loss, out.reconstruction_loss)
    encoder_params = [p for p in model.vit.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.supervised_loss, encoder_params, allow_unused=True)
    assert all(g is None for g in grads)
    out.loss.backward()
    assert model.probe.weight.grad.abs().sum() > 0


def test_guidance_positive_shapes_the_encoder():
    config = _config(guidance=0.3)
    model = RecPercMAEForPreTraining(config)
    pixels, labels, noise = _batch(config)
    out = model(pixel_values=pixels, labels=labels, noise=noise)
    torch.testing.assert_close(out.loss, out.reconstruction_loss + 0.3 * out.supervised_loss)
    encoder_params = [p for p in model.vit.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.supervised_loss, encoder_params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("target", ["masked", "all"])
def test_reconstruction_target_in_pixel_space(target):
    config = _config(reconstruction_target=target)
    model = RecPercMAEForPreTraining(config)
    pixels, _, noise = _batch(config)
    out = model(pixel_values=pixels, noise=noise)
    error = (out.reconstruction - pixels) ** 2  # (B, C, H, W)
    if target == "all":
        expected = error.mean()
    else:
        side = config.image_size // config.patch_size
        mask = out.mask.reshape(-1, 1, side, side)  # (B, 1, h, w) patch grid
        mask = mask.repeat_interleave(config.patch_size, 2).repeat_interleave(config.patch_size, 3)
        expected = error[mask.expand_as(error).bool()].mean()
    torch.testing.assert_close(out.reconstruction_loss, expected)
    assert out.mask.sum(1).eq(int(NUM_PATCHES * config.mask_ratio)).all()  # ViTMAE's fixed count


def test_noise_decides_the_mask():
    config = _config()
    model = RecPercMAEForPreTraining(config).eval()
    pixels, _, noise = _batch(config)
    with torch.no_grad():
        a = model(pixel_values=pixels, noise=noise)
        b = model(pixel_values=pixels, noise=noise.clone())
        c = model(pixel_values=pixels, noise=noise.flip(1))
    assert torch.equal(a.reconstruction, b.reconstruction) and torch.equal(a.mask, b.mask)
    assert not torch.equal(a.mask, c.mask)
    kept = noise.argsort(1)[:, : NUM_PATCHES - int(NUM_PATCHES * config.mask_ratio)]
    assert a.mask.gather(1, kept).eq(0).all()  # the smallest noise values are kept


@pytest.mark.parametrize("preset", RecPercMAEConfig.presets())
def test_save_and_reload_through_auto_classes(preset, tmp_path):
    config = RecPercMAEConfig.preset(preset, guidance=0.01, norm_pix_loss=True)
    model = RecPercMAEForPreTraining(config).eval()
    model.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= files
    assert not any(f.endswith((".bin", ".pt", ".pth")) for f in files)

    reloaded, info = AutoModelForPreTraining.from_pretrained(tmp_path, output_loading_info=True)
    assert type(reloaded) is RecPercMAEForPreTraining and not any(
        info[k] for k in ("missing_keys", "unexpected_keys")
    )
    pixels, labels, noise = _batch(config, batch_size=2)
    reloaded.eval()
    with torch.no_grad():
        a = model(pixel_values=pixels, labels=labels, noise=noise)
        b = reloaded(pixel_values=pixels, labels=labels, noise=noise)
    assert_same_pretraining_outputs(a, b)

    encoder = AutoModel.from_pretrained(tmp_path).eval()
    assert type(encoder) is RecPercMAEModel
    with torch.no_grad():
        assert torch.equal(encoder(pixel_values=pixels).embeddings, model.get_embeddings(pixels))
    classifier = AutoModelForImageClassification.from_pretrained(tmp_path)
    assert type(classifier) is RecPercMAEForImageClassification
    processor = AutoImageProcessor.from_pretrained(tmp_path)
    assert processor.size["height"] == config.image_size and list(processor.image_std) == config.image_std


@pytest.mark.parametrize("cls", CLASSES)
def test_bad_pixel_values(cls):
    model = cls(_config())
    with pytest.raises(ValueError, match="channels"):
        model(pixel_values=torch.randn(2, 3, 8, 8))
    with pytest.raises(ValueError, match="image_size"):
        model(pixel_values=torch.randn(2, 2, 12, 12))


def test_bad_labels_and_noise():
    model = RecPercMAEForPreTraining(_config())
    pixels, _, noise = _batch(model.config)
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values=pixels, labels=torch.tensor([0, 1, NUM_LABELS]), noise=noise)
    with pytest.raises(ValueError, match="labels"):
        model(pixel_values=pixels, labels=torch.tensor([0, -1, 1]), noise=noise)
    with pytest.raises(ValueError, match="noise"):
        model(pixel_values=pixels, noise=noise[:, :-1])


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(guidance=-1.0), "guidance"),
        (dict(pooling="max"), "pooling"),
        (dict(reconstruction_target="visible"), "reconstruction_target"),
        (dict(hidden_size=18), "hidden_size"),
        (dict(image_size=9), "image_size"),
        (dict(mask_ratio=1.0), "mask_ratio"),
        (dict(mask_ratio=0.0), "reconstruction_target"),
        (dict(image_mean=[0.5]), "image_mean"),
    ],
)
def test_bad_config(overrides, message):
    with pytest.raises(ValueError, match=message):
        _config(**overrides)


def test_unknown_preset_lists_known_ones():
    with pytest.raises(ValueError, match="cifar-vit-tiny"):
        RecPercMAEConfig.preset("vit-huge")
