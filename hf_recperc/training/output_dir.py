"""The trainer's output directory: what a run writes, on the guarded writer of :mod:`hf_recperc.publish`.

The guarantees (checked before training, locked while in use, published as a set, never overwriting a user's
file) live in :class:`hf_recperc.publish.OutputDirectory`; this module declares the names a run writes.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..publish import MANIFEST, Outputs, json_marker
from ..publish import OutputDirectory as _GuardedDirectory

__all__ = [
    "OutputDirectory",
    "MANIFEST",
    "RUN_FILES",
    "remote_code_files",
    "pretrain_outputs",
    "earlier_run_error",
    "refuse_earlier_run",
]

# Every name a run may publish at the top level of output_dir (figures depend on the monitors); a user's file under
# one of these names is a collision. The remote-code files are computed (remote_code_files).
RUN_FILES = frozenset(
    {
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
        "README.md",
        "results.json",
        "history.json",
    }
    | {
        f"{name}.png"
        for name in (
            "reconstructions",
            "probe_accuracy",
            "band_errors",
            "eigenvalue_spectrum",
            "accuracy_per_layer",
            "eigenvalue_spectrum_per_layer",
        )
    }
)
# What save_pretrained writes for weights too large for one file.
SHARDED_WEIGHTS = frozenset({"model.safetensors.index.json", "model-*-of-*.safetensors"})


def remote_code_files() -> frozenset[str]:
    """The ``.py`` files ``save_pretrained`` writes for ``trust_remote_code``, over every registered model family
    (:attr:`hf_recperc.models.FamilySpec.remote_code_files`)."""
    from ..models import families  # noqa: PLC0415

    return frozenset().union(*(family.remote_code_files for family in families()))


def monitor_figure_files() -> frozenset[str]:
    """The figures of monitors registered besides the built-in ones (:func:`hf_recperc.monitors.register_monitor`);
    only code that imported the registry can have registered one, so nothing is imported here."""
    registry = sys.modules.get("hf_recperc.monitors.registry")
    return frozenset() if registry is None else registry.figure_files()


def pretrain_outputs() -> Outputs:
    """The trainer's :class:`~hf_recperc.publish.Outputs`: the run files, the remote-code files of the families
    registered now, weight shards; a folder without a manifest whose ``results.json`` is a run's (arguments, run
    information, library versions: what a user's or another command's ``results.json`` does not hold) is the output
    of a version before manifests."""
    return Outputs(
        command="pretrain",
        names=RUN_FILES | remote_code_files() | SHARDED_WEIGHTS | monitor_figure_files(),
        legacy=json_marker("results.json", ("args", "run", "versions")),
    )


def earlier_run_error(output_dir: str | Path, checkpoint: str) -> ValueError:
    """The one-line refusal of a fresh run into an ``output_dir`` that holds an earlier run's ``checkpoint``, with
    the three ways out (continue, start over, go elsewhere)."""
    return ValueError(
        f"output_dir: {str(output_dir)!r} holds an earlier run ({checkpoint}); add --resume_from_checkpoint latest "
        "to continue it, --overwrite_output_dir to start over, or choose another --output_dir"
    )


def refuse_earlier_run(output_dir: str | Path, resume_from_checkpoint: str | None, overwrite: bool) -> None:
    """Raise :func:`earlier_run_error` when a fresh run (neither ``resume_from_checkpoint`` nor ``overwrite``) would
    start in an ``output_dir`` holding checkpoints. Standard library only, so that the command refuses within a
    second of starting, before torch is imported; the loop checks again (``checkpointing.resolve_resume``) with
    the same message. A checkpoint is a ``checkpoints/checkpoint-<step>`` directory (``training/state.py``)."""
    if resume_from_checkpoint is not None or overwrite:
        return
    steps = [
        int(path.name.removeprefix("checkpoint-"))
        for path in (Path(output_dir) / "checkpoints").glob("checkpoint-*")
        if path.name.removeprefix("checkpoint-").isdigit()
    ]
    if steps:
        raise earlier_run_error(Path(output_dir).resolve(), f"checkpoint-{max(steps)}")


class OutputDirectory(_GuardedDirectory):
    """``output_dir`` of one training run (main process only): :class:`hf_recperc.publish.OutputDirectory` with the
    trainer's names."""

    def __init__(self, path: str | os.PathLike, outputs: Outputs | None = None):
        super().__init__(path, outputs or pretrain_outputs())
