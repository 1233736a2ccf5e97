"""One evaluation: every monitor over the probe's training rows and the validation split.

Each batch is encoded once for every feature the monitors ask for (the embedding and pooled hidden states come
from the same encoder pass). Validation rows also need the reconstruction and the online probe's logits: an
autoencoder without input noise gets both from the clean embeddings already computed (decoder and probe only, no
second encoder pass); a denoising AE runs its corrupted forward for the logits and decodes the clean embeddings
for the reconstruction; an MAE runs its masked forward (another input: the visible patches), with the evaluation's
fixed randomness.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch

from ..monitors import EVAL, Monitor, MonitorBatch, pool_hidden_state
from ..results import eval_key

__all__ = ["run_monitors", "monitor_batch", "scored_outputs", "summary"]


@torch.no_grad()
def run_monitors(
    model, accelerator, monitors: Sequence[Monitor], splits: Iterable[tuple[str, Iterable]], generator
) -> dict[str, float]:
    """Reset, feed, merge and compute every monitor; returns their numbers under ``eval/`` keys.

    Args:
        model: the unwrapped ``...ForPreTraining`` model (put in eval mode for the pass, then restored).
        splits: ``(split, loader)`` pairs, this process's shard of each split.
        generator: the source of the validation forward passes' randomness.
    """
    was_training = model.training
    model.eval()
    for monitor in monitors:
        monitor.reset()
    wanted = {name for monitor in monitors for name in monitor.features}
    for split, loader in splits:
        for batch in loader:
            prepared = monitor_batch(model, accelerator, split, batch, wanted, generator)
            for monitor in monitors:
                monitor.update(prepared)
    for monitor in monitors:
        monitor.all_reduce()
    metrics: dict[str, float] = {}
    for monitor in monitors:
        metrics.update({eval_key(key): value for key, value in monitor.compute().items()})
    model.train(was_training)
    return metrics


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
    """One log line of a history record: losses, reconstruction, online / kNN / subspace probes."""
    accuracies = "  ".join(
        f"{k.split('/')[-1]} {v:.3f}"
        for k, v in record.items()
        if k.startswith("eval/subspace_probe/accuracy/")
    )
    parts = [f"step {record['step']} (epoch {record['epoch']:.2f}): train loss {record['train/loss']:.4g}"]
    labels = {
        "eval/reconstruction_mse": "val mse",
        "eval/online_probe_accuracy": "online probe",
        "eval/knn/accuracy": "kNN",
    }
    parts += [f"{label} {record[key]:.4g}" for key, label in labels.items() if key in record]
    return ", ".join(parts) + (f", subspace probe {accuracies}" if accuracies else "")
