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
