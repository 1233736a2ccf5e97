"""Every training figure: reconstructions, perception over training, band errors, and the monitors' own figures;
written as PNG files and sent to TensorBoard (as images: the event file holds the picture itself).
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch

from ..plotting import new_figure, save_figure
from ..results import BAND_ERROR, KNN_ACCURACY, ONLINE_PROBE_ACCURACY, eval_key, subspace_key

__all__ = [
    "final_figures",
    "reconstruction_figure",
    "history_figures",
    "write_figures",
    "log_figures",
    "figure_to_array",
]

logger = logging.getLogger("hf_recperc.training")

CAPTIONS = {
    "reconstructions": "Validation images, the model's input and the reconstruction",
    "probe_accuracy": "Probe accuracy over training",
    "band_errors": "Relative reconstruction error per spectral band over training",
    "eigenvalue_spectrum": "Eigenvalue spectrum of the embeddings (last evaluation)",
    "accuracy_per_layer": "Subspace probe accuracy per encoder layer (last evaluation)",
    "eigenvalue_spectrum_per_layer": "Eigenvalue spectrum per encoder layer (last evaluation)",
}


@torch.no_grad()
def reconstruction_figure(model, pixel_values: torch.Tensor, image_processor, generator: torch.Generator):
    """Rows: input, what the model saw (omitted when it saw the input itself), the reconstruction; the title gives
    the mean squared error the reconstruction metric scores on these images.

    Args:
        pixel_values (`torch.FloatTensor` of shape `(count, C, H, W)`): normalised validation images.
    """
    from matplotlib.figure import Figure  # noqa: PLC0415

    model.eval()
    outputs = model(pixel_values=pixel_values, **model.sample_forward_randomness(pixel_values, generator))
    reconstruction, weight = model.reconstruction_for_metrics(pixel_values, outputs)
    rows = {"input": pixel_values}
    if outputs.pixel_mask is not None:
        rows["model input (masked)"] = pixel_values * ~outputs.pixel_mask
    elif not getattr(getattr(model, "corruption", None), "is_identity", True):
        rows[f"model input ({model.config.corruption})"] = model.corruption(
            pixel_values, generator=generator
        ).pixel_values
    rows["reconstruction"] = reconstruction
    error = (reconstruction.float() - pixel_values) ** 2
    weight = torch.ones_like(error[:, :1]) if weight is None else weight
    mse = float((error * weight).sum() / weight.expand_as(error).sum())
    grid = _image_grid(list(rows.values()), image_processor)
    figure = Figure(figsize=(1.0 * pixel_values.shape[0] + 1.8, 1.0 * len(rows) + 0.4))
    axis = figure.add_axes((0.22, 0.02, 0.76, 0.86))
    axis.imshow(grid, interpolation="nearest")
    size = pixel_values.shape[-1] + max(1, pixel_values.shape[-1] // 8)
    axis.set_xticks([])
    axis.set_yticks([size * (row + 0.5) for row in range(len(rows))], list(rows), fontsize=8)
    axis.tick_params(length=0)
    axis.set_title(f"Reconstructions of validation images (MSE {mse:.4g})", fontsize=9)
    return figure


def final_figures(
    model, eval_set, pipeline, image_processor, generator: torch.Generator, count: int = 8
) -> dict:
    """``{"reconstructions": figure}`` of the first ``count`` validation images, read through the run's data path
    (``pipeline.evaluation`` of a batch of ``eval_set``) exactly as the evaluation reads them."""
    from ..images.datasets import collate_stored  # noqa: PLC0415

    rows = torch.utils.data.Subset(eval_set, range(min(count, len(eval_set))))
    loader = torch.utils.data.DataLoader(rows, batch_size=len(rows), collate_fn=collate_stored)
    pixel_values = pipeline.evaluation(next(iter(loader)))["pixel_values"]
    return {"reconstructions": reconstruction_figure(model, pixel_values, image_processor, generator)}


def _image_grid(rows: list[torch.Tensor], image_processor) -> np.ndarray:
    """`len(rows)` rows of `(count, C, H, W)` normalised images -> one `(H', W', 3)` array in [0, 1] with gaps."""
    first = rows[0]
    mean = torch.tensor(image_processor.image_mean, device=first.device)[:, None, None]
    std = torch.tensor(image_processor.image_std, device=first.device)[:, None, None]
    count, size = first.shape[0], first.shape[-1]
    gap = max(1, size // 8)
    grid = torch.ones(len(rows), count, 3, size + gap, size + gap)  # white gaps between images
    for row, images in enumerate(rows):
        images = (images.float() * std + mean).clamp(0, 1).cpu()  # back to [0, 1] pixels
        grid[row, :, :, :size, :size] = images.expand(-1, 3, -1, -1)  # grey -> RGB
    return grid.permute(0, 3, 1, 4, 2).reshape(len(rows) * (size + gap), count * (size + gap), 3).numpy()


def history_figures(history: list[dict], subspaces: list[str]) -> dict:
    """``probe_accuracy`` (online, subspace and kNN probes over steps) and ``band_errors`` (when measured); none
    after a single evaluation (a curve of one point: its numbers are in ``results.json``, and the log says so)."""
    if len(history) < 2:
        logger.info(
            f"probe_accuracy.png and band_errors.png not drawn: {len(history)} evaluation(s), the numbers are in "
            "results.json; a smaller --eval_steps draws curves over training"
        )
        return {}
    steps = [record["step"] for record in history]
    figures = {}
    figure, axis = new_figure()
    curves = {"online probe": eval_key(ONLINE_PROBE_ACCURACY), "kNN (k=20)": eval_key(KNN_ACCURACY)}
    curves |= {f"subspace probe {spec}": eval_key(subspace_key("accuracy", spec)) for spec in subspaces}
    for label, key in curves.items():
        if key in history[-1]:
            axis.plot(steps, [record[key] for record in history], marker=".", label=label)
    axis.set(xlabel="optimiser step", ylabel="validation accuracy", title="Perception while training")
    axis.legend(fontsize=8)
    axis.grid(alpha=0.3)
    figures["probe_accuracy"] = figure
    band_keys = [k for k in history[-1] if k.startswith(eval_key(BAND_ERROR + "/"))]
    if band_keys and all(math.isfinite(history[-1][k]) for k in band_keys):
        figure, axis = new_figure()
        for key in band_keys:
            axis.plot(steps, [r[key] for r in history], marker=".", label=f"variance {key.split('/')[-1]}")
        axis.axhline(1.0, color="0.4", linestyle="--", linewidth=0.8, label="error of the data mean (1)")
        axis.set(
            xlabel="optimiser step",
            ylabel="relative reconstruction error",
            yscale="log",
            title="Error per band of the pixel spectrum (top bands first)",
        )
        axis.legend(fontsize=8)
        axis.grid(alpha=0.3)
        figures["band_errors"] = figure
    return figures


def write_figures(directory: Path, figures: dict) -> dict[str, str]:
    """Save each figure as ``<name>.png``; returns ``{caption: file name}`` for the model card."""
    written = {}
    for name, figure in figures.items():
        save_figure(figure, directory / f"{name}.png", dpi=100, tight=False)
        written[CAPTIONS.get(name, name.replace("_", " "))] = f"{name}.png"
    return written


def figure_to_array(figure) -> np.ndarray:
    """Render a matplotlib Figure to a `(H, W, 3)` uint8 array (Agg, no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: PLC0415

    canvas = FigureCanvasAgg(figure)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3].copy()


def log_figures(accelerator, figures: dict, step: int) -> None:
    """Send figures to the TensorBoard tracker (``figures/<name>`` images), if one runs."""
    try:
        tracker = accelerator.get_tracker("tensorboard", unwrap=True)
    except (ValueError, KeyError):
        return
    if not hasattr(tracker, "add_image"):
        return  # accelerate returns a GeneralTracker stand-in when TensorBoard is not among the trackers
    for name, figure in figures.items():
        tracker.add_image(f"figures/{name}", figure_to_array(figure), global_step=step, dataformats="HWC")
    tracker.flush()
