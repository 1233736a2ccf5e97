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
