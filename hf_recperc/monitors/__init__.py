"""The measurement layer: one :class:`Monitor` per measurement, used by the trainer, the perception report and
users alike (docs/design.md, "monitors").

>>> from hf_recperc.monitors import KNNMonitor, MonitorBatch
>>> monitor = KNNMonitor(k=20)
>>> monitor.update(MonitorBatch("train", labels=y_train, features={"embedding": X_train}))
>>> monitor.update(MonitorBatch("eval", labels=y_val, features={"embedding": X_val}))
>>> monitor.all_reduce(); monitor.compute()
{'knn/accuracy': ..., 'knn/weighted_accuracy': ...}

The trainer and the perception report run monitors through one runner (:func:`run_monitors` over a
:class:`FeatureSource`) and build them from one registry (:func:`register_monitor`, :func:`build_monitors`).
"""

from . import builtin  # noqa: F401  (registers the built-in monitors)
from .base import EVAL, TRAIN, Monitor, MonitorBatch, distributed_sum, gather_rows, is_distributed
from .knn import KNNMonitor, knn_predict
from .layers import (
    POOLINGS,
    LayerProbeMonitor,
    accuracy_per_layer_figure,
    layer_accuracies,
    layer_feature,
    parse_layers,
    pool_hidden_state,
)
from .probes import DEFAULT_SUBSPACES, OnlineProbeMonitor, SubspaceProbeMonitor, score_subspace_probe
from .protocols import registration  # noqa: F401  (registers the standard protocols, after the built-ins)
from .reconstruction import (
    DEFAULT_BAND_EDGES,
    BandErrorMonitor,
    ReconstructionMonitor,
    SpectralBands,
    band_names,
)
from .registry import (
    CardRow,
    MonitorContext,
    MonitorSpec,
    build_monitors,
    card_rows,
    check_monitor_settings,
    feature_prefix,
    get_monitor_spec,
    monitor_defaults,
    monitor_descriptions,
    monitor_names,
    register_monitor,
    result_keys,
    unregister_monitor,
)
from .runner import FeatureSource, compute_monitors, monitor_figures, run_monitors
from .spectrum import SpectrumMonitor, spectrum_figure, spectrum_statistics

__all__ = [
    "Monitor",
    "MonitorBatch",
    "TRAIN",
    "EVAL",
    "gather_rows",
    "distributed_sum",
    "is_distributed",
    "KNNMonitor",
    "knn_predict",
    "LayerProbeMonitor",
    "parse_layers",
    "pool_hidden_state",
    "layer_feature",
    "accuracy_per_layer_figure",
    "layer_accuracies",
    "POOLINGS",
    "SubspaceProbeMonitor",
    "OnlineProbeMonitor",
    "score_subspace_probe",
    "DEFAULT_SUBSPACES",
    "ReconstructionMonitor",
    "BandErrorMonitor",
    "SpectralBands",
    "DEFAULT_BAND_EDGES",
    "band_names",
    "SpectrumMonitor",
    "spectrum_statistics",
    "spectrum_figure",
    "FeatureSource",
    "run_monitors",
    "compute_monitors",
    "monitor_figures",
    "MonitorSpec",
    "MonitorContext",
    "CardRow",
    "register_monitor",
    "unregister_monitor",
    "get_monitor_spec",
    "monitor_names",
    "monitor_defaults",
    "monitor_descriptions",
    "check_monitor_settings",
    "build_monitors",
    "card_rows",
    "result_keys",
    "feature_prefix",
]
