"""Parallel data loading (issue 17): streamed row groups shared out to (process, worker) pairs without overlap, the
same batches whatever the worker count, exact resume positions, and each process reading its share of the bytes."""

import io
import os
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from PIL import Image

from hf_recperc import RecPercAEConfig
from hf_recperc.images import load_stream
from hf_recperc.images.shards import READ_STATS, RaiseWorkerErrors, lane_stream

ROWS, GROUP = 96, 8  # two files of 48 rows, row groups of 8: 12 units


@pytest.fixture(scope="module")
def grouped_parquet(tmp_path_factory):
    """train-00000/00001.parquet (48 random 8x8 RGB PNGs each, row groups of 8) and test.parquet (12)."""
    root = tmp_path_factory.mktemp("grouped")
    rng = np.random.default_rng(0)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    for name, rows in (("train-00000", ROWS // 2), ("train-00001", ROWS // 2), ("test", 12)):
        images = []
        for _ in range(rows):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(buffer, "PNG")
            images.append({"bytes": buffer.getvalue(), "path": None})
        table = {"image": images, "label": [i % 3 for i in range(rows)]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(root / f"{name}.parquet"), batch_size=GROUP
        )
    return root


def make_stream(root, process=0, processes=1, batch_size=4, lanes=4, max_rows=None):
    data = load_stream(SimpleNamespace(
        dataset_name=str(root), dataset_config_name=None, train_file=None, validation_file=None,
        image_column=None, label_column=None, max_train_samples=max_rows,
    ))  # fmt: skip
    config = RecPercAEConfig.preset("cifar-conv-small", image_size=8)
    accelerator = SimpleNamespace(num_processes=processes, process_index=process)
    return lane_stream(data, config, batch_size, 3, 16, lanes, accelerator)


def batches(stream, workers, epoch=0, skip=0):
    stream.set_position(epoch, skip)
    loader = torch.utils.data.DataLoader(stream, batch_size=None, num_workers=workers)
    return list(RaiseWorkerErrors(loader))


def test_same_seed_same_batches_whatever_the_worker_count(grouped_parquet):
    """Issue 17, exactness: the batches (rows, pixels, labels, order) of a stream are those of 0 workers with 1, 2
    or 4 workers, from the start of an epoch and from a resume position."""
    stream = make_stream(grouped_parquet)
    reference = batches(stream, 0, epoch=1)
    assert len(reference) == len(stream) == ROWS // 4
    for workers in (1, 2, 4):
        got = batches(stream, workers, epoch=1)
        assert [b["rows"].tolist() for b in got] == [b["rows"].tolist() for b in reference], workers
        assert all(torch.equal(a["pixels"], b["pixels"]) for a, b in zip(got, reference))
    resumed = batches(stream, 2, epoch=1, skip=7)  # a run restarted after 7 batches, with 2 workers
    assert [b["rows"].tolist() for b in resumed] == [b["rows"].tolist() for b in reference[7:]]
    assert [b["rows"].tolist() for b in batches(stream, 0, epoch=2)] != [
        b["rows"].tolist() for b in reference
    ]


def test_two_processes_by_two_workers_see_every_row_once_per_epoch(grouped_parquet):
    """Issue 17: with 2 processes x 2 workers, the row ids of an epoch are every row of the split, once; the two
    processes make the same number of batches."""
    for epoch in (0, 1):
        seen = []
        for process in range(2):
            stream = make_stream(grouped_parquet, process, 2)
            got = batches(stream, 2, epoch=epoch)
            assert len(got) == len(stream) == (ROWS // 2) // 4
            seen += [row for batch in got for row in batch["rows"].tolist()]
        assert sorted(seen) == list(range(ROWS))


def test_each_of_two_processes_reads_about_half_of_the_bytes(grouped_parquet):
    """Issue 17: every process used to read the whole stream (keeping every P-th row); now each reads its own row
    groups: about 1/P of the bytes, at most one unit more per lane boundary."""
    units = make_stream(grouped_parquet).plan.units
    total = sum(unit.num_bytes for unit in units)
    shares = []
    for process in range(2):
        READ_STATS.update(bytes=0, rows=0, units=0)
        batches(make_stream(grouped_parquet, process, 2), 0)
        shares.append(READ_STATS["bytes"] / total)
    largest = max(unit.num_bytes for unit in units) / total
    assert all(0.5 - 1e-9 <= share <= 0.5 + 4 * largest for share in shares), (
        shares
    )  # 4 lanes: 3 inner boundaries


def test_max_train_samples_cuts_the_last_row_group(grouped_parquet):
    """``--max_train_samples`` with a stream: only the first rows of the split are read, the last group cut."""
    stream = make_stream(grouped_parquet, max_rows=20)
    seen = sorted(row for batch in batches(stream, 2) for row in batch["rows"].tolist())
    assert seen == list(range(20))


def _mixed_sizes_parquet(path, rows=150, corrupt_rows=()):
    """``rows`` RGB PNGs of mixed sizes (20-40 px), labels 0/1; ``corrupt_rows`` hold bytes that are no image."""
    rng = np.random.default_rng(1)
    images = []
    for row in range(rows):
        buffer = io.BytesIO()
        size = (int(rng.integers(20, 41)), int(rng.integers(20, 41)))
        Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(buffer, "PNG")
        images.append({"bytes": b"not an image" if row in corrupt_rows else buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = {"image": images, "label": [row % 2 for row in range(rows)]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(path))
    return datasets.load_dataset("parquet", data_files=str(path), split="train")


def test_the_store_built_by_workers_equals_the_one_built_by_one_process(tmp_path, monkeypatch):
    """Issue 17: the uint8 store is decoded by the loader workers (in chunks, each worker writing its own rows)
    into the same bytes as one process decodes, cached in the same file (a later run reads it)."""
    from hf_recperc.images import decode_uint8

    split = _mixed_sizes_parquet(tmp_path / "train.parquet")
    serial, where = decode_uint8(split, "image", 3, 24, cache=False)
    assert where == "decoded in memory"
    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "cache"))
    parallel, where = decode_uint8(split, "image", 3, 24, workers=2)
    assert where.startswith("decoded by 1 process(es) x 2 worker(s), cached at ")
    np.testing.assert_array_equal(np.asarray(parallel), serial)
    again, where = decode_uint8(split, "image", 3, 24)
    assert where.startswith("cached at ") and np.array_equal(np.asarray(again), serial)
    in_memory, _ = decode_uint8(split, "image", 3, 24, cache=False, workers=2)
    np.testing.assert_array_equal(in_memory, serial)


def test_a_corrupt_image_decoded_by_a_store_worker_is_one_line_and_nothing_is_cached(tmp_path, monkeypatch):
    """Issue 17, bad input: a corrupt image met by a loader worker while the store is built raises the one-line
    error naming its row and file (not torch's worker traceback), and leaves no store and no partial file."""
    from hf_recperc.images import decode_uint8

    split = _mixed_sizes_parquet(tmp_path / "train.parquet", corrupt_rows={97})
    cache = tmp_path / "cache"
    monkeypatch.setenv("HF_RECPERC_CACHE", str(cache))
    with pytest.raises(ValueError) as caught:
        decode_uint8(split, "image", 3, 24, workers=2)
    message = str(caught.value)
    assert (
        message.startswith("image: row 97 (embedded bytes) is not a readable image: ") and "\n" not in message
    )
    assert "worker" not in message
    assert [p.name for p in cache.rglob("*") if p.is_file()] == []


def test_a_store_kept_larger_than_the_model_crops_there_and_resizes():
    """Issue 17: ``--store_image_size`` keeps the store larger than the model's size; the device pipeline draws
    ``RandomResizedCrop`` on the stored pixels and hands the model its size, and evaluation resizes the whole image
    (antialiased, as the store's own resize: within a grey level of a store at the model's size)."""
    from hf_recperc.images.decode import resize_uint8
    from hf_recperc.images.pipeline import DevicePipeline

    config = RecPercAEConfig.preset("cifar-conv-small", image_size=16)
    coarse = torch.randint(
        0, 256, (16, 3, 6, 6), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    photos = torch.nn.functional.interpolate(coarse.float(), size=(48, 48), mode="bicubic").clamp(0, 255)
    photos = photos.round().to(torch.uint8)  # smooth 48 px images, as photos are at this scale
    large, exact = resize_uint8(photos, 32).numpy(), resize_uint8(photos, 16).numpy()  # as the store resizes
    batch = {"pixels": torch.from_numpy(large), "labels": torch.zeros(16, dtype=torch.long)}
    pipeline = DevicePipeline(config, "cpu", flip=True, resized_crop_scale=(0.2, 1.0))
    trained = pipeline.training(batch, torch.Generator().manual_seed(0))
    assert trained.shape == (16, 3, 16, 16) and torch.isfinite(trained).all()
    evaluated = pipeline.evaluation(batch)["pixel_values"]
    reference = pipeline.evaluation({"pixels": torch.from_numpy(exact), "labels": batch["labels"]})[
        "pixel_values"
    ]
    assert evaluated.shape == reference.shape
    step = 1.0 / (255 * min(config.image_std))  # one grey level, normalised
    assert (evaluated - reference).abs().mean() < 2 * step


@pytest.mark.slow  # two processes under torchrun (about a minute on 2 cores): CI's second step
def test_two_processes_build_one_store_and_split_the_stream(grouped_parquet, tmp_path, monkeypatch):
    """Issue 17, on 2 real gloo processes x 2 loader workers: the store is built by both (each decoding its share
    into one file) and equals one process's; an epoch of the stream gives every row once; each process reads about
    half of the parquet bytes."""
    import hashlib
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    from hf_recperc.images import decode_uint8, load_image_dataset

    worker = Path(__file__).with_name("parallel_data_worker.py")
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "HF_RECPERC_CACHE": str(tmp_path / "c"),
    }
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29571",
    ]
    command += [str(worker), str(tmp_path / "out"), str(grouped_parquet)]
    done = subprocess.run(
        command, cwd=worker.parents[1], env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:]
    records = [json.loads((tmp_path / "out" / f"record-{rank}.json").read_text()) for rank in (0, 1)]
    assert all(r["num_processes"] == 2 for r in records)
    assert records[0]["store"].startswith("decoded by 2 process(es) x 2 worker(s), cached at ")
    assert records[1]["store"] == records[0]["store"]
    data = load_image_dataset(str(grouped_parquet))
    serial, _ = decode_uint8(data.train, data.image_column, 3, 24, cache=False)
    assert {r["store_sha1"] for r in records} == {hashlib.sha1(serial.tobytes()).hexdigest()}
    assert records[0]["batches"] == records[1]["batches"] == (ROWS // 2) // 4
    assert sorted(records[0]["rows"] + records[1]["rows"]) == list(range(ROWS))
    for record in records:
        assert 0.45 <= record["bytes_read"] / record["bytes_total"] <= 0.7, record["bytes_read"]


@pytest.fixture(scope="module")
def cifar_row_groups(tmp_path_factory):
    """512 + 128 CIFAR-10 rows as local parquet with row groups of 32 rows (16 units to share out)."""
    from conftest import CIFAR10

    if not CIFAR10.is_dir():
        pytest.skip(f"CIFAR-10 parquet copy not found at {CIFAR10}")
    root = tmp_path_factory.mktemp("cifar_groups")
    for split, rows in (("train", 512), ("test", 128)):
        part = datasets.load_dataset("parquet", data_files=str(CIFAR10 / f"{split}.parquet"), split="train")
        part.select(range(rows)).to_parquet(str(root / f"{split}.parquet"), batch_size=32)
    return root


def _pretrain(data, output_dir, workers, streaming, env):
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    command = [
        sys.executable,
        "scripts/pretrain.py",
        "--output_dir",
        str(output_dir),
        "--dataset_name",
        str(data),
    ]
    command += ["--preset", "cifar-conv-small", "--per_device_train_batch_size", "32", "--max_steps", "24"]
    command += [
        "--checkpointing_steps",
        "4",
        "--eval_steps",
        "12",
        "--random_flip",
        "--random_resized_crop",
        "0.3",
    ]
    command += [
        "--probe_max_train_samples",
        "128",
        "--monitor_max_eval_samples",
        "128",
        "--report_to",
        "none",
    ]
    command += ["--monitors", "reconstruction", "online_probe", "--resume_from_checkpoint", "latest"]
    command += ["--dataloader_num_workers", str(workers), "--shuffle_buffer_size", "128"]
    command += ["--streaming"] if streaming else []
    return subprocess.Popen(command, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip


@pytest.mark.slow  # three short training runs per path (about a minute each on 2 cores): CI's second step
@pytest.mark.parametrize("streaming", [False, True], ids=["store", "stream"])
def test_a_run_killed_with_workers_resumes_to_the_run_without_workers(cifar_row_groups, tmp_path, streaming):
    """Issue 17, exactness: a run with 2 loader workers (store built by the workers, or a stream read by them),
    SIGKILLed mid-epoch and resumed, ends with the weights (to 1e-6) of an uninterrupted run with 0 workers."""
    import os
    import signal
    import time

    from safetensors.torch import load_file

    from hf_recperc.training import find_checkpoint

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "MPLBACKEND": "Agg"}
    reference = _pretrain(cifar_row_groups, tmp_path / "reference", 0, streaming,
                          {**env, "HF_RECPERC_CACHE": str(tmp_path / "c0")})  # fmt: skip
    assert reference.wait(timeout=600) == 0, reference.stdout.read()[-3000:]
    interrupted, env = tmp_path / "interrupted", {**env, "HF_RECPERC_CACHE": str(tmp_path / "c2")}
    process = _pretrain(cifar_row_groups, interrupted, 2, streaming, env)
    deadline = time.time() + 600
    while (
        process.poll() is None and time.time() < deadline
    ):  # killed after the checkpoint of step 4 (of 16/epoch)
        checkpoint = find_checkpoint(interrupted)
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 4:
            break
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "model.safetensors").exists(), "the run finished before it could be killed"
    resumed = _pretrain(cifar_row_groups, interrupted, 2, streaming, env)
    log = resumed.communicate(timeout=600)[0]
    assert resumed.returncode == 0 and "resumed from" in log, log[-3000:]
    weights, resumed_weights = (
        load_file(tmp_path / "reference" / "model.safetensors"),
        load_file(interrupted / "model.safetensors"),
    )
    for name in weights:
        diff = (weights[name].double() - resumed_weights[name].double()).abs().max().item()
        assert diff <= 1e-6, f"{name}: max abs diff {diff}"


def test_the_compact_store_holds_the_uint8_store_as_jpeg(tmp_path, monkeypatch):
    """Issue 17: ``--store_format jpeg`` keeps the store's images (decoded and resized exactly as the uint8 store)
    re-encoded as JPEG quality 90: each read equals libjpeg-turbo's round trip of the uint8 image, loader workers
    serve it, the file is several times smaller than the uint8 store on photo-like images, and it is cached."""
    from torchvision.io import decode_jpeg, encode_jpeg

    from hf_recperc.images import decode_uint8
    from hf_recperc.images.datasets import StoredImages, collate_stored
    from hf_recperc.images.store import JPEG_QUALITY, jpeg_store

    rng = np.random.default_rng(2)
    images = []
    for _ in range(40):  # smooth 60-80 px pictures with a little texture, as photos are at this scale
        coarse = Image.fromarray(rng.integers(0, 256, (5, 5, 3), dtype=np.uint8))
        side = int(rng.integers(60, 81))
        picture = np.asarray(coarse.resize((side, side), Image.BICUBIC), dtype=np.float64)
        picture = np.clip(picture + rng.normal(0, 3, picture.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, "PNG")
        images.append({"bytes": buffer.getvalue(), "path": None})
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b"])})
    table = {"image": images, "label": [row % 2 for row in range(40)]}
    datasets.Dataset.from_dict(table, features=features).to_parquet(str(tmp_path / "train.parquet"))
    split = datasets.load_dataset("parquet", data_files=str(tmp_path / "train.parquet"), split="train")
    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "cache"))

    raw, _ = decode_uint8(split, "image", 3, 48)
    compact, where = jpeg_store(split, "image", 3, 48, workers=2)
    assert where.startswith("encoded by 2 worker(s), cached at ") and compact.shape == raw.shape
    for row in (0, 17, 39):
        expected = decode_jpeg(encode_jpeg(torch.from_numpy(np.array(raw[row])), quality=JPEG_QUALITY))
        np.testing.assert_array_equal(compact[[row]][0], expected.numpy())
    assert np.abs(compact[np.arange(40)].astype(int) - raw.astype(int)).mean() < 3  # grey levels
    assert os.path.getsize(compact.path) * 4 < raw.nbytes
    stored = StoredImages(compact, np.zeros(40, dtype=np.int64))
    loader = torch.utils.data.DataLoader(stored, batch_size=8, num_workers=2, collate_fn=collate_stored)
    assert torch.equal(
        torch.cat([batch["pixels"] for batch in loader]), torch.from_numpy(compact[np.arange(40)])
    )
    assert jpeg_store(split, "image", 3, 48)[1] == f"cached at {compact.path}"


def _short_run(data, output_dir, workers, streaming=False, extra=()):
    """Four training steps of the tiny conv AE (RandomResizedCrop + flip), in this process; returns the final
    weights and the data-path log line."""
    import logging

    from safetensors.torch import load_file

    from hf_recperc.training import parse_args, train

    argv = [
        "--output_dir", str(output_dir), "--dataset_name", str(data), "--preset", "cifar-conv-small",
        "--config_overrides", "image_size=8,width=4,latent_dim=8", "--per_device_train_batch_size", "8",
        "--max_steps", "4", "--eval_steps", "4", "--random_flip", "--random_resized_crop", "0.3",
        "--probe_max_train_samples", "16", "--monitor_max_eval_samples", "8", "--monitors", "reconstruction",
        "--report_to", "none", "--dataloader_num_workers", str(workers), "--stream_lanes", "4", *extra,
        *(["--streaming"] if streaming else []),
    ]  # fmt: skip
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(record.getMessage())
    logger = logging.getLogger("hf_recperc.training")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        results = train(*parse_args(argv))
    finally:
        logger.removeHandler(handler)
    path = next(line for line in records if line.startswith("data path"))
    return load_file(output_dir / "model.safetensors"), results, path


@pytest.mark.parametrize(
    "streaming, extra",
    [
        (False, ()),
        (True, ()),
        (False, ("--gradient_accumulation_steps", "2")),
        (False, ("--pixel_store", "false")),
    ],
    ids=["store", "stream", "store-accumulation", "processor"],
)
def test_augmenting_in_the_workers_trains_exactly_as_in_the_main_process(
    grouped_parquet, tmp_path, monkeypatch, streaming, extra
):
    """Issue 17, speed with exactness: on a CPU run with loader workers, the workers run the training augmentation
    (RandomResizedCrop + flip) with the training step's own seeded generator, so 2 workers give the weights and
    losses of 0 workers bit for bit, on the store path (also accumulating micro-batches), the image processor's path
    and a local parquet stream."""
    from hf_recperc.results import TRAIN_LOSSES, train_key

    monkeypatch.setenv("HF_RECPERC_CACHE", str(tmp_path / "cache"))
    without, results0, path0 = _short_run(grouped_parquet, tmp_path / "w0", 0, streaming, extra)
    with_workers, results2, path2 = _short_run(grouped_parquet, tmp_path / "w2", 2, streaming, extra)
    assert "augmentation in the loader workers" in path2 and "augmentation in the loader workers" not in path0
    losses = [train_key(name) for name in TRAIN_LOSSES]
    assert [results0[key] for key in losses] == [results2[key] for key in losses]
    for name, value in without.items():
        assert torch.equal(value, with_workers[name]), name


def test_a_worker_augments_with_the_training_steps_draws():
    """Issue 17: :class:`WorkerAugmentation` gives the pixels of the main process's augmentation with the step's
    generator, leaves that generator where the main process would (so the model's noise and masks follow the same
    draws), and a batch augmented for another micro-batch is refused, not trained on."""
    from hf_recperc.images.pipeline import DevicePipeline, WorkerAugmentation, step_seed

    config = RecPercAEConfig.preset("cifar-conv-small", image_size=16)
    pixels = torch.randint(
        0, 256, (6, 3, 20, 20), generator=torch.Generator().manual_seed(0), dtype=torch.uint8
    )
    batch = {"pixels": pixels, "labels": torch.arange(6)}
    pipeline = DevicePipeline(config, "cpu", flip=True, resized_crop_scale=(0.2, 1.0))
    augment = WorkerAugmentation(pipeline, seed=7, process_index=1, batches_per_epoch=10)
    made = augment(batch, epoch=2, batch_in_epoch=3)  # micro-batch 23 of process 1
    main = torch.Generator().manual_seed(step_seed(7, 23, 1))
    expected = pipeline.training(batch, main)
    continued = torch.Generator().manual_seed(step_seed(7, 23, 1))
    assert torch.equal(pipeline.training(made, continued), expected)
    assert torch.equal(torch.rand(4, generator=continued), torch.rand(4, generator=main))
    assert torch.equal(made["labels"], batch["labels"]) and "pixels" not in made
    assert made["augmented"].dtype == torch.uint8 and made["augmented"].shape == (
        6,
        3,
        16,
        16,
    )  # 1/4 the bytes
    with pytest.raises(RuntimeError, match="another micro-batch"):
        pipeline.training(made, torch.Generator().manual_seed(step_seed(7, 24, 1)))


@pytest.mark.parametrize(
    "options", [{"resized_crop_scale": (0.2, 1.0)}, {"crop_padding": 2}], ids=["rrc", "crop"]
)
def test_training_augmentation_is_uint8_at_the_model_size_then_normalised(options):
    """Issue 17: the training augmentation of a uint8 batch gives uint8 pixels at the model's size (resampled and
    rounded, as PIL-based reference pipelines), then the normalisation makes the model's input without a draw:
    what a loader worker hands over is a quarter of the float32 bytes, and every path trains on the same pixels."""
    from hf_recperc.images.augment import normalise_uint8
    from hf_recperc.images.pipeline import DevicePipeline

    config = RecPercAEConfig.preset("cifar-conv-small", image_size=16)
    pixels = torch.randint(
        0, 256, (5, 3, 24, 24), generator=torch.Generator().manual_seed(1), dtype=torch.uint8
    )
    batch = {"pixels": pixels, "labels": torch.arange(5)}
    pipeline = DevicePipeline(config, "cpu", flip=True, **options)
    augmented = pipeline.augment(batch, torch.Generator().manual_seed(3))
    assert augmented.dtype == torch.uint8 and augmented.shape == (5, 3, 16, 16)
    trained = pipeline.training(batch, torch.Generator().manual_seed(3))
    assert torch.equal(trained, normalise_uint8(augmented, pipeline.mean, pipeline.std))
