"""Standard evaluation protocols beside the subspace probe (docs/protocols.md).

Each protocol is a pure function on feature tensors, ``protocol(train_X, train_y, test_X, test_y, *, subspace=...,
...) -> dict``, that chooses its hyperparameters on the training rows only, and a thin
:class:`~hf_recperc.monitors.Monitor` that feeds it from :class:`~hf_recperc.monitors.MonitorBatch` rows.
"""

from .attentive import (
    ATTENTIVE,
    AttentivePoolingHead,
    AttentiveProbeMonitor,
    attentive_key,
    attentive_protocol,
)
from .common import (
    SELECTED_ON_TRAIN,
    ProtocolMonitor,
    RidgeFit,
    restrict_to_subspace,
    restrict_tokens_to_subspace,
)
from .few_shot import DEFAULT_SHOTS, FEW_SHOT, FewShotMonitor, few_shot_draws, few_shot_key, few_shot_protocol
from .knn_grid import (
    DEFAULT_KS,
    DEFAULT_TEMPERATURES,
    KNN_GRID,
    KNNGridMonitor,
    knn_grid_key,
    knn_grid_predict,
    knn_grid_protocol,
)
from .linear_grid import (
    DEFAULT_LEARNING_RATES,
    DEFAULT_WEIGHT_DECAYS,
    LINEAR_GRID,
    LinearGridMonitor,
    holdout_split,
    linear_grid_key,
    linear_grid_protocol,
    train_logistic_grid,
)
from .pca_maps import PCA_MAPS, PCAMapsMonitor, pca_maps_figure, pca_rgb_maps
from .ridge_cv import (
    DEFAULT_RIDGES,
    RIDGE_CV,
    RidgeCVMonitor,
    kfold_assignments,
    ridge_cv_key,
    ridge_cv_protocol,
)

# name -> (protocol function, monitor class): what a registry registers (docs/protocols.md).
PROTOCOLS = {
    RIDGE_CV: (ridge_cv_protocol, RidgeCVMonitor),
    LINEAR_GRID: (linear_grid_protocol, LinearGridMonitor),
    KNN_GRID: (knn_grid_protocol, KNNGridMonitor),
    FEW_SHOT: (few_shot_protocol, FewShotMonitor),
    ATTENTIVE: (attentive_protocol, AttentiveProbeMonitor),
}

__all__ = [
    "PROTOCOLS",
    "SELECTED_ON_TRAIN",
    "ProtocolMonitor",
    "RidgeFit",
    "restrict_to_subspace",
    "restrict_tokens_to_subspace",
    "RIDGE_CV",
    "DEFAULT_RIDGES",
    "RidgeCVMonitor",
    "kfold_assignments",
    "ridge_cv_key",
    "ridge_cv_protocol",
    "LINEAR_GRID",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WEIGHT_DECAYS",
    "LinearGridMonitor",
    "holdout_split",
    "linear_grid_key",
    "linear_grid_protocol",
    "train_logistic_grid",
    "KNN_GRID",
    "DEFAULT_KS",
    "DEFAULT_TEMPERATURES",
    "KNNGridMonitor",
    "knn_grid_key",
    "knn_grid_predict",
    "knn_grid_protocol",
    "FEW_SHOT",
    "DEFAULT_SHOTS",
    "FewShotMonitor",
    "few_shot_draws",
    "few_shot_key",
    "few_shot_protocol",
    "ATTENTIVE",
    "AttentivePoolingHead",
    "AttentiveProbeMonitor",
    "attentive_key",
    "attentive_protocol",
    "PCA_MAPS",
    "PCAMapsMonitor",
    "pca_rgb_maps",
    "pca_maps_figure",
]
