"""The training job: outputs, history format, resumption after SIGKILL, two processes, NaN stops, CIFAR-10 presets.

In-process runs use a tiny budget; the `accelerate launch` runs are real subprocesses (one process, then two gloo
processes), with OMP_NUM_THREADS=1: on a shared 2-core machine, two intra-op threads per process make small models
an order of magnitude slower (threads spin-wait for each other).
"""

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModel, ViTMAEConfig, ViTMAEForPreTraining

import hf_recperc
from hf_recperc import RecPercAEForPreTraining, SubspaceProbe
from hf_recperc.results import (
    ONLINE_PROBE_ACCURACY,
    RECONSTRUCTION_MSE,
    SUBSPACE_FIELDS,
    TRAIN_LOSSES,
    band_key,
    eval_key,
    subspace_key,
    train_key,
)
from hf_recperc.spectral import PCA
from hf_recperc.training import (
    EpochShuffleSampler,
    NonFiniteLossError,
    SpectralBands,
    find_checkpoint,
    parse_args,
    score_subspace_probe,
    train,
)

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared/data/cifar10"
ACCELERATE = Path(sys.executable).parent / "accelerate"

SUBSPACES = ("top:0.9", "bottom:0.2", "all")
BANDS = ("0.00-0.50", "0.50-0.80", "0.80-0.90", "0.90-0.97", "0.97-1.00")
# The history.json format compare_runs.py and the cards read (hf_recperc.results): these keys must be present.
HISTORY_KEYS = (
    {"step", "epoch", eval_key(RECONSTRUCTION_MSE), eval_key(ONLINE_PROBE_ACCURACY)}
    | {eval_key(subspace_key(kind, s)) for kind in SUBSPACE_FIELDS for s in SUBSPACES}
    | {eval_key(band_key(band)) for band in BANDS}
    | {train_key(loss) for loss in TRAIN_LOSSES}
)
MODEL_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
OUTPUT_FILES = MODEL_FILES + (
    "results.json",
    "history.json",
    "reconstructions.png",
    "probe_accuracy.png",
    "band_errors.png",
)

# A few seconds of training on 256 digits: 2 micro-batches of 32 per step, 8 steps = 2 epochs.
TINY = [
    "--max_train_samples", "256",
    "--max_eval_samples", "64",
    "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64",
    "--gradient_accumulation_steps", "2",
    "--max_steps", "8",
    "--eval_steps", "4",
    "--checkpointing_steps", "4",
    "--checkpoints_total_limit", "1",
    "--logging_steps", "2",
]  # fmt: skip


pytestmark = pytest.mark.usefixtures("one_thread")


def run_in_process(output_dir, *extra):
    data_args, model_args, args = parse_args(["--output_dir", str(output_dir), *TINY, *extra])
    return train(data_args, model_args, args)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("tiny") / "run"
    results = run_in_process(output_dir, "--guidance", "0.01", "--corruption", "gaussian:0.1", "--scale_lr")
    return output_dir, results


def subprocess_env(tmp_path):
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
        MPLBACKEND="Agg",
        PYTHONUNBUFFERED="1",
        # A fresh machine: no accelerate config file, no caches.
        HF_HOME=str(tmp_path / "hf_home"),
        HF_RECPERC_CACHE=str(tmp_path / "recperc_cache"),
    )
    return env


def assert_history_format(history, num_records=None):
    assert isinstance(history, list) and history
    if num_records is not None:
        assert len(history) == num_records
    for record in history:
        assert HISTORY_KEYS <= set(record), HISTORY_KEYS - set(record)
        assert isinstance(record["step"], int) and isinstance(record["epoch"], float)
        assert all(isinstance(v, (int, float)) for v in record.values())  # flat, numeric
    assert [r["step"] for r in history] == sorted({r["step"] for r in history})


# ------------------------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    "argv, argument",
    [
        (["--model_family", "vae"], "model_family"),
        (["--preset", "cifar-vit-tiny"], "preset"),  # an MAE preset for the default AE family
        (["--model_family", "mae", "--corruption", "gaussian:0.1"], "corruption"),
        (["--guidance", "-1"], "guidance"),
        (["--config_overrides", "latent_dim"], "config_overrides"),
        (["--band_edges", "0", "0.5", "0.4", "1"], "band_edges"),
        (["--probe_subspaces", "top:1.5"], "top:1.5"),
        (["--mixed_precision", "fp8"], "mixed_precision"),
        (["--max_steps", "0"], "max_steps"),
        (["--push_to_hub"], "hub_model_id"),
        (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], "resume_from_checkpoint"),
        (["--random_crop_padding", "-2"], "random_crop_padding"),
    ],
)
def test_bad_arguments_name_the_argument(argv, argument):
    with pytest.raises(ValueError, match=re.escape(argument)):
        parse_args(argv)


def test_bad_config_override_is_a_value_error(tmp_path):
    with pytest.raises(ValueError, match="config_overrides"):
        run_in_process(tmp_path / "run", "--config_overrides", "latent_dim=-3", "--report_to", "none")
    assert not (tmp_path / "run" / "config.json").exists()


def test_arguments_from_json_and_yaml_files(tmp_path):
    cli = parse_args(["--guidance", "0.01", "--probe_subspaces", "top:0.5", "all", "--output_dir", "x"])
    (tmp_path / "a.json").write_text(
        json.dumps({"guidance": 0.01, "probe_subspaces": ["top:0.5", "all"], "output_dir": "x"})
    )
    (tmp_path / "a.yaml").write_text("guidance: 0.01\nprobe_subspaces: [top:0.5, all]\noutput_dir: x\n")
    assert parse_args([str(tmp_path / "a.json")]) == cli
    assert parse_args([str(tmp_path / "a.yaml")]) == cli


# ------------------------------------------------------------------------------------------- building blocks


def test_epoch_sampler_is_a_function_of_seed_and_epoch():
    sampler = EpochShuffleSampler(50, seed=1)
    first = list(sampler)
    assert sorted(first) == list(range(50))
    sampler.set_epoch(1)
    second = list(sampler)
    assert second != first
    again = EpochShuffleSampler(50, seed=1)
    again.set_epoch(1)
    assert list(again) == second
    other = EpochShuffleSampler(50, seed=0)
    other.set_epoch(2)  # seed 0 epoch 2 must not replay seed 1 epoch 1
    assert list(other) != second


def test_spectral_bands_partition_the_energy():
    generator = torch.Generator().manual_seed(0)
    scales = torch.linspace(3.0, 0.5, 12, dtype=torch.float64)
    X = torch.randn(400, 12, generator=generator, dtype=torch.float64) * scales  # decreasing variances
    pca = PCA().fit(X)
    bands = SpectralBands(pca, [0.0, 0.5, 0.8, 0.9, 0.97, 1.0])
    assert sum(bands.dims) == 12
    x = X[:5].reshape(5, 1, 3, 4)
    r = x + 0.1 * torch.randn(x.shape, generator=generator, dtype=torch.float64)
    error, signal = bands.energies(x, r)
    # The bands partition an orthonormal basis: their energies add up to the squared norms.
    torch.testing.assert_close(error.sum(1), ((r - x) ** 2).flatten(1).sum(1))
    torch.testing.assert_close(signal.sum(1), ((x.flatten(1) - pca.mean_) ** 2).sum(1))
    # The first band is exactly the top:0.5 subspace of docs/science.md section 2.
    top = pca.basis("top:0.5")
    torch.testing.assert_close(error[:, 0], (((r - x).flatten(1) @ top) ** 2).sum(1))


def test_empty_subspace_is_reported_not_raised():
    # Degenerate embeddings: one direction holds ~99% of the variance, so top:0.9 keeps no component.
    generator = torch.Generator().manual_seed(0)
    y = torch.arange(300) % 3
    X = torch.randn(300, 6, generator=generator, dtype=torch.float64) * 0.1
    X[:, 0] *= 100
    X[:, 1] += y  # the labels live in a low-variance direction
    probe = SubspaceProbe(subspaces=("top:0.9", "bottom:0.2", "all")).fit(X, y)
    scores = score_subspace_probe(probe, X, y)
    assert math.isnan(scores["accuracy/top:0.9"]) and scores["dims/top:0.9"] == 0
    assert scores["explained_variance/top:0.9"] == 0.0
    full = SubspaceProbe(subspaces=("bottom:0.2", "all")).fit(X, y).score(X, y)
    for key in ("accuracy/bottom:0.2", "dims/bottom:0.2", "accuracy/all", "dims/all"):
        assert scores[key] == full[key]
    assert scores["num_train"] == 300
    assert probe.subspaces == ("top:0.9", "bottom:0.2", "all")  # the estimator's parameter is restored


# --------------------------------------------------------------------------------------- a tiny in-process run


def test_tiny_run_writes_every_output(tiny_run):
    output_dir, results = tiny_run
    for name in OUTPUT_FILES:
        assert (output_dir / name).is_file(), name
    assert list((output_dir / "logs").rglob("events.out.tfevents.*")), "no TensorBoard events"
    # checkpoints_total_limit=1: only the last checkpoint remains, and no temporary directory.
    assert sorted(p.name for p in (output_dir / "checkpoints").iterdir()) == ["checkpoint-8"]
    assert not [p for p in output_dir.parent.iterdir() if p.name.startswith(".")]


def test_a_run_keeps_what_it_did_not_write_in_output_dir(tmp_path, monkeypatch):
    """Pointing --output_dir at a folder with other files (or at '.') must not delete them."""
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "other_run").mkdir()
    monkeypatch.chdir(tmp_path)
    data_args, model_args, args = parse_args(["--output_dir", ".", *TINY])
    train(data_args, model_args, args)
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "other_run").is_dir()
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "results.json").is_file()


def test_history_and_results_format(tiny_run):
    output_dir, results = tiny_run
    history = json.loads((output_dir / "history.json").read_text())
    assert_history_format(history, num_records=2)
    assert [r["step"] for r in history] == [4, 8]
    assert [r["epoch"] for r in history] == [1.0, 2.0]  # 4 steps of 2 x 32 images = one epoch of 256
    on_disk = json.loads((output_dir / "results.json").read_text())
    assert {k: v for k, v in on_disk.items() if k in HISTORY_KEYS} == {
        k: history[-1][k] for k in HISTORY_KEYS
    }
    assert on_disk["args"]["guidance"] == 0.01 and on_disk["args"]["corruption"] == "gaussian:0.1"
    assert set(on_disk["versions"]) >= {"torch", "transformers", "accelerate", "datasets", "hf_recperc"}
    # MAE-style scaling: lr = base lr * total batch / 256, total batch = 32 x 1 process x 2 accumulation.
    assert on_disk["run"]["effective_learning_rate"] == pytest.approx(1e-3 * 64 / 256)
    assert on_disk["eval/subspace_probe/num_train"] == 256
    assert all(math.isfinite(on_disk[f"eval/band_error/{band}"]) for band in BANDS)


def test_saved_model_loads_with_auto_classes(tiny_run):
    output_dir, _ = tiny_run
    model = AutoModel.from_pretrained(output_dir).eval()
    processor = AutoImageProcessor.from_pretrained(output_dir)
    assert model.config.guidance == 0.01 and model.config.corruption == "gaussian:0.1"
    pixel_values = processor(
        hf_recperc.images.load_image_dataset(max_eval_samples=4).validation[:4]["image"], return_tensors="pt"
    )["pixel_values"]
    trained = RecPercAEForPreTraining.from_pretrained(output_dir).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values=pixel_values).embeddings, trained.get_embeddings(pixel_values)
        )


def test_model_card_holds_the_probe_results(tiny_run):
    output_dir, results = tiny_run
    card = ModelCard.load(output_dir / "README.md")
    assert card.data.library_name == "transformers"
    assert "hf_recperc" in card.data.tags
    metrics = {r.metric_config: r.metric_value for r in card.data.eval_results}
    for spec in SUBSPACES:
        assert metrics[spec] == pytest.approx(results[f"eval/subspace_probe/accuracy/{spec}"], abs=1e-4)
    assert "arXiv" in card.text or "2402.11337" in card.text
    assert "trust_remote_code=True" in card.text


def test_existing_checkpoints_need_resume_or_overwrite(tiny_run):
    output_dir, _ = tiny_run
    with pytest.raises(ValueError, match="resume_from_checkpoint latest"):
        run_in_process(output_dir, "--report_to", "none")


def test_nan_loss_stops_with_the_step_and_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    original = RecPercAEForPreTraining.forward
    calls = {"train": 0}

    def poisoned(self, *args, **kwargs):
        outputs = original(self, *args, **kwargs)
        if self.training:
            calls["train"] += 1
            if calls["train"] > 10:  # micro-batch 11 = optimiser step 6 (2 micro-batches per step)
                outputs.loss = outputs.loss * float("nan")
        return outputs

    monkeypatch.setattr(RecPercAEForPreTraining, "forward", poisoned)
    output_dir = tmp_path / "run"
    with pytest.raises(NonFiniteLossError, match=r"step 6\b.*checkpoint-4"):
        run_in_process(output_dir, "--report_to", "none")
    assert find_checkpoint(output_dir).name == "checkpoint-4"
    assert (find_checkpoint(output_dir) / "model.safetensors").is_file()
    assert not (output_dir / "config.json").exists()  # no model was written


def test_start_from_a_vit_mae_checkpoint(tmp_path):
    vit_mae = ViTMAEForPreTraining(
        ViTMAEConfig(
            image_size=8,
            patch_size=2,
            num_channels=1,
            hidden_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
            decoder_hidden_size=32,
            decoder_num_hidden_layers=1,
            decoder_num_attention_heads=2,
            decoder_intermediate_size=64,
        )
    )
    vit_mae.save_pretrained(tmp_path / "vit-mae")
    results = run_in_process(
        tmp_path / "run",
        "--model_family", "mae",
        "--model_name_or_path", str(tmp_path / "vit-mae"),
        "--max_steps", "2", "--eval_steps", "2", "--report_to", "none",
    )  # fmt: skip
    trained = load_file(tmp_path / "run" / "model.safetensors")
    start = vit_mae.state_dict()
    assert (
        trained["vit.embeddings.patch_embeddings.projection.weight"].shape
        == start["vit.embeddings.patch_embeddings.projection.weight"].shape
    )
    assert results["run"]["model_type"] == "recperc_mae"
    assert len(json.loads((tmp_path / "run" / "config.json").read_text())["id2label"]) == 10


# ------------------------------------------------------------------ `accelerate launch`: default run and SIGKILL


def launch_command(output_dir, *extra, num_processes=None):
    command = [str(ACCELERATE), "launch"]
    if (
        num_processes
    ):  # docs/design.md: --cpu --num_processes 2 silently runs one process; --multi_gpu runs gloo.
        command += ["--multi_gpu", "--num_processes", str(num_processes)]
    return command + ["scripts/pretrain.py", "--output_dir", str(output_dir), *extra]


# The default command with a smaller budget: 100 steps of 64 digits (4.5 epochs), a checkpoint per epoch.
DEFAULT_BUDGET = ["--max_steps", "100", "--resume_from_checkpoint", "latest"]


@pytest.fixture(scope="module")
def launched_runs(tmp_path_factory):
    """One uninterrupted `accelerate launch` run, and one killed with SIGKILL after its first checkpoint then
    restarted with the same command."""
    root = tmp_path_factory.mktemp("launch")
    env = subprocess_env(root)
    reference = root / "reference"
    done = subprocess.run(launch_command(reference, *DEFAULT_BUDGET), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]

    interrupted = root / "interrupted"
    log = open(root / "killed.log", "w")
    process = subprocess.Popen(
        launch_command(interrupted, *DEFAULT_BUDGET), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group: the launcher and the training process die together
    )  # fmt: skip
    deadline = time.time() + 600
    while process.poll() is None and find_checkpoint(interrupted) is None and time.time() < deadline:
        time.sleep(0.02)
    killed_at = find_checkpoint(interrupted)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    assert killed_at is not None, (root / "killed.log").read_text()[-3000:]
    assert not (interrupted / "results.json").exists(), "the run finished before it could be killed"
    assert not (interrupted / "config.json").exists()
    resumed = subprocess.run(launch_command(interrupted, *DEFAULT_BUDGET), cwd=REPO, env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    return reference, interrupted, killed_at, resumed.stderr


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_launch_default_command_writes_a_hub_ready_model(launched_runs):
    reference = launched_runs[0]
    for name in OUTPUT_FILES:
        assert (reference / name).is_file(), name
    results = json.loads((reference / "results.json").read_text())
    assert results["run"]["dataset"] == "digits" and results["run"]["family"] == "ae"
    assert results["step"] == 100
    assert_history_format(json.loads((reference / "history.json").read_text()))
    assert type(AutoModel.from_pretrained(reference)).__name__ == "RecPercAEModel"
    assert AutoImageProcessor.from_pretrained(reference).size == {"height": 8, "width": 8}
    card = ModelCard.load(reference / "README.md")
    assert {r.metric_config for r in card.data.eval_results} >= set(SUBSPACES)


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_readme_main_command_with_no_arguments(tmp_path):
    """README's second command exactly: `accelerate launch scripts/pretrain.py`, default budget and output dir."""
    completed = subprocess.run(
        [str(ACCELERATE), "launch", str(REPO / "scripts" / "pretrain.py")],
        cwd=tmp_path, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-3000:]
    output_dir = tmp_path / "outputs" / "recperc"
    for name in OUTPUT_FILES:
        assert (output_dir / name).is_file(), name
    results = json.loads((output_dir / "results.json").read_text())
    assert results["step"] == 660 and results["run"]["dataset"] == "digits"  # 30 epochs of 22 batches
    assert type(AutoModel.from_pretrained(output_dir)).__name__ == "RecPercAEModel"
    card = ModelCard.load(output_dir / "README.md")
    assert {r.metric_config for r in card.data.eval_results} >= set(SUBSPACES)
    # The default run learns something a probe can read: far above the 10% of chance on 10 digits.
    assert results["eval/subspace_probe/accuracy/all"] > 0.5


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_sigkill_and_resume_reproduces_the_uninterrupted_run(launched_runs):
    reference, interrupted, killed_at, resumed_log = launched_runs
    assert f"resumed from {interrupted / 'checkpoints'}" in resumed_log
    weights, resumed_weights = (
        load_file(reference / "model.safetensors"),
        load_file(interrupted / "model.safetensors"),
    )
    assert weights.keys() == resumed_weights.keys()
    for name in weights:
        diff = (weights[name].double() - resumed_weights[name].double()).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs diff {diff} (killed after {killed_at.name})"
    history = json.loads((reference / "history.json").read_text())
    resumed_history = json.loads((interrupted / "history.json").read_text())
    assert len(history) == len(resumed_history)
    for record, resumed_record in zip(history, resumed_history):
        for key in HISTORY_KEYS:
            assert resumed_record[key] == pytest.approx(record[key], rel=1e-6, abs=1e-9), key


# ---------------------------------------------------------------------------------- two processes (gloo on CPU)


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_two_processes_report_the_same_metrics_and_merge_the_probe(tmp_path, launched_runs):
    output_dir = tmp_path / "two"
    done = subprocess.run(
        launch_command(output_dir, "--max_steps", "20", num_processes=2),
        cwd=REPO, env=subprocess_env(tmp_path), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads((output_dir / "results.json").read_text())
    single = json.loads((launched_runs[0] / "results.json").read_text())
    assert results["run"]["num_processes"] == 2
    assert results["run"]["total_batch_size"] == 128
    metric_keys = {k for k in single if k.startswith(("eval/", "train/"))}
    assert {k for k in results if k.startswith(("eval/", "train/"))} == metric_keys
    # Each process fitted the probe on half of the 1,437 training images; all_reduce merged them.
    assert results["eval/subspace_probe/num_train"] == 1437 == single["eval/subspace_probe/num_train"]
    assert_history_format(json.loads((output_dir / "history.json").read_text()))
    # Both processes scored the whole validation split (gather_for_metrics): accuracies are multiples of 1/360.
    assert (results["eval/online_probe_accuracy"] * 360) == pytest.approx(
        round(results["eval/online_probe_accuracy"] * 360)
    )


# --------------------------------------------------------------------------------------- CIFAR-10 CPU presets


@pytest.mark.cifar10
@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"CIFAR-10 parquet copy not found at {CIFAR10}")
@pytest.mark.parametrize("family, preset", [("ae", "cifar-conv-small"), ("mae", "cifar-vit-tiny")])
def test_cifar10_presets_run_end_to_end(tmp_path, family, preset):
    results = run_in_process(
        tmp_path / "run",
        "--dataset_name", str(CIFAR10),
        "--model_family", family,
        "--preset", preset,
        "--max_train_samples", "128",
        "--max_eval_samples", "64",
        "--max_steps", "2",
        "--eval_steps", "1",  # two evaluations: the curves over training are drawn (one point is not)
        "--report_to", "none",
    )  # fmt: skip
    assert results["run"]["num_train"] == 128 and results["run"]["label_names"][0] == "airplane"
    for key in HISTORY_KEYS:
        assert math.isfinite(results[key]), key
    assert (
        results["run"]["spectral_band_dims"] is not None and sum(results["run"]["spectral_band_dims"]) == 3072
    )
    for name in OUTPUT_FILES:
        assert (tmp_path / "run" / name).is_file(), name
