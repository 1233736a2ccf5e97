"""What a run is made of, built from its arguments: the model, the data loaders, the optimiser, the monitors."""

from __future__ import annotations

import logging
import math

import torch

from ..images.datasets import LabelEncoder
from ..images.sources import ImageData
from ..models import preset_for_data
from ..models.ae.configuration_recperc import check_config_overrides
from ..monitors import Monitor, MonitorContext, SpectralBands
from ..monitors import build_monitors as build_registered_monitors
from ..safe_loading import weights_only_loading
from ..validation import check_memory
from .arguments import ModelArguments, PretrainingArguments, model_family, parse_config_overrides

__all__ = [
    "build_model",
    "check_model_memory",
    "resolve_preset",
    "seed_global_generators",
    "build_optimizer",
    "build_schedule",
    "optimizer_update",
    "build_monitors",
]

logger = logging.getLogger(__name__)


def build_model(model_args: ModelArguments, data: ImageData, preset: str | None = None, device=None):
    """The pre-training model: a preset, or a saved model; with the data's labels, guidance and corruption.

    A configuration too large for ``device``'s memory (e.g. the MLP preset at 224 px: 40 billion weights) is a
    one-line error before any weight is allocated (:func:`check_model_memory`).

    A ViTMAE checkpoint (``model_type="vit_mae"``, e.g. a local copy of ``facebook/vit-mae-base``) loads into the
    MAE family; its guidance probe starts fresh. So does the probe of one of our models trained on other labels.
    """
    family = model_family(model_args.model_family)
    config_class, model_class = family.config_class, family.pretraining_class
    overrides = parse_config_overrides(model_args.config_overrides)
    if model_args.guidance is not None:
        overrides["guidance"] = model_args.guidance
    if model_args.corruption is not None and family.corruption_field is not None:
        overrides[family.corruption_field] = model_args.corruption
    encoder = LabelEncoder(data.label_names)
    labels = {"num_labels": data.num_labels, "id2label": encoder.id2label, "label2id": encoder.label2id}
    check_config_overrides(config_class, overrides)  # a typo is an error naming the closest field
    preset = preset or resolve_preset(model_args, data)  # given: resolved once by the run
    try:
        if model_args.model_name_or_path is None:
            config = config_class.preset(preset, **overrides, **labels)
        else:
            config = config_class.from_pretrained(model_args.model_name_or_path, **overrides, **labels)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"config_overrides / guidance / corruption: invalid model configuration: {err}"
        ) from err
    if model_args.model_name_or_path is None:
        check_model_memory(model_class, config, device)
        return model_class(config)
    # The probe's shape follows the data's labels; a checkpoint trained on other labels (or a plain ViTMAE)
    # has another or no probe, which starts fresh.
    with weights_only_loading("model_name_or_path", model_args.model_name_or_path):
        return model_class.from_pretrained(
            model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
        )


# Bytes per weight of an fp32 AdamW run: the weight, its gradient and AdamW's two moments.
_TRAINING_BYTES_PER_WEIGHT = 16


def check_model_memory(model_class, config, device=None) -> None:
    """Refuse a configuration whose weights, gradients and AdamW state alone exceed the memory of ``device``.

    The model is built on PyTorch's ``meta`` device (shapes only, no storage: milliseconds), so the count holds
    for any family. Activations are not counted: this catches only the absurd (a preset's dense layers scaled
    to an image size they were not meant for), not a batch size that is a little too large.

    Raises:
        ValueError: naming ``config_overrides`` / ``preset``, the weight count and the memory needed and available
            (``RECPERC_MEMORY_LIMIT_GB`` overrides the available memory).
    """
    with torch.device("meta"):
        weights = sum(parameter.numel() for parameter in model_class(config).parameters())
    what = (
        f"{model_class.__name__} at image_size {getattr(config, 'image_size', '?')} has {weights:,} weights "
        f"(weights, gradients and AdamW state: {_TRAINING_BYTES_PER_WEIGHT} bytes each)"
    )
    hint = "choose a preset made for this image size (a conv or ViT preset), or a smaller width / latent_dim"
    check_memory("preset / config_overrides", what, weights * _TRAINING_BYTES_PER_WEIGHT, device, hint)


def resolve_preset(model_args: ModelArguments, data: ImageData) -> str | None:
    """``--preset``, or (no preset, no saved model) the preset that fits the data's image size and channels;
    an error names the presets that could fit. ``None`` when a saved model is the start."""
    if model_args.preset is not None or model_args.model_name_or_path is not None:
        return model_args.preset
    num_channels, height, width = data.first_image_shape()
    image_size = parse_config_overrides(model_args.config_overrides).get("image_size", max(height, width))
    return preset_for_data(model_args.model_family, image_size, num_channels)


def seed_global_generators(seed: int, device: torch.device) -> None:
    """``torch.manual_seed`` for what a step can draw from (dropout): on a CPU run only the CPU generator, since
    ``torch.manual_seed`` also queues a lazy CUDA seeding that records a stack trace (milliseconds per step)."""
    if torch.device(device).type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def optimizer_update(accelerator, model, optimizer, scheduler, max_grad_norm: float) -> None:
    """Clip, step, schedule and zero the gradients at the end of an accumulation.

    Where accelerate's wrappers add nothing (no fp16 gradient scaler; one process, DDP on CPUs or GPUs) the torch
    optimiser and ``clip_grad_norm_`` are called directly: ``AcceleratedOptimizer.step`` and ``zero_grad`` look up an
    optional package on every call (a few file-system lookups, about a millisecond per step on a CPU).
    """
    from accelerate.utils import DistributedType  # noqa: PLC0415

    plain = (DistributedType.NO, DistributedType.MULTI_CPU, DistributedType.MULTI_GPU)
    direct = accelerator.scaler is None and accelerator.distributed_type in plain
    inner = optimizer.optimizer if direct else optimizer
    if max_grad_norm > 0:
        if direct:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        else:
            accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    inner.step()
    if not accelerator.optimizer_step_was_skipped:
        scheduler.step()
    inner.zero_grad(set_to_none=True)


def shard_loader(dataset, rows: range, process_index: int, num_processes: int, batch_size: int, **kwargs):
    """This process's own rows ``rows[process_index::num_processes]`` in order: disjoint shards, no padding
    duplicates, so the monitors' ``all_reduce`` reaches the one-process numbers."""
    subset = torch.utils.data.Subset(dataset, rows[process_index::num_processes])
    return torch.utils.data.DataLoader(subset, batch_size=batch_size, **kwargs)


def build_optimizer(
    model: torch.nn.Module, args: PretrainingArguments, learning_rate: float, fused: bool = False
):
    """AdamW without weight decay on biases and normalisation weights; ``fused``: torch's fused kernel (it can skip
    a step on the device, :class:`~hf_recperc.training.guard.NonFiniteGuard`)."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        fused=fused or None,
    )


def build_schedule(args: PretrainingArguments, optimizer: torch.optim.Optimizer, max_steps: int):
    """transformers' learning-rate schedule over ``max_steps`` optimiser steps, with ``--warmup_steps`` or
    ``--warmup_ratio`` of them warming up."""
    from transformers import get_scheduler  # noqa: PLC0415

    warmup = args.warmup_steps or math.ceil(args.warmup_ratio * max_steps)
    return get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup, num_training_steps=max_steps
    )


def build_monitors(args: PretrainingArguments, model, bands: SpectralBands | None) -> list[Monitor]:
    """The monitors ``--monitors`` names, built by the registry (:mod:`hf_recperc.monitors.registry`) from the
    arguments and the model (its layers, pooling) on the embedding."""
    context = MonitorContext(settings=vars(args), model=model, resources={"bands": bands})
    return build_registered_monitors(args.monitors, context)
