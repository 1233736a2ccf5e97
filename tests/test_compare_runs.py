"""Tests of the history.json reader and the run-comparison figure (E3 / E4), on synthetic runs."""

import json
from pathlib import Path

import numpy as np
import pytest

from hf_recperc.commands import compare_runs
from hf_recperc.experiment_plots import load_run, plot_accuracy_vs_variance, plot_runs

BANDS = ["0.00-0.50", "0.50-0.80", "0.80-0.95", "0.95-1.00"]


def _write_run(root: Path, name: str, guidance, epochs=5, with_results=True, subspaces=True, shuffle=False):
    """A run dir in the format scripts/pretrain.py writes: history.json (+ results.json)."""
    run = root / name
    run.mkdir(parents=True)
    records = []
    for epoch in range(1, epochs + 1):
        record = {
            "step": 100 * epoch,
            "epoch": float(epoch),
            "eval/reconstruction_mse": 0.5 / epoch,
            "eval/online_probe_accuracy": 0.2 + 0.05 * epoch * (1 + 10 * (guidance or 0)),
        }
        if subspaces:
            record["eval/subspace_probe/accuracy/top:0.9"] = 0.3 + 0.01 * epoch
            record["eval/subspace_probe/accuracy/bottom:0.2"] = 0.2 + 0.02 * epoch
            record["eval/subspace_probe/accuracy/all"] = 0.35 + 0.01 * epoch
        for index, band in enumerate(BANDS):
            record[f"eval/band_error/{band}"] = float(np.exp(-epoch / (index + 1)))
        records.append(record)
    if shuffle:
        records = records[::-1]
    (run / "history.json").write_text(json.dumps(records))
    if with_results:
        (run / "results.json").write_text(json.dumps({"args": {"guidance": guidance, "corruption": "none"}}))
    return run


def test_load_run_reads_history_and_labels(tmp_path):
    run = load_run(_write_run(tmp_path, "g001", 0.01, shuffle=True))
    assert run.label == "g001 (guidance=0.01, corruption=none)"
    assert [r["step"] for r in run.records] == [100, 200, 300, 400, 500]  # sorted by step
    epochs, values = run.series("eval/reconstruction_mse")
    np.testing.assert_allclose(epochs, [1, 2, 3, 4, 5])
    np.testing.assert_allclose(values, [0.5 / e for e in range(1, 6)])
    assert run.series("eval/missing")[0].size == 0


def test_load_run_without_results_uses_dir_name(tmp_path):
    assert load_run(_write_run(tmp_path, "plain", 0.0, with_results=False)).label == "plain"


def test_load_run_errors_name_the_directory(tmp_path):
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run"):
        load_run(tmp_path / "empty_run")
    bad = tmp_path / "bad_run"
    bad.mkdir()
    (bad / "history.json").write_text(json.dumps([{"epoch": 1.0}]))
    with pytest.raises(ValueError, match="bad_run.*lacks 'step'"):
        load_run(bad)
    (bad / "history.json").write_text(json.dumps({"step": 1}))
    with pytest.raises(ValueError, match="expected a JSON list"):
        load_run(bad)


def test_compare_runs_script_two_runs_one_figure(tmp_path):
    runs = [_write_run(tmp_path, "g0", 0.0), _write_run(tmp_path, "g001", 0.01, subspaces=False)]
    output = tmp_path / "figures" / "compare.png"
    figure = compare_runs.run([str(runs[0]), str(runs[1]), "--output", str(output), "--title", "E3"])
    assert Path(figure) == output and output.stat().st_size > 5000
    from matplotlib.image import imread

    assert imread(output).ndim == 3


def test_plot_runs_draws_one_panel_per_metric(tmp_path, monkeypatch):
    import matplotlib.figure

    saved = {}
    original = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        saved["titles"] = [axis.get_title() for axis in fig.axes if axis.get_visible()]
        saved["lines"] = {axis.get_title(): len(axis.get_lines()) for axis in fig.axes if axis.get_visible()}
        return original(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    runs = [_write_run(tmp_path, "a", 0.0), _write_run(tmp_path, "b", 0.01)]
    plot_runs(runs, tmp_path / "out.png")
    expected = ["reconstruction MSE", "online probe accuracy", "subspace probe accuracy"]
    expected += [f"band error, variance {band}" for band in BANDS]
    assert saved["titles"] == expected
    assert saved["lines"]["subspace probe accuracy"] == 2 * 3  # runs x subspaces
    assert saved["lines"]["reconstruction MSE"] == 2


def test_plot_runs_skips_missing_keys_and_rejects_no_metrics(tmp_path):
    run = tmp_path / "only_mse"
    run.mkdir()
    (run / "history.json").write_text(json.dumps([{"step": 1, "epoch": 0.5, "eval/reconstruction_mse": 0.2}]))
    assert plot_runs([run], tmp_path / "mse.png").exists()
    other = tmp_path / "nothing"
    other.mkdir()
    (other / "history.json").write_text(json.dumps([{"step": 1, "epoch": 0.5, "train/loss": 0.2}]))
    with pytest.raises(ValueError, match="no known metric"):
        plot_runs([other], tmp_path / "none.png")
    with pytest.raises(ValueError, match="at least one"):
        plot_runs([], tmp_path / "none.png")


def test_plot_accuracy_vs_variance(tmp_path):
    records = [
        {"kind": "top", "explained_variance": 0.9, "accuracy": 0.45, "dims": 64},
        {"kind": "bottom", "explained_variance": 0.2, "accuracy": 0.55, "dims": 3055},
    ]
    assert plot_accuracy_vs_variance(records, tmp_path / "e2.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="records"):
        plot_accuracy_vs_variance([], tmp_path / "e2.png")
