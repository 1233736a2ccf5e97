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
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..data import ImageData, ProcessedImages, load_image_dataset, processor_transform
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
from ..results import KNN_ACCURACY, KNN_WEIGHTED_ACCURACY, LAYERS, SPECTRUM_FIELDS, layer_key
from ..spectral import parse_subspace
from ..validation import check_finite_number, check_positive_int
from ..versions import library_versions
from .extract import Backbone, load_backbone, pooled_features

__all__ = [
    "perception_report",
    "MONITORS",
    "MIXED_PRECISION",
    "main_finding",
    "write_report",
    "extract_split",
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
    try:
        with torch.inference_mode(), _autocast(backbone.device, mixed_precision):
            hidden, pooled = backbone.hidden_states(pixel_values)
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
) -> int:
    """Stream one split through the model and the monitors; returns the number of images seen.

    Args:
        loader: yields ``{"pixel_values": (B, C, H, W), "labels": (B,)}`` batches (this process's shard).
        split: ``"train"`` (rows the monitors fit on) or ``"eval"`` (rows they score).
        update_rows: pooled rows are handed to the monitors in blocks of at least this many: each update pays
            fixed checks (labels, finiteness, class columns) besides its ``X.T @ X``; blocks of 4096 rows fit at
            the bare ``X.T @ X`` + ``eigh`` floor (0.96x), blocks of 1024 cost 1.43x (benchmarks/feature_extraction.py).
    """
    seen, pending, pending_labels = 0, {}, []

    def flush():
        if pending_labels:
            features = {name: torch.cat(rows) for name, rows in pending.items()}  # (n, D) float32
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


def _loader(split, rows, backbone: Backbone, data: ImageData, batch_size: int, num_workers: int):
    transform = processor_transform(
        backbone.processor, data.image_column, data.label_column, backbone.num_channels, data.label_names
    )
    shard = ProcessedImages(split.select(rows), transform, data.image_column)  # a corrupt image names its row
    return torch.utils.data.DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def _build_monitors(features, names, subspaces, ridge, knn_k, knn_temperature, bank_dtype):
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
    metrics: dict[str, float], layers: Sequence[int], pooling: str, subspaces: Sequence[str]
) -> str:
    """One sentence on where the class information sits: the first ``bottom:*`` against the first ``top:*``
    subspace across layers (the paper's comparison, arXiv 2402.11337 section 3)."""
    top = next((s for s in subspaces if s.startswith("top:")), None)
    bottom = next((s for s in subspaces if s.startswith("bottom:")), None)
    name = {
        s: f"the {s.split(':')[0]} {float(s.split(':')[1]):.0%} of the variance" for s in (top, bottom) if s
    }
    if top is None or bottom is None:
        spec = subspaces[0]
        accuracy = {
            i: metrics.get(layer_key(layer_feature(i, pooling), "accuracy", spec), math.nan) for i in layers
        }
        finite = {i: a for i, a in accuracy.items() if math.isfinite(a)}
        if not finite:
            return f"No {spec} subspace could be probed ({pooling} pooling)."
        best = max(finite, key=finite.get)
        return f"The {spec} probe is most accurate at layer {best} ({finite[best]:.3f}, {pooling} pooling)."
    wins = []
    for i in layers:
        feature = layer_feature(i, pooling)
        a_top = metrics.get(layer_key(feature, "accuracy", top), math.nan)
        a_bottom = metrics.get(layer_key(feature, "accuracy", bottom), math.nan)
        if math.isfinite(a_top) and math.isfinite(a_bottom):
            wins.append((i, a_bottom > a_top))
    if not wins:
        return f"Neither {top} nor {bottom} could be probed ({pooling} pooling): the features are degenerate."
    first_bottom = next((k for k in range(len(wins)) if all(w for _, w in wins[k:])), None)
    if first_bottom == 0:
        where = "at every layer probed" if len(wins) > 1 else f"at layer {wins[0][0]}"
        return f"{name[bottom].capitalize()} carries more class information than {name[top]} {where} ({pooling} pooling)."
    if first_bottom is not None:
        return (
            f"{name[bottom].capitalize()} carries more class information than {name[top]} from layer "
            f"{wins[first_bottom][0]} on ({pooling} pooling)."
        )
    if not any(w for _, w in wins):
        where = "at every layer probed" if len(wins) > 1 else f"at layer {wins[0][0]}"
        return f"{name[top].capitalize()} carries more class information than {name[bottom]} {where} ({pooling} pooling)."
    better = ", ".join(str(i) for i, w in wins if w)
    return (
        f"{name[bottom].capitalize()} carries more class information than {name[top]} at layers {better} only "
        f"({pooling} pooling)."
    )


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
) -> dict[str, Any]:
    """Probe a vision model's features layer by layer: subspace probes, kNN and spectrum per layer x pooling.

    Args:
        model: a Hub id or local directory of a transformers vision model (ours included), ``timm:<name>``,
            ``hf-hub:timm/<name>``, a ``timm.models.save_for_hf`` directory, or a built ``nn.Module``.
        dataset: anything :func:`hf_recperc.data.load_image_dataset` accepts (``None`` = digits), or an
            :class:`~hf_recperc.data.ImageData`; its train split fits the probes / fills the kNN bank, its
            validation split is scored.
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
        data_kwargs: more keyword arguments of :func:`~hf_recperc.data.load_image_dataset`.

    Returns:
        The content of ``report.json``: ``metrics`` (flat ``layers/<layer>/<pooling>/...`` keys, as the trainer's
        ``eval/layers/...``), ``features`` (the same, nested per feature), ``finding`` (one sentence), ``layers``,
        ``poolings``, ``subspaces``, ``model`` and ``data`` provenance, ``runtime`` and ``versions``.

    Raises:
        ValueError: one line naming the argument, before any costly work and before anything is written.
    """
    started = time.perf_counter()
    subspaces, monitors = list(subspaces), list(dict.fromkeys(monitors))
    _check_arguments(monitors, subspaces, mixed_precision, batch_size, poolings, output_dir, knn_k, ridge)
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    backbone = load_backbone(
        model, image_processor=image_processor, trust_remote_code=trust_remote_code, image_size=image_size,
        device=device,
    )  # fmt: skip
    data = _load_data(dataset, max_train_samples, max_eval_samples, data_kwargs)
    hidden, layer_ids, poolings, features = _choose_features(
        backbone, data, layers, poolings, mixed_precision
    )
    probes, spectra, knns = _build_monitors(
        features, monitors, subspaces, ridge, knn_k, knn_temperature, _bank_dtype(device)
    )
    all_monitors = [*probes.values(), *spectra.values(), *knns.values()]
    rank, world = _rank_and_world()
    timings = {}
    with _timed(timings, "extraction_seconds"):
        seen = 0
        for split, source in ((TRAIN, data.train), (EVAL, data.validation)):
            loader = _loader(source, range(rank, len(source), world), backbone, data, batch_size, num_workers)
            seen += extract_split(backbone, loader, layer_ids, poolings, split, all_monitors, mixed_precision)
    with _timed(timings, "fitting_seconds"):
        metrics = _compute(all_monitors)
        last_layer = [layer_feature(layer_ids[-1], pooling) for pooling in poolings]
        accuracy_curves = _accuracy_curves(probes, last_layer) if curves else {}
    report = {
        **_findings(metrics, layer_ids, poolings, subspaces, probes),
        "metrics": metrics,
        "features": _nested(metrics, features, subspaces),
        "layers": layer_ids,
        "poolings": poolings,
        "subspaces": subspaces,
        "monitors": monitors,
        "accuracy_curves": accuracy_curves,
        "model": _model_provenance(backbone, hidden, len(hidden) - 1),
        "data": _data_provenance(data),
        "settings": {
            "batch_size": batch_size,
            "mixed_precision": mixed_precision,
            "ridge": ridge,
            "knn_k": knn_k,
            "knn_temperature": knn_temperature,
            "image_size": image_size,
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


@contextlib.contextmanager
def _timed(timings: dict, name: str):
    """Record the wall time of the ``with`` block as ``timings[name]`` (seconds)."""
    started = time.perf_counter()
    yield
    timings[name] = time.perf_counter() - started


def _load_data(dataset, max_train_samples, max_eval_samples, data_kwargs) -> ImageData:
    """``dataset`` as given (an :class:`ImageData`), or loaded with the row limits and extra loader arguments."""
    if isinstance(dataset, ImageData):
        return dataset
    limits = {"max_train_samples": max_train_samples, "max_eval_samples": max_eval_samples}
    return load_image_dataset(
        dataset, **{**(data_kwargs or {}), **{k: v for k, v in limits.items() if v is not None}}
    )


def _choose_features(backbone: Backbone, data: ImageData, layers, poolings, mixed_precision: str):
    """One forward pass on a few images resolves the layers and poolings (and fails early on those the model cannot
    do). Returns ``(hidden states of the dry run, layer ids, poolings, feature names)``."""
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
    return hidden, layer_ids, poolings, list(sample)


def _compute(monitors) -> dict[str, float]:
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


def _findings(metrics, layer_ids, poolings, subspaces, probes) -> dict:
    """``finding``: the main sentence (first pooling); ``findings``: one per pooling (pooler: last layer only)."""
    if not probes:
        return {"finding": None, "findings": {}}
    return {
        "finding": main_finding(metrics, layer_ids, poolings[0], subspaces),
        "findings": {
            p: main_finding(metrics, [i for i in layer_ids if layer_feature(i, p) in probes], p, subspaces)
            for p in poolings
        },
    }


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


def _data_provenance(data: ImageData) -> dict:
    return {
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


def write_report(report: dict, figures: dict, output_dir: str | os.PathLike) -> Path:
    """Write ``report.json``, ``report.md`` and ``<stem>.png`` figures into ``output_dir`` atomically: everything
    goes to a temporary sibling that replaces ``output_dir`` at the end (a failed write leaves no half report)."""
    from ..plotting import save_figure  # noqa: PLC0415

    output_dir = Path(output_dir)
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    partial = output_dir.with_name(f".{output_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    try:
        (partial / "report.json").write_text(json.dumps(report, indent=1, allow_nan=True) + "\n")
        (partial / "report.md").write_text(_markdown(report))
        for stem, figure in figures.items():
            save_figure(figure, partial / f"{stem}.png")
        if output_dir.exists():  # replace a previous report (and only report files: keep anything else there)
            for item in partial.iterdir():
                os.replace(item, output_dir / item.name)
            partial.rmdir()
        else:
            os.replace(partial, output_dir)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return output_dir
