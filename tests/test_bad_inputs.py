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
