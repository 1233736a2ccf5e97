"""Configuration of the autoencoder family, and the configuration helpers both families share.

* :class:`RecPercAEConfig` (``model_type="recperc_ae"``): (denoising) autoencoders with an MLP, a DCAE-style
  convolutional or any timm CNN encoder (docs/science.md section 5).
* :func:`check_config_overrides`, :func:`config_fields` and the ``preset`` mixin, which the MAE family's
  configuration (``hf_recperc/models/mae/configuration_recperc_mae.py``) reuses.

It carries the hybrid objective of docs/science.md, E3: ``loss = reconstruction + guidance * CE(probe(embedding))``.

This module imports no torch (house style: configs stay light and are validated in ``__init__`` with the
offending value in the message). The corruption string is validated with
:func:`hf_recperc.corruption.parse_corruption`, imported inside the validator because that module needs
torch.
"""

from __future__ import annotations

import dataclasses
import difflib
from typing import Any, ClassVar

from huggingface_hub.errors import StrictDataclassError
from transformers import PreTrainedConfig

from ...validation import check_finite_number, check_positive_int, is_finite_number

__all__ = ["RecPercAEConfig", "check_config_overrides", "config_fields"]

AE_ENCODERS = ("mlp", "conv")  # plus "timm:<model name>"
OUTPUT_ACTIVATIONS = ("linear", "sigmoid")
RECONSTRUCTION_TARGETS = ("all", "masked")
POOLINGS = ("cls", "mean")

# timm/torchvision convention for 3-channel images; other channel counts default to mean 0.5, std 0.5.
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _check_num_labels(value: Any) -> None:
    if value is None or value < 1:
        raise ValueError(f"num_labels: expected an integer >= 1 (the probe's classes), got {value!r}")


def _normalisation(name: str, value: Any, num_channels: int, default: list[float]) -> list[float]:
    """Per-channel mean or std for the image processor; ``None`` means the channel-count default."""
    if value is None:
        return list(default) if num_channels == 3 else [0.5] * num_channels
    if isinstance(value, (int, float)):
        value = [value] * num_channels
    if (
        not isinstance(value, (list, tuple))
        or len(value) != num_channels
        or not all(is_finite_number(v) for v in value)
    ):
        raise ValueError(f"{name}: expected {num_channels} numbers (one per channel), got {value!r}")
    if name == "image_std" and any(v <= 0 for v in value):
        raise ValueError(f"image_std: expected positive numbers, got {value!r}")
    return [float(v) for v in value]


def _run_parent_validators(config: PreTrainedConfig) -> None:
    # Subclasses of a `@strict` config do not re-run the parent's `validate_*` checks on construction; run
    # them here and surface their failures as the ValueError our callers expect.
    try:
        config.validate()
    except StrictDataclassError as err:
        raise ValueError(str(err)) from None


# Keywords `PreTrainedConfig.__post_init__` consumes without storing them as dataclass fields or properties.
_INIT_KEYWORDS = ("attn_implementation", "experts_implementation")


def config_fields(config_class: type[PreTrainedConfig]) -> tuple[str, ...]:
    """Every name a configuration of ``config_class`` accepts as a keyword and keeps, sorted.

    That is the dataclass fields of the class and of its parents (``PreTrainedConfig``'s ``id2label``,
    ``ViTMAEConfig``'s ``mask_ratio``, ...), the public settable properties (``num_labels``,
    ``output_attentions``), the ``attribute_map`` aliases and the few keywords ``PreTrainedConfig`` consumes
    (``attn_implementation``). Any other keyword would be stored as a stray attribute (or, through
    ``from_pretrained``, dropped) and silently ignored by the model.
    """
    names = {field.name for field in dataclasses.fields(config_class)}
    names |= {
        name
        for name in dir(config_class)
        if not name.startswith("_")
        and isinstance(getattr(config_class, name, None), property)
        and getattr(config_class, name).fset is not None
    }
    names |= set(getattr(config_class, "attribute_map", {}))
    names |= set(_INIT_KEYWORDS)
    return tuple(sorted(names))


def check_config_overrides(config_class: type[PreTrainedConfig], overrides: dict[str, Any]) -> None:
    """Refuse configuration overrides that name no field of ``config_class`` (a typo would be ignored).

    Call it before ``config_class(**overrides)``, ``config_class.preset(name, **overrides)`` or
    ``config_class.from_pretrained(path, **overrides)``: the first two store an unknown keyword as a stray
    attribute that ``config.json`` keeps and the model never reads, the last one drops it without a word.

    Args:
        config_class: the configuration class (:class:`RecPercAEConfig`, :class:`~hf_recperc.RecPercMAEConfig` or any
            ``PreTrainedConfig`` dataclass).
        overrides: field name -> value, e.g. parsed from ``--config_overrides latent_dim=64``.

    Raises:
        ValueError: for the first unknown name, with the closest valid field, e.g.
            ``config_overrides: unknown field 'latnet_dim' for recperc_ae; did you mean 'latent_dim'?``.
    """
    valid = config_fields(config_class)
    for name in overrides:
        if name in valid:
            continue
        model_type = getattr(config_class, "model_type", "") or config_class.__name__
        close = difflib.get_close_matches(str(name), valid, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"valid fields are {list(valid)}"
        raise ValueError(f"config_overrides: unknown field {name!r} for {model_type}; {hint}")


class _PresetMixin:
    """``Config.preset(name, **overrides)`` and ``Config.presets()`` over a class-level ``_presets`` dict."""

    _presets: ClassVar[dict[str, dict[str, Any]]] = {}

    @classmethod
    def presets(cls) -> tuple[str, ...]:
        """Names accepted by :meth:`preset`."""
        return tuple(cls._presets)

    @classmethod
    def preset(cls, name: str, **overrides: Any):
        """A small named configuration for CPU work; ``overrides`` replace any of its fields.

        Raises:
            ValueError: for an unknown name, listing the known ones, and for an override that names no field
                of the class (see :func:`check_config_overrides`).
        """
        if name not in cls._presets:
            raise ValueError(f"preset {name!r}: unknown for {cls.__name__}; known presets: {cls.presets()}")
        check_config_overrides(cls, overrides)
        return cls(**{**cls._presets[name], **overrides})


class RecPercAEConfig(_PresetMixin, PreTrainedConfig):
    r"""Configuration of the autoencoder family (:class:`~hf_recperc.RecPercAEModel` and heads).

    Args:
        encoder (`str`, defaults to `"conv"`):
            `"mlp"` (fully connected, widths interpolated from the input size to `latent_dim`, BatchNorm + ReLU),
            `"conv"` (DCAE: `depth` stride-2 convolutions with `width * 2**i` channels, transposed convolutions up)
            or `"timm:<name>"` for any timm CNN (`timm:resnet18`, ...), used as a feature extractor followed by a
            linear map to the latent, with a transposed-convolution decoder matching its total stride.
        image_size (`int`, defaults to 32): height and width of the (square) input images.
        num_channels (`int`, defaults to 3): channels of the input images.
        latent_dim (`int`, defaults to 128): size of the latent code, the embedding that probes read.
        depth (`int`, defaults to 3): hidden layers of the MLP encoder (mirrored in the decoder) or stride-2
            stages of the conv encoder. Unused by timm encoders.
        width (`int`, defaults to 32): channels of the first conv stage (doubled at each stage). Unused by MLP
            encoders; the smallest decoder width for timm encoders.
        output_activation (`str`, defaults to `"linear"`): `"linear"` for normalised pixels, `"sigmoid"` for
            pixels in [0, 1] (the authors' MLP).
        corruption (`str`, defaults to `"none"`): noise applied to the input during the forward pass, in the
            string form of :func:`~hf_recperc.corruption.parse_corruption` (`"gaussian:0.1"`, `"mask:0.75:4"`).
        guidance (`float`, defaults to 0.0): weight `g` of the supervised probe term in
            `loss = reconstruction_loss + g * cross_entropy(probe(latent), labels)` (docs/science.md, E3).
        reconstruction_target (`str`, defaults to `"all"`): `"all"` pixels (the theory's setting) or only
            `"masked"` ones (MAE's; needs a masking corruption).
        image_mean, image_std (`list[float]`, *optional*): normalisation the image processor applies; default
            ImageNet statistics for 3 channels, 0.5 otherwise.
        num_labels (`int`, defaults to 2): classes of the probe and of the classification head.
    """

    model_type = "recperc_ae"

    encoder: str = "conv"
    image_size: int = 32
    num_channels: int = 3
    latent_dim: int = 128
    depth: int = 3
    width: int = 32
    output_activation: str = "linear"
    corruption: str = "none"
    guidance: float = 0.0
    reconstruction_target: str = "all"
    image_mean: list[float] | None = None
    image_std: list[float] | None = None

    _presets: ClassVar[dict[str, dict[str, Any]]] = {
        # DCAE on CIFAR-10: 32 -> 16 -> 8 -> 4 with 32/64/128 channels.
        "cifar-conv-small": dict(
            encoder="conv", image_size=32, num_channels=3, latent_dim=128, depth=3, width=32, num_labels=10
        ),
        # The package's default run: scikit-learn's 8x8 grayscale digits, 64 -> 48 -> 32 -> 16.
        "digits-mlp": dict(
            encoder="mlp", image_size=8, num_channels=1, latent_dim=16, depth=2, num_labels=10
        ),
        # The paper's ResNet autoencoder at CIFAR size (docs/science.md section 5).
        "cifar-resnet18": dict(
            encoder="timm:resnet18", image_size=32, num_channels=3, latent_dim=256, width=32, num_labels=10
        ),
    }

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if not isinstance(self.encoder, str) or not (
            self.encoder in AE_ENCODERS or (self.encoder.startswith("timm:") and len(self.encoder) > 5)
        ):
            raise ValueError(
                f"encoder: expected one of {AE_ENCODERS} or 'timm:<model name>', got {self.encoder!r}"
            )
        if self.encoder.startswith("timm:"):
            _check_timm_model(self.encoder[5:])
        for name in ("image_size", "num_channels", "latent_dim", "depth", "width"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        _check_choice("output_activation", self.output_activation, OUTPUT_ACTIVATIONS)
        _check_choice("reconstruction_target", self.reconstruction_target, RECONSTRUCTION_TARGETS)
        self.guidance = check_finite_number("guidance", self.guidance, minimum=0)
        _check_num_labels(self.num_labels)

        from ...corruption import Masking, parse_corruption  # noqa: PLC0415  (torch-free module level)

        corruption = parse_corruption(self.corruption)
        if self.reconstruction_target == "masked" and not isinstance(corruption, Masking):
            raise ValueError(
                f"reconstruction_target='masked' needs a masking corruption ('mask:RATIO:PATCH'), "
                f"got corruption={self.corruption!r}"
            )
        self.image_mean = _normalisation("image_mean", self.image_mean, self.num_channels, IMAGENET_MEAN)
        self.image_std = _normalisation("image_std", self.image_std, self.num_channels, IMAGENET_STD)
        _run_parent_validators(self)


def _check_timm_model(name: str) -> None:
    try:
        import timm  # noqa: PLC0415  (timm imports torch; only needed for timm encoders)
    except ImportError:  # pragma: no cover - timm is a dependency; the model raises a clearer error
        return
    if not timm.is_model(name):
        raise ValueError(
            f"encoder: unknown timm model {name!r} in 'timm:{name}' "
            f"(see timm.list_models(); e.g. 'timm:resnet18')"
        )
