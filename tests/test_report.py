"""The perception report (issue 10): every model kind, correctness against the evaluate metric, processes,
half precision, bad input, model card."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_recperc.commands.report import main as report_main
from hf_recperc.images import load_image_dataset
from hf_recperc.report import load_backbone, perception_report

REPO = Path(__file__).resolve().parents[1]
ACCELERATE = Path(sys.executable).parent / "accelerate"
SUBSPACES = ["top:0.9", "bottom:0.2", "all"]
KINDS = ("vit", "vit_mae", "convnext", "resnet", "timm", "dinov2", "swin", "clip", "timm_vit")
PREFIX_TOKENS = {"vit": 1, "vit_mae": 1, "dinov2": 3, "clip": 1, "timm_vit": 1}  # others: 0
# 8x8 digits, resized by each model's processor; a few hundred images keep every report under seconds.
DATA = ["--dataset_name", "digits", "--max_train_samples", "240", "--max_eval_samples", "120"]

pytestmark = pytest.mark.usefixtures("one_thread")


def _vit_processor(size: int):
    from transformers import ViTImageProcessor

    return ViTImageProcessor(size={"height": size, "width": size})


def _save(model, processor, path: Path) -> str:
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def _build(kind: str, path: Path) -> str:
    """A randomly initialised model of ``kind``, saved (with its image processor) to ``path``."""
    import transformers as tf

    torch.manual_seed(0)
    if kind == "vit":
        config = tf.ViTConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
            intermediate_size=64,
        )  # fmt: skip
        return _save(tf.ViTModel(config), _vit_processor(16), path)
    if kind == "vit_mae":
        config = tf.ViTMAEConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, mask_ratio=0.75,
        )  # fmt: skip
        return _save(tf.ViTMAEModel(config), _vit_processor(16), path)
    if kind == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2, image_size=32)
        return _save(tf.ConvNextModel(config), _vit_processor(32), path)
    if kind == "resnet":
        config = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        return _save(tf.ResNetModel(config), _vit_processor(32), path)
    if kind == "dinov2":  # CLS + 2 register tokens in front of the patches
        config = tf.Dinov2WithRegistersConfig(
            image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=64, num_register_tokens=2,
        )  # fmt: skip
        return _save(tf.Dinov2WithRegistersModel(config), _vit_processor(16), path)
    if kind == "swin":  # tokens without a CLS token
        config = tf.SwinConfig(
            image_size=28, patch_size=2, embed_dim=16, depths=[1, 1], num_heads=[2, 2], window_size=7
        )
        return _save(tf.SwinModel(config), _vit_processor(28), path)
    if kind == "clip":  # the vision tower of a CLIP checkpoint
        config = tf.CLIPConfig(
            text_config=dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
            vision_config=dict(image_size=16, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32),
        )  # fmt: skip
        return _save(tf.CLIPModel(config), _vit_processor(16), path)
    if kind == "timm_vit":  # prefix tokens come back apart from forward_intermediates' patch grids
        import timm

        model_args = dict(img_size=32, patch_size=8, depth=2, num_classes=0)
        model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **model_args)
        # Older timm (1.0.16) records neither the model's arguments nor its input size: give both.
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32)}
        timm.models.save_for_hf(model, str(path), model_args=model_args)
        return str(path)
    if kind == "timm":
        import timm

        model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
        model.pretrained_cfg = {**model.pretrained_cfg, "input_size": (3, 32, 32), "crop_pct": 1.0}
        timm.models.save_for_hf(model, str(path))
        return str(path)
    raise ValueError(kind)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {kind: _build(kind, root / kind) for kind in KINDS}


@pytest.fixture(scope="module")
def pretrained_ours(tmp_path_factory):
    """``recperc_ae`` and ``recperc_mae`` checkpoints from a two-step pretraining run on digits."""
    from hf_recperc.training import main as train_main

    root = tmp_path_factory.mktemp("ours")
    runs = {}
    for family in ("ae", "mae"):
        output_dir = root / family
        code = train_main([
            "--model_family", family, "--output_dir", str(output_dir), "--max_steps", "2", "--report_to", "none",
            "--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
            "--eval_steps", "2",
        ])  # fmt: skip
        assert code == 0
        runs[family] = str(output_dir)
    return runs


def _check_complete(report: dict, output_dir: Path):
    assert report["layers"] == list(range(1, report["model"]["num_hidden_layers"] + 1))
    for name in ("report.json", "report.md", "accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png"):
        assert (output_dir / name).is_file(), name
    assert any(p.name.startswith("accuracy_curve_") for p in output_dir.iterdir())
    assert json.loads((output_dir / "report.json").read_text())["metrics"] == pytest.approx(
        report["metrics"], nan_ok=True
    )
    for feature, row in report["features"].items():
        assert set(row["accuracy"]) == set(SUBSPACES), feature
        assert 0.0 <= row["accuracy"]["all"] <= 1.0 and 0.0 <= row["knn_accuracy"] <= 1.0
        assert math.isfinite(row["spectrum"]["effective_rank"])
    assert {f"layer_{i}/{p}" for i in report["layers"] for p in report["poolings"] if p != "pooler"} <= set(
        report["features"]
    )
    assert report["finding"] and report["finding"] in (output_dir / "report.md").read_text()
    assert report["runtime"]["images_per_second"] > 0 and report["versions"]["torch"]


@pytest.mark.parametrize("kind", KINDS)
def test_every_model_kind_gives_a_complete_report(models, kind, tmp_path):
    report = perception_report(
        models[kind], "digits", layers="all", subspaces=SUBSPACES, output_dir=tmp_path / "report",
        max_train_samples=200, max_eval_samples=80,
    )  # fmt: skip
    _check_complete(report, tmp_path / "report")
    prefix = PREFIX_TOKENS.get(kind, 0)
    assert report["model"]["num_prefix_tokens"] == prefix
    assert tuple(report["poolings"]) == (("cls", "mean") if prefix else ("mean",))


@pytest.mark.parametrize("family", ["ae", "mae"])
def test_our_checkpoints_give_a_complete_report_through_the_script(pretrained_ours, family, tmp_path):
    output_dir = tmp_path / "report"
    argv = [
        "--model_name_or_path",
        pretrained_ours[family],
        *DATA,
        "--layers",
        "all",
        "--output_dir",
        str(output_dir),
    ]
    assert report_main(argv) == 0
    report = json.loads((output_dir / "report.json").read_text())
    assert report["model"]["kind"] == "recperc"
    _check_complete(report, output_dir)


def test_vit_mae_sees_every_patch_in_order(models):
    """mask_ratio=0.75 in the saved config is ignored: the hidden states are the unmasked forward's."""
    from transformers import ViTMAEModel

    backbone = load_backbone(models["vit_mae"])
    model = ViTMAEModel.from_pretrained(models["vit_mae"]).eval()
    assert model.config.mask_ratio == 0.75
    pixels = torch.randn(3, 3, 16, 16)
    with torch.inference_mode():
        hidden, _ = backbone.hidden_states(pixels)
        embeddings = model.embeddings
        patches = embeddings.patch_embeddings(pixels) + embeddings.position_embeddings[:, 1:]  # (B, 16, D)
        cls = (embeddings.cls_token + embeddings.position_embeddings[:, :1]).expand(3, -1, -1)  # (B, 1, D)
        tokens = torch.cat([cls, patches], dim=1)  # (B, 17, D): every patch, in place
        expected = [tokens]
        blocks = model.layers if hasattr(model, "layers") else model.encoder.layer  # transformers 5 / 4
        for layer in blocks:
            out = layer(expected[-1])
            expected.append(out[0] if isinstance(out, tuple) else out)
    assert len(hidden) == len(expected) and hidden[-1].shape == (3, 17, 32)
    for got, want in zip(hidden, expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _plain_features(model_dir: str, layer: int, split):
    """The test's own extraction: processor, model(output_hidden_states=True), CLS token of ``layer``."""
    from transformers import AutoImageProcessor, AutoModel

    model, processor = (
        AutoModel.from_pretrained(model_dir).eval(),
        AutoImageProcessor.from_pretrained(model_dir),
    )
    rows = []
    with torch.inference_mode():
        for start in range(0, len(split), 50):
            images = [image.convert("RGB") for image in split[start : start + 50]["image"]]
            pixels = processor(images, return_tensors="pt")["pixel_values"]
            rows.append(model(pixel_values=pixels, output_hidden_states=True).hidden_states[layer][:, 0])
    return torch.cat(rows).numpy(), np.asarray(split["label"])


def test_report_equals_the_evaluate_metric_on_plainly_extracted_features(models):
    import evaluate

    import hf_recperc

    data = load_image_dataset("digits", max_train_samples=240, max_eval_samples=120)
    report = perception_report(
        models["vit"], data, layers="all", poolings=["cls"], subspaces=SUBSPACES, monitors=["subspace"]
    )
    metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    for layer in report["layers"]:
        X_train, y_train = _plain_features(models["vit"], layer, data.train)
        X_eval, y_eval = _plain_features(models["vit"], layer, data.validation)
        expected = metric.compute(
            predictions=X_eval, references=y_eval, train_predictions=X_train, train_references=y_train,
            subspaces=SUBSPACES,
        )  # fmt: skip
        for spec in SUBSPACES:
            got = report["features"][f"layer_{layer}/cls"]["accuracy"][spec]
            assert got == pytest.approx(expected[f"accuracy/{spec}"], abs=1e-6), (layer, spec)
            assert report["features"][f"layer_{layer}/cls"]["dims"][spec] == expected[f"dims/{spec}"]


def test_bf16_features_stay_within_001_of_float32(models):
    """Half-precision hidden states, float32/64 statistics: every accuracy within 0.01 of the float32 report.

    A ConvNeXt on all of digits (1437 / 360 images). Random tiny ViTs are a poor subject: their features put ~99%
    of the variance in one direction, and bf16 rounding of that direction swamps the quiet ones the bottom
    subspace probes (up to 0.03 apart, measured).
    """
    data = load_image_dataset("digits")
    reports = {
        precision: perception_report(
            models["convnext"],
            data,
            layers="all",
            subspaces=SUBSPACES,
            mixed_precision=precision,
            curves=False,
        )
        for precision in ("no", "bf16")
    }
    for feature, row in reports["no"]["features"].items():
        half = reports["bf16"]["features"][feature]
        for spec, accuracy in row["accuracy"].items():
            assert abs(half["accuracy"][spec] - accuracy) <= 0.01, (feature, spec)
        assert abs(half["knn_accuracy"] - row["knn_accuracy"]) <= 0.01, feature


def _env(tmp_path):
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["HF_HOME"] = str(tmp_path / "hf_home")
    return env


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_two_processes_give_the_one_process_report(models, tmp_path):
    argv = ["--model_name_or_path", models["vit"], *DATA, "--layers", "all", "--subspaces", *SUBSPACES]
    reports = {}
    assert report_main([*argv, "--output_dir", str(tmp_path / "p1")]) == 0
    reports[1] = json.loads((tmp_path / "p1" / "report.json").read_text())
    # docs/design.md (accelerate quirks): `--multi_gpu` (not `--cpu`) starts two processes; the script forms their gloo group
    launcher = [
        str(ACCELERATE),
        "launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "scripts/perception_report.py",
    ]
    done = subprocess.run(
        [*launcher, *argv, "--output_dir", str(tmp_path / "p2")],
        cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    reports[2] = json.loads((tmp_path / "p2" / "report.json").read_text())
    assert reports[2]["runtime"]["num_processes"] == 2
    assert reports[2]["metrics"].keys() == reports[1]["metrics"].keys()
    for key, value in reports[1]["metrics"].items():
        assert reports[2]["metrics"][key] == pytest.approx(value, abs=1e-6, nan_ok=True), key


def _unlabelled_parquet(tmp_path) -> str:
    import datasets

    digits = load_image_dataset("digits", max_train_samples=20).train.remove_columns(["label"])
    folder = tmp_path / "unlabelled"
    folder.mkdir()
    digits.to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_parquet(str(folder / "train.parquet"))  # readable
    return str(folder)


def _bert(tmp_path) -> str:
    from transformers import BertConfig, BertModel

    path = tmp_path / "bert"
    BertModel(
        BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    ).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize(
    "case, argument",
    [
        ("not_vision", "model_name_or_path"),
        ("layer_out_of_range", "layers"),
        ("cls_on_cnn", "pooling"),
        ("no_labels", "label_column"),
        ("image_size", "image_size"),
        ("bad_subspace", "subspaces"),
        ("bad_monitor", "monitors"),
    ],
)
def test_bad_input_is_one_line_exit_2_nothing_written(models, tmp_path, capsys, case, argument):
    model, extra = models["vit"], []
    if case == "not_vision":
        model = _bert(tmp_path)
    elif case == "layer_out_of_range":
        extra = ["--layers", "7"]
    elif case == "cls_on_cnn":
        model, extra = models["resnet"], ["--pooling", "cls"]
    elif case == "image_size":
        extra = ["--image_size", "24"]
    elif case == "bad_subspace":
        extra = ["--subspaces", "top:1.5"]
    elif case == "bad_monitor":
        extra = ["--monitors", "subspace", "linear"]
    data = ["--dataset_name", _unlabelled_parquet(tmp_path)] if case == "no_labels" else DATA
    output_dir = tmp_path / "out"
    code = report_main(["--model_name_or_path", model, *data, *extra, "--output_dir", str(output_dir)])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert code == 2
    assert len(errors) == 1 and errors[0].startswith(f"error: {argument}:"), errors
    assert not output_dir.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]


def test_model_card_gets_model_index_entries_and_push_uploads_it_alone(models, tmp_path, monkeypatch):
    import shutil

    from huggingface_hub import HfApi, ModelCard

    model_dir = tmp_path / "model"
    shutil.copytree(models["convnext"], model_dir)
    (model_dir / "README.md").write_text("---\nlicense: apache-2.0\n---\n# My model\n\nHand-written text.\n")
    uploads = []
    monkeypatch.setattr(
        HfApi, "upload_file", lambda self, **kwargs: uploads.append(kwargs) or "https://hub/commit"
    )
    argv = [
        "--model_name_or_path", str(model_dir), *DATA, "--layers", "all", "--output_dir", str(tmp_path / "report"),
        "--update_model_card", "--push_to_hub", "--hub_model_id", "me/model",
    ]  # fmt: skip
    assert report_main(argv) == 0
    card = ModelCard.load(model_dir / "README.md")
    assert "Hand-written text." in card.text and card.data.license == "apache-2.0"
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    values = {r.metric_config: r.metric_value for r in card.data.eval_results}
    for feature, row in report["features"].items():
        assert values[f"perception_report/{feature}/all"] == round(row["accuracy"]["all"], 4)
        assert values[f"perception_report/{feature}/knn"] == round(row["knn_accuracy"], 4)
    assert (
        len(uploads) == 1
        and uploads[0]["path_in_repo"] == "README.md"
        and uploads[0]["repo_id"] == "me/model"
    )
    # a second report replaces its own entries and keeps the rest
    assert report_main(argv) == 0
    assert len(ModelCard.load(model_dir / "README.md").data.eval_results) == len(values)


def test_a_built_module_reports_like_its_directory_and_a_card_is_created_when_absent(models, tmp_path):
    import shutil

    from huggingface_hub import ModelCard
    from transformers import AutoImageProcessor, ResNetModel

    from hf_recperc.report import update_model_card

    data = load_image_dataset("digits", max_train_samples=160, max_eval_samples=80)
    from_dir = perception_report(models["resnet"], data, layers="all", curves=False)
    module = ResNetModel.from_pretrained(models["resnet"])
    processor = AutoImageProcessor.from_pretrained(models["resnet"])
    built = perception_report(module, data, layers="all", image_processor=processor, curves=False)
    assert built["metrics"] == pytest.approx(from_dir["metrics"], abs=1e-9, nan_ok=True)

    model_dir = tmp_path / "model"
    shutil.copytree(models["resnet"], model_dir)
    card = ModelCard.load(update_model_card(model_dir, from_dir))
    # per feature: one entry per subspace, kNN (majority and weighted) and the effective rank (registered card rows)
    assert len(card.data.eval_results) == sum(len(r["accuracy"]) + 3 for r in from_dir["features"].values())


# ---- report trust (items 9, 15, 18) ----


def test_a_report_on_our_run_scores_the_runs_validation_rows(pretrained_ours, monkeypatch):
    """Trust 9: with a carved split (digits have no validation split), a report on one of our checkpoints evaluates
    exactly the run's validation images, none of its training images, and gives the run's numbers."""
    import hf_recperc.report.run as report_run

    run_dir = Path(pretrained_ours["ae"])
    results = json.loads((run_dir / "results.json").read_text())
    args, split = results["args"], results["run"]["data_split"]
    assert split["carved"] and split["seed"] == args["seed"] == 42 and split["fraction"] == 0.2
    evaluated = []
    original_loader = report_run._loader

    def recording_loader(source, rows, *rest):
        evaluated.append(source.select(rows))
        return original_loader(source, rows, *rest)

    monkeypatch.setattr(report_run, "_loader", recording_loader)
    limits = {"max_train_samples": args["max_train_samples"], "max_eval_samples": args["max_eval_samples"]}
    report = perception_report(str(run_dir), None, layers="last", curves=False, **limits)
    # the trainer's split, rebuilt independently from its saved arguments
    trained = load_image_dataset(
        args["dataset_name"], seed=args["seed"], train_val_split=args["train_val_split"], **limits
    )
    scored = evaluated[1]  # train rows first, then the evaluation rows
    assert len(scored) == len(trained.validation) == 32
    assert [r["image"].tobytes() for r in scored] == [r["image"].tobytes() for r in trained.validation]
    assert scored["label"] == trained.validation["label"]
    assert report["data"]["split"]["seed"] == 42 and report["data"]["run_split"]["same_split"] is True
    compared = 0
    for key, value in report["metrics"].items():
        if "/accuracy/" in key and f"eval/{key}" in results:
            assert value == pytest.approx(results[f"eval/{key}"], abs=1e-6), key
            compared += 1
    assert compared == 3  # top:0.9, bottom:0.2, all of the last layer


def test_a_split_that_would_score_training_images_is_refused(pretrained_ours):
    """Trust 9: data carved from the run's rows with another seed would evaluate on training images: refused."""
    other_seed = load_image_dataset("digits", seed=0, max_train_samples=64, max_eval_samples=32)
    with pytest.raises(
        ValueError, match="^dataset: seed: the model's run carved its validation split with seed 42"
    ):
        perception_report(pretrained_ours["ae"], other_seed, curves=False)


def _finding_metrics(accuracy_top, accuracy_bottom, dims_top, dims_bottom, variance_top, variance_bottom):
    feature = "layers/layer_1/mean"
    return {
        f"{feature}/accuracy/top:0.9": accuracy_top,
        f"{feature}/accuracy/bottom:0.2": accuracy_bottom,
        f"{feature}/dims/top:0.9": dims_top,
        f"{feature}/dims/bottom:0.2": dims_bottom,
        f"{feature}/explained_variance/top:0.9": variance_top,
        f"{feature}/explained_variance/bottom:0.2": variance_bottom,
    }


@pytest.mark.parametrize(
    "case, metrics, evidence, expected",
    [
        (
            "clear",
            (0.30, 0.90, 20, 30, 0.9, 0.2),
            (1000, 500, 0.1),
            "^The bottom 20% of the variance carries more",
        ),
        (
            "bottom_is_all",
            (0.30, 0.90, 1, 32, 0.9, 1.0),
            (1000, 500, 0.1),
            "^No finding.*keeps all 32 dimensions",
        ),
        ("concentrated", (0.08, 0.75, 1, 31, 0.76, 0.24), (1000, 500, 0.1), "^No finding.*too concentrated"),
        (
            "few_rows",
            (0.30, 0.90, 20, 30, 0.9, 0.2),
            (3, 3, 0.34),
            "^No finding.*only 3 training / 3 evaluation",
        ),
        ("chance", (0.11, 0.13, 20, 30, 0.9, 0.2), (1000, 100, 0.1), "^No finding.*above chance"),
        ("tie", (0.80, 0.83, 20, 30, 0.9, 0.2), (1000, 100, 0.1), "^The top 90% .* and .* about as accurate"),
    ],
)
def test_a_finding_needs_distinct_subspaces_enough_rows_and_accuracy_above_chance(
    case, metrics, evidence, expected
):
    """Trust 15: the headline finding is stated only for two proper subspaces holding their named variance shares,
    at least MIN_ROWS rows and an accuracy whose 95% binomial interval clears chance; otherwise it says why not."""
    import re

    from hf_recperc.findings import Evidence
    from hf_recperc.report import main_finding

    sentence = main_finding(
        _finding_metrics(*metrics),
        [1],
        "mean",
        ["top:0.9", "bottom:0.2"],
        Evidence(*evidence),
        {"layer_1/mean": 32},
    )
    assert re.search(expected, sentence), sentence


def test_a_report_on_six_images_states_no_finding(models, tmp_path):
    """Trust 15: a report on 3 + 3 images says it cannot conclude, and why, in report.json and report.md."""
    report = perception_report(
        models["vit"], "digits", layers="all", max_train_samples=3, max_eval_samples=3, curves=False,
        output_dir=tmp_path / "report", figures=False,
    )  # fmt: skip
    assert (
        report["finding"].startswith("No finding")
        and "only 3 training / 3 evaluation images" in report["finding"]
    )
    assert all(sentence.startswith("No finding") for sentence in report["findings"].values())
    assert report["evidence"]["num_eval"] == 3 and report["evidence"]["min_rows"] == 50
    assert report["finding"] in (tmp_path / "report" / "report.md").read_text()


def test_alignment_says_can_help_only_with_a_measurable_benefit(tmp_path, capsys):
    """Trust 15: the noise audit prints "can help" only next to a benefit above the stated margin (was: "can help"
    next to "best benefit -0.00%"); the verdict is saved in alignment.json."""
    from hf_recperc.commands import alignment
    from hf_recperc.findings import BENEFIT_MARGIN, noise_verdict

    assert (
        noise_verdict(False, -0.0, 1000) == "no gain here" and noise_verdict(False, 0.5, 1000) == "can help"
    )
    assert (
        noise_verdict(True, 0.0, 3) == "never beneficial" and noise_verdict(False, 5.0, 3) == "too few images"
    )
    study = alignment.run([
        "--corruptions", "none", "mask:0.5:1", "mask:0.75:2", "--max_train_samples", "400",
        "--output_dir", str(tmp_path), "--disable_tqdm",
    ])  # fmt: skip
    printed = capsys.readouterr().out
    verdicts = {spec: result["verdict"] for spec, result in study["corruptions"].items()}
    assert verdicts == {"none": "never beneficial", "mask:0.5:1": "can help", "mask:0.75:2": "no gain here"}
    for line in printed.splitlines():
        if "can help" in line:
            assert float(line.split("best benefit ")[1].split("%")[0]) > BENEFIT_MARGIN, line
    assert (
        json.loads((tmp_path / "alignment.json").read_text())["corruptions"]["mask:0.75:2"]["verdict"]
        == "no gain here"
    )


@pytest.mark.parametrize("kind", ["convnext", "resnet"])
def test_image_size_works_with_shortest_edge_processors(kind, tmp_path):
    """Trust 18: --image_size with a ConvNeXt/ResNet image processor (sized by shortest_edge) gives image_size x
    image_size inputs (was: AttributeError: 'SizeDict' object has no attribute 'keys')."""
    import transformers as tf
    from PIL import Image

    torch.manual_seed(0)
    if kind == "convnext":
        model = tf.ConvNextModel(tf.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2))
    else:
        model = tf.ResNetModel(
            tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
        )
    path = _save(model, tf.ConvNextImageProcessor(), tmp_path / kind)  # shortest_edge 384, crop_pct 0.875
    backbone = load_backbone(path, image_size=32)
    pixels = backbone.processor([Image.new("RGB", (40, 24))], return_tensors="pt")["pixel_values"]
    assert tuple(pixels.shape) == (1, 3, 32, 32)
    output_dir = tmp_path / "report"
    argv = ["--model_name_or_path", path, *DATA, "--image_size", "32", "--output_dir", str(output_dir)]
    assert report_main(argv) == 0
    assert json.loads((output_dir / "report.json").read_text())["settings"]["image_size"] == 32
