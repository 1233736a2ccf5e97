"""The arguments of ``scripts/pretrain.py``: three dataclasses, each validating itself in ``__post_init__``.

Every flag is documented in its ``help``; ``python scripts/pretrain.py --help`` lists them. Arguments come from the
command line, from one JSON / YAML file, or both (:func:`hf_recperc.cli.parse_arguments`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from ..cli import DataArguments as SharedDataArguments
from ..cli import did_you_mean, parse_arguments, parse_config_overrides
from ..results import DEFAULT_BAND_EDGES, POOLINGS
from ..validation import check_finite_number, check_hub_repo_id, check_model_path, check_positive_int
from .output_dir import refuse_earlier_run

__all__ = ["DataArguments", "ModelArguments", "PretrainingArguments", "parse_args", "parse_config_overrides"]


def model_family(name: str):
    """The registered :class:`~hf_recperc.models.FamilySpec` named by ``--model_family`` (the registry is imported on
    use, with the families' torch code: ``--help`` stays fast)."""
    from ..models import get_family  # noqa: PLC0415

    return get_family(name, argument="model_family")


MIXED_PRECISION = ("no", "fp16", "bf16")
MONITOR_NAMES = ("reconstruction", "online_probe", "subspace", "band_errors", "knn", "spectrum", "layers")


def registered_monitor_names() -> tuple[str, ...]:
    """The built-in monitors and those registered since (``hf_recperc.monitors.register_monitor``). A monitor can
    only be registered by code that imported the registry, so the built-in names answer without importing torch."""
    registry = sys.modules.get("hf_recperc.monitors.registry")
    # Token monitors read the report's tokens pooling; the trainer has no token features to give them.
    return MONITOR_NAMES if registry is None else registry.monitor_names(tokens=False)


@dataclass
class DataArguments(SharedDataArguments):
    """What to train on (the shared data flags of :class:`hf_recperc.cli.DataArguments`) and how to augment it."""

    random_crop_padding: int = field(
        default=0, metadata={"help": "Random crop after reflect padding by this many pixels (0: off)."}
    )
    random_flip: bool = field(default=False, metadata={"help": "Random horizontal flips."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Worker processes per data loader."})
    pixel_store: bool = field(
        default=True,
        metadata={
            "help": "Decode every image once into a cached uint8 store and normalise/augment batches on the "
            "training device (false: the image processor per batch, decoding every epoch)."
        },
    )
    decode_device: str = field(
        default="cpu",
        metadata={
            "help": "Where the uint8 store's JPEGs are decoded: 'cpu' (libjpeg-turbo) or 'cuda' (nvJPEG batches, "
            "where a CUDA GPU is present)."
        },
    )
    random_resized_crop: float | None = field(
        default=None,
        metadata={
            "help": "MAE's RandomResizedCrop with area scale in (this, 1] (e.g. 0.2), batched on the device; "
            "replaces --random_crop_padding; combines with --random_flip."
        },
    )

    streaming: bool = field(
        default=False,
        metadata={
            "help": "Read the training split as a stream (datasets IterableDataset; parquet files or a Hub id): "
            "shuffled through a buffer, rows split over processes, exact resume; the monitors read the first rows."
        },
    )
    shuffle_buffer_size: int = field(
        default=10000, metadata={"help": "Rows in the --streaming shuffle buffer."}
    )
    store_image_size: int | None = field(
        default=None,
        metadata={
            "help": "Side of the images in the uint8 store (default: the model's image_size). Larger keeps pixels "
            "for --random_resized_crop (crops are drawn on the stored images, then resized to the model's size); "
            "the store's size on disk is N x C x side^2 bytes (docs/data_path.md)."
        },
    )
    store_format: str = field(
        default="uint8",
        metadata={
            "help": "'uint8' (raw pixels, memory-mapped: N x C x side^2 bytes) or 'jpeg' (the compact store: the same "
            "images re-encoded as JPEG quality 90, decoded in the loader workers; ~5-8x smaller, "
            "docs/data_path.md)."
        },
    )
    stream_lanes: int = field(
        default=8,
        metadata={
            "help": "--streaming over local parquet: each process's rows are cut into this many lanes, read by "
            "its loader workers (--dataloader_num_workers must divide it); the batches depend on it, not on the "
            "worker count (docs/data_path.md)."
        },
    )

    def __post_init__(self):
        if not isinstance(self.shuffle_buffer_size, int) or self.shuffle_buffer_size < 1:
            raise ValueError(
                f"shuffle_buffer_size: expected an integer >= 1, got {self.shuffle_buffer_size!r}"
            )
        if self.store_image_size is not None and (
            not isinstance(self.store_image_size, int) or self.store_image_size < 1
        ):
            raise ValueError(f"store_image_size: expected a positive integer, got {self.store_image_size!r}")
        if self.store_format not in ("uint8", "jpeg"):
            raise ValueError(f"store_format: expected 'uint8' or 'jpeg', got {self.store_format!r}")
        if not isinstance(self.stream_lanes, int) or self.stream_lanes < 1:
            raise ValueError(f"stream_lanes: expected an integer >= 1, got {self.stream_lanes!r}")
        if self.random_resized_crop is not None and not 0 < self.random_resized_crop <= 1:
            raise ValueError(
                f"random_resized_crop: expected a fraction in (0, 1], got {self.random_resized_crop!r}"
            )
        if not isinstance(self.random_crop_padding, int) or self.random_crop_padding < 0:
            raise ValueError(
                f"random_crop_padding: expected an integer >= 0, got {self.random_crop_padding!r}"
            )
        if self.decode_device != "cpu":  # only then torch: --help and argument checks stay light
            from ..images.decode import check_decode_device  # noqa: PLC0415

            check_decode_device(self.decode_device)
        if not isinstance(self.dataloader_num_workers, int) or self.dataloader_num_workers < 0:
            raise ValueError(
                f"dataloader_num_workers: expected an integer >= 0, got {self.dataloader_num_workers!r}"
            )


@dataclass
class ModelArguments:
    """Which model to train and with which objective."""

    model_family: str = field(
        default="ae",
        metadata={
            "help": "A registered model family (hf_recperc.models): 'ae' (autoencoders), 'mae' (ViTMAE)."
        },
    )
    preset: str | None = field(
        default=None,
        metadata={
            "help": "Named configuration (default: the one that fits the data's image size and channels): "
            "ae: digits-mlp, cifar-conv-small, cifar-resnet18; mae: digits-vit-tiny, cifar-vit-tiny."
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
        if self.model_name_or_path is not None:
            check_model_path(
                self.model_name_or_path
            )  # a missing path or uncached offline id fails here, at once
        family = model_family(self.model_family)
        if self.preset is not None and self.model_name_or_path is not None:
            raise ValueError(
                f"preset: give either --preset ({self.preset!r}) or --model_name_or_path "
                f"({self.model_name_or_path!r}), not both"
            )
        presets = family.config_class.presets()
        if self.preset is not None and self.preset not in presets:
            raise ValueError(f"preset: {self.preset!r} is not a {self.model_family} preset; known: {presets}")
        if family.corruption_field is None and self.corruption not in (None, "none"):
            raise ValueError(f"corruption: {family.corruption_hint}, got {self.corruption!r}")
        if self.guidance is not None and (not math.isfinite(self.guidance) or self.guidance < 0):
            raise ValueError(f"guidance: expected a finite number >= 0, got {self.guidance!r}")
        parse_config_overrides(self.config_overrides)  # fail early on a malformed string


@dataclass
class PretrainingArguments:
    """Optimisation, evaluation, checkpointing, tracking and publishing."""

    output_dir: str = field(default="outputs/recperc", metadata={"help": "Where everything is written."})
    overwrite_output_dir: bool = field(
        default=False,
        metadata={
            "help": "Delete the checkpoints an earlier run wrote in output_dir/checkpoints (other files there are "
            "kept) and start over."
        },
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
    tracker_figures_every: int = field(
        default=15,
        metadata={
            "help": "Send the monitors' figures to the trackers (TensorBoard images) at every N-th evaluation "
            "(15 gives one set halfway through the default 30-epoch run; 0: only at the end). The PNG files are "
            "drawn once, at the end of the run: drawing at each evaluation would cost more than the evaluation "
            "itself on small runs."
        },
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
        default=2000,
        metadata={
            "help": "Training rows the monitors fit on at each evaluation (probes, kNN bank) and the pixel "
            "spectrum's rows: the first N (default 2000; keeps the monitor under ~10%% of a CIFAR run)."
        },
    )
    band_edges: list[float] = field(
        default_factory=lambda: list(DEFAULT_BAND_EDGES),
        metadata={"help": "Cumulative explained-variance edges of the pixel-spectrum bands, from 0 to 1."},
    )
    spectral_max_dim: int = field(
        default=12288, metadata={"help": "Skip band errors (NaN) above this many pixel values per image."}
    )
    monitors: list[str] = field(
        default_factory=lambda: list(MONITOR_NAMES),
        metadata={
            "help": f"Measurements at each evaluation, any of {', '.join(MONITOR_NAMES)} (default: all). "
            "From Python, pass Monitor objects to train(..., monitors=[...]) to add your own."
        },
    )
    probe_layers: list[str] = field(
        default_factory=lambda: ["last"],
        metadata={
            "help": "Encoder layers for the per-layer subspace probe ('layers' monitor): 'last', 'all' or "
            "indices (0 = embeddings/input, negative from the end)."
        },
    )
    probe_pooling: list[str] | None = field(
        default=None,
        metadata={
            "help": "Pooling of hidden states for the layer probes: cls, mean (default: the model's own)."
        },
    )
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the kNN monitor."})
    knn_temperature: float = field(default=0.07, metadata={"help": "Temperature of the weighted kNN vote."})
    allow_changed_args: list[str] = field(
        default_factory=list,
        metadata={
            "help": "On resume, argument names allowed to differ from the checkpoint's (anything that changes "
            "what is trained is refused otherwise; logging, evaluation and output flags may always change). "
            "'all': any may differ, and a checkpoint that records no arguments may be resumed."
        },
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload output_dir to the Hub at the end."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Hub repository, 'user/name'."})
    hub_private: bool = field(default=False, metadata={"help": "Create the Hub repository as private."})
    model_license: str = field(
        default="apache-2.0",
        metadata={"help": "License of the trained model, in the model card's metadata (a Hub license id)."},
    )
    torch_compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the training model (accelerate's dynamo_backend, inductor); evaluation and saving "
            "use the eager model. Pays a compile time at the first steps; on CPU it needs a C++ compiler."
        },
    )
    channels_last: bool = field(
        default=False,
        metadata={"help": "NHWC memory format for the model's weights and input batches (conv encoders)."},
    )
    monitor_max_eval_samples: int = field(
        default=1000,
        metadata={
            "help": "Validation rows the monitors score at each evaluation: the first N (default 1000, which keeps "
            "the monitor under ~10%% of a CIFAR run; 0: all); use --max_eval_samples to shrink the split itself."
        },
    )

    def __post_init__(self):
        # First, and with the standard library only: a second identical run is refused within a second.
        refuse_earlier_run(self.output_dir, self.resume_from_checkpoint, self.overwrite_output_dir)
        for name in ("num_train_epochs", "per_device_train_batch_size", "per_device_eval_batch_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("gradient_accumulation_steps", "logging_steps"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_steps", "eval_steps", "checkpointing_steps", "checkpoints_total_limit"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        self._check_optimisation_arguments()
        self._check_monitor_arguments()
        self._check_throughput_arguments()
        self._check_output_arguments()

    def _check_optimisation_arguments(self) -> None:
        for name in ("learning_rate", "weight_decay", "max_grad_norm", "probe_ridge"):
            check_finite_number(name, getattr(self, name), minimum=0)
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

    def _check_monitor_arguments(self) -> None:
        """What the monitors measure (normalises ``probe_subspaces`` and ``band_edges``)."""
        check_positive_int("probe_max_train_samples", self.probe_max_train_samples, allow_none=True)
        check_positive_int("spectral_max_dim", self.spectral_max_dim)
        check_positive_int("knn_k", self.knn_k)
        if not isinstance(self.tracker_figures_every, int) or self.tracker_figures_every < 0:
            raise ValueError(
                f"tracker_figures_every: expected an integer >= 0 (0: figures only at the end), "
                f"got {self.tracker_figures_every!r}"
            )
        if check_finite_number("knn_temperature", self.knn_temperature) <= 0:
            raise ValueError(f"knn_temperature: expected a number > 0, got {self.knn_temperature!r}")
        if not self.monitors or any(name not in registered_monitor_names() for name in self.monitors):
            raise ValueError(
                f"monitors: expected names among {registered_monitor_names()}, got {self.monitors!r}"
            )
        for pooling in self.probe_pooling or ():
            if pooling not in POOLINGS[:2]:
                raise ValueError(f"probe_pooling: expected 'cls' or 'mean', got {pooling!r}")
        if not self.probe_layers:
            raise ValueError("probe_layers: expected 'last', 'all' or layer indices")
        if not self.probe_subspaces:
            raise ValueError("probe_subspaces: expected at least one subspace, e.g. top:0.9 bottom:0.2 all")
        from ..spectral import parse_subspace  # noqa: PLC0415  (torch: imported after --help)

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

    def _check_output_arguments(self) -> None:
        if self.push_to_hub and not self.hub_model_id:
            raise ValueError("hub_model_id: --push_to_hub needs --hub_model_id user/name")
        if self.hub_model_id is not None:
            check_hub_repo_id("hub_model_id", self.hub_model_id)
        if self.resume_from_checkpoint is not None and self.resume_from_checkpoint != "latest":
            from .state import TRAINER_STATE  # noqa: PLC0415  (the state module needs torch: not for --help)

            path = Path(self.resume_from_checkpoint)
            if not (path / TRAINER_STATE).is_file():
                raise ValueError(
                    f"resume_from_checkpoint: {self.resume_from_checkpoint!r} is not a checkpoint directory "
                    f"(no {TRAINER_STATE}); pass 'latest' or a path like output_dir/checkpoints/checkpoint-100"
                )

    def _check_throughput_arguments(self) -> None:
        """The monitor's row caps (issue 11's flags; kept apart so ``__post_init__`` stays readable)."""
        value = self.monitor_max_eval_samples
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ValueError(
                f"monitor_max_eval_samples: expected an integer >= 0 (0: all rows), got {value!r}"
            )


def parse_args(
    argv: Sequence[str] | None = None,
) -> tuple[DataArguments, ModelArguments, PretrainingArguments]:
    """Command line (or a single ``.json`` / ``.yaml`` file of arguments) to the three argument dataclasses.

    ``PretrainingArguments`` is built (and checked) before ``ModelArguments``, whose checks import torch through
    the model configurations: the output directory's refusal comes before that import.
    """
    data_args, args, model_args = parse_arguments((DataArguments, PretrainingArguments, ModelArguments), argv)
    check_allowed_changes(args.allow_changed_args, (DataArguments, PretrainingArguments, ModelArguments))
    return data_args, model_args, args


def check_allowed_changes(allowed: Sequence[str], argument_classes: Sequence[type]) -> None:
    """``--allow_changed_args`` names arguments of this command (or 'all'): a misspelt name would otherwise allow
    nothing, and the resume it was meant to permit would be refused with a confusing list."""
    names = {f.name for cls in argument_classes for f in dataclasses.fields(cls)} | {"all"}
    for name in allowed:
        if name not in names:
            raise ValueError(
                f"allow_changed_args: {name!r} is not an argument of this command (expected argument names such "
                f"as learning_rate, or 'all'){did_you_mean(name, sorted(names))}"
            )
