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


# ---- metric twins and trainer integrations (Citizen 9, 10, 12) ----


def test_integrations_refuse_bad_arguments_before_training():
    """Citizen 12: a wrong monitor name, a mix of names and objects, a feature no model gives, a missing image
    processor or a wrong model attribute: one line naming the argument."""
    from test_integrations import tiny_mae

    from hf_recperc.data import load_image_dataset
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
