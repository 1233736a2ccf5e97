"""Every entry point with bad input: exit code 2, one line ``error: <argument>...`` on stderr, and the output
directory exactly as it was (issue 12; docs/design.md, "Errors and bad input")."""

import json
from pathlib import Path

import pytest

from hf_recperc.commands import (
    alignment,
    compare_runs,
    pca_classification,
    pca_figure,
    pretrain,
    push_metric,
    push_to_hub,
    report,
)

REPO = Path(__file__).resolve().parents[1]

# (command, argv with {out} = a directory holding one user file (notes.txt) and {tmp} = the test's folder, text that the one
# error line must start with after "error: ")
BAD_INPUTS = [
    (pretrain, ["--output_dir", "{out}", "--monitors", "psychic"], "monitors:"),
    (pretrain, ["--output_dir", "{out}", "--learning_rate", "fast"], "argument --learning_rate"),
    (pretrain, ["--output_dir", "{out}", "--dataset_name", "{tmp}/no/such/data"], "dataset_name:"),
    (pretrain, ["--output_dir", "{out}", "--model_name_or_path", "{tmp}/no_model"], "model_name_or_path:"),
    (
        pretrain,
        ["--output_dir", "{out}", "--config_overrides", "latnet_dim=64"],
        "config_overrides: unknown field",
    ),
    (pretrain, ["--output_dir", "{out}", "--push_to_hub", "--hub_model_id", "a b"], "hub_model_id:"),
    (
        pretrain,
        ["--output_dir", "{out}", "--resume_from_checkpoint", "{tmp}/ckpt"],
        "resume_from_checkpoint:",
    ),
    (pretrain, ["--output_dir", "{out}/notes.txt"], "output_dir:"),
    (pretrain, ["-c", "{tmp}/missing.yaml", "--output_dir", "{out}"], "config:"),
    (
        pretrain,
        ["--output_dir", "{out}", "--gradient_accumulation_steps", "100000"],
        "gradient_accumulation_steps:",
    ),
    (pca_classification, ["--output_dir", "{out}", "--subspaces", "top:1.5"], "subspace 'top:1.5'"),
    (pca_figure, ["--output", "{out}/figure.png", "--num_images", "0"], "num_images"),
    (alignment, ["--output_dir", "{out}", "--corruptions", "blur:1"], "corruption 'blur:1'"),
    (compare_runs, ["{tmp}/no_such_run", "--output", "{out}/x.png"], "run_dirs:"),
    (push_to_hub, ["{out}", "--hub_model_id", "someone/x"], "output_dir:"),
    (push_metric, ["--repo_id", "no-namespace", "--output_dir", "{out}"], "repo_id:"),
    (report, ["--model_name_or_path", "{tmp}/no_model", "--output_dir", "{out}"], "model_name_or_path:"),
    (report, ["--model_name_or_path", "{vit}", "--layers", "99", "--output_dir", "{out}"], "layers:"),
    (report, ["--model_name_or_path", "{vit}", "--pooling", "max", "--output_dir", "{out}"], "pooling"),
]


@pytest.fixture(scope="module")
def vit(tmp_path_factory) -> str:
    """A tiny randomly initialised transformers ViT with its image processor, saved."""
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    path = tmp_path_factory.mktemp("vit")
    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(path)
    return str(path)


@pytest.mark.parametrize("command, argv, expected", BAD_INPUTS, ids=lambda v: getattr(v, "__name__", None))
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    command, argv, expected, tmp_path, capsys, monkeypatch, vit
):
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("the user's own file\n")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    argv = [arg.format(out=out, tmp=tmp_path, vit=vit) for arg in argv]
    assert command.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) >= 1 and err[-1].startswith(f"error: {expected}"), err
    assert "Traceback" not in "\n".join(err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing written, nothing replaced
    # No lock, staging or new directory beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_every_console_command_is_in_the_table():
    tested = {command.__name__.rsplit(".", 1)[-1] for command, _, _ in BAD_INPUTS}
    scripts = json.dumps(
        __import__("tomllib").loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    )
    for name in tested:
        assert f"hf_recperc.commands.{name}:main" in scripts
    assert scripts.count("hf_recperc.commands.") == len(tested)


# ---- data path (trust items 16, 17) ----


def _write_image_parquet(path, labels, names=("a", "b", "c"), corrupt_rows=()):
    """A parquet split of 8x8 grayscale PNGs (random pixels) with ``ClassLabel`` labels; the rows of
    ``corrupt_rows`` hold bytes that are no image."""
    import io

    import datasets
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    images = []
    for row in range(len(labels)):
        encoded = io.BytesIO()
        Image.fromarray(rng.integers(0, 255, (8, 8), dtype=np.uint8), mode="L").save(encoded, "PNG")
        images.append({"bytes": b"not an image" if row in corrupt_rows else encoded.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=list(names))})
    datasets.Dataset.from_dict({"image": images, "label": labels}, features=features).to_parquet(str(path))


TINY_RUN = [
    "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "16", "--max_steps", "30",
    "--eval_steps", "3", "--checkpointing_steps", "2", "--report_to", "none", "--shuffle_buffer_size", "16",
]  # fmt: skip


def _assert_one_line_error_and_no_model(capsys, tmp_path, out, expected: str) -> str:
    """The command printed one ``error:`` line holding ``expected``; output_dir holds no model (at most complete
    checkpoints of the steps before the error) and no lock or staging directory is left beside it."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and expected in err[-1], err[-1:]
    assert "Traceback" not in "\n".join(err)
    if out.exists():
        assert sorted(p.name for p in out.iterdir()) == ["checkpoints"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data"] + (["out"] if out.exists() else []))
    return err[-1]


def test_a_one_class_data_set_is_refused_before_training(tmp_path, capsys, monkeypatch):
    """Trust 16: a data set with one class trained to the first evaluation, then the spectrum monitor raised (and
    a resumed run again): now a one-line error before any step names label_column and the classes found."""
    from hf_recperc.training.loop import PretrainingRun

    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    _write_image_parquet(data / "train.parquet", [1] * 40)  # ClassLabel with 3 names, 1 present
    _write_image_parquet(data / "test.parquet", [1] * 8)

    def no_step(*args, **kwargs):
        raise AssertionError("a training step ran before the data was checked")

    monkeypatch.setattr(PretrainingRun, "train_step", no_step)
    argv = ["--output_dir", str(out), "--dataset_name", str(data), *TINY_RUN]
    assert pretrain.main(argv) == 2
    line = _assert_one_line_error_and_no_model(capsys, tmp_path, out, "error: label_column: 'label' of")
    assert "holds 1 class(es) ['b']" in line and "needs at least 2 classes" in line
    assert "--monitors" in line  # says how to go on
    assert not out.exists()


def test_monitor_rows_every_process_needs_one_row():
    """Trust 16: fewer validation (or probe) rows than processes left a process with an empty shard, whose monitors
    failed at the first evaluation; the run refuses it at start, naming the argument."""
    from types import SimpleNamespace

    import numpy as np

    from hf_recperc.images.pipeline import check_monitor_rows

    data = SimpleNamespace(label_column="label", label_names=["a", "b"], source="set")
    args = SimpleNamespace(monitors=["reconstruction", "subspace"], monitor_max_eval_samples=1000)
    labels = np.array([0, 1, 0, 1])
    check_monitor_rows(data, labels, 1, args, num_processes=1)  # one validation row, one process: fine
    with pytest.raises(
        ValueError, match=r"^monitor_max_eval_samples: the monitors would read 1 validation row"
    ):
        check_monitor_rows(data, labels, 1, args, num_processes=2)
    with pytest.raises(ValueError, match=r"^probe_max_train_samples: .* 4 training row\(s\) over 8 process"):
        check_monitor_rows(data, labels, 100, args, num_processes=8)
    # Without a probe monitor one class is fine (the spectrum of its own moments, reconstruction, kNN).
    one_class = SimpleNamespace(
        monitors=["reconstruction", "spectrum", "knn"], monitor_max_eval_samples=0, knn_k=1
    )
    check_monitor_rows(data, np.zeros(4, dtype=np.int64), 4, one_class, num_processes=1)


def test_monitors_score_a_class_absent_from_evaluation_and_a_single_row():
    """Trust 16: a class present in training but absent from evaluation, or a single evaluated row, gives every
    monitor finite numbers (the probes score the rows there are), never a late traceback."""
    import math

    import torch

    from hf_recperc.monitors import (
        KNNMonitor,
        LayerProbeMonitor,
        MonitorBatch,
        OnlineProbeMonitor,
        SpectrumMonitor,
        SubspaceProbeMonitor,
    )

    generator = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(30, 6, generator=generator), torch.tensor([0, 1, 2] * 10)
    for eval_y in (torch.tensor([0, 1, 0, 1]), torch.tensor([2])):
        subspace = SubspaceProbeMonitor()
        monitors = [subspace, SpectrumMonitor(source=subspace), KNNMonitor(k=3), LayerProbeMonitor([0])]
        monitors.append(OnlineProbeMonitor())
        eval_x = torch.randn(len(eval_y), 6, generator=generator)
        for split, x, y in (("train", train_x, train_y), ("eval", eval_x, eval_y)):
            features = {"embedding": x, "layer_0/mean": x}
            batch = MonitorBatch(split, labels=y, features=features, logits=torch.randn(len(y), 3))
            for monitor in monitors:
                monitor.update(batch)
        for monitor in monitors:
            monitor.all_reduce()
            values = monitor.compute()
            assert values and all(math.isfinite(v) for k, v in values.items() if "alpha" not in k), (
                monitor.name
            )


@pytest.mark.parametrize("probe_rows", ["2000", "20"], ids=["in_the_probe_rows", "in_the_shuffled_stream"])
def test_a_corrupt_image_in_a_streamed_shard_names_row_and_file(tmp_path, capsys, monkeypatch, probe_rows):
    """Trust 17: a corrupt image in a streamed shard was an UnidentifiedImageError at step 14 naming no row or
    file; now a one-line error names the column, the row in its parquet file and the file, and no model is
    written (checkpoints of earlier steps stay complete; the lock is released)."""
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    _write_image_parquet(data / "train-00000.parquet", [0, 1, 2] * 20)
    _write_image_parquet(data / "train-00001.parquet", [0, 1, 2] * 20, corrupt_rows={13})
    _write_image_parquet(data / "test.parquet", [0, 1, 2] * 4)
    argv = ["--output_dir", str(out), "--dataset_name", str(data), "--streaming", *TINY_RUN]
    assert pretrain.main([*argv, "--probe_max_train_samples", probe_rows]) == 2
    shard = data / "train-00001.parquet"
    expected = (
        f"error: image: row 13 of {str(shard)!r} (embedded bytes) is not a readable image: Unidentified"
    )
    _assert_one_line_error_and_no_model(capsys, tmp_path, out, expected)
    if probe_rows == "20":  # found in the training stream, after steps that were checkpointed
        checkpoints = sorted((out / "checkpoints").iterdir())
        assert checkpoints and all((c / "trainer_state.json").is_file() for c in checkpoints)


# ---- guarded writer (trust items 3, 8) ----

UNPINNED = [
    None,  # no flag, and this checkout is installed editable: no pinned source to derive
    "hf_recperc>=0.1.0",  # a name on the index that nobody owns
    "hf_recperc",
    "git+https://github.com/example/hf_recperc@main",  # a branch moves
    "git+https://github.com/example/hf_recperc@v0.1.0",  # so can a tag
    "git+http://github.com/example/hf_recperc@" + "0" * 40,  # no TLS
    "https://example.org/hf_recperc-0.1.0-py3-none-any.whl",  # no hash
]


@pytest.mark.parametrize("requirement", UNPINNED)
def test_push_metric_never_writes_an_unpinned_requirement(requirement, tmp_path, capsys, monkeypatch):
    """Trust 3: the Space's requirements.txt never says a bare 'hf_recperc>=...' (a name anyone may register on the
    package index, whose code every Space built from the default would run): an unpinned source is one line
    naming --hf_recperc_requirement, exit 2, nothing written."""
    monkeypatch.setattr("hf_recperc.metric_hub._installed_source", lambda: None)
    argv = ["--repo_id", "someone/probe_metric", "--output_dir", str(tmp_path / "space")]
    argv += [] if requirement is None else ["--hf_recperc_requirement", requirement]
    assert push_metric.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: hf_recperc_requirement:") and "pinned source" in err[0]
    assert list(tmp_path.iterdir()) == []


# ---- perception report (trust items 19, 21) ----


def _report_models(root: Path) -> dict[str, str]:
    """Tiny saved models the report must refuse in one line: DETR (no hidden_states), a 1-channel ViT with a
    3-channel processor, a ViT with zero-byte weights."""
    import torch
    import transformers as tf

    torch.manual_seed(0)
    vit = dict(
        image_size=8,
        patch_size=4,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
    )
    backbone = tf.ResNetConfig(
        embedding_size=8,
        hidden_sizes=[8, 16],
        depths=[1, 1],
        layer_type="basic",
        out_features=["stage1", "stage2"],
    )
    detr = tf.DetrConfig(
        use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, d_model=16, encoder_layers=1,
        decoder_layers=1, encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=16, decoder_ffn_dim=16,
        num_queries=5,
    )  # fmt: skip
    built = {
        "detr": (tf.DetrModel(detr), tf.DetrImageProcessor()),
        "one_channel": (tf.ViTModel(tf.ViTConfig(**vit, num_channels=1)), tf.ViTImageProcessor(size=8)),
        "empty_weights": (tf.ViTModel(tf.ViTConfig(**vit)), tf.ViTImageProcessor(size=8)),
    }
    paths = {}
    for name, (model, processor) in built.items():
        model.save_pretrained(root / name)
        processor.save_pretrained(root / name)
        paths[name] = str(root / name)
    (root / "empty_weights" / "model.safetensors").write_bytes(b"")
    return paths


@pytest.fixture(scope="module")
def report_models(tmp_path_factory) -> dict[str, str]:
    return _report_models(tmp_path_factory.mktemp("report_models"))


@pytest.mark.parametrize(
    "name, expected",
    [
        ("detr", "model_name_or_path: '{path}' (DetrModel) returns no hidden_states"),
        (
            "one_channel",
            "model_name_or_path: the model takes 1-channel images but its image processor ({path}/",
        ),
        ("empty_weights", "model_name_or_path: weights file '{path}/model.safetensors'"),
    ],
)
def test_report_refuses_models_it_cannot_read_in_one_line(name, expected, report_models, tmp_path, capsys):
    """Trust 19: DETR (no hidden_states), a 1-channel model with a 3-channel processor and zero-byte weights: one
    line naming the argument and the model or file, exit 2, nothing written (were: tracebacks)."""
    path = report_models[name]
    out = tmp_path / "out"
    code = report.main(["--model_name_or_path", path, "--max_train_samples", "8", "--output_dir", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err[-1].startswith("error: " + expected.format(path=path)), err
    assert "Traceback" not in "\n".join(err) and not out.exists()


def test_report_blames_a_custom_model_without_hidden_states_on_the_model_not_image_size():
    """Trust 19: a custom vision module whose forward takes no output_hidden_states, or returns no hidden_states,
    is named as the ``model`` (was: "image_size: the model cannot take the data's images")."""
    import torch
    from transformers import ViTImageProcessor

    from hf_recperc.report import perception_report

    class PlainNet(torch.nn.Module):
        main_input_name = "pixel_values"

        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(3 * 8 * 8, 4)

        def forward(self, pixel_values, **kwargs):
            return self.linear(pixel_values.flatten(1))

    class NoKwargsNet(PlainNet):
        def forward(self, pixel_values):
            return self.linear(pixel_values.flatten(1))

    processor = ViTImageProcessor(size={"height": 8, "width": 8})
    for model, message in (
        (NoKwargsNet(), "has no output_hidden_states"),
        (PlainNet(), "returns no hidden_states"),
    ):
        with pytest.raises(ValueError, match=f"^model: '(PlainNet|NoKwargsNet)' .*{message}") as caught:
            perception_report(
                model, "digits", image_processor=processor, max_train_samples=8, max_eval_samples=8
            )
        assert "image_size" not in str(caught.value)


def test_report_checks_the_model_card_before_any_work(vit, tmp_path, capsys):
    """Trust 21: --update_model_card on a README.md with broken YAML front matter fails first, in one line naming
    --update_model_card and the file; no report is written and the card is untouched (was: a YAML traceback after
    the report)."""
    import shutil

    model_dir = tmp_path / "model"
    shutil.copytree(vit, model_dir)
    card = model_dir / "README.md"
    card.write_text("---\nlicense: [apache-2.0\n---\n# My model\n")
    before = card.read_bytes()
    out = tmp_path / "out"
    argv = [
        "--model_name_or_path",
        str(model_dir),
        "--update_model_card",
        "--max_train_samples",
        "8",
        "--output_dir",
        str(out),
    ]
    assert report.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(
        f"error: update_model_card: '{card}' is not a valid model card"
    ), err
    assert card.read_bytes() == before and not out.exists()


# ---- numbers: memory guards, evaluate's multi-process mode (trust items 5, 12) ----

HUGE_D = 100_000  # a 100,000 x 100,000 float64 matrix is 74.5 GiB


@pytest.fixture
def memory_limit_16_gib(monkeypatch):
    """The memory a computation may plan to use, fixed so that refusals do not depend on the test machine."""
    monkeypatch.setenv("RECPERC_MEMORY_LIMIT_GB", "16")


def test_features_whose_second_moments_cannot_fit_are_refused_before_allocating(memory_limit_16_gib):
    """Trust 5: 100,000 features are refused at once with one line naming the argument and the size of the
    second-moment matrix, by the metric (arrays, streamed batches before any row is stored, training rows), the
    probe, the torchmetrics twin and the monitors; nothing of 74.5 GiB is allocated first."""
    import time

    import evaluate
    import numpy as np
    import torch

    import hf_recperc
    from hf_recperc import SubspaceProbe
    from hf_recperc.monitors import MonitorBatch, SubspaceProbeMonitor
    from hf_recperc.torchmetrics import SubspaceProbeAccuracy

    X, y = np.zeros((4, HUGE_D), dtype=np.float32), np.array([0, 1, 0, 1])
    metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    monitor = SubspaceProbeMonitor()
    size = rf"{HUGE_D:,} features need a {HUGE_D:,} x {HUGE_D:,} float64 second-moment matrix \(74.5 GiB\); "
    calls = [
        ("predictions", lambda: metric.compute(predictions=X, references=y)),
        ("predictions", lambda: metric.add_batch(predictions=X, references=y)),
        ("train_predictions", lambda: metric.add_batch(predictions=X, references=y, split="train")),
        ("X", lambda: SubspaceProbe().fit(X, y)),
        ("num_features", lambda: SubspaceProbeAccuracy(num_features=HUGE_D, num_classes=10)),
        (
            "X",
            lambda: monitor.update(
                MonitorBatch("train", torch.from_numpy(y), {"embedding": torch.from_numpy(X)})
            ),
        ),
    ]
    for name, call in calls:
        start = time.perf_counter()
        with pytest.raises(ValueError, match=f"^{name}: {size}.*16 GiB") as raised:
            call()
        assert time.perf_counter() - start < 2 and "\n" not in str(raised.value)
    assert len(metric) == 0  # the refused batch was not stored


def test_too_many_classes_are_refused_before_allocating(memory_limit_16_gib, monkeypatch):
    """Trust 5: 20,000 classes are refused with one line naming the labels and the size of the `(D, C)` label
    statistics, before the one-hot targets and cross moments are allocated."""
    import numpy as np

    from hf_recperc import SubspaceProbe
    from hf_recperc.streaming import subspace_probe_accuracy
    from hf_recperc.torchmetrics import SubspaceProbeAccuracy

    monkeypatch.setenv("RECPERC_MEMORY_LIMIT_GB", "1")
    num_classes, dim = 20_000, 512
    X = np.zeros((num_classes, dim), dtype=np.float32)
    y = np.arange(num_classes)
    size = r"20,000 classes of 512 features need a 512 x 20,000 float64 cross-moment matrix \(78.1 MiB\); "
    for name, call in [
        ("y", lambda: SubspaceProbe().fit(X, y)),
        ("references", lambda: subspace_probe_accuracy(X, y)),
        ("train_references", lambda: subspace_probe_accuracy(X[:2], y[:2], X, y)),
    ]:
        with pytest.raises(ValueError, match=f"^{name}: {size}"):
            call()
    size = r"200,000 classes of 512 features need a 512 x 200,000 float64 cross-moment matrix \(781 MiB\); "
    with pytest.raises(ValueError, match=f"^num_classes: {size}"):
        SubspaceProbeAccuracy(num_features=dim, num_classes=10 * num_classes)


def test_alignment_on_huge_images_is_refused_before_decoding_them(tmp_path, capsys, monkeypatch):
    """Trust 5: recperc-alignment on 4096 x 4096 RGB images (X^T X alone would take 18 PiB) exits 2 with one line
    naming image_size, the size, and an image size that fits, after decoding one image; nothing is written."""
    import shutil

    from PIL import Image

    monkeypatch.setenv("RECPERC_MEMORY_LIMIT_GB", "16")
    first = tmp_path / "image.png"
    Image.new("RGB", (4096, 4096), (10, 20, 30)).save(first)
    for label in ("cat", "dog"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for index in range(5):
            shutil.copy(first, tmp_path / "images" / label / f"{index}.png")
    out = tmp_path / "out"
    argv = ["--dataset_name", str(tmp_path / "images"), "--output_dir", str(out), "--corruptions", "none"]
    assert alignment.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: image_size: 50,331,648 features need a 50,331,648 x 50,331,648 float64 matrix X^T X (18 PiB); "
    ), err
    assert "Traceback" not in "\n".join(err) and "pass --image_size" in err[-1] and not out.exists()


# ---- models (citizen items 5) ----


@pytest.mark.parametrize(
    "problem_type, labels, message",
    [
        (None, [0.0, 1.0], r"problem_type 'multi_label_classification' expects shape \(2, 3\)"),
        ("regression", [[0, 1, 2], [1, 1, 1]], "problem_type 'regression' expects floating-point labels"),
        ("regression", [0.5, 1.5], r"problem_type 'regression' expects shape \(2, 3\)"),
        ("single_label_classification", [0, 3], r"labels: values must lie in \[0, 3\)"),
    ],
)
def test_classification_labels_of_the_wrong_form(problem_type, labels, message):
    """Citizen 5: labels that do not fit the head's problem type are refused with the expected form, before any
    loss is computed (transformers' losses would broadcast or fail with a shape error)."""
    import torch  # noqa: PLC0415

    from hf_recperc import RecPercAEConfig, RecPercAEForImageClassification  # noqa: PLC0415

    config = RecPercAEConfig(encoder="mlp", image_size=4, num_channels=1, latent_dim=2, depth=1, num_labels=3)
    config.problem_type = problem_type
    model = RecPercAEForImageClassification(config)
    with pytest.raises(ValueError, match=message):
        model(pixel_values=torch.zeros(2, 1, 4, 4), labels=torch.tensor(labels))


# ---- metric twins and trainer integrations (Citizen 9, 10, 12) ----


def test_integrations_refuse_bad_arguments_before_training():
    """Citizen 12: a wrong monitor name, a mix of names and objects, a feature no model gives, a missing image
    processor or a wrong model attribute: one line naming the argument."""
    from test_integrations import tiny_mae

    from hf_recperc.images import load_image_dataset
    from hf_recperc.integrations import PerceptionMeasurement
    from hf_recperc.monitors import KNNMonitor

    digits = load_image_dataset("digits", max_train_samples=40, max_eval_samples=20)
    with pytest.raises(ValueError, match="monitors: expected names among"):
        PerceptionMeasurement(digits, monitors=["knn", "fid"])
    with pytest.raises(ValueError, match="monitors: expected names .* or Monitor objects, not both"):
        PerceptionMeasurement(digits, monitors=["knn", KNNMonitor()])
    with pytest.raises(ValueError, match="subspaces: subspace 'top:2'"):
        PerceptionMeasurement(digits, subspaces=["top:2"])
    model, processor = tiny_mae()
    with pytest.raises(ValueError, match="monitors: a monitor reads feature 'pixels'"):
        PerceptionMeasurement(digits, monitors=[KNNMonitor("pixels")])(model, image_processor=processor)
    with pytest.raises(ValueError, match="image_processor: required"):
        PerceptionMeasurement(digits)(model)
    assert model.config.mask_ratio == 0.75  # a failed measurement restores the model too
    lightning = pytest.importorskip("lightning")
    from hf_recperc.integrations import LightningPerceptionCallback

    callback = LightningPerceptionCallback(digits, model="encoder", image_processor=processor)
    with pytest.raises(ValueError, match="model: the LightningModule has no attribute 'encoder'"):
        callback.on_validation_epoch_end(
            type("T", (), {"sanity_checking": False})(), lightning.LightningModule()
        )


def test_metric_add_refuses_a_row_given_twice():
    """Citizen 10: `add(prediction=..., predictions=...)` names both spellings instead of picking one."""
    import evaluate
    import numpy as np

    import hf_recperc

    metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    with pytest.raises(ValueError, match="add: give prediction= or predictions=, not both"):
        metric.add(prediction=np.zeros(3), predictions=np.ones(3), reference=0)


# ---- first hour (items 2, 5) ----


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tracker_figures_every", "-1"], "tracker_figures_every: expected an integer >= 0"),
        (["--tracker_figures_every", "often"], "argument --tracker_figures_every"),
    ],
)
def test_a_bad_tracker_figure_cadence_is_one_line(argv, expected, tmp_path, capsys, monkeypatch, vit):
    """First hour 2: --tracker_figures_every takes an integer >= 0 (0: figures only at the end)."""
    test_bad_input_is_one_line_exit_2_and_changes_nothing(
        pretrain, ["--output_dir", "{out}", *argv], expected, tmp_path, capsys, monkeypatch, vit
    )


def test_an_earlier_runs_checkpoints_are_refused_before_any_work(tmp_path, capsys, monkeypatch, vit):
    """First hour 5: a fresh run into an output_dir holding an earlier run's checkpoints is one line naming the
    checkpoint and the three ways out (--resume_from_checkpoint latest, --overwrite_output_dir, --output_dir)."""
    checkpoint = tmp_path / "out" / "checkpoints" / "checkpoint-12"
    checkpoint.mkdir(parents=True)
    (checkpoint / "trainer_state.json").write_text("{}")
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    assert pretrain.main(["--output_dir", str(tmp_path / "out")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: output_dir: ") and "holds an earlier run (checkpoint-12)" in line
    assert all(
        way in line for way in ("--resume_from_checkpoint latest", "--overwrite_output_dir", "--output_dir")
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["checkpoints"]


# ---- checkpoints and trainer state (trust items 10, 11, 20) ----

CHECKPOINT_RUN = [
    "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64", "--max_steps", "2", "--eval_steps", "2", "--report_to", "none",
    "--monitors", "reconstruction",
]  # fmt: skip


@pytest.fixture(scope="module")
def two_step_run(tmp_path_factory) -> Path:
    """A finished 2-step run: checkpoints/checkpoint-2 stopped at batch 2 of an epoch of 4."""
    output_dir = tmp_path_factory.mktemp("two_steps") / "run"
    assert pretrain.main(["--output_dir", str(output_dir), *CHECKPOINT_RUN]) == 0
    return output_dir


# trainer_state.json edit -> what the error line must say after the file's path
DAMAGED_STATES = [
    (lambda state: {}, "is not a valid trainer state: field 'step' is missing"),
    (lambda state: [state], "is not a valid trainer state: expected a JSON object"),
    (lambda state: state | {"step": -3}, "field 'step': expected a non-negative integer, got -3"),
    (lambda state: state | {"step": "20"}, "field 'step': expected a non-negative integer, got '20'"),
    (lambda state: state | {"step": True}, "field 'step': expected a non-negative integer, got True"),
    (lambda state: state | {"epoch": 1.5}, "field 'epoch': expected a non-negative integer, got 1.5"),
    (lambda state: state | {"history": {}}, "field 'history': expected a list of records"),
    (
        lambda state: state | {"train_sums": {"loss": "x"}},
        "field 'train_sums': expected an object of numbers",
    ),
    (lambda state: state | {"run_args": None}, "field 'run_args': expected an object"),
    (lambda state: state | {"batch_in_epoch": 99}, "field 'batch_in_epoch' is 99, past the end"),
]


@pytest.mark.parametrize(
    "damage, expected", DAMAGED_STATES, ids=[e.split(":")[0][:40] for _, e in DAMAGED_STATES]
)
def test_a_damaged_trainer_state_is_one_line_naming_file_and_field(
    damage, expected, two_step_run, tmp_path, capsys, monkeypatch
):
    """Trust 11, 20 (and 10): a trainer_state.json that is not an object, misses a field, or holds a negative,
    string, boolean or out-of-range value is refused in one line naming the file and the field, never taken as
    step 0 on trained weights (which ran 60 steps instead of 40, the learning rate back up) nor a TypeError."""
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    from shutil import copytree  # noqa: PLC0415  (this block's own import)

    copy = tmp_path / "run"
    copytree(two_step_run, copy)
    path = copy / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    path.write_text(json.dumps(damage(json.loads(path.read_text()))))
    before = {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()}
    argv = [
        "--output_dir",
        str(copy),
        *CHECKPOINT_RUN,
        "--max_steps",
        "4",
        "--allow_changed_args",
        "max_steps",
    ]
    import signal  # noqa: PLC0415  (this block's own import)

    def expire(signum, frame):  # batch_in_epoch past the end span forever before the fix (Trust 10)
        raise TimeoutError("still running after 120 s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(120)
    try:
        assert pretrain.main([*argv, "--resume_from_checkpoint", "latest"]) == 2
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: resume_from_checkpoint: {path}"), err[-3:]
    assert expected in err[-1] and "Traceback" not in "\n".join(err)
    assert {p: p.read_bytes() for p in sorted(copy.rglob("*")) if p.is_file()} == before


# ---- lead: --allow_changed_args names (first hour) ----


def test_allow_changed_args_names_a_real_argument(tmp_path, capsys):
    """A misspelt name in --allow_changed_args allowed nothing and was accepted silently; now one line names it
    and the closest argument, before any work, and writes nothing."""
    out = tmp_path / "run"
    code = pretrain.main(["--output_dir", str(out), "--allow_changed_args", "learning_rte"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err[-1] == (
        "error: allow_changed_args: 'learning_rte' is not an argument of this command (expected argument names "
        "such as learning_rate, or 'all'); did you mean 'learning_rate'?"
    )
    assert not out.exists()


# ---- images (fast decode; hf_recperc/images/decode.py) ----


def _images_jpeg() -> bytes:
    import io

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (90, 120, 3), dtype=np.uint8)).save(
        buffer, format="JPEG", quality=90
    )
    return buffer.getvalue()


@pytest.mark.parametrize("damage", ["truncated", "garbage_after_header"])
def test_a_damaged_jpeg_still_names_its_row(damage):
    """Trust (images): a damaged JPEG is not half-decoded by libjpeg-turbo (which fills in grey): the one-line
    error names its row and column, as the PIL route did."""
    data = _images_jpeg()
    broken = data[: len(data) // 2] if damage == "truncated" else data[:200] + b"\x00" * 300 + data[-2:]
    from hf_recperc.images.decode import decode_pixels

    with pytest.raises(ValueError, match=r"^image: row 7 \(embedded bytes\) is not a readable image"):
        decode_pixels({"bytes": broken, "path": None}, 7, "image", 3, 64)


def test_decode_device_cuda_without_cuda_is_a_one_line_error():
    """Trust (images): --decode_device cuda on a CPU-only machine is a one-line error naming the argument, raised
    while the arguments are checked (before any data is read)."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("the refusal is for machines without CUDA")
    from hf_recperc.images.decode import check_decode_device
    from hf_recperc.training.arguments import DataArguments

    with pytest.raises(
        ValueError, match=r"^decode_device: 'cuda' decodes JPEGs with nvJPEG .*--decode_device cpu$"
    ):
        DataArguments(decode_device="cuda")
    with pytest.raises(ValueError, match=r"^decode_device: expected 'cpu' or 'cuda', got 'gpu'$"):
        check_decode_device("gpu")
    assert DataArguments().decode_device == "cpu"


# ---- protocols (standard protocols beside ours: bad arguments) ----


def _protocol_data():
    import torch  # noqa: PLC0415  (this block's own imports)

    g = torch.Generator().manual_seed(0)
    X, y = torch.randn(60, 6, generator=g), torch.arange(60) % 3
    tokens = torch.randn(20, 5, 6, generator=g)
    return (X, y, X[:30], y[:30]), (tokens, torch.arange(20) % 2, tokens[:10], torch.arange(10) % 2)


def _protocol_calls():
    from hf_recperc.monitors import protocols as p  # noqa: PLC0415

    return [
        (lambda d, t: p.ridge_cv_protocol(*d, ridges=()), "ridges"),
        (lambda d, t: p.ridge_cv_protocol(*d, ridges=(0.0,)), "ridges"),
        (lambda d, t: p.ridge_cv_protocol(*d, num_folds=1), "num_folds"),
        (lambda d, t: p.linear_grid_protocol(*d, holdout=1.0), "holdout"),
        (lambda d, t: p.linear_grid_protocol(*d, weight_decays=(-1.0,)), "weight_decays"),
        (lambda d, t: p.knn_grid_protocol(*d, ks=(0,)), "ks"),
        (lambda d, t: p.knn_grid_protocol(*d, temperatures=(0.0,)), "temperatures"),
        (lambda d, t: p.few_shot_protocol(*d, ridge=0.0), "ridge"),
        (lambda d, t: p.few_shot_protocol(*d, shots=(1, 25)), "shots"),
        (lambda d, t: p.ridge_cv_protocol(*d, subspace="top:2"), "subspace"),
        (lambda d, t: p.ridge_cv_protocol(d[0], d[1], d[2][:, :3], d[3]), "test_X"),
        (lambda d, t: p.ridge_cv_protocol(d[0], d[1][:10], d[2], d[3]), "train_y"),
        (lambda d, t: p.attentive_protocol(*t, num_heads=4), "num_heads"),
        (lambda d, t: p.attentive_protocol(*d), "train_X"),
        (lambda d, t: p.pca_rgb_maps(t[0], 3), "grid_size"),
        (lambda d, t: p.KNNGridMonitor(subspace="middle:3"), "subspace"),
        (lambda d, t: p.FewShotMonitor(num_draws=0), "num_draws"),
    ]


@pytest.mark.parametrize("case", range(17))
def test_bad_protocol_arguments_name_the_argument(case):
    """Protocols: a bad argument of a protocol or its monitor is one ValueError naming it, before any work."""
    call, argument = _protocol_calls()[case]
    with pytest.raises(ValueError, match=rf"^{argument}\b"):
        call(*_protocol_data())


# ---- feature cache and comparison table (issue 18: feature cache, several models) ----

from hf_recperc.commands import report_table  # noqa: E402  (this block's own import)

# The shared table above, extended (in place, before collection) with this area's commands and arguments.
BAD_INPUTS.extend(
    [
        (report_table, ["{tmp}/no_report", "--output_dir", "{out}"], "reports: "),
        (report_table, ["{out}", "--output_dir", "{tmp}/table"], "reports: "),  # a folder without report.json
        (report_table, ["{out}/notes.txt", "--output_dir", "{tmp}/table"], "reports: "),  # not JSON
        (
            report,
            ["--model_name_or_path", "{vit}", "--feature_cache", "{out}/notes.txt", "--output_dir", "{out}"],
            "feature_cache: ",
        ),
        (
            report,
            ["--model_name_or_path", "{vit}", "{vit}", "--update_model_card", "--output_dir", "{out}"],
            "update_model_card: ",
        ),
    ]
)


def _tiny_report() -> dict:
    """The smallest report.json the table reads (the keys recperc-report writes)."""
    return {
        "features": {"layer_1/mean": {"accuracy": {"all": 0.5}}},
        "layers": [1], "poolings": ["mean"], "subspaces": ["all"], "model": {"name_or_path": "m"},
        "data": {"source": "digits", "num_labels": 10}, "settings": {"knn_k": 20},
    }  # fmt: skip


@pytest.mark.parametrize(
    "content, expected",
    [
        ({"accuracy": 0.9}, "is not a report.json written by recperc-report (missing features, layers"),
        ([1, 2], "is not a report.json written by recperc-report"),
        ({**_tiny_report(), "features": {"acc": 1}}, "has an unknown 'features' layout"),
    ],
)
def test_report_table_refuses_an_unknown_report_schema_before_writing(content, expected, tmp_path, capsys):
    """Comparison: a JSON file that is not a report (or of an unknown layout) is one line naming ``reports`` and
    the file, read before anything is written (a good report beside it changes nothing)."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.mkdir(), bad.mkdir()
    (good / "report.json").write_text(json.dumps(_tiny_report()))
    (bad / "report.json").write_text(json.dumps(content))
    assert report_table.main([str(good), str(bad), "--output_dir", str(tmp_path / "table")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(f"error: reports: '{bad / 'report.json'}' ") and expected in line, line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "good"]


def test_report_table_never_overwrites_a_users_report_md(tmp_path, capsys):
    """Comparison: an output folder holding the user's report.md is refused, the file kept."""
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "report.json").write_text(json.dumps(_tiny_report()))
    out = tmp_path / "notes"
    out.mkdir()
    (out / "report.md").write_text("my notes\n")
    assert report_table.main([str(tmp_path / "good"), "--output_dir", str(out)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: output_dir: ") and "report.md" in line, line
    assert [p.name for p in out.iterdir()] == ["report.md"] and (
        out / "report.md"
    ).read_text() == "my notes\n"


def test_several_models_are_all_checked_before_the_first_is_loaded(vit, tmp_path, capsys, monkeypatch):
    """Comparison: with several models, a user's file in the second model's report folder is refused before the
    first model is loaded (no report written, no model constructed)."""
    import hf_recperc.report.run as report_run  # noqa: PLC0415

    monkeypatch.setattr(report_run, "load_backbone", lambda *a, **k: pytest.fail("a model was loaded"))
    second = tmp_path / "out" / "model-2"
    second.mkdir(parents=True)
    (second / "report.md").write_text("mine\n")
    model = tmp_path / "model"
    model.symlink_to(vit)  # the same model twice: report folders "model" and "model-2"
    assert (
        report.main(["--model_name_or_path", str(model), str(model), "--output_dir", str(tmp_path / "out")])
        == 2
    )
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: output_dir: ") and "model-2" in line and "report.md" in line, line
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["model-2"]
    assert [p.name for p in second.iterdir()] == ["report.md"]


# ---- parallel data path: model size, loader workers, corrupt images in workers (issue 17) ----


def test_a_model_too_large_for_its_image_size_is_one_line_before_allocation(tmp_path, capsys, monkeypatch):
    """Issue 17, bad input: the MLP preset at 224 px (40 billion weights, ~600 GiB to train) used to start
    allocating until the machine swapped or killed it; now a one-line error naming the option and the sizes, before
    any weight or pixel is allocated, and nothing is written. A model that fits passes the same check."""
    from hf_recperc.models import get_family
    from hf_recperc.training.builders import check_model_memory

    monkeypatch.setenv("RECPERC_MEMORY_LIMIT_GB", "16")
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    out = tmp_path / "out"
    argv = [
        "--output_dir",
        str(out),
        "--preset",
        "digits-mlp",
        "--config_overrides",
        "image_size=224",
        *TINY_RUN,
    ]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: preset / config_overrides: RecPercAEForPreTraining at image_size 224 has "
    )
    assert "weights" in err[-1] and "RECPERC_MEMORY_LIMIT_GB allows 16 GiB" in err[-1]
    assert "Traceback" not in "\n".join(err) and not out.exists()
    family = get_family("ae")
    small = family.config_class.preset("cifar-conv-small", image_size=224, width=4, latent_dim=16)
    check_model_memory(family.pretraining_class, small)  # 26 M weights: fits in 16 GiB


def test_a_corrupt_image_read_in_a_stream_worker_is_one_line(tmp_path, capsys, monkeypatch):
    """Issue 17, bad input: a corrupt image decoded inside a loader worker (``--streaming`` with 2 workers) is the
    same one-line error naming its row and parquet file as without workers, not torch's worker traceback, and no
    model is written."""
    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    _write_image_parquet(data / "train-00000.parquet", [0, 1, 2] * 20)
    _write_image_parquet(data / "train-00001.parquet", [0, 1, 2] * 20, corrupt_rows={13})
    _write_image_parquet(data / "test.parquet", [0, 1, 2] * 4)
    argv = ["--output_dir", str(out), "--dataset_name", str(data), "--streaming", *TINY_RUN]
    argv += ["--probe_max_train_samples", "20", "--dataloader_num_workers", "2"]
    assert pretrain.main(argv) == 2
    shard = data / "train-00001.parquet"
    expected = (
        f"error: image: row 13 of {str(shard)!r} (embedded bytes) is not a readable image: Unidentified"
    )
    line = _assert_one_line_error_and_no_model(capsys, tmp_path, out, expected)
    assert "worker" not in line


def test_loader_workers_a_stream_cannot_use_are_refused_before_decoding(tmp_path, capsys, monkeypatch):
    """Issue 17, bad input: ``--dataloader_num_workers`` that cannot share a stream's lanes (3 workers, 8 lanes)
    is a one-line error naming the option, before any image is decoded; it is never silently ignored."""
    from hf_recperc.images import pipeline

    monkeypatch.delenv("RECPERC_TRACEBACK", raising=False)
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    _write_image_parquet(data / "train.parquet", [0, 1, 2] * 10)
    _write_image_parquet(data / "test.parquet", [0, 1, 2] * 4)

    def no_decoding(*args, **kwargs):
        raise AssertionError("images were decoded before the worker count was checked")

    monkeypatch.setattr(pipeline, "materialise", no_decoding)
    argv = ["--output_dir", str(out), "--dataset_name", str(data), "--streaming", *TINY_RUN]
    assert pretrain.main([*argv, "--dataloader_num_workers", "3"]) == 2
    expected = (
        "error: dataloader_num_workers: 3 workers cannot share the 8 lanes of a stream (--stream_lanes)"
    )
    _assert_one_line_error_and_no_model(capsys, tmp_path, out, expected)


# ---- protocols in the report (registered protocols, tokens pooling, --monitor_settings) ----


@pytest.fixture(scope="module")
def protocol_report_models(tmp_path_factory) -> dict[str, str]:
    """A tiny ViT (tokens) and a tiny ResNet (feature maps), saved with their image processors."""
    import torch
    import transformers as tf

    root = tmp_path_factory.mktemp("protocol_report_models")
    torch.manual_seed(0)
    vit = tf.ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )  # fmt: skip
    resnet = tf.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic")
    paths = {}
    for name, model in (("vit", tf.ViTModel(vit)), ("resnet", tf.ResNetModel(resnet))):
        model.save_pretrained(root / name)
        tf.ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(root / name)
        paths[name] = str(root / name)
    return paths


@pytest.mark.parametrize(
    "model, flags, expected",
    [
        ("vit", ["--monitors", "attentive_probe"], "pooling: the monitors ['attentive_probe'] read patch tokens"),
        ("vit", ["--monitors", "subspace", "--pooling", "tokens"], "pooling: 'tokens' is read only by the token"),
        ("vit", ["--monitors", "knn_grid", "--monitor_settings", "knn_grid_ks=[5]"], "monitor_settings: unknown setting 'knn_grid_ks'"),
        ("vit", ["--monitors", "knn_grid", "--monitor_settings", "knn_grid_k=[0]"], "monitor_settings: knn_grid: ks"),
        ("vit", ["--monitors", "few_shot", "--monitor_settings", "few_shot_shots=[1"], "monitor_settings: unclosed"),
        ("vit", ["--monitors", "nearest"], "monitors: expected names among ("),
        ("resnet", ["--monitors", "attentive_probe", "--pooling", "tokens"], "pooling: 'tokens' needs a token sequence"),
    ],
)  # fmt: skip
def test_report_refuses_bad_protocol_requests_in_one_line(
    protocol_report_models, model, flags, expected, tmp_path, capsys
):
    """Protocols in the report: a token monitor without token features, tokens without a token monitor, a setting no
    monitor declares or a value a monitor refuses, and tokens of a CNN are one line naming the argument, exit 2,
    nothing written."""
    from hf_recperc.commands import report

    out = tmp_path / "out"
    argv = ["--model_name_or_path", protocol_report_models[model], "--dataset_name", "digits", *flags]
    code = report.main(
        [*argv, "--max_train_samples", "40", "--max_eval_samples", "20", "--output_dir", str(out)]
    )
    err = capsys.readouterr().err.strip().splitlines()  # progress bars of the model load may come first
    assert code == 2 and err[-1].startswith("error: ") and expected in err[-1], err
    assert "Traceback" not in "\n".join(err) and not out.exists()


# ---- lead: settings a card would misstate (review of the engine and protocols) ----


def test_knn_k_above_the_training_rows_is_stated_as_used_by_the_report(vit, tmp_path, caplog):
    """A kNN card row said k=1000 while the bank held 240 rows (k was clipped silently): the report now uses, logs
    and records the k it ran with."""
    from hf_recperc.report import perception_report  # noqa: PLC0415  (this block's own import)

    common = dict(dataset="digits", max_train_samples=240, max_eval_samples=60, device="cpu", curves=False)
    asked = perception_report(vit, knn_k=1000, **common)
    assert asked["settings"]["knn_k"] == 240
    assert "knn_k: 1000 neighbours asked, but the kNN bank holds 240 training rows; k = 240" in caplog.text
    assert asked["metrics"] == perception_report(vit, knn_k=240, **common)["metrics"]


def test_knn_k_above_the_probe_rows_is_refused_by_the_trainer(tmp_path, capsys):
    """The trainer's kNN bank is the first --probe_max_train_samples rows: a larger k would be clipped silently."""
    out = tmp_path / "run"
    argv = [
        "--output_dir",
        str(out),
        "--probe_max_train_samples",
        "100",
        "--knn_k",
        "101",
        "--max_steps",
        "1",
    ]
    assert pretrain.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(
        "error: knn_k: 101 neighbours asked, but the kNN bank holds the 100 training rows"
    )
    assert not (out / "model.safetensors").exists()


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ("ridge_cv_folds=1", "error: monitor_settings: ridge_cv: num_folds: expected an integer >= 2"),
        (
            "few_shot_draws=3",
            "error: monitor_settings: 'few_shot_draws' is a setting of a monitor not selected",
        ),
    ],
)
def test_protocol_settings_are_checked_before_the_model_loads(
    tmp_path, capsys, monkeypatch, settings, expected
):
    """A one-fold CV failed after the extraction under another name; a setting of a monitor not run was recorded
    in report.json as if used."""
    import hf_recperc.report.run as report_run  # noqa: PLC0415  (this block's own import)

    monkeypatch.setattr(report_run, "load_backbone", lambda *a, **k: pytest.fail("the model was loaded"))
    out = tmp_path / "report"
    argv = ["--model_name_or_path", str(tmp_path / "any"), "--monitors", "subspace", "ridge_cv",
            "--monitor_settings", settings, "--output_dir", str(out)]  # fmt: skip
    assert report.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith(expected)
    assert not out.exists()
