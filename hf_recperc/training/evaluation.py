"""One evaluation: every monitor over the probe's training rows and the validation split.

Each batch is encoded once for every feature the monitors ask for (the embedding and pooled hidden states come
from the same encoder pass). Validation rows also need the reconstruction and the online probe's logits: an
autoencoder without input noise gets both from the clean embeddings already computed (decoder and probe only, no
second encoder pass); a denoising AE runs its corrupted forward for the logits and decodes the clean embeddings
for the reconstruction; an MAE runs its masked forward (another input: the visible patches), with the evaluation's
fixed randomness.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch

from ..monitors import EVAL, Monitor, MonitorBatch, pool_hidden_state, runner
from ..monitors.registry import summary_parts
from ..results import eval_key, subspace_key, train_key

__all__ = ["ModelFeatureSource", "run_monitors", "monitor_batch", "scored_outputs", "summary"]


@dataclass
class ModelFeatureSource:
    """The trainer's :class:`~hf_recperc.monitors.FeatureSource`: its loaders encoded by the model being trained.

    Args:
        model: the unwrapped ``...ForPreTraining`` model.
        splits: ``(split, loader)`` pairs, this process's shard of each split.
        generator: the source of the validation forward passes' randomness.
    """

    model: torch.nn.Module
    accelerator: object
    splits: Iterable[tuple[str, Iterable]]
    generator: torch.Generator | None = None

    def batches(self, features: set[str]) -> Iterator[MonitorBatch]:
        for split, loader in self.splits:
            for batch in loader:
                yield monitor_batch(self.model, self.accelerator, split, batch, features, self.generator)


@torch.no_grad()
def run_monitors(
    model, accelerator, monitors: Sequence[Monitor], splits: Iterable[tuple[str, Iterable]], generator
) -> dict[str, float]:
    """Every monitor over the model's features, through the engine's runner
    (:func:`hf_recperc.monitors.run_monitors`); returns their numbers under ``eval/`` keys.

    Args:
        model: the unwrapped ``...ForPreTraining`` model (put in eval mode for the pass, then restored).
        splits: ``(split, loader)`` pairs, this process's shard of each split.
        generator: the source of the validation forward passes' randomness.
    """
    was_training = model.training
    model.eval()
    try:
        metrics = runner.run_monitors(monitors, ModelFeatureSource(model, accelerator, splits, generator))
    finally:
        model.train(was_training)
    return {eval_key(key): value for key, value in metrics.items()}


def monitor_batch(model, accelerator, split: str, batch, wanted: set[str], generator) -> MonitorBatch:
    """The :class:`~hf_recperc.monitors.MonitorBatch` of one loader batch (``{"pixel_values", "labels"}``)."""
    device = accelerator.device
    pixel_values, labels = batch["pixel_values"].to(device), batch["labels"].to(device)
    layers = sorted(name for name in wanted if name.startswith("layer_"))
    with accelerator.autocast():
        encoded = model.base_model(pixel_values=pixel_values, output_hidden_states=bool(layers))
        features = {"embedding": encoded.embeddings}
        for name in layers:  # "layer_<i>/<pooling>"
            index, pooling = name.removeprefix("layer_").split("/")
            hidden = encoded.hidden_states[int(index)]
            features[name] = pool_hidden_state(hidden, pooling, model.num_prefix_tokens)
        prepared = MonitorBatch(split, labels=labels, features=features, pixel_values=pixel_values)
        if split == EVAL:
            reconstruction, weight, prepared.logits = scored_outputs(
                model, pixel_values, labels, encoded.embeddings, generator
            )
            prepared.reconstruction, prepared.reconstruction_weight = reconstruction.float(), weight
    return prepared


def scored_outputs(model, pixel_values, labels, embeddings, generator):
    """``(reconstruction, weight, logits)`` of validation images for the monitors, reusing the clean
    ``embeddings`` `(B, K)` wherever the model would encode the clean images again: each family's pre-training
    model answers for itself (``outputs_for_metrics``).

    Returns:
        reconstruction `(B, C, H, W)`, weight `(B, 1, H, W)` or ``None`` (every pixel scored), logits
        `(B, num_labels)`; the same values as ``model.reconstruction_for_metrics`` and ``model(...).logits``.
    """
    return model.outputs_for_metrics(pixel_values, labels, embeddings, generator)


def summary(record: dict) -> str:
    """One log line of a history record: losses, then each registered monitor's summary numbers (reconstruction,
    online probe, kNN, ...), then the subspace probes."""
    accuracy_prefix = eval_key(subspace_key("accuracy", ""))
    accuracies = "  ".join(
        f"{k.removeprefix(accuracy_prefix)} {v:.3f}"
        for k, v in record.items()
        if k.startswith(accuracy_prefix)
    )
    parts = [
        f"step {record['step']} (epoch {record['epoch']:.2f}): train loss {record[train_key('loss')]:.4g}"
    ]
    parts += summary_parts(record, eval_key)
    return ", ".join(parts) + (f", subspace probe {accuracies}" if accuracies else "")
