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

    from hf_recperc.training.loaders import check_monitor_rows

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
    one_class = SimpleNamespace(monitors=["reconstruction", "spectrum", "knn"], monitor_max_eval_samples=0)
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
