"""The trainer's output directory: what a run writes, on the guarded writer of :mod:`hf_recperc.publish`.

The guarantees (checked before training, locked while in use, published as a set, never overwriting a user's
file) live in :class:`hf_recperc.publish.OutputDirectory`; this module declares the names a run writes.
"""

from __future__ import annotations

import os

from ..publish import MANIFEST, Outputs
from ..publish import OutputDirectory as _GuardedDirectory

__all__ = ["OutputDirectory", "MANIFEST", "RUN_FILES", "remote_code_files", "pretrain_outputs"]

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


def pretrain_outputs() -> Outputs:
    """The trainer's :class:`~hf_recperc.publish.Outputs`: the run files, the remote-code files of the families
    registered now, weight shards; a folder with ``results.json`` and no manifest is the output of a version before manifests."""
    return Outputs(
        command="pretrain",
        names=RUN_FILES | remote_code_files() | SHARDED_WEIGHTS,
        legacy=lambda directory: (directory / "results.json").is_file(),
    )


class OutputDirectory(_GuardedDirectory):
    """``output_dir`` of one training run (main process only): :class:`hf_recperc.publish.OutputDirectory` with the
    trainer's names."""

    def __init__(self, path: str | os.PathLike, outputs: Outputs | None = None):
        super().__init__(path, outputs or pretrain_outputs())
