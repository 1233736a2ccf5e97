"""The image processor that goes with every hf_recperc model.

:class:`RecPercImageProcessor` is transformers' :class:`~transformers.ViTImageProcessor` (resize to a fixed size,
rescale to [0, 1], normalise per channel) that also converts each image to the model's number of channels, as the
training data path does (:func:`image_mode`): the ``image-feature-extraction`` pipeline hands RGB images to the
processor, which a grayscale model could not read otherwise. The models write it next to their weights in
``save_pretrained``; ``AutoImageProcessor.from_pretrained(model_dir)`` loads it once ``hf_recperc`` is imported,
or anywhere transformers is installed with ``trust_remote_code=True`` (this file is saved with the model and
imports only transformers and torchvision).
"""

from __future__ import annotations

from transformers import PreTrainedConfig, ViTImageProcessor
from transformers.processing_utils import ImagesKwargs

__all__ = ["RecPercImageProcessor", "image_mode", "image_processor_for"]


def image_mode(num_channels: int) -> str | None:
    """The PIL mode an image is converted to for a model with ``num_channels`` channels: ``"L"`` for 1, ``"RGB"``
    for 3, ``None`` (left as it is) otherwise."""
    return {1: "L", 3: "RGB"}.get(num_channels)


class RecPercImageProcessorKwargs(ImagesKwargs, total=False):
    """``ImagesKwargs`` plus ``num_channels``: the channels of the model's ``pixel_values``."""

    num_channels: int | None


class RecPercImageProcessor(ViTImageProcessor):
    """A :class:`~transformers.ViTImageProcessor` whose output has ``num_channels`` channels.

    PIL images are converted to ``"L"`` (1 channel) or ``"RGB"`` (3 channels) before anything else, exactly as the
    trainer decodes its data; tensors and arrays with 3 channels become grayscale (ITU-R 601 luma) for a 1-channel
    model, and 1-channel ones are repeated for a 3-channel model.

    Args:
        num_channels (`int`, defaults to 3): channels of the model's input images.
        **kwargs: every :class:`~transformers.ViTImageProcessor` argument.
    """

    valid_kwargs = RecPercImageProcessorKwargs
    num_channels = 3

    def process_image(self, image, *args, num_channels: int | None = None, **kwargs):
        """One raw image -> a channels-first `(num_channels, height, width)` tensor (before resizing)."""
        num_channels = self.num_channels if num_channels is None else num_channels
        mode = image_mode(num_channels)
        if mode is not None and hasattr(image, "convert"):  # a PIL image
            image = image.convert(mode)
        image = super().process_image(image, *args, **kwargs)  # (C, h, w)
        if num_channels == 1 and image.shape[0] == 3:
            from torchvision.transforms.v2 import functional as tvF  # noqa: PLC0415  (transformers' backend)

            image = tvF.rgb_to_grayscale(image)
        elif num_channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1)
        return image


RecPercImageProcessor.register_for_auto_class("AutoImageProcessor")


def image_processor_for(config: PreTrainedConfig) -> RecPercImageProcessor:
    """The image processor matching ``config``: size ``config.image_size``, ``config.image_mean``/``image_std``,
    images converted to ``config.num_channels`` channels.

    Args:
        config: a :class:`~hf_recperc.RecPercAEConfig` or :class:`~hf_recperc.RecPercMAEConfig` (any config with
            ``image_size``, ``num_channels``, ``image_mean`` and ``image_std``).

    Returns:
        A :class:`RecPercImageProcessor` producing ``pixel_values`` of shape
        `(batch_size, num_channels, image_size, image_size)`.

    Raises:
        ValueError: when the config lacks one of those fields or the statistics do not have one value per channel.
    """
    missing = [
        name
        for name in ("image_size", "num_channels", "image_mean", "image_std")
        if getattr(config, name, None) is None
    ]
    if missing:
        raise ValueError(
            f"config: {type(config).__name__} has no {missing}; cannot build its image processor"
        )
    for name in ("image_mean", "image_std"):
        if len(getattr(config, name)) != config.num_channels:
            raise ValueError(
                f"config.{name}: {getattr(config, name)} has {len(getattr(config, name))} values but "
                f"num_channels={config.num_channels}"
            )
    return RecPercImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
        num_channels=config.num_channels,
    )
