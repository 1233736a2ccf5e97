"""The names of every measurement, in one place: the schema of ``history.json``, ``results.json`` and the card.

A history record is a flat ``{key: number}`` dict; ``results.json`` is the last record plus ``args``, ``run`` and
``versions`` (:class:`RunResults`). Monitors (:mod:`hf_recperc.monitors`) return keys *without* the ``eval/``
prefix; the trainer adds it (:func:`eval_key`). Everything that reads these files (cards, plots, ``compare_runs``,
tests) builds the keys with the helpers below instead of spelling strings.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "EVAL_PREFIX",
    "TRAIN_LOSSES",
    "RECONSTRUCTION_MSE",
    "ONLINE_PROBE_ACCURACY",
    "SUBSPACE_PROBE",
    "BAND_ERROR",
    "KNN_ACCURACY",
    "KNN_WEIGHTED_ACCURACY",
    "SPECTRUM",
    "LAYERS",
    "SUBSPACE_FIELDS",
    "SPECTRUM_FIELDS",
    "REPORT_FIELDS",
    "DEFAULT_BAND_EDGES",
    "POOLINGS",
    "RunInfo",
    "RunResults",
    "eval_key",
    "subspace_key",
    "layer_key",
    "band_key",
    "spectrum_key",
    "train_key",
    "TOKENS",
    "RIDGE_CV",
    "LINEAR_GRID",
    "KNN_GRID",
    "FEW_SHOT",
    "ATTENTIVE_PROBE",
    "PCA_MAPS",
    "ridge_cv_key",
    "linear_grid_key",
    "knn_grid_key",
    "few_shot_key",
    "attentive_key",
]

EVAL_PREFIX = "eval/"
TRAIN_LOSSES = ("loss", "reconstruction_loss", "supervised_loss")

RECONSTRUCTION_MSE = "reconstruction_mse"
ONLINE_PROBE_ACCURACY = "online_probe_accuracy"
SUBSPACE_PROBE = "subspace_probe"  # subspace_probe/{accuracy,dims,explained_variance}/<subspace>
BAND_ERROR = "band_error"  # band_error/<lo>-<hi>
KNN_ACCURACY = "knn/accuracy"  # majority vote of the k nearest training embeddings (cosine)
KNN_WEIGHTED_ACCURACY = "knn/weighted_accuracy"  # votes weighted by exp(similarity / temperature)
SPECTRUM = "spectrum"  # spectrum/{effective_rank,alpha,participation_ratio,components_90}
LAYERS = "layers"  # layers/<feature>/{accuracy,dims,explained_variance}/<subspace>
SUBSPACE_FIELDS = ("accuracy", "dims", "explained_variance")
# Cumulative explained-variance edges of the pixel-spectrum bands of the band-error monitor.
DEFAULT_BAND_EDGES = (0.0, 0.5, 0.8, 0.9, 0.97, 1.0)
# How a hidden state becomes one vector per image (hf_recperc.monitors.layers).
POOLINGS = ("cls", "mean", "pooler")
# The report's pooling that keeps every token of a layer, `(B, T, D)`: read only by token monitors (attentive probe,
# PCA maps), never by the probes, kNN or spectrum (tokens are T times bigger than a pooled row).
TOKENS = "tokens"
# The standard protocols' key levels (docs/protocols.md): <protocol>/<field>.
RIDGE_CV = "ridge_cv"
LINEAR_GRID = "linear_grid"
KNN_GRID = "knn_grid"
FEW_SHOT = "few_shot"
ATTENTIVE_PROBE = "attentive_probe"
PCA_MAPS = "pca_maps"  # a figure only: no key
SPECTRUM_FIELDS = ("effective_rank", "alpha", "participation_ratio", "components_90")
# report.json's per-feature names of the kNN keys ({feature: {"knn_accuracy": ...}}).
REPORT_FIELDS = {KNN_ACCURACY: "knn_accuracy", KNN_WEIGHTED_ACCURACY: "knn_weighted_accuracy"}


def eval_key(name: str) -> str:
    """``"reconstruction_mse"`` -> ``"eval/reconstruction_mse"`` (history and results keys)."""
    return f"{EVAL_PREFIX}{name}"


def train_key(loss: str) -> str:
    """``"loss"`` -> ``"train/loss"``: mean training loss since the previous evaluation."""
    return f"train/{loss}"


def subspace_key(field_name: str, subspace: str) -> str:
    """``("accuracy", "top:0.9")`` -> ``"subspace_probe/accuracy/top:0.9"``."""
    return f"{SUBSPACE_PROBE}/{field_name}/{subspace}"


def layer_key(feature: str, field_name: str, subspace: str) -> str:
    """``("layer_3/cls", "accuracy", "all")`` -> ``"layers/layer_3/cls/accuracy/all"``."""
    return f"{LAYERS}/{feature}/{field_name}/{subspace}"


def band_key(name: str) -> str:
    """``"0.00-0.50"`` -> ``"band_error/0.00-0.50"``."""
    return f"{BAND_ERROR}/{name}"


def spectrum_key(name: str) -> str:
    """``"effective_rank"`` -> ``"spectrum/effective_rank"``."""
    return f"{SPECTRUM}/{name}"


def ridge_cv_key(field_name: str) -> str:
    """``"accuracy"`` -> ``"ridge_cv/accuracy"``. Fields: ``accuracy`` (test, at the chosen penalty),
    ``cv_accuracy`` (its mean fold accuracy), ``ridge`` (chosen, relative), ``alpha`` (chosen, covariance units),
    ``num_folds``, ``selection``; and ``cv_accuracy/ridge=<r>`` per grid value."""
    return f"{RIDGE_CV}/{field_name}"


def linear_grid_key(field_name: str) -> str:
    """``"accuracy"`` -> ``"linear_grid/accuracy"``. Fields: ``accuracy`` (test, chosen setting, refitted on all
    training rows), ``holdout_accuracy`` (the chosen setting's), ``learning_rate``, ``weight_decay``, ``selection``,
    and ``holdout_accuracy/lr=<a>,wd=<b>`` per setting."""
    return f"{LINEAR_GRID}/{field_name}"


def knn_grid_key(field_name: str, k: int | None = None, temperature: float | None = None) -> str:
    """Keys of the kNN grid. Without ``k``: ``knn_grid/<field>`` (``accuracy``, ``holdout_accuracy``, ``k``,
    ``temperature`` of the chosen weighted setting; ``selection``, ``clipped``); with ``k``:
    ``knn_grid/accuracy/k=<k>`` (majority vote), with ``k`` and ``temperature``:
    ``knn_grid/weighted_accuracy/k=<k>,t=<T>`` (test accuracy of each setting; ``k`` as asked, even when clipped)."""
    if k is None:
        return f"{KNN_GRID}/{field_name}"
    if temperature is None:
        return f"{KNN_GRID}/{field_name}/k={k}"
    return f"{KNN_GRID}/{field_name}/k={k},t={temperature:g}"


def few_shot_key(field_name: str, shots: int | None = None) -> str:
    """``("accuracy", 5)`` -> ``"few_shot/accuracy/5-shot"`` (mean over draws); fields ``accuracy``, ``std``;
    without ``shots``: ``few_shot/<field>`` (``num_draws``, ``ridge``, ``selection``)."""
    return f"{FEW_SHOT}/{field_name}" if shots is None else f"{FEW_SHOT}/{field_name}/{shots}-shot"


def attentive_key(field_name: str) -> str:
    """``"accuracy"`` -> ``"attentive_probe/accuracy"`` (fields: ``accuracy``, ``epochs``, ``selection``)."""
    return f"{ATTENTIVE_PROBE}/{field_name}"


@dataclass
class RunInfo:
    """What a training run was: the ``run`` block of ``results.json`` and of the model card."""

    family: str
    model_type: str
    preset: str | None
    num_parameters: int
    dataset: str
    num_train: int
    num_validation: int
    label_names: list[str]
    num_processes: int
    total_batch_size: int
    effective_learning_rate: float
    max_steps: int
    runtime_seconds: float
    device: str
    mixed_precision: str
    corruption: str
    guidance: float
    monitors: list[str]
    spectral_band_dims: list[int] | None = None
    data_split: dict | None = None  # ImageData.split: a report on the model evaluates the same rows


@dataclass
class RunResults:
    """``results.json``: the final history record (flat metric keys), every argument, the run, library versions."""

    metrics: dict[str, Any]
    args: dict[str, Any]
    run: RunInfo
    versions: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON layout: metrics at the top level (as ``history.json`` records), then the blocks."""
        return {**self.metrics, "args": self.args, "run": asdict(self.run), "versions": self.versions}

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunResults:
        blocks = {"args", "run", "versions"}
        metrics = {k: v for k, v in payload.items() if k not in blocks}
        run = RunInfo(**{k: payload["run"].get(k) for k in RunInfo.__dataclass_fields__})
        return cls(metrics=metrics, args=payload["args"], run=run, versions=payload.get("versions", {}))
