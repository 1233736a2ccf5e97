"""Versions of the libraries a result depends on: recorded in ``results.json``, ``report.json`` and model cards."""

from __future__ import annotations

import contextlib
import platform

__all__ = ["library_versions"]


def library_versions() -> dict[str, str]:
    """``{"hf_recperc": ..., "torch": ..., ...}``; timm only when installed."""
    import accelerate  # noqa: PLC0415
    import datasets  # noqa: PLC0415
    import huggingface_hub  # noqa: PLC0415
    import torch  # noqa: PLC0415
    import transformers  # noqa: PLC0415

    from . import __version__  # noqa: PLC0415

    versions = {
        "hf_recperc": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
        "datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "python": platform.python_version(),
    }
    with contextlib.suppress(ImportError):
        import timm  # noqa: PLC0415

        versions["timm"] = timm.__version__
    return versions
