"""The training job behind ``accelerate launch scripts/pretrain.py`` (docs/design.md, "training").

* :mod:`.arguments`: the three argument dataclasses and their checks;
* :mod:`.state`: :class:`TrainerState`, what a checkpoint adds to the model and optimiser state;
* :mod:`.checkpoint_files`: a checkpoint's files, written and read without pickle;
* :mod:`.checkpointing`: checkpoints, resume, atomic JSON and publishing;
* :mod:`.builders`: model, optimiser and monitors from the arguments (the sampler: :mod:`hf_recperc.images.pipeline`);
* :mod:`.loop`: :class:`PretrainingRun` and :func:`train`;
* :mod:`.figures`: every training figure (PNG files and TensorBoard images).

What each evaluation measures is up to the monitors (:mod:`hf_recperc.monitors`, ``--monitors``).
"""

import importlib

# name -> submodule: imported on first access (PEP 562), so that `--help` and argument parsing do not import
# torch, accelerate and the models.
_EXPORTS = {
    "DataArguments": "arguments",
    "ModelArguments": "arguments",
    "PretrainingArguments": "arguments",
    "parse_args": "arguments",
    "parse_config_overrides": "arguments",
    "build_model": "builders",
    "build_monitors": "builders",
    "EpochShuffleSampler": ".images.pipeline",  # the data order lives with the loaders
    "find_checkpoint": "checkpointing",
    "write_json_atomic": "checkpointing",
    "NonFiniteLossError": "loop",
    "PretrainingRun": "loop",
    "train": "loop",
    "TrainerState": "state",
}
_MONITOR_EXPORTS = ("SpectralBands", "score_subspace_probe")

__all__ = [
    "DataArguments",
    "ModelArguments",
    "PretrainingArguments",
    "parse_args",
    "parse_config_overrides",
    "build_model",
    "build_monitors",
    "EpochShuffleSampler",
    "find_checkpoint",
    "write_json_atomic",
    "NonFiniteLossError",
    "PretrainingRun",
    "TrainerState",
    "train",
    "main",
    "SpectralBands",
    "score_subspace_probe",
]


def main(argv=None) -> int:
    """``scripts/pretrain.py`` (see :func:`hf_recperc.commands.pretrain.main`)."""
    from ..commands.pretrain import main as pretrain_main  # noqa: PLC0415

    return pretrain_main(argv)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    if name in _MONITOR_EXPORTS:
        return getattr(importlib.import_module("..monitors", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
