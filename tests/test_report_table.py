"""Several models, one comparison (issue 18, acceptance 4): ``recperc-report --model_name_or_path A B C`` and
``recperc-report-table`` give one table (report.md + comparison.csv) and one figure."""

import csv
import json
import shutil
from pathlib import Path

import pytest
import torch
from test_report import _build

from hf_recperc.commands.report import main as report_main
from hf_recperc.commands.report_table import main as table_main
from hf_recperc.report.table import BLANK, comparison_figure, load_reports

pytestmark = pytest.mark.usefixtures("one_thread")

DATA = ["--dataset_name", "digits", "--max_train_samples", "200", "--max_eval_samples", "100"]
SUBSPACES = ["top:0.9", "bottom:0.2", "all"]


def _ours(path: Path) -> str:
    """One of our models: a conv autoencoder built from its config (random weights), saved with its processor."""
    from hf_recperc import RecPercAEConfig, RecPercAEModel

    torch.manual_seed(0)
    config = RecPercAEConfig(encoder="conv", image_size=8, num_channels=1, latent_dim=8, depth=2, width=4)
    RecPercAEModel(config).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def three_models(tmp_path_factory):
    root = tmp_path_factory.mktemp("three")
    return [_ours(root / "ours_ae"), _build("vit", root / "vit"), _build("timm", root / "timm_resnet")]


@pytest.fixture(scope="module")
def compared(three_models, tmp_path_factory):
    """One command over the three saved models."""
    out = tmp_path_factory.mktemp("compared") / "out"
    argv = ["--model_name_or_path", *three_models, "--layers", "all", "--subspaces", *SUBSPACES, *DATA]
    assert report_main([*argv, "--output_dir", str(out)]) == 0
    return out


def test_three_saved_models_give_one_table_and_one_figure(compared):
    """Comparison (acceptance 4): ours, a transformers ViT and a timm net in one command: a report each in its own
    subfolder, one table with a row per model x layer/pooling, one figure with a colour per model."""
    assert sorted(p.name for p in compared.iterdir() if not p.name.startswith(".")) == [
        "accuracy_per_layer.png", "comparison.csv", "ours_ae", "report.md", "timm_resnet", "vit",
    ]  # fmt: skip
    reports = {
        name: json.loads((compared / name / "report.json").read_text())
        for name in ("ours_ae", "vit", "timm_resnet")
    }
    rows = list(csv.DictReader((compared / "comparison.csv").open()))
    expected = [(name, feature) for name, report in reports.items() for feature in report["features"]]
    assert [(row["model"], f"layer_{row['layer']}/{row['pooling']}") for row in rows] == expected
    assert {row["model"] for row in rows} == {"ours_ae", "vit", "timm_resnet"}
    for row in rows:
        values = reports[row["model"]]["features"][f"layer_{row['layer']}/{row['pooling']}"]
        assert float(row["acc top:0.9"]) == values["accuracy"]["top:0.9"]
        assert float(row["kNN acc"]) == values["knn_accuracy"]
        assert float(row["eff. rank"]) == values["spectrum"]["effective_rank"]
        assert (row["dataset"], row["num_train"], row["knn_k"]) == ("digits", "200", "20")
    table = (compared / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| model"))
    assert (
        all(f"acc {spec}" in header for spec in SUBSPACES) and "kNN acc" in header and "eff. rank" in header
    )
    assert sum(line.startswith("| ours_ae |") for line in table.splitlines()) == len(
        reports["ours_ae"]["features"]
    )

    figure = comparison_figure(load_reports([compared / name for name in ("ours_ae", "vit", "timm_resnet")]))
    axis = figure.axes[0]
    drawn = {line.get_gid().split("|")[0]: line.get_color() for line in axis.get_lines() if line.get_gid()}
    assert set(drawn) == {"ours_ae", "vit", "timm_resnet"} and len(set(drawn.values())) == 3  # a colour each
    styles = {
        line.get_gid().split("|")[1]: line.get_linestyle() for line in axis.get_lines() if line.get_gid()
    }
    assert styles == {"top:0.9": "-", "bottom:0.2": "--", "all": ":"}
    legends = figure.legends
    texts = sorted(text.get_text() for legend in legends for text in legend.get_texts())
    assert {"ours_ae (mean)", "vit (cls)", "timm_resnet (mean)", *SUBSPACES} <= set(texts), texts
    figure.draw_without_rendering()  # lays out: the legends sit right of the axes, inside the figure
    right, width = axis.get_window_extent().x1, figure.bbox.width
    assert all(
        right < legend.get_window_extent().x0 < legend.get_window_extent().x1 <= width for legend in legends
    )


def test_the_table_command_takes_report_files_and_folders(compared, tmp_path, capsys):
    """Comparison: ``recperc-report-table`` over a report.json file and report folders gives the same table."""
    out = tmp_path / "table"
    argv = [str(compared / "ours_ae" / "report.json"), str(compared / "vit"), str(compared / "timm_resnet")]
    assert table_main([*argv, "--output_dir", str(out)]) == 0
    assert (out / "comparison.csv").read_text() == (compared / "comparison.csv").read_text()
    assert "comparison of 3 reports" in capsys.readouterr().out


def test_reports_with_other_subspaces_share_the_union_of_columns(compared, tmp_path):
    """Comparison: a report that did not measure a subspace shows "—" there, and a footnote says so."""
    other = tmp_path / "other"
    other.mkdir()
    report = json.loads((compared / "vit" / "report.json").read_text())
    report["model"]["name_or_path"] = "vit_first3"
    report["subspaces"] = ["top:0.9", "first:3"]
    for values in report["features"].values():
        values["accuracy"] = {"top:0.9": values["accuracy"]["top:0.9"], "first:3": 0.5}
    (other / "report.json").write_text(json.dumps(report))
    out = tmp_path / "table"
    assert table_main([str(compared / "ours_ae"), str(other), "--output_dir", str(out)]) == 0
    table = (out / "report.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| model"))
    assert [c.strip() for c in header.strip("|").split("|")][3:7] == [
        "acc top:0.9", "acc bottom:0.2", "acc all", "acc first:3",
    ]  # fmt: skip
    vit_rows = [line.split("|")[1:-1] for line in table if line.startswith("| vit_first3 |")]
    ours_rows = [line.split("|")[1:-1] for line in table if line.startswith("| ours_ae |")]
    assert all(r[4].strip() == BLANK and r[5].strip() == BLANK and r[6].strip() == "0.5000" for r in vit_rows)
    assert all(r[6].strip() == BLANK for r in ours_rows)
    assert f"{BLANK}: vit_first3's report did not measure bottom:0.2, all" in "\n".join(table)
    assert f"{BLANK}: ours_ae's report did not measure first:3" in "\n".join(table)
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert {row["acc first:3"] for row in rows if row["model"] == "ours_ae"} == {""}


def test_a_comparison_with_a_cache_runs_the_second_time_without_loading(three_models, tmp_path, monkeypatch):
    """Comparison + feature cache: the second comparison of the same models with other k reads every model's
    features from the cache."""
    import hf_recperc.report.run as report_run

    models = [three_models[0], three_models[1]]
    argv = [
        "--model_name_or_path",
        *models,
        "--layers",
        "all",
        *DATA,
        "--feature_cache",
        str(tmp_path / "cache"),
    ]
    assert report_main([*argv, "--output_dir", str(tmp_path / "a")]) == 0

    def refuse(*args, **kwargs):
        raise AssertionError("model constructed")

    monkeypatch.setattr(report_run, "load_backbone", refuse)
    assert report_main([*argv, "--knn_k", "5", "--output_dir", str(tmp_path / "b")]) == 0
    rows = list(csv.DictReader((tmp_path / "b" / "comparison.csv").open()))
    assert {row["knn_k"] for row in rows} == {"5"} and {row["model"] for row in rows} == {"ours_ae", "vit"}
    shutil.rmtree(tmp_path / "cache")
