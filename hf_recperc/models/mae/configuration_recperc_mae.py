"""Configuration of the masked autoencoder family: :class:`RecPercMAEConfig` (``model_type="recperc_mae"``),
transformers' ViTMAE plus a guidance probe. It extends :class:`~transformers.ViTMAEConfig`, so every ViTMAE
checkpoint config loads into it.

It carries the hybrid objective of docs/science.md, E3: ``loss = reconstruction + guidance * CE(probe(embedding))``.
Like every configuration it imports no torch; the shared checks come from the AE family's configuration module.
"""

from __future__ import annotations

from typing import Any, ClassVar

from transformers import ViTMAEConfig

from ...validation import check_finite_number, check_positive_int, is_finite_number
from ..ae.configuration_recperc import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    POOLINGS,
    RECONSTRUCTION_TARGETS,
    _check_choice,
    _check_num_labels,
    _normalisation,
    _PresetMixin,
    _run_parent_validators,
)

__all__ = ["RecPercMAEConfig"]


class RecPercMAEConfig(_PresetMixin, ViTMAEConfig):
    r"""Configuration of the masked autoencoder family: every :class:`~transformers.ViTMAEConfig` field plus

    Args:
        guidance (`float`, defaults to 0.0): weight `g` of the supervised probe term,
            `loss = reconstruction_loss + g * cross_entropy(probe(pooled encoder output), labels)`.
        pooling (`str`, defaults to `"cls"`): how the encoder output becomes the embedding that probes read:
            the `"cls"` token or the `"mean"` of the patch tokens.
        reconstruction_target (`str`, defaults to `"masked"`): MAE's loss on `"masked"` patches only, or on
            `"all"` patches (the theory's setting). `norm_pix_loss` applies to both.
        image_mean, image_std (`list[float]`, *optional*): normalisation of the image processor; default
            ImageNet statistics for 3 channels (as `facebook/vit-mae-*`), 0.5 otherwise.
        num_labels (`int`, defaults to 2): classes of the probe and of the classification head.

    The mask is ViTMAE's own: exactly `int(L * (1 - mask_ratio))` of the `L` patches are kept per image. This
    differs from :class:`~hf_recperc.corruption.Masking`, which masks every patch independently (a random
    number of patches per image), the distribution the linear theory of docs/science.md section 4 describes.
    """

    model_type = "recperc_mae"

    guidance: float = 0.0
    pooling: str = "cls"
    reconstruction_target: str = "masked"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    _presets: ClassVar[dict[str, dict[str, Any]]] = {
        # CIFAR-10: 8x8 = 64 patches of 4x4 px; ViT-Tiny width at half depth, a 2-layer decoder.
        "cifar-vit-tiny": dict(
            image_size=32,
            patch_size=4,
            num_channels=3,
            hidden_size=192,
            num_hidden_layers=6,
            num_attention_heads=3,
            intermediate_size=768,
            decoder_hidden_size=128,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=512,
            mask_ratio=0.75,
            num_labels=10,
        ),
        # 8x8 grayscale digits: 4x4 = 16 patches of 2x2 px.
        "digits-vit-tiny": dict(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=64,
            num_hidden_layers=4,
            num_attention_heads=4,
            intermediate_size=256,
            decoder_hidden_size=64,
            decoder_num_hidden_layers=2,
            decoder_num_attention_heads=4,
            decoder_intermediate_size=256,
            mask_ratio=0.75,
            num_labels=10,
        ),
    }

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("image_size", "patch_size"):
            if not isinstance(getattr(self, name), int):
                raise ValueError(
                    f"{name}: expected an integer (square images and patches), got {getattr(self, name)!r}"
                )
        for name in (
            "image_size",
            "patch_size",
            "num_channels",
            "hidden_size",
            "num_hidden_layers",
            "num_attention_heads",
            "decoder_hidden_size",
            "decoder_num_hidden_layers",
            "decoder_num_attention_heads",
        ):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size: {self.image_size} is not a multiple of patch_size={self.patch_size}"
            )
        for size, heads in (
            ("hidden_size", "num_attention_heads"),
            ("decoder_hidden_size", "decoder_num_attention_heads"),
        ):
            # 4 | size: ViTMAE's 2-D sin-cos position embedding splits the width in four.
            if getattr(self, size) % getattr(self, heads) or getattr(self, size) % 4:
                raise ValueError(
                    f"{size}: {getattr(self, size)} must be a multiple of {heads}={getattr(self, heads)} and of 4"
                )
        if not is_finite_number(self.mask_ratio) or not 0 <= self.mask_ratio < 1:
            raise ValueError(f"mask_ratio: expected a number in [0, 1), got {self.mask_ratio!r}")
        _check_choice("pooling", self.pooling, POOLINGS)
        _check_choice("reconstruction_target", self.reconstruction_target, RECONSTRUCTION_TARGETS)
        if self.reconstruction_target == "masked" and self.mask_ratio == 0:
            raise ValueError(
                "reconstruction_target='masked' needs mask_ratio > 0 (nothing would be scored); "
                "use reconstruction_target='all'"
            )
        self.guidance = check_finite_number("guidance", self.guidance, minimum=0)
        _check_num_labels(self.num_labels)
        self.image_mean = _normalisation("image_mean", self.image_mean, self.num_channels, IMAGENET_MEAN)
        self.image_std = _normalisation("image_std", self.image_std, self.num_channels, IMAGENET_STD)
        _run_parent_validators(self)
