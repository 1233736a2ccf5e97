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
