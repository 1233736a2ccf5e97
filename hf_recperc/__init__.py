"""hf_recperc: are the features a reconstruction model learns any good for perception?

``import hf_recperc`` is light (no torch, transformers or datasets): every public name below is imported from its
module on first use (PEP 562 ``__getattr__``), and so is every submodule (``hf_recperc.data``, ...). Scripts'
``--help`` therefore does not pay for torch.

Both model families (``recperc_ae``, ``recperc_mae``) are registered with transformers' AutoConfig, AutoModel,
AutoModelForPreTraining and AutoModelForImageClassification as soon as transformers' Auto classes are imported
(before or after ``import hf_recperc``), so ``import hf_recperc`` then ``AutoModel.from_pretrained(our_dir)``
works without ``trust_remote_code``. Importing a model class (``hf_recperc.RecPercAEModel``) registers its
family too.
"""

from __future__ import annotations

import functools
import importlib
import importlib.abc
import importlib.machinery
import sys
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
    "configuration_recperc": ("RecPercAEConfig", "RecPercMAEConfig"),
    "modeling_recperc": (
        "RecPercAEForImageClassification",
        "RecPercAEForPreTraining",
        "RecPercAEModel",
        "RecPercAEPreTrainedModel",
        "RecPercForPreTrainingOutput",
        "RecPercImageClassifierOutput",
        "RecPercModelOutput",
    ),
    "modeling_recperc_mae": (
        "RecPercMAEForImageClassification",
        "RecPercMAEForPreTraining",
        "RecPercMAEModel",
        "RecPercMAEPreTrainedModel",
    ),
    "processing": ("image_processor_for", "RecPercImageProcessor"),
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


# ------------------------------------------------------------------------------- Auto-class registration
#
# Registering needs our config and model classes, which import torch and transformers' modelling code: seconds
# that `import hf_recperc` should not cost. Only code that calls transformers' Auto classes needs it, so we
# register on the first such call. As soon as transformers defines those classes (a post-import hook on the
# import system, or at once when they already exist), their loading methods are wrapped so that the first call
# imports our two modelling modules, which register both families, and then restores the original methods.
# Registering inside the hook itself would import transformers modules while transformers is half imported.

_AUTO_METHODS = {
    "transformers.models.auto.configuration_auto": {"AutoConfig": ("from_pretrained", "for_model")},
    "transformers.models.auto.modeling_auto": {
        name: ("from_pretrained", "from_config")
        for name in ("AutoModel", "AutoModelForPreTraining", "AutoModelForImageClassification")
    },
    "transformers.models.auto.image_processing_auto": {"AutoImageProcessor": ("from_pretrained",)},
}
_wrapped: dict[tuple[type, str], classmethod] = {}  # (Auto class, method name) -> the original classmethod
_registered = False


def _register_families() -> None:
    """Import both modelling modules (each registers its family with every Auto class) and unwrap."""
    global _registered
    _registered = True
    for (owner, name), original in _wrapped.items():
        setattr(owner, name, original)
    _wrapped.clear()
    importlib.import_module(f"{__name__}.modeling_recperc")
    importlib.import_module(f"{__name__}.modeling_recperc_mae")


def _wrap_auto_methods(module) -> None:
    if _registered:
        return
    for class_name, methods in _AUTO_METHODS[module.__name__].items():
        owner = getattr(module, class_name)
        for name in methods:
            original = owner.__dict__.get(name)
            if not isinstance(original, classmethod) or (owner, name) in _wrapped:
                continue
            function = original.__func__

            @functools.wraps(function)
            def registering_first(cls, *args, _function=function, **kwargs):
                _register_families()
                return _function(cls, *args, **kwargs)

            _wrapped[(owner, name)] = original
            setattr(owner, name, classmethod(registering_first))


class _WrapAfterImport(importlib.abc.MetaPathFinder):
    """Finds nothing itself: hands transformers' two Auto modules to their loader, then wraps their methods."""

    def find_spec(self, fullname, path, target=None):
        if fullname not in _AUTO_METHODS or _registered:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path, target)
        if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
            return None  # an unusual install: importing a model class still registers its family
        execute = spec.loader.exec_module

        def exec_module(module):
            execute(module)
            _wrap_auto_methods(module)

        spec.loader.exec_module = exec_module  # this spec's own loader instance
        return spec


for _module_name in _AUTO_METHODS:
    if _module_name in sys.modules:
        _wrap_auto_methods(sys.modules[_module_name])
if not any(type(finder).__name__ == "_WrapAfterImport" for finder in sys.meta_path):
    sys.meta_path.insert(0, _WrapAfterImport())
del _module_name
