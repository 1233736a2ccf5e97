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

# --- theory (issue 5) ---
