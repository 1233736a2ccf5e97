"""hf_recperc: are the features a reconstruction model learns any good for perception?

Importing the package registers the model families with transformers' Auto classes.
"""

from pathlib import Path

from .corruption import Corruption, GaussianNoise, Masking, NoCorruption, parse_corruption
from .spectral import PCA, SecondMoments, parse_subspace, subspace_indices

__version__ = "0.1.0"

# Path of the `evaluate` metric module: `evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)`.
SUBSPACE_PROBE_ACCURACY = str(Path(__file__).parent / "metrics" / "subspace_probe_accuracy")

# --- probing (issue 2) ---
from .probing import SubspaceProbe  # noqa: E402

# --- models (issue 3) ---
# isort: split
# Importing the modeling modules registers both families with AutoConfig, AutoModel, AutoModelForPreTraining and
# AutoModelForImageClassification (and for `register_for_auto_class`, i.e. trust_remote_code loading).
from .configuration_recperc import RecPercAEConfig, RecPercMAEConfig  # noqa: E402, F401
from .modeling_recperc import (  # noqa: E402, F401
    RecPercAEForImageClassification,
    RecPercAEForPreTraining,
    RecPercAEModel,
    RecPercAEPreTrainedModel,
    RecPercForPreTrainingOutput,
    RecPercImageClassifierOutput,
    RecPercModelOutput,
)
from .modeling_recperc_mae import (  # noqa: E402, F401
    RecPercMAEForImageClassification,
    RecPercMAEForPreTraining,
    RecPercMAEModel,
    RecPercMAEPreTrainedModel,
)
from .processing import image_processor_for  # noqa: E402, F401

# --- theory (issue 5) ---
