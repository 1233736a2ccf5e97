"""The trainer runs monitors: the default set, a user's own Monitor, per-layer probes, TensorBoard read back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from huggingface_hub import ModelCard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from hf_recperc.monitors import EVAL, MonitorBatch
from hf_recperc.training import parse_args, train

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
TINY = [
    "--max_train_samples", "256", "--max_eval_samples", "64", "--per_device_train_batch_size", "32",
    "--per_device_eval_batch_size", "64", "--max_steps", "6", "--eval_steps", "3", "--logging_steps", "3",
]  # fmt: skip

pytestmark = pytest.mark.usefixtures("one_thread")


class MeanFeatureNorm:
    """A user's monitor: the mean L2 norm of the validation embeddings."""

    name, features = "mean_norm", ("embedding",)

    def reset(self):
        self.total, self.count = 0.0, 0

    def update(self, batch: MonitorBatch):
        if batch.split == EVAL:
            self.total += float(batch.features["embedding"].float().norm(dim=1).sum())
            self.count += batch.labels.numel()

    def all_reduce(self):
        pass

    def compute(self):
        return {"mean_norm": self.total / self.count}

    def figures(self):
        return {}


def _events(output_dir: Path) -> EventAccumulator:
    """The event file the run's metrics went to (accelerate writes the hyperparameters into a sibling file)."""
    for path in sorted((output_dir / "logs").rglob("events.out.tfevents.*")):
        accumulator = EventAccumulator(str(path), size_guidance={"images": 0, "scalars": 0}).Reload()
        if accumulator.Tags()["scalars"]:
            return accumulator
    raise AssertionError(f"no TensorBoard event file with scalars under {output_dir / 'logs'}")


def test_a_custom_monitor_reaches_history_and_tensorboard(tmp_path):
    output_dir = tmp_path / "run"
    data_args, model_args, args = parse_args(["--output_dir", str(output_dir), *TINY])
    results = train(data_args, model_args, args, monitors=[MeanFeatureNorm()])
    history = json.loads((output_dir / "history.json").read_text())
    assert [r["step"] for r in history] == [3, 6]
    assert (
        all(r["eval/mean_norm"] > 0 for r in history)
        and results["eval/mean_norm"] == history[-1]["eval/mean_norm"]
    )
    events = _events(output_dir)
    scalars = events.Scalars("eval/mean_norm")
    assert [e.step for e in scalars] == [3, 6]
    assert scalars[-1].value == pytest.approx(history[-1]["eval/mean_norm"], rel=1e-6)
    # The default monitors' numbers are there too, and the figures are images in the event file.
    for key in ("eval/knn/accuracy", "eval/spectrum/effective_rank", "eval/layers/layer_2/mean/accuracy/all"):
        assert key in history[-1] and key in events.Tags()["scalars"], key
    images = set(events.Tags()["images"])
    assert {"figures/probe_accuracy", "figures/reconstructions", "figures/eigenvalue_spectrum"} <= images
    picture = events.Images("figures/probe_accuracy")[-1]
    assert picture.width > 100 and picture.height > 100 and picture.encoded_image_string[:4] == b"\x89PNG"
    card = (output_dir / "README.md").read_text()
    assert "kNN accuracy" in card and "effective rank" in card and "| layer_2/mean |" in card
    assert "nan" not in card.lower().replace("nanoseconds", "")
    # Issue 12, row 16: license metadata, the preset the data chose, band errors explained.
    assert ModelCard.load(output_dir / "README.md").data.license == "apache-2.0"
    assert "ae / digits-mlp" in card and "An error of 1 in a band" in card


def test_monitors_flag_selects_the_measurements(tmp_path):
    data_args, model_args, args = parse_args(
        [
            "--output_dir",
            str(tmp_path / "run"),
            *TINY,
            "--monitors",
            "reconstruction",
            "knn",
            "--report_to",
            "none",
        ]
    )
    results = train(data_args, model_args, args)
    measured = {k for k in results if k.startswith("eval/")}
    assert measured == {"eval/reconstruction_mse", "eval/knn/accuracy", "eval/knn/weighted_accuracy"}
    assert results["run"]["monitors"] == ["reconstruction", "knn"]


@pytest.mark.cifar10
@pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"CIFAR-10 parquet copy not found at {CIFAR10}")
@pytest.mark.parametrize(
    "family, preset, layers, features",
    [
        ("ae", "cifar-conv-small", ["all"], ["layer_1/mean", "layer_2/mean", "layer_3/mean"]),
        (
            "mae",
            "cifar-vit-tiny",
            ["1", "-1"],
            ["layer_1/cls", "layer_1/mean", "layer_6/cls", "layer_6/mean"],
        ),
    ],
)
def test_layer_probes_report_one_entry_per_layer(tmp_path, family, preset, layers, features):
    argv = ["--output_dir", str(tmp_path / "run"), "--dataset_name", str(CIFAR10), "--model_family", family]
    argv += ["--preset", preset, "--max_train_samples", "128", "--max_eval_samples", "64", "--max_steps", "2"]
    argv += ["--report_to", "none", "--monitors", "layers", "--probe_layers", *layers]
    argv += ["--probe_pooling", "mean"] if family == "ae" else ["--probe_pooling", "cls", "mean"]
    results = train(*parse_args(argv))
    reported = sorted(
        {
            k.split("/", 2)[2].rsplit("/", 2)[0]
            for k in results
            if k.startswith("eval/layers/") and "/accuracy/" in k
        }
    )
    assert reported == features
    for feature in features:
        assert 0 <= results[f"eval/layers/{feature}/accuracy/all"] <= 1
        assert results[f"eval/layers/{feature}/spectrum/effective_rank"] >= 1


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_every_monitor_on_two_processes_equals_one_process(tmp_path):
    """The same freshly initialised model evaluated by 1 and by 2 gloo processes (each on its own shard of the
    probe rows and of the validation split): every monitor's number agrees."""
    worker = Path(__file__).with_name("distributed_monitor_worker.py")
    records = {}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
        command += ["--master_port", str(29540 + processes), str(worker), str(out)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        records[processes] = json.loads((out / "record.json").read_text())
    assert records[2]["num_processes"] == 2
    keys = [k for k in records[1] if k.startswith("eval/")]
    assert sum(k.startswith("eval/layers/") for k in keys) > 20  # every layer of the MLP, every field
    assert {"eval/knn/accuracy", "eval/spectrum/effective_rank", "eval/band_error/0.00-0.50"} <= set(keys)
    for key in keys:
        # Band errors: the last band is "total minus the others" of a pixel PCA from merged float64 moments whose
        # eigenvectors differ at 1e-12, amplified by the cancellation to ~1e-5 relative.
        tolerance = 1e-4 if key.startswith("eval/band_error/") else 1e-6
        assert records[2][key] == pytest.approx(records[1][key], rel=tolerance, abs=1e-9), key


def test_pretrain_bad_arguments_exit_2_with_one_line(tmp_path):
    done = subprocess.run(
        [sys.executable, "scripts/pretrain.py", "--output_dir", str(tmp_path / "x"), "--monitors", "knn", "psychic"],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: monitors:") and "Traceback" not in done.stderr
    assert not (tmp_path / "x").exists()


# Two launcher start-ups (20 s): CI's second step.
@pytest.mark.slow
def test_under_accelerate_launch_the_error_line_comes_last(tmp_path):
    """accelerate's launcher prints its own traceback after a failed child (and, from 1.16, the child's captured
    stderr inside it): our one line comes after it, once."""
    accelerate = Path(sys.executable).parent / "accelerate"
    done = subprocess.run(
        [str(accelerate), "launch", "scripts/pretrain.py", "--output_dir", str(tmp_path / "x"), "--monitors", "nope"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("error: monitors:"), done.stderr[-2000:]
    assert done.stderr.count("error: monitors:") == 1, done.stderr[-2000:]


def test_help_is_fast_and_states_each_default_once():
    """--help imports no torch (it took 7 s before) and prints no default twice (issue 12, row 15)."""
    code = (
        "import sys\n"
        "from hf_recperc.commands.pretrain import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'LIGHT')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.stdout.strip().endswith("LIGHT"), done.stdout[-500:] + done.stderr[-2000:]
    options = " ".join(done.stdout.split()).split(" --")
    assert options and all(option.count("default") <= 1 for option in options)
