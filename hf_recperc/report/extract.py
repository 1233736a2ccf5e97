"""Hidden states of any vision backbone, for the perception report: loading, preprocessing, one forward pass.

A :class:`Backbone` wraps a transformers model (``AutoModel`` + ``AutoImageProcessor``: ViT, ViTMAE, DINOv2,
ConvNeXt, ResNet, Swin, a CLIP vision tower, ours) or a timm model (``timm:<name>``, ``hf-hub:timm/<name>``, or a
directory written by ``timm.models.save_for_hf``) behind one call: :meth:`Backbone.hidden_states` maps
`(B, C, H, W)` pixels to ``(stage_0, stage_1, ..., stage_L)`` where index 0 is the embedding (or input) stage and
index ``i`` the output of block/stage ``i``, the convention of :func:`hf_recperc.monitors.parse_layers`. Every layer
comes out of the same forward pass; :func:`pooled_features` turns them into the `(B, D)` rows the monitors read.
"""

from __future__ import annotations

import inspect
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..monitors import layer_feature, pool_hidden_state
from ..results import TOKENS
from ..safe_loading import weights_only_loading

__all__ = [
    "Backbone",
    "BackboneError",
    "load_backbone",
    "pooled_features",
    "resolve_poolings",
    "PIXEL_PROCESSOR_HINT",
]

logger = logging.getLogger(__name__)

TIMM_PREFIXES = ("timm:", "hf-hub:timm/")
PIXEL_PROCESSOR_HINT = "save one next to the weights (AutoImageProcessor.from_pretrained(path) must work)"
WEIGHT_SUFFIXES = (".safetensors", ".bin")


class BackboneError(ValueError):
    """The model cannot give what the report reads (hidden states); the message names the model argument. The
    report's dry run passes it on as it is, where other forward errors are blamed on the images' size."""


@dataclass
class Backbone:
    """A vision model reduced to what the report needs.

    Attributes:
        model: the ``nn.Module`` (in eval mode).
        kind: ``"transformers"``, ``"recperc"`` (ours) or ``"timm"``.
        processor: callable ``processor(images: list[PIL.Image], return_tensors="pt")["pixel_values"]`` ->
            `(B, C, H, W)` float tensor (a transformers image processor, or :class:`TimmProcessor`).
        num_channels: 1 or 3 (images are converted to ``L`` or ``RGB`` before the processor).
        num_prefix_tokens: leading CLS/register tokens of the token-sequence hidden states (0 for CNNs, Swin).
        name: what was loaded (Hub id, path, ``timm:<name>``), for the report's provenance.
        default_poolings: poolings used when the caller names none.
        argument: the argument that named the model, for error messages (``model`` for a built module).
        image_size: the square size the processor was asked for (``None``: the processor's own).
    """

    model: nn.Module
    kind: str
    processor: object
    num_channels: int
    num_prefix_tokens: int
    name: str
    default_poolings: tuple[str, ...] = ("mean",)
    extra_forward_kwargs: dict = field(default_factory=dict)
    argument: str = "model_name_or_path"
    image_size: int | None = None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def hidden_states(self, pixel_values: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """One forward pass.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`).

        Returns:
            ``(hidden, pooled)``: ``hidden[i]`` is stage ``i`` (`(B, T, D)` tokens, `(B, C, h, w)` maps or `(B, D)`
            vectors, index 0 the embedding/input stage); ``pooled`` the model's own pooled output `(B, D)` (the
            ``pooler`` pooling: transformers' ``pooler_output``, our ``embeddings``, timm's
            ``forward_head(pre_logits=True)``), or ``None`` when it has none.
        """
        if self.kind == "recperc":  # ours never mask in forward; `embeddings` (get_embeddings) is the pooler
            outputs = self.model(pixel_values=pixel_values, output_hidden_states=True)
            return list(outputs.hidden_states), outputs.embeddings
        if self.kind == "timm":
            return self._timm_hidden_states(pixel_values)
        kwargs = dict(self.extra_forward_kwargs)
        if "noise" in kwargs:  # ViTMAE: an increasing noise keeps every patch in order (see load_backbone)
            num_patches = self.model.embeddings.patch_embeddings.num_patches
            kwargs["noise"] = (
                torch.arange(num_patches, device=pixel_values.device, dtype=torch.float32)
                .expand(pixel_values.shape[0], -1)
                .contiguous()
            )  # (B, L)
        outputs = self.model(pixel_values=pixel_values, output_hidden_states=True, **kwargs)
        hidden = getattr(outputs, "hidden_states", None)
        if not isinstance(hidden, (tuple, list)) or not hidden:
            raise BackboneError(
                f"{self.argument}: {self.name!r} ({type(self.model).__name__}) returns no hidden_states from "
                f"forward(output_hidden_states=True) (it returns {_output_names(outputs)}); the report reads the "
                "per-layer hidden states of a vision backbone (for a detection or segmentation model, its backbone)"
            )
        pooled = getattr(outputs, "pooler_output", None)
        if pooled is not None:
            pooled = pooled.flatten(1)  # CNN poolers give (B, C, 1, 1)
        return list(hidden), pooled

    def _timm_hidden_states(self, pixel_values):
        model = self.model
        if self.num_prefix_tokens:
            # ViT-like: prefix (CLS/register) tokens come back apart from the patch grid; put them in front again
            final, blocks = model.forward_intermediates(pixel_values, return_prefix_tokens=True)
            hidden = [pixel_values]
            for spatial, prefix in blocks:
                tokens = spatial.flatten(2).transpose(1, 2)  # (B, C, h, w) -> (B, h*w, C)
                hidden.append(torch.cat([prefix, tokens], dim=1))  # (B, P + h*w, C)
        else:
            final, blocks = model.forward_intermediates(pixel_values)
            hidden = [pixel_values, *blocks]
        pooled = model.forward_head(final, pre_logits=True).flatten(1)  # (B, D): timm's own pooling
        return hidden, pooled


class TimmProcessor:
    """timm's own evaluation transform (``resolve_data_config`` + ``create_transform``) behind the transformers
    image-processor call: ``processor(images, return_tensors="pt")["pixel_values"]`` -> `(B, C, H, W)`."""

    def __init__(self, model: nn.Module, image_size: int | None = None):
        import timm.data  # noqa: PLC0415

        config = timm.data.resolve_data_config({}, model=model)
        if image_size is not None:
            config["input_size"] = (config["input_size"][0], image_size, image_size)
            config["crop_pct"] = 1.0
        self.config = config
        self.transform = timm.data.create_transform(**config)

    def __call__(self, images, return_tensors: str = "pt") -> dict:
        return {"pixel_values": torch.stack([self.transform(image) for image in images])}


def _output_names(outputs) -> str:
    """What a forward returned, in a few words (the fields of a ``ModelOutput``, else its type)."""
    keys = getattr(outputs, "keys", None)
    return f"fields {list(keys())}" if callable(keys) else f"a {type(outputs).__name__}"


def _check_takes_hidden_states(model: nn.Module, name: str, argument: str) -> None:
    """A transformers-style model must accept ``output_hidden_states`` (by name or through ``**kwargs``)."""
    parameters = inspect.signature(model.forward).parameters.values()
    if not any(p.name == "output_hidden_states" or p.kind is p.VAR_KEYWORD for p in parameters):
        raise BackboneError(
            f"{argument}: {name!r} ({type(model).__name__}) has no output_hidden_states argument in forward, so "
            "its hidden states are out of reach; the report needs a transformers-style vision model"
        )


def _check_channels(processor, num_channels: int, name: str, argument: str) -> None:
    """The processor must normalise as many channels as the model takes (images are converted to ``L`` or ``RGB``
    for the model's channel count before the processor): a mismatch fails deep inside the normalisation."""
    if not getattr(processor, "do_normalize", True):
        return
    for attribute in ("image_mean", "image_std"):
        value = getattr(processor, attribute, None)
        if isinstance(value, (list, tuple)) and len(value) != num_channels:
            where = (
                f"{name}/preprocessor_config.json" if argument == "model_name_or_path" else "image_processor"
            )
            raise ValueError(
                f"{argument}: the model takes {num_channels}-channel images but its image processor ({where}) "
                f"normalises {len(value)} channels ({attribute}={list(value)}); expected {num_channels} value(s)"
            )


def _check_weight_files(path: Path, name: str) -> None:
    """An empty weights file (a copy or a save cut short) is named before transformers tries to parse it."""
    for file in sorted(path.iterdir()) if path.is_dir() else ():
        if file.suffix in WEIGHT_SUFFIXES and file.is_file() and file.stat().st_size == 0:
            raise ValueError(f"model_name_or_path: weights file {str(file)!r} of {name!r} is empty (0 bytes)")


def _is_timm_directory(path: Path) -> bool:
    """A directory written by ``timm.models.save_for_hf``: its config.json names an ``architecture``."""
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        content = json.loads(config.read_text())
    except (OSError, ValueError):  # ValueError: not JSON, not even text (UnicodeDecodeError)
        return False
    return "architecture" in content and "model_type" not in content


def _load_timm(name: str, image_size: int | None) -> tuple[nn.Module, TimmProcessor, str]:
    import timm  # noqa: PLC0415

    if Path(name).expanduser().is_dir():
        spec = f"local-dir:{Path(name).expanduser().resolve()}"
    elif name.startswith("timm:"):
        spec = name[len("timm:") :]
    else:
        spec = name  # hf-hub:timm/<name>
    try:
        with weights_only_loading("model_name_or_path", name):
            model = timm.create_model(spec, pretrained=True)
    except Exception as err:  # unknown name, weights not reachable offline
        raise ValueError(
            f"model_name_or_path: could not create timm model {name!r} with pretrained weights "
            f"({type(err).__name__}: {err}); offline, save it with timm.models.save_for_hf and pass the directory"
        ) from err
    if not hasattr(model, "forward_intermediates"):
        raise ValueError(
            f"model_name_or_path: timm model {name!r} has no forward_intermediates, so its hidden states are out "
            "of reach"
        )
    return model, TimmProcessor(model, image_size), "timm"


def _load_transformers(name: str, trust_remote_code: bool, image_size: int | None):
    from transformers import AutoConfig, AutoImageProcessor, AutoModel  # noqa: PLC0415

    import hf_recperc.models  # noqa: F401, PLC0415  (registers our model families with the Auto classes)

    try:
        config = AutoConfig.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ValueError(
            f"model_name_or_path: could not load a transformers config from {name!r} ({type(err).__name__}: {err})"
        ) from err
    _check_weight_files(Path(name).expanduser(), name)
    # CLIP-like checkpoints: the vision tower is the vision model
    with weights_only_loading("model_name_or_path", name):
        if (
            getattr(config, "vision_config", None) is not None
            and "vision" not in type(config).__name__.lower()
        ):
            model = AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code)
            model = getattr(model, "vision_model", model)
        else:
            model = AutoModel.from_pretrained(name, config=config, trust_remote_code=trust_remote_code)
    if getattr(model, "main_input_name", None) != "pixel_values":
        raise ValueError(
            f"model_name_or_path: {name!r} is a {config.model_type!r} model whose input is "
            f"{getattr(model, 'main_input_name', None)!r}, not a vision model taking pixel_values"
        )
    try:
        processor = AutoImageProcessor.from_pretrained(name, trust_remote_code=trust_remote_code)
    except Exception as err:
        raise ValueError(
            f"model_name_or_path: {name!r} has no image processor ({type(err).__name__}); {PIXEL_PROCESSOR_HINT}"
        ) from err
    if image_size is not None:
        _resize_processor(processor, image_size)
    kind = "recperc" if callable(getattr(model, "hidden_states", None)) else "transformers"
    return model, processor, kind


def _resize_processor(processor, image_size: int) -> None:
    """Ask a transformers image processor for ``image_size`` x ``image_size`` images, in its own size format.

    Processors sized by ``shortest_edge`` (ConvNeXt, ResNet, CLIP) only accept that key (ConvNeXt resizes to
    ``shortest_edge / crop_pct`` and crops the centre square); the others take ``height`` / ``width``. A centre crop
    gets the same square, or it would undo the resize. The dry run checks the size that comes out."""
    size = getattr(processor, "size", None)
    if size is not None and "shortest_edge" in size and "height" not in size:
        processor.size = {"shortest_edge": image_size}
    else:
        processor.size = {"height": image_size, "width": image_size}
    if getattr(processor, "crop_size", None) is not None:
        processor.crop_size = {"height": image_size, "width": image_size}


def _wrap_module(model: nn.Module, image_processor, image_size: int | None) -> tuple[object, str]:
    """The processor and kind (``"timm"``, ``"recperc"`` or ``"transformers"``) of an already built module.

    Raises ValueError naming ``model`` (not a vision model taking ``pixel_values``) or ``image_processor`` (none
    given and none saved next to a transformers module's ``name_or_path``)."""
    name = type(model).__name__
    if hasattr(model, "forward_intermediates") and hasattr(model, "pretrained_cfg"):
        return image_processor or TimmProcessor(model, image_size), "timm"
    kind = "recperc" if callable(getattr(model, "hidden_states", None)) else "transformers"
    if getattr(model, "main_input_name", None) != "pixel_values":
        raise ValueError(f"model: a {name} is not a vision model taking pixel_values")
    processor = image_processor
    if processor is None and getattr(model, "name_or_path", ""):
        from transformers import AutoImageProcessor  # noqa: PLC0415

        try:
            processor = AutoImageProcessor.from_pretrained(model.name_or_path)
        except Exception:
            processor = None
    if processor is None:
        raise ValueError(f"image_processor: required for a built {name}; {PIXEL_PROCESSOR_HINT}")
    return processor, kind


def _load_named(
    name: str, image_processor, trust_remote_code: bool, image_size: int | None
) -> tuple[nn.Module, object, str]:
    """``(model, processor, kind)`` of a Hub id, local directory or ``timm:<name>``; ``image_processor``, when
    given, replaces the loaded processor. Raises ValueError naming ``model_name_or_path``."""
    path = Path(name).expanduser()
    if name.startswith(TIMM_PREFIXES) or (path.is_dir() and _is_timm_directory(path)):
        model, processor, kind = _load_timm(name, image_size)
    else:
        if name.startswith((".", "/", "~")) and not path.exists():
            raise ValueError(f"model_name_or_path: local path {name!r} does not exist")
        model, processor, kind = _load_transformers(name, trust_remote_code, image_size)
    if image_processor is not None:
        processor = image_processor
    return model, processor, kind


def _input_layout(
    model: nn.Module, kind: str, processor, name: str, argument: str, image_processor
) -> tuple[int, int]:
    """``(num_channels, num_prefix_tokens)`` of a loaded backbone; checks that a transformers model returns hidden
    states and that the processor's channels match the model's (ValueError naming ``argument`` or
    ``image_processor``)."""
    if kind == "timm":
        num_channels = int(processor.config["input_size"][0]) if isinstance(processor, TimmProcessor) else 3
        return num_channels, int(getattr(model, "num_prefix_tokens", 0) or 0)
    config = getattr(model, "config", None)
    num_channels = int(getattr(config, "num_channels", 3) or 3)
    num_prefix_tokens = _transformers_prefix_tokens(model, config)
    if kind == "transformers":
        _check_takes_hidden_states(model, name, argument)
    _check_channels(processor, num_channels, name, "image_processor" if image_processor else argument)
    return num_channels, num_prefix_tokens


def _forward_extras(model: nn.Module, kind: str) -> dict:
    """Extra keyword arguments of every forward call (``{"noise": True}`` for ViTMAE, else none)."""
    extra = {}
    if kind == "transformers" and hasattr(getattr(model, "embeddings", None), "random_masking"):
        # ViTMAE masks (and shuffles) patches in its forward. For inference every patch must be seen, in order:
        # mask_ratio 0 keeps them all and an increasing ``noise`` makes the shuffle the identity, so the
        # embeddings equal an unmasked ViT forward (tests/test_report.py checks this).
        model.config.mask_ratio = 0.0
        extra["noise"] = True
    return extra


def load_backbone(
    model_name_or_path: str | nn.Module,
    *,
    image_processor=None,
    trust_remote_code: bool = False,
    image_size: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> Backbone:
    """Load (or wrap) a vision backbone with its preprocessing, in eval mode on ``device``.

    Args:
        model_name_or_path: a Hub id or local directory of a transformers vision model, ``timm:<name>``,
            ``hf-hub:timm/<name>``, a ``save_for_hf`` directory, or an already built ``nn.Module``.
        image_processor: overrides the model's own (required for a built transformers module that was not loaded
            from a directory with one).
        trust_remote_code: passed to the Auto classes.
        image_size: resize images to this square size instead of the processor's.
        device, dtype: where and in which dtype the weights live (``dtype=None`` keeps the saved dtype).

    Raises:
        ValueError: naming ``model_name_or_path`` (not loadable, not a vision model) or ``image_processor``.
    """
    argument = "model_name_or_path"
    if isinstance(model_name_or_path, nn.Module):
        model, name, argument = model_name_or_path, type(model_name_or_path).__name__, "model"
        processor, kind = _wrap_module(model, image_processor, image_size)
    elif not isinstance(model_name_or_path, str) or not model_name_or_path:
        raise ValueError(
            f"model_name_or_path: expected a Hub id, a path or timm:<name>, got {model_name_or_path!r}"
        )
    else:
        name = model_name_or_path
        model, processor, kind = _load_named(name, image_processor, trust_remote_code, image_size)

    model.eval()
    if device is not None or dtype is not None:
        model.to(device=device, dtype=dtype)
    num_channels, num_prefix_tokens = _input_layout(model, kind, processor, name, argument, image_processor)
    extra = _forward_extras(model, kind)
    if kind == "recperc":
        default_poolings = tuple(model.default_poolings)
    else:
        default_poolings = ("cls", "mean") if num_prefix_tokens else ("mean",)
    # the size the processor was asked for (a given processor, or a built transformers module's, is used as it is)
    resized = image_size if image_processor is None and (argument != "model" or kind == "timm") else None
    return Backbone(
        model,
        kind,
        processor,
        num_channels,
        num_prefix_tokens,
        name,
        default_poolings,
        extra,
        argument,
        resized,
    )


def _transformers_prefix_tokens(model: nn.Module, config) -> int:
    """CLS (+ register / distillation) tokens in front of a transformers model's token sequences."""
    if hasattr(model, "num_prefix_tokens"):  # ours
        return int(model.num_prefix_tokens)
    embeddings = getattr(model, "embeddings", None)
    # ViT, DINOv2, ViTMAE, DeiT call it cls_token; CLIP's vision tower class_embedding
    has_cls = any(getattr(embeddings, name, None) is not None for name in ("cls_token", "class_embedding"))
    if embeddings is None or not has_cls:
        return 0  # CNNs, Swin: no CLS token
    count = 1 + int(getattr(config, "num_register_tokens", 0) or 0)
    if getattr(embeddings, "distillation_token", None) is not None:  # DeiT
        count += 1
    return count


def resolve_poolings(
    poolings: Sequence[str] | None,
    default_poolings: Sequence[str],
    pooler_by_default: bool,
    num_layers: int,
    layer_ids: Sequence[int],
) -> list[str]:
    """The poolings a report extracts: the ones asked for, else the model's defaults, plus ``pooler`` (the
    embedding our models' cards report) for a model that has one (``pooler_by_default``) when its last layer is
    probed."""
    chosen = list(dict.fromkeys(poolings or default_poolings))
    if not poolings and pooler_by_default and num_layers in layer_ids:
        chosen = list(dict.fromkeys([*chosen, "pooler"]))
    return chosen


def pooled_features(
    hidden: Sequence[torch.Tensor],
    pooled: torch.Tensor | None,
    layers: Sequence[int],
    poolings: Sequence[str],
    num_prefix_tokens: int,
) -> dict[str, torch.Tensor]:
    """``layer_<i>/<pooling>`` -> `(B, D_i)` float32 rows, for every requested layer and pooling.

    ``pooler`` (the model's own pooled output) exists for the last layer only. ``tokens`` keeps every token of a
    transformer layer, `(B, T, D)` (prefix tokens included), for the token monitors (attentive probe, PCA maps);
    a CNN's `(C, H, W)` feature maps are refused. Features are cast to float32 here: half-precision rows would
    otherwise reach the monitors' statistics as they are.
    """
    last = len(hidden) - 1
    features = {}
    for layer in layers:
        for pooling in poolings:
            if pooling == TOKENS:
                if hidden[layer].ndim != 3:
                    shape = "x".join(str(n) for n in hidden[layer].shape[1:])
                    raise ValueError(
                        f"pooling: '{TOKENS}' needs a token sequence (B, T, D), but layer {layer} of this model "
                        f"gives {shape} per image (a CNN feature map or a vector); use cls or mean"
                    )
                features[layer_feature(layer, pooling)] = hidden[layer].float()  # (B, T, D)
            elif pooling == "pooler":
                if layer != last:
                    continue
                if pooled is None:
                    raise ValueError("pooling: 'pooler' requested, but this model has no pooled output")
                features[layer_feature(layer, pooling)] = pooled.float()
            else:
                # pool in float32: a bf16 mean over tokens would round once more after the forward's own rounding
                row = pool_hidden_state(hidden[layer].float(), pooling, num_prefix_tokens)  # (B, D)
                features[layer_feature(layer, pooling)] = row
    return features
