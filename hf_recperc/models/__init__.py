"""The model families and their one registry.

A family is one package, ``hf_recperc/models/<family>/`` (configuration, modeling), that describes itself in a
:class:`FamilySpec` and calls :func:`register_family` when it is imported. Registering puts it in the registry that
the trainer's arguments and builders, the output directory (its remote-code files) and the model card read, and
registers it with transformers' Auto classes (``AutoConfig``, ``AutoModel``, ``AutoModelForPreTraining``,
``AutoModelForImageClassification``, ``AutoImageProcessor``), transformers' own way for models outside the library.

``import hf_recperc.models`` imports (so registers) the built-in families, ``ae`` and ``mae``; so does using one of
their classes (``hf_recperc.RecPercAEModel``). ``import hf_recperc`` alone stays light and registers nothing. See
docs/design.md, "Adding a model family".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from ..validation import check_positive_int

__all__ = ["FamilySpec", "register_family", "get_family", "family_names", "families", "preset_for_data"]

AUTO_MODEL_CLASSES = ("AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification")


@dataclasses.dataclass(frozen=True)
class FamilySpec:
    """Everything the package needs to know about a model family.

    Args:
        name: the family's name, what users pass as ``--model_family`` (``"ae"``).
        config_class: its ``PreTrainedConfig`` subclass; a ``preset(name, **overrides)`` / ``presets()`` pair and a
            ``_presets`` table (name -> fields with ``image_size`` and ``num_channels``, the preferred one first).
        model_classes: Auto class name -> model class, for each of :data:`AUTO_MODEL_CLASSES`; the trainer builds
            the ``AutoModelForPreTraining`` one.
        image_processor_class: what ``AutoImageProcessor`` builds for the family's config.
        card_tags: the family's Hub tags on the model card (``("autoencoder",)``).
        card_description: the run's corruption (``describe_corruption``'s text) -> the card's first words
            (``"A denoising autoencoder"``).
        describe_corruption: a config -> its input corruption in words, for ``results.json`` and the card.
        corruption_field: the config field ``--corruption`` sets, or ``None`` for a family that corrupts its
            input its own way; ``corruption_hint`` then says how (in the error for ``--corruption``).
    """

    name: str
    config_class: type
    model_classes: Mapping[str, type]
    image_processor_class: type
    card_tags: tuple[str, ...]
    card_description: Callable[[str], str]
    describe_corruption: Callable[[Any], str]
    corruption_field: str | None = "corruption"
    corruption_hint: str = ""

    def __post_init__(self):
        if not self.name.isidentifier():
            raise ValueError(
                f"name: expected a Python identifier (a --model_family value), got {self.name!r}"
            )
        missing = [auto for auto in AUTO_MODEL_CLASSES if auto not in self.model_classes]
        if missing:
            raise ValueError(f"model_classes: family {self.name!r} has no class for {missing}")

    @property
    def pretraining_class(self) -> type:
        """The model the trainer builds (encoder, decoder and guidance probe)."""
        return self.model_classes["AutoModelForPreTraining"]

    @property
    def auto_map(self) -> dict[str, str]:
        """``config.json``'s ``auto_map``: every Auto class -> ``"<module file>.<class>"`` of the remote code."""
        classes = {"AutoConfig": self.config_class, **self.model_classes}
        return {auto: f"{cls.__module__.rpartition('.')[2]}.{cls.__name__}" for auto, cls in classes.items()}

    @property
    def remote_code_files(self) -> frozenset[str]:
        """The ``.py`` files ``save_pretrained`` writes next to the weights (:mod:`hf_recperc.remote_code`)."""
        from ..remote_code import remote_code_sources  # noqa: PLC0415

        return frozenset(remote_code_sources(self.config_class, *self.model_classes.values()))


_FAMILIES: dict[str, FamilySpec] = {}


def register_family(spec: FamilySpec) -> FamilySpec:
    """Add a family to the registry and register its classes with transformers' Auto classes.

    Registering the same configuration class again replaces the entry (a module reload); another family under a
    taken name is an error.
    """
    import transformers  # noqa: PLC0415

    known = _FAMILIES.get(spec.name)
    if known is not None and known.config_class.__qualname__ != spec.config_class.__qualname__:
        raise ValueError(f"family {spec.name!r} is already registered (config {known.config_class.__name__})")
    transformers.AutoConfig.register(spec.config_class.model_type, spec.config_class, exist_ok=True)
    for auto, model_class in spec.model_classes.items():
        getattr(transformers, auto).register(spec.config_class, model_class, exist_ok=True)
        model_class._family_auto_map = spec.auto_map  # what save_pretrained writes to config.json
    transformers.AutoImageProcessor.register(
        spec.config_class, image_processor_classes={"torchvision": spec.image_processor_class}, exist_ok=True
    )
    _FAMILIES[spec.name] = spec
    return spec


def family_names() -> tuple[str, ...]:
    """The registered families' names, in registration order."""
    return tuple(_FAMILIES)


def families() -> tuple[FamilySpec, ...]:
    """Every registered family."""
    return tuple(_FAMILIES.values())


def get_family(name: str, argument: str = "family") -> FamilySpec:
    """The registered family ``name``; ``argument`` names the option in the error for an unknown one."""
    if name not in _FAMILIES:
        raise ValueError(f"{argument}: expected one of {family_names()}, got {name!r}")
    return _FAMILIES[name]


def preset_for_data(family: str, image_size: int, num_channels: int) -> str:
    """The preset to train on images of ``image_size x image_size`` pixels with ``num_channels`` channels.

    Rule: the first preset of the family (in the order of ``Config.presets()``, the preferred one first) whose
    ``image_size`` and ``num_channels`` both equal the data's. No silent resizing: a CIFAR-10 directory gets
    ``cifar-conv-small`` (AE) / ``cifar-vit-tiny`` (MAE), the 8x8 grayscale digits ``digits-mlp`` /
    ``digits-vit-tiny``, and data that no preset matches is refused.

    Args:
        family: a registered family's name, e.g. ``"ae"`` or ``"mae"`` (the trainer's ``--model_family``).
        image_size: side of the (square) images; for other shapes pass the side the images will be resized to.
        num_channels: channels of the images as the model will see them (1 for grayscale, 3 for colour).

    Raises:
        ValueError: when no preset matches, naming the presets that fit once ``image_size`` is overridden
            (same channels and, for the MAE family, an image size divisible by the patch size).
    """
    presets = get_family(family).config_class._presets
    check_positive_int("image_size", image_size)
    check_positive_int("num_channels", num_channels)
    for name, fields in presets.items():
        if fields["image_size"] == image_size and fields["num_channels"] == num_channels:
            return name
    fitting = [
        name
        for name, fields in presets.items()
        if fields["num_channels"] == num_channels and image_size % fields.get("patch_size", 1) == 0
    ]
    known = ", ".join(
        f"{name} ({fields['image_size']}x{fields['image_size']}x{fields['num_channels']})"
        for name, fields in presets.items()
    )
    advice = (
        f"presets that fit with --config_overrides image_size={image_size}: {fitting}"
        if fitting
        else "no preset fits them by its image_size alone; pass --config_overrides image_size=...,num_channels=..."
    )
    raise ValueError(
        f"data: images of {image_size}x{image_size}x{num_channels} (side x side x channels) match no {family} preset "
        f"({known}); {advice}, or resize the images to a preset's size"
    )


# The built-in families register themselves on import (after the registry above exists).
from . import ae, mae  # noqa: E402, F401
