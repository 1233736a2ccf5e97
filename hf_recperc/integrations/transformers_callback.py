"""Perception monitors at each evaluation of a ``transformers.Trainer`` (``run_mae.py``-style training).

>>> callback = PerceptionCallback("digits", layers="last")           # doctest: +SKIP
>>> trainer = Trainer(model, args, train_dataset=..., eval_dataset=..., processing_class=image_processor)
>>> callback.attach(trainer)                                          # doctest: +SKIP
>>> trainer.train()  # each evaluation logs eval_layers/<feature>/accuracy/<S>, .../knn/accuracy, ...

At each evaluation the callback measures the model's features with :class:`PerceptionMeasurement` (the perception
report's code) and adds the numbers, with the evaluation's prefix (``eval_``), to

* the evaluation's metrics (what ``Trainer.evaluate`` returns; usable as ``metric_for_best_model``),
* the evaluation's record in ``state.log_history`` (``trainer_state.json``; the model card that ``push_to_hub``
  writes reads its results from that record),
* the Trainer's trackers (``report_to``: TensorBoard, W&B, ...), through its callbacks' ``on_log``, once attached
  with :meth:`PerceptionCallback.attach`. (``Trainer.log`` itself would append a second record for the same
  evaluation; callbacks are not handed the trainer, hence ``attach``.)
"""

from __future__ import annotations

import logging

from transformers import TrainerCallback

from .measurement import PerceptionMeasurement

__all__ = ["PerceptionCallback"]

logger = logging.getLogger(__name__)


class PerceptionCallback(TrainerCallback):
    """Run perception monitors at each evaluation of a ``transformers.Trainer``.

    Args:
        data, **kwargs: see :class:`~hf_recperc.integrations.PerceptionMeasurement` (the labelled images to probe
            on, monitors, layers, poolings, ...). Without ``image_processor``, the Trainer's ``processing_class``
            is used.

    Attributes:
        history: one dict per evaluation, ``{"step": ..., <key>: <number>, ...}`` (keys without prefix).
    """

    def __init__(self, data=None, **kwargs):
        self.measurement = PerceptionMeasurement(data, **kwargs)
        self.trainer = None
        self.history: list[dict] = []

    def attach(self, trainer) -> PerceptionCallback:
        """Add this callback to ``trainer`` and log through its trackers; returns self."""
        self.trainer = trainer
        if self not in trainer.callback_handler.callbacks:
            trainer.add_callback(self)
        return self

    def on_evaluate(self, args, state, control, model=None, processing_class=None, metrics=None, **kwargs):
        results = self.measurement(model, image_processor=processing_class)
        self.history.append({"step": state.global_step, **results})
        prefix = _metric_prefix(metrics)
        logs = {f"{prefix}_{key}": value for key, value in results.items()}
        if metrics is not None:
            metrics.update(logs)
        record = state.log_history[-1] if state.log_history else {}
        if f"{prefix}_runtime" in record and record.get("step") == state.global_step:
            record.update(logs)  # this evaluation's own record
        if self.trainer is not None:
            self.trainer.callback_handler.on_log(args, state, control, dict(logs))
        elif state.is_world_process_zero and len(self.history) == 1:
            logger.warning(
                "PerceptionCallback: not attached, so trackers get no numbers; call attach(trainer)"
            )
        return control


def _metric_prefix(metrics: dict | None) -> str:
    """The evaluation's key prefix (``eval`` unless ``Trainer.evaluate(metric_key_prefix=...)`` said otherwise)."""
    for key in metrics or {}:
        if key.endswith("_runtime"):
            return key.removesuffix("_runtime")
    return "eval"
