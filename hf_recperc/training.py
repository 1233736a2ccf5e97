"""The Accelerate training loop behind ``accelerate launch scripts/pretrain.py``.

From data to a Hub-ready model: load an image data set (:mod:`hf_recperc.data`), build an AE or MAE
(:mod:`hf_recperc.modeling_recperc`, :mod:`hf_recperc.modeling_recperc_mae`) with the hybrid objective
``reconstruction + guidance * probe cross-entropy`` (PAPER.md E3), train it with Accelerate (one CPU, one or many
GPUs, several nodes: the same code), watch perception while it trains (PAPER.md E4), and write

=============================  ==============================================================================
``config.json``,               the model (``save_pretrained``), loadable with ``AutoModel`` once
``model.safetensors``          ``hf_recperc`` is imported, or with ``trust_remote_code=True``
``preprocessor_config.json``   its image processor (``AutoImageProcessor.from_pretrained``)
``README.md``                  the model card (:mod:`hf_recperc.cards`), with ``model-index`` results
``results.json``               final metrics, every argument, library versions
``history.json``               one flat record per evaluation (the format ``compare_runs`` reads)
``*.png``                      reconstructions, probe accuracy and band errors over training
``checkpoints/``               ``checkpoint-<step>`` directories for ``--resume_from_checkpoint``
``logs/``                      tracker logs (TensorBoard by default)
=============================  ==============================================================================

What each evaluation measures (on the validation split):

* ``eval/reconstruction_mse``: AE: mean squared error of the reconstruction of the *clean* image
  (``decoder(encoder(x))``, no corruption); MAE: mean squared error on the masked patches (ViTMAE's objective,
  in the image processor's units), with masking noise drawn from a fixed seed so that evaluations compare.
* ``eval/online_probe_accuracy``: the model's own linear probe (trained on the fly; with ``guidance == 0`` on the
  detached embedding) on what it was trained to read: the latent of the (corrupted) input for AE, the pooled
  visible patches for MAE.
* ``eval/subspace_probe/{accuracy,dims,explained_variance}/<S>``: :class:`hf_recperc.probing.SubspaceProbe` (the
  same code as the ``evaluate`` metric) on ``model.get_embeddings`` (clean, unmasked images), restricted to the
  embeddings' own PCA subspaces; fitted on the training split's embeddings (streamed, merged across processes)
  and scored on validation.
* ``eval/band_error/<lo>-<hi>``: relative reconstruction error per band of the *pixel* spectrum of the training
  data (PCA of the model's inputs, computed once, streamed and merged across processes): band ``b`` holds the
  components with cumulative explained variance ``lo < c_i <= hi`` (the ``top:p`` rule of PAPER.md section 2)
  and ``error_b = sum ||U_b^T (r - x)||^2 / sum ||U_b^T (x - mean)||^2`` over the validation images, with ``r``
  the reconstruction above (MAE: predicted masked patches pasted into the visible ones).

Resumption is exact: every random draw of a training step (corruption, MAE masking, augmentation, dropout) comes
from a generator seeded by ``(seed, micro-batch index, process index)``, the data order of each epoch from
``(seed, epoch)``, and the checkpoint stores the step counter and the position in the epoch ourselves
(``accelerator.load_state`` does not restore the iteration counter, accelerate#1601).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import re
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.logging import get_logger
from accelerate.utils import ProjectConfiguration, set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from .cli import DataArguments as SharedDataArguments
from .cli import parse_arguments
from .configuration_recperc import RecPercAEConfig, RecPercMAEConfig
from .data import ImageData, processor_transform, random_crop_flip
from .modeling_recperc import RecPercAEForPreTraining
from .modeling_recperc_mae import RecPercMAEForPreTraining
from .probing import SubspaceProbe
from .processing import image_processor_for
from .spectral import PCA, SecondMoments, parse_subspace, subspace_indices

__all__ = [
    "DataArguments",
    "ModelArguments",
    "PretrainingArguments",
    "NonFiniteLossError",
    "SpectralBands",
    "EpochShuffleSampler",
    "parse_args",
    "build_model",
    "train",
    "main",
    "find_checkpoint",
    "score_subspace_probe",
]

logger = get_logger(__name__)

# family -> (config class, pre-training model class, default preset)
FAMILIES = {
    "ae": (RecPercAEConfig, RecPercAEForPreTraining, "digits-mlp"),
    "mae": (RecPercMAEConfig, RecPercMAEForPreTraining, "digits-vit-tiny"),
}
DEFAULT_BAND_EDGES = (0.0, 0.5, 0.8, 0.9, 0.97, 1.0)
MIXED_PRECISION = ("no", "fp16", "bf16")
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
TRAIN_LOSSES = ("loss", "reconstruction_loss", "supervised_loss")


# ------------------------------------------------------------------------------------------------ arguments


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}: expected an integer >= 1{' or None' if allow_none else ''}, got {value!r}")


@dataclass
class DataArguments(SharedDataArguments):
    """What to train on (the shared data flags of :class:`hf_recperc.cli.DataArguments`) and how to augment it."""

    random_crop_padding: int = field(
        default=0, metadata={"help": "Random crop after reflect padding by this many pixels (0: off)."}
    )
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes per data loader."})

    def __post_init__(self):
        if not isinstance(self.random_crop_padding, int) or self.random_crop_padding < 0:
            raise ValueError(
                f"random_crop_padding: expected an integer >= 0, got {self.random_crop_padding!r}"
            )
        if not isinstance(self.dataloader_num_workers, int) or self.dataloader_num_workers < 0:
            raise ValueError(
                f"dataloader_num_workers: expected an integer >= 0, got {self.dataloader_num_workers!r}"
            )


@dataclass
class ModelArguments:
    """Which model to train and with which objective."""

    model_family: str = field(default="ae", metadata={"help": "'ae' (autoencoders) or 'mae' (ViTMAE)."})
    preset: str | None = field(
        default=None,
        metadata={
            "help": "Named configuration: ae: digits-mlp (default), cifar-conv-small, cifar-resnet18; "
            "mae: digits-vit-tiny (default), cifar-vit-tiny."
        },
    )
    model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Start from a saved model (ours, or a ViTMAE checkpoint for --model_family mae)."},
    )
    config_overrides: str | None = field(
        default=None,
        metadata={"help": "Comma-separated config fields, e.g. 'latent_dim=32,depth=3' or 'mask_ratio=0.5'."},
    )
    corruption: str | None = field(
        default=None,
        metadata={
            "help": "AE input noise: 'none', 'gaussian:STD' or 'mask:RATIO:PATCH' (default: the preset's, 'none'). "
            "MAE masks with its config's mask_ratio instead."
        },
    )
    guidance: float | None = field(
        default=None,
        metadata={
            "help": "Weight g of the supervised probe term: loss = reconstruction + g * CE (default 0)."
        },
    )

    def __post_init__(self):
        if self.model_family not in FAMILIES:
            raise ValueError(f"model_family: expected one of {tuple(FAMILIES)}, got {self.model_family!r}")
        if self.preset is not None and self.model_name_or_path is not None:
            raise ValueError(
                f"preset: give either --preset ({self.preset!r}) or --model_name_or_path "
                f"({self.model_name_or_path!r}), not both"
            )
        config_class = FAMILIES[self.model_family][0]
        if self.preset is not None and self.preset not in config_class.presets():
            raise ValueError(
                f"preset: {self.preset!r} is not a {self.model_family} preset; known: {config_class.presets()}"
            )
        if self.model_family == "mae" and self.corruption not in (None, "none"):
            raise ValueError(
                f"corruption: the mae family masks patches itself (ViTMAE's mask_ratio), got {self.corruption!r}; "
                "use --config_overrides mask_ratio=0.75"
            )
        if self.guidance is not None and (not math.isfinite(self.guidance) or self.guidance < 0):
            raise ValueError(f"guidance: expected a finite number >= 0, got {self.guidance!r}")
        _parse_overrides(self.config_overrides)  # fail early on a malformed string


@dataclass
class PretrainingArguments:
    """Optimisation, evaluation, checkpointing, tracking and publishing."""

    output_dir: str = field(default="outputs/recperc", metadata={"help": "Where everything is written."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete checkpoints of an earlier run in output_dir and start over."}
    )
    seed: int = field(default=42, metadata={"help": "Seed of initialisation, data order and noise."})
    num_train_epochs: int = field(default=30, metadata={"help": "Epochs (ignored when max_steps is set)."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimiser steps; overrides num_train_epochs."}
    )
    per_device_train_batch_size: int = field(default=64, metadata={"help": "Batch size per process."})
    per_device_eval_batch_size: int = field(
        default=256, metadata={"help": "Evaluation batch size per process."}
    )
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimiser step."}
    )
    learning_rate: float = field(
        default=1e-3, metadata={"help": "AdamW learning rate (the base rate when --scale_lr is set)."}
    )
    scale_lr: bool = field(
        default=False,
        metadata={
            "help": "MAE's rule: lr = learning_rate * total_batch_size / 256 (total over processes/steps)."
        },
    )
    weight_decay: float = field(default=1e-3, metadata={"help": "AdamW weight decay (not on biases/norms)."})
    adam_beta1: float = field(default=0.9, metadata={"help": "AdamW beta1."})
    adam_beta2: float = field(default=0.999, metadata={"help": "AdamW beta2 (MAE uses 0.95)."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm (0: off)."})
    lr_scheduler_type: str = field(
        default="cosine",
        metadata={"help": "transformers scheduler: cosine, linear, constant_with_warmup, ..."},
    )
    warmup_ratio: float = field(
        default=0.05, metadata={"help": "Warmup as a fraction of the training steps."}
    )
    warmup_steps: int = field(default=0, metadata={"help": "Warmup steps (overrides warmup_ratio when > 0)."})
    mixed_precision: str = field(default="no", metadata={"help": "'no', 'fp16' or 'bf16'."})
    logging_steps: int = field(default=10, metadata={"help": "Log training losses every N steps."})
    eval_steps: int | None = field(
        default=None, metadata={"help": "Evaluate every N steps (default: at the end of every epoch)."}
    )
    checkpointing_steps: int | None = field(
        default=None, metadata={"help": "Checkpoint every N steps (default: at the end of every epoch)."}
    )
    checkpoints_total_limit: int | None = field(
        default=2, metadata={"help": "Keep at most this many checkpoints (oldest deleted first)."}
    )
    resume_from_checkpoint: str | None = field(
        default=None,
        metadata={
            "help": "'latest' (the newest checkpoint in output_dir, or a fresh start) or a checkpoint path."
        },
    )
    report_to: str = field(
        default="tensorboard",
        metadata={"help": "Trackers: 'tensorboard', 'wandb', ..., comma-separated, 'all' or 'none'."},
    )
    probe_subspaces: list[str] = field(
        default_factory=lambda: ["top:0.9", "bottom:0.2", "all"],
        metadata={"help": "Subspaces of the embeddings' PCA for the subspace probe."},
    )
    probe_ridge: float = field(
        default=1e-3, metadata={"help": "Ridge penalty relative to the mean eigenvalue."}
    )
    probe_standardize: bool = field(
        default=False, metadata={"help": "Standardise embeddings before the PCA."}
    )
    probe_max_train_samples: int | None = field(
        default=None, metadata={"help": "Fit the subspace probe on the first N training rows only."}
    )
    band_edges: list[float] = field(
        default_factory=lambda: list(DEFAULT_BAND_EDGES),
        metadata={"help": "Cumulative explained-variance edges of the pixel-spectrum bands, from 0 to 1."},
    )
    spectral_max_dim: int = field(
        default=12288, metadata={"help": "Skip band errors (NaN) above this many pixel values per image."}
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload output_dir to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, 'user/name'."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})

    def __post_init__(self):
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size"):
            _check_positive(name, getattr(self, name))
        for name in ("gradient_accumulation_steps", "logging_steps"):
            _check_positive(name, getattr(self, name))
        for name in ("max_steps", "eval_steps", "checkpointing_steps", "checkpoints_total_limit"):
            _check_positive(name, getattr(self, name), allow_none=True)
        _check_positive("probe_max_train_samples", self.probe_max_train_samples, allow_none=True)
        _check_positive("spectral_max_dim", self.spectral_max_dim)
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "probe_ridge"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
        if self.learning_rate == 0:
            raise ValueError("learning_rate: expected a positive number, got 0")
        for name in ("adam_beta1", "adam_beta2", "warmup_ratio"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name}: expected a number in [0, 1), got {getattr(self, name)!r}")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            raise ValueError(f"warmup_steps: expected an integer >= 0, got {self.warmup_steps!r}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise ValueError(
                f"mixed_precision: expected one of {MIXED_PRECISION}, got {self.mixed_precision!r}"
            )
        if not self.probe_subspaces:
            raise ValueError("probe_subspaces: expected at least one subspace, e.g. top:0.9 bottom:0.2 all")
        self.probe_subspaces = [str(parse_subspace(spec)) for spec in self.probe_subspaces]
        edges = [float(edge) for edge in self.band_edges]
        if (
            len(edges) < 2
            or edges[0] != 0.0
            or edges[-1] != 1.0
            or any(a >= b for a, b in zip(edges, edges[1:]))
        ):
            raise ValueError(
                f"band_edges: expected increasing fractions from 0 to 1 such as 0 0.5 0.8 0.9 0.97 1, got {self.band_edges!r}"
            )
        self.band_edges = edges
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("hub_model_id: --push_to_hub needs --hub_model_id user/name")
        if self.resume_from_checkpoint is not None and self.resume_from_checkpoint != "latest":
            path = Path(self.resume_from_checkpoint)
            if not (path / TRAINER_STATE).is_file():
                raise ValueError(
                    f"resume_from_checkpoint: {self.resume_from_checkpoint!r} is not a checkpoint directory "
                    f"(no {TRAINER_STATE}); pass 'latest' or a path like output_dir/checkpoints/checkpoint-100"
                )


def _parse_overrides(text: str | None) -> dict[str, Any]:
    """``"a=1,b=x,c=true"`` -> ``{"a": 1, "b": "x", "c": True}`` (values parsed as JSON when they can be)."""
    if not text:
        return {}
    overrides = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(
                f"config_overrides: expected 'key=value,key=value', got item {item!r} in {text!r}"
            )
        try:
            overrides[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key.strip()] = value.strip()
    return overrides


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[DataArguments, ModelArguments, PretrainingArguments]:
    """Command line (or a single ``.json`` / ``.yaml`` file of arguments) to the three argument dataclasses."""
    return parse_arguments((DataArguments, ModelArguments, PretrainingArguments), argv)


# -------------------------------------------------------------------------------------------------- model


def build_model(model_args: ModelArguments, data: ImageData):
    """The pre-training model: a preset, or a saved model; with the data's labels, guidance and corruption.

    A ViTMAE checkpoint (``model_type="vit_mae"``, e.g. a local copy of ``facebook/vit-mae-base``) loads into the
    MAE family; its guidance probe starts fresh. So does the probe of one of our models trained on other labels.
    """
    config_class, model_class, default_preset = FAMILIES[model_args.model_family]
    overrides = _parse_overrides(model_args.config_overrides)
    if model_args.guidance is not None:
        overrides["guidance"] = model_args.guidance
    if model_args.corruption is not None and model_args.model_family == "ae":
        overrides["corruption"] = model_args.corruption
    labels = {
        "num_labels": data.num_labels,
        "id2label": dict(enumerate(data.label_names)),
        "label2id": {name: index for index, name in enumerate(data.label_names)},
    }
    try:
        if model_args.model_name_or_path is None:
            config = config_class.preset(model_args.preset or default_preset, **overrides, **labels)
        else:
            config = config_class.from_pretrained(model_args.model_name_or_path, **overrides, **labels)
    except (TypeError, ValueError) as err:
        raise ValueError(
            f"config_overrides / guidance / corruption: invalid model configuration: {err}"
        ) from err
    if model_args.model_name_or_path is None:
        return model_class(config)
    if not Path(model_args.model_name_or_path).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        logger.warning(
            f"HF_HUB_OFFLINE=1: {model_args.model_name_or_path!r} loads only if it is in the Hub cache"
        )
    # The probe's shape follows the data's labels; a checkpoint trained on other labels (or a plain ViTMAE)
    # has another or no probe, which starts fresh.
    return model_class.from_pretrained(
        model_args.model_name_or_path, config=config, ignore_mismatched_sizes=True
    )


def _random_inputs(config, pixel_values: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The explicit randomness of one forward pass: the AE's corruption generator or the MAE's masking noise."""
    if isinstance(config, RecPercMAEConfig):
        batch_size, _, height, width = pixel_values.shape
        num_patches = (height // config.patch_size) * (width // config.patch_size)
        noise = torch.rand(batch_size, num_patches, generator=generator, device=pixel_values.device)  # (B, L)
        return {"noise": noise}
    return {"generator": generator}


def _reconstruction_for_metrics(model, pixel_values, outputs, embeddings):
    """The reconstruction that the validation metrics score, and the region they score it on.

    Returns:
        ``(reconstruction, region)``: `(B, C, H, W)` and `(B, 1, H, W)` float weights, or ``None`` for every pixel.
        AE: ``decoder(encoder(x))`` of the clean image. MAE: masked patches predicted, visible patches copied from
        the input, scored on the masked patches only (a ViT MAE is never asked to reconstruct unmasked images).
    """
    config = model.config
    if isinstance(config, RecPercMAEConfig):
        batch_size, _, height, width = pixel_values.shape
        patch = config.patch_size
        mask = outputs.mask.reshape(
            batch_size, 1, height // patch, width // patch
        )  # (B, 1, h, w), 1 = masked
        mask = mask.repeat_interleave(patch, dim=2).repeat_interleave(patch, dim=3)  # (B, 1, H, W)
        return torch.where(mask.bool(), outputs.reconstruction, pixel_values), mask.to(pixel_values.dtype)
    if model.corruption.is_identity:
        return outputs.reconstruction, None
    return model.decoder(embeddings), None


# --------------------------------------------------------------------------------------------------- data


class EpochShuffleSampler(torch.utils.data.Sampler[int]):
    """A random permutation of ``range(num_samples)`` that depends only on ``(seed, epoch)``.

    Every process draws the same permutation (accelerate then shards the batches), and a resumed run draws the
    epoch's permutation again from scratch: no generator state has to survive a restart.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples = num_samples
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(_derived_seed(self.seed, self.epoch))
        return iter(torch.randperm(self.num_samples, generator=generator).tolist())


def _derived_seed(*keys: int) -> int:
    """A 63-bit seed from integer keys, without the collisions of ``seed + epoch`` (seed 1 epoch 0 = seed 0 epoch 1)."""
    return int(
        np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1)
    )


# --------------------------------------------------------------------------------------- perception metrics


class SpectralBands:
    """Relative reconstruction error per band of the training data's pixel spectrum (PAPER.md E4).

    Band ``b`` with edges ``(lo, hi]`` holds the principal components whose cumulative explained variance
    satisfies ``lo < c_i <= hi`` (so the first band is exactly ``top:hi``). Only the components below the last
    band's lower edge are kept as a basis; the last band's energy is the total minus the others' (the full basis
    is orthonormal), which keeps the cost at ``O(D K)`` per image instead of ``O(D^2)``.

    Args:
        pca: a fitted :class:`~hf_recperc.spectral.PCA` of flattened training images `(N, C*H*W)`.
        edges: increasing cumulative fractions from 0 to 1.
        device: where the per-batch projections run (float64, float32 on MPS which lacks float64).
    """

    def __init__(self, pca: PCA, edges: Sequence[float], device: torch.device | str = "cpu"):
        self.names = [f"{lo:.2f}-{hi:.2f}" for lo, hi in zip(edges[:-1], edges[1:])]
        cumulative = torch.cumsum(pca.explained_variance_ratio_, 0)
        tolerance = 1e-10  # as spectral.subspace_indices: 0.9 must not read as 0.9000000000000001
        band = torch.bucketize(
            cumulative - tolerance, torch.tensor(edges[1:-1], dtype=cumulative.dtype)
        )  # (D,)
        keep = band < len(self.names) - 1
        self.dtype = torch.float32 if torch.device(device).type == "mps" else torch.float64
        self.mean = pca.mean_.to(device=device, dtype=self.dtype)  # (D,)
        self.basis = pca.components_[keep].T.to(device=device, dtype=self.dtype)  # (D, K)
        self.band_of = band[keep].to(device)  # (K,)
        self.dims = torch.bincount(band, minlength=len(self.names)).tolist()

    def energies(
        self, pixel_values: torch.Tensor, reconstruction: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-image band energies of the error and of the centred image.

        Returns:
            ``(error, signal)``, each of shape `(B, num_bands)`: ``||U_b^T (r - x)||^2`` and
            ``||U_b^T (x - mean)||^2``.
        """
        x = pixel_values.flatten(1).to(self.dtype)  # (B, D)
        residual = reconstruction.flatten(1).to(self.dtype) - x  # (B, D)
        centred = x - self.mean  # (B, D)
        return self._per_band(residual), self._per_band(centred)

    def _per_band(self, vectors: torch.Tensor) -> torch.Tensor:
        coordinates = (vectors @ self.basis) ** 2  # (B, K)
        energy = torch.zeros(vectors.shape[0], len(self.names), dtype=self.dtype, device=vectors.device)
        energy.index_add_(1, self.band_of, coordinates)  # (B, bands): all but the last band
        energy[:, -1] = (vectors**2).sum(1) - energy[:, :-1].sum(1)  # complement in an orthonormal basis
        return energy.clamp_min(0)


@torch.no_grad()
def _pixel_spectrum(
    model, accelerator: Accelerator, probe_loader, edges, max_dim: int
) -> SpectralBands | None:
    """PCA of the training images as the model sees them (after the image processor), streamed and all-reduced."""
    config = model.config
    dim = config.num_channels * config.image_size**2
    if dim > max_dim:
        logger.warning(
            f"band errors skipped: {dim} pixel values per image > spectral_max_dim={max_dim} (NaN reported)"
        )
        return None
    moments = SecondMoments()
    for batch in probe_loader:
        moments.update(batch["pixel_values"].to(accelerator.device).flatten(1))  # (B, D)
    moments.all_reduce()
    return SpectralBands(PCA().fit_from_moments(moments), edges, device=accelerator.device)


@torch.no_grad()
def evaluate(model, accelerator: Accelerator, eval_loader, probe_loader, bands: SpectralBands | None, args):
    """Every validation metric of the module docstring, identical on every process.

    Args:
        model: the prepared model.
        eval_loader: the prepared validation loader (``gather_for_metrics`` drops its padding duplicates).
        probe_loader: this process's own shard of the training split (no duplicates, not prepared), for the
            subspace probe.
        bands: the pixel spectrum, or ``None`` to report NaN band errors.
        args: :class:`PretrainingArguments`.

    The corruption / masking noise of the validation pass comes from a fixed seed: every evaluation of a run
    sees the same noise, so that its numbers compare across steps.
    """
    unwrapped = accelerator.unwrap_model(model)
    was_training = unwrapped.training
    unwrapped.eval()
    device = accelerator.device
    # 1. Subspace probe: stream this process's training embeddings, then merge the statistics of all processes.
    probe = SubspaceProbe(
        subspaces=args.probe_subspaces, ridge=args.probe_ridge, standardize=args.probe_standardize
    )
    for batch in probe_loader:
        with accelerator.autocast():
            embeddings = unwrapped.get_embeddings(batch["pixel_values"].to(device))  # (B, hidden)
        probe.partial_fit(embeddings.double(), batch["labels"].to(device))
    probe.all_reduce()
    # 2. Validation pass: one forward with fixed noise per batch, the clean embeddings, the band energies.
    generator = torch.Generator(device=device).manual_seed(
        _derived_seed(args.seed, accelerator.process_index, 1)
    )
    totals: dict[str, Any] = {"squared_error": 0.0, "count": 0.0, "correct": 0, "rows": 0}
    band_error = band_signal = 0.0
    gathered_embeddings, gathered_labels = [], []
    for batch in eval_loader:
        pixel_values, labels = batch["pixel_values"], batch["labels"]
        with accelerator.autocast():
            outputs = unwrapped(
                pixel_values=pixel_values,
                labels=labels,
                **_random_inputs(unwrapped.config, pixel_values, generator),
            )
            embeddings = unwrapped.get_embeddings(pixel_values)  # (B, hidden)
            reconstruction, region = _reconstruction_for_metrics(unwrapped, pixel_values, outputs, embeddings)
        reconstruction = reconstruction.float()
        error = (reconstruction - pixel_values) ** 2  # (B, C, H, W)
        weights = torch.ones_like(error[:, :1]) if region is None else region  # (B, 1, H, W)
        per_image = [
            (error * weights).flatten(1).sum(1, dtype=torch.float64),  # squared error
            weights.expand_as(error).flatten(1).sum(1, dtype=torch.float64),  # values scored
            (outputs.logits.argmax(-1) == labels).double(),  # online probe correct
        ]
        if bands is not None:
            per_image += list(bands.energies(pixel_values, reconstruction))  # 2 x (B, bands)
        gathered = accelerator.gather_for_metrics((embeddings.float(), labels, *per_image))
        gathered_embeddings.append(gathered[0].cpu())
        gathered_labels.append(gathered[1].cpu())
        totals["squared_error"] += float(gathered[2].sum())
        totals["count"] += float(gathered[3].sum())
        totals["correct"] += float(gathered[4].sum())
        totals["rows"] += gathered[4].numel()
        if bands is not None:
            band_error = band_error + gathered[5].sum(0).cpu()
            band_signal = band_signal + gathered[6].sum(0).cpu()
    scores = score_subspace_probe(probe, torch.cat(gathered_embeddings).double(), torch.cat(gathered_labels))
    if was_training:
        unwrapped.train()

    metrics: dict[str, float] = {
        "eval/reconstruction_mse": totals["squared_error"] / max(totals["count"], 1.0),
        "eval/online_probe_accuracy": totals["correct"] / max(totals["rows"], 1),
    }
    for key, value in scores.items():
        if key != "probe":
            metrics[f"eval/subspace_probe/{key}"] = value  # num_train: all processes' rows after all_reduce
    names = (
        bands.names
        if bands is not None
        else [f"{a:.2f}-{b:.2f}" for a, b in zip(args.band_edges, args.band_edges[1:])]
    )
    for index, name in enumerate(names):
        if bands is None or float(band_signal[index]) == 0:
            metrics[f"eval/band_error/{name}"] = float("nan")  # not measured, or an empty band
        else:
            metrics[f"eval/band_error/{name}"] = float(band_error[index] / band_signal[index])
    return metrics


def score_subspace_probe(probe: SubspaceProbe, X: torch.Tensor, y: torch.Tensor) -> dict[str, Any]:
    """``probe.score(X, y)``, with empty subspaces reported instead of raised.

    Early in training embeddings can be degenerate (a ViT MAE's CLS token may vary along one direction holding
    95% of the variance, so ``top:0.9`` keeps no component). One evaluation must not stop the run: an empty
    subspace gets accuracy NaN, 0 dims and explained variance 0.0, with a warning.

    Returns:
        ``accuracy/S``, ``dims/S``, ``explained_variance/S`` for every subspace of ``probe.subspaces``, and
        ``num_train``.
    """
    original = probe.subspaces
    requested = list(original)
    valid = []
    for spec in requested:
        try:
            subspace_indices(spec, probe.explained_variance_ratio_)
            valid.append(spec)
        except ValueError as err:
            # stdlib logger: this helper also runs outside an Accelerator (accelerate's logger needs one).
            logging.getLogger(__name__).warning(f"subspace probe: {err}; reported as NaN")
    scores = {"num_train": int(probe.n_samples_seen_)}
    if valid:
        probe.subspaces = valid  # an estimator parameter: score only what exists, then restore
        try:
            scores.update(probe.score(X, y))
        finally:
            probe.subspaces = original
    for spec in requested:
        scores.setdefault(f"accuracy/{spec}", float("nan"))
        scores.setdefault(f"dims/{spec}", 0)
        scores.setdefault(f"explained_variance/{spec}", 0.0)
    return scores


# ---------------------------------------------------------------------------------------------- checkpoints


def find_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``output_dir/checkpoints``, or ``None``.

    Unfinished checkpoints (``.tmp-...`` directories of a killed run) are ignored.
    """
    directory = Path(output_dir) / "checkpoints"
    found = []
    for path in directory.glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return max(found)[1] if found else None


def _save_checkpoint(
    accelerator: Accelerator, output_dir: Path, step: int, state: dict, total_limit: int | None
):
    """``accelerator.save_state`` into a temporary sibling, then rename: a checkpoint exists whole or not at all."""
    checkpoints = output_dir / "checkpoints"
    final = checkpoints / f"{CHECKPOINT_PREFIX}{step}"
    staging = checkpoints / f".tmp-{CHECKPOINT_PREFIX}{step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while saving
    accelerator.wait_for_everyone()
    accelerator.save_state(str(staging))  # model, optimizer, scheduler, RNG states (one file per process)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        _write_json(staging / TRAINER_STATE, state)
        # A checkpoint of this step may exist (a periodic one, then the final one): set it aside, swap, then
        # delete it, so a kill at any point leaves a whole checkpoint under the final name or beside it.
        aside = checkpoints / f".old-{CHECKPOINT_PREFIX}{step}"
        if final.exists():
            shutil.rmtree(aside, ignore_errors=True)
            os.replace(final, aside)
        os.replace(staging, final)
        shutil.rmtree(aside, ignore_errors=True)
        if total_limit is not None:
            older = sorted(
                (int(p.name.removeprefix(CHECKPOINT_PREFIX)), p)
                for p in checkpoints.glob(f"{CHECKPOINT_PREFIX}*")
                if p.name.removeprefix(CHECKPOINT_PREFIX).isdigit()
            )
            for _, path in older[: max(len(older) - total_limit, 0)]:
                shutil.rmtree(path)
    accelerator.wait_for_everyone()
    return final


def _write_json(path: Path, payload) -> None:
    """Write JSON atomically (temporary file + rename)."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    os.replace(partial, path)


def _publish(staging: Path, output_dir: Path) -> None:
    """Replace ``output_dir`` by the complete ``staging`` directory.

    Two renames on one file system: at no time does ``output_dir`` hold a half-written model. Everything of
    the previous ``output_dir`` that the new run did not write again (checkpoints, logs, and any file of the
    user's own) is carried over: publishing a model never deletes what it did not write.
    """
    previous = output_dir.with_name(f".{output_dir.name}.old-{os.getpid()}")
    if output_dir.exists():
        os.replace(output_dir, previous)
    os.replace(staging, output_dir)
    if previous.exists():
        for entry in previous.iterdir():
            if not (output_dir / entry.name).exists():
                os.replace(entry, output_dir / entry.name)
        shutil.rmtree(previous, ignore_errors=True)


class NonFiniteLossError(RuntimeError):
    """The training loss became NaN or infinite; the message names the step and the last good checkpoint."""


# ------------------------------------------------------------------------------------------------ training


def train(data_args: DataArguments, model_args: ModelArguments, args: PretrainingArguments) -> dict[str, Any]:
    """Train, evaluate, save (and optionally push) a model; returns the content of ``results.json``.

    Runs unchanged on one CPU, one GPU, or many processes (``accelerate launch``). See the module docstring for
    what is written and measured.

    Raises:
        ValueError: bad arguments or data, naming the argument.
        NonFiniteLossError: a NaN/inf loss; the checkpoints written before it are kept, no model is written.
        hf_recperc.cards.HubPushError: ``--push_to_hub`` failed; the local output is complete.
    """
    from . import cards  # noqa: PLC0415  (cards imports huggingface_hub's card machinery, jinja2)

    start_time = time.time()
    output_dir = Path(args.output_dir).resolve()  # '.' has no name to build sibling staging dirs from
    log_with = None if args.report_to == "none" else args.report_to.split(",")
    # 1. One Accelerator for the run: devices, processes, mixed precision, gradient accumulation, trackers.
    accelerator = Accelerator(
        cpu=_no_accelerator_device(),
        mixed_precision=args.mixed_precision,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        log_with=log_with,
        project_config=ProjectConfiguration(
            project_dir=str(output_dir), logging_dir=str(output_dir / "logs")
        ),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but accelerate formed a group of {accelerator.num_processes}: "
            "every process would train alone and overwrite the others' output"
        )
    # 2. Resolve the checkpoint to resume from before any costly work (and refuse to mix two runs' checkpoints).
    resume_dir = _resolve_resume(accelerator, args, output_dir)
    set_seed(args.seed)  # model initialisation

    # 3. Data: train and validation splits with known image and label columns.
    data = data_args.load(seed=args.seed)
    # 4. Model (preset or saved), with the data's labels and the objective's guidance and corruption.
    model = build_model(model_args, data)
    config = model.config
    image_processor = image_processor_for(config)

    # 5. Transforms: the model's image processor, applied per batch when rows are read.
    transform = processor_transform(
        image_processor, data.image_column, data.label_column, config.num_channels, data.label_names
    )
    train_set = data.train.with_transform(transform)
    eval_set = data.validation.with_transform(transform)
    if len(train_set) < args.per_device_train_batch_size * accelerator.num_processes:
        raise ValueError(
            f"per_device_train_batch_size: {args.per_device_train_batch_size} x {accelerator.num_processes} "
            f"process(es) is more than the {len(train_set)} training images"
        )

    # 6. Loaders: shuffled by (seed, epoch), full batches only (BatchNorm); this process's own shard of the
    # training split for the probe statistics (no padding duplicates, merged across processes later).
    sampler = EpochShuffleSampler(len(train_set), args.seed)
    loader_kwargs = {"num_workers": data_args.dataloader_num_workers, "pin_memory": torch.cuda.is_available()}
    train_loader = torch.utils.data.DataLoader(
        train_set,
        batch_size=args.per_device_train_batch_size,
        sampler=sampler,
        drop_last=True,
        **loader_kwargs,
    )
    eval_loader = torch.utils.data.DataLoader(
        eval_set, batch_size=args.per_device_eval_batch_size, **loader_kwargs
    )
    probe_rows = range(min(len(train_set), args.probe_max_train_samples or len(train_set)))
    probe_loader = torch.utils.data.DataLoader(
        torch.utils.data.Subset(
            train_set, probe_rows[accelerator.process_index :: accelerator.num_processes]
        ),
        batch_size=args.per_device_eval_batch_size,
        **loader_kwargs,
    )

    # 7. Optimiser: AdamW without weight decay on biases and normalisation weights; learning rate optionally
    # scaled with the total batch size (MAE: lr = base_lr * total_batch / 256).
    total_batch_size = (
        args.per_device_train_batch_size * accelerator.num_processes * args.gradient_accumulation_steps
    )
    learning_rate = args.learning_rate * total_batch_size / 256 if args.scale_lr else args.learning_rate
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
    )

    # 8. Prepare for the distributed setup; the schedule counts optimiser steps (we step it ourselves, so its
    # length does not depend on the number of processes), and checkpoints hold its state.
    model, optimizer, train_loader, eval_loader = accelerator.prepare(
        model, optimizer, train_loader, eval_loader
    )
    batches_per_epoch = len(train_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / args.gradient_accumulation_steps)
    max_steps = args.max_steps or args.num_train_epochs * steps_per_epoch
    warmup_steps = args.warmup_steps or math.ceil(args.warmup_ratio * max_steps)
    scheduler = get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=warmup_steps, num_training_steps=max_steps
    )
    accelerator.register_for_checkpointing(scheduler)
    eval_every = args.eval_steps or steps_per_epoch
    checkpoint_every = args.checkpointing_steps or steps_per_epoch

    # 9. Pixel spectrum of the training data, once, for the band errors.
    unwrapped = accelerator.unwrap_model(model)
    bands = _pixel_spectrum(unwrapped, accelerator, probe_loader, args.band_edges, args.spectral_max_dim)

    # 10. Resume: weights, optimiser, scheduler and RNG from accelerate; step, data position and history from
    # our own trainer_state.json (load_state does not restore the iteration counter, accelerate#1601).
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "history": [], "train_sums": {}, "train_count": 0}
    if resume_dir is not None:
        accelerator.load_state(str(resume_dir))
        state.update(json.loads((resume_dir / TRAINER_STATE).read_text()))
        logger.info(f"resumed from {resume_dir} at step {state['step']}", main_process_only=True)
    completed_steps, epoch, batch_in_epoch = state["step"], state["epoch"], state["batch_in_epoch"]
    history: list[dict] = state["history"]
    # Running sums since the last evaluation: restored on the main process only, summed over processes later.
    train_sums = dict.fromkeys(TRAIN_LOSSES, 0.0) | (
        state["train_sums"] if accelerator.is_main_process else {}
    )
    train_count = state["train_count"] if accelerator.is_main_process else 0
    last_checkpoint = resume_dir

    # 11. Trackers (TensorBoard by default) with every argument as hyperparameters.
    all_args = {**asdict(data_args), **asdict(model_args), **asdict(args)}
    if log_with:
        accelerator.init_trackers("recperc", config=_tracker_config(all_args))

    # 12. The loop: one optimiser step per `gradient_accumulation_steps` micro-batches.
    logger.info(
        f"training {type(unwrapped).__name__} ({unwrapped.num_parameters():,} parameters) on {data.source}: "
        f"{len(train_set)} train / {len(eval_set)} validation images, {max_steps} steps, total batch "
        f"{total_batch_size}, lr {learning_rate:g}, {accelerator.num_processes} process(es) on {accelerator.device}",
        main_process_only=True,
    )
    progress = tqdm(total=max_steps, initial=completed_steps, disable=not accelerator.is_local_main_process)
    model.train()
    log_sum, log_count = 0.0, 0
    while completed_steps < max_steps:
        # Resume mid-epoch: the epoch's order again, minus the batches the interrupted run consumed.
        loader = (
            accelerator.skip_first_batches(train_loader, batch_in_epoch) if batch_in_epoch else train_loader
        )
        loader.set_epoch(epoch)
        sampler.set_epoch(epoch)
        for batch in loader:
            # Every random draw of this micro-batch is a function of (seed, micro-batch, process): exact resumption.
            seed = _derived_seed(
                args.seed, epoch * batches_per_epoch + batch_in_epoch, accelerator.process_index
            )
            torch.manual_seed(seed)  # dropout, if the configuration has any
            generator = torch.Generator(device=accelerator.device).manual_seed(seed)
            with accelerator.accumulate(model):
                pixel_values = batch["pixel_values"]
                if data_args.random_crop_padding or data_args.random_flip:
                    pixel_values = random_crop_flip(
                        pixel_values,
                        padding=data_args.random_crop_padding,
                        flip=data_args.random_flip,
                        generator=generator,
                    )
                outputs = model(
                    pixel_values=pixel_values,
                    labels=batch["labels"],
                    **_random_inputs(config, pixel_values, generator),
                )
                # A NaN/inf loss on any process stops every process before the weights are touched.
                non_finite = accelerator.reduce((~torch.isfinite(outputs.loss.detach())).float(), "sum")
                if non_finite.item() > 0:
                    raise NonFiniteLossError(
                        f"step {completed_steps + 1}: the training loss is {outputs.loss.item()} (NaN or inf); stopped. "
                        f"Last good checkpoint: {last_checkpoint or 'none (no checkpoint was written yet)'}"
                    )
                accelerator.backward(outputs.loss)
                if accelerator.sync_gradients and args.max_grad_norm > 0:
                    accelerator.clip_grad_norm_(model.parameters(), args.max_grad_norm)
                optimizer.step()
                if accelerator.sync_gradients and not accelerator.optimizer_step_was_skipped:
                    scheduler.step()
                optimizer.zero_grad()
            # Bookkeeping of the position in the data, losses since the last evaluation and log.
            batch_in_epoch += 1
            if batch_in_epoch == batches_per_epoch:
                epoch, batch_in_epoch = epoch + 1, 0
            for name in TRAIN_LOSSES:
                value = getattr(outputs, name)
                train_sums[name] += float(value.detach()) if value is not None else 0.0
            train_count += 1
            log_sum, log_count = log_sum + float(outputs.loss.detach()), log_count + 1
            if not accelerator.sync_gradients:
                continue
            completed_steps += 1
            progress.update(1)
            end_of_epoch = batch_in_epoch == 0
            if completed_steps % args.logging_steps == 0:
                logs = {
                    "train/loss_step": log_sum / log_count,
                    "train/learning_rate": scheduler.get_last_lr()[0],
                }
                progress.set_postfix(loss=f"{logs['train/loss_step']:.4g}")
                if log_with:
                    accelerator.log(logs, step=completed_steps)
                log_sum, log_count = 0.0, 0
            # Evaluate: reconstruction, online probe, subspace probe, band errors; append to the history.
            if (
                completed_steps % eval_every == 0
                or (args.eval_steps is None and end_of_epoch)
                or completed_steps == max_steps
            ):
                record = _history_record(
                    completed_steps,
                    completed_steps / steps_per_epoch,
                    accelerator,
                    train_sums,
                    train_count,
                    scheduler,
                )
                record.update(evaluate(model, accelerator, eval_loader, probe_loader, bands, args))
                history.append(record)
                train_sums, train_count = dict.fromkeys(TRAIN_LOSSES, 0.0), 0
                if log_with:
                    accelerator.log(
                        {k: v for k, v in record.items() if k not in ("step", "epoch")}, step=completed_steps
                    )
                _log_record(record)
            # Checkpoint (atomically) with everything needed to continue exactly from here.
            if (
                completed_steps % checkpoint_every == 0
                or (args.checkpointing_steps is None and end_of_epoch)
                or completed_steps == max_steps
            ):
                sums = _reduced_sums(accelerator, train_sums, train_count)
                last_checkpoint = _save_checkpoint(
                    accelerator,
                    output_dir,
                    completed_steps,
                    {
                        "step": completed_steps,
                        "epoch": epoch,
                        "batch_in_epoch": batch_in_epoch,
                        "history": history,
                        "train_sums": sums[0],
                        "train_count": sums[1],
                    },
                    args.checkpoints_total_limit,
                )
                # The main process now owns the summed losses (as a resumed run would), the others start at 0.
                train_sums = sums[0] if accelerator.is_main_process else dict.fromkeys(TRAIN_LOSSES, 0.0)
                train_count = sums[1] if accelerator.is_main_process else 0
            if completed_steps >= max_steps:
                break
    progress.close()

    # 13. Publish: model, processor, card, results, history, figures in a staging directory renamed at the end.
    final = history[-1]
    results = {
        **final,
        "args": all_args,
        "versions": _versions(),
        "run": {
            "family": model_args.model_family,
            "model_type": type(config).model_type,  # (a ViTMAE checkpoint's config keeps "vit_mae")
            "num_parameters": unwrapped.num_parameters(),
            "dataset": data.source,
            "num_train": len(train_set),
            "num_validation": len(eval_set),
            "label_names": data.label_names,
            "num_processes": accelerator.num_processes,
            "total_batch_size": total_batch_size,
            "effective_learning_rate": learning_rate,
            "max_steps": max_steps,
            "runtime_seconds": round(time.time() - start_time, 1),
            "device": str(accelerator.device),
            "mixed_precision": args.mixed_precision,
            "corruption": getattr(
                config, "corruption", f"vit-mae mask_ratio={getattr(config, 'mask_ratio', None)}"
            ),
            "guidance": config.guidance,
            "spectral_band_dims": bands.dims if bands is not None else None,
        },
    }
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        staging = output_dir.with_name(f".{output_dir.name}.staging-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        unwrapped.save_pretrained(staging)  # config.json, model.safetensors, preprocessor_config.json, code
        _write_json(staging / "results.json", results)
        _write_json(staging / "history.json", history)
        figures = _save_figures(staging, unwrapped, accelerator, eval_set, history, image_processor, args)
        card = cards.render_model_card(results, hub_model_id=args.hub_model_id, figures=figures)
        card.save(staging / "README.md")
        output_dir.parent.mkdir(parents=True, exist_ok=True)
        _publish(staging, output_dir)
        logger.info(f"wrote {output_dir}", main_process_only=True)
    accelerator.wait_for_everyone()
    accelerator.end_training()

    # 14. Optional: upload the whole output directory with our card (never transformers' template).
    if args.push_to_hub and accelerator.is_main_process:
        url = cards.push_to_hub(output_dir, args.hub_model_id, private=args.hub_private)
        logger.info(f"pushed to {url}", main_process_only=True)
    return results


def _no_accelerator_device() -> bool:
    """True on machines without a GPU or other accelerator.

    There, accelerate needs ``cpu=True`` to form a multi-process gloo group (``DistributedType.MULTI_CPU``): without
    it, ``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` start independent single-process runs
    (accelerate 1.15, ``PartialState._prepare_backend``). On a CPU-only machine it changes nothing else.
    """
    accelerator_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator_api is not None:
        return not accelerator_api.is_available()
    return not torch.cuda.is_available()


def _resolve_resume(accelerator: Accelerator, args: PretrainingArguments, output_dir: Path) -> Path | None:
    existing = find_checkpoint(output_dir)
    if args.resume_from_checkpoint == "latest":
        if existing is None:
            logger.info(
                f"--resume_from_checkpoint latest: no checkpoint in {output_dir}; starting fresh",
                main_process_only=True,
            )
        return existing
    if args.resume_from_checkpoint is not None:
        return Path(args.resume_from_checkpoint)
    if existing is not None:
        if not args.overwrite_output_dir:
            raise ValueError(
                f"output_dir: {str(output_dir)!r} holds checkpoints of an earlier run ({existing.name}); pass "
                "--resume_from_checkpoint latest to continue it, or --overwrite_output_dir to start over"
            )
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            shutil.rmtree(output_dir / "checkpoints")
        accelerator.wait_for_everyone()
    return None


def _reduced_sums(
    accelerator: Accelerator, sums: dict[str, float], count: int
) -> tuple[dict[str, float], int]:
    """Loss sums and micro-batch count summed over processes (float64, so the means are exact to print)."""
    values = torch.tensor(
        [sums[name] for name in TRAIN_LOSSES] + [count], dtype=torch.float64, device=accelerator.device
    )
    values = accelerator.reduce(values, "sum").cpu().tolist()
    return dict(zip(TRAIN_LOSSES, values[:-1])), int(values[-1])


def _history_record(step, epoch, accelerator, sums, count, scheduler) -> dict[str, float]:
    """The training half of a history record: mean losses since the last evaluation, over all processes."""
    totals, total_count = _reduced_sums(accelerator, sums, count)
    record: dict[str, Any] = {"step": int(step), "epoch": round(float(epoch), 4)}
    for name in TRAIN_LOSSES:
        record[f"train/{name}"] = totals[name] / total_count if total_count else float("nan")
    record["train/learning_rate"] = float(scheduler.get_last_lr()[0])
    return record


def _log_record(record: dict) -> None:
    subspaces = "  ".join(
        f"{k.split('/')[-1]} {v:.3f}"
        for k, v in record.items()
        if k.startswith("eval/subspace_probe/accuracy/")
    )
    logger.info(
        f"step {record['step']} (epoch {record['epoch']:.2f}): train loss {record['train/loss']:.4g}, "
        f"val mse {record['eval/reconstruction_mse']:.4g}, online probe {record['eval/online_probe_accuracy']:.3f}, "
        f"subspace probe {subspaces}",
        main_process_only=True,
    )


def _tracker_config(all_args: dict) -> dict:
    """Arguments as tracker hyperparameters (TensorBoard accepts only scalars and strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in all_args.items()}


def _versions() -> dict[str, str]:
    import accelerate  # noqa: PLC0415
    import datasets  # noqa: PLC0415
    import huggingface_hub  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    return {
        "hf_recperc": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }


# ------------------------------------------------------------------------------------------------- figures


@torch.no_grad()
def _save_figures(
    directory: Path, model, accelerator, eval_set, history, image_processor, args
) -> dict[str, str]:
    """``reconstructions.png`` (input / corrupted / reconstruction), ``probe_accuracy.png``, ``band_errors.png``.

    Returns:
        ``{description: file name}`` for the model card.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415  (no pyplot: no GUI backend, no global state)

    figures = {}
    # Reconstructions of the first validation images, with the evaluation's fixed noise.
    model.eval()
    count = min(8, len(eval_set))
    batch = eval_set[:count]
    pixel_values = batch["pixel_values"].to(accelerator.device)
    generator = torch.Generator(device=accelerator.device).manual_seed(_derived_seed(args.seed, 0, 1))
    outputs = model(pixel_values=pixel_values, **_random_inputs(model.config, pixel_values, generator))
    if isinstance(model.config, RecPercMAEConfig):
        reconstruction, mask = _reconstruction_for_metrics(model, pixel_values, outputs, None)
        corrupted = pixel_values * (1 - mask)
        rows = {"input": pixel_values, "masked": corrupted, "reconstruction (visible pasted)": reconstruction}
    else:
        generator = torch.Generator(device=accelerator.device).manual_seed(_derived_seed(args.seed, 0, 1))
        corrupted = model.corruption(
            pixel_values, generator=generator
        ).pixel_values  # the forward's first draw
        rows = {
            "input": pixel_values,
            f"corrupted ({model.config.corruption})": corrupted,
            "reconstruction": outputs.reconstruction,
        }
    mean = torch.tensor(image_processor.image_mean, device=pixel_values.device)[:, None, None]
    std = torch.tensor(image_processor.image_std, device=pixel_values.device)[:, None, None]
    # One image for the whole grid (one axes instead of rows x count: matplotlib is slow with many axes).
    size, gap = pixel_values.shape[-1], max(1, pixel_values.shape[-1] // 8)
    grid = torch.ones(len(rows), count, 3, size + gap, size + gap)  # white gaps between images
    for row, images in enumerate(rows.values()):
        images = (images.float() * std + mean).clamp(0, 1).cpu()  # back to [0, 1] pixels
        grid[row, :, :, :size, :size] = images.expand(-1, 3, -1, -1)  # grey -> RGB
    grid = grid.permute(0, 3, 1, 4, 2).reshape(
        len(rows) * (size + gap), count * (size + gap), 3
    )  # (H', W', 3)
    figure = Figure(figsize=(1.0 * count + 1.6, 1.0 * len(rows)))
    axis = figure.add_axes((0.2, 0.02, 0.78, 0.96))
    axis.imshow(grid.numpy(), interpolation="nearest")
    axis.set_xticks([])
    axis.set_yticks([(size + gap) * (row + 0.5) for row in range(len(rows))], list(rows), fontsize=8)
    axis.tick_params(length=0)
    figure.savefig(directory / "reconstructions.png", dpi=100)
    figures["Validation images, their corrupted input and the reconstruction"] = "reconstructions.png"

    steps = [record["step"] for record in history]
    figure = Figure(figsize=(6, 4))
    axis = figure.subplots()
    axis.plot(steps, [r["eval/online_probe_accuracy"] for r in history], marker=".", label="online probe")
    for spec in args.probe_subspaces:
        axis.plot(
            steps,
            [r[f"eval/subspace_probe/accuracy/{spec}"] for r in history],
            marker=".",
            label=f"subspace probe {spec}",
        )
    axis.set(xlabel="optimiser step", ylabel="validation accuracy", title="Perception while training")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figure.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)  # tight_layout is slow
    figure.savefig(directory / "probe_accuracy.png", dpi=100)
    figures["Probe accuracy over training"] = "probe_accuracy.png"

    band_keys = [k for k in history[-1] if k.startswith("eval/band_error/")]
    if all(math.isfinite(history[-1][k]) for k in band_keys):
        figure = Figure(figsize=(6, 4))
        axis = figure.subplots()
        for key in band_keys:
            axis.plot(steps, [r[key] for r in history], marker=".", label=f"variance {key.split('/')[-1]}")
        axis.set(
            xlabel="optimiser step",
            ylabel="relative reconstruction error",
            yscale="log",
            title="Error per band of the pixel spectrum (top bands first)",
        )
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        figure.subplots_adjust(left=0.12, right=0.97, top=0.92, bottom=0.12)  # tight_layout is slow
        figure.savefig(directory / "band_errors.png", dpi=100)
        figures["Relative reconstruction error per spectral band over training"] = "band_errors.png"
    return figures


# ----------------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``scripts/pretrain.py``: parse, train, print where the results went; exit code 1 with a clear message on
    bad input, a NaN loss or a failed push."""
    from .cards import HubPushError  # noqa: PLC0415

    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    # accelerate reports every file of every checkpoint at INFO; keep its warnings only.
    logging.getLogger("accelerate").setLevel(logging.WARNING)
    try:
        data_args, model_args, args = parse_args(argv)
        results = train(data_args, model_args, args)
    except (ValueError, NonFiniteLossError, HubPushError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    if results is not None and os.environ.get("RANK", "0") == "0":
        print(
            f"results in {args.output_dir}: {json.dumps({k: v for k, v in results.items() if k.startswith('eval/')}, indent=1)}"
        )
    return 0
