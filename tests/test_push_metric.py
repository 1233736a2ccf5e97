"""Issue 13: the metric's Hub layout loads with evaluate in a fresh interpreter; the push sends exactly it."""

import os
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi
from huggingface_hub.utils import filter_repo_objects

REPO = Path(__file__).resolve().parents[1]
LAYOUT = {"subspace_probe_accuracy.py", "README.md", "requirements.txt", "app.py"}
# hf_recperc is not on the package index: the Space installs it from a pinned commit (the test checkout is editable).
PINNED = "git+https://github.com/example/hf_recperc@" + "0123456789abcdef" * 2 + "01234567"
REQUIREMENT = ["--hf_recperc_requirement", PINNED]


def main(argv):
    return runpy.run_path(str(REPO / "scripts" / "push_metric.py"))["main"](argv)


def run_python(code, tmp_path):
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "HF_HUB_OFFLINE": "1",
        "HF_HOME": str(tmp_path / "hf_home"),  # evaluate copies the module into a fresh cache
        "OMP_NUM_THREADS": "1",
    }
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def layout(tmp_path_factory):
    root = tmp_path_factory.mktemp("space")
    assert (
        main(["--repo_id", "someone/subspace_probe_accuracy", "--output_dir", str(root), *REQUIREMENT]) == 0
    )
    return root / "subspace_probe_accuracy"  # the folder carries the module's name


def test_layout_files_and_metadata(layout):
    visible = {p.name for p in layout.iterdir() if not p.name.startswith(".")}  # and the writer's manifest
    assert visible == LAYOUT
    card = (layout / "README.md").read_text()
    metadata = yaml.safe_load(card.split("---\n")[1])
    assert metadata["sdk"] == "gradio" and metadata["app_file"] == "app.py"
    assert {"evaluate", "metric"} <= set(metadata["tags"]) and metadata["title"]
    assert "evaluate.load('someone/subspace_probe_accuracy')" in card
    assert (layout / "requirements.txt").read_text().split("\n")[0] == f"hf_recperc @ {PINNED}"
    app = (layout / "app.py").read_text()
    assert "launch_gradio_widget" in app and "evaluate.load('someone/subspace_probe_accuracy')" in app
    package_module = (
        REPO / "hf_recperc" / "metrics" / "subspace_probe_accuracy" / "subspace_probe_accuracy.py"
    )
    assert (layout / "subspace_probe_accuracy.py").read_text() == package_module.read_text()


def test_layout_loads_with_evaluate_in_a_fresh_interpreter_which_names_a_missing_hf_recperc(layout, tmp_path):
    # One interpreter for both checks (its start-up is most of the cost). Then sys.modules["hf_recperc"] = None
    # makes `import hf_recperc` fail as if the package were not installed, for evaluate's dependency check.
    code = f"""
import sys
import evaluate, numpy as np
metric = evaluate.load({str(layout)!r})
rng = np.random.default_rng(0)
labels = np.arange(200) % 2
features = rng.normal(size=(200, 4))
features[:, 3] += 3 * labels
metric.add_batch(predictions=features, references=labels)
print(metric.name, metric.compute(subspaces=["all"])["accuracy/all"])
sys.modules["hf_recperc"] = None
try:
    evaluate.load({str(layout)!r})
except ImportError as error:
    print("ImportError:", error)
"""
    completed = run_python(code, tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    loaded, missing = completed.stdout.strip().split("\n")[-2:]
    name, accuracy = loaded.split()
    assert name == "subspace_probe_accuracy" and float(accuracy) > 0.8  # chance is 0.5
    assert missing.startswith("ImportError:") and "need to install" in missing and "hf_recperc" in missing


def test_push_uploads_exactly_the_layout(monkeypatch, tmp_path):
    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append({"method": "create_repo", "repo_id": repo_id, **kwargs})
        return f"https://huggingface.co/spaces/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, allow_patterns=None, ignore_patterns=None, **kwargs):
        root = Path(folder_path)
        paths = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
        sent = set(filter_repo_objects(paths, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        calls.append({"method": "upload_folder", "repo_id": repo_id, "files": sent, **kwargs})

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    folder = tmp_path / "probe_metric"
    folder.mkdir()
    (folder / "notes.txt").write_text("not part of the layout")
    assert (
        main(["--repo_id", "someone/probe_metric", "--output_dir", str(folder), "--push", *REQUIREMENT]) == 0
    )
    create, upload = calls
    assert create["repo_type"] == "space" and create["space_sdk"] == "gradio" and create["exist_ok"]
    assert upload["repo_id"] == "someone/probe_metric" and upload["repo_type"] == "space"
    assert upload["files"] == {"probe_metric.py", "README.md", "requirements.txt", "app.py"}
    # Without --output_dir the layout goes through a temporary folder and is uploaded the same way.
    calls.clear()
    assert main(["--repo_id", "someone/probe_metric", *REQUIREMENT]) == 0
    assert calls[1]["files"] == {"probe_metric.py", "README.md", "requirements.txt", "app.py"}


def test_bad_repo_id_and_offline_push_fail_with_a_message(capsys, tmp_path):
    # Bad arguments: exit code 2 with one line; a Hub that cannot be reached: exit code 1.
    assert main(["--repo_id", "no-namespace", "--output_dir", str(tmp_path)]) == 2
    assert "repo_id: expected 'namespace/name'" in capsys.readouterr().err
    assert main(["--repo_id", "someone/probe-metric", "--output_dir", str(tmp_path)]) == 2
    # conftest sets HF_HUB_OFFLINE=1: an un-intercepted push fails cleanly instead of reaching the network.
    assert main(["--repo_id", "someone/probe_metric", *REQUIREMENT]) == 1
    assert "error:" in capsys.readouterr().err
