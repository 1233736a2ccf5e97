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
