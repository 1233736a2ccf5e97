"""Checkpoints and publishing: everything that writes the run's files, atomically.

A checkpoint is the pickle-free files of :mod:`.checkpoint_files` (weights, optimiser, scheduler, RNG states) plus
``trainer_state.json``, written into a hidden sibling and renamed: it exists whole or not at all. The model directory is published the
same way (:func:`publish`). Every JSON file of the project goes through :func:`write_json_atomic`.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from ..publish import write_json
from ..publish.atomic import replace_directory
from .checkpoint_files import Trainables, load_training_state, resumable, save_training_state
from .output_dir import earlier_run_error
from .state import CHECKPOINT_PREFIX, TRAINER_STATE, TrainerState

__all__ = [
    "RESUME_SAFE_ARGS",
    "find_checkpoint",
    "save_checkpoint",
    "resolve_resume",
    "check_resume_arguments",
    "checked_resume",
    "load_checkpoint",
    "run_defining_args",
    "remove_checkpoints",
    "write_json_atomic",
    "ALL_ARGS",
]

# ``--allow_changed_args all``: every run-defining argument may differ, and a checkpoint that records none (unknown
# provenance: no ``run_args`` in its trainer_state.json) may be resumed.
ALL_ARGS = "all"


# Arguments that may differ between a run and its resumption without changing what is trained: where and how
# often things are written and reported, how evaluation batches are sized, what the monitors measure.
RESUME_SAFE_ARGS = frozenset(
    {
        "output_dir", "overwrite_output_dir", "resume_from_checkpoint", "allow_changed_args", "logging_steps",
        "eval_steps", "checkpointing_steps", "checkpoints_total_limit", "report_to", "push_to_hub", "hub_model_id",
        "hub_private", "model_license", "dataloader_num_workers", "per_device_eval_batch_size", "monitors", "probe_subspaces",
        "probe_ridge", "probe_standardize", "probe_max_train_samples", "probe_layers", "probe_pooling", "knn_k",
        "knn_temperature", "band_edges", "spectral_max_dim", "tracker_figures_every",
    }
)  # fmt: skip


def check_resume_arguments(
    state: TrainerState, run_args: dict, allowed: list[str], max_steps: int | None, checkpoint: Path
) -> None:
    """Refuse to continue a checkpoint with other run-defining arguments (one line listing each difference),
    unless ``allowed`` names them; refuse a ``max_steps`` the checkpoint has already passed."""
    if max_steps is not None and max_steps < state.step:
        raise ValueError(
            f"max_steps: {max_steps} is below the step of the checkpoint to resume ({state.step}, {checkpoint}); "
            "pass a larger --max_steps or start a new run"
        )
    saved = state.run_args
    if not saved and ALL_ARGS not in allowed:
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint / TRAINER_STATE} records no run arguments ('run_args' is empty), "
            f"so nothing guards against resuming it with other settings; pass --allow_changed_args {ALL_ARGS} to "
            "resume it knowingly"
        )
    current = json.loads(json.dumps(run_args, default=str))  # the checkpoint's copy went through JSON too
    changed = sorted(
        key
        for key in set(saved) | set(current)
        if key not in RESUME_SAFE_ARGS and key not in allowed and saved.get(key) != current.get(key)
    )
    if changed and ALL_ARGS not in allowed:
        differences = "; ".join(f"{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} was trained with other arguments ({differences}); resume with "
            f"the same ones, or pass --allow_changed_args {' '.join(changed)} to change them knowingly"
        )


def write_json_atomic(path: str | Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically (:func:`hf_recperc.publish.write_json`)."""
    write_json(path, payload)


def our_checkpoints(checkpoints: Path) -> list[tuple[int, Path]]:
    """``(step, path)`` of every ``checkpoint-<step>`` directory in ``checkpoints`` that holds our trainer state,
    by step: what a run of ours wrote (anything else there is the user's and is never touched)."""
    found = []
    for path in Path(checkpoints).glob(f"{CHECKPOINT_PREFIX}*"):
        match = re.fullmatch(rf"{CHECKPOINT_PREFIX}(\d+)", path.name)
        if match and path.is_dir() and (path / TRAINER_STATE).is_file():
            found.append((int(match.group(1)), path))
    return sorted(found)


def find_checkpoint(output_dir: str | Path) -> Path | None:
    """The checkpoint with the highest step in ``output_dir/checkpoints``, or ``None``.

    Unfinished checkpoints (``.tmp-...`` directories of a killed run) are ignored.
    """
    found = our_checkpoints(Path(output_dir) / "checkpoints")
    return found[-1][1] if found else None


def save_checkpoint(
    accelerator: Accelerator,
    output_dir: Path,
    state: TrainerState,
    total_limit: int | None,
    parts: Trainables,
) -> Path:
    """The checkpoint's files (:mod:`.checkpoint_files`) into a temporary sibling, then rename; keep at most
    ``total_limit``."""
    checkpoints = output_dir / "checkpoints"
    final = checkpoints / f"{CHECKPOINT_PREFIX}{state.step}"
    staging = checkpoints / f".tmp-{CHECKPOINT_PREFIX}{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(staging, ignore_errors=True)  # left over by a run killed while saving
        staging.mkdir(parents=True)
    accelerator.wait_for_everyone()
    save_training_state(accelerator, staging, parts)  # every process writes its RNG states
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_json_atomic(staging / TRAINER_STATE, state.to_dict())
        replace_directory(staging, final)
        _prune(checkpoints, total_limit)
    accelerator.wait_for_everyone()
    return final


def _prune(checkpoints: Path, total_limit: int | None) -> None:
    if total_limit is None:
        return
    steps = our_checkpoints(checkpoints)
    for _, path in steps[: max(len(steps) - total_limit, 0)]:
        shutil.rmtree(path)


def remove_checkpoints(checkpoints: Path) -> None:
    """``--overwrite_output_dir``: remove what runs of ours wrote in ``checkpoints`` (their ``checkpoint-<step>``
    directories, unfinished ``.tmp-`` and set-aside ``.old-`` ones); the user's files there stay."""
    for _, path in our_checkpoints(checkpoints):
        shutil.rmtree(path)
    for pattern in (f".tmp-{CHECKPOINT_PREFIX}*", f".old-{CHECKPOINT_PREFIX}*"):
        for path in checkpoints.glob(pattern):
            shutil.rmtree(path, ignore_errors=True)
    if checkpoints.is_dir() and not any(checkpoints.iterdir()):
        checkpoints.rmdir()


def resolve_resume(
    accelerator: Accelerator, resume_from_checkpoint: str | None, overwrite: bool, output_dir: Path, log
) -> Path | None:
    """The checkpoint to resume from, decided before any costly work; refuses to mix two runs' checkpoints."""
    existing = find_checkpoint(output_dir)
    if resume_from_checkpoint == "latest":
        if existing is None:
            log(f"--resume_from_checkpoint latest: no checkpoint in {output_dir}; starting fresh")
        return existing
    if resume_from_checkpoint is not None:
        chosen = Path(resume_from_checkpoint)
        _drop_later_checkpoints(accelerator, chosen, output_dir, overwrite)
        return chosen
    if existing is not None:
        if not overwrite:
            raise earlier_run_error(output_dir, existing.name)
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            remove_checkpoints(output_dir / "checkpoints")
        accelerator.wait_for_everyone()
    return None


def _drop_later_checkpoints(
    accelerator: Accelerator, chosen: Path, output_dir: Path, overwrite: bool
) -> None:
    """Resuming an older checkpoint of ``output_dir`` itself: its later checkpoints are another future of the run.
    Left there, the newest would stay ``latest`` after a kill and ``--checkpoints_total_limit`` would prune the
    checkpoints the resumed run writes, so they are refused, or removed with ``--overwrite_output_dir``."""
    checkpoints = output_dir / "checkpoints"
    if not chosen.is_dir() or chosen.resolve().parent != checkpoints.resolve():
        return  # a checkpoint of another folder: this run's own checkpoints start here
    step = dict((path.name, number) for number, path in our_checkpoints(checkpoints)).get(chosen.name)
    later = [path for number, path in our_checkpoints(checkpoints) if step is not None and number > step]
    if not later:
        return
    if not overwrite:
        raise ValueError(
            f"resume_from_checkpoint: {chosen} is older than {', '.join(p.name for p in later)} in {checkpoints}; "
            "resuming it there would leave those as the latest; pass --overwrite_output_dir to remove the later "
            "checkpoints first, or choose another --output_dir"
        )
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        for path in later:
            shutil.rmtree(path)
    accelerator.wait_for_everyone()


def run_defining_args(all_args: dict) -> dict:
    """The arguments a resumed run must share with its checkpoint (the others may change, RESUME_SAFE_ARGS)."""
    return {key: value for key, value in all_args.items() if key not in RESUME_SAFE_ARGS}


def checked_resume(
    accelerator: Accelerator, args, run_args: dict, output_dir: Path, log
) -> tuple[Path | None, TrainerState | None]:
    """The checkpoint to resume from and its trainer state, after refusing other run-defining arguments (see
    :func:`check_resume_arguments`); ``(None, None)`` for a fresh start."""
    resume_dir = resolve_resume(
        accelerator, args.resume_from_checkpoint, args.overwrite_output_dir, output_dir, log
    )
    if resume_dir is None:
        return None, None
    if not resumable(accelerator):
        raise ValueError(
            f"resume_from_checkpoint: {resume_dir}: resuming a sharded run ({accelerator.distributed_type.value}) is "
            "not supported: its states load through pickle, which can run code from the checkpoint folder"
        )
    state = TrainerState.load(resume_dir / TRAINER_STATE)
    check_resume_arguments(state, run_args, args.allow_changed_args, args.max_steps, resume_dir)
    return resume_dir, state


def load_checkpoint(
    accelerator: Accelerator, checkpoint: Path, parts: Trainables, state: TrainerState
) -> None:
    """Restore ``parts`` from ``checkpoint`` (no pickle is ever read); a missing, damaged or foreign file, or a
    scheduler that disagrees with the trainer state's step, is a one-line ``ValueError`` naming it."""
    try:
        load_training_state(accelerator, checkpoint, parts)
    except ValueError as err:
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint} cannot be loaded ({err}); resume from an earlier checkpoint "
            "(--resume_from_checkpoint PATH) or start over"
        ) from err
    # One scheduler step per optimiser step (fp16: except the steps the gradient scaler skipped).
    scheduled = parts.scheduler.last_epoch
    if scheduled > state.step or (accelerator.scaler is None and scheduled != state.step):
        raise ValueError(
            f"resume_from_checkpoint: {checkpoint / TRAINER_STATE}: field 'step' is {state.step}, but the learning-"
            f"rate scheduler of the checkpoint is at step {scheduled}; the checkpoint is damaged"
        )
