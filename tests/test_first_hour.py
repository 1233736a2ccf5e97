"""The first hour of a new user: a default run that is mostly training, a second identical run refused at once,
figures that say something (read back through their matplotlib objects), a card that explains itself."""

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from hf_recperc.cards import render_model_card
from hf_recperc.experiment_plots import load_run, runs_figure
from hf_recperc.monitors import EVAL, TRAIN, LayerProbeMonitor, MonitorBatch, accuracy_per_layer_figure
from hf_recperc.training import parse_args, train
from hf_recperc.training.figures import history_figures

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "32", "--max_steps", "5", "--eval_steps", "1", "--logging_steps", "5",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    env.pop("RECPERC_TRACEBACK", None)
    return env


# ------------------------------------------------------------------------------------- a run, then the same again


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A tiny run with TensorBoard: 5 evaluations, tracker figures every 2nd."""
    output_dir = tmp_path_factory.mktemp("first_hour") / "run"
    argv = ["--output_dir", str(output_dir), *TINY, "--tracker_figures_every", "2"]
    train(*parse_args(argv))
    return output_dir, argv


def test_tracker_figures_come_every_nth_evaluation_and_at_the_end(finished_run):
    """First hour 2: the monitors' figures (drawn and encoded as TensorBoard images at each of the default run's
    30 evaluations, 69% of the job) go to the tracker every --tracker_figures_every evaluations and once at the end;
    the scalars still come at every evaluation."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    output_dir, _ = finished_run
    for path in sorted((output_dir / "logs").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0}).Reload()
        if events.Tags()["images"]:
            break
    assert [e.step for e in events.Scalars("eval/knn/accuracy")] == [1, 2, 3, 4, 5]
    assert [e.step for e in events.Images("figures/eigenvalue_spectrum")] == [2, 4, 5]
    assert [e.step for e in events.Images("figures/probe_accuracy")] == [5]  # drawn once, at the end
    assert (output_dir / "eigenvalue_spectrum.png").is_file()


def test_the_same_run_again_is_refused_at_once_in_one_line(finished_run):
    """First hour 5: running the same command twice failed after 42 s (the check came after torch, the data and the
    model); now the second run stops before torch is imported, with one line naming --output_dir and each way
    out, and leaves the first run's files as they were. The time bound is a generous sanity check; the figure is in
    benchmarks/default_run.py."""
    output_dir, argv = finished_run
    before = {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()}
    code = (
        "import sys\n"
        "from hf_recperc.commands.pretrain import main\n"
        f"code = main({argv!r})\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
        "sys.exit(code)\n"
    )
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", code], env=_env(), capture_output=True, text=True, timeout=120
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: output_dir: "), done.stderr
    for way_out in ("--resume_from_checkpoint latest", "--overwrite_output_dir", "--output_dir"):
        assert way_out in lines[0]
    assert "torch imported: False" in done.stdout
    assert seconds < 30, seconds
    assert {p.name: p.stat().st_mtime_ns for p in output_dir.iterdir()} == before


def test_the_log_and_the_card_give_one_duration(tmp_path, caplog):
    """First hour 8: the card said 45 s of training and the log 49.9 s; the log's last line now quotes the card's
    figure (results.json run.runtime_seconds) and says what the total adds."""
    output_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="hf_recperc.training"):
        results = train(*parse_args(["--output_dir", str(output_dir), *TINY, "--report_to", "none"]))
    seconds = results["run"]["runtime_seconds"]
    card = (output_dir / "README.md").read_text()
    assert f"| training time | {seconds:.1f} s on cpu (until publishing) |" in card
    last = caplog.records[-1].getMessage()
    assert last.startswith("time: ") and f"the model card's training time, {seconds:.1f} s" in last


# -------------------------------------------------------------------------------------------------------- figures


def _layer_monitor(layers):
    generator = torch.Generator().manual_seed(0)
    monitor = LayerProbeMonitor(layers, poolings=["mean"], subspaces=["top:0.9", "bottom:0.2", "all"])
    for split, rows in ((TRAIN, 200), (EVAL, 60)):
        labels = torch.arange(rows) % 3
        features = {
            f"layer_{i}/mean": torch.randn(rows, 6, generator=generator) + labels[:, None] for i in layers
        }
        monitor.update(MonitorBatch(split, labels=labels, features=features))
    monitor.all_reduce()
    monitor.compute()
    return monitor


def _legend_labels(axis) -> list[str]:
    legend = axis.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def test_one_layer_draws_no_per_layer_accuracy_and_says_so(caplog):
    """First hour 7: the run's accuracy_per_layer.png plotted one x point ("per layer" with one layer) and its
    eigenvalue_spectrum_per_layer.png had one unlabelled line and no legend. Now the one-point figure is not drawn
    (the log says so, once) and every spectrum line is named in a legend."""
    monitor = _layer_monitor([2])
    with caplog.at_level(logging.INFO, logger="hf_recperc.monitors.layers"):
        figures = monitor.figures()
        monitor.figures()
    assert set(figures) == {"eigenvalue_spectrum_per_layer"}
    notes = [r.getMessage() for r in caplog.records if "accuracy_per_layer.png not drawn" in r.getMessage()]
    assert len(notes) == 1 and "--probe_layers all" in notes[0]
    (axis,) = figures["eigenvalue_spectrum_per_layer"].axes
    assert _legend_labels(axis) == ["layer 2, mean-pooled"] and len(axis.get_lines()) == 1


def test_per_layer_accuracy_has_one_legend_entry_per_visible_line():
    """First hour 7: with two layers the figure is drawn: one legend entry per line, every line with markers (a
    subspace as accurate as "all" lies on it: "all" is drawn underneath, wide and pale), the subspaces in order."""
    figure = _layer_monitor([1, 2]).figures()["accuracy_per_layer"]
    (axis,) = figure.axes
    lines = axis.get_lines()
    assert _legend_labels(axis) == ["top:0.9", "bottom:0.2", "all"] == [line.get_label() for line in lines]
    assert all(list(line.get_xdata()) == [1, 2] and line.get_marker() not in (None, "None") for line in lines)
    by_label = {line.get_label(): line for line in lines}
    assert by_label["all"].get_zorder() < min(by_label[s].get_zorder() for s in ("top:0.9", "bottom:0.2"))


def test_a_subspace_missing_at_some_layers_is_named_not_dropped():
    """First hour 7: the report's ViT figure had 6 legend entries for 3 visible lines, NaN values dropped silently;
    a gap is now named in its line's legend entry, the two poolings differ by line style and chance is drawn."""
    nan = float("nan")
    accuracy = {
        ("cls", "top:0.9"): {1: 0.2, 2: 0.3, 3: 0.3},
        ("cls", "bottom:0.2"): {1: 0.8, 2: nan, 3: 0.8},
        ("mean", "top:0.9"): {1: 0.25, 2: 0.3, 3: 0.35},
        ("mean", "bottom:0.2"): {1: 0.7, 2: 0.75, 3: 0.8},
    }
    (axis,) = accuracy_per_layer_figure(accuracy, chance=0.1).axes
    labels = _legend_labels(axis)
    assert labels == [
        "top:0.9, cls",
        "bottom:0.2, cls (not measured at layer 2)",
        "top:0.9, mean",
        "bottom:0.2, mean",
        "chance (0.1)",
    ]
    styles = {line.get_label(): line.get_linestyle() for line in axis.get_lines()}
    assert styles["top:0.9, cls"] != styles["top:0.9, mean"]
    chance = [line for line in axis.get_lines() if line.get_label().startswith("chance")]
    assert list(chance[0].get_ydata()) == [0.1, 0.1]
    assert accuracy_per_layer_figure({("cls", "all"): {4: 0.5}}) is None  # one point: not drawn


def test_the_report_draws_chance_on_accuracy_vs_components():
    """First hour 7: the report's accuracy-vs-components curves had no chance line."""
    from hf_recperc.report.run import _figures

    eigenvalues = SimpleNamespace(probe=SimpleNamespace(eigenvalues_=torch.tensor([3.0, 2.0, 1.0])))
    metrics = {f"layers/layer_{i}/cls/accuracy/{s}": 0.5 for i in (1, 2) for s in ("top:0.9", "all")}
    report = {
        "layers": [1, 2], "metrics": metrics, "poolings": ["cls"], "subspaces": ["top:0.9", "all"],
        "data": {"num_labels": 10},
        "accuracy_curves": {"layer_2/cls": {"k": [1, 2, 3], "top": [0.3, 0.5, 0.6], "bottom": [0.1, 0.2, 0.6]}},
    }  # fmt: skip
    figures = _figures(report, {"layer_1/cls": eigenvalues, "layer_2/cls": eigenvalues}, {})
    (axis,) = figures["accuracy_curve_layer_2_cls"].axes
    assert _legend_labels(axis) == ["top K components", "bottom K components", "chance (1/10)"]
    assert list(axis.get_lines()[-1].get_ydata()) == [0.1, 0.1]
    assert "chance (0.1)" in _legend_labels(figures["accuracy_per_layer"].axes[0])


def test_one_evaluation_draws_no_curves_over_training():
    """First hour 7: a figure with one point is not drawn (a run with one evaluation has no curve over training)."""
    record = {"step": 2, "epoch": 1.0, "eval/online_probe_accuracy": 0.5}
    assert history_figures([record], ["all"]) == {}
    assert set(history_figures([record, {**record, "step": 4}], ["all"])) == {"probe_accuracy"}


def test_compare_runs_legend_stays_off_the_panels(tmp_path):
    """First hour 7: compare_runs drew a legend in every panel whose long labels (run, guidance, corruption, per
    subspace) spilled over the axes; now one legend below the panels, runs by colour and subspaces by line style."""
    runs = []
    for name, corruption in (("dae_gaussian", "gaussian:0.3"), ("dae_mask", "mask:0.75:4"), ("ae", "none")):
        run = tmp_path / name
        run.mkdir()
        records = [
            {"step": 10 * e, "epoch": float(e), "eval/reconstruction_mse": 1 / e,
             "eval/subspace_probe/accuracy/top:0.9": 0.3, "eval/subspace_probe/accuracy/all": 0.4 + e / 100}
            for e in range(1, 4)
        ]  # fmt: skip
        (run / "history.json").write_text(json.dumps(records))
        (run / "results.json").write_text(json.dumps({"args": {"guidance": 0.01, "corruption": corruption}}))
        runs.append(load_run(run))
    figure = runs_figure(runs, title="E4")
    assert all(axis.get_legend() is None for axis in figure.axes)
    (legend,) = figure.legends
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels == [run.label for run in runs] + ["all", "top:0.9"]
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(figure).get_renderer()
    box = legend.get_window_extent(renderer)
    assert figure.bbox.contains(box.x0, box.y0) and figure.bbox.contains(box.x1, box.y1)
    for axis in figure.axes:
        if axis.get_visible():
            assert not box.overlaps(axis.get_tightbbox(renderer)), axis.get_title()


# ----------------------------------------------------------------------------------------------------------- card


def test_the_card_links_no_paper_under_the_project_name_and_explains_layer_names(monkeypatch):
    """First hour 8: the card's link text "hf_recperc" pointed to the paper, and rows such as layer_2/mean were not
    explained. The name links the project's own URL ([project.urls] Repository/Homepage/...) or nothing; the paper
    is cited as itself; one sentence says what a layer row is."""
    from hf_recperc import cards

    sys.path.insert(0, str(REPO / "tests"))
    from test_cards import make_results

    results = make_results()
    results["eval/layers/layer_2/mean/accuracy/all"] = 0.9
    monkeypatch.setattr(cards, "project_url", lambda: None)
    text = str(render_model_card(results))
    assert (
        "[hf_recperc](https://arxiv.org" not in text
        and "[arXiv 2402.11337](https://arxiv.org/abs/2402.11337)" in text
    )
    assert "`layer_2/mean` is the output of encoder block 2" in text
    monkeypatch.setattr(cards, "project_url", lambda: "https://example.org/hf_recperc")
    assert "[hf_recperc](https://example.org/hf_recperc)" in str(render_model_card(results))


def test_report_default_output_is_git_ignored():
    """First hour 5: the report wrote an untracked perception_report/ into the clone; its default is now under the
    git-ignored outputs/."""
    from hf_recperc.commands.report import ReportArguments

    default = ReportArguments.__dataclass_fields__["output_dir"].default
    assert default.startswith("outputs/")
    for path in (f"{default}/report.json", "perception_report/report.json"):  # the old default too
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO, capture_output=True)
        assert ignored.returncode == 0, path


def test_readme_models_snippet_runs_as_written(tmp_path, monkeypatch):
    """First hour 4: the README's Models snippet runs as printed (it used ``images`` it never defined and no torch
    import) and writes under ``outputs/`` of the current folder, a git-ignored path."""
    readme = (REPO / "README.md").read_text()
    start = readme.index("## Models:")
    block = readme[readme.index("```python\n", start) + len("```python\n") :]
    snippet = block[: block.index("```")]
    monkeypatch.chdir(tmp_path)
    exec(compile(snippet, "README Models snippet", "exec"), {"__name__": "readme"})
    assert (tmp_path / "outputs" / "my-dae" / "model.safetensors").is_file()


def test_a_hub_warning_is_printed_once_and_repeated_retries_once():
    """First hour 8 (quiet): huggingface_hub's own handler and ours printed each Hub warning twice, and each of
    its five retries of an unreachable Hub came out as two more lines."""
    script = (
        "import logging\n"
        "from hf_recperc.commands import configure_logging\n"
        "configure_logging(logging.INFO)\n"
        "from huggingface_hub.utils import logging as hub_logging\n"  # the library adds its handler on import
        "http = hub_logging.get_logger('huggingface_hub.utils._http')\n"
        "http.warning('timeout thrown while requesting HEAD https://hub/x')\n"
        "for attempt in range(1, 6):\n"
        "    http.warning(f'Retrying in {2 ** attempt}s [Retry {attempt}/5].')\n"
        "    http.warning('timeout thrown while requesting HEAD https://hub/x')\n"
        "logging.getLogger('hf_recperc.training').warning('our own line')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    lines = done.stderr.splitlines()
    assert sum("thrown while requesting" in line for line in lines) == 1, done.stderr
    assert sum("Retrying in" in line for line in lines) == 1, done.stderr
    assert sum("our own line" in line for line in lines) == 1, done.stderr
