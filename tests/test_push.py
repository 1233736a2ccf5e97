"""Hub uploads, intercepted at the HfApi boundary (no network): our card is what gets pushed.

conftest.py sets HF_HUB_OFFLINE=1, so an un-intercepted push must fail with a clear message.
"""

import runpy
from pathlib import Path

import pytest
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import AutoModel

from hf_recperc.cards import HubPushError, push_to_hub
from hf_recperc.training import parse_args, train

REPO = Path(__file__).resolve().parents[1]
MODEL_FILES = {"config.json", "model.safetensors", "preprocessor_config.json", "README.md"}
RUN_FILES = MODEL_FILES | {"results.json", "history.json", "reconstructions.png", "probe_accuracy.png"}
TINY = [
    "--max_train_samples", "128",
    "--max_eval_samples", "32",
    "--per_device_train_batch_size", "32",
    "--max_steps", "2",
    "--eval_steps", "1",  # two evaluations: probe_accuracy.png is a curve (one point is not drawn)
    "--report_to", "none",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def intercept_hub(monkeypatch) -> list[dict]:
    """Replace HfApi.create_repo / upload_folder; record the calls and the files the upload would send."""
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"method": "create_repo", "repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        sent = list(
            filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns)
        )
        calls.append(
            {
                "method": "upload_folder",
                "repo_id": repo_id,
                "files": set(sent),
                "readme": (root / "README.md").read_text() if (root / "README.md").exists() else None,
                **kwargs,
            }
        )

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


@pytest.fixture
def hub(monkeypatch):
    return intercept_hub(monkeypatch)


def assert_complete(output_dir: Path):
    for name in RUN_FILES:
        assert (output_dir / name).is_file(), name
    AutoModel.from_pretrained(output_dir)


def test_push_to_hub_flag_uploads_the_run_with_our_card(tmp_path, hub):
    output_dir = tmp_path / "run"
    train(
        *parse_args(
            ["--output_dir", str(output_dir), *TINY, "--push_to_hub", "--hub_model_id", "someone/tiny"]
        )
    )
    assert [call["method"] for call in hub] == ["create_repo", "upload_folder"]
    assert hub[0]["repo_id"] == hub[1]["repo_id"] == "someone/tiny"
    assert hub[0]["private"] is False
    uploaded = hub[1]["files"]
    assert RUN_FILES <= uploaded
    assert not [f for f in uploaded if f.startswith("checkpoints/")]  # optimiser states stay local
    # The README sent is our card (not transformers' template), rendered for this repository.
    assert hub[1]["readme"] == (output_dir / "README.md").read_text()
    assert "More Information Needed" not in hub[1]["readme"]
    card = ModelCard(hub[1]["readme"])
    assert "hf_recperc" in card.data.tags
    assert {r.metric_config for r in card.data.eval_results} >= {"top:0.9", "bottom:0.2", "all"}
    assert 'AutoModel.from_pretrained("someone/tiny")' in card.text


def test_offline_push_fails_clearly_and_keeps_the_local_output(tmp_path, caplog):
    output_dir = tmp_path / "run"
    argv = ["--output_dir", str(output_dir), *TINY, "--push_to_hub", "--hub_model_id", "someone/tiny"]
    with pytest.raises(HubPushError, match="offline") as error:
        train(*parse_args(argv))
    # Issue 12, row 11: the user is warned at the start, not only when the push fails after training.
    assert "--push_to_hub with HF_HUB_OFFLINE=1" in caplog.text
    assert "someone/tiny" in str(error.value) and "scripts/push_to_hub.py" in str(error.value)
    assert_complete(output_dir)


def test_push_script_pushes_an_existing_run(tmp_path, monkeypatch, capsys):
    output_dir = tmp_path / "run"
    train(*parse_args(["--output_dir", str(output_dir), *TINY]))
    main = runpy.run_path(str(REPO / "scripts" / "push_to_hub.py"))["main"]
    # Offline and not intercepted: exit code 1, a message, the run untouched.
    assert main([str(output_dir), "--hub_model_id", "someone/again"]) == 1
    assert "offline" in capsys.readouterr().err.lower()
    assert_complete(output_dir)
    with monkeypatch.context() as patch:
        hub = intercept_hub(patch)
        assert main([str(output_dir), "--hub_model_id", "someone/again", "--hub_private"]) == 0
    assert hub[0]["repo_id"] == "someone/again" and hub[0]["private"] is True
    assert MODEL_FILES <= hub[1]["files"]
    assert hub[1]["readme"] == (output_dir / "README.md").read_text()
    assert "someone/again" in capsys.readouterr().out


def test_push_rejects_unfinished_runs_and_bad_repo_ids(tmp_path, capsys):
    main = runpy.run_path(str(REPO / "scripts" / "push_to_hub.py"))["main"]
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_text("{}")
    assert main([str(tmp_path / "half"), "--hub_model_id", "someone/x"]) == 2  # bad input, not a Hub failure
    err = capsys.readouterr().err
    assert err.startswith("error:") and "not a finished run" in err
    with pytest.raises(ValueError, match="hub_model_id"):
        push_to_hub(tmp_path / "half", "not a repo id")
