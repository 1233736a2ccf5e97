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
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData, ProcessedImages, load_image_dataset, processor_transform, split_conflict
from ..findings import (
    MIN_ROWS,
    Evidence,
    SubspaceResult,
    best_subspace_finding,
    compare_subspaces,
    subspace_finding,
)
from ..monitors import (
    DEFAULT_SUBSPACES,
    EVAL,
    POOLINGS,
    TRAIN,
    KNNMonitor,
    MonitorBatch,
    SpectrumMonitor,
    SubspaceProbeMonitor,
    accuracy_per_layer_figure,
    is_distributed,
    layer_feature,
    parse_layers,
    spectrum_figure,
)
from ..publish import OutputDirectory, Outputs, json_marker, write_json, write_text
from ..results import KNN_ACCURACY, KNN_WEIGHTED_ACCURACY, LAYERS, SPECTRUM_FIELDS, layer_key
from ..spectral import parse_subspace
from ..validation import check_finite_number, check_positive_int
from ..versions import library_versions
from .cache import FeatureCache, FeatureRecorder
from .extract import Backbone, BackboneError, load_backbone, pooled_features

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
    if not monitors:
        raise ValueError(f"monitors: expected at least one of {MONITORS}, got none")
    for name in monitors:
        if name not in MONITORS:
            raise ValueError(f"monitors: expected names among {MONITORS}, got {name!r}")
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
        if pooling not in POOLINGS:
            raise ValueError(f"pooling: expected names among {POOLINGS}, got {pooling!r}")
    if output_dir is not None and Path(output_dir).exists() and not Path(output_dir).is_dir():
        raise ValueError(f"output_dir: {str(output_dir)!r} exists and is not a directory")


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
    return hidden, pooled


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
    """Stream one split through the model and the monitors; returns the number of images seen.

    Args:
        loader: yields ``{"pixel_values": (B, C, H, W), "labels": (B,)}`` batches (this process's shard).
        split: ``"train"`` (rows the monitors fit on) or ``"eval"`` (rows they score).
        update_rows: pooled rows are handed to the monitors in blocks of at least this many: each update pays
            fixed checks (labels, finiteness, class columns) besides its ``X.T @ X``; blocks of 4096 rows fit at
            the bare ``X.T @ X`` + ``eigh`` floor (0.96x), blocks of 1024 cost 1.43x (benchmarks/feature_extraction.py).
        aliases: more names of extracted features, e.g. ``{"embedding": "layer_12/cls"}`` for monitors that read
            ``"embedding"`` (the same tensor under both names).
    """
    seen, pending, pending_labels = 0, {}, []

    def flush():
        if pending_labels:
            features = {name: torch.cat(rows) for name, rows in pending.items()}  # (n, D) float32
            features.update({alias: features[name] for alias, name in (aliases or {}).items()})
            labels = torch.cat(pending_labels)
            for monitor in monitors:
                monitor.update(MonitorBatch(split, labels=labels, features=features))
        pending.clear()
        pending_labels.clear()

    for batch in loader:
        pixel_values = batch["pixel_values"].to(backbone.device, backbone.dtype, non_blocking=True)
        with torch.inference_mode(), _autocast(backbone.device, mixed_precision):
            hidden, pooled = backbone.hidden_states(pixel_values)
            features = pooled_features(hidden, pooled, layers, poolings, backbone.num_prefix_tokens)
        # Monitors update outside inference mode (their accumulators must stay ordinary tensors: all_reduce
        # writes into them in place later); torch.cat in flush() turns the inference rows into ordinary ones.
        for name, rows in features.items():
            pending.setdefault(name, []).append(rows)
        pending_labels.append(batch["labels"].to(backbone.device))
        seen += pixel_values.shape[0]
        if sum(len(labels) for labels in pending_labels) >= update_rows:
            flush()
    flush()
    return seen


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
    """Feed the monitors this process's shard (``rows[rank::world]``) of ``data.train`` (``"train"``) and
    ``data.validation`` (``"eval"``), via :func:`extract_split`; returns the images this process extracted.
    The perception report and the trainer callbacks (:mod:`hf_recperc.integrations`) share this pass."""
    rank, world = _rank_and_world()
    seen = 0
    for split, source in ((TRAIN, data.train), (EVAL, data.validation)):
        loader = _loader(source, range(rank, len(source), world), backbone, data, batch_size, num_workers)
        seen += extract_split(
            backbone, loader, layers, poolings, split, monitors, mixed_precision, aliases=aliases
        )
    return seen


def _loader(split, rows, backbone: Backbone, data: ImageData, batch_size: int, num_workers: int):
    transform = processor_transform(
        backbone.processor, data.image_column, data.label_column, backbone.num_channels, data.label_names
    )
    shard = ProcessedImages(split.select(rows), transform, data.image_column)  # a corrupt image names its row
    return torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def build_monitors(features, names, subspaces, ridge, knn_k, knn_temperature, bank_dtype=None):
    """Per feature: the subspace probe, the spectrum (reusing the probe's eigenvalues) and kNN, keyed
    ``layers/<feature>/...`` like :class:`~hf_recperc.monitors.LayerProbeMonitor`."""
    probes, spectra, knns = {}, {}, {}
    for feature in features:
        prefix = f"{LAYERS}/{feature}/"
        if "subspace" in names:
            probes[feature] = SubspaceProbeMonitor(feature, subspaces, ridge=ridge, prefix=prefix)
        if "spectrum" in names:
            spectra[feature] = SpectrumMonitor(feature, source=probes.get(feature), prefix=prefix)
        if "knn" in names:
            knns[feature] = KNNMonitor(
                feature, k=knn_k, temperature=knn_temperature, bank_dtype=bank_dtype, prefix=prefix
            )
    return probes, spectra, knns


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


def _nested(metrics: dict[str, float], features: Sequence[str], subspaces: Sequence[str]) -> dict[str, dict]:
    """Flat ``layers/<feature>/...`` keys -> ``{feature: {"accuracy": {S: a}, "dims": ..., "knn_accuracy": ...}}``."""
    table = {}
    for feature in features:
        prefix = f"{LAYERS}/{feature}/"
        row: dict[str, Any] = {}
        for field_name in ("accuracy", "dims", "explained_variance"):
            values = {
                s: metrics[f"{prefix}{field_name}/{s}"]
                for s in subspaces
                if f"{prefix}{field_name}/{s}" in metrics
            }
            if values:
                row[field_name] = values
        for key, name in ((KNN_ACCURACY, "knn_accuracy"), (KNN_WEIGHTED_ACCURACY, "knn_weighted_accuracy")):
            if f"{prefix}{key}" in metrics:
                row[name] = metrics[f"{prefix}{key}"]
        spectrum = {
            f: metrics[f"{prefix}spectrum/{f}"] for f in SPECTRUM_FIELDS if f"{prefix}spectrum/{f}" in metrics
        }
        if spectrum:
            row["spectrum"] = spectrum
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
    feature_cache: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """Probe a vision model's features layer by layer: subspace probes, kNN and spectrum per layer x pooling.

    Args:
        model: a Hub id or local directory of a transformers vision model (ours included), ``timm:<name>``,
            ``hf-hub:timm/<name>``, a ``timm.models.save_for_hf`` directory, or a built ``nn.Module``.
        dataset: anything :func:`hf_recperc.data.load_image_dataset` accepts (``None`` = digits), or an
            :class:`~hf_recperc.data.ImageData`; its train split fits the probes / fills the kNN bank, its
            validation split is scored. For one of our checkpoints (a directory with the run's ``results.json``) a
            validation split carved out of train uses the run's seed and fraction, so that no training image of the
            model is scored; other values on the run's own rows are refused.
        layers: ``"last"``, ``"all"`` (every block) or indices (0 = the embedding/input stage, negative from the end).
        poolings: among ``cls``, ``mean``, ``pooler`` (the model's own pooled output, last layer only); default:
            the model's own (ours), else ``cls`` and ``mean`` for models with a CLS token and ``mean`` otherwise.
        subspaces: probe subspaces (``top:p``, ``bottom:q``, ``first:k``, ``last:k``, ``all``).
        monitors: among ``subspace``, ``knn``, ``spectrum``.
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
        data_kwargs: more keyword arguments of :func:`~hf_recperc.data.load_image_dataset` (``seed`` and
            ``train_val_split`` default to the model's run's, see ``dataset``; ``None`` values are dropped).
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
    cache = FeatureCache(feature_cache) if feature_cache is not None else None  # a file there: refused now
    if output_dir is not None:
        report_output_dir(output_dir).check()  # a user's report.md or figure: refused before any work
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    run_split = _run_split(model)
    data = _load_data(dataset, run_split, max_train_samples, max_eval_samples, data_kwargs)
    rank, world = _rank_and_world()
    # ---- feature cache (hf_recperc/report/cache.py): a hit replaces loading the model and extracting ----
    entry = _cache_entry(cache, world, model, data, image_processor, image_size, mixed_precision, device)
    cached = entry.lookup(layers, poolings, data) if entry is not None else None
    if cached is None:
        backbone = load_backbone(
            model, image_processor=image_processor, trust_remote_code=trust_remote_code, image_size=image_size,
            device=device,
        )  # fmt: skip
        hidden, layer_ids, poolings, features = choose_features(
            backbone, data, layers, poolings, mixed_precision
        )
    else:
        layer_ids, poolings, features = cached.layer_ids, cached.poolings, cached.dims
    # ---- end of the feature cache's first part ----
    probes, spectra, knns = build_monitors(
        features, monitors, subspaces, ridge, knn_k, knn_temperature, _bank_dtype(device)
    )
    all_monitors = [*probes.values(), *spectra.values(), *knns.values()]
    timings = {}
    with _timed(timings, "extraction_seconds"):
        # ---- feature cache: replay a hit, or record what the extraction gives and store it ----
        if cached is not None:
            seen = cached.feed(all_monitors, batch_size, UPDATE_ROWS, device)
        else:
            recorder = [FeatureRecorder()] if entry is not None else []
            seen = extract_splits(
                backbone, data, layer_ids, poolings, [*all_monitors, *recorder], batch_size, num_workers,
                mixed_precision,
            )  # fmt: skip
            if entry is not None:
                entry.store(
                    recorder[0], num_hidden_layers=len(hidden) - 1, default_poolings=backbone.default_poolings,
                    provenance=_model_provenance(backbone, hidden, len(hidden) - 1),
                )  # fmt: skip
        # ---- end of the feature cache's second part ----
    with _timed(timings, "fitting_seconds"):
        metrics = compute_monitors(all_monitors)
        last_layer = [layer_feature(layer_ids[-1], pooling) for pooling in poolings]
        accuracy_curves = _accuracy_curves(probes, last_layer) if curves else {}
    report = {
        **_findings(metrics, layer_ids, poolings, subspaces, probes, _evidence(data), features),
        "metrics": metrics,
        "features": _nested(metrics, features, subspaces),
        "layers": layer_ids,
        "poolings": poolings,
        "subspaces": subspaces,
        "monitors": monitors,
        "accuracy_curves": accuracy_curves,
        "model": _model_provenance(backbone, hidden, len(hidden) - 1)
        if cached is None
        else cached.provenance,
        "data": _data_provenance(data, run_split),
        "settings": {
            "batch_size": batch_size,
            "mixed_precision": mixed_precision,
            "ridge": ridge,
            "knn_k": knn_k,
            "knn_temperature": knn_temperature,
            "image_size": image_size,
            "feature_cache": None if entry is None else {"entry": str(entry.path), "hit": cached is not None},
        },
        "runtime": {
            "total_seconds": time.perf_counter() - started,
            **timings,
            "images_per_second": _images_seen(seen, device) / max(timings["extraction_seconds"], 1e-9),
            "num_processes": world,
            "device": str(device),
        },
        "versions": library_versions(),
    }
    if output_dir is not None and rank == 0:
        drawn = _figures(report, probes, spectra) if figures else {}
        write_report(report, drawn, output_dir)
    return report


def _cache_entry(cache, world, model, data, image_processor, image_size, mixed_precision, device):
    """The feature-cache entry of this report: ``None`` without a cache, under several processes (each extracts its
    own rows), or for a model that cannot be identified before loading (:meth:`FeatureCache.entry`)."""
    if cache is None:
        return None
    if world > 1:
        logger.warning("feature_cache: not used with %d processes (each extracts its own rows)", world)
        return None
    settings = {
        "image_processor": image_processor,
        "image_size": image_size,
        "mixed_precision": mixed_precision,
    }
    return cache.entry(model, data, device=device, **settings)


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    """Record the wall time of the ``with`` block as ``timings[name]`` (seconds)."""
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


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


def choose_features(backbone: Backbone, data: ImageData, layers, poolings, mixed_precision: str = "no"):
    """One forward pass on a few images resolves the layers and poolings (and fails early on those the model cannot
    do). Returns ``(hidden states of the dry run, layer ids, poolings, {feature name: dimension})``."""
    hidden, pooled = _dry_run(backbone, data, mixed_precision)
    num_layers = len(hidden) - 1
    layer_ids = parse_layers(layers, num_layers, argument="layers")
    poolings = list(dict.fromkeys(poolings or backbone.default_poolings))
    if "pooler" in poolings and num_layers not in layer_ids:
        raise ValueError(
            f"pooling: 'pooler' is the model's pooled output of the last layer ({num_layers}); add it to --layers"
        )
    sample = pooled_features(
        hidden, pooled, layer_ids, poolings, backbone.num_prefix_tokens
    )  # pooling errors
    return hidden, layer_ids, poolings, {name: int(rows.shape[-1]) for name, rows in sample.items()}


def compute_monitors(monitors) -> dict[str, float]:
    """Merge every monitor across processes, then compute: flat metric keys."""
    for monitor in monitors:
        monitor.all_reduce()
    metrics: dict[str, float] = {}
    for monitor in monitors:
        metrics.update(monitor.compute())
    return metrics


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


def _figures(report: dict, probes: dict, spectra: dict) -> dict:
    """File stem -> Figure: accuracy per layer (top / bottom / all ...; two layers or more), eigenvalue spectrum per
    layer, and the accuracy-vs-components curves of the last layer, each with the chance level."""
    from ..plotting import new_figure  # noqa: PLC0415  (matplotlib only when drawing)

    figures = {}
    layers, metrics = report["layers"], report["metrics"]
    num_labels = report["data"]["num_labels"]
    chance = 1.0 / num_labels if num_labels else None
    if probes:
        accuracy = {
            (pooling, spec): {
                i: metrics[layer_key(layer_feature(i, pooling), "accuracy", spec)]
                for i in layers
                if layer_feature(i, pooling) in probes
            }
            for pooling in report["poolings"]
            for spec in report["subspaces"]
        }
        figure = accuracy_per_layer_figure(
            {key: values for key, values in accuracy.items() if values}, chance
        )
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
    ]
    header = ["layer", "pooling"]
    header += [
        f"acc {s} (dims)" for s in subspaces if any("accuracy" in r for r in report["features"].values())
    ]
    has_knn = any("knn_accuracy" in r for r in report["features"].values())
    has_spectrum = any("spectrum" in r for r in report["features"].values())
    header += ["kNN acc"] if has_knn else []
    header += ["eff. rank", "alpha"] if has_spectrum else []
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for feature, row in report["features"].items():
        layer, pooling = feature.removeprefix("layer_").split("/")
        cells = [layer, pooling]
        if "accuracy" in row:
            cells += [f"{row['accuracy'][s]:.4f} ({row['dims'][s]})" for s in subspaces]
        if has_knn:
            cells.append(f"{row.get('knn_accuracy', math.nan):.4f}")
        if has_spectrum:
            spectrum = row.get("spectrum", {})
            cells += [
                f"{spectrum.get('effective_rank', math.nan):.1f}",
                f"{spectrum.get('alpha', math.nan):.2f}",
            ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    return "\n".join(lines)


# Every file a report writes; a user's file under one of these names (or the training run's figures, when the
# report goes into the model's folder) is never overwritten.
REPORT_OUTPUTS = Outputs(
    command="report",
    names=frozenset(
        {"report.json", "report.md", "accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png"}
        | {"accuracy_curve_*.png"}
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
