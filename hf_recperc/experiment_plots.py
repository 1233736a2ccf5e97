"""Figures of the experiments (docs/science.md section 3): E1 projected images, E2 accuracy vs explained variance,
and E3/E4 run comparisons from ``history.json`` files written by ``scripts/pretrain.py``.

Every function draws on a :class:`matplotlib.figure.Figure` (no ``pyplot`` state, no backend chosen at import,
so the user's backend is left alone), in :mod:`hf_recperc.plotting`'s style, writes one PNG atomically and
returns its path.

The ``history.json`` format read by :func:`load_run`: a JSON list of evaluation records, each a flat dict
with ``"step"`` (int), ``"epoch"`` (float) and metric keys such as ``"eval/reconstruction_mse"``,
``"eval/online_probe_accuracy"``, ``"eval/subspace_probe/accuracy/<subspace>"`` and
``"eval/band_error/<lo>-<hi>"`` (relative reconstruction error in the spectral band of cumulative explained
variance ``[lo, hi)``). ``results.json`` next to it may hold ``{"args": {"guidance": ..., "corruption": ...}}``
for the legend.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.figure import Figure

from .plotting import save_figure, style_axis
from .results import BAND_ERROR, ONLINE_PROBE_ACCURACY, RECONSTRUCTION_MSE, SUBSPACE_PROBE, eval_key

__all__ = [
    "contrast_stretch",
    "plot_projection_grid",
    "plot_accuracy_vs_variance",
    "RunHistory",
    "load_run",
    "plot_runs",
    "runs_figure",
    "RECONSTRUCTION_KEY",
    "ONLINE_PROBE_KEY",
    "SUBSPACE_PROBE_PREFIX",
    "BAND_ERROR_PREFIX",
]

# The history.json keys these plots read, from the one schema (hf_recperc.results).
RECONSTRUCTION_KEY = eval_key(RECONSTRUCTION_MSE)
ONLINE_PROBE_KEY = eval_key(ONLINE_PROBE_ACCURACY)
SUBSPACE_PROBE_PREFIX = eval_key(f"{SUBSPACE_PROBE}/accuracy/")
BAND_ERROR_PREFIX = eval_key(f"{BAND_ERROR}/")


def contrast_stretch(image: np.ndarray, low: float = 1.0, high: float = 99.0) -> np.ndarray:
    """Map one image's ``low``..``high`` percentiles (over all its pixels and channels) to ``[0, 1]``.

    Per-image stretching is what makes a projection visible at all: ``bottom:q`` projections carry a few
    percent of the pixel variance and would be a flat grey on a shared scale.

    Args:
        image: array of shape `(C, H, W)` (any range).

    Returns:
        float array of shape `(H, W, C)` (or `(H, W)` when ``C == 1``) in ``[0, 1]``, ready for ``imshow``.
    """
    lo, hi = np.percentile(image, [low, high])
    stretched = np.clip((image - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0)
    stretched = np.transpose(stretched, (1, 2, 0))
    return stretched[..., 0] if stretched.shape[-1] == 1 else stretched


def plot_projection_grid(
    images: np.ndarray, rows: dict[str, np.ndarray], output: str | Path, *, column_titles=None, title=None
) -> Path:
    """E1: originals in the first row, one row per projection below them, each image contrast-stretched.

    Args:
        images (`np.ndarray` of shape `(N, C, H, W)`): originals in ``[0, 1]`` (shown as they are).
        rows: row label -> projections of shape `(N, C, H, W)` (any range; stretched per image).
        output: PNG path.
        column_titles: ``N`` labels (e.g. class names) above the columns.

    Returns:
        The PNG path.
    """
    count = len(images)
    for label, projected in rows.items():
        if projected.shape != images.shape:
            raise ValueError(f"rows[{label!r}]: expected shape {images.shape}, got {projected.shape}")
    fig = Figure(figsize=(0.3 + 1.2 * count, 1.3 * (1 + len(rows))))
    axes = fig.subplots(1 + len(rows), count, squeeze=False)
    labelled = [("original", None)] + list(rows.items())
    for row, (label, projected) in enumerate(labelled):
        for column in range(count):
            axis = axes[row, column]
            if projected is None:
                picture = np.transpose(images[column], (1, 2, 0))
                picture = picture[..., 0] if picture.shape[-1] == 1 else picture
            else:
                picture = contrast_stretch(projected[column])
            axis.imshow(picture, cmap="gray" if picture.ndim == 2 else None, vmin=0, vmax=1)
            axis.set_xticks([])
            axis.set_yticks([])
            if column == 0:
                axis.set_ylabel(label, fontsize=7)
            if row == 0 and column_titles is not None:
                axis.set_title(str(column_titles[column]), fontsize=7)
    if title:
        fig.suptitle(title, fontsize=11)
    return save_figure(fig, output, dpi=110)


def plot_accuracy_vs_variance(records: list[dict], output: str | Path, *, title: str | None = None) -> Path:
    """E2: test accuracy against the explained variance of the subspace, one line for top, one for bottom.

    Args:
        records: dicts with ``kind`` (``top``/``bottom``/...), ``explained_variance``, ``accuracy`` and
            ``dims`` (as returned by :func:`hf_recperc.experiments.run_projection_experiment`).
        output: PNG path.
    """
    if not records:
        raise ValueError("records: nothing to plot (empty list)")
    fig = Figure(figsize=(5, 3.6))
    axis = fig.subplots()
    styles = {"top": ("tab:blue", "o"), "bottom": ("tab:red", "s")}
    for kind in sorted({r["kind"] for r in records}, key=lambda k: (k not in styles, k)):
        chosen = sorted((r for r in records if r["kind"] == kind), key=lambda r: r["explained_variance"])
        color, marker = styles.get(kind, ("tab:gray", "^"))
        x = [r["explained_variance"] for r in chosen]
        y = [r["accuracy"] for r in chosen]
        axis.plot(x, y, marker=marker, color=color, label=f"{kind} subspace")
        for r in chosen:
            axis.annotate(f"{r['dims']}d", (r["explained_variance"], r["accuracy"]), fontsize=7,
                          xytext=(3, -9), textcoords="offset points")  # fmt: skip
    axis.set_xlim(0, 1.02)
    style_axis(axis, title, "explained variance of the subspace", "test accuracy")
    return save_figure(fig, output, dpi=120)


@dataclass
class RunHistory:
    """One training run's evaluation history.

    Attributes:
        label: legend text (from ``results.json`` ``args``, else the directory name).
        records: the ``history.json`` list, sorted by ``step``.
        path: the run directory.
    """

    label: str
    records: list[dict]
    path: Path

    def series(self, key: str) -> tuple[np.ndarray, np.ndarray]:
        """``(epochs, values)`` of the records that hold ``key`` (finite numbers only)."""
        points = [
            (float(r["epoch"]), float(r[key]))
            for r in self.records
            if isinstance(r.get(key), int | float) and math.isfinite(r[key])
        ]
        return np.array([p[0] for p in points]), np.array([p[1] for p in points])

    @property
    def keys(self) -> set[str]:
        return {key for record in self.records for key in record}


def _run_label(run_dir: Path) -> str:
    results = run_dir / "results.json"
    if results.exists():
        try:
            args = json.loads(results.read_text()).get("args", {})
        except (json.JSONDecodeError, AttributeError):
            args = {}
        parts = [f"{key}={args[key]}" for key in ("guidance", "corruption") if args.get(key) is not None]
        if parts:
            return f"{run_dir.name} ({', '.join(parts)})"
    return run_dir.name


def load_run(run_dir: str | Path) -> RunHistory:
    """Read a run directory's ``history.json`` (format in the module docstring).

    Raises:
        FileNotFoundError: naming the directory when it or its ``history.json`` is missing.
        ValueError: naming the file when it is not a list of records with ``step`` and ``epoch``.
    """
    run_dir = Path(run_dir)
    history = run_dir / "history.json"
    if not history.is_file():
        raise FileNotFoundError(
            f"run_dirs: {str(run_dir)!r} holds no history.json (expected a pretraining output directory)"
        )
    try:
        records = json.loads(history.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{str(history)!r}: not valid JSON ({err})") from None
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise ValueError(f"{str(history)!r}: expected a JSON list of evaluation records (dicts)")
    for index, record in enumerate(records):
        if "step" not in record or "epoch" not in record:
            raise ValueError(f"{str(history)!r}: record {index} lacks 'step' or 'epoch': {sorted(record)}")
    records = sorted(records, key=lambda r: r["step"])
    return RunHistory(label=_run_label(run_dir), records=records, path=run_dir)


def _band_sort_key(key: str) -> float:
    try:
        return float(key[len(BAND_ERROR_PREFIX) :].split("-")[0])
    except ValueError:
        return math.inf


def plot_runs(run_dirs, output: str | Path, *, title: str | None = None) -> Path:
    """E3/E4: :func:`runs_figure` of the runs, saved as a PNG at ``output``; returns the path."""
    return save_figure(runs_figure(run_dirs, title=title), output, dpi=100, tight=False)


def runs_figure(run_dirs, *, title: str | None = None) -> Figure:
    """E3/E4: runs side by side, one panel per metric, one colour per run, x axis = epoch.

    Panels, each drawn only when some run has its keys: reconstruction MSE; online probe accuracy;
    subspace probe accuracy (line style per subspace); one panel per spectral band error. One legend for the
    whole figure, below the panels: the runs by colour (their labels can be long: ``name (guidance=0.01,
    corruption=gaussian:0.3)``) and the subspaces by line style; no legend sits on a panel's curves.

    Args:
        run_dirs: run directories, each with ``history.json`` (see :func:`load_run`), or :class:`RunHistory`.

    Raises:
        ValueError: when no run dir is given or no run holds any known metric.
    """
    from matplotlib.lines import Line2D  # noqa: PLC0415

    runs = [run if isinstance(run, RunHistory) else load_run(run) for run in run_dirs]
    if not runs:
        raise ValueError("run_dirs: give at least one run directory")
    panels = _run_panels(runs)
    columns = min(4, len(panels))
    panel_rows = math.ceil(len(panels) / columns)
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    linestyles = ["-", "--", ":", "-."]
    styles = {label: linestyles[i % 4] for i, label in enumerate(_style_labels(panels))}
    handles = [Line2D([], [], color=colors[i % len(colors)], label=run.label) for i, run in enumerate(runs)]
    handles += [Line2D([], [], color="0.3", linestyle=style, label=label) for label, style in styles.items()]
    legend_rows = math.ceil(len(handles) / min(len(handles), 2 if columns < 3 else 3))
    legend_height = 0.25 * legend_rows + 0.2  # inches
    fig = Figure(figsize=(3.6 * columns, 2.8 * panel_rows + legend_height + (0.4 if title else 0)))
    axes = fig.subplots(panel_rows, columns, squeeze=False)
    for axis, (panel_title, ylabel, entries) in zip(axes.flat, panels):
        for run_index, run in enumerate(runs):
            for key, style_label in entries:
                epochs, values = run.series(key)
                if len(epochs) == 0:
                    continue
                axis.plot(epochs, values, color=colors[run_index % len(colors)],
                          linestyle=styles.get(style_label, "-"), marker="." if len(epochs) < 30 else None,
                          label=run.label if style_label is None else f"{run.label}: {style_label}")  # fmt: skip
        axis.tick_params(labelsize=7)
        axis.set_title(panel_title, fontsize=10)
        axis.set(xlabel="epoch", ylabel=ylabel)
        axis.grid(alpha=0.3)
    for axis in list(axes.flat)[len(panels) :]:
        axis.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=11)
    bottom = legend_height / fig.get_figheight()
    fig.tight_layout(rect=(0, bottom, 1, 1))
    fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 2 if columns < 3 else 3),
               fontsize=7, frameon=False, bbox_to_anchor=(0.5, 0.0))  # fmt: skip
    return fig


def _run_panels(runs: list[RunHistory]) -> list[tuple[str, str, list[tuple[str, str | None]]]]:
    """``(title, y label, [(key, line-style label)])`` of each panel some run has data for."""
    keys = set().union(*(run.keys for run in runs))
    subspace_keys = sorted(k for k in keys if k.startswith(SUBSPACE_PROBE_PREFIX))
    band_keys = sorted((k for k in keys if k.startswith(BAND_ERROR_PREFIX)), key=_band_sort_key)
    panels = []
    if RECONSTRUCTION_KEY in keys:
        panels.append(("reconstruction MSE", "MSE", [(RECONSTRUCTION_KEY, None)]))
    if ONLINE_PROBE_KEY in keys:
        panels.append(("online probe accuracy", "accuracy", [(ONLINE_PROBE_KEY, None)]))
    if subspace_keys:
        entries = [(k, k[len(SUBSPACE_PROBE_PREFIX) :]) for k in subspace_keys]
        panels.append(("subspace probe accuracy", "accuracy", entries))
    for key in band_keys:
        band = key[len(BAND_ERROR_PREFIX) :]
        panels.append((f"band error, variance {band}", "relative error", [(key, None)]))
    if not panels:
        raise ValueError(
            f"run_dirs: no known metric in {[str(r.path) for r in runs]}; expected keys such as "
            f"{RECONSTRUCTION_KEY!r}, {ONLINE_PROBE_KEY!r}, '{SUBSPACE_PROBE_PREFIX}top:0.9', '{BAND_ERROR_PREFIX}0.00-0.50'"
        )
    return panels


def _style_labels(panels) -> list[str]:
    """The line-style labels (subspaces), in panel order, each once."""
    return list(dict.fromkeys(label for _, _, entries in panels for _, label in entries if label is not None))
