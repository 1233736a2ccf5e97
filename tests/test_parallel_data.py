"""Parallel data loading (issue 17): streamed row groups shared out to (process, worker) pairs without overlap, the
same batches whatever the worker count, exact resume positions, and each process reading its share of the bytes."""

import io
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
