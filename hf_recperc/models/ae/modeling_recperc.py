"""The autoencoder family (``model_type="recperc_ae"``) and the hybrid objective both families share.

Classes:

* :class:`RecPercAEModel`: the encoder alone; ``embeddings`` is the latent code `(batch_size, latent_dim)`.
  Works with the ``image-feature-extraction`` pipeline.
* :class:`RecPercAEForPreTraining`: corruption -> encoder -> decoder, plus a linear probe on the latent, trained
  with the hybrid objective of docs/science.md, E3:
  ``loss = reconstruction_loss + guidance * cross_entropy(probe(latent), labels)``.
* :class:`RecPercAEForImageClassification`: encoder + linear classifier (fine-tuning or a frozen probe).

Encoders (``config.encoder``): ``"mlp"``, ``"conv"`` (DCAE) and ``"timm:<name>"`` for any timm CNN, each paired
with a decoder that maps the latent back to an image of the configured size (docs/science.md section 5).

The module also holds what the MAE family reuses: output dataclasses, label checks and the hybrid loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput, can_return_tuple

from ...corruption import Corruption, parse_corruption
from ...layers import conv_bn_relu
from ...processing import image_processor_for
from ...remote_code import write_remote_code
from ...validation import check_labels as _check_label_ids
from .configuration_recperc import RecPercAEConfig

__all__ = [
    "RecPercModelOutput",
    "RecPercForPreTrainingOutput",
    "RecPercImageClassifierOutput",
    "RecPercAEPreTrainedModel",
    "RecPercAEModel",
    "RecPercAEForPreTraining",
    "RecPercAEForImageClassification",
    "hybrid_loss",
    "probe_logits",
    "check_labels",
    "check_pixel_values",
]


# ----------------------------------------------------------------------------------------------- outputs


@dataclass
class RecPercModelOutput(ModelOutput):
    """Output of the encoder-only models.

    Args:
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The representation probes read: the latent code (AE) or the pooled encoder output (MAE), computed
            from the clean, unmasked image.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
            The same tensor as `embeddings`, under the name the `image-feature-extraction` pipeline reads with
            `pool=True`.
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`, *optional*):
            MAE only: every token of the last encoder layer (CLS first).
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states=True`):
            index 0 the embedding stage (AE: the input images), index `i` the output of encoder block `i`:
            `(batch_size, 1 + num_patches, hidden_size)` tokens (MAE), `(batch_size, C_i, H_i, W_i)` feature maps
            (conv / timm AE) or `(batch_size, width_i)` vectors (MLP AE). With `output_hidden_states` a list of
            indices (transformers' convention), the tuple keeps its length and holds `None` where not selected.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`):
            MAE only: each layer's attention weights `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`
            (eager attention; SDPA computes none, as in ViTMAE).
    """

    embeddings: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    last_hidden_state: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RecPercForPreTrainingOutput(ModelOutput):
    """Output of the ``...ForPreTraining`` models (hybrid objective).

    Args:
        loss (`torch.FloatTensor` of shape `()`):
            `reconstruction_loss + guidance * supervised_loss`. With `guidance == 0` its value is exactly
            `reconstruction_loss`, but it still carries the probe's gradient (see :func:`hybrid_loss`).
        reconstruction_loss (`torch.FloatTensor` of shape `()`): mean squared error on the reconstruction target.
        supervised_loss (`torch.FloatTensor` of shape `()`, *optional*): the probe's cross-entropy; `None`
            without labels.
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): the probe's logits.
        reconstruction (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            the decoded image (MAE: every patch is predicted; with `norm_pix_loss` mapped back to pixel units
            with each target patch's mean and std).
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): what the probe read (the latent of
            the corrupted input for AE, the pooled encoder output of the visible patches for MAE).
        mask (`torch.FloatTensor` of shape `(batch_size, num_patches)`, *optional*): MAE only: ViTMAE's patch
            mask, 1 = masked (`None` for AE).
        pixel_mask (`torch.BoolTensor` of shape `(batch_size, 1, height, width)`, *optional*): which pixels of
            the input were masked (`True`), in both families; `None` when nothing was masked.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states`): the encoder's hidden
            states on the input it was given (corrupted for AE, visible patches for MAE, as ViTMAE returns them).
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`): MAE only, as ViTMAE.
    """

    loss: torch.FloatTensor | None = None
    reconstruction_loss: torch.FloatTensor | None = None
    supervised_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    reconstruction: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    mask: torch.Tensor | None = None
    pixel_mask: torch.Tensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class RecPercImageClassifierOutput(ModelOutput):
    """Output of the ``...ForImageClassification`` models.

    Args:
        loss (`torch.FloatTensor` of shape `()`, *optional*): when labels are given, the loss of
            `config.problem_type` (see :func:`check_classification_labels`).
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): classification scores.
        embeddings (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the classifier's input.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*, with `output_hidden_states`): the encoder's, as in
            :class:`RecPercModelOutput`.
        attentions (`tuple(torch.FloatTensor)`, *optional*, with `output_attentions=True`): MAE only.
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    embeddings: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


# ---------------------------------------------------------------------------------- shared objective


def check_pixel_values(pixel_values: torch.Tensor, num_channels: int, image_size: int | None) -> None:
    """Raise a ValueError naming the mismatch unless ``pixel_values`` is `(B, num_channels, S, S)`.

    ``image_size=None`` skips the size check (models that interpolate their position embeddings).
    """
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = (
            tuple(pixel_values.shape)
            if isinstance(pixel_values, torch.Tensor)
            else type(pixel_values).__name__
        )
        raise ValueError(
            f"pixel_values: expected a tensor of shape (batch_size, num_channels, height, width), got {shape}"
        )
    if pixel_values.shape[1] != num_channels:
        raise ValueError(
            f"pixel_values: got {pixel_values.shape[1]} channels (shape {tuple(pixel_values.shape)}) but the "
            f"config has num_channels={num_channels}"
        )
    if image_size is not None and tuple(pixel_values.shape[2:]) != (image_size, image_size):
        raise ValueError(
            f"pixel_values: got images of size {tuple(pixel_values.shape[2:])} but the config has "
            f"image_size={image_size}; resize them (the saved image processor does)"
        )


def check_labels(labels: torch.Tensor, num_labels: int, batch_size: int) -> None:
    """Raise a ValueError unless ``labels`` is `(batch_size,)` integers in ``[0, num_labels)``."""
    if not isinstance(labels, torch.Tensor):
        raise ValueError(
            f"labels: expected an integer tensor of shape ({batch_size},), got {type(labels).__name__}"
        )
    _check_label_ids("labels", labels, batch_size)  # shape, integer dtype, >= 0: shared with the probes
    # A host sync per check; cross_entropy would otherwise fail with an opaque device assert on CUDA.
    high = labels.max().item()
    if high >= num_labels:
        raise ValueError(
            f"labels: values must lie in [0, {num_labels}) (num_labels), got a maximum of {high}"
        )


def problem_type(config, labels: torch.Tensor) -> str:
    """The classification head's problem: ``config.problem_type``, or when unset transformers' rule for
    ``...ForImageClassification`` (one label: regression; integer labels: single-label; else multi-label)."""
    if config.problem_type is not None:
        return config.problem_type
    if config.num_labels == 1:
        return "regression"
    if not labels.is_floating_point():
        return "single_label_classification"
    return "multi_label_classification"


def check_classification_labels(labels: torch.Tensor, config, batch_size: int) -> None:
    """Raise a ValueError naming the expected form unless ``labels`` fits the head's :func:`problem_type`.

    * ``single_label_classification``: `(batch_size,)` integers in ``[0, num_labels)``;
    * ``regression``: floats, `(batch_size,)` or `(batch_size, num_labels)`;
    * ``multi_label_classification``: floats `(batch_size, num_labels)` (0/1 targets, or probabilities).
    """
    kind = problem_type(config, labels)
    if kind == "single_label_classification":
        check_labels(labels, config.num_labels, batch_size)
        return
    if not isinstance(labels, torch.Tensor) or not labels.is_floating_point():
        raise ValueError(
            f"labels: problem_type {kind!r} expects floating-point labels, got "
            f"{labels.dtype if isinstance(labels, torch.Tensor) else type(labels).__name__}"
        )
    shapes = [(batch_size, config.num_labels)]
    if kind == "regression" and config.num_labels == 1:
        shapes.insert(0, (batch_size,))
    if tuple(labels.shape) not in shapes:
        expected = " or ".join(str(shape) for shape in shapes)
        raise ValueError(f"labels: problem_type {kind!r} expects shape {expected}, got {tuple(labels.shape)}")


def classification_loss(model: PreTrainedModel, logits: torch.Tensor, labels: torch.Tensor | None):
    """The ``...ForImageClassification`` loss (``None`` without labels): labels checked first, then transformers'
    own loss for image classification (``model.loss_function``: cross-entropy, MSE or BCE with logits by
    :func:`problem_type`; it records an inferred problem type in ``config.problem_type``, as transformers does)."""
    if labels is None:
        return None
    check_classification_labels(labels, model.config, logits.shape[0])
    return model.loss_function(labels, logits, model.config)


def select_hidden_states(
    states: tuple[torch.Tensor, ...], output_hidden_states: bool | int | list[int] | None
) -> tuple[torch.Tensor | None, ...] | None:
    """transformers' ``output_hidden_states`` convention: ``True`` keeps every state, an index or a list of
    indices (negative ones count from the end) keeps those and puts ``None`` elsewhere, so positions keep their
    meaning."""
    if not output_hidden_states:  # False, None, and (as in transformers) 0 or an empty list
        return None
    if output_hidden_states is True:
        return states
    indices = [output_hidden_states] if isinstance(output_hidden_states, int) else list(output_hidden_states)
    count = len(states)
    kept = {index % count for index in indices if -count <= index < count}
    return tuple(state if i in kept else None for i, state in enumerate(states))


def output_flag(config, name: str, value):
    """A forward's ``output_*`` keyword, defaulting to the config's value as transformers models do."""
    return getattr(config, name, False) if value is None else value


def probe_logits(probe: nn.Module, embeddings: torch.Tensor, guidance: float) -> torch.Tensor:
    """The probe's logits `(B, num_labels)`; with ``guidance == 0`` it reads a detached copy of ``embeddings``,
    so it measures the features without shaping them (docs/science.md, E3)."""
    return probe(embeddings if guidance > 0 else embeddings.detach())


def hybrid_loss(
    reconstruction_loss: torch.Tensor,
    logits: torch.Tensor,
    labels: torch.Tensor | None,
    guidance: float,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The hybrid objective ``reconstruction_loss + guidance * cross_entropy(logits, labels)``.

    ``logits`` must come from :func:`probe_logits`. With ``guidance == 0`` the probe still has to learn (an
    online probe), so its cross-entropy enters as ``supervised - supervised.detach()``: exactly zero in value, so
    ``loss == reconstruction_loss`` bit for bit, while its gradient reaches the probe, and only the probe, since
    the probe read a detached embedding.

    Returns:
        `(loss, supervised_loss)`, both of shape `()`; `supervised_loss` is `None` without labels.
    """
    if labels is None:
        return reconstruction_loss, None
    check_labels(labels, logits.shape[-1], logits.shape[0])
    supervised_loss = F.cross_entropy(logits, labels)
    if guidance > 0:
        return reconstruction_loss + guidance * supervised_loss, supervised_loss
    return reconstruction_loss + (supervised_loss - supervised_loss.detach()), supervised_loss


def masked_mse(error: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``error`` (squared errors) over the positions where ``mask`` is set (all when ``mask`` is None).

    ``mask`` broadcasts against ``error`` (e.g. `(B, 1, H, W)` against `(B, C, H, W)`).
    """
    if mask is None:
        return error.mean()
    weights = mask.to(error.dtype).expand_as(error)
    # A batch with nothing masked contributes 0 rather than 0 / 0.
    return (error * weights).sum() / weights.sum().clamp_min(1.0)


# ------------------------------------------------------------------------------------ encoders, decoders


def _output_activation(name: str) -> nn.Module:
    return nn.Sigmoid() if name == "sigmoid" else nn.Identity()


class MLPEncoder(nn.Module):
    """Flatten -> (Linear, BatchNorm, ReLU) x depth -> Linear to the latent; widths interpolate linearly from the
    input size to ``latent_dim`` (the authors' MLP autoencoder, docs/science.md section 5)."""

    def __init__(self, config: RecPercAEConfig):
        super().__init__()
        widths = _mlp_widths(config)
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.BatchNorm1d(fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-2], widths[-1]))  # linear latent: probes read it as is
        self.layers = nn.Sequential(*layers)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.layers(pixel_values.flatten(1))  # (B, C*H*W) -> (B, K)

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """`(B, width_i)` after each hidden (Linear, BatchNorm, ReLU) block."""
        return self.forward_with_states(pixel_values)[1]

    def forward_with_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(forward(x), hidden_states(x))`` in one pass."""
        states, hidden = [], pixel_values.flatten(1)
        for layer in self.layers[:-1]:
            hidden = layer(hidden)
            if isinstance(layer, nn.ReLU):
                states.append(hidden)
        return self.layers[-1](hidden), states

    @property
    def num_blocks(self) -> int:
        return sum(isinstance(layer, nn.ReLU) for layer in self.layers)


class MLPDecoder(nn.Module):
    """The mirror of :class:`MLPEncoder`, ending in the configured output activation."""

    def __init__(self, config: RecPercAEConfig):
        super().__init__()
        widths = _mlp_widths(config)[::-1]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-2], widths[1:-1]):
            layers += [nn.Linear(fan_in, fan_out), nn.BatchNorm1d(fan_out), nn.ReLU()]
        layers += [nn.Linear(widths[-2], widths[-1]), _output_activation(config.output_activation)]
        self.layers = nn.Sequential(*layers)
        self.image_shape = (config.num_channels, config.image_size, config.image_size)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        return self.layers(latent).view(-1, *self.image_shape)  # (B, C*H*W) -> (B, C, H, W)


def _mlp_widths(config: RecPercAEConfig) -> list[int]:
    """`[D, ..., K]`: depth + 2 widths evenly spaced from D = C*H*W down (or up) to K = latent_dim."""
    dim = config.num_channels * config.image_size**2
    steps = config.depth + 1
    return [round(dim + (config.latent_dim - dim) * i / steps) for i in range(steps + 1)]


class ConvEncoder(nn.Module):
    """DCAE encoder: ``depth`` stride-2 convolutions (``width * 2**i`` channels), flatten, Linear to the latent."""

    def __init__(self, config: RecPercAEConfig):
        super().__init__()
        channels = [config.num_channels] + [config.width * 2**i for i in range(config.depth)]
        self.stages = nn.Sequential(
            *[conv_bn_relu(a, b, stride=2) for a, b in zip(channels[:-1], channels[1:])]
        )
        side = _halved(config.image_size, config.depth)
        self.to_latent = nn.Linear(channels[-1] * side * side, config.latent_dim)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.stages(pixel_values)  # (B, C', s, s)
        return self.to_latent(features.flatten(1))  # (B, C'*s*s) -> (B, K)

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """`(B, C_i, H_i, W_i)` after each stride-2 stage."""
        return self.forward_with_states(pixel_values)[1]

    def forward_with_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(forward(x), hidden_states(x))`` in one pass."""
        states, hidden = [], pixel_values
        for stage in self.stages:
            hidden = stage(hidden)
            states.append(hidden)
        return self.to_latent(hidden.flatten(1)), states

    @property
    def num_blocks(self) -> int:
        return len(self.stages)


def _halved(size: int, times: int) -> int:
    for _ in range(times):
        size = math.ceil(size / 2)
    return size


class UpsamplingDecoder(nn.Module):
    """Linear from the latent to a `(channels[0], s, s)` map, then one stride-2 transposed convolution per entry
    of ``channels`` (the last one to the image channels), cropped to the image size.

    Args:
        config: gives ``latent_dim``, ``num_channels``, ``image_size``, ``output_activation``.
        channels: feature channels from the deepest map up, e.g. `[128, 64, 32]` for three doublings.
        side: side `s` of the deepest map; `s * 2**len(channels) >= image_size`.
    """

    def __init__(self, config: RecPercAEConfig, channels: list[int], side: int):
        super().__init__()
        self.start_shape = (channels[0], side, side)
        self.from_latent = nn.Sequential(nn.Linear(config.latent_dim, channels[0] * side * side), nn.ReLU())
        layers: list[nn.Module] = []
        for in_channels, out_channels in zip(channels[:-1], channels[1:]):
            # kernel 4, stride 2, padding 1 doubles the side exactly.
            layers += [
                nn.ConvTranspose2d(in_channels, out_channels, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(out_channels),
                nn.ReLU(),
            ]
        layers += [
            nn.ConvTranspose2d(channels[-1], config.num_channels, 4, stride=2, padding=1),
            _output_activation(config.output_activation),
        ]
        self.layers = nn.Sequential(*layers)
        self.image_size = config.image_size

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        features = self.from_latent(latent).view(-1, *self.start_shape)  # (B, C', s, s)
        images = self.layers(features)  # (B, C, s * 2**n, s * 2**n)
        # The encoder rounded odd sides up; cropping undoes that padding.
        return images[:, :, : self.image_size, : self.image_size]


class TimmEncoder(nn.Module):
    """Any timm CNN as a feature extractor (global pooling, no classifier), then Linear to the latent.

    The backbone keeps timm's own initialisation: its modules are tagged ``_recperc_keep_init`` so that
    :meth:`RecPercAEPreTrainedModel._init_weights` leaves them alone. A backbone built on the meta device (as
    ``from_pretrained`` does) never ran timm's initialisation; :meth:`initialise_unloaded_backbone` gives every
    tensor the checkpoint did not provide timm's initial value.
    """

    def __init__(self, config: RecPercAEConfig):
        super().__init__()
        self.backbone_kwargs = dict(
            model_name=config.encoder.removeprefix("timm:"),
            pretrained=False,
            num_classes=0,
            in_chans=config.num_channels,
        )
        self.backbone = _create_timm_model(self.backbone_kwargs)
        for module in self.backbone.modules():
            module._recperc_keep_init = True
        self.backbone_initialised = not any(p.is_meta for p in self.backbone.parameters())
        # What `backbone(x)` returns: `head_hidden_size` when timm's head has a pre-logits layer (MobileNetV3,
        # LCNet, GhostNet, EfficientViT, HGNetV2, MambaOut ...), else the last feature map's `num_features`.
        features = getattr(self.backbone, "head_hidden_size", None) or self.backbone.num_features
        self.to_latent = nn.Linear(features, config.latent_dim)

    @torch.no_grad()
    def initialise_unloaded_backbone(self) -> None:
        """Copy timm's initial values (a fresh CPU build of the same model) into every backbone parameter and
        buffer not loaded from a checkpoint (no ``_is_hf_initialized`` flag), if timm's initialisation never ran."""
        if self.backbone_initialised:
            return
        tensors = [*self.backbone.named_parameters(), *self.backbone.named_buffers()]
        unloaded = [(name, t) for name, t in tensors if not getattr(t, "_is_hf_initialized", False)]
        if unloaded:
            with torch.device("cpu"):
                reference = _create_timm_model(self.backbone_kwargs)
            initial = dict(reference.named_parameters()) | dict(reference.named_buffers())
            for name, tensor in unloaded:
                tensor.copy_(initial[name])
        self.backbone_initialised = True

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.to_latent(self.backbone(pixel_values))  # (B, F) -> (B, K)

    def hidden_states(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        """`(B, C_i, H_i, W_i)` of each feature stage (timm's ``forward_intermediates``)."""
        return list(self.backbone.forward_intermediates(pixel_values, intermediates_only=True))

    def forward_with_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """``(forward(x), hidden_states(x))`` in one pass (timm's final features, then its pooling head)."""
        final, states = self.backbone.forward_intermediates(pixel_values)
        return self.to_latent(self.backbone.forward_head(final)), list(states)

    @property
    def num_blocks(self) -> int:
        return len(self.backbone.feature_info)

    def total_stride(self) -> int:
        """Downsampling factor of the backbone's last feature map (32 for ResNets)."""
        info = getattr(self.backbone, "feature_info", None)
        if info:
            last = info[-1] if isinstance(info, list) else info.get_dicts()[-1]
            return int(last.get("reduction", 32))
        return 32


def _create_timm_model(kwargs: dict) -> nn.Module:
    import timm  # noqa: PLC0415  (only timm encoders need it)

    return timm.create_model(**kwargs)


def build_encoder_decoder(
    config: RecPercAEConfig, with_decoder: bool = True
) -> tuple[nn.Module, nn.Module | None]:
    """The encoder named by ``config.encoder`` and, if asked, its decoder."""
    if config.encoder == "mlp":
        return MLPEncoder(config), MLPDecoder(config) if with_decoder else None
    if config.encoder == "conv":
        encoder = ConvEncoder(config)
        channels = [config.width * 2**i for i in reversed(range(config.depth))]
        side = _halved(config.image_size, config.depth)
        return encoder, UpsamplingDecoder(config, channels, side) if with_decoder else None
    if config.encoder.startswith("timm:"):
        encoder = TimmEncoder(config)
        if not with_decoder:
            return encoder, None
        ups = max(1, round(math.log2(encoder.total_stride())))
        # Mirror a CNN pyramid: channels halve at each doubling, from at most 512 down to at least `width`.
        top = min(encoder.backbone.num_features, 512)
        channels = [max(config.width, top // 2**i) for i in range(ups)]
        side = math.ceil(config.image_size / 2**ups)
        return encoder, UpsamplingDecoder(config, channels, side)
    raise ValueError(f"encoder: unknown encoder {config.encoder!r}")  # the config validates this first


# ------------------------------------------------------------------------------------------------ models


class SavesImageProcessorMixin:
    """``save_pretrained`` that also writes the matching image processor, the family's full ``auto_map`` and the
    code the saved model needs to load with ``trust_remote_code=True`` (:mod:`hf_recperc.remote_code`).

    ``_family_auto_map`` holds every Auto class of the family, so that a saved ``...ForPreTraining`` also loads with
    ``AutoModel`` / ``AutoModelForImageClassification`` and ``trust_remote_code=True``; the family's registration
    (:func:`hf_recperc.models.register_family`) sets it. Code loaded with ``trust_remote_code`` keeps the
    ``auto_map`` of the ``config.json`` it came from.
    """

    _family_auto_map: ClassVar[dict[str, str]] = {}

    def save_pretrained(self, save_directory, *args, **kwargs):
        """``PreTrainedModel.save_pretrained`` (safetensors, the only format of transformers v5), then the image
        processor (``preprocessor_config.json``) from :func:`~hf_recperc.processing.image_processor_for` and the
        remote-code files."""
        if self._family_auto_map:
            self.config.auto_map = dict(self._family_auto_map)
        result = super().save_pretrained(save_directory, *args, **kwargs)
        if kwargs.get("is_main_process", True):
            image_processor_for(self.config).save_pretrained(save_directory)
            write_remote_code(save_directory, type(self), type(self.config))
        return result


class RecPercAEPreTrainedModel(SavesImageProcessorMixin, PreTrainedModel):
    """Shared plumbing: config class, weight initialisation, image processor saving, ``get_embeddings``."""

    config: RecPercAEConfig
    config_class = RecPercAEConfig
    base_model_prefix = "model"
    main_input_name = "pixel_values"
    # Loading the encoder (`AutoModel`) or a classifier from a `...ForPreTraining` checkpoint is the documented
    # use: its decoder and guidance probe are expected to be left out, so transformers reports nothing for them.
    _keys_to_ignore_on_load_unexpected: ClassVar[list[str]] = [r"^decoder\.", r"^probe\."]
    input_modalities = ("image",)

    def _init_weights(self, module: nn.Module) -> None:
        # transformers' default re-draws every Linear/Conv from N(0, 0.02), which would wipe a timm backbone's
        # own initialisation. We only touch our own layers, and give them PyTorch's default initialisation.
        # `initialize_weights` runs under transformers' guard: the torch.nn.init calls below skip loaded tensors.
        if getattr(module, "_recperc_keep_init", False):
            return
        if isinstance(module, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d, nn.BatchNorm1d, nn.BatchNorm2d)):
            module.reset_parameters()

    def initialize_weights(self) -> None:
        """transformers' initialisation (fresh models, and tensors a checkpoint lacks), then timm's own for timm
        backbones built on the meta device, as ``from_pretrained`` builds them. It is done here, not in
        ``_init_weights``: for remote code, transformers never calls ``_init_weights`` on a module without
        parameters of its own (the encoder wrapper), and per-layer hooks cannot tell timm's scheme."""
        super().initialize_weights()
        for module in self.modules():
            if isinstance(module, TimmEncoder):
                module.initialise_unloaded_backbone()

    # Layer probes (hf_recperc.monitors.layers): feature maps and vectors are mean-pooled; there is no CLS token.
    num_prefix_tokens = 0
    default_poolings = ("mean",)

    def get_embeddings(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The latent `(batch_size, latent_dim)` of clean (uncorrupted) images `(batch_size, C, H, W)`.

        Call ``model.eval()`` first: BatchNorm layers would otherwise use batch statistics.
        """
        return self.base_model(pixel_values=pixel_values, return_dict=True).embeddings

    @property
    def num_hidden_layers(self) -> int:
        """Encoder blocks whose outputs :meth:`hidden_states` returns (index 0 is the input)."""
        return self.base_model.encoder.num_blocks

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Clean images `(B, C, H, W)` -> `(input, block_1, ..., block_L)` hidden states (unpooled)."""
        return self.base_model(
            pixel_values=pixel_values, output_hidden_states=True, return_dict=True
        ).hidden_states


class RecPercAEModel(RecPercAEPreTrainedModel):
    """The encoder alone: clean images to latent codes. Usable with the ``image-feature-extraction`` pipeline.

    Args:
        config (:class:`~hf_recperc.RecPercAEConfig`): the model configuration.
    """

    def __init__(self, config: RecPercAEConfig):
        super().__init__(config)
        self.encoder, _ = build_encoder_decoder(config, with_decoder=False)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        **kwargs,
    ) -> RecPercModelOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Images, normalised by the saved image processor. No corruption is applied.
            output_hidden_states (`bool` or `int` or `list[int]`, *optional*): also return the input and every
                block's output (`hidden_states`), or only the selected indices; defaults to
                `config.output_hidden_states`.
            return_dict (`bool`, *optional*): `False` returns the output's non-`None` fields as a tuple; defaults
                to `config.return_dict`.

        Returns:
            :class:`RecPercModelOutput` with `embeddings` (and `pooler_output`) of shape `(batch_size, latent_dim)`.
        """
        check_pixel_values(pixel_values, self.config.num_channels, self.config.image_size)
        embeddings, hidden_states = self.encode(pixel_values, output_hidden_states)
        return RecPercModelOutput(
            embeddings=embeddings, pooler_output=embeddings, hidden_states=hidden_states
        )

    def encode(
        self, pixel_values: torch.Tensor, output_hidden_states: bool | int | list[int] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...] | None]:
        """`(embeddings (B, K), hidden_states)` of ``pixel_values`` as given (clean or corrupted), in one pass;
        ``hidden_states`` is `(input, block_1, ..., block_L)` as selected by ``output_hidden_states``."""
        output_hidden_states = output_flag(self.config, "output_hidden_states", output_hidden_states)
        if not output_hidden_states:
            return self.encoder(pixel_values), None  # (B, K)
        embeddings, states = self.encoder.forward_with_states(pixel_values)  # (B, K), blocks
        return embeddings, select_hidden_states((pixel_values, *states), output_hidden_states)


class RecPercAEForPreTraining(RecPercAEPreTrainedModel):
    """(Denoising) autoencoder trained with the hybrid objective of docs/science.md, E3.

    ``forward`` corrupts the input with ``config.corruption``, encodes it to a latent, decodes an image and scores
    it against the clean input; a linear probe on the latent adds ``guidance * cross_entropy`` when labels are
    given (with ``guidance == 0`` the probe trains on the detached latent and the loss value is the
    reconstruction loss, see :func:`hybrid_loss`).

    Args:
        config (:class:`~hf_recperc.RecPercAEConfig`): the model configuration.
    """

    def __init__(self, config: RecPercAEConfig):
        super().__init__(config)
        # Build the encoder first so that a timm backbone draws the same weights as timm.create_model would
        # with the same seed.
        self.model = RecPercAEModel(config)
        _, self.decoder = build_encoder_decoder(config)
        self.probe = nn.Linear(config.latent_dim, config.num_labels)
        self.corruption: Corruption = parse_corruption(config.corruption)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        **kwargs,
    ) -> RecPercForPreTrainingOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`):
                Clean images; they are both the corrupted input's source and the reconstruction target.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Classes in `[0, num_labels)` for the probe. Without them there is no supervised term.
            generator (`torch.Generator`, *optional*):
                Source of the corruption's randomness (the only random choice of the forward pass), for
                reproducible runs and tests.
            output_hidden_states (`bool` or `int` or `list[int]`, *optional*): the encoder's hidden states on the
                corrupted input (see :meth:`RecPercAEModel.forward`); defaults to `config.output_hidden_states`.
            return_dict (`bool`, *optional*): `False` returns a tuple; defaults to `config.return_dict`.

        Returns:
            :class:`RecPercForPreTrainingOutput`.
        """
        check_pixel_values(pixel_values, self.config.num_channels, self.config.image_size)
        # The corruption applies in eval mode too: it is part of the objective being measured.
        corrupted = self.corruption(pixel_values, generator=generator)
        embeddings, hidden_states = self.model.encode(corrupted.pixel_values, output_hidden_states)  # (B, K)
        reconstruction = self.decoder(embeddings)  # (B, C, H, W)
        logits = probe_logits(self.probe, embeddings, self.config.guidance)  # (B, num_labels)
        loss, reconstruction_loss, supervised_loss = self.forward_loss(
            pixel_values, reconstruction, corrupted.mask, logits, labels
        )
        return RecPercForPreTrainingOutput(
            loss=loss,
            reconstruction_loss=reconstruction_loss,
            supervised_loss=supervised_loss,
            logits=logits,
            reconstruction=reconstruction,
            embeddings=embeddings,
            pixel_mask=corrupted.mask,
            hidden_states=hidden_states,
        )

    def sample_forward_randomness(self, pixel_values: torch.Tensor, generator: torch.Generator) -> dict:
        """The keyword arguments that make ``forward`` deterministic: the corruption's generator."""
        return {"generator": generator}

    def reconstruction_for_metrics(
        self, pixel_values: torch.Tensor, outputs: RecPercForPreTrainingOutput
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """What the reconstruction metrics score: ``decoder(encoder(x))`` of the *clean* image, on every pixel.

        Returns:
            ``(reconstruction, weight)``: `(B, C, H, W)` and ``None`` (every pixel scored).
        """
        if self.corruption.is_identity:
            return outputs.reconstruction, None  # the forward already encoded the clean image
        return self.decoder(self.get_embeddings(pixel_values)), None

    def outputs_for_metrics(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None,
        embeddings: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> tuple[torch.Tensor, None, torch.Tensor]:
        """``(reconstruction, weight, logits)`` the evaluation scores, reusing the clean ``embeddings`` `(B, K)` of
        ``pixel_values`` `(B, C, H, W)`: the reconstruction is ``decoder(encoder(clean x))`` (as
        :meth:`reconstruction_for_metrics`), the logits those of :meth:`forward` (of the corrupted input for a DAE).

        Returns:
            reconstruction `(B, C, H, W)`, ``None`` (every pixel scored), logits `(B, num_labels)`.
        """
        if self.corruption.is_identity:  # forward(x) would encode x again
            return self.decoder(embeddings), None, self.probe(embeddings)
        logits = self(pixel_values=pixel_values, labels=labels, generator=generator).logits
        return self.decoder(embeddings), None, logits

    def forward_loss(
        self,
        pixel_values: torch.Tensor,
        reconstruction: torch.Tensor,
        mask: torch.Tensor | None,
        logits: torch.Tensor,
        labels: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The hybrid loss.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`): clean target.
            reconstruction (`torch.FloatTensor` of the same shape): decoder output.
            mask (`torch.BoolTensor` of shape `(batch_size, 1, height, width)`, *optional*): masked pixels; used
                when `config.reconstruction_target == "masked"`.
            logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): probe output.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*).

        Returns:
            `(loss, reconstruction_loss, supervised_loss)`; `supervised_loss` is `None` without labels.
        """
        error = (reconstruction - pixel_values) ** 2  # (B, C, H, W)
        target_mask = mask if self.config.reconstruction_target == "masked" else None
        reconstruction_loss = masked_mse(error, target_mask)
        loss, supervised_loss = hybrid_loss(reconstruction_loss, logits, labels, self.config.guidance)
        return loss, reconstruction_loss, supervised_loss


class RecPercAEForImageClassification(RecPercAEPreTrainedModel):
    """Encoder + linear classifier on the latent, with the standard `labels` / `logits` / `loss` interface.

    Loading a :class:`RecPercAEForPreTraining` checkpoint into it keeps the encoder and starts a new classifier.

    Args:
        config (:class:`~hf_recperc.RecPercAEConfig`): the model configuration.
    """

    def __init__(self, config: RecPercAEConfig):
        super().__init__(config)
        self.model = RecPercAEModel(config)
        self.classifier = nn.Linear(config.latent_dim, config.num_labels)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        output_hidden_states: bool | int | list[int] | None = None,
        **kwargs,
    ) -> RecPercImageClassifierOutput:
        """
        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, image_size, image_size)`).
            labels (`torch.Tensor`, *optional*): by `config.problem_type` (see :func:`check_classification_labels`):
                classes `(batch_size,)` in `[0, num_labels)`, regression targets or multi-label targets.
            output_hidden_states (`bool` or `int` or `list[int]`, *optional*): the encoder's hidden states.
            return_dict (`bool`, *optional*): `False` returns a tuple; defaults to `config.return_dict`.

        Returns:
            :class:`RecPercImageClassifierOutput`; `loss` when labels are given.
        """
        outputs = self.model(
            pixel_values=pixel_values, output_hidden_states=output_hidden_states, return_dict=True
        )
        logits = self.classifier(outputs.embeddings)  # (B, num_labels)
        return RecPercImageClassifierOutput(
            loss=classification_loss(self, logits, labels),
            logits=logits,
            embeddings=outputs.embeddings,
            hidden_states=outputs.hidden_states,
        )
