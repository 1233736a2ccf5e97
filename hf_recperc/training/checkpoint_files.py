"""The files of a checkpoint, written and read without pickle.

accelerate's ``save_state`` / ``load_state`` keep the optimiser in ``optimizer.bin``, the RNG states in
``random_states_N.pkl`` and every object registered with ``register_for_checkpointing`` in
``custom_checkpoint_N.pkl``, which accelerate (1.x) reads with ``torch.load(weights_only=False)``: a pickle placed in a
checkpoint folder then runs on ``--resume_from_checkpoint``. Its FSDP path reads ``.metadata`` with ``pickle.load``.
A checkpoint of ours is therefore made of files that hold data only:

========================  ===================================================================================
``model.safetensors``     the model's weights (safetensors: tensors and a JSON header, nothing executable)
``optimizer.safetensors`` the optimiser's tensors (``state.<param>.<name>``), its structure as JSON in the header
``scheduler.json``        the learning-rate scheduler's ``state_dict``
``grad_scaler.json``      the fp16 gradient scaler's ``state_dict`` (``--mixed_precision fp16`` only)
``rng_state_<i>.json``    process ``i``'s Python, NumPy, torch (and CUDA) generator states
``trainer_state.json``    :class:`~hf_recperc.training.state.TrainerState`
========================  ===================================================================================

Every value read is checked against what the live object holds (same keys, types and shapes), so a damaged file
is a one-line ``ValueError`` naming it, never an object that fails hours later. Sharded runs (FSDP, DeepSpeed)
keep accelerate's own format and cannot be resumed (:func:`resumable`).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_model, save_file, save_model

__all__ = [
    "Trainables",
    "save_training_state",
    "load_training_state",
    "resumable",
    "CHECKPOINT_FILES",
    "PICKLE_SUFFIXES",
]

MODEL_FILE = "model.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.json"
GRAD_SCALER_FILE = "grad_scaler.json"
RNG_FILE = "rng_state_{}.json"
# Required in every checkpoint, besides trainer_state.json and the RNG states.
CHECKPOINT_FILES = (MODEL_FILE, OPTIMIZER_FILE, SCHEDULER_FILE)
# Suffixes of pickle-based formats (torch.save, pickle; DCP's `.metadata` is one too).
PICKLE_SUFFIXES = frozenset({".bin", ".pkl", ".pickle", ".pt", ".pth", ".ckpt"})
_STRUCTURE_KEY = "hf_recperc_optimizer"  # the optimiser's structure, JSON, in the safetensors header


@dataclass
class Trainables:
    """What a checkpoint restores besides the trainer state.

    Attributes:
        model: the unwrapped model (its parameters are the trained ones).
        optimizer: the torch optimiser (not accelerate's wrapper).
        scheduler: the learning-rate scheduler.
    """

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any


def resumable(accelerator) -> bool:
    """Whether this run's checkpoints are in our pickle-free format (not FSDP / DeepSpeed / Megatron-LM, whose
    sharded states only accelerate can gather, through pickle)."""
    from accelerate.utils import DistributedType  # noqa: PLC0415

    sharded = {DistributedType.FSDP, DistributedType.DEEPSPEED, DistributedType.MEGATRON_LM}
    return accelerator.distributed_type not in sharded


# ---------------------------------------------------------------------------------------------------------- save


def save_training_state(accelerator, directory: Path, parts: Trainables) -> None:
    """Write the checkpoint's files into ``directory`` (every process must call it: each writes its RNG state)."""
    if not resumable(accelerator):
        accelerator.save_state(str(directory))  # sharded: accelerate's format, kept for manual recovery only
    elif accelerator.is_main_process:
        save_model(parts.model, str(directory / MODEL_FILE), force_contiguous=True)  # channels_last weights
        tensors, structure = _split_optimizer_state(parts.optimizer.state_dict())
        save_file(tensors, str(directory / OPTIMIZER_FILE), metadata={_STRUCTURE_KEY: json.dumps(structure)})
        if accelerator.scaler is not None:
            _write_json(directory / GRAD_SCALER_FILE, accelerator.scaler.state_dict())
    if accelerator.is_main_process:
        _write_json(directory / SCHEDULER_FILE, parts.scheduler.state_dict())
    _write_json(directory / RNG_FILE.format(accelerator.process_index), _rng_states())


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, allow_nan=True) + "\n")  # floats round-trip exactly (shortest repr)


def _split_optimizer_state(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` as safetensors tensors ``state.<param>.<name>`` and a JSON-able structure
    (``param_groups`` and any non-tensor per-parameter value)."""
    tensors, scalars = {}, {}
    for index, values in state_dict["state"].items():
        for name, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def _rng_states() -> dict:
    """This process's generator states as JSON-able values (lists of ints)."""
    version, internal, gauss = random.getstate()
    kind, keys, position, has_gauss, cached = np.random.get_state()
    states = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(position), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available():
        states["cuda"] = [state.tolist() for state in torch.cuda.get_rng_state_all()]
    return states


# ---------------------------------------------------------------------------------------------------------- load


def load_training_state(accelerator, directory: Path, parts: Trainables) -> None:
    """Restore model, optimiser, scheduler, gradient scaler and this process's generators from ``directory``.

    Raises:
        ValueError: a file is missing, not in our format (e.g. accelerate's pickle files) or does not fit the
            run's model/optimiser; the message names the file.
    """
    foreign = sorted(
        p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES or p.name == ".metadata"
    )
    if foreign:  # never written by this trainer: a checkpoint holding them was altered, or is accelerate's
        raise ValueError(
            f"{directory}: holds {', '.join(foreign)}, pickle files this trainer never writes; they could run code "
            "when loaded, so the checkpoint is not resumed (nothing was read from them)"
        )
    for name in CHECKPOINT_FILES:
        if not (directory / name).is_file():
            raise ValueError(f"{directory / name} is missing: not a checkpoint of this trainer")
    _load_model(directory / MODEL_FILE, parts.model)
    _load_optimizer(directory / OPTIMIZER_FILE, parts.optimizer)
    parts.scheduler.load_state_dict(_read_like(directory / SCHEDULER_FILE, parts.scheduler.state_dict()))
    if accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(
            _read_like(directory / GRAD_SCALER_FILE, accelerator.scaler.state_dict())
        )
    rng = directory / RNG_FILE.format(accelerator.process_index)
    if rng.is_file():  # absent when resuming with more processes: every step reseeds its generators anyway
        _set_rng_states(rng)


def _load_model(path: Path, model: torch.nn.Module) -> None:
    try:
        load_model(model, str(path), strict=True, device=str(next(model.parameters()).device))
    except Exception as err:  # safetensors header errors, missing/unexpected keys, shapes
        raise ValueError(f"{path}: not the weights of this model ({type(err).__name__}: {err})") from err


def _load_optimizer(path: Path, optimizer: torch.optim.Optimizer) -> None:
    """Rebuild ``optimizer.state_dict()`` from the file; every value checked against the live optimiser."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            structure = json.loads((handle.metadata() or {})[_STRUCTURE_KEY])
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 (no __iter__)
    except Exception as err:
        raise ValueError(f"{path}: not an optimiser state ({type(err).__name__}: {err})") from err
    current = optimizer.state_dict()["param_groups"]
    groups = _checked(structure, {"param_groups": current, "scalars": None}, path)
    if [group["params"] for group in groups["param_groups"]] != [group["params"] for group in current]:
        raise ValueError(f"{path}: param_groups: other parameter indices than this optimiser's")
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        if not index.isdigit() or int(index) >= len(params):
            raise ValueError(f"{path}: tensor {key!r} names no parameter of this optimiser")
        if tensor.ndim and tensor.shape != params[int(index)].shape:
            raise ValueError(
                f"{path}: {key} has shape {tuple(tensor.shape)}, the parameter {tuple(params[int(index)].shape)}"
            )
        state.setdefault(int(index), {})[name] = tensor
    for index, values in (groups["scalars"] or {}).items():
        if not index.isdigit() or not isinstance(values, dict):
            raise ValueError(f"{path}: scalars of {index!r}: expected a parameter index and a dict")
        state.setdefault(int(index), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": groups["param_groups"]})


def _read_like(path: Path, reference: Any) -> Any:
    """The JSON in ``path``, checked to have ``reference``'s structure (see :func:`_checked`)."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not a readable JSON state ({type(err).__name__}: {err})") from err
    return _checked(payload, reference, path)


def _checked(value: Any, reference: Any, path: Path, where: str = "") -> Any:
    """``value`` with ``reference``'s structure: dicts with the same keys, lists of the same length, numbers where
    numbers are (an int where a float is), tuples restored; ``None`` in ``reference`` accepts anything JSON gave."""
    here = where or "the top level"
    if reference is None:
        return value
    if isinstance(reference, dict):
        if not isinstance(value, dict) or set(map(str, value)) != set(map(str, reference)):
            raise ValueError(
                f"{path}: {here}: expected the keys {sorted(map(str, reference))}, got {_brief(value)}"
            )
        by_name = {str(k): v for k, v in value.items()}
        return {
            k: _checked(by_name[str(k)], v, path, f"{where}.{k}".lstrip(".")) for k, v in reference.items()
        }
    if isinstance(reference, (list, tuple)):
        if not isinstance(value, list) or len(value) != len(reference):
            raise ValueError(f"{path}: {here}: expected a list of {len(reference)}, got {_brief(value)}")
        items = [_checked(v, r, path, f"{where}[{i}]") for i, (v, r) in enumerate(zip(value, reference))]
        return tuple(items) if isinstance(reference, tuple) else items
    if isinstance(reference, bool) or isinstance(value, bool):
        if type(value) is not type(reference):
            raise ValueError(f"{path}: {here}: expected {type(reference).__name__}, got {_brief(value)}")
        return value
    if isinstance(reference, float) and isinstance(value, (int, float)):
        return float(value)
    if type(value) is not type(reference):
        raise ValueError(f"{path}: {here}: expected {type(reference).__name__}, got {_brief(value)}")
    return value


def _brief(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _set_rng_states(path: Path) -> None:
    try:
        states = json.loads(path.read_text())
        version, internal, gauss = states["python"]
        random.setstate((version, tuple(internal), gauss))
        kind, keys, position, has_gauss, cached = states["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))
        torch.set_rng_state(torch.tensor(states["torch"], dtype=torch.uint8))
        if "cuda" in states and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in states["cuda"]])
    except Exception as err:  # wrong shapes, types, values: the generators refuse them
        raise ValueError(f"{path}: not a generator state ({type(err).__name__}: {err})") from err
