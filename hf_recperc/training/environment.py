"""Facts about the machine and the libraries a run records or adapts to."""

from __future__ import annotations

import os
import time

import torch

from ..results import RunInfo, RunResults
from ..versions import library_versions
from .arguments import model_family

__all__ = [
    "check_process_group",
    "no_accelerator_device",
    "tracker_config",
    "library_versions",
    "run_results",
]


def no_accelerator_device() -> bool:
    """True on machines without a GPU or other accelerator.

    There, accelerate needs ``cpu=True`` to form a multi-process gloo group (``DistributedType.MULTI_CPU``): without
    it, ``accelerate launch --multi_gpu --num_processes 2`` or ``torchrun`` start independent single-process runs
    (accelerate 1.15, ``PartialState._prepare_backend``). On a CPU-only machine it changes nothing else.
    """
    accelerator_api = getattr(torch, "accelerator", None)  # torch >= 2.6
    if accelerator_api is not None:
        return not accelerator_api.is_available()
    return not torch.cuda.is_available()


def check_process_group(accelerator) -> None:
    """Refuse a launch whose processes did not form one group: each would train alone and overwrite the others."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and accelerator.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but accelerate formed a group of {accelerator.num_processes}: "
            "every process would train alone and overwrite the others' output"
        )


def tracker_config(all_args: dict) -> dict:
    """Arguments as tracker hyperparameters (TensorBoard accepts only scalars and strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in all_args.items()}


def run_results(run) -> RunResults:
    """``results.json`` of a :class:`~hf_recperc.training.loop.PretrainingRun`: the last evaluation, every argument,
    what the run was, library versions."""
    config, model = run.model.config, run.model
    info = RunInfo(
        family=run.model_args.model_family,
        model_type=type(config).model_type,  # (a ViTMAE checkpoint's config keeps "vit_mae")
        preset=run.preset,  # resolved once at setup: publishing decodes no image
        num_parameters=model.num_parameters(),
        dataset=run.data.source,
        num_train=run.num_train,
        num_validation=len(run.eval_set),
        label_names=run.data.label_names,
        num_processes=run.accelerator.num_processes,
        total_batch_size=run.total_batch_size,
        effective_learning_rate=run.learning_rate,
        max_steps=run.max_steps,
        runtime_seconds=round(time.time() - run.start_time, 1),
        device=str(run.accelerator.device),
        mixed_precision=run.args.mixed_precision,
        corruption=model_family(run.model_args.model_family).describe_corruption(config),
        guidance=config.guidance,
        monitors=[monitor.name for monitor in run.monitors],
        spectral_band_dims=next((m.bands.dims for m in run.monitors if getattr(m, "bands", None)), None),
        data_split=getattr(run.data, "split", None),  # streamed data: never carved, nothing to record
    )
    return RunResults(metrics=run.state.history[-1], args=run.all_args, run=info, versions=library_versions())
