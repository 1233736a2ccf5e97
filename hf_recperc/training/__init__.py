"""The training job behind ``accelerate launch scripts/pretrain.py`` (docs/design.md, "training").

* :mod:`.arguments`: the three argument dataclasses and their checks;
* :mod:`.state`: :class:`TrainerState`, what a checkpoint adds to accelerate's own state;
* :mod:`.checkpointing`: checkpoints, resume, atomic JSON and publishing;
* :mod:`.builders`: model, sampler, optimiser and monitors from the arguments;
* :mod:`.loop`: :class:`PretrainingRun` and :func:`train`;
* :mod:`.figures`: every training figure (PNG files and TensorBoard images).

What each evaluation measures is up to the monitors (:mod:`hf_recperc.monitors`, ``--monitors``).
"""

from ..monitors import SpectralBands, score_subspace_probe
from .arguments import DataArguments, ModelArguments, PretrainingArguments, parse_args, parse_config_overrides
from .builders import EpochShuffleSampler, build_model, build_monitors
from .checkpointing import find_checkpoint, write_json_atomic
from .loop import NonFiniteLossError, PretrainingRun, train
from .state import TrainerState

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
