"""hf_recperc: are the features a reconstruction model learns any good for perception?

``import hf_recperc`` is light (no torch, transformers or datasets): every public name below is imported from its
module on first use (PEP 562 ``__getattr__``), and so is every submodule (``hf_recperc.images``, ...). Scripts'
``--help`` therefore does not pay for torch.

The model families (``recperc_ae``, ``recperc_mae``) register with transformers' Auto classes when their package
is imported, transformers' own way for models outside the library: ``import hf_recperc.models`` (or using any model
class, ``hf_recperc.RecPercAEModel``) before ``AutoModel.from_pretrained(our_dir)``. Nothing of another library is
patched (:mod:`hf_recperc.models`, docs/design.md "Adding a model family").
"""

from __future__ import annotations

import importlib
from pathlib import Path

__version__ = "0.1.0"

# Path of the `evaluate` metric module: `evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)`.
SUBSPACE_PROBE_ACCURACY = str(Path(__file__).parent / "metrics" / "subspace_probe_accuracy")

# module -> the public names it provides, imported on first access
_EXPORTS: dict[str, tuple[str, ...]] = {
    # spectral + probing
    "spectral": ("PCA", "SecondMoments", "parse_subspace", "subspace_indices"),
    "probing": ("SubspaceProbe",),
    # corruption
    "corruption": ("Corruption", "GaussianNoise", "Masking", "NoCorruption", "parse_corruption"),
    # models
    "models": ("FamilySpec", "register_family"),
    "models.ae.configuration_recperc": ("RecPercAEConfig",),
    "models.mae.configuration_recperc_mae": ("RecPercMAEConfig",),
    "models.ae.modeling_recperc": (
        "RecPercAEForImageClassification",
        "RecPercAEForPreTraining",
        "RecPercAEModel",
        "RecPercAEPreTrainedModel",
        "RecPercForPreTrainingOutput",
        "RecPercImageClassifierOutput",
        "RecPercModelOutput",
    ),
    "models.mae.modeling_recperc_mae": (
        "RecPercMAEForImageClassification",
        "RecPercMAEForPreTraining",
        "RecPercMAEModel",
        "RecPercMAEPreTrainedModel",
    ),
    "processing": ("image_processor_for", "RecPercImageProcessor"),
    # images: data sets, decoding, augmentation
    "images": ("ImageData", "load_image_dataset", "images_to_array", "paper_preprocessing"),
    # the perception report of any vision model
    "report": ("perception_report",),
    # theory
    "theory": (
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
    ),
}
_MODULE_OF = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = ["SUBSPACE_PROBE_ACCURACY", *_MODULE_OF]


def __getattr__(name: str):
    """PEP 562: import a public name's module, or a submodule, on first access."""
    if name in _MODULE_OF:
        value = getattr(importlib.import_module(f"{__name__}.{_MODULE_OF[name]}"), name)
        globals()[name] = value  # later lookups skip this function
        return value
    package = Path(__file__).parent
    if not name.startswith("_") and (
        (package / f"{name}.py").is_file() or (package / name / "__init__.py").is_file()
    ):
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
