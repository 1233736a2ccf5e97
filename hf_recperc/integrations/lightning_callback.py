"""Perception monitors at each validation of a ``lightning.Trainer``.

Needs ``lightning``. At the end of every validation epoch (not the sanity check) the callback measures the
module's vision model with :class:`PerceptionMeasurement` (the perception report's code) and logs the numbers
with ``LightningModule.log_dict`` (every logger, ``trainer.callback_metrics``, checkpoint monitors).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import lightning
from torch import nn

from .measurement import PerceptionMeasurement

__all__ = ["LightningPerceptionCallback"]


class LightningPerceptionCallback(lightning.Callback):
    """Run perception monitors at each validation of a ``lightning.Trainer``.

    Args:
        data, **kwargs: see :class:`~hf_recperc.integrations.PerceptionMeasurement`.
        model: where the vision model is on the LightningModule: an attribute path (``"model"``,
            ``"model.vit"``), a callable ``module -> nn.Module``, or ``None`` for the module itself.
        prefix: put in front of every logged key.

    Attributes:
        history: one dict per validation, ``{"step": ..., <key>: <number>, ...}`` (keys without prefix).
    """

    def __init__(
        self, data=None, *, model: str | Callable | None = None, prefix: str = "perception/", **kwargs
    ):
        if model is not None and not (isinstance(model, str) or callable(model)):
            raise ValueError(f"model: expected an attribute path, a callable or None, got {model!r}")
        self.measurement = PerceptionMeasurement(data, **kwargs)
        self.model, self.prefix = model, prefix
        self.history: list[dict] = []

    def _vision_model(self, module: lightning.LightningModule) -> nn.Module:
        if self.model is None:
            return module
        if callable(self.model):
            return self.model(module)
        try:
            return operator.attrgetter(self.model)(module)
        except AttributeError:
            raise ValueError(f"model: the LightningModule has no attribute {self.model!r}") from None

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        results = self.measurement(self._vision_model(pl_module))
        self.history.append({"step": trainer.global_step, **results})
        pl_module.log_dict({f"{self.prefix}{key}": float(value) for key, value in results.items()})
