"""The built-in monitors' registrations (:mod:`hf_recperc.monitors.registry`), in the order of ``--monitors``'s
default (``training.arguments.MONITOR_NAMES``), which is also the order of a model card's results table."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..results import (
    KNN_ACCURACY,
    KNN_WEIGHTED_ACCURACY,
    ONLINE_PROBE_ACCURACY,
    RECONSTRUCTION_MSE,
    SPECTRUM_FIELDS,
    SUBSPACE_FIELDS,
    band_key,
    spectrum_key,
    subspace_key,
)
from .knn import KNNMonitor
from .layers import LayerProbeMonitor, parse_layers
from .probes import OnlineProbeMonitor, SubspaceProbeMonitor
from .reconstruction import BandErrorMonitor, ReconstructionMonitor, band_names
from .registry import CardRow, MonitorContext, MonitorSpec, register_monitor
from .spectrum import SpectrumMonitor

__all__ = ["BUILTIN_MONITORS"]

# The subspace probe's own key level (subspace_probe/accuracy/<S>); a report's layer prefix replaces it.
_SUBSPACE_LEVEL = subspace_key("", "").removesuffix("/")  # "subspace_probe/"


def _subspace_keys(settings: Mapping[str, Any]) -> list[str]:
    fields = [subspace_key(name, spec) for name in SUBSPACE_FIELDS for spec in settings["probe_subspaces"]]
    return [*fields, f"{_SUBSPACE_LEVEL}num_train"]


def _subspace_rows(settings: Mapping[str, Any], value: Callable[[str], Any]) -> list[CardRow]:
    """One row per subspace, stating its dimensions and share of the variance as measured."""
    rows = []
    for spec in settings["probe_subspaces"]:
        dims = value(subspace_key("dims", spec))
        variance = value(subspace_key("explained_variance", spec)) or 0.0
        rows.append(
            CardRow(
                subspace_key("accuracy", spec),
                f"subspace probe accuracy, `{spec}` ({dims} dims, {100 * variance:.1f}% of the embedding variance)",
                name=f"Subspace probe accuracy ({spec}: {dims} dims, {variance:.1%} of the variance)",
                config=spec,
            )
        )
    return rows


def _subspace(context: MonitorContext) -> SubspaceProbeMonitor:
    settings = context.settings
    return SubspaceProbeMonitor(
        context.feature, settings["probe_subspaces"], settings["probe_ridge"], settings.get("probe_standardize", False),
        prefix=context.prefix,
    )  # fmt: skip


def _knn(context: MonitorContext) -> KNNMonitor:
    settings = context.settings
    return KNNMonitor(
        context.feature, k=settings["knn_k"], temperature=settings["knn_temperature"],
        bank_dtype=context.resources.get("bank_dtype"), prefix=context.prefix or "",
    )  # fmt: skip


def _spectrum(context: MonitorContext) -> SpectrumMonitor:
    # Linked to the subspace probe of the same feature when both run: its eigenvalues, no second eigendecomposition.
    return SpectrumMonitor(context.feature, source=context.built.get("subspace"), prefix=context.prefix or "")


def _layers(context: MonitorContext) -> LayerProbeMonitor:
    settings, model = context.settings, context.model
    return LayerProbeMonitor(
        parse_layers(settings["probe_layers"], model.num_hidden_layers),
        settings.get("probe_pooling") or model.default_poolings,
        settings["probe_subspaces"], settings["probe_ridge"], settings.get("probe_standardize", False),
    )  # fmt: skip


_KNN_SETTINGS = "k={knn_k}, cosine, temperature {knn_temperature:g}"

BUILTIN_MONITORS = (
    MonitorSpec(
        name="reconstruction",
        build=lambda context: ReconstructionMonitor(),
        keys=(RECONSTRUCTION_MSE,),
        card_rows=(
            CardRow(
                RECONSTRUCTION_MSE,
                "reconstruction MSE (normalised pixels)",
                metric_type="mse",
                name="Validation reconstruction MSE (normalised pixels)",
                format_spec=".5f",
                digits=6,
            ),
        ),  # fmt: skip
        summary=((RECONSTRUCTION_MSE, "val mse"),),
    ),
    MonitorSpec(
        name="online_probe",
        build=lambda context: OnlineProbeMonitor(),
        keys=(ONLINE_PROBE_ACCURACY,),
        card_rows=(
            CardRow(
                ONLINE_PROBE_ACCURACY, "online probe accuracy", name="Online probe accuracy", config="online"
            ),
        ),
        summary=((ONLINE_PROBE_ACCURACY, "online probe"),),
    ),
    MonitorSpec(
        name="subspace",
        build=_subspace,
        keys=_subspace_keys,
        card_rows=_subspace_rows,
        per_feature=True,
        own_prefix=_SUBSPACE_LEVEL,
    ),
    MonitorSpec(
        name="band_errors",
        build=lambda context: BandErrorMonitor(context.resources["bands"], context.settings["band_edges"]),
        keys=lambda settings: [band_key(name) for name in band_names(settings["band_edges"])],
    ),
    MonitorSpec(
        name="knn",
        build=_knn,
        keys=(KNN_ACCURACY, KNN_WEIGHTED_ACCURACY),
        card_rows=(
            CardRow(
                KNN_ACCURACY,
                f"kNN accuracy ({_KNN_SETTINGS}): majority vote",
                name=f"kNN accuracy ({_KNN_SETTINGS}, majority vote)",
                config="knn",
            ),
            CardRow(
                KNN_WEIGHTED_ACCURACY,
                f"kNN accuracy ({_KNN_SETTINGS}): temperature-weighted vote",
                name=f"kNN accuracy ({_KNN_SETTINGS}, weighted vote)",
                config="knn-weighted",
            ),
        ),  # fmt: skip
        summary=((KNN_ACCURACY, "kNN"),),
        per_feature=True,
    ),
    MonitorSpec(
        name="spectrum",
        build=_spectrum,
        keys=tuple(spectrum_key(name) for name in SPECTRUM_FIELDS),
        card_rows=(
            CardRow(
                spectrum_key("effective_rank"),
                "effective rank of the embeddings (RankMe)",
                metric_type="effective_rank",
                name="Effective rank of the embeddings (RankMe)",
                config="rankme",
                format_spec=".2f",
                digits=2,
            ),
            CardRow(
                spectrum_key("alpha"),
                "eigenvalue decay exponent alpha (l_i ~ i^-alpha)",
                None,
                format_spec=".3f",
            ),
            CardRow(spectrum_key("participation_ratio"), "participation ratio", None, format_spec=".2f"),
            CardRow(
                spectrum_key("components_90"), "components holding 90% of the variance", None, format_spec="d"
            ),
        ),  # fmt: skip
        per_feature=True,
        figures=("eigenvalue_spectrum",),
    ),
    MonitorSpec(
        name="layers",
        build=_layers,
        figures=("accuracy_per_layer", "eigenvalue_spectrum_per_layer"),
    ),
)

for _spec in BUILTIN_MONITORS:
    register_monitor(_spec)
