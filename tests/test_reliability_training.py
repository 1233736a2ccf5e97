"""Issue-12 guarantees of the training job: resume refuses other settings, output_dir is never lost or mixed,
one run at a time, leftovers of killed runs are cleaned (docs/design.md, reliability)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_recperc.training import find_checkpoint, parse_args, train
from hf_recperc.training.output_dir import MANIFEST, OutputDirectory

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64", "--max_steps", "4", "--eval_steps", "4", "--report_to", "none",
    "--monitors", "reconstruction", "subspace",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def run(output_dir, *extra):
    return train(*parse_args(["--output_dir", str(output_dir), *TINY, *extra]))


def snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def dead_pid() -> int:
    """The PID of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("done") / "run"
    run(output_dir, "--max_steps", "2", "--eval_steps", "2")
    return output_dir


# ------------------------------------------------------------------------------------ row 2: resume settings


@pytest.mark.parametrize(
    "changed, names",
    [
        (["--guidance", "0.5"], "guidance"),
        (["--corruption", "gaussian:0.1"], "corruption"),
        (["--per_device_train_batch_size", "16"], "per_device_train_batch_size"),
        (["--preset", "digits-mlp", "--config_overrides", "latent_dim=8"], "config_overrides"),
        (["--learning_rate", "0.01", "--seed", "3"], "learning_rate: 0.001 -> 0.01; seed: 42 -> 3"),
    ],
)
def test_resume_with_other_settings_is_refused_before_any_work(finished, tmp_path, changed, names):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished), str(copy)], check=True)
    before = snapshot(copy)
    with pytest.raises(
        ValueError,
        match=rf"resume_from_checkpoint: .*checkpoint-2 was trained with other arguments \(.*{names}",
    ):
        run(copy, "--max_steps", "2", "--eval_steps", "2", "--resume_from_checkpoint", "latest", *changed)
    assert snapshot(copy) == before


def test_max_steps_below_the_checkpoint_is_refused(finished):
    with pytest.raises(ValueError, match="max_steps: 1 is below the step of the checkpoint to resume \\(2"):
        run(finished, "--max_steps", "1", "--resume_from_checkpoint", "latest")


def test_allowed_changes_resume_and_the_card_states_the_new_value(finished, tmp_path):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished), str(copy)], check=True)
    results = run(copy, "--max_steps", "4", "--eval_steps", "2", "--resume_from_checkpoint", "latest",
                  "--allow_changed_args", "max_steps", "--logging_steps", "1")  # fmt: skip
    assert results["step"] == 4 and [r["step"] for r in json.loads((copy / "history.json").read_text())] == [
        2,
        4,
    ]


# ------------------------------------------------------------------------ rows 5-9: output_dir is never lost


def test_a_users_file_under_a_run_name_is_refused_before_training(tmp_path):
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    (checkout / "README.md").write_text("my project\n")
    (checkout / "notes.txt").write_text("keep\n")
    with pytest.raises(
        ValueError, match="output_dir: .* holds files this run would overwrite but did not write: README.md"
    ):
        run(checkout)
    assert (checkout / "README.md").read_text() == "my project\n"
    assert sorted(p.name for p in checkout.iterdir()) == [
        "README.md",
        "notes.txt",
    ]  # no lock, nothing written


def test_republishing_replaces_the_previous_runs_files_as_a_set(tmp_path):
    output_dir = tmp_path / "run"
    # Two evaluations: band_errors.png is a curve (one point is not drawn).
    run(output_dir, "--monitors", "reconstruction", "subspace", "band_errors", "--eval_steps", "2")
    assert (output_dir / "band_errors.png").is_file()
    (output_dir / "mine.txt").write_text("the user's\n")
    run(output_dir, "--overwrite_output_dir")  # the default TINY monitors: no band errors this time
    assert not (output_dir / "band_errors.png").exists()  # stale: the earlier run's, not written again
    assert (output_dir / "mine.txt").read_text() == "the user's\n"
    assert "band_errors.png" not in json.loads((output_dir / MANIFEST).read_text())["files"]
    assert not list(tmp_path.glob(".run.*"))  # no staging, set-aside directory or lock left


def test_a_mount_point_output_dir_is_published_file_by_file(tmp_path, monkeypatch):
    output_dir = tmp_path / "volume"
    real_ismount = os.path.ismount
    monkeypatch.setattr(os.path, "ismount", lambda path: Path(path) == output_dir or real_ismount(path))

    def no_directory_rename(source, target):  # what EBUSY on a mount point would do
        assert Path(source) != output_dir, "the mount point itself was renamed"
        return real_replace(source, target)

    real_replace = os.replace
    monkeypatch.setattr(os, "replace", no_directory_rename)
    results = run(output_dir)
    assert (output_dir / "model.safetensors").is_file() and results["step"] == 4
    assert not [p for p in output_dir.iterdir() if "staging" in p.name]


@pytest.mark.parametrize("problem", ["file", "file as parent", "read-only file system"])
def test_an_unusable_output_dir_fails_at_start(tmp_path, problem):
    blocker = tmp_path / "blocker"
    blocker.write_text("a file")
    target, match = {
        "file": (blocker, "output_dir: .* is a file"),
        "file as parent": (blocker / "out", "output_dir: .* is not writable"),
        "read-only file system": (Path("/proc/self/recperc_out"), "output_dir: .* is not writable"),
    }[problem]
    with pytest.raises(ValueError, match=match):
        run(target)
    assert blocker.read_text() == "a file"


def test_a_second_run_on_a_locked_output_dir_is_refused(tmp_path):
    output_dir = tmp_path / "run"
    output_dir.mkdir()
    lock = tmp_path / ".run.lock"
    lock.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))  # a live owner: this test
    with pytest.raises(ValueError, match=rf"output_dir: .* is in use by another run \(process {os.getpid()}"):
        run(output_dir)
    assert lock.exists() and not (output_dir / "config.json").exists()
    lock.write_text(json.dumps({"pid": dead_pid(), "host": socket.gethostname()}))  # its owner died
    assert run(output_dir)["step"] == 4
    assert not lock.exists()


def test_leftovers_of_dead_runs_are_cleaned_and_a_live_ones_kept(tmp_path, finished):
    output_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished), str(output_dir)], check=True)
    dead, live = dead_pid(), os.getpid()
    for name in (f".run.staging-{dead}", f".run.staging-{live}"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.safetensors").write_text("partial")
    OutputDirectory(output_dir).prepare()
    assert not (tmp_path / f".run.staging-{dead}").exists()
    assert (tmp_path / f".run.staging-{live}").exists()


KILL_DURING_PUBLISH = """
import os, signal, sys
from hf_recperc.training import main
from hf_recperc.training.output_dir import OutputDirectory
original = OutputDirectory.publish
def publish_then_die(self, staging):
    previous = self.path.with_name(f".{self.path.name}.old-{os.getpid()}")
    os.replace(self.path, previous)  # the first of the two renames, then SIGKILL
    os.kill(os.getpid(), signal.SIGKILL)
OutputDirectory.publish = publish_then_die
sys.exit(main(sys.argv[1:]))
"""


def test_a_kill_during_publish_loses_nothing_and_the_next_start_recovers(tmp_path, finished):
    output_dir = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished), str(output_dir)], check=True)
    before = load_file(output_dir / "model.safetensors")
    resume = [
        "--resume_from_checkpoint",
        "latest",
        "--allow_changed_args",
        "max_steps",
    ]  # 2 steps before, 4 now
    argv = ["--output_dir", str(output_dir), *TINY, *resume]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_PUBLISH, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert not output_dir.exists() and len(list(tmp_path.glob(".run.old-*"))) == 1  # set aside, not lost
    assert len(list(tmp_path.glob(".run.staging-*"))) == 1
    # The next start restores the previous output, removes the dead run's staging directory, and resumes.
    results = run(output_dir, *resume)
    assert results["step"] == 4 and find_checkpoint(output_dir).name == "checkpoint-4"
    assert not list(tmp_path.glob(".run.*"))
    after = load_file(output_dir / "model.safetensors")
    assert before.keys() == after.keys() and not all(torch.equal(before[k], after[k]) for k in before)


# ------------------------------------------------------------------------------------ rows 4, 10, 11: errors


@pytest.mark.parametrize("damaged", ["model.safetensors", "trainer_state.json"])
def test_a_corrupt_checkpoint_file_is_named(finished, tmp_path, damaged):
    copy = tmp_path / "run"
    subprocess.run(["cp", "-r", str(finished), str(copy)], check=True)
    (copy / "checkpoints" / "checkpoint-2" / damaged).write_bytes(b"\x00garbage")
    with pytest.raises(
        ValueError, match=r"resume_from_checkpoint: .*checkpoint-2.* (cannot be loaded|is not a readable)"
    ):
        run(copy, "--max_steps", "2", "--eval_steps", "2", "--resume_from_checkpoint", "latest")


def test_more_accumulation_than_batches_is_refused(tmp_path):
    with pytest.raises(
        ValueError, match="gradient_accumulation_steps: 9 micro-batches per optimiser step is more than the 4"
    ):
        run(tmp_path / "run", "--gradient_accumulation_steps", "9")


@pytest.mark.parametrize("repo_id", ["user/na me", "a/b/c", "x--y", "user/.hidden"])
def test_an_invalid_hub_model_id_fails_before_training(repo_id):
    with pytest.raises(ValueError, match="hub_model_id: expected a Hub repository id"):
        parse_args(["--push_to_hub", "--hub_model_id", repo_id])


CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"


@pytest.mark.cifar10
@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"CIFAR-10 parquet copy not found at {CIFAR10}")
def test_without_a_preset_the_data_picks_one_that_fits(tmp_path):
    """Row 4: a CIFAR-10 directory used to train the 8x8 grayscale digits-mlp on downscaled images."""
    results = train(
        *parse_args(
            ["--output_dir", str(tmp_path / "run"), "--dataset_name", str(CIFAR10), *TINY, "--max_steps", "1"]
        )
    )
    assert results["run"]["preset"] == "cifar-conv-small"
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["image_size"], config["num_channels"]) == (32, 3)
