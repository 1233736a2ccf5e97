"""The paper's experiments on projected images (docs/science.md section 3, E1 and E2).

E1 shows images next to their projections onto the top and the bottom variance subspaces; E2 trains the
same classifier on images projected onto ``top:p`` and onto ``bottom:q`` and compares test accuracy. Both
use the pixel PCA of :mod:`hf_recperc.spectral` (the same code as the subspace probe metric) on images
normalised with :func:`hf_recperc.images.paper_preprocessing`, fitted once per data set and cached on disk.

Pieces, top to bottom:

* :class:`PixelArguments` / :class:`RunArguments` (and :class:`~hf_recperc.cli.DataArguments`,
  re-exported): the flags the experiment scripts share (``RunArguments`` adds device and precision for
  scripts that train);
* :func:`load_pixel_splits`, :func:`fit_pixel_pca`, :func:`project_images`: data -> PCA -> projections;
* classifiers :class:`ResNet9`, :class:`MLPClassifier`, :class:`SmallCNN` and :func:`build_classifier`;
* :class:`TrainConfig`, :data:`PRESETS` and :func:`train_classifier`: one readable training loop;
* :func:`run_projection_experiment`: the E2 runner, returning one record per subspace.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from .cli import DataArguments
from .images import cache_root, images_to_array, paper_preprocessing, random_crop_flip
from .layers import conv_bn_relu
from .publish.atomic import prepare_cache_dir, save_npz
from .spectral import PCA, SubspaceSpec, parse_subspace
from .validation import check_positive_int, check_positive_number

__all__ = [
    "DataArguments",
    "PixelArguments",
    "RunArguments",
    "PixelSplits",
    "load_pixel_splits",
    "fit_pixel_pca",
    "project_images",
    "ResNet9",
    "MLPClassifier",
    "SmallCNN",
    "CLASSIFIERS",
    "build_classifier",
    "TrainConfig",
    "PRESETS",
    "config_from_preset",
    "resolve_device",
    "train_classifier",
    "fraction_grid",
    "run_projection_experiment",
]

logger = logging.getLogger(__name__)

# Bump when the preprocessing or the cached arrays change meaning, so stale caches are never read.
_PCA_CACHE_VERSION = "paper_preprocessing-eps1e-6-v1"


# ----------------------------------------------------------------------------------------------------
# Arguments shared by the experiment scripts (HfArgumentParser dataclasses)
# ----------------------------------------------------------------------------------------------------


@dataclass
class PixelArguments:
    """Seed, caching and resizing of the pixel arrays, shared by the experiment scripts."""

    seed: int = field(default=0, metadata={"help": "Seed of initialisation, shuffling and augmentation."})
    cache_dir: str | None = field(
        default=None,
        metadata={"help": "Where decoded pixels and fitted PCAs are cached (default ~/.cache/hf_recperc)."},
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize every image to N x N pixels (needed when sizes differ)."}
    )


@dataclass
class RunArguments(PixelArguments):
    """:class:`PixelArguments` plus where and how the experiment's networks train."""

    device: str = field(
        default="auto", metadata={"help": "'auto' (CUDA when present), 'cpu', 'cuda', 'cuda:1'."}
    )
    mixed_precision: str = field(
        default="auto", metadata={"help": "'auto' (bf16 autocast on CUDA, none on CPU), 'bf16' or 'no'."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide progress bars."})


# ----------------------------------------------------------------------------------------------------
# Data -> PCA -> projections
# ----------------------------------------------------------------------------------------------------


@dataclass
class PixelSplits:
    """Decoded, paper-preprocessed images of a data set.

    Attributes:
        train_images, eval_images: float32 arrays of shape `(N, C, H, W)` in ``[0, 1]`` (for display).
        train_flat, eval_flat: float32 arrays of shape `(N, C*H*W)`, after :func:`paper_preprocessing`
            (per-image std, then the training mean image subtracted).
        train_labels, eval_labels: int64 arrays of shape `(N,)`.
        label_names: class names.
        source: what was loaded.
    """

    train_images: np.ndarray
    eval_images: np.ndarray
    train_flat: np.ndarray
    eval_flat: np.ndarray
    train_labels: np.ndarray
    eval_labels: np.ndarray
    label_names: list[str]
    source: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image."""
        return tuple(self.train_images.shape[1:])


def load_pixel_splits(
    data_args: DataArguments, seed: int = 0, cache_dir: str | None = None, image_size: int | None = None
) -> PixelSplits:
    """Load a data set (see :func:`hf_recperc.images.load_image_dataset`) as preprocessed pixel arrays.

    ``image_size`` resizes every image to ``image_size x image_size`` (needed when sizes differ).
    """
    data = data_args.load(seed=seed)
    train_images = images_to_array(data.train, data.image_column, image_size=image_size, cache_dir=cache_dir)
    # Force the evaluation split to the training split's channel count (a stray grey test image) and size.
    eval_images = images_to_array(
        data.validation,
        data.image_column,
        num_channels=train_images.shape[1],
        image_size=image_size or train_images.shape[-1],
        cache_dir=cache_dir,
    )
    train_flat, eval_flat = paper_preprocessing(train_images, eval_images)
    return PixelSplits(
        train_images=train_images,
        eval_images=eval_images,
        train_flat=train_flat,
        eval_flat=eval_flat,
        train_labels=np.asarray(data.train[data.label_column], dtype=np.int64),
        eval_labels=np.asarray(data.validation[data.label_column], dtype=np.int64),
        label_names=data.label_names,
        source=data.source,
    )


def _pca_cache_file(train_flat: np.ndarray, cache_dir: str | None) -> Path:
    """Cache path keyed by the preprocessed training rows themselves (content hash, ~1 s for CIFAR-10).

    Hashing the array rather than the split's fingerprint also covers in-memory data sets (the embedded
    digits get a fresh fingerprint per process) and any change of preprocessing.
    """
    digest = hashlib.sha1(f"{_PCA_CACHE_VERSION}:{train_flat.shape}:{train_flat.dtype}".encode())
    digest.update(np.ascontiguousarray(train_flat).data)
    return cache_root(cache_dir) / "pca" / f"{digest.hexdigest()[:20]}.npz"


def _pca_from_arrays(arrays) -> PCA:
    """Rebuild a fitted :class:`PCA` from its saved attributes (without ``moments_``, which is not saved)."""
    pca = PCA(standardize=bool(arrays["standardize"]))
    pca.mean_ = torch.from_numpy(arrays["mean"])
    pca.scale_ = torch.from_numpy(arrays["scale"])
    pca.eigenvalues_ = torch.from_numpy(arrays["eigenvalues"])
    pca.components_ = torch.from_numpy(arrays["components"])
    pca.explained_variance_ratio_ = torch.from_numpy(arrays["explained_variance_ratio"])
    pca.n_samples_seen_ = int(arrays["n_samples_seen"])
    return pca


def fit_pixel_pca(train_flat: np.ndarray, *, cache: bool = True, cache_dir: str | None = None) -> PCA:
    """PCA of preprocessed training pixels, fitted once and cached as ``.npz`` (float64, ``D^2`` values).

    Args:
        train_flat (`np.ndarray` of shape `(N, D)`): rows after :func:`paper_preprocessing`.
        cache: read / write the cache under ``cache_dir`` (default ``~/.cache/hf_recperc`` or
            ``$HF_RECPERC_CACHE``) in ``pca/<content hash>.npz``.

    Returns:
        A fitted :class:`hf_recperc.spectral.PCA`.
    """
    path = _pca_cache_file(train_flat, cache_dir) if cache else None
    if path is not None and path.exists():
        with np.load(path) as arrays:
            logger.info("PCA loaded from cache %s", path)
            return _pca_from_arrays(arrays)
    start = time.perf_counter()
    pca = PCA().fit(train_flat)
    logger.info("PCA of %s fitted in %.1f s", train_flat.shape, time.perf_counter() - start)
    if path is not None:
        prepare_cache_dir(path.parent)
        save_npz(  # atomic: a concurrent reader never sees half a file
            path,
            standardize=np.array(pca.standardize),
            mean=pca.mean_.numpy(),
            scale=pca.scale_.numpy(),
            eigenvalues=pca.eigenvalues_.numpy(),
            components=pca.components_.numpy(),
            explained_variance_ratio=pca.explained_variance_ratio_.numpy(),
            n_samples_seen=np.array(pca.n_samples_seen_),
        )
    return pca


def project_images(
    pca: PCA, flat: np.ndarray, spec: str, image_shape: tuple[int, ...], batch_rows: int = 8192
) -> np.ndarray:
    """Project rows onto a subspace in image space: ``x -> U_S U_S^T (x - mean)`` (docs/science.md section 2).

    Equal to ``pca.project(flat, spec)`` (up to float32 round-off), computed faster: in float32 and
    through whichever of the subspace and its orthogonal complement has fewer components, since
    ``U_S U_S^T z = z - U_R U_R^T z`` for the complement ``R`` (``bottom:0.2`` keeps 3,055 of 3,072
    CIFAR-10 components; its complement has 17).

    Args:
        pca: a fitted PCA of the same preprocessing (``standardize=False``).
        flat (`np.ndarray` of shape `(N, D)`): preprocessed rows.
        spec: subspace string (``top:0.9``, ``bottom:0.2``, ``first:10``, ...).
        image_shape: `(C, H, W)` with ``C*H*W == D``.

    Returns:
        float32 array of shape `(N, C, H, W)`.

    Raises:
        ValueError: if the subspace is empty (from :mod:`hf_recperc.spectral`) or shapes disagree.
    """
    if pca.standardize:
        raise ValueError("pca: project_images expects a PCA fitted with standardize=False")
    dim = pca.components_.shape[1]
    if flat.ndim != 2 or flat.shape[1] != dim or int(np.prod(image_shape)) != dim:
        raise ValueError(
            f"flat: expected shape (N, {dim}) matching image_shape {tuple(image_shape)}, got {flat.shape}"
        )
    keep = pca.subspace(spec)  # (d,) raises the clear "empty subspace" error
    use_complement = 2 * keep.numel() > dim
    if use_complement:
        mask = torch.ones(dim, dtype=torch.bool)
        mask[keep] = False
        keep = torch.nonzero(mask).flatten()
    basis = pca.components_[keep].T.to(torch.float32)  # (D, d) orthonormal columns
    mean = pca.mean_.to(torch.float32)
    out = np.empty((len(flat), dim), dtype=np.float32)
    for start in range(0, len(flat), batch_rows):
        centred = torch.from_numpy(np.asarray(flat[start : start + batch_rows], dtype=np.float32)) - mean
        projected = (centred @ basis) @ basis.T  # (b, D)
        out[start : start + batch_rows] = (centred - projected if use_complement else projected).numpy()
    return out.reshape(len(flat), *image_shape)


# ----------------------------------------------------------------------------------------------------
# Classifiers
# ----------------------------------------------------------------------------------------------------


class _Residual(nn.Module):
    """``x + f(x)`` with ``f`` two conv-BN-ReLU blocks of the same width."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn_relu(channels, channels), conv_bn_relu(channels, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


class ResNet9(nn.Module):
    """The 9-layer residual network the authors train on projected images (the DAWNBench CIFAR-10 layout).

    prep conv(w) -> conv(2w) + pool + residual(2w) -> conv(4w) + pool -> conv(8w) + pool + residual(8w)
    -> global max pool -> linear, with ``w = width`` (64 in the paper's layout). Pools use
    ``ceil_mode`` so that 8x8 inputs still reach 1x1.

    Args:
        num_channels: image channels ``C``.
        num_labels: classes.
        width: channels of the first layer.

    Forward: ``pixel_values`` (`torch.FloatTensor` of shape `(batch_size, C, H, W)`) -> logits
    (`(batch_size, num_labels)`).
    """

    def __init__(self, num_channels: int, num_labels: int, width: int = 64):
        super().__init__()
        pool = lambda: nn.MaxPool2d(2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            conv_bn_relu(num_channels, width),
            conv_bn_relu(width, 2 * width),
            pool(),
            _Residual(2 * width),
            conv_bn_relu(2 * width, 4 * width),
            pool(),
            conv_bn_relu(4 * width, 8 * width),
            pool(),
            _Residual(8 * width),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * width, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values))


class SmallCNN(nn.Module):
    """A small VGG-style network for CPU runs: two conv blocks per stage at widths w, 2w, 4w.

    conv(w) conv(w) pool -> conv(2w) conv(2w) pool -> conv(4w) pool -> global max pool -> linear.
    At ``width=24`` one CIFAR-10 epoch over 10,000 images costs about 10 s on 2 CPU cores (channels-last).

    Forward: ``pixel_values`` (`(batch_size, C, H, W)`) -> logits (`(batch_size, num_labels)`).
    """

    def __init__(self, num_channels: int, num_labels: int, width: int = 24):
        super().__init__()
        pool = lambda: nn.MaxPool2d(2, ceil_mode=True)  # noqa: E731
        self.features = nn.Sequential(
            conv_bn_relu(num_channels, width),
            conv_bn_relu(width, width),
            pool(),
            conv_bn_relu(width, 2 * width),
            conv_bn_relu(2 * width, 2 * width),
            pool(),
            conv_bn_relu(2 * width, 4 * width),
            pool(),
            nn.AdaptiveMaxPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(4 * width, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values))


class MLPClassifier(nn.Module):
    """The authors' 4-layer MLP: flatten, three Linear-BN-ReLU hidden layers, a linear read-out.

    Forward: ``pixel_values`` (`(batch_size, C, H, W)`) -> logits (`(batch_size, num_labels)`).
    """

    def __init__(self, input_dim: int, num_labels: int, width: int = 1024, depth: int = 4):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        for index in range(depth - 1):
            layers += [nn.Linear(input_dim if index == 0 else width, width), nn.BatchNorm1d(width), nn.ReLU()]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values))


CLASSIFIERS = ("resnet9", "small_cnn", "mlp")


def build_classifier(name: str, image_shape: tuple[int, int, int], num_labels: int, width: int | None = None):
    """A classifier by name (one of :data:`CLASSIFIERS`); ``width`` overrides its default width."""
    channels = image_shape[0]
    kwargs = {} if width is None else {"width": width}
    if name == "resnet9":
        return ResNet9(channels, num_labels, **kwargs)
    if name == "small_cnn":
        return SmallCNN(channels, num_labels, **kwargs)
    if name == "mlp":
        return MLPClassifier(int(np.prod(image_shape)), num_labels, **kwargs)
    raise ValueError(f"classifier: expected one of {CLASSIFIERS}, got {name!r}")


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------


@dataclass
class TrainConfig:
    """How one classifier is trained on projected images.

    ``epochs``, ``lr``, ``weight_decay``, ``batch_size`` and OneCycle follow the authors' recipe
    (docs/science.md, E2); ``max_steps`` caps the total optimiser steps (a smoke run), ``train_subset`` trains on
    the first N training images only (the PCA still uses all of them).
    """

    classifier: str = "resnet9"
    width: int | None = None
    epochs: int = 50
    max_steps: int | None = None
    batch_size: int = 512
    eval_batch_size: int = 1024
    lr: float = 1e-3
    weight_decay: float = 1e-3
    augment: bool = True
    crop_padding: int = 4
    train_subset: int | None = None
    device: str = "auto"
    mixed_precision: str = "auto"
    seed: int = 0
    disable_tqdm: bool = False

    def __post_init__(self):
        if self.classifier not in CLASSIFIERS:
            raise ValueError(f"classifier: expected one of {CLASSIFIERS}, got {self.classifier!r}")
        for name in ("epochs", "batch_size", "eval_batch_size"):
            check_positive_int(name, getattr(self, name))
        if self.batch_size < 2:  # a batch of one image is skipped (BatchNorm): training would never step
            raise ValueError(
                "batch_size: expected an integer >= 2 (BatchNorm trains on 2 images or more), got 1"
            )
        for name in ("max_steps", "train_subset", "width"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        self.lr = check_positive_number("lr", self.lr)
        if self.mixed_precision not in ("auto", "bf16", "no"):
            raise ValueError(
                f"mixed_precision: expected 'auto', 'bf16' or 'no', got {self.mixed_precision!r}"
            )


# `paper`: the authors' recipe (docs/science.md, E2) on the full data. `cpu`: tuned so that one top/bottom pair on
# CIFAR-10 takes a few minutes on 2 CPU cores and still shows the paper's ordering clearly (see
# the README's Results section for the measured numbers).
PRESETS: dict[str, dict] = {
    "paper": {
        "classifier": "resnet9",
        "epochs": 50,
        "batch_size": 512,
        "lr": 1e-3,
        "weight_decay": 1e-3,
        "augment": True,
        "train_subset": None,
        "fractions": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9],
    },
    "cpu": {
        "classifier": "small_cnn",
        "width": 24,
        "epochs": 8,
        "batch_size": 128,
        "lr": 3e-3,
        "weight_decay": 1e-3,
        "augment": True,
        "train_subset": 10000,
        "subspaces": ["top:0.9", "bottom:0.2"],
    },
}


def resolve_device(device: str = "auto") -> torch.device:
    """``'auto'`` -> CUDA when available, else CPU; anything else is passed to :class:`torch.device`."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} requested but CUDA is not available; use 'auto' or 'cpu'")
    return resolved


def _autocast(device: torch.device, mixed_precision: str):
    enabled = mixed_precision == "bf16" or (mixed_precision == "auto" and device.type == "cuda")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


@torch.no_grad()
def _accuracy(model, images, labels, config: TrainConfig, device) -> float:
    model.eval()
    correct = 0
    for start in range(0, len(images), config.eval_batch_size):
        batch = images[start : start + config.eval_batch_size].to(device, non_blocking=True)
        with _autocast(device, config.mixed_precision):
            logits = model(batch.contiguous(memory_format=torch.channels_last))
        correct += (logits.argmax(-1).cpu() == labels[start : start + config.eval_batch_size]).sum().item()
    return correct / len(images)


def _step_budget(num_train: int, config: TrainConfig) -> tuple[int, int]:
    """``(steps_per_epoch, total_steps)``: ``config.epochs`` epochs, capped at ``config.max_steps``."""
    # A last batch of one image is skipped (_epoch_batches): it is no step.
    steps_per_epoch = num_train // config.batch_size + (num_train % config.batch_size >= 2)
    total_steps = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total_steps = min(total_steps, config.max_steps)
    return steps_per_epoch, total_steps


def _epoch_batches(num_train: int, batch_size: int, generator: torch.Generator, device):
    """Yield the `(B,)` index tensors (on ``device``) of one shuffled epoch, drawn from ``generator``."""
    order = torch.randperm(num_train, generator=generator).to(device)
    for batch_start in range(0, len(order), batch_size):
        index = order[batch_start : batch_start + batch_size]
        if len(index) < 2:  # a last batch of one image: BatchNorm cannot train on it
            continue
        yield index


def _run_steps(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler,
    total_steps: int,
    generator: torch.Generator,
    config: TrainConfig,
    device,
    description: str,
) -> tuple[int, float, int, int]:
    """Train ``model`` for ``total_steps`` steps over shuffled epochs of ``x_train`` `(N, C, H, W)` and
    ``y_train`` `(N,)`: ``(steps, last loss, correct predictions and images seen in the last epoch)``.

    Raises FloatingPointError (naming the step) when the loss is NaN/inf."""
    step, loss_value, correct, seen = 0, float("nan"), 0, 0
    progress = tqdm(total=total_steps, desc=description, disable=config.disable_tqdm, leave=False)
    while step < total_steps:
        model.train()
        correct, seen = 0, 0
        for index in _epoch_batches(len(x_train), config.batch_size, generator, device):
            if step >= total_steps:
                break
            images, labels = x_train[index], y_train[index]  # (B, C, H, W), (B,)
            if config.augment:
                # Zero padding: projected images are centred, so 0 is the data's mean value.
                images = random_crop_flip(
                    images, padding=config.crop_padding, flip=True, generator=generator, padding_mode="zeros"
                )
            with _autocast(device, config.mixed_precision):
                logits = model(images.contiguous(memory_format=torch.channels_last))
                loss = nn.functional.cross_entropy(logits.float(), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"{description}: loss is {loss.item()} at step {step}; lower lr")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            loss_value = loss.item()
            correct += (logits.argmax(-1) == labels).sum().item()
            seen += len(labels)
            progress.update(1)
            progress.set_postfix(loss=f"{loss_value:.3f}")
    progress.close()
    return step, loss_value, correct, seen


def train_classifier(
    train_images: np.ndarray,
    train_labels: np.ndarray,
    eval_images: np.ndarray,
    eval_labels: np.ndarray,
    num_labels: int,
    config: TrainConfig,
    description: str = "train",
) -> dict:
    """Train a fresh classifier (AdamW + OneCycle, cross-entropy) and report its evaluation accuracy.

    Args:
        train_images (`np.ndarray` of shape `(N, C, H, W)`), train_labels (`(N,)` ints).
        eval_images (`(M, C, H, W)`), eval_labels (`(M,)`).
        num_labels: classes.
        config: see :class:`TrainConfig` (``train_subset`` is applied by the caller).
        description: progress-bar label.

    Returns:
        dict with ``accuracy`` (on the evaluation images), ``train_accuracy`` (running, last epoch),
        ``final_loss``, ``steps``, ``epochs`` (completed, fractional when ``max_steps`` stops early),
        ``seconds`` and ``device``.

    Raises:
        FloatingPointError: when the loss becomes NaN/inf, naming the step.
    """
    if len(train_images) < 2:
        raise ValueError(f"train_images: expected 2 rows or more (one batch of 2), got {len(train_images)}")
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)  # initialisation
    generator = torch.Generator().manual_seed(config.seed)  # shuffling and augmentation
    model = build_classifier(config.classifier, train_images.shape[1:], num_labels, config.width)
    # Channels-last convolutions are 1.5-3x faster on CPU (oneDNN) and on tensor cores.
    model = model.to(device, memory_format=torch.channels_last)

    # The whole projected set lives on the device (CIFAR-10: 600 MB): indexing beats a DataLoader here.
    x_train = torch.from_numpy(np.ascontiguousarray(train_images)).to(device)
    y_train = torch.from_numpy(np.asarray(train_labels, dtype=np.int64)).to(device)
    x_eval = torch.from_numpy(np.ascontiguousarray(eval_images))
    y_eval = torch.from_numpy(np.asarray(eval_labels, dtype=np.int64))

    steps_per_epoch, total_steps = _step_budget(len(x_train), config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total_steps)

    start_time = time.perf_counter()
    step, loss_value, correct, seen = _run_steps(
        model, x_train, y_train, optimizer, scheduler, total_steps, generator, config, device, description
    )
    accuracy = _accuracy(model, x_eval, y_eval, config, device)
    return {
        "accuracy": accuracy,
        "train_accuracy": correct / max(seen, 1),
        "final_loss": loss_value,
        "steps": step,
        "epochs": step / steps_per_epoch,
        "seconds": time.perf_counter() - start_time,
        "device": str(device),
    }


# ----------------------------------------------------------------------------------------------------
# E2 runner
# ----------------------------------------------------------------------------------------------------


def fraction_grid(fractions) -> list[str]:
    """``[0.2, 0.9] -> ['top:0.2', 'bottom:0.2', 'top:0.9', 'bottom:0.9']``."""
    specs = []
    for fraction in fractions:
        specs += [str(parse_subspace(f"top:{fraction}")), str(parse_subspace(f"bottom:{fraction}"))]
    return specs


def _runnable_subspaces(pca: PCA, subspaces: list[str], skip_empty: bool) -> list[SubspaceSpec]:
    """The parsed ``subspaces`` that are not empty on ``pca``; an empty one raises spectral's ``ValueError``,
    or with ``skip_empty`` is left out with a warning."""
    runnable = []
    for spec in subspaces:
        parsed = parse_subspace(spec)
        try:
            pca.subspace(parsed)
        except ValueError as err:
            if not skip_empty:
                raise
            logger.warning("skipping %s: %s", parsed, err)
            continue
        runnable.append(parsed)
    return runnable


def _scaled_projections(
    pca: PCA, train_flat: np.ndarray, eval_flat: np.ndarray, spec: str, image_shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Training `(N, C, H, W)` and evaluation `(M, C, H, W)` images projected onto ``spec``, both divided by the
    standard deviation of the projected training pixels (1 when that is 0)."""
    train_x = project_images(pca, train_flat, spec, image_shape)
    eval_x = project_images(pca, eval_flat, spec, image_shape)
    scale = float(train_x.std()) or 1.0
    train_x /= scale
    eval_x /= scale
    return train_x, eval_x


def _train_on_subspace(
    parsed: SubspaceSpec,
    pca: PCA,
    splits: PixelSplits,
    train_flat: np.ndarray,
    train_labels: np.ndarray,
    config: TrainConfig,
) -> dict:
    """Train and evaluate one classifier on the ``parsed`` subspace; its record (see
    :func:`run_projection_experiment`), logged in one line."""
    spec = str(parsed)
    train_x, eval_x = _scaled_projections(pca, train_flat, splits.eval_flat, spec, splits.image_shape)
    result = train_classifier(
        train_x,
        train_labels,
        eval_x,
        splits.eval_labels,
        len(splits.label_names),
        config,
        description=spec,
    )
    record = {
        "subspace": spec,
        "kind": parsed.kind,
        "fraction": float(parsed.value) if parsed.kind in ("top", "bottom") else None,
        "dims": int(pca.subspace(parsed).numel()),
        "explained_variance": pca.explained_variance(parsed),
        "accuracy": result["accuracy"],
        "train_accuracy": result["train_accuracy"],
        "classifier": config.classifier,
        "epochs": result["epochs"],
        "steps": result["steps"],
        "train_size": len(train_x),
        "eval_size": len(eval_x),
        "seed": config.seed,
        "seconds": result["seconds"],
        "device": result["device"],
        "source": splits.source,
    }
    logger.info(
        "%s: %d dims, explained variance %.3f, accuracy %.4f (%.0f s)",
        spec,
        record["dims"],
        record["explained_variance"],
        record["accuracy"],
        record["seconds"],
    )
    return record


def run_projection_experiment(
    splits: PixelSplits,
    subspaces: list[str],
    config: TrainConfig,
    *,
    pca: PCA | None = None,
    skip_empty: bool = False,
    cache: bool = True,
    cache_dir: str | None = None,
    on_record=None,
) -> list[dict]:
    """E2: train one classifier per subspace on projected images and evaluate it on projected test images.

    The PCA is fitted on all training rows of ``splits`` (cached); training uses the first
    ``config.train_subset`` rows. Projected images are divided by one scalar, the standard deviation of
    the projected training pixels, so every subspace reaches the network at the same overall scale
    (``bottom:0.2`` holds a fifth of the variance; the optimiser's step sizes should not depend on that).

    Args:
        splits: from :func:`load_pixel_splits`.
        subspaces: subspace strings, e.g. ``["top:0.9", "bottom:0.2"]``.
        config: training recipe.
        pca: a fitted PCA to reuse (else :func:`fit_pixel_pca`).
        skip_empty: skip (with a warning) subspaces that are empty on this data (a fraction grid crosses
            the first component's share); otherwise raise spectral's ``ValueError`` before any training.
        on_record: called with each record as soon as it is ready (for incremental saving).

    Returns:
        One record per subspace: ``subspace``, ``kind``, ``fraction`` (None for first/last/all),
        ``dims``, ``explained_variance``, ``accuracy``, ``train_accuracy``, ``classifier``, ``epochs``,
        ``steps``, ``train_size``, ``eval_size``, ``seed``, ``seconds`` (training + evaluation),
        ``device``, ``source``.
    """
    pca = pca if pca is not None else fit_pixel_pca(splits.train_flat, cache=cache, cache_dir=cache_dir)
    runnable = _runnable_subspaces(pca, subspaces, skip_empty)
    train_count = len(splits.train_flat) if config.train_subset is None else config.train_subset
    train_flat = splits.train_flat[:train_count]
    train_labels = splits.train_labels[:train_count]
    records = []
    for parsed in runnable:
        record = _train_on_subspace(parsed, pca, splits, train_flat, train_labels, config)
        records.append(record)
        if on_record is not None:
            on_record(record)
    return records


def config_from_preset(preset: str, overrides: dict) -> tuple[TrainConfig, dict]:
    """A :class:`TrainConfig` from a preset name plus explicit overrides (``None`` values are ignored).

    Returns the config and the preset's non-training entries (``subspaces`` / ``fractions``).
    """
    if preset not in PRESETS:
        raise ValueError(f"preset: expected one of {sorted(PRESETS)}, got {preset!r}")
    values = dict(PRESETS[preset])
    extras = {key: values.pop(key) for key in ("subspaces", "fractions") if key in values}
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    values.update({key: value for key, value in overrides.items() if value is not None and key in names})
    return TrainConfig(**values), extras
