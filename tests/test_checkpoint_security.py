"""Checkpoints and model folders hold data, never code: no file we load is unpickled (torch.load without
``weights_only=True``, ``pickle.load``), a resumed run is bit-identical to an uninterrupted one, and a stopped or
overwritten run loses nothing of the user's (docs/design.md, "reliability")."""

import json
import pickle
import shutil
import signal
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from hf_recperc.commands import pretrain
from hf_recperc.training import find_checkpoint, parse_args, train
from hf_recperc.training.loop import PretrainingRun, RunStopped

TINY = [
    "--max_train_samples", "128", "--max_eval_samples", "32", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64", "--max_steps", "4", "--eval_steps", "2", "--checkpointing_steps", "2",
    "--report_to", "none", "--monitors", "reconstruction",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


def run(output_dir, *extra):
    return train(*parse_args(["--output_dir", str(output_dir), *TINY, *extra]))


class Payload:
    """Unpickling it creates ``marker``: the side effect of code run from a file."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def plant(path: Path, marker: Path, torch_format: bool) -> None:
    """Replace ``path`` by a pickle whose loading creates ``marker`` (torch's zip format or a plain pickle)."""
    if torch_format:
        torch.save({"state": Payload(marker)}, path)
    else:
        path.write_bytes(pickle.dumps(Payload(marker)))


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging: SIGALRM interrupts a run that spins."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A 4-step run with checkpoints at steps 2 and 4 (step 2 is mid-epoch: batch 2 of 4)."""
    output_dir = tmp_path_factory.mktemp("done") / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the tests (one_thread): float sums depend on the thread count
    try:
        run(output_dir)
    finally:
        torch.set_num_threads(threads)
    return output_dir


def killed_after_step_2(finished: Path, tmp_path: Path) -> Path:
    """``finished`` as a run killed right after its checkpoint of step 2 would have left it."""
    copy = tmp_path / "run"
    (copy / "checkpoints").mkdir(parents=True)
    shutil.copytree(finished / "checkpoints" / "checkpoint-2", copy / "checkpoints" / "checkpoint-2")
    return copy


# ------------------------------------------------------------------------------------------------ Trust 1


def test_a_checkpoint_holds_no_pickle_file(finished):
    """Trust 1: a checkpoint is safetensors and JSON only (accelerate's .bin/.pkl files are gone)."""
    names = sorted(p.name for p in (finished / "checkpoints" / "checkpoint-2").iterdir())
    assert names == [
        "model.safetensors",
        "optimizer.safetensors",
        "rng_state_0.json",
        "scheduler.json",
        "trainer_state.json",
    ]


def test_resume_is_bit_identical_to_the_uninterrupted_run(finished, tmp_path):
    """Trust 1: weights, optimiser moments and learning rate restored from the pickle-free files continue the run
    exactly (the same weights to the bit as the run that was never stopped)."""
    copy = killed_after_step_2(finished, tmp_path)
    results = run(copy, "--resume_from_checkpoint", "latest")
    assert results["step"] == 4
    reference, resumed = load_file(finished / "model.safetensors"), load_file(copy / "model.safetensors")
    assert reference.keys() == resumed.keys()
    assert all(torch.equal(reference[k], resumed[k]) for k in reference)
    optimizer = "checkpoints/checkpoint-4/optimizer.safetensors"
    reference, resumed = load_file(finished / optimizer), load_file(copy / optimizer)
    assert reference.keys() == resumed.keys() and all(
        torch.equal(reference[k], resumed[k]) for k in reference
    )
    scheduler = "checkpoints/checkpoint-4/scheduler.json"
    assert json.loads((finished / scheduler).read_text()) == json.loads((copy / scheduler).read_text())


# What accelerate's save_state wrote (and load_state read: custom_checkpoint_0.pkl with weights_only=False).
ACCELERATE_FILES = ["optimizer.bin", "custom_checkpoint_0.pkl", "random_states_0.pkl", "pytorch_model.bin"]


@pytest.mark.parametrize("torch_format", [True, False], ids=["torch.save", "pickle"])
def test_a_pickle_payload_in_any_checkpoint_file_never_runs(finished, tmp_path, capsys, torch_format):
    """Trust 1: a pickle with a side effect in place of any file of a checkpoint, beside them under the names
    accelerate used, or as a whole accelerate-format checkpoint never runs: the resume is refused with one line
    naming the checkpoint."""
    names = sorted(
        {p.name for p in (finished / "checkpoints" / "checkpoint-2").iterdir()} | set(ACCELERATE_FILES)
    )
    for name in [*names, "accelerate-format"]:
        copy = killed_after_step_2(finished, tmp_path / name)
        checkpoint, marker = copy / "checkpoints" / "checkpoint-2", tmp_path / "payload-ran"
        if name == "accelerate-format":  # an older checkpoint: accelerate's files only, ours removed
            for ours in ("model.safetensors", "optimizer.safetensors", "scheduler.json"):
                (checkpoint / ours).unlink(missing_ok=True)
            for theirs in ACCELERATE_FILES:
                plant(checkpoint / theirs, marker, torch_format)
        else:
            plant(checkpoint / name, marker, torch_format)
        argv = ["--output_dir", str(copy), *TINY, "--resume_from_checkpoint", "latest"]
        assert pretrain.main(argv) == 2, name
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith(f"error: resume_from_checkpoint: {checkpoint}"), (name, err[-3:])
        assert not marker.exists(), f"a pickle as {name} ran"
        assert not (copy / "model.safetensors").exists()  # nothing trained or published


def saved_vit(path: Path) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    config = ViTConfig(
        image_size=8, patch_size=4, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    ViTModel(config).save_pretrained(path)
    ViTImageProcessor(size={"height": 8, "width": 8}).save_pretrained(path)
    return path


def saved_timm(path: Path) -> Path:
    import timm

    model = timm.create_model("resnet10t", pretrained=False, num_classes=0)
    timm.models.save_for_hf(model, path)  # config.json + pytorch_model.bin (timm's default)
    return path


@pytest.mark.parametrize("kind", ["transformers", "timm"])
def test_a_pickle_payload_in_any_file_of_a_model_folder_never_runs(tmp_path, kind):
    """Trust 1: the report (and the trainer's --model_name_or_path) loads model folders through transformers and
    timm with weights-only unpickling: a payload in any file of the folder, or as pytorch_model.bin / .pt / .pkl
    next to it, never runs; loading fails with one ValueError line naming model_name_or_path."""
    from hf_recperc.report.extract import load_backbone

    source = (saved_vit if kind == "transformers" else saved_timm)(tmp_path / "source")
    marker = tmp_path / "payload-ran"
    names = sorted(p.name for p in source.iterdir()) + ["pytorch_model.bin", "model.pt", "model.pkl"]
    for name in dict.fromkeys(names):
        folder = tmp_path / f"planted-{name}"
        shutil.copytree(source, folder)
        if not name.endswith(".json"):  # the planted pickle is the folder's only weights file
            for weights in ("model.safetensors", "pytorch_model.bin"):
                (folder / weights).unlink(missing_ok=True)
        plant(folder / name, marker, torch_format=name.endswith((".bin", ".pt")))
        with pytest.raises(ValueError, match="model_name_or_path") as raised:
            load_backbone(str(folder))
        assert "\n" not in str(raised.value)
        assert not marker.exists(), f"a pickle in {name} ran"


def test_the_trainer_refuses_a_pickle_as_the_starting_weights(tmp_path, capsys):
    """Trust 1: ``--model_name_or_path`` with a planted pytorch_model.bin: refused in one line, nothing ran."""
    from hf_recperc import RecPercAEConfig, RecPercAEForPreTraining

    folder, marker = tmp_path / "model", tmp_path / "payload-ran"
    RecPercAEForPreTraining(RecPercAEConfig.preset("digits-mlp")).save_pretrained(folder)
    (folder / "model.safetensors").unlink()
    plant(folder / "pytorch_model.bin", marker, torch_format=True)
    argv = ["--output_dir", str(tmp_path / "out"), *TINY, "--model_name_or_path", str(folder)]
    assert pretrain.main(argv) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].startswith("error: model_name_or_path: ")
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ Trust 8


def test_overwrite_output_dir_removes_only_our_checkpoints(finished, tmp_path):
    """Trust 8: --overwrite_output_dir removes the checkpoints a run of ours wrote and nothing else there."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    checkpoints = copy / "checkpoints"
    (checkpoints / "best_model.pt").write_bytes(b"the user's own weights")
    (checkpoints / "checkpoint-99").mkdir()  # a folder under our naming without our trainer state: not ours
    (checkpoints / "checkpoint-99" / "notes.txt").write_text("mine")
    (checkpoints / ".tmp-checkpoint-6").mkdir()  # an unfinished checkpoint of ours
    run(copy, "--overwrite_output_dir", "--max_steps", "2", "--eval_steps", "2")
    assert (checkpoints / "best_model.pt").read_bytes() == b"the user's own weights"
    assert (checkpoints / "checkpoint-99" / "notes.txt").read_text() == "mine"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["best_model.pt", "checkpoint-2", "checkpoint-99"]
    assert json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2


def test_resuming_an_older_checkpoint_of_the_same_folder_never_leaves_a_later_one_as_latest(
    finished, tmp_path
):
    """Trust 8/11 (found in review): resuming checkpoint-2 while checkpoint-4 of the same run sits beside it left
    checkpoint-4 as `latest` (a kill, then `--resume_from_checkpoint latest`, continued the abandoned future) and
    `--checkpoints_total_limit` pruned the resumed run's own checkpoints. Refused, or the later ones removed with
    --overwrite_output_dir."""
    copy = tmp_path / "run"
    shutil.copytree(finished, copy)
    older = copy / "checkpoints" / "checkpoint-2"
    with pytest.raises(ValueError, match="resume_from_checkpoint: .*checkpoint-2 is older than checkpoint-4"):
        run(copy, "--resume_from_checkpoint", str(older))
    assert (copy / "checkpoints" / "checkpoint-4").is_dir()
    run(
        copy,
        "--resume_from_checkpoint",
        str(older),
        "--overwrite_output_dir",
        "--checkpoints_total_limit",
        "1",
    )
    assert find_checkpoint(copy).name == "checkpoint-4"  # written again by the resumed run, not the old one
    state = json.loads((copy / "checkpoints" / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["step"] == 4 and sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["checkpoint-4"]


# ------------------------------------------------------------------------------------------------ Trust 10


def test_resuming_mid_epoch_with_a_larger_batch_is_refused_not_a_hang(finished, tmp_path):
    """Trust 10: the checkpoint of step 2 stopped at batch 2 of 4; with batches twice as large an epoch has 2
    batches, so that position is past its end (the old loop span at 100% CPU forever). Now: a one-line error."""
    copy = killed_after_step_2(finished, tmp_path)
    with (
        deadline(120),
        pytest.raises(ValueError, match="field 'batch_in_epoch' is 2, past the end .* 2 batches"),
    ):
        run(copy, "--resume_from_checkpoint", "latest", "--per_device_train_batch_size", "64",
            "--allow_changed_args", "per_device_train_batch_size")  # fmt: skip


def test_a_smaller_batch_mid_epoch_is_refused_an_epoch_boundary_accepted(finished, tmp_path):
    """Trust 10: the position in an epoch counts batches: another batch size continues only from an epoch
    boundary (the checkpoint of step 4 ends the epoch), never from the middle of one."""
    copy = killed_after_step_2(finished, tmp_path)
    resume = ["--resume_from_checkpoint", "latest", "--allow_changed_args", "per_device_train_batch_size"]
    with pytest.raises(ValueError, match="mid-epoch .* resume with --per_device_train_batch_size 32"):
        run(copy, *resume, "--per_device_train_batch_size", "16")
    boundary = tmp_path / "boundary"
    shutil.copytree(finished, boundary)
    with deadline(120):
        results = run(
            boundary, *resume, "max_steps", "--per_device_train_batch_size", "64", "--max_steps", "5"
        )
    assert results["step"] == 5


def test_an_epoch_without_batches_stops_instead_of_spinning(tmp_path, monkeypatch):
    """Trust 10: whatever leaves an epoch empty (a stream shorter than its length), the loop raises."""
    monkeypatch.setattr(PretrainingRun, "epoch_batches", lambda self: iter(()))
    with deadline(120), pytest.raises(RuntimeError, match="epoch 0 gave no training batch"):
        run(tmp_path / "run")


# ------------------------------------------------------------------------------------------------ Trust 11


def test_a_state_whose_step_disagrees_with_the_scheduler_is_refused(finished, tmp_path):
    """Trust 11: a well-formed trainer_state.json with the wrong step (0 after 2 steps) would restart the step
    counter and the learning rate on trained weights; the scheduler's own step contradicts it: refused."""
    copy = killed_after_step_2(finished, tmp_path)
    path = copy / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"step": 0}))
    with pytest.raises(ValueError, match="field 'step' is 0, but the learning-rate scheduler .* at step 2"):
        run(copy, "--resume_from_checkpoint", "latest")


def test_unknown_provenance_resumes_only_with_allow_changed_args_all(finished, tmp_path):
    """Trust 11: a checkpoint without run_args cannot be compared with the new arguments, so it is refused unless
    ``--allow_changed_args all`` says to resume it anyway."""
    copy = killed_after_step_2(finished, tmp_path)
    path = copy / "checkpoints" / "checkpoint-2" / "trainer_state.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"run_args": {}}))
    with pytest.raises(ValueError, match="records no run arguments .* --allow_changed_args all"):
        run(copy, "--resume_from_checkpoint", "latest", "--guidance", "0.5")
    results = run(copy, "--resume_from_checkpoint", "latest", "--allow_changed_args", "all")
    assert results["step"] == 4


# ------------------------------------------------------------------------------------------------ Trust 23


def test_sigterm_says_where_to_resume_releases_the_lock_and_exits_143(
    finished, tmp_path, capsys, monkeypatch
):
    """Trust 23: SIGTERM after the checkpoint of step 2: exit code 143, one line naming the checkpoint and the
    flag to resume, the output_dir lock released; the suggested command then finishes the run."""
    copy = tmp_path / "run"
    original = PretrainingRun.checkpoint

    def checkpoint_then_sigterm(self):
        original(self)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(PretrainingRun, "checkpoint", checkpoint_then_sigterm)
    with pytest.raises(RunStopped) as stopped:
        pretrain.main(["--output_dir", str(copy), *TINY])
    assert stopped.value.code == 143
    line = capsys.readouterr().err.strip().splitlines()[-1]
    checkpoint = copy / "checkpoints" / "checkpoint-2"
    assert line == (
        f"stopped: training stopped by SIGTERM at step 2; the latest checkpoint is {checkpoint}: run the same "
        "command with --resume_from_checkpoint latest to continue from it"
    )
    assert not list(tmp_path.glob(".run.lock")) and find_checkpoint(copy) == checkpoint
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is the run's only
    monkeypatch.setattr(PretrainingRun, "checkpoint", original)
    assert run(copy, "--resume_from_checkpoint", "latest")["step"] == 4
