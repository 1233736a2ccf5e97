"""The standard protocols as registered monitors (:mod:`hf_recperc.monitors.registry`; docs/protocols.md).

``--monitors ridge_cv linear_grid knn_grid few_shot`` then runs them on every pooled layer feature of a perception
report (and on the trainer's embedding), ``attentive_probe`` and ``pca_maps`` on the report's ``tokens`` features.
Their settings are read from the run's settings by the names of :data:`PROTOCOL_SETTINGS` (a report's
``monitor_settings``, ``recperc-report --monitor_settings few_shot_shots=[1,5],protocol_seed=3``); every card row and
every sentence a report prints about them is filled in from those settings, never from a literal.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ...results import (
    ATTENTIVE_PROBE,
    FEW_SHOT,
    KNN_GRID,
    LINEAR_GRID,
    PCA_MAPS,
    RIDGE_CV,
    attentive_key,
    few_shot_key,
    knn_grid_key,
    linear_grid_key,
    ridge_cv_key,
)
from ..registry import CardRow, MonitorContext, MonitorSpec, register_monitor
from .attentive import AttentiveProbeMonitor
from .common import SELECTED_ON_TRAIN
from .few_shot import DEFAULT_DRAWS, DEFAULT_SHOTS, FewShotMonitor
from .knn_grid import DEFAULT_KS, DEFAULT_TEMPERATURES, KNNGridMonitor
from .linear_grid import DEFAULT_EPOCHS, DEFAULT_LEARNING_RATES, DEFAULT_WEIGHT_DECAYS, LinearGridMonitor
from .pca_maps import PCAMapsMonitor
from .ridge_cv import DEFAULT_RIDGES, RidgeCVMonitor

__all__ = ["PROTOCOL_SETTINGS", "PROTOCOL_MONITORS", "protocol_settings"]

# Every setting a protocol reads, with its default (docs/protocols.md gives the reasons for each default).
PROTOCOL_SETTINGS: dict[str, Any] = {
    "protocol_seed": 0,  # folds, held-out rows, few-shot draws, initialisation
    "protocol_subspace": "all",  # restrict every protocol to a PCA subspace of the training rows
    "ridge_cv_ridges": list(DEFAULT_RIDGES),
    "ridge_cv_folds": 5,
    "linear_grid_learning_rates": list(DEFAULT_LEARNING_RATES),
    "linear_grid_weight_decays": list(DEFAULT_WEIGHT_DECAYS),
    "linear_grid_epochs": DEFAULT_EPOCHS,
    "knn_grid_k": list(DEFAULT_KS),
    "knn_grid_temperatures": list(DEFAULT_TEMPERATURES),
    "few_shot_shots": list(DEFAULT_SHOTS),
    "few_shot_draws": DEFAULT_DRAWS,
    "attentive_epochs": 20,
    "pca_maps_images": 4,
}

_SHARED = ("protocol_seed", "protocol_subspace")


def protocol_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """:data:`PROTOCOL_SETTINGS` overridden by the run's ``settings`` (the trainer's arguments carry none)."""
    return {**PROTOCOL_SETTINGS, **{k: v for k, v in settings.items() if k in PROTOCOL_SETTINGS}}


def _listed(values) -> str:
    return ", ".join(f"{value:g}" if isinstance(value, float) else str(value) for value in values)


def _subspace(s: Mapping[str, Any]) -> str:
    return "" if s["protocol_subspace"] == "all" else f", on the `{s['protocol_subspace']}` subspace"


def _common(context: MonitorContext) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(settings, shared keyword arguments)`` of a protocol monitor built from ``context``."""
    s = protocol_settings(context.settings)
    shared = {"seed": s["protocol_seed"], "subspace": s["protocol_subspace"], "prefix": context.prefix or ""}
    return s, shared


def _ridge_cv(context: MonitorContext) -> RidgeCVMonitor:
    s, shared = _common(context)
    return RidgeCVMonitor(
        context.feature, ridges=s["ridge_cv_ridges"], num_folds=s["ridge_cv_folds"], **shared
    )


def _linear_grid(context: MonitorContext) -> LinearGridMonitor:
    s, shared = _common(context)
    return LinearGridMonitor(
        context.feature, learning_rates=s["linear_grid_learning_rates"],
        weight_decays=s["linear_grid_weight_decays"], epochs=s["linear_grid_epochs"], **shared,
    )  # fmt: skip


def _knn_grid(context: MonitorContext) -> KNNGridMonitor:
    s, shared = _common(context)
    monitor = KNNGridMonitor(
        context.feature, ks=s["knn_grid_k"], temperatures=s["knn_grid_temperatures"], **shared
    )
    knn = context.built.get("knn")  # the report's kNN of the same feature: one similarity pass for both
    if knn is not None and s["protocol_subspace"] == "all":
        knn.neighbours = monitor.neighbours
    return monitor


def _few_shot(context: MonitorContext) -> FewShotMonitor:
    s, shared = _common(context)
    return FewShotMonitor(context.feature, shots=s["few_shot_shots"], num_draws=s["few_shot_draws"], **shared)


def _attentive(context: MonitorContext) -> AttentiveProbeMonitor:
    s, shared = _common(context)
    return AttentiveProbeMonitor(context.feature, epochs=s["attentive_epochs"], **shared)


def _pca_maps(context: MonitorContext) -> PCAMapsMonitor:
    s = protocol_settings(context.settings)
    return PCAMapsMonitor(
        feature=context.feature,
        num_prefix_tokens=int(context.resources.get("num_prefix_tokens", 0)),
        num_images=s["pca_maps_images"],
    )


def _rows(rows: Callable[[dict[str, Any]], list[CardRow]]):
    """Card rows as a function of the run's settings (defaults filled in), so a card states the settings used."""
    return lambda settings, value: rows(protocol_settings(settings))


def _describe(sentence: Callable[[dict[str, Any]], str]):
    return lambda settings: sentence(protocol_settings(settings))


PROTOCOL_MONITORS = (
    MonitorSpec(
        name=RIDGE_CV,
        build=_ridge_cv,
        keys=(ridge_cv_key("accuracy"), ridge_cv_key("cv_accuracy"), ridge_cv_key("ridge")),
        card_rows=_rows(
            lambda s: [
                CardRow(
                    ridge_cv_key("accuracy"),
                    f"ridge probe accuracy, penalty by {s['ridge_cv_folds']}-fold CV on training rows{_subspace(s)}",
                    config="ridge-cv",
                )
            ]
        ),  # fmt: skip
        per_feature=True,
        defaults={k: PROTOCOL_SETTINGS[k] for k in (*_SHARED, "ridge_cv_ridges", "ridge_cv_folds")},
        describe=_describe(
            lambda s: (
                f"closed-form ridge probe, relative penalty among {_listed(s['ridge_cv_ridges'])} chosen by "
                f"{s['ridge_cv_folds']}-fold cross-validation on {SELECTED_ON_TRAIN} (seed {s['protocol_seed']}), "
                f"refitted on every training row{_subspace(s)}"
            )
        ),  # fmt: skip
    ),
    MonitorSpec(
        name=LINEAR_GRID,
        build=_linear_grid,
        keys=(linear_grid_key("accuracy"), linear_grid_key("learning_rate"), linear_grid_key("weight_decay")),
        card_rows=_rows(
            lambda s: [
                CardRow(
                    linear_grid_key("accuracy"),
                    f"logistic probe accuracy, {len(s['linear_grid_learning_rates'])} x "
                    f"{len(s['linear_grid_weight_decays'])} grid, {s['linear_grid_epochs']} epochs, chosen on held-out "
                    f"training rows{_subspace(s)}",
                    config="linear-grid",
                )
            ]
        ),  # fmt: skip
        per_feature=True,
        defaults={
            k: PROTOCOL_SETTINGS[k]
            for k in (
                *_SHARED,
                "linear_grid_learning_rates",
                "linear_grid_weight_decays",
                "linear_grid_epochs",
            )
        },
        describe=_describe(
            lambda s: (
                f"multinomial logistic regression, learning rate in {_listed(s['linear_grid_learning_rates'])} x "
                f"weight decay in {_listed(s['linear_grid_weight_decays'])}, {s['linear_grid_epochs']} epochs, full "
                f"batch, chosen on a held-out 0.2 of {SELECTED_ON_TRAIN} (seed {s['protocol_seed']}), refitted on "
                f"every training row{_subspace(s)}"
            )
        ),  # fmt: skip
    ),
    MonitorSpec(
        name=KNN_GRID,
        build=_knn_grid,
        keys=(knn_grid_key("accuracy"), knn_grid_key("k"), knn_grid_key("temperature")),
        card_rows=_rows(
            lambda s: [
                CardRow(
                    knn_grid_key("accuracy"),
                    f"kNN accuracy, (k, temperature) chosen over k in {_listed(s['knn_grid_k'])}, temperature in "
                    f"{_listed(s['knn_grid_temperatures'])} on held-out training rows{_subspace(s)}",
                    config="knn-grid",
                )
            ]
        ),  # fmt: skip
        per_feature=True,
        defaults={k: PROTOCOL_SETTINGS[k] for k in (*_SHARED, "knn_grid_k", "knn_grid_temperatures")},
        describe=_describe(
            lambda s: (
                f"cosine kNN, majority vote for every k in {_listed(s['knn_grid_k'])} and temperature-weighted vote "
                f"for every temperature in {_listed(s['knn_grid_temperatures'])}; the weighted (k, temperature) "
                f"chosen on a held-out 0.2 of {SELECTED_ON_TRAIN} (at most 1000 queries, seed {s['protocol_seed']})"
                f"{_subspace(s)}"
            )
        ),  # fmt: skip
    ),
    MonitorSpec(
        name=FEW_SHOT,
        build=_few_shot,
        keys=lambda settings: [
            few_shot_key(field, n)
            for n in protocol_settings(settings)["few_shot_shots"]
            for field in ("accuracy", "std")
        ],  # fmt: skip
        card_rows=_rows(
            lambda s: [
                CardRow(
                    few_shot_key("accuracy", n),
                    f"{n}-shot ridge probe accuracy, mean of {s['few_shot_draws']} draws{_subspace(s)}",
                    config=f"few-shot-{n}",
                )
                for n in s["few_shot_shots"]
            ]
        ),  # fmt: skip
        per_feature=True,
        defaults={k: PROTOCOL_SETTINGS[k] for k in (*_SHARED, "few_shot_shots", "few_shot_draws")},
        describe=_describe(
            lambda s: (
                f"ridge probe (relative penalty 1e-3) on n rows per class for n in ({_listed(s['few_shot_shots'])}), "
                f"{s['few_shot_draws']} seeded draws (seed {s['protocol_seed']}) from {SELECTED_ON_TRAIN}; mean and "
                f"standard deviation over draws; no hyperparameter chosen{_subspace(s)}"
            )
        ),  # fmt: skip
    ),
    MonitorSpec(
        name=ATTENTIVE_PROBE,
        build=_attentive,
        keys=(attentive_key("accuracy"),),
        card_rows=_rows(
            lambda s: [
                CardRow(
                    attentive_key("accuracy"),
                    f"attentive probe accuracy (cross-attention on patch tokens, {s['attentive_epochs']} epochs)"
                    f"{_subspace(s)}",
                    config="attentive",
                )
            ]
        ),  # fmt: skip
        per_feature=True,
        tokens=True,
        defaults={k: PROTOCOL_SETTINGS[k] for k in (*_SHARED, "attentive_epochs")},
        describe=_describe(
            lambda s: (
                f"one learned query cross-attending over the frozen tokens (4 heads), linear classifier, AdamW "
                f"(lr 1e-3, weight decay 0.05), {s['attentive_epochs']} epochs, trained on {SELECTED_ON_TRAIN} with "
                f"fixed settings, nothing chosen (seed {s['protocol_seed']}){_subspace(s)}"
            )
        ),  # fmt: skip
    ),
    MonitorSpec(
        name=PCA_MAPS,
        build=_pca_maps,
        per_feature=True,
        tokens=True,
        figures=(PCA_MAPS,),
        defaults={"pca_maps_images": PROTOCOL_SETTINGS["pca_maps_images"]},
        describe=_describe(
            lambda s: (
                f"PCA of the patch tokens of the first {s['pca_maps_images']} evaluation images as RGB maps: "
                "components 1-3 and the last three (figure pca_maps_<layer>.png)"
            )
        ),  # fmt: skip
    ),
)

for _spec in PROTOCOL_MONITORS:
    register_monitor(_spec)
