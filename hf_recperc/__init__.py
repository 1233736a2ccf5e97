"""hf_recperc: are the features a reconstruction model learns any good for perception?

Importing the package registers both model families (``recperc_ae``, ``recperc_mae``) with transformers'
AutoConfig, AutoModel, AutoModelForPreTraining and AutoModelForImageClassification.
"""

from pathlib import Path

from .configuration_recperc import RecPercAEConfig, RecPercMAEConfig
from .corruption import Corruption, GaussianNoise, Masking, NoCorruption, parse_corruption
from .modeling_recperc import (
    RecPercAEForImageClassification,
    RecPercAEForPreTraining,
    RecPercAEModel,
    RecPercAEPreTrainedModel,
    RecPercForPreTrainingOutput,
    RecPercImageClassifierOutput,
    RecPercModelOutput,
)
from .modeling_recperc_mae import (
    RecPercMAEForImageClassification,
    RecPercMAEForPreTraining,
    RecPercMAEModel,
    RecPercMAEPreTrainedModel,
)
from .probing import SubspaceProbe
from .processing import image_processor_for
from .spectral import PCA, SecondMoments, parse_subspace, subspace_indices
from .theory import (
    LinearTheory,
    SubspaceAudit,
    alignment_study,
    denoising_benefit,
    denoising_objective,
    never_beneficial,
    optimal_hybrid_linear_model,
    optimal_linear_autoencoder,
    subspace_audit,
    task_alignment,
)

__version__ = "0.1.0"

# Path of the `evaluate` metric module: `evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)`.
SUBSPACE_PROBE_ACCURACY = str(Path(__file__).parent / "metrics" / "subspace_probe_accuracy")

__all__ = [
    "SUBSPACE_PROBE_ACCURACY",
    "perception_report",
    # spectral + probing
    "PCA",
    "SecondMoments",
    "SubspaceProbe",
    "parse_subspace",
    "subspace_indices",
    # corruption
    "Corruption",
    "GaussianNoise",
    "Masking",
    "NoCorruption",
    "parse_corruption",
    # models
    "RecPercAEConfig",
    "RecPercAEForImageClassification",
    "RecPercAEForPreTraining",
    "RecPercAEModel",
    "RecPercAEPreTrainedModel",
    "RecPercForPreTrainingOutput",
    "RecPercImageClassifierOutput",
    "RecPercMAEConfig",
    "RecPercMAEForImageClassification",
    "RecPercMAEForPreTraining",
    "RecPercMAEModel",
    "RecPercMAEPreTrainedModel",
    "RecPercModelOutput",
    "image_processor_for",
    # theory
    "LinearTheory",
    "SubspaceAudit",
    "alignment_study",
    "denoising_benefit",
    "denoising_objective",
    "never_beneficial",
    "optimal_hybrid_linear_model",
    "optimal_linear_autoencoder",
    "subspace_audit",
    "task_alignment",
]


def __getattr__(name: str):
    # The perception report pulls datasets and the model loaders: imported on first use only.
    if name == "perception_report":
        from .report import perception_report  # noqa: PLC0415

        return perception_report
    raise AttributeError(f"module 'hf_recperc' has no attribute {name!r}")
