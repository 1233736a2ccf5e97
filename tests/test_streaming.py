"""``--streaming``: disjoint shards per process, an exact position to resume from, and a SIGKILLed streamed run
that resumes to the uninterrupted run's weights."""

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import datasets
import pytest
from safetensors.torch import load_file

from hf_recperc import RecPercAEConfig
from hf_recperc.images import StreamedImages, load_stream
from hf_recperc.training import find_checkpoint

REPO = Path(__file__).resolve().parents[1]
CIFAR10 = REPO.parent / "shared" / "data" / "cifar10"
ACCELERATE = Path(sys.executable).parent / "accelerate"

pytestmark = [
    pytest.mark.cifar10,
    pytest.mark.skipif(not CIFAR10.is_dir(), reason=f"CIFAR-10 parquet copy not found at {CIFAR10}"),
]


@pytest.fixture(scope="module")
def small_parquet(tmp_path_factory):
    """A directory with train.parquet (300 CIFAR rows) and test.parquet (40 rows)."""
    root = tmp_path_factory.mktemp("parquet")
    for split, rows in (("train", 300), ("test", 40)):
        part = datasets.load_dataset("parquet", data_files=str(CIFAR10 / f"{split}.parquet"), split="train")
        part.select(range(rows)).to_parquet(str(root / f"{split}.parquet"))
    return root


def stream(small_parquet, process_index=0, num_processes=1, batch_size=16):
    data = load_stream(SimpleNamespace(
        dataset_name=str(small_parquet), dataset_config_name=None, train_file=None, validation_file=None,
        image_column=None, label_column=None, max_train_samples=None,
    ))  # fmt: skip
    config = RecPercAEConfig.preset("cifar-conv-small")
    return StreamedImages(data, config, batch_size, seed=3, buffer_size=64, process_index=process_index,
                          num_processes=num_processes)  # fmt: skip


def image_ids(batches):
    """A content hash per image of a list of batches, in order."""
    return [
        hashlib.sha1(image.numpy().tobytes()).hexdigest() for batch in batches for image in batch["pixels"]
    ]


def test_processes_see_disjoint_rows_and_the_same_number_of_batches(small_parquet):
    shards = [stream(small_parquet, p, 2) for p in range(2)]
    batches = [list(shard) for shard in shards]
    assert len(batches[0]) == len(batches[1]) == len(shards[0]) == (300 // 2) // 16
    ids = [image_ids(b) for b in batches]
    assert not set(ids[0]) & set(ids[1])
    assert batches[0][0]["pixels"].dtype.is_floating_point is False and batches[0][0]["pixels"].shape == (
        16,
        3,
        32,
        32,
    )


def test_a_resumed_position_continues_the_same_order_and_epochs_reshuffle(small_parquet):
    images = stream(small_parquet)
    images.set_position(1, 0)
    whole = image_ids(list(images))
    images.set_position(1, 5)  # a run restarted after 5 batches of epoch 1
    assert image_ids(list(images)) == whole[5 * 16 :]
    images.set_position(2, 0)
    assert image_ids(list(images)) != whole


def launch(output_dir, env):
    command = [str(ACCELERATE), "launch", "scripts/pretrain.py", "--output_dir", str(output_dir)]
    command += ["--streaming", "--dataset_name", str(CIFAR10), "--preset", "cifar-conv-small"]
    command += ["--max_train_samples", "512", "--per_device_train_batch_size", "32", "--max_steps", "24"]
    command += ["--checkpointing_steps", "4", "--eval_steps", "12", "--shuffle_buffer_size", "128"]
    command += [
        "--probe_max_train_samples",
        "128",
        "--monitor_max_eval_samples",
        "128",
        "--report_to",
        "none",
    ]
    command += ["--monitors", "reconstruction", "online_probe", "--resume_from_checkpoint", "latest"]
    return subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


# A minute of SIGKILL and restart: CI's second step (README: the slow tests).
@pytest.mark.slow
def test_a_killed_stream_resumes_at_its_position(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    reference = launch(tmp_path / "reference", env)
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    interrupted = tmp_path / "interrupted"
    process = launch(interrupted, env)
    deadline = time.time() + 600
    # Killed mid-epoch: after the checkpoint of step 4 (an epoch is 16 batches of 32), before the end.
    while process.poll() is None and time.time() < deadline:
        checkpoint = find_checkpoint(interrupted)
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 4:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model.safetensors").exists(), "the run finished before it could be killed"
    resumed = launch(interrupted, env)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0, log[-3000:]
    assert "resumed from" in log
    weights, resumed_weights = (
        load_file(tmp_path / "reference" / "model.safetensors"),
        load_file(interrupted / "model.safetensors"),
    )
    for name in weights:
        diff = (weights[name].double() - resumed_weights[name].double()).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs diff {diff}"


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_workers_with_streaming_are_used_not_silently_ignored(small_parquet, caplog, workers):
    """Issue 17: ``--dataloader_num_workers`` with ``--streaming`` was silently ignored (then only logged); a stream
    of local parquet files now goes to the loader's workers, lane by lane, and nothing says it is ignored."""
    import logging

    from hf_recperc.images.pipeline import training_data
    from hf_recperc.images.shards import LaneStream

    data = stream(small_parquet).data
    config = RecPercAEConfig.preset("cifar-conv-small")
    data_args = SimpleNamespace(
        streaming=True, shuffle_buffer_size=64, dataloader_num_workers=workers, stream_lanes=2
    )
    args = SimpleNamespace(
        probe_max_train_samples=20, monitor_max_eval_samples=10, per_device_train_batch_size=16, seed=0,
        monitors=["subspace"],
    )  # fmt: skip
    accelerator = SimpleNamespace(process_index=0, num_processes=1, is_main_process=True)
    options = {"num_workers": workers, "pin_memory": False}
    with caplog.at_level(logging.WARNING, logger="hf_recperc.images.pipeline"):
        built = training_data(data, config, None, data_args, args, accelerator, options)
    assert len(built[2]) == 10 and len(built[3]) == 300 // 16
    assert isinstance(built[0], LaneStream) and built[3].loader.num_workers == workers
    assert "dataloader_num_workers" not in caplog.text
