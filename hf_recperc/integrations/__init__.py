"""Our monitors inside other people's training loops: a ``transformers.TrainerCallback`` and a
``lightning.Callback`` that measure the model's features at each evaluation with the perception report's code.

``LightningPerceptionCallback`` needs ``lightning`` and is imported on first use.
"""

from .measurement import PerceptionMeasurement, vision_model
from .transformers_callback import PerceptionCallback

__all__ = ["PerceptionMeasurement", "PerceptionCallback", "LightningPerceptionCallback", "vision_model"]


def __getattr__(name: str):
    if name == "LightningPerceptionCallback":
        from .lightning_callback import LightningPerceptionCallback  # noqa: PLC0415  (lightning is optional)

        return LightningPerceptionCallback
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
