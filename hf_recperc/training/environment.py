"""Facts about the machine and the libraries a run records or adapts to."""

from __future__ import annotations

import platform

import torch

__all__ = ["no_accelerator_device", "tracker_config", "library_versions"]


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


def tracker_config(all_args: dict) -> dict:
    """Arguments as tracker hyperparameters (TensorBoard accepts only scalars and strings)."""
    return {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in all_args.items()}


def library_versions() -> dict[str, str]:
    """Versions of the libraries a result depends on (``results.json``, the model card)."""
    import accelerate  # noqa: PLC0415
    import datasets  # noqa: PLC0415
    import huggingface_hub  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from .. import __version__  # noqa: PLC0415

    return {
        "hf_recperc": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }
