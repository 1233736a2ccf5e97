"""The perception report: how much class information do a vision model's features hold, layer by layer?

:func:`perception_report` extracts the pooled hidden states of every requested layer in one forward pass per image
(:mod:`hf_recperc.report.extract`), streams them into the monitors of :mod:`hf_recperc.monitors` (the same code as
the trainer's evaluation: subspace-restricted probes, kNN, spectrum statistics), and writes ``report.json``,
``report.md`` and figures. The question is the paper's (Balestriero & LeCun, arXiv 2402.11337, sections 2-3): does
the class information sit in the top-variance subspace of the features, which reconstruction favours, or in the
bottom one? See ``docs/design.md`` ("report").

Processes: inside an initialised ``torch.distributed`` group each process extracts its own rows
(``rows[rank::world]``, no padding duplicates) and the monitors merge their statistics, so any number of processes
reports the one-process numbers.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import math
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from ..findings import (
    MIN_ROWS,
    Evidence,
    SubspaceResult,
    best_subspace_finding,
    compare_subspaces,
    subspace_finding,
)
from ..images import ImageData, ProcessedImages, load_image_dataset, processor_transform, split_conflict
from ..monitors import (
    DEFAULT_SUBSPACES,
    EVAL,
    POOLINGS,
    TRAIN,
    Monitor,
    MonitorBatch,
    MonitorContext,
    accuracy_per_layer_figure,
    check_monitor_settings,
    compute_monitors,
    feature_prefix,
    get_monitor_spec,
    is_distributed,
    layer_accuracies,
    layer_feature,
    monitor_defaults,
    monitor_descriptions,
    monitor_names,
    parse_layers,
    runner,
    spectrum_figure,
)
from ..monitors import build_monitors as build_registered_monitors
from ..monitors import card_rows as registered_card_rows
from ..monitors.runner import wanted_features
from ..publish import OutputDirectory, Outputs, json_marker, write_json, write_text
from ..results import (
    KNN_ACCURACY,
    PCA_MAPS,
    REPORT_FIELDS,
    SPECTRUM_FIELDS,
    SUBSPACE_FIELDS,
    TOKENS,
    layer_key,
    spectrum_key,
)
from ..spectral import parse_subspace
from ..validation import check_finite_number, check_positive_int
from ..versions import library_versions
from .cache import CachedFeatures, CacheEntry, FeatureCache, FeatureRecorder, RecordingSource
from .extract import Backbone, BackboneError, load_backbone, pooled_features, resolve_poolings

__all__ = [
    "perception_report",
    "MONITORS",
    "MIXED_PRECISION",
    "main_finding",
    "write_report",
    "extract_split",
    "extract_splits",
    "build_monitors",
    "choose_features",
    "compute_monitors",
    "BackboneFeatureSource",
    "FeaturePlan",
    "plan_features",
    "split_batches",
    "build_feature_monitors",
    "report_settings",
    "evaluate",
    "report_figures",
]

logger = logging.getLogger(__name__)

MONITORS = ("subspace", "knn", "spectrum")
MIXED_PRECISION = {"no": None, "fp16": torch.float16, "bf16": torch.bfloat16}
UPDATE_ROWS = 4096  # rows per monitor update (extract_split): amortises the per-call checks


def _check_arguments(
    monitors, subspaces, mixed_precision, batch_size, poolings, output_dir, knn_k, ridge
) -> None:
    """The cheap checks, before any model or data is loaded."""
    check_positive_int("knn_k", knn_k)
    check_finite_number("ridge", ridge, minimum=0)
    available = monitor_names(per_feature=True)  # the built-in MONITORS and any registered since
    if not monitors:
        raise ValueError(f"monitors: expected at least one of {available}, got none")
    for name in monitors:
        if name not in available:
            raise ValueError(f"monitors: expected names among {available}, got {name!r}")
    if not subspaces:
        raise ValueError("subspaces: expected at least one subspace such as 'top:0.9', got none")
    for spec in subspaces:
        try:
            parse_subspace(spec)
        except ValueError as err:
            raise ValueError(f"subspaces: {err}") from None
    if mixed_precision not in MIXED_PRECISION:
        raise ValueError(
            f"mixed_precision: expected one of {tuple(MIXED_PRECISION)}, got {mixed_precision!r}"
        )
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    for pooling in poolings or ():
        if pooling not in (*POOLINGS, TOKENS):
            raise ValueError(f"pooling: expected names among {(*POOLINGS, TOKENS)}, got {pooling!r}")
    _check_token_monitors(monitors, poolings)
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output_dir: {str(output_dir)!r} exists and is not a directory")


def _check_token_monitors(monitors, poolings) -> None:
    """Token monitors (attentive probe, PCA maps) read the ``tokens`` pooling and nothing else reads it: each needs
    the other (tokens are T times bigger than a pooled row: never extracted for nothing)."""
    token_monitors = [name for name in monitors if name in monitor_names(tokens=True)]
    if token_monitors and TOKENS not in (poolings or ()):
        raise ValueError(
            f"pooling: the monitors {token_monitors} read patch tokens; add '{TOKENS}' to --pooling "
            f"(e.g. --pooling cls {TOKENS})"
        )
    if TOKENS in (poolings or ()) and not token_monitors:
        raise ValueError(
            f"pooling: '{TOKENS}' is read only by the token monitors {monitor_names(tokens=True)}; add one to "
            "--monitors"
        )
    if TOKENS in (poolings or ()) and len(token_monitors) == len(monitors) and len(poolings) > 1:
        raise ValueError(
            f"pooling: {[p for p in poolings if p != TOKENS]} would be extracted for no monitor; add a pooled "
            f"monitor such as subspace to --monitors, or keep only --pooling {TOKENS}"
        )


def _autocast(device: torch.device, mixed_precision: str):
    dtype = MIXED_PRECISION[mixed_precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _dry_run(backbone: Backbone, data: ImageData, mixed_precision: str):
    """One training image through the model: the layer count, the hidden-state shapes, and an early, clear error
    when the model cannot take the data's images (size, channels)."""
    transform = processor_transform(
        backbone.processor, data.image_column, data.label_column, backbone.num_channels, data.label_names
    )
    batch = transform(data.train[:1])
    pixel_values = batch["pixel_values"].to(backbone.device, backbone.dtype)  # (1, C, H, W)
    size = backbone.image_size
    if size is not None and tuple(pixel_values.shape[-2:]) != (size, size):
        raise ValueError(
            f"image_size: asked for {size}x{size} images, but the image processor "
            f"({type(backbone.processor).__name__}) gives {pixel_values.shape[-2]}x{pixel_values.shape[-1]}"
        )
    try:
        with torch.inference_mode(), _autocast(backbone.device, mixed_precision):
            hidden, pooled = backbone.hidden_states(pixel_values)
    except BackboneError:
        raise  # names the model argument: not a matter of image size
    except (RuntimeError, ValueError, AssertionError, TypeError) as err:
        shape = "x".join(str(s) for s in pixel_values.shape[1:])
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ValueError(
            f"image_size: the model cannot take the data's images as preprocessed ({shape}): {message}"
        ) from None
    return hidden, pooled, _resize(list(data.train[:1][data.image_column]), pixel_values)


def _resize(images: list, pixel_values: torch.Tensor) -> dict | None:
    """``{"from": [h, w], "to": [H, W]}`` when the image processor changed the first image's size, else ``None``."""
    size = getattr(images[0], "size", None) if images else None  # PIL: (width, height)
    if size is None:
        return None
    before, after = [int(size[1]), int(size[0])], [int(n) for n in pixel_values.shape[-2:]]
    return None if before == after else {"from": before, "to": after}


def split_batches(
    backbone: Backbone,
    loader,
    layers: Sequence[int],
    poolings: Sequence[str],
    split: str,
    mixed_precision: str = "no",
    update_rows: int = UPDATE_ROWS,
    aliases: dict[str, str] | None = None,
    progress=None,
) -> Iterator[MonitorBatch]:
    """One split through the model: :class:`~hf_recperc.monitors.MonitorBatch` blocks of pooled features.

    Args:
        loader: yields ``{"pixel_values": (B, C, H, W), "labels": (B,)}`` batches (this process's shard).
        split: ``"train"`` (rows the monitors fit on) or ``"eval"`` (rows they score).
        update_rows: pooled rows are handed to the monitors in blocks of at least this many: each update pays
            fixed checks (labels, finiteness, class columns) besides its ``X.T @ X``; blocks of 4096 rows fit at
            the bare ``X.T @ X`` + ``eigh`` floor (0.96x), blocks of 1024 cost 1.43x (benchmarks/feature_extraction.py).
        aliases: more names of extracted features, e.g. ``{"embedding": "layer_12/cls"}`` for monitors that read
            ``"embedding"`` (the same tensor under both names).
        progress: a tqdm bar advanced by the images of each batch, or ``None``.
    """
    pending, pending_labels = {}, []

    def block() -> MonitorBatch:
        features = {name: torch.cat(rows) for name, rows in pending.items()}  # (n, D) float32
        features.update({alias: features[name] for alias, name in (aliases or {}).items()})
        batch = MonitorBatch(split, labels=torch.cat(pending_labels), features=features)
        pending.clear()
        pending_labels.clear()
        return batch

    for batch in loader:
        pixel_values = batch["pixel_values"].to(backbone.device, backbone.dtype, non_blocking=True)
        with torch.inference_mode(), _autocast(backbone.device, mixed_precision):
            hidden, pooled = backbone.hidden_states(pixel_values)
            features = pooled_features(hidden, pooled, layers, poolings, backbone.num_prefix_tokens)
        # Monitors update outside inference mode (their accumulators must stay ordinary tensors: all_reduce
        # writes into them in place later); torch.cat in block() turns the inference rows into ordinary ones.
        for name, rows in features.items():
            pending.setdefault(name, []).append(rows)
        pending_labels.append(batch["labels"].to(backbone.device))
        if progress is not None:
            progress.update(pixel_values.shape[0])
        if sum(len(labels) for labels in pending_labels) >= update_rows:
            yield block()
    if pending_labels:
        yield block()


def extract_split(
    backbone: Backbone,
    loader,
    layers: Sequence[int],
    poolings: Sequence[str],
    split: str,
    monitors: Sequence,
    mixed_precision: str = "no",
    update_rows: int = UPDATE_ROWS,
    aliases: dict[str, str] | None = None,
) -> int:
    """Stream one split through the model and the monitors (:func:`split_batches`); returns the images seen."""
    seen = 0
    for batch in split_batches(
        backbone, loader, layers, poolings, split, mixed_precision, update_rows, aliases
    ):
        seen += len(batch.labels)
        for monitor in monitors:
            monitor.update(batch)
    return seen


class BackboneFeatureSource:
    """The report's :class:`~hf_recperc.monitors.FeatureSource`: this process's shard (``rows[rank::world]``) of
    ``data.train`` (``"train"``) and ``data.validation`` (``"eval"``) through the backbone, pooled per layer.

    One progress bar per split (on the main process, log lines printed above it); ``seen`` counts the images
    this process extracted.
    """

    def __init__(
        self,
        backbone: Backbone,
        data: ImageData,
        layers: Sequence[int],
        poolings: Sequence[str],
        batch_size: int = 64,
        num_workers: int = 0,
        mixed_precision: str = "no",
        aliases: dict[str, str] | None = None,
        progress: bool = False,
    ):
        self.backbone, self.data, self.layers, self.poolings = backbone, data, list(layers), list(poolings)
        self.batch_size, self.num_workers, self.mixed_precision = batch_size, num_workers, mixed_precision
        self.aliases, self.progress, self.seen = aliases, progress, 0

    def batches(self, features: set[str]) -> Iterator[MonitorBatch]:
        rank, world = _rank_and_world()
        for split, source in ((TRAIN, self.data.train), (EVAL, self.data.validation)):
            rows = range(rank, len(source), world)
            loader = _loader(source, rows, self.backbone, self.data, self.batch_size, self.num_workers)
            with self._progress_bar(split, len(rows), rank) as bar:
                for batch in split_batches(
                    self.backbone, loader, self.layers, self.poolings, split, self.mixed_precision,
                    aliases=self.aliases, progress=bar,
                ):  # fmt: skip
                    self.seen += len(batch.labels)
                    yield batch

    @contextlib.contextmanager
    def _progress_bar(self, split: str, total: int, rank: int):
        """A tqdm bar over one split's images (``None`` when off or on another process than the first)."""
        if not self.progress or rank != 0:
            yield None
            return
        from tqdm.auto import tqdm  # noqa: PLC0415
        from tqdm.contrib.logging import logging_redirect_tqdm  # noqa: PLC0415

        layers = describe_layers(self.layers)
        description = (
            f"{'train' if split == TRAIN else 'evaluation'} images, {layers} ({'+'.join(self.poolings)})"
        )
        with logging_redirect_tqdm(), tqdm(total=total, desc=description, unit="img", leave=False) as bar:
            yield bar


def describe_layers(layers: Sequence[int]) -> str:
    """``[4]`` -> ``"layer 4"``; ``[1, 2, 3]`` -> ``"layers 1-3"``; ``[0, 4]`` -> ``"layers 0, 4"``."""
    if len(layers) == 1:
        return f"layer {layers[0]}"
    if list(layers) == list(range(layers[0], layers[-1] + 1)):
        return f"layers {layers[0]}-{layers[-1]}"
    return "layers " + ", ".join(map(str, layers))


def _rank_and_world() -> tuple[int, int]:
    if is_distributed():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def extract_splits(
    backbone: Backbone,
    data: ImageData,
    layers: Sequence[int],
    poolings: Sequence[str],
    monitors: Sequence,
    batch_size: int = 64,
    num_workers: int = 0,
    mixed_precision: str = "no",
    aliases: dict[str, str] | None = None,
) -> int:
    """Feed the monitors the :class:`BackboneFeatureSource` of ``data`` (no reset, no compute); returns the images
    this process extracted. The trainer callbacks (:mod:`hf_recperc.integrations`) share this pass."""
    source = BackboneFeatureSource(
        backbone, data, layers, poolings, batch_size, num_workers, mixed_precision, aliases
    )
    for batch in source.batches(wanted_features(monitors)):
        for monitor in monitors:
            monitor.update(batch)
    return source.seen


def _loader(split, rows, backbone: Backbone, data: ImageData, batch_size: int, num_workers: int):
    transform = processor_transform(
        backbone.processor, data.image_column, data.label_column, backbone.num_channels, data.label_names
    )
    shard = ProcessedImages(split.select(rows), transform, data.image_column)  # a corrupt image names its row
    return torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def report_settings(subspaces, ridge, knn_k, knn_temperature) -> dict[str, Any]:
    """The report's settings under the trainer's argument names: what its monitors are built from
    (:class:`~hf_recperc.monitors.MonitorContext`) and what its card rows state."""
    return {
        "probe_subspaces": list(subspaces), "probe_ridge": ridge, "probe_standardize": False,
        "knn_k": knn_k, "knn_temperature": knn_temperature,
    }  # fmt: skip


def build_feature_monitors(
    features, names, settings, bank_dtype=None, resources: dict | None = None
) -> dict[str, dict[str, Monitor]]:
    """Per feature, the registered monitors ``names`` (:func:`hf_recperc.monitors.build_monitors`), keyed
    ``layers/<feature>/...`` like :class:`~hf_recperc.monitors.LayerProbeMonitor`: ``{feature: {name: monitor}}``.
    Token monitors (``MonitorSpec.tokens``) are built on ``layer_<i>/tokens`` features only, the others never on
    them. ``resources``: more of :attr:`MonitorContext.resources` (``num_prefix_tokens`` for the PCA maps)."""
    built = {}
    for feature in features:
        on_tokens = feature.endswith(f"/{TOKENS}")
        chosen = [name for name in names if get_monitor_spec(name).tokens == on_tokens]
        context = MonitorContext(
            settings, feature, prefix=feature_prefix(feature),
            resources={"bank_dtype": bank_dtype, **(resources or {})},
        )  # fmt: skip
        built[feature] = dict(zip(chosen, build_registered_monitors(chosen, context)))
    return built


def build_monitors(features, names, subspaces, ridge, knn_k, knn_temperature, bank_dtype=None):
    """``(probes, spectra, knns)``: the subspace, spectrum and kNN monitors of :func:`build_feature_monitors`, by
    feature (the trainer callbacks' interface)."""
    settings = report_settings(subspaces, ridge, knn_k, knn_temperature)
    built = build_feature_monitors(features, names, settings, bank_dtype)
    return tuple(
        {feature: monitors[name] for feature, monitors in built.items() if name in monitors}
        for name in ("subspace", "spectrum", "knn")
    )


def _bank_dtype(device: torch.device) -> torch.dtype | None:
    """The kNN banks' dtype: float16 on an accelerator (half the memory; similarities are accumulated by the matmul
    and ranked in float32), the monitor's float32 elsewhere (CPU float16 matmuls are slow). Queries are scored in
    chunks of 1024 against the bank (:func:`~hf_recperc.monitors.knn_predict`)."""
    return torch.float16 if device.type == "cuda" else None


def main_finding(
    metrics: dict[str, float],
    layers: Sequence[int],
    pooling: str,
    subspaces: Sequence[str],
    evidence: Evidence,
    feature_dims: dict[str, int] | None = None,
) -> str:
    """One sentence on where the class information sits: the first ``bottom:*`` against the first ``top:*``
    subspace at each layer (the paper's comparison, arXiv 2402.11337 section 3), or, without both, the layer whose
    first subspace probes best. Stated only when the evidence holds (:mod:`hf_recperc.findings`: enough rows, two
    proper subspaces, accuracies above chance by their 95% binomial interval); otherwise the sentence says why not.

    Args:
        feature_dims: ``layer_<i>/<pooling>`` -> the feature's dimension (a subspace keeping all of them is ``all``).
    """
    top = next((s for s in subspaces if s.startswith("top:")), None)
    bottom = next((s for s in subspaces if s.startswith("bottom:")), None)

    def value(i: int, field_name: str, spec: str) -> float:
        return metrics.get(layer_key(layer_feature(i, pooling), field_name, spec), math.nan)

    if top is None or bottom is None:
        spec = subspaces[0]
        return best_subspace_finding({i: value(i, "accuracy", spec) for i in layers}, spec, evidence, pooling)
    name = {s: f"the {s.split(':')[0]} {float(s.split(':')[1]):.0%} of the variance" for s in (top, bottom)}
    verdicts = {}
    for i in layers:
        dims = (feature_dims or {}).get(layer_feature(i, pooling))
        results = [
            SubspaceResult(
                spec, value(i, "accuracy", spec), int(value(i, "dims", spec) or 0),
                value(i, "explained_variance", spec), dims,
            )
            for spec in (top, bottom)
        ]  # fmt: skip
        verdicts[i] = compare_subspaces(*results, evidence)
    return subspace_finding(verdicts, name[top], name[bottom], pooling)


def _nested(metrics: dict[str, float], features: Sequence[str], settings: dict) -> dict[str, dict]:
    """Flat ``layers/<feature>/...`` keys -> ``{feature: {"accuracy": {S: a}, "dims": ..., "knn_accuracy": ...,
    "spectrum": {...}}}``; keys of other registered monitors keep their own name under the feature."""
    subspaces = settings["probe_subspaces"]
    table = {}
    for feature in features:
        prefix = feature_prefix(feature)
        row: dict[str, Any] = {}
        used = {f"{prefix}num_train"}  # the probe's training rows: the report states them once, in "data"
        for field_name in SUBSPACE_FIELDS:
            values = {
                s: metrics[layer_key(feature, field_name, s)]
                for s in subspaces
                if layer_key(feature, field_name, s) in metrics
            }
            used |= {layer_key(feature, field_name, s) for s in values}
            if values:
                row[field_name] = values
        for key, name in REPORT_FIELDS.items():
            if f"{prefix}{key}" in metrics:
                row[name] = metrics[f"{prefix}{key}"]
                used.add(f"{prefix}{key}")
        spectrum = {
            f: metrics[f"{prefix}{spectrum_key(f)}"]
            for f in SPECTRUM_FIELDS
            if f"{prefix}{spectrum_key(f)}" in metrics
        }
        used |= {f"{prefix}{spectrum_key(f)}" for f in spectrum}
        if spectrum:
            row["spectrum"] = spectrum
        row.update(
            {k.removeprefix(prefix): v for k, v in metrics.items() if k.startswith(prefix) and k not in used}
        )
        table[feature] = row
    return table


def perception_report(
    model,
    dataset: str | ImageData | None = None,
    *,
    layers: str | Sequence[int | str] = "last",
    poolings: Sequence[str] | None = None,
    subspaces: Sequence[str] = DEFAULT_SUBSPACES,
    monitors: Sequence[str] = MONITORS,
    output_dir: str | os.PathLike | None = None,
    batch_size: int = 64,
    mixed_precision: str = "no",
    image_processor=None,
    image_size: int | None = None,
    trust_remote_code: bool = False,
    device: str | torch.device | None = None,
    ridge: float = 1e-3,
    knn_k: int = 20,
    knn_temperature: float = 0.07,
    num_workers: int = 0,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    curves: bool = True,
    figures: bool = True,
    data_kwargs: dict | None = None,
    progress: bool = False,
    monitor_settings: dict | None = None,
    feature_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Probe a vision model's features layer by layer: subspace probes, kNN and spectrum per layer x pooling.

    Args:
        model: a Hub id or local directory of a transformers vision model (ours included), ``timm:<name>``,
            ``hf-hub:timm/<name>``, a ``timm.models.save_for_hf`` directory, or a built ``nn.Module``.
        dataset: anything :func:`hf_recperc.images.load_image_dataset` accepts (``None`` = digits), or an
            :class:`~hf_recperc.images.ImageData`; its train split fits the probes / fills the kNN bank, its
            validation split is scored. For one of our checkpoints (a directory with the run's ``results.json``) a
            validation split carved out of train uses the run's seed and fraction, so that no training image of the
            model is scored; other values on the run's own rows are refused.
        layers: ``"last"``, ``"all"`` (every block) or indices (0 = the embedding/input stage, negative from the end).
        poolings: among ``cls``, ``mean``, ``pooler`` (the model's own pooled output, last layer only); default:
            the model's own (ours), else ``cls`` and ``mean`` for models with a CLS token and ``mean`` otherwise.
            ``tokens`` keeps every token of a transformer layer, `(N, T, D)`, for the token monitors only.
        subspaces: probe subspaces (``top:p``, ``bottom:q``, ``first:k``, ``last:k``, ``all``).
        monitors: registered per-feature monitors (``monitor_names(per_feature=True)``): ``subspace``, ``knn``,
            ``spectrum`` and the standard protocols ``ridge_cv``, ``linear_grid``, ``knn_grid``, ``few_shot``,
            ``attentive_probe`` and ``pca_maps`` (the last two read the ``tokens`` pooling; docs/protocols.md).
        output_dir: where ``report.json``, ``report.md`` and the figures go (written through a temporary sibling and
            renamed, by the main process only); ``None`` writes nothing.
        batch_size: images per forward pass (per process).
        mixed_precision: ``"no"`` (the model's dtype), ``"bf16"`` or ``"fp16"`` autocast during extraction.
        image_processor, image_size, trust_remote_code: see :func:`~hf_recperc.report.extract.load_backbone`.
        device: where the model runs (default: CUDA when available, else CPU).
        ridge: the probes' ridge penalty. knn_k, knn_temperature: see :class:`~hf_recperc.monitors.KNNMonitor`.
        max_train_samples, max_eval_samples: keep the first N rows of each split (when ``dataset`` is loaded here).
        curves: compute the accuracy-vs-number-of-components curves of the last layer.
        figures: draw the figures (when ``output_dir`` is given).
        data_kwargs: more keyword arguments of :func:`~hf_recperc.images.load_image_dataset` (``seed`` and
            ``train_val_split`` default to the model's run's, see ``dataset``; ``None`` values are dropped).
        progress: show a progress bar per split during extraction (log lines above it).
        monitor_settings: more settings of registered monitors by name (what their ``MonitorContext.settings``
            and card rows read beside ``knn_k``, ``probe_subspaces`` ...); recorded in ``settings``.
        feature_cache: a folder keeping the pooled features per model, data and extraction settings
            (:mod:`hf_recperc.report.cache`); a report whose features are there never loads the model. One process
            only (ignored, with a warning, under several).

    Returns:
        The content of ``report.json``: ``metrics`` (flat ``layers/<layer>/<pooling>/...`` keys, as the trainer's
        ``eval/layers/...``), ``features`` (the same, nested per feature), ``finding`` (one sentence, or why none
        can be stated: :mod:`hf_recperc.findings`), ``findings`` (one per pooling), ``evidence`` (the rows and
        chance level they rest on), ``layers``, ``poolings``, ``subspaces``, ``model`` and ``data`` provenance
        (``data.split``: how train/validation were made; ``data.run_split``: how the model's run made them),
        ``runtime`` and ``versions``.

    Raises:
        ValueError: one line naming the argument, before any costly work and before anything is written.
    """
    started = time.perf_counter()
    subspaces, monitors = list(subspaces), list(dict.fromkeys(monitors))
    _check_arguments(monitors, subspaces, mixed_precision, batch_size, poolings, output_dir, knn_k, ridge)
    monitor_settings = _monitor_settings(monitors, subspaces, ridge, knn_k, knn_temperature, monitor_settings)
    cache = _check_outputs(feature_cache, output_dir)
    inputs = load_inputs(
        model, dataset, layers=layers, poolings=poolings, mixed_precision=mixed_precision,
        image_processor=image_processor, image_size=image_size, trust_remote_code=trust_remote_code, device=device,
        max_train_samples=max_train_samples, max_eval_samples=max_eval_samples, data_kwargs=data_kwargs,
        feature_cache=cache,
    )  # fmt: skip
    knn_k = _bank_k(monitors, knn_k, inputs.data)
    source = feature_source(inputs, batch_size, num_workers, mixed_precision, progress)
    settings = {**report_settings(subspaces, ridge, knn_k, knn_temperature), **(monitor_settings or {})}
    built, metrics, timings = _measure(inputs, source, monitors, settings, curves)
    options = {
        "batch_size": batch_size, "mixed_precision": mixed_precision, "ridge": ridge, "knn_k": knn_k,
        "knn_temperature": knn_temperature, "image_size": image_size, **(monitor_settings or {}),
        "feature_cache": inputs.cache_settings(),
    }  # fmt: skip
    report = assemble_report(
        inputs, metrics, timings, built, settings, monitors, options, source.seen, started
    )
    if output_dir is not None and _rank_and_world()[0] == 0:
        write_report(report, report_figures(report, built) if figures else {}, output_dir)
    return report


def _monitor_settings(
    monitors: list[str],
    subspaces: list[str],
    ridge: float,
    knn_k: int,
    knn_temperature: float,
    monitor_settings,
) -> dict[str, Any]:
    """What the monitors run with (and the report records): their defaults, updated by ``monitor_settings``;
    checked against the report's own settings (ValueError naming ``monitor_settings``) before any work."""
    given = dict(monitor_settings or {})
    monitor_settings = {**monitor_defaults(monitors), **given}  # what the monitors run with, recorded
    check_monitor_settings(
        monitors, {**report_settings(subspaces, ridge, knn_k, knn_temperature), **monitor_settings}, given
    )
    return monitor_settings


def _check_outputs(feature_cache, output_dir) -> FeatureCache | None:
    """The feature cache (``None`` without one), after refusing, before any work, a file where its folder goes
    and a user's file (``report.md``, a figure) where the report would be written."""
    cache = FeatureCache(feature_cache) if feature_cache is not None else None  # a file there: refused now
    if output_dir is not None:
        report_output_dir(output_dir).check()  # a user's report.md or figure: refused before any work
    return cache


def _measure(inputs: ReportInputs, source, monitors: list[str], settings: dict[str, Any], curves: bool):
    """Run the per-feature ``monitors`` over ``source``'s rows and store what was extracted in the feature cache:
    ``(built monitors {feature: {name: monitor}}, metrics, timings)``."""
    built = build_feature_monitors(
        inputs.plan.features, monitors, settings, _bank_dtype(inputs.device),
        {"num_prefix_tokens": inputs.provenance()["num_prefix_tokens"]},
    )  # fmt: skip
    metrics, timings = evaluate(built, source, inputs.plan, curves)
    store_features(inputs, source)
    return built, metrics, timings


def _bank_k(monitors: Sequence[str], knn_k: int, data: ImageData) -> int:
    """The k the kNN monitor uses: ``knn_k``, or the training rows when there are fewer (said in the log); the
    settings, ``report.json`` and the card state this one, never a k that was not used."""
    rows = len(data.train)
    if "knn" in monitors and knn_k > rows:
        logger.warning(
            "knn_k: %d neighbours asked, but the kNN bank holds %d training rows; k = %d", knn_k, rows, rows
        )
        return rows
    return knn_k


@dataclass
class ReportInputs:
    """What a report measures: the model (:class:`~hf_recperc.report.extract.Backbone`; ``None`` when the features
    come from the feature cache, ``cached``), the data, how the model's training run split that data (our
    checkpoints), the features to extract, and the feature-cache entry they are stored in (or ``None``)."""

    backbone: Backbone | None
    data: ImageData
    run_split: dict | None
    plan: FeaturePlan
    device: torch.device
    cache_entry: CacheEntry | None = None
    cached: CachedFeatures | None = None

    def provenance(self) -> dict:
        """The model's provenance for ``report.json`` (a cache hit stored it with the features)."""
        if self.cached is not None:
            return self.cached.provenance
        return _model_provenance(self.backbone, self.plan.hidden, len(self.plan.hidden) - 1)

    def cache_settings(self) -> dict | None:
        """``settings.feature_cache`` of ``report.json``: the entry and whether it was read (a hit)."""
        if self.cache_entry is None:
            return None
        return {"entry": str(self.cache_entry.path), "hit": self.cached is not None}


def load_inputs(
    model, dataset, *, layers, poolings, mixed_precision, image_processor, image_size, trust_remote_code, device,
    max_train_samples, max_eval_samples, data_kwargs, feature_cache: FeatureCache | None = None,
) -> ReportInputs:  # fmt: skip
    """Load the data, then the features from ``feature_cache`` (a hit: the model is never built), or the model
    and the plan of its features (one dry run: layers, poolings, dimensions, resizing)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_split = _run_split(model)
    data = _load_data(dataset, run_split, max_train_samples, max_eval_samples, data_kwargs)
    entry = _cache_entry(feature_cache, model, data, image_processor, image_size, mixed_precision, device)
    cached = entry.lookup(layers, poolings, data) if entry is not None else None
    if cached is not None:
        plan = FeaturePlan((), cached.layer_ids, cached.poolings, cached.dims, cached.resized)
        return ReportInputs(None, data, run_split, plan, device, entry, cached)
    backbone = load_backbone(
        model, image_processor=image_processor, trust_remote_code=trust_remote_code, image_size=image_size,
        device=device,
    )  # fmt: skip
    plan = plan_features(backbone, data, layers, poolings, mixed_precision)
    return ReportInputs(backbone, data, run_split, plan, device, entry)


def _cache_entry(
    cache, model, data, image_processor, image_size, mixed_precision, device
) -> CacheEntry | None:
    """The feature-cache entry of this report: ``None`` without a cache, under several processes (each extracts its
    own rows), or for a model that cannot be identified before loading (:meth:`FeatureCache.entry`)."""
    if cache is None:
        return None
    world = _rank_and_world()[1]
    if world > 1:
        logger.warning("feature_cache: not used with %d processes (each extracts its own rows)", world)
        return None
    return cache.entry(
        model, data, device=device, image_processor=image_processor, image_size=image_size,
        mixed_precision=mixed_precision,
    )  # fmt: skip


def feature_source(
    inputs: ReportInputs, batch_size: int, num_workers: int, mixed_precision: str, progress: bool
):
    """The report's :class:`~hf_recperc.monitors.FeatureSource`: the cached rows replayed in the extraction's blocks
    (a hit), or the backbone's extraction, recorded for the cache when there is an entry to fill."""
    if inputs.cached is not None:
        return inputs.cached.source(batch_size, UPDATE_ROWS, inputs.device)
    source = BackboneFeatureSource(
        inputs.backbone, inputs.data, inputs.plan.layers, inputs.plan.poolings, batch_size, num_workers,
        mixed_precision, progress=progress,
    )  # fmt: skip
    return source if inputs.cache_entry is None else RecordingSource(source, FeatureRecorder())


def store_features(inputs: ReportInputs, source) -> None:
    """Write what ``source`` recorded into the report's feature-cache entry (nothing for a hit or without one)."""
    if not isinstance(source, RecordingSource):
        return
    plan = inputs.plan
    inputs.cache_entry.store(
        source.recorder, num_hidden_layers=len(plan.hidden) - 1, default_poolings=inputs.backbone.default_poolings,
        pooler_by_default=plan.pooler_by_default, resized=plan.resized, provenance=inputs.provenance(),
    )  # fmt: skip


def assemble_report(
    inputs: ReportInputs, metrics: dict, timings: dict, built: dict, settings: dict, monitors: list, options: dict,
    seen: int, started: float,
) -> dict[str, Any]:  # fmt: skip
    """The content of ``report.json`` (see :func:`perception_report`)."""
    plan, data = inputs.plan, inputs.data
    subspaces = settings["probe_subspaces"]
    findings = _findings(
        metrics, plan.layers, plan.poolings, subspaces, _probes(built), _evidence(data), plan.features
    )
    return {
        **findings,
        "metrics": metrics,
        "features": _nested(metrics, plan.features, settings),
        "layers": plan.layers,
        "poolings": plan.poolings,
        "subspaces": subspaces,
        "monitors": monitors,
        "accuracy_curves": timings.pop("accuracy_curves"),
        "model": inputs.provenance(),
        "data": {**_data_provenance(data, inputs.run_split), "resized": plan.resized},
        "settings": options,
        "runtime": {
            "total_seconds": time.perf_counter() - started,
            **timings,
            # a cache hit replays stored rows: no image went through the model
            "images_per_second": None
            if inputs.cached is not None
            else _images_seen(seen, inputs.device) / max(timings["extraction_seconds"], 1e-9),
            "num_processes": _rank_and_world()[1],
            "device": str(inputs.device),
        },
        "versions": library_versions(),
    }


def evaluate(built: dict[str, dict[str, Monitor]], source, plan: FeaturePlan, curves: bool = True):
    """Every feature's monitors over ``source`` through the engine's runner (:func:`hf_recperc.monitors.run_monitors`),
    then the last layer's accuracy-vs-components curves. Returns ``(metrics, timings)``; ``timings`` holds
    ``extraction_seconds``, ``fitting_seconds`` and ``accuracy_curves`` (popped by the caller)."""
    monitors = [monitor for by_name in built.values() for monitor in by_name.values()]
    timings: dict[str, Any] = {}
    metrics = runner.run_monitors(monitors, source, timings)
    started = time.perf_counter()
    last_layer = [layer_feature(plan.layers[-1], pooling) for pooling in plan.poolings]
    accuracy_curves = _accuracy_curves(_probes(built), last_layer) if curves else {}
    return metrics, {
        "extraction_seconds": timings["feed_seconds"],
        "fitting_seconds": timings["compute_seconds"] + time.perf_counter() - started,
        "accuracy_curves": accuracy_curves,
    }


def _probes(built: dict[str, dict[str, Monitor]]) -> dict[str, Monitor]:
    """Feature -> its subspace probe monitor (the findings, curves and figures read the fitted probes)."""
    return {feature: monitors["subspace"] for feature, monitors in built.items() if "subspace" in monitors}


def _run_split(model) -> dict | None:
    """How the training run of one of our checkpoints made its validation split (``run.data_split`` of its
    ``results.json``), or ``None`` for any other model. Runs saved before the split was recorded give the seed and
    fraction of their arguments, without a fingerprint."""
    if not isinstance(model, (str, os.PathLike)) or not Path(model).expanduser().is_dir():
        return None
    path = Path(model).expanduser() / "results.json"
    if not path.is_file():
        return None
    try:
        results = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(
            f"model_name_or_path: {str(path)!r} is not readable JSON ({type(err).__name__}); it says how the "
            "model's training run split its data"
        ) from None
    run, args = results.get("run"), results.get("args")
    if not isinstance(run, dict) or not isinstance(args, dict):
        return None  # a results.json that is not a run's
    recorded = run.get("data_split") or {
        "carved": None, "seed": args.get("seed"), "fraction": args.get("train_val_split")
    }  # fmt: skip
    return {**recorded, "results": str(path)}


def _load_data(dataset, run_split, max_train_samples, max_eval_samples, data_kwargs) -> ImageData:
    """``dataset`` as given (an :class:`ImageData`), or loaded with the row limits and extra loader arguments.

    On one of our checkpoints (``run_split``), a validation split carved out of train uses the run's seed and
    fraction unless ``data_kwargs`` names others; a carve of the run's own rows with other values is refused: it
    would evaluate on the model's training images."""
    if isinstance(dataset, ImageData):
        data = dataset
    else:
        kwargs = {k: v for k, v in (data_kwargs or {}).items() if v is not None}
        for key, name in (("seed", "seed"), ("fraction", "train_val_split")):
            if run_split and run_split.get(key) is not None:
                kwargs.setdefault(name, run_split[key])
        limits = {"max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
        data = load_image_dataset(dataset, **{**kwargs, **{k: v for k, v in limits.items() if v is not None}})
    if run_split:
        conflict = split_conflict(run_split, data.split)
        if conflict:
            raise ValueError(conflict if not isinstance(dataset, ImageData) else f"dataset: {conflict}")
        if run_split.get("carved") and data.split.get("carved") and not _same_carve(run_split, data.split):
            logger.warning(
                "the model's run carved its validation split from other rows (fingerprint %s, here %s): the "
                "report cannot check that its evaluation images were not training images",
                run_split.get("fingerprint"), data.split.get("fingerprint"),
            )  # fmt: skip
    return data


def _same_carve(run_split: dict, split: dict) -> bool | None:
    """Whether ``split`` is the run's split (``None``: the run recorded too little to tell)."""
    if run_split.get("carved") is None:
        return None
    keys = ("carved", "validation_split", "seed", "fraction", "fingerprint")
    return all(run_split.get(key) == split.get(key) for key in keys)


@dataclass
class FeaturePlan:
    """What the report extracts, resolved by one forward pass on a training image (:func:`plan_features`).

    Attributes:
        hidden: the dry run's hidden states (their shapes describe the model).
        layers: layer indices; poolings: pooling names.
        features: ``layer_<i>/<pooling>`` -> the feature's dimension.
        resized: ``{"from": [h, w], "to": [H, W]}`` when the image processor resized the (first) image, else ``None``.
        pooler_by_default: whether ``pooler`` joins the default poolings (:func:`pooler_by_default`).
    """

    hidden: tuple
    layers: list[int]
    poolings: list[str]
    features: dict[str, int]
    resized: dict | None = None
    pooler_by_default: bool = False


def plan_features(
    backbone: Backbone, data: ImageData, layers, poolings, mixed_precision: str = "no"
) -> FeaturePlan:
    """Resolve the layers and poolings (and fail early on those the model cannot do). Without ``poolings``, our
    models (``recperc``) also get ``pooler``, their embedding (what the model card's numbers are about), whenever
    the last layer is probed."""
    hidden, pooled, resized = _dry_run(backbone, data, mixed_precision)
    num_layers = len(hidden) - 1
    layer_ids = parse_layers(layers, num_layers, argument="layers")
    chosen = resolve_poolings(
        poolings, backbone.default_poolings, pooler_by_default(backbone, pooled), num_layers, layer_ids
    )
    if "pooler" in chosen and num_layers not in layer_ids:
        raise ValueError(
            f"pooling: 'pooler' is the model's pooled output of the last layer ({num_layers}); add it to --layers"
        )
    sample = pooled_features(hidden, pooled, layer_ids, chosen, backbone.num_prefix_tokens)  # pooling errors
    dims = {name: int(rows.shape[-1]) for name, rows in sample.items()}
    return FeaturePlan(hidden, layer_ids, chosen, dims, resized, pooler_by_default(backbone, pooled))


def pooler_by_default(backbone: Backbone, pooled: torch.Tensor | None) -> bool:
    """Whether the report adds ``pooler`` to the default poolings: our models with a pooled output."""
    return backbone.kind == "recperc" and pooled is not None


def choose_features(backbone: Backbone, data: ImageData, layers, poolings, mixed_precision: str = "no"):
    """:func:`plan_features` as ``(hidden states of the dry run, layer ids, poolings, {feature name: dimension})``."""
    plan = plan_features(backbone, data, layers, poolings, mixed_precision)
    return plan.hidden, plan.layers, plan.poolings, plan.features


def _accuracy_curves(probes: dict, features: Sequence[str]) -> dict[str, dict[str, list]]:
    """Accuracy vs number of components (``SubspaceProbe.accuracy_curve``) of the given features' probes."""
    curves = {}
    for feature in features:
        if feature in probes:
            X, y = probes[feature].eval_data()  # (N_eval, D), collective: every process calls it
            curve = probes[feature].probe.accuracy_curve(X, y)
            curves[feature] = {key: value.tolist() for key, value in curve.items()}
    return curves


def _findings(metrics, layer_ids, poolings, subspaces, probes, evidence: Evidence, feature_dims) -> dict:
    """``finding``: the main sentence (first pooling); ``findings``: one per pooling (pooler: last layer only);
    ``evidence``: what they rest on (rows, chance level, the thresholds of :mod:`hf_recperc.findings`)."""
    poolings = [p for p in poolings if p != TOKENS]  # token features have no probe: no finding on them
    if not probes:
        return {"finding": None, "findings": {}}
    return {
        "finding": main_finding(metrics, layer_ids, poolings[0], subspaces, evidence, feature_dims),
        "findings": {
            p: main_finding(
                metrics, [i for i in layer_ids if layer_feature(i, p) in probes], p, subspaces, evidence,
                feature_dims,
            )
            for p in poolings
        },
        "evidence": {
            **asdict(evidence), "min_rows": MIN_ROWS, "interval": "95% Wilson binomial interval",
        },
    }  # fmt: skip


def _evidence(data: ImageData) -> Evidence:
    """Rows the findings rest on, and chance: the majority class's share of the evaluation rows."""
    labels = data.validation[data.label_column]
    counts = Counter(int(label) for label in labels)
    chance = max(counts.values()) / len(data.validation) if counts else 1.0
    return Evidence(num_train=len(data.train), num_eval=len(data.validation), chance=chance)


def _images_seen(seen: int, device: torch.device) -> float:
    """Images this process extracted, summed over processes."""
    images = torch.tensor([float(seen)], dtype=torch.float64)
    if is_distributed():  # gloo and nccl both take a CPU / device tensor of the group's backend
        images = images.to(device if torch.distributed.get_backend() == "nccl" else "cpu")
        torch.distributed.all_reduce(images)
    return float(images.item())


def _model_provenance(backbone: Backbone, hidden, num_layers: int) -> dict:
    config = getattr(backbone.model, "config", None)
    return {
        "name_or_path": backbone.name,
        "kind": backbone.kind,
        "class": type(backbone.model).__name__,
        "model_type": getattr(config, "model_type", None),
        "num_parameters": sum(p.numel() for p in backbone.model.parameters()),
        "num_hidden_layers": num_layers,
        "num_prefix_tokens": backbone.num_prefix_tokens,
        "dtype": str(backbone.dtype).removeprefix("torch."),
        "input_shape": list(hidden[0].shape[1:]) if backbone.kind == "timm" else None,
        "commit_hash": getattr(config, "_commit_hash", None),
    }


def _data_provenance(data: ImageData, run_split: dict | None) -> dict:
    """Where the images came from; ``split`` says how train/validation were made, ``run_split`` how the model's
    training run made them (our checkpoints) with ``same_split`` telling whether the report used the same rows."""
    run = None if run_split is None else {**run_split, "same_split": _same_carve(run_split, data.split)}
    return {
        "split": data.split,
        "run_split": run,
        "source": data.source,
        "image_column": data.image_column,
        "label_column": data.label_column,
        "num_train": len(data.train),
        "num_eval": len(data.validation),
        "num_labels": data.num_labels,
        "label_names": data.label_names,
    }


def report_figures(report: dict, built: dict[str, dict[str, Monitor]]) -> dict:
    """The report's figures from its features' monitors (:func:`_figures`)."""
    spectra = {feature: monitors["spectrum"] for feature, monitors in built.items() if "spectrum" in monitors}
    figures = _figures(report, _probes(built), spectra)
    for feature, monitors in built.items():  # the token monitors' pictures (PCA maps), one per layer
        for name, monitor in monitors.items():
            if get_monitor_spec(name).tokens:
                figures.update(
                    {f"{stem}_{feature.replace('/', '_')}": f for stem, f in monitor.figures().items()}
                )
    return figures


def _figures(report: dict, probes: dict, spectra: dict) -> dict:
    """File stem -> Figure: accuracy per layer (top / bottom / all ...; two layers or more), eigenvalue spectrum per
    layer, and the accuracy-vs-components curves of the last layer, each with the chance level."""
    from ..plotting import new_figure  # noqa: PLC0415  (matplotlib only when drawing)

    figures = {}
    num_labels = report["data"]["num_labels"]
    chance = 1.0 / num_labels if num_labels else None
    if probes:
        accuracy = layer_accuracies(
            report["metrics"], report["layers"], report["poolings"], report["subspaces"]
        )
        figure = accuracy_per_layer_figure(accuracy, chance)
        if figure is None:
            logger.info(
                "accuracy_per_layer.png not drawn: one layer probed (--layers all draws accuracy over depth)"
            )
        else:
            figures["accuracy_per_layer"] = figure
    eigenvalues = {}
    for feature, monitor in spectra.items():
        if monitor.eigenvalues_ is not None:
            eigenvalues[feature] = monitor.eigenvalues_
    if not eigenvalues:
        eigenvalues = {feature: monitor.probe.eigenvalues_ for feature, monitor in probes.items()}
    if eigenvalues:
        figures["eigenvalue_spectrum_per_layer"] = spectrum_figure(
            eigenvalues, "Eigenvalue spectrum per layer"
        )
    for feature, curve in report["accuracy_curves"].items():
        figure, axis = new_figure()
        axis.plot(curve["k"], curve["top"], label="top K components")
        axis.plot(curve["k"], curve["bottom"], label="bottom K components")
        if chance is not None:
            axis.axhline(chance, color="0.4", linestyle=":", linewidth=1.0, label=f"chance (1/{num_labels})")
        axis.set(
            xlabel="number of components K",
            ylabel="ridge probe accuracy (validation)",
            title=f"Accuracy vs components ({feature})",
        )
        axis.set_xscale("log")
        axis.legend(fontsize=7)
        axis.grid(alpha=0.3)
        figures[f"accuracy_curve_{feature.replace('/', '_')}"] = figure
    return figures


def _markdown(report: dict) -> str:
    """``report.md``: the finding, then one table row per layer x pooling."""
    model, data, runtime = report["model"], report["data"], report["runtime"]
    subspaces = report["subspaces"]
    lines = [
        f"# Perception report: {model['name_or_path']}",
        "",
        f"**{report['finding']}**" if report["finding"] else "",
        "",
        *[
            f"- {sentence}"
            for p, sentence in report.get("findings", {}).items()
            if sentence != report["finding"]
        ],
        "",
        f"Model: {model['class']} ({model['kind']}, {model['num_parameters']:,} parameters, {model['dtype']}). "
        f"Data: {data['source']} ({data['num_train']} train / {data['num_eval']} evaluation images, "
        f"{data['num_labels']} classes). Probes fitted on train, scored on evaluation (arXiv 2402.11337, "
        "section 2: top/bottom = leading/trailing PCA components of the features holding that share of the "
        f"variance). {runtime['num_processes']} process(es) on {runtime['device']}, "
        f"{runtime['total_seconds']:.1f} s.",
        "",
        *_resize_lines(data, model),
    ]
    header = ["layer", "pooling"]
    header += [
        f"acc {s} (dims)" for s in subspaces if any("accuracy" in r for r in report["features"].values())
    ]
    knn_name, rank_name, alpha_name = REPORT_FIELDS[KNN_ACCURACY], SPECTRUM_FIELDS[0], SPECTRUM_FIELDS[1]
    has_knn = any(knn_name in r for r in report["features"].values())
    has_spectrum = any("spectrum" in r for r in report["features"].values())
    header += ["kNN acc"] if has_knn else []
    header += ["eff. rank", "alpha"] if has_spectrum else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for feature, row in report["features"].items():
        layer, pooling = feature.removeprefix("layer_").split("/")
        if pooling == TOKENS:  # token features have no probe, kNN or spectrum: their numbers are below
            continue
        cells = [layer, pooling]
        if "accuracy" in row:
            cells += [f"{row['accuracy'][s]:.4f} ({row['dims'][s]})" for s in subspaces]
        if has_knn:
            cells.append(f"{row.get(knn_name, math.nan):.4f}")
        if has_spectrum:
            spectrum = row.get("spectrum", {})
            cells += [
                f"{spectrum.get(rank_name, math.nan):.1f}",
                f"{spectrum.get(alpha_name, math.nan):.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines + _protocol_lines(report))


def _protocol_lines(report: dict) -> list[str]:
    """``report.md``'s protocols section: what each monitor that describes itself did (its settings, and that its
    hyperparameters were chosen on training rows only), then one table of their card rows per feature."""
    settings = report["settings"]
    described = monitor_descriptions(report["monitors"], settings)
    if not described:
        return []
    lines = ["## Standard protocols", ""]
    lines += [f"- **{name}**: {sentence}." for name, sentence in described.items()]
    lines.append("")
    rows = {
        feature: registered_card_rows(report["metrics"], settings, feature_prefix(feature), names=described)
        for feature in report["features"]
    }
    labels = list(dict.fromkeys(row.label for pairs in rows.values() for row, _ in pairs))
    if not labels:
        return lines
    lines += ["| feature | measure | value |", "|---|---|---|"]
    for feature, pairs in rows.items():
        lines += [f"| {feature} | {row.label} | {value:{row.format_spec}} |" for row, value in pairs]
    lines.append("")
    return lines


def _resize_lines(data: dict, model: dict) -> list[str]:
    """A sentence (and a blank line) when the model's image processor resized the images, else nothing."""
    resized = data.get("resized")
    if not resized:
        return []
    (h, w), (new_h, new_w) = resized["from"], resized["to"]
    verb = "upscaled" if new_h * new_w > h * w else "downscaled" if new_h * new_w < h * w else "resized"
    return [
        f"Images resized: the {h} x {w} images of {data['source']} were {verb} to {new_h} x {new_w} for this "
        f"model's image processor ({model['class']}; sizes of the first training image).",
        "",
    ]


# Every file a report writes; a user's file under one of these names (or the training run's figures, when the
# report goes into the model's folder) is never overwritten.
REPORT_OUTPUTS = Outputs(
    command="report",
    names=frozenset(
        {"report.json", "report.md", "accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png"}
        | {"accuracy_curve_*.png", f"{PCA_MAPS}_*.png"}
    ),
    legacy=json_marker("report.json", ("metrics", "features", "versions")),
)


def report_output_dir(output_dir: str | os.PathLike) -> OutputDirectory:
    """The report's guarded folder: :meth:`~hf_recperc.publish.OutputDirectory.check` before work, ``write`` after."""
    return OutputDirectory(output_dir, REPORT_OUTPUTS)


def write_report(report: dict, figures: dict, output_dir: str | os.PathLike) -> Path:
    """Write ``report.json``, ``report.md`` and ``<stem>.png`` figures into ``output_dir`` as one set, through the
    guarded writer (:class:`hf_recperc.publish.OutputDirectory`): a failed write leaves no half report, the
    previous report's files are replaced, and a file the report did not write is never overwritten."""
    from ..plotting import save_figure  # noqa: PLC0415

    files = {
        "report.json": functools.partial(write_json, payload=report, indent=1),
        "report.md": functools.partial(write_text, text=_markdown(report)),
    }
    for stem, figure in figures.items():
        files[f"{stem}.png"] = functools.partial(save_figure, figure)
    return report_output_dir(output_dir).write(files)
