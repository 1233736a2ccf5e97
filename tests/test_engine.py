"""One evaluation engine: a monitor registered in a test reaches every output with no other edit; the trainer and the
perception report run the same runner; result keys and SubspaceProbe state have one home; one model-index builder;
a card states the settings its numbers were measured with; publishing decodes no image."""

import ast
import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_recperc.images import ImageData
from hf_recperc.monitors import (
    EVAL,
    CardRow,
    MonitorBatch,
    MonitorSpec,
    feature_prefix,
    register_monitor,
    runner,
    unregister_monitor,
)
from hf_recperc.report import perception_report
from hf_recperc.report.card import update_model_card
from hf_recperc.report.run import BackboneFeatureSource
from hf_recperc.training import parse_args, train
from hf_recperc.training.evaluation import ModelFeatureSource

PACKAGE = Path(__file__).resolve().parents[1] / "hf_recperc"
TINY = [
    "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "32", "--max_steps", "4", "--eval_steps", "2", "--logging_steps", "2",
]  # fmt: skip


# ------------------------------------------------------------------------------ a monitor written in a test


class MeanNorm:
    """The mean L2 norm of one feature's scored rows."""

    name = "mean_norm"

    def __init__(self, feature: str, prefix: str):
        self.feature, self.features, self.key = feature, (feature,), f"{prefix}mean_norm"

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, batch: MonitorBatch):
        if batch.split == EVAL:
            self.total += float(batch.features[self.feature].float().norm(dim=1).sum())
            self.count += len(batch.labels)

    def all_reduce(self):
        pass

    def compute(self):
        return {self.key: self.total / self.count}

    def figures(self):
        from hf_recperc.plotting import new_figure

        figure, axis = new_figure()
        axis.bar([0], [self.total / self.count])
        return {"mean_norm": figure}


MEAN_NORM = MonitorSpec(
    name="mean_norm",
    build=lambda context: MeanNorm(context.feature, context.prefix or ""),
    keys=("mean_norm",),
    card_rows=(CardRow("mean_norm", "mean feature norm", metric_type="norm", config="mean-norm"),),
    per_feature=True,
    figures=("mean_norm",),
)


@pytest.fixture(scope="module")
def engine_runs(tmp_path_factory):
    """With ``mean_norm`` registered and the runner and the first-image decoder spied on: a tiny training run
    (``--knn_k 5 --knn_temperature 0.2``), then a report on its model with the same monitor and k."""
    root = tmp_path_factory.mktemp("engine")
    calls, decodes = [], []
    real_run, real_shape = runner.run_monitors, ImageData.first_image_shape

    def spy_run(monitors, source, *args, **kwargs):
        calls.append(type(source))
        return real_run(monitors, source, *args, **kwargs)

    def spy_shape(self):
        decodes.append(1)
        return real_shape(self)

    register_monitor(MEAN_NORM)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(runner, "run_monitors", spy_run)
            patch.setattr(ImageData, "first_image_shape", spy_shape)
            argv = ["--output_dir", str(root / "run"), *TINY, "--knn_k", "5", "--knn_temperature", "0.2"]
            argv += ["--monitors", "reconstruction", "subspace", "knn", "spectrum", "mean_norm"]
            results = train(*parse_args(argv))
            trainer_calls, trainer_decodes = list(calls), len(decodes)
            report = perception_report(
                str(root / "run"), "digits", monitors=["subspace", "knn", "spectrum", "mean_norm"], knn_k=5,
                knn_temperature=0.2, output_dir=root / "report", max_train_samples=128, max_eval_samples=32,
                curves=False,
            )  # fmt: skip
            model_dir = root / "model"
            shutil.copytree(root / "run", model_dir, ignore=shutil.ignore_patterns("checkpoints", "logs"))
            report_card = ModelCard.load(update_model_card(model_dir, report))
    finally:
        unregister_monitor(MEAN_NORM.name)
    return {
        "root": root, "results": results, "report": report, "report_card": report_card,
        "trainer_calls": trainer_calls, "report_calls": calls[len(trainer_calls):], "decodes": trainer_decodes,
    }  # fmt: skip


def test_a_registered_monitor_reaches_results_card_tensorboard_and_report(engine_runs):
    """Engine 1: a monitor written in a test (one class, one registration) appears in results.json, the model card
    (table and model-index), TensorBoard (scalars), the run's figures and report.json, with no other edit."""
    run_dir = engine_runs["root"] / "run"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["eval/mean_norm"] > 0 and results["run"]["monitors"][-1] == "mean_norm"
    card = ModelCard.load(run_dir / "README.md")
    assert "mean feature norm" in card.text and (run_dir / "mean_norm.png").is_file()
    entries = {entry.metric_config: entry for entry in card.data.eval_results}
    assert entries["mean-norm"].metric_value == round(results["eval/mean_norm"], 4)
    assert entries["mean-norm"].metric_type == "norm"
    scalars = []
    for path in sorted((run_dir / "logs").rglob("events.out.tfevents.*")):
        events = EventAccumulator(str(path), size_guidance={"scalars": 0}).Reload()
        if "eval/mean_norm" in events.Tags()["scalars"]:
            scalars = events.Scalars("eval/mean_norm")
    assert [event.step for event in scalars] == [2, 4]
    assert scalars[-1].value == pytest.approx(results["eval/mean_norm"], rel=1e-6)
    report = json.loads((engine_runs["root"] / "report" / "report.json").read_text())
    for feature, row in report["features"].items():
        assert report["metrics"][f"{feature_prefix(feature)}mean_norm"] == row["mean_norm"] > 0
    configs = {entry.metric_config for entry in engine_runs["report_card"].data.eval_results}
    assert {f"perception_report/{feature}/mean-norm" for feature in report["features"]} <= configs


def test_the_trainer_and_the_report_run_the_same_runner(engine_runs):
    """Engine 1: one runner (hf_recperc.monitors.runner.run_monitors) feeds the trainer's monitors from the model
    being trained and the report's from a backbone: two FeatureSources, one pass."""
    assert engine_runs["trainer_calls"] == [ModelFeatureSource, ModelFeatureSource]  # two evaluations
    assert engine_runs["report_calls"] == [BackboneFeatureSource]


def test_cards_state_the_k_the_run_used(engine_runs):
    """Engine 2: a run with --knn_k 5 --knn_temperature 0.2 says k=5 and temperature 0.2 on its card (table and
    model-index) and on the report's card entries; never the default k=20."""
    card = ModelCard.load(engine_runs["root"] / "run" / "README.md")
    names = [entry.metric_name for entry in card.data.eval_results]
    assert "kNN accuracy (k=5, cosine, temperature 0.2, majority vote)" in names
    assert "kNN accuracy (k=5, cosine, temperature 0.2): majority vote" in card.text
    report_names = [entry.metric_name for entry in engine_runs["report_card"].data.eval_results]
    assert any(name.startswith("kNN accuracy (k=5, cosine, temperature 0.2") for name in report_names)
    assert not any("k=20" in text for text in [card.text, *names, *report_names])


def test_one_model_index_builder_names_the_data_set_alike(engine_runs):
    """Engine 2: the run's card and the report's card entries come from one builder: the same data set label."""
    run_card = ModelCard.load(engine_runs["root"] / "run" / "README.md")

    def datasets(card):
        return {(e.dataset_type, e.dataset_name, e.dataset_split) for e in card.data.eval_results}

    assert datasets(run_card) == {("digits", "scikit-learn digits (8x8)", "validation")}
    report_entries = [
        e
        for e in engine_runs["report_card"].data.eval_results
        if str(e.metric_config or "").startswith("perception_report/")
    ]
    assert report_entries
    assert {(e.dataset_type, e.dataset_name, e.dataset_split) for e in report_entries} == datasets(run_card)


def test_publishing_decodes_no_image_to_resolve_the_preset(engine_runs):
    """Engine 4: the preset that fits the data is resolved once, at setup (decoding the first image); results.json,
    the card and publishing read the recorded value instead of decoding again."""
    assert engine_runs["decodes"] == 1
    assert engine_runs["results"]["run"]["preset"] == "digits-mlp"  # the recorded value, as before


# ------------------------------------------------------------------------------------- one home per concept


def _string_constants(path: Path):
    """``(line, text)`` of every string constant of a module that is not a docstring (f-string parts included)."""
    tree = ast.parse(path.read_text())
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node.lineno, node.value


# Key levels and flat keys that hf_recperc/results.py owns (statistic names alone, such as "effective_rank", are
# also report.json and card-template field names; their keys, "spectrum/...", are what is checked).
KEY_FRAGMENTS = ("eval/", "subspace_probe/", "band_error/", "knn/", "spectrum/", "layers/")
# ... and the standard protocols' key levels (docs/protocols.md)
KEY_FRAGMENTS += ("ridge_cv/", "linear_grid/", "knn_grid/", "few_shot/", "attentive_probe/")
FLAT_KEYS = {"reconstruction_mse", "online_probe_accuracy", "knn_accuracy", "knn_weighted_accuracy"}
KEY_HOMES = {"results.py", "monitors/registry.py", "monitors/builtin.py"}


def test_no_result_key_literal_outside_the_registry_and_results():
    """Engine 1: result keys are built by hf_recperc/results.py's helpers (and the monitor registry), never spelled
    as string literals in evaluation, cards, monitors or the report."""
    found = [
        f"{path.relative_to(PACKAGE)}:{line}: {text!r}"
        for path in sorted(PACKAGE.rglob("*.py"))
        if str(path.relative_to(PACKAGE)) not in KEY_HOMES
        for line, text in _string_constants(path)
        if text in FLAT_KEYS or any(fragment in text for fragment in KEY_FRAGMENTS)
    ]
    assert not found, "\n".join(found)


def _probe_private_attributes() -> set[str]:
    """The attributes SubspaceProbe keeps as private or fitted state: what probing.py assigns on ``self``."""
    names = set()
    for node in ast.walk(ast.parse((PACKAGE / "probing.py").read_text())):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
            if isinstance(node.ctx, ast.Store) and (node.attr.startswith("_") or node.attr.endswith("_")):
                names.add(node.attr)
    return names


def test_no_private_subspace_probe_state_is_written_outside_probing():
    """Engine 3: torchmetrics.py and streaming.py built probes by writing _class_columns, _stale, moments_ and
    SecondMoments._allocate; SubspaceProbe.from_moments is the public way, and nothing outside probing.py writes a
    probe's private state or allocates moments by hand."""
    private = _probe_private_attributes()
    assert {"_class_columns", "_stale", "moments_"} <= private
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name in ("probing.py", "spectral.py"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and node.attr in private:
                if not (isinstance(node.value, ast.Name) and node.value.id == "self"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node)} = ...")
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                if node.func.attr in ("_allocate", "_remap_columns"):
                    found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {ast.unparse(node.func)}(...)")
    assert not found, "\n".join(found)


def test_from_moments_scores_like_the_probe_it_came_from():
    """Engine 3: SubspaceProbe.from_moments(**probe.statistics()) is the same probe: same scores, bit for bit."""
    import torch

    from hf_recperc.probing import SubspaceProbe

    generator = torch.Generator().manual_seed(0)
    X, y = torch.randn(300, 6, generator=generator), torch.arange(300) % 3
    X[:, 2] += 2 * y
    probe = SubspaceProbe(subspaces=("top:0.5", "all")).partial_fit(X[:200], y[:200])
    rebuilt = SubspaceProbe.from_moments(**probe.statistics(), subspaces=("top:0.5", "all"))
    assert rebuilt.score(X[200:], y[200:]) == probe.score(X[200:], y[200:])
    with pytest.raises(ValueError, match="probe='logistic'"):
        SubspaceProbe.from_moments(**probe.statistics(), probe="logistic")


# ------------------------------------------------------------------------------------- the report's first hour


def test_our_models_report_their_embedding_by_default(engine_runs):
    """First hour 6: a report on one of our models includes the embedding (``pooler``: what the model card's numbers
    are about) without being asked."""
    report = engine_runs["report"]
    assert "pooler" in report["poolings"]
    assert f"layer_{report['layers'][-1]}/pooler" in report["features"]


def test_a_one_layer_report_draws_no_accuracy_per_layer(engine_runs):
    """First hour 7: a figure with one point is not drawn (the report probed the last layer only)."""
    report_dir = engine_runs["root"] / "report"
    assert engine_runs["report"]["layers"] == [engine_runs["report"]["model"]["num_hidden_layers"]]
    assert not (report_dir / "accuracy_per_layer.png").exists()
    assert (report_dir / "eigenvalue_spectrum_per_layer.png").is_file()


def test_the_report_shows_progress_and_says_when_it_resized_images(tmp_path, capfd):
    """First hour 6: the report shows a progress bar per split during extraction, and report.md says that the 8 x 8
    digits were upscaled for the model's image processor (report.json: data.resized)."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    config = tf.ViTConfig(
        image_size=16,
        patch_size=4,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
    )
    processor = tf.ViTImageProcessor(size={"height": 16, "width": 16}, do_normalize=False)
    tf.ViTModel(config).save_pretrained(tmp_path / "vit")
    processor.save_pretrained(tmp_path / "vit")
    report = perception_report(
        str(tmp_path / "vit"), "digits", monitors=["subspace"], layers="all", output_dir=tmp_path / "report",
        max_train_samples=120, max_eval_samples=60, curves=False, progress=True,
    )  # fmt: skip
    progress = capfd.readouterr().err
    assert "train images, layers 1-2 (cls+mean)" in progress and "evaluation images, layers 1-2" in progress
    assert report["data"]["resized"] == {"from": [8, 8], "to": [16, 16]}
    markdown = (tmp_path / "report" / "report.md").read_text()
    assert "the 8 x 8 images of digits were upscaled to 16 x 16 for this model's image processor" in markdown
    assert (tmp_path / "report" / "accuracy_per_layer.png").is_file()  # two layers: drawn
