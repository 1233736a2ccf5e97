"""The image processor that goes with every hf_recperc model.

We do not define a processor class: transformers' :class:`~transformers.ViTImageProcessor` (resize to a fixed
size, rescale to [0, 1], normalise per channel) is exactly what both model families expect, and a saved one
loads with ``AutoImageProcessor.from_pretrained(model_dir)`` anywhere transformers is installed, with no
remote code. The models write it next to their weights in ``save_pretrained``.
"""

from __future__ import annotations

from transformers import PreTrainedConfig, ViTImageProcessor

__all__ = ["image_processor_for"]


def image_processor_for(config: PreTrainedConfig) -> ViTImageProcessor:
    """The image processor matching ``config``: size ``config.image_size``, ``config.image_mean``/``image_std``.

    Args:
        config: a :class:`~hf_recperc.RecPercAEConfig` or :class:`~hf_recperc.RecPercMAEConfig` (any config with
            ``image_size``, ``num_channels``, ``image_mean`` and ``image_std``).

    Returns:
        A :class:`~transformers.ViTImageProcessor` producing ``pixel_values`` of shape
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
    return ViTImageProcessor(
        do_resize=True,
        size={"height": config.image_size, "width": config.image_size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(config.image_mean),
        image_std=list(config.image_std),
    )
