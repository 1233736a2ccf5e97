"""The one guarded writer (hf_recperc/publish): every command keeps the user's files, publishes its own as a set,
and leaves no partial file behind (docs/design.md, "reliability")."""

import errno
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from huggingface_hub import HfApi

import hf_recperc.images.sources
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
from hf_recperc.metric_hub import space_requirement, write_metric_space
from hf_recperc.publish import (
    MANIFEST,
    OutputDirectory,
    Outputs,
    atomic_path,
    clean_partials,
    save_npy,
    save_torch,
    write_json,
)
from hf_recperc.publish.atomic import HOST
from hf_recperc.report.run import write_report
from hf_recperc.training.output_dir import OutputDirectory as TrainerOutputDirectory

PINNED = "git+https://github.com/example/hf_recperc@" + "89abcdef" * 5
TINY_TRAINING = [
    "--max_train_samples", "64", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--max_steps", "1", "--eval_steps", "1", "--report_to", "none", "--monitors", "reconstruction",
]  # fmt: skip


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` (hidden ones too) and its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()
    }


def dead_pid() -> int:
    """The PID of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def fill(directory: Path, names) -> Path:
    """A folder holding the user's own files under ``names`` (distinct bytes each)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        (directory / name).write_bytes(f"the user's own {name}\n".encode())
    return directory


@pytest.fixture
def no_work(monkeypatch):
    """Loading data, a model or a run is "work": each raises, so a command that gets there fails the test."""

    def work(*args, **kwargs):
        raise AssertionError("the command started its work before refusing the output folder")

    monkeypatch.setattr(hf_recperc.images.sources, "load_image_dataset", work)
    monkeypatch.setattr("hf_recperc.report.run.load_backbone", work)
    monkeypatch.setattr("hf_recperc.commands.compare_runs.load_run", work)


def _training_run_folder(root: Path) -> Path:
    """A model folder as the trainer leaves it: its figures listed in its manifest (the report's card shows them)."""
    folder = fill(
        root / "model", ["accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png", "results.json"]
    )
    files = ["accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png", "results.json"]
    (folder / MANIFEST).write_text(json.dumps({"files": files}))
    return folder


# command -> (main, argv for a folder, the names pre-filled in the folder, the folder, the option naming it)
def _cases(tmp: Path) -> dict:
    run_dir = tmp / "some_run"
    return {
        "pretrain": (
            pretrain.main,
            ["--output_dir", str(tmp / "out"), *TINY_TRAINING],
            # the remote-code files save_pretrained copies (Trust 6) and the run files
            [
                "README.md",
                "config.json",
                "modeling_recperc.py",
                "configuration_recperc.py",
                "layers.py",
                "corruption.py",
                "processing.py",
                "validation.py",
            ],
            tmp / "out",
            "output_dir",
        ),
        "report": (
            report.main,
            ["--model_name_or_path", str(tmp / "model"), "--output_dir", str(tmp / "model")],
            ["report.md", "report.json"],  # plus the training run's figures (_training_run_folder)
            tmp / "model",
            "output_dir",
        ),
        "alignment": (
            alignment.main,
            ["--output_dir", str(tmp / "out"), "--corruptions", "none", "gaussian:0.1"],
            ["alignment.json", "alignment.png", "denoising_benefit.png"],
            tmp / "out",
            "output_dir",
        ),
        "pca_classification": (
            pca_classification.main,
            ["--output_dir", str(tmp / "out"), "--max_steps", "1"],
            ["results.json", "accuracy_vs_variance.png"],
            tmp / "out",
            "output_dir",
        ),
        "pca_figure": (
            pca_figure.main,
            ["--output", str(tmp / "out" / "figure.png")],
            ["figure.png"],
            tmp / "out",
            "output",
        ),
        "compare_runs": (
            compare_runs.main,
            ["--output", str(tmp / "out" / "runs.png"), str(run_dir)],
            ["runs.png"],
            tmp / "out",
            "output",
        ),
        "push_metric": (
            push_metric.main,
            [
                "--repo_id",
                "someone/probe_metric",
                "--output_dir",
                str(tmp / "probe_metric"),
                "--hf_recperc_requirement",
                PINNED,
            ],
            ["README.md", "requirements.txt", "app.py", "probe_metric.py"],
            tmp / "probe_metric",
            "output_dir",
        ),
    }


@pytest.mark.parametrize(
    "command",
    ["pretrain", "report", "alignment", "pca_classification", "pca_figure", "compare_runs", "push_metric"],
)
def test_every_command_refuses_before_work_and_keeps_same_named_user_files(
    command, tmp_path, capsys, no_work
):
    """Trust 8 (and 6, 7): every command writes through the one guarded writer; a folder pre-filled with the user's
    files under the names the command writes is refused before any work, with one line naming the option and every
    file, and the folder stays byte for byte as it was (the report into the model's folder keeps the training run's
    figures; push-metric keeps a README.md / requirements.txt / app.py; the trainer its modeling-file names)."""
    main, argv, names, folder, option = _cases(tmp_path)[command]
    if command == "report":
        _training_run_folder(tmp_path)
        names = [*names, "accuracy_per_layer.png", "eigenvalue_spectrum_per_layer.png"]
    fill(folder, names)
    before = snapshot(tmp_path)
    assert main(argv) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and error.startswith(f"error: {option}: ")
    assert all(name in error for name in names if option == "output_dir"), error
    assert f"--{option}" in error
    assert snapshot(tmp_path) == before  # nothing written, nothing removed (no lock, no manifest either)


def test_push_to_hub_writes_nothing_locally(tmp_path, monkeypatch):
    """Trust 8: push-to-hub only reads the run folder (uploads it as it is): every file stays byte-identical."""
    folder = fill(
        tmp_path / "run", ["config.json", "model.safetensors", "preprocessor_config.json", "README.md"]
    )
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: f"https://hf.co/{repo_id}")
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kwargs: None)
    before = snapshot(tmp_path)
    assert push_to_hub.main([str(folder), "--hub_model_id", "someone/model"]) == 0
    assert snapshot(tmp_path) == before


def test_commands_republish_over_their_own_output_and_keep_everything_else(tmp_path, capsys):
    """Trust 8: a second run into the same folder replaces the command's own files (no refusal), keeps the user's
    other files, and a user's file beside a single-file output stays."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "history.json").write_text(
        json.dumps([{"step": 1, "epoch": 1.0, "eval/reconstruction_mse": 0.5}])
    )
    out = fill(tmp_path / "figures", ["mine.png"])
    for _ in range(2):
        assert compare_runs.main(["--output", str(out / "runs.png"), str(run_dir)]) == 0
    space = fill(tmp_path / "probe_metric", ["notes.txt"])
    argv = [
        "--repo_id",
        "someone/probe_metric",
        "--output_dir",
        str(space),
        "--hf_recperc_requirement",
        PINNED,
    ]
    for _ in range(2):
        assert push_metric.main(argv) == 0
    assert (out / "mine.png").read_bytes() == b"the user's own mine.png\n"
    assert (space / "notes.txt").read_bytes() == b"the user's own notes.txt\n"
    assert (out / "runs.png").read_bytes().startswith(b"\x89PNG")
    assert not [p for p in tmp_path.rglob("*") if ".tmp-" in p.name or ".staging-" in p.name]


# ----------------------------------------------------------------------------------- the manifest (Trust 2)


@pytest.mark.parametrize("file_by_file", [True, False], ids=["file by file", "directory swap"])
def test_a_forged_manifest_removes_nothing_but_the_commands_own_files(tmp_path, file_by_file):
    """Trust 2: the manifest is no deletion list: '../victim.txt', an absolute path, a directory (checkpoints/) and
    a name the command does not write survive a publish; only a declared file of the previous set is removed."""
    victim = fill(tmp_path, ["victim.txt"]) / "victim.txt"
    absolute = fill(tmp_path / "elsewhere", ["absolute.txt"]) / "absolute.txt"
    output = tmp_path / "run"
    fill(output, ["notes.txt", "band_errors.png"])
    fill(output / "checkpoints", ["weights.bin"])
    listed = ["../victim.txt", str(absolute), "checkpoints", "notes.txt", "band_errors.png", "..", "/"]
    (output / MANIFEST).write_text(json.dumps({"files": listed}))
    directory = TrainerOutputDirectory(output)
    directory.prepare()
    directory.file_by_file = file_by_file
    staging = directory.staging()
    (staging / "config.json").write_text("{}")
    directory.publish(staging)
    directory.release_lock()
    assert victim.is_file() and absolute.is_file()
    assert (output / "checkpoints" / "weights.bin").is_file() and (output / "notes.txt").is_file()
    assert not (output / "band_errors.png").exists()  # the one stale file the trainer does write
    assert json.loads((output / MANIFEST).read_text())["files"] == ["config.json"]


# ------------------------------------------------------------------------ the folder's own metadata (Trust 4)


def _other_group() -> int | None:
    """A group other than this process's that this user may give a folder (root: any)."""
    if os.geteuid() == 0:
        return os.getegid() + 4242
    others = [group for group in os.getgroups() if group != os.getegid()]
    return others[0] if others else None


@pytest.mark.parametrize("mode", [0o700, 0o2770], ids=["private 700", "setgid group folder"])
def test_publishing_keeps_the_folders_mode_and_group(tmp_path, mode):
    """Trust 4: publishing replaces the folder with a new copy; the copy keeps the original's permission bits,
    setgid bit and group (a 700 folder stayed 755, a setgid group folder became the user's), and a file written
    into a setgid folder gets its group."""
    output = tmp_path / "shared"
    output.mkdir()
    group = _other_group() if mode & stat.S_ISGID else os.getegid()
    if group is None:
        pytest.skip("this user belongs to no second group")
    os.chown(output, -1, group)
    os.chmod(output, mode)
    directory = OutputDirectory(output, Outputs("test", frozenset({"result.json"})))
    directory.write({"result.json": lambda path: write_json(path, {"ok": 1})})
    assert not directory.file_by_file  # the directory swap, not the fallback
    info = output.stat()
    assert stat.S_IMODE(info.st_mode) == mode and info.st_gid == group
    if mode & stat.S_ISGID:
        assert (output / "result.json").stat().st_gid == group


def test_a_folder_of_another_owner_is_published_file_by_file(tmp_path, monkeypatch):
    """Trust 4: a folder the user does not own cannot be recreated as it was: its files are renamed in instead."""
    output = tmp_path / "theirs"
    output.mkdir()
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(output).st_uid + 1)
    directory = OutputDirectory(output, Outputs("test", frozenset({"result.json"})))
    inode = output.stat().st_ino
    directory.write({"result.json": lambda path: write_json(path, {"ok": 1})})
    assert directory.file_by_file and output.stat().st_ino == inode


# ------------------------------------------------------------------- the metric Space's requirement (Trust 3)


def test_the_metric_space_pins_the_commit_this_copy_was_installed_from(tmp_path, monkeypatch):
    """Trust 3: the default requirement is the git commit pip recorded for this copy (PEP 610), pinned."""

    class Installed:
        def read_text(self, name):
            assert name == "direct_url.json"
            return json.dumps({"url": "https://github.com/example/hf_recperc", "vcs_info": {"vcs": "git", "commit_id": "ab" * 20}})  # fmt: skip

    monkeypatch.setattr("hf_recperc.metric_hub.metadata.distribution", lambda name: Installed())
    assert space_requirement() == f"hf_recperc @ git+https://github.com/example/hf_recperc@{'ab' * 20}"
    folder = write_metric_space(tmp_path, "someone/probe_metric")
    assert (folder / "requirements.txt").read_text().splitlines()[0] == space_requirement()
    wheel = "https://example.org/hf_recperc-0.1.0-py3-none-any.whl#sha256=" + "c" * 64
    assert space_requirement(f"hf_recperc @ {wheel}") == f"hf_recperc @ {wheel}"


# ------------------------------------------------------------------------------------ the report (Trust 7)


def test_the_report_replaces_its_own_set_and_nothing_else(tmp_path):
    """Trust 7: write_report replaces the previous report's files (a stale curve figure goes), never a user's
    report.md, and leaves the user's other files alone."""
    from matplotlib.figure import Figure

    report = {"finding": "x", "model": {"name_or_path": "m"}, "data": {}, "runtime": {}, "subspaces": []}
    folder = fill(tmp_path / "reports", ["notes.md"])
    figures = {"accuracy_curve_layer_1_mean": Figure(), "accuracy_per_layer": Figure()}
    markdown = "hf_recperc.report.run._markdown"
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(markdown, lambda report: "# report\n")
        write_report(report, figures, folder)
        write_report(report, {"accuracy_per_layer": Figure()}, folder)
        assert not (folder / "accuracy_curve_layer_1_mean.png").exists()
        assert (folder / "notes.md").read_bytes() == b"the user's own notes.md\n"
        mine = fill(tmp_path / "mine", ["report.md"])
        with pytest.raises(
            ValueError, match="output_dir: .* did not write: report.md; choose another --output_dir"
        ):
            write_report(report, {}, mine)
    assert (mine / "report.md").read_bytes() == b"the user's own report.md\n"


# ------------------------------------------------------------------------- partial files (Trust 22)


@pytest.mark.parametrize("writer", ["npy", "torch", "figure"])
def test_a_failed_write_leaves_no_partial_file(tmp_path, writer, monkeypatch):
    """Trust 22: a write that fails (disk full) removes its partial file; the target is not created."""
    import torch
    from matplotlib.figure import Figure

    from hf_recperc.plotting import save_figure

    def full_disk(*args, **kwargs):
        target = args[1] if writer == "figure" else args[0 if writer == "npy" else 1]
        handle = target if hasattr(target, "write") else open(target, "wb")  # noqa: SIM115
        handle.write(b"half a file")
        handle.flush()
        raise OSError(errno.ENOSPC, "No space left on device")

    target = tmp_path / {"npy": "a.npy", "torch": "a.pt", "figure": "a.png"}[writer]
    with pytest.raises(OSError, match="No space left"):
        if writer == "npy":
            monkeypatch.setattr(np, "save", full_disk)
            save_npy(target, np.zeros(3))
        elif writer == "torch":
            monkeypatch.setattr(torch, "save", lambda payload, path: full_disk(payload, path))
            save_torch(target, {"x": torch.zeros(3)})
        else:
            monkeypatch.setattr(Figure, "savefig", lambda self, path, **kwargs: full_disk(self, path))
            save_figure(Figure(), target)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_cache_write_and_dead_writers_leave_no_partial_files(tmp_path, monkeypatch):
    """Trust 22: the PCA cache (as the pixel caches and the spectrum cache) removes the partial file of a failed
    write, and removes the partial files killed processes left (this version's and earlier ones' names), keeping
    those of live writers."""
    from hf_recperc.experiments import fit_pixel_pca

    cache = tmp_path / "cache"
    pca_dir = cache / "pca"
    pca_dir.mkdir(parents=True)
    dead, live = dead_pid(), os.getpid()
    leftovers = [
        f"abc.{dead}.tmp.npz",
        f"abc.{dead}.tmp.npy",
        f"abc.{dead}.tmp",
        f".abc.tmp-{HOST}-{dead}.npz",
    ]
    kept = [f".abc.tmp-{HOST}-{live}.npz", "abc.npz", "notes.tmp"]
    fill(pca_dir, leftovers + kept)
    rows = np.random.default_rng(0).normal(size=(20, 6)).astype(np.float32)

    def full_disk(handle, **arrays):
        handle.write(b"half an npz")
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(np, "savez", full_disk)
        with pytest.raises(OSError, match="No space left"):
            fit_pixel_pca(rows, cache_dir=str(cache))
    assert sorted(p.name for p in pca_dir.iterdir()) == sorted(kept)
    fit_pixel_pca(rows, cache_dir=str(cache))  # a complete entry now
    assert len([p for p in pca_dir.glob("*.npz") if not p.name.startswith(".")]) == 2  # abc.npz and the entry


def test_clean_partials_leaves_user_files_and_other_machines_alone(tmp_path):
    """Trust 22: outside the caches only this version's partial names are cleaned, and a partial file of another
    machine (a shared cache) is kept while it is recent."""
    dead = dead_pid()
    names = [f"report.{dead}.tmp.npy", f".a.tmp-otherhost-{dead}.npy", f".a.tmp-{HOST}-{dead}.json"]
    fill(tmp_path, names)
    removed = clean_partials(tmp_path)
    assert [p.name for p in removed] == [f".a.tmp-{HOST}-{dead}.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[:2])


def test_atomic_path_keeps_the_suffix_last_for_writers_that_read_it(tmp_path):
    """The partial name ends in the target's suffix (savefig and np.save read the format from it)."""
    with atomic_path(tmp_path / "figure.png") as partial:
        assert partial.suffix == ".png" and partial.name.startswith(".figure.tmp-")
        partial.write_bytes(b"png")
    assert (tmp_path / "figure.png").read_bytes() == b"png"


def test_a_results_json_that_is_not_a_runs_never_makes_the_folder_the_trainers(tmp_path):
    """Trust 6/8 (found in review): a folder without the trainer's manifest counted as an earlier run's output as
    soon as it held any ``results.json``, so the user's ``README.md`` beside their own ``results.json`` (or
    pca-classification's ``results.json``) was overwritten without a word. Only a run's ``results.json`` counts."""
    from hf_recperc.commands.pca_classification import PCA_CLASSIFICATION_OUTPUTS

    users = tmp_path / "users"
    users.mkdir()
    (users / "README.md").write_text("my notes\n")
    (users / "results.json").write_text('{"mine": 1}\n')
    assert TrainerOutputDirectory(users).collisions() == {"README.md", "results.json"}

    shared = tmp_path / "shared"
    OutputDirectory(shared, PCA_CLASSIFICATION_OUTPUTS).write(
        {"results.json": lambda path: path.write_text("[]")}
    )
    assert TrainerOutputDirectory(shared).collisions() == {"results.json"}

    earlier_run = tmp_path / "earlier_run"
    earlier_run.mkdir()
    (earlier_run / "README.md").write_text("card\n")
    (earlier_run / "results.json").write_text(json.dumps({"args": {}, "run": {}, "versions": {}}))
    assert TrainerOutputDirectory(earlier_run).collisions() == set()


def test_replace_directory_swaps_a_whole_directory_in(tmp_path):
    """A checkpoint directory is renamed into place whole; one of the same name (the periodic checkpoint of the
    step the run ends at) is replaced, and nothing set aside is left."""
    from hf_recperc.publish.atomic import replace_directory

    final, staging = tmp_path / "checkpoint-5", tmp_path / ".tmp-checkpoint-5"
    for directory, text in ((final, "periodic"), (staging, "final")):
        directory.mkdir()
        (directory / "trainer_state.json").write_text(text)
    replace_directory(staging, final)
    assert (final / "trainer_state.json").read_text() == "final"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-5"]
