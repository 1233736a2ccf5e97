"""Several perception reports, one comparison: a table (``report.md`` + ``comparison.csv``) and one figure.

``recperc-report-table REPORT_JSON_OR_DIR [...] --output_dir DIR`` (and ``recperc-report --model_name_or_path A B
C``) read the ``report.json`` of each model (:func:`load_report`), make one row per model x feature (layer/pooling)
with the accuracy of every subspace, kNN, effective rank and the settings the numbers were measured with
(:func:`comparison_rows`), and draw accuracy per layer with one colour per model and one line style per kind of
subspace (top / bottom / all; :func:`comparison_figure`). Reports measured with different subspaces share the
union of the columns: a subspace a report did not measure is shown as "—", and a footnote says which.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..publish import OutputDirectory, Outputs, write_text
from ..results import KNN_ACCURACY, REPORT_FIELDS

__all__ = [
    "TABLE_OUTPUTS",
    "LoadedReport",
    "comparison_figure",
    "comparison_markdown",
    "comparison_rows",
    "load_report",
    "load_reports",
    "write_comparison",
]

BLANK = "—"
REPORT_FILE = "report.json"
# What a report.json written by recperc-report holds (hf_recperc.report.run.perception_report), and what the
# comparison reads of it.
REQUIRED_KEYS = ("features", "layers", "poolings", "subspaces", "model", "data", "settings")
TABLE_OUTPUTS = Outputs(
    command="report_table", names=frozenset({"report.md", "comparison.csv", "accuracy_per_layer.png"})
)
SETTINGS = ("dataset", "num_train", "num_eval", "ridge", "knn_k", "mixed_precision", "image_size")
_SUBSPACE_LINES = {"top": "-", "bottom": "--", "all": ":"}  # other kinds (first:k, last:k): dash-dot


@dataclass
class LoadedReport:
    """One model's ``report.json``: where it was read, the label it gets in the table, and its content."""

    path: Path
    label: str
    report: dict


def _report_path(given: str | os.PathLike) -> Path:
    path = Path(given).expanduser()
    if path.is_dir():
        path = path / REPORT_FILE
        if not path.is_file():
            raise ValueError(
                f"reports: {str(given)!r} holds no {REPORT_FILE}; expected a report.json written by recperc-report "
                "or the folder holding one"
            )
    elif not path.is_file():
        raise ValueError(f"reports: {str(given)!r} does not exist; expected a report.json or its folder")
    return path


def load_report(given: str | os.PathLike) -> dict:
    """Read and check one ``report.json`` (or the folder holding one). Raises ``ValueError`` naming ``reports``."""
    path = _report_path(given)
    try:
        report = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"reports: {str(path)!r} is not readable JSON ({type(err).__name__})") from None
    missing = [key for key in REQUIRED_KEYS if not isinstance(report, dict) or key not in report]
    if missing:
        raise ValueError(
            f"reports: {str(path)!r} is not a report.json written by recperc-report (missing "
            f"{', '.join(missing)}); expected the keys {', '.join(REQUIRED_KEYS)}"
        )
    features = report["features"]
    if not isinstance(features, dict) or not all(
        isinstance(name, str) and name.count("/") == 1 and isinstance(row, dict)
        for name, row in features.items()
    ):
        raise ValueError(
            f"reports: {str(path)!r} has an unknown 'features' layout; expected {{'layer_<i>/<pooling>': {{...}}}}"
        )
    return report


def _labels(reports: Sequence[dict]) -> list[str]:
    """Short model names (a path's last part), made unique; the full name where the short ones collide."""
    names = [str(report["model"].get("name_or_path", "model")) for report in reports]
    short = [Path(name).name or name for name in names]
    labels = short if len(set(short)) == len(short) else names
    seen: dict[str, int] = {}
    unique = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        unique.append(label if seen[label] == 1 else f"{label} ({seen[label]})")
    return unique


def load_reports(given: Sequence[str | os.PathLike]) -> list[LoadedReport]:
    """Every report, all read and checked before anything is written."""
    if not given:
        raise ValueError("reports: expected at least one report.json or folder holding one, got none")
    reports = [load_report(path) for path in given]
    paths = [_report_path(path) for path in given]
    return [LoadedReport(p, label, r) for p, label, r in zip(paths, _labels(reports), reports, strict=True)]


def subspace_columns(reports: Sequence[LoadedReport]) -> tuple[list[str], dict[str, list[str]]]:
    """The union of the reports' subspaces (in order of first appearance), and per label the ones it lacks."""
    columns = list(dict.fromkeys(spec for loaded in reports for spec in loaded.report["subspaces"]))
    missing = {
        loaded.label: [spec for spec in columns if spec not in loaded.report["subspaces"]]
        for loaded in reports
    }
    return columns, {label: specs for label, specs in missing.items() if specs}


def _settings(report: dict) -> dict:
    data, settings = report["data"], report["settings"]
    return {
        "dataset": data.get("source"),
        "num_train": data.get("num_train"),
        "num_eval": data.get("num_eval"),
        **{name: settings.get(name) for name in SETTINGS[3:]},
        "image_size": settings.get("image_size") or "processor's",  # None: each model's processor size
    }


def comparison_rows(reports: Sequence[LoadedReport]) -> tuple[list[str], list[dict]]:
    """``(columns, rows)``: one row per model x feature; a value not measured is ``None``.

    Columns: ``model``, ``layer``, ``pooling``, ``acc <subspace>`` for the union of subspaces, ``kNN acc``,
    ``eff. rank``, then :data:`SETTINGS`."""
    specs, _ = subspace_columns(reports)
    columns = [
        "model",
        "layer",
        "pooling",
        *(f"acc {spec}" for spec in specs),
        "kNN acc",
        "eff. rank",
        *SETTINGS,
    ]
    rows = []
    for loaded in reports:
        settings = _settings(loaded.report)
        for feature, values in loaded.report["features"].items():
            layer, pooling = feature.removeprefix("layer_").split("/")
            accuracy = values.get("accuracy", {})
            row = {
                "model": loaded.label,
                "layer": int(layer) if layer.isdigit() else layer,
                "pooling": pooling,
            }
            row.update({f"acc {spec}": accuracy.get(spec) for spec in specs})
            row["kNN acc"] = values.get(REPORT_FIELDS[KNN_ACCURACY])
            row["eff. rank"] = values.get("spectrum", {}).get("effective_rank")
            rows.append({**row, **settings})
    return columns, rows


def _cell(value, column: str) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return BLANK
    if column.startswith("acc ") or column == "kNN acc":
        return f"{value:.4f}"
    if column == "eff. rank":
        return f"{value:.1f}"
    return str(value)


def comparison_markdown(reports: Sequence[LoadedReport]) -> str:
    """``report.md``: the table and its footnotes (subspaces some reports did not measure, different data)."""
    columns, rows = comparison_rows(reports)
    _, missing = subspace_columns(reports)
    lines = [
        "# Perception reports compared",
        "",
        "Subspace-restricted ridge probe accuracy on the evaluation rows (arXiv 2402.11337, section 2: top/bottom = "
        "leading/trailing PCA components of the features holding that share of the variance), kNN accuracy and "
        "effective rank, one row per model x layer/pooling.",
        "",
        "| " + " | ".join(columns) + " |",
        "|" + "---|" * len(columns),
    ]
    lines += ["| " + " | ".join(_cell(row[column], column) for column in columns) + " |" for row in rows]
    lines.append("")
    for label, specs in missing.items():
        lines.append(
            f"{BLANK}: {label}'s report did not measure {', '.join(specs)} (or the value was not finite)."
        )
    datasets = {(row["dataset"], row["num_train"], row["num_eval"]) for row in rows}
    if len(datasets) > 1:
        lines.append("Note: these reports were measured on different data (see the dataset and row columns).")
    lines += ["", "Reports: " + ", ".join(f"{loaded.label}: `{loaded.path}`" for loaded in reports), ""]
    return "\n".join(lines)


def comparison_csv(reports: Sequence[LoadedReport]) -> str:
    """``comparison.csv``: the same rows, values unrounded, blank where not measured."""
    columns, rows = comparison_rows(reports)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: "" if row[column] is None else row[column] for column in columns})
    return buffer.getvalue()


def _line_style(spec: str) -> str:
    return _SUBSPACE_LINES.get(spec.split(":")[0], "-.")


def comparison_figure(reports: Sequence[LoadedReport]):
    """Accuracy per layer: one colour per model (its first pooling), one line style per kind of subspace (top solid,
    bottom dashed, all dotted); two figure legends right of the axes (models, subspaces). Each line's ``gid`` is
    ``"<model label>|<subspace>"``. Returns a :class:`~matplotlib.figure.Figure`."""
    from matplotlib.lines import Line2D  # noqa: PLC0415  (matplotlib only when drawing)

    from ..plotting import new_figure  # noqa: PLC0415

    figure, axis = new_figure((9.0, 4.5))
    figure.set_layout_engine("constrained")  # makes room for the legends outside the axes
    specs, _ = subspace_columns(reports)
    colors = [f"C{i % 10}" for i in range(len(reports))]
    model_handles = []
    for loaded, color in zip(reports, colors, strict=True):
        report = loaded.report
        pooling = report["poolings"][0]
        for spec in report["subspaces"]:
            points = sorted(
                (int(feature.split("/")[0].removeprefix("layer_")), values["accuracy"][spec])
                for feature, values in report["features"].items()
                if feature.endswith(f"/{pooling}") and spec in values.get("accuracy", {})
            )
            if points:
                axis.plot(
                    [p[0] for p in points], [p[1] for p in points], color=color, linestyle=_line_style(spec),
                    marker="o", markersize=4, linewidth=1.6, gid=f"{loaded.label}|{spec}",
                )  # fmt: skip
        model_handles.append(Line2D([], [], color=color, marker="o", label=f"{loaded.label} ({pooling})"))
    num_labels = {report.report["data"].get("num_labels") for report in reports}
    if len(num_labels) == 1 and (labels := num_labels.pop()):
        chance = dict(color="0.6", linestyle=(0, (1, 4)), linewidth=1.0)  # sparser than the "all" lines
        axis.axhline(1.0 / labels, **chance)
        model_handles.append(Line2D([], [], **chance, label=f"chance (1/{labels})"))
    style_handles = [Line2D([], [], color="0.2", linestyle=_line_style(spec), label=spec) for spec in specs]
    # figure legends "outside": the constrained layout shrinks the axes to make room for them
    figure.legend(handles=model_handles, title="model", loc="outside right upper", fontsize=8)
    figure.legend(handles=style_handles, title="subspace", loc="outside right lower", fontsize=8)
    axis.set(
        xlabel="layer", ylabel="subspace probe accuracy (validation)", title="Perception per layer, by model"
    )
    axis.xaxis.get_major_locator().set_params(integer=True)
    axis.grid(alpha=0.3)
    return figure


def table_output_dir(output_dir: str | os.PathLike) -> OutputDirectory:
    """The comparison's guarded folder (its own manifest: it can sit beside the models' report folders)."""
    return OutputDirectory(output_dir, TABLE_OUTPUTS)


def write_comparison(reports: Sequence[LoadedReport], output_dir: str | os.PathLike) -> Path:
    """Write ``report.md``, ``comparison.csv`` and ``accuracy_per_layer.png`` into ``output_dir`` as one set."""
    from ..plotting import save_figure  # noqa: PLC0415

    files = {
        "report.md": functools.partial(write_text, text=comparison_markdown(reports)),
        "comparison.csv": functools.partial(write_text, text=comparison_csv(reports)),
        "accuracy_per_layer.png": functools.partial(save_figure, comparison_figure(reports), tight=False),
    }
    return table_output_dir(output_dir).write(files)
