"""Issue 13: the evaluate module streamed batch by batch equals the array call, across processes too."""

import atexit
import functools
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from conftest import assert_same_metric_results

import hf_recperc
import hf_recperc.streaming
from hf_recperc.publish.atomic import HOST

SUBSPACES = ["top:0.9", "bottom:0.2", "first:3", "last:4", "all"]
WORKER = Path(__file__).with_name("metric_stream_worker.py")


def make_problem(num_rows=600, dim=12, seed=0):
    """float64 features with a loud label-free top and a quiet label-carrying bottom, 3 classes."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_rows) % 3)
    features = (
        rng.normal(size=(num_rows, dim)) * np.geomspace(5, 0.2, dim) + 2.0
    )  # offset: exercises the shift
    features[:, -3:] += 0.5 * np.eye(3)[labels]
    return features, labels


def load(**kwargs):
    return evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY, **kwargs)


def test_streamed_evaluated_rows_equal_the_array_call_exactly():
    metric = load()
    X, y = make_problem()
    expected = metric.compute(predictions=X, references=y, subspaces=SUBSPACES)
    for rows in np.array_split(np.arange(550), 15):  # numpy batches, torch batches and single rows
        if rows[0] % 2:
            metric.add_batch(predictions=torch.from_numpy(X[rows]), references=torch.from_numpy(y[rows]))
        else:
            metric.add_batch(predictions=X[rows], references=y[rows])
    for row in range(550, 580):
        metric.add(prediction=X[row], reference=y[row])
    assert len(metric) == 580
    # The last rows as compute arguments count as a final batch (evaluate's convention).
    streamed = metric.compute(predictions=X[580:], references=y[580:], subspaces=SUBSPACES)
    assert streamed == expected  # the same concatenated rows through the same code: bit for bit
    with pytest.raises(ValueError, match="compute: no data"):
        metric.compute()  # compute() resets the stream


def test_streamed_rows_over_several_blocks_equal_the_array_call_exactly():
    # 40,000 rows fill three 16,384-row blocks; the 80/20 split regroups its training chunks inside them.
    X, y = make_problem(num_rows=40_000, dim=8, seed=3)
    X = X.astype(np.float32)
    X[-7_000:] = X[-7_000:].astype(np.float16)  # representable in float16: the half batches stay exact
    metric = load()
    expected = metric.compute(predictions=X, references=y, subspaces=SUBSPACES)
    bounds = [0, 1_000, 16_000, 17_000, 33_000, 40_000]  # batches across block boundaries, one of 16,000 rows
    for low, high in zip(bounds[:-1], bounds[1:]):
        batch = X[low:high] if low < 33_000 else torch.from_numpy(X[low:high]).half()
        metric.add_batch(predictions=batch, references=y[low:high])
    assert metric.compute(subspaces=SUBSPACES) == expected


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_refused_wider_batch_leaves_the_stored_rows_in_their_dtype(split):
    X, y = make_problem(num_rows=3_000, dim=16)
    X = X.astype(np.float32)
    reference, metric = load(), load()
    for stream in (reference, metric):
        stream.add_batch(predictions=X[:2_000], references=y[:2_000], split=split)
    bad = np.ones((10, 16))  # float64 (numpy's default) with a NaN: widening first would change every row
    bad[3, 4] = np.nan
    with pytest.raises(ValueError, match="predictions: contains NaN or infinite values"):
        metric.add_batch(predictions=bad, references=np.zeros(10, int), split=split)
    for stream in (reference, metric):
        stream.add_batch(predictions=X[2_000:], references=y[2_000:])
    assert metric.compute(subspaces=SUBSPACES) == reference.compute(subspaces=SUBSPACES)


def test_a_probe_stream_used_again_after_compute_never_hands_one_block_out_twice():
    blocks = hf_recperc.streaming._ACCUMULATE_ROWS
    rng = np.random.default_rng(0)

    def rows(num_rows):
        labels = rng.permutation(np.arange(num_rows) % 3)
        features = (rng.normal(size=(num_rows, 6)) + 1.0).astype(np.float32)
        features[:, -3:] += np.eye(3, dtype=np.float32)[labels]
        return torch.from_numpy(features), torch.from_numpy(labels)

    train = [rows(blocks), rows(1_000), rows(1_000)]
    test = [rows(100), rows(100), rows(blocks + 5_000)]
    stream = hf_recperc.streaming.ProbeStream()
    stream.add(*test[0])  # training moments carry over from one compute() to the next, evaluated rows do not
    stream.add(*train[0], split="train")  # one whole block, folded and given back to the pool
    stream.compute()
    for train_rows, test_rows in zip(train[1:], test[1:]):
        stream.add(*train_rows, split="train")
        stream.add(*test_rows)
        if train_rows is train[1]:
            stream.compute()
    pending = {block.data_ptr() for block in stream._train_rows.blocks}
    assert not pending & {block.data_ptr() for block in stream.features.blocks}
    reference = hf_recperc.streaming.ProbeStream()
    reference.add(*train[0], split="train")
    reference.add(*train[1], split="train")
    reference._fold()  # the same fold points as the stream's second compute()
    reference.add(*train[2], split="train")
    reference.add(*test[2])
    assert stream.compute(subspaces=SUBSPACES) == reference.compute(subspaces=SUBSPACES)


def test_an_evaluation_loop_refills_the_previous_evaluation_blocks_exactly():
    metric = load()  # one metric object, evaluated three times with other rows, sizes and dtypes
    pointers = []
    for epoch, (num_rows, dtype) in enumerate(
        [(20_000, np.float32), (17_000, np.float32), (3_000, np.float64)]
    ):
        X, y = make_problem(num_rows=num_rows, dim=8, seed=10 + epoch)
        X = X.astype(dtype)
        X_train, y_train = make_problem(num_rows=5_000, dim=8, seed=20 + epoch)
        expected = load().compute(predictions=X, references=y, subspaces=SUBSPACES)
        expected_train = load().compute(
            predictions=X,
            references=y,
            train_predictions=X_train,
            train_references=y_train,
            subspaces=SUBSPACES,
        )
        for rows in np.array_split(np.arange(num_rows), 9):
            metric.add_batch(predictions=X[rows], references=y[rows])
        pointers.append([block.data_ptr() for block in metric._probe_stream.features.blocks])
        assert metric.compute(subspaces=SUBSPACES) == expected  # rows of the last epoch never leak in
        for rows in np.array_split(np.arange(5_000), 4):
            metric.add_batch(predictions=X_train[rows], references=y_train[rows], split="train")
        metric.add_batch(predictions=X, references=y)
        assert_same_metric_results(metric.compute(subspaces=SUBSPACES), expected_train, 1e-9)
    assert pointers[1][0] in pointers[0]  # the second epoch refilled the first epoch's memory


@pytest.mark.parametrize("num_train", [900, 20_000])  # 20,000 > one 16,384-row flush of the buffer
def test_streamed_training_rows_equal_train_predictions(num_train):
    metric = load()
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=num_train, seed=1)
    expected = metric.compute(
        predictions=X, references=y, train_predictions=X_train, train_references=y_train, subspaces=SUBSPACES
    )
    for rows in np.array_split(np.arange(num_train), max(1, num_train // 256)):
        metric.add_batch(predictions=X_train[rows], references=y_train[rows], split="train")
    for rows in np.array_split(np.arange(len(X)), 5):
        metric.add_batch(predictions=X[rows], references=y[rows])
    streamed = metric.compute(subspaces=SUBSPACES)
    assert streamed["num_train"] == num_train
    assert_same_metric_results(streamed, expected, 1e-9)


def test_half_precision_batches_stream_like_their_float32_values():
    metric = load()
    X, y = make_problem(num_rows=3000, dim=16)
    half = X.astype(np.float16)
    expected = metric.compute(predictions=half.astype(np.float32), references=y, subspaces=["all", "first:4"])
    for rows in np.array_split(np.arange(3000), 12):
        metric.add_batch(predictions=torch.from_numpy(half[rows]), references=y[rows])
    assert_same_metric_results(metric.compute(subspaces=["all", "first:4"]), expected, 1e-6)


def test_no_arrow_file_is_written(tmp_path):
    metric = load(cache_dir=str(tmp_path))
    X, y = make_problem()
    for rows in np.array_split(np.arange(len(X)), 6):
        metric.add_batch(predictions=X[rows], references=y[rows])
        metric.add_batch(predictions=X[rows], references=y[rows], split="train")
    metric.compute(subspaces=["all"])
    written = [path for path in tmp_path.rglob("*") if path.is_file()]
    assert written == [], written  # evaluate's buffer would leave <experiment>-1-0.arrow here


def test_streaming_errors_name_the_argument():
    metric = load()
    X, y = make_problem()
    with pytest.raises(ValueError, match="split: expected one of"):
        metric.add_batch(predictions=X, references=y, split="validation")
    with pytest.raises(ValueError, match="predictions: expected 12 features per row"):
        metric.add_batch(predictions=X, references=y)
        metric.add_batch(predictions=X[:, :5], references=y)
    metric.add_batch(predictions=X, references=y, split="train")
    with pytest.raises(ValueError, match="train_predictions: training rows were already streamed"):
        metric.compute(train_predictions=X, train_references=y)
    metric.add_batch(predictions=X, references=y)
    metric.add_batch(predictions=X, references=y, split="train")
    with pytest.raises(ValueError, match="probe='logistic' needs the training rows"):
        metric.compute(probe="logistic")


@pytest.mark.parametrize("bad_batch_rows", [300, 17_000])  # inside the 16,384-row buffer / across a flush
def test_a_batch_with_nan_is_refused_whole_and_the_stream_goes_on(bad_batch_rows):
    metric = load()
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=1_000, seed=1)
    bad_train, bad_labels = make_problem(num_rows=bad_batch_rows, seed=2)
    bad_train[-1, 0] = np.nan  # the last row: its earlier rows must not have been folded in either
    bad_test = X[:50].copy()
    bad_test[10, 3] = np.inf
    metric.add_batch(predictions=X_train[:500], references=y_train[:500], split="train")
    with pytest.raises(ValueError, match="^train_predictions: contains NaN or infinite values$"):
        metric.add_batch(predictions=bad_train, references=bad_labels, split="train")
    with pytest.raises(ValueError, match="^predictions: contains NaN or infinite values$"):
        metric.add_batch(predictions=bad_test, references=y[:50])
    metric.add_batch(predictions=X_train[500:], references=y_train[500:], split="train")
    metric.add_batch(predictions=X, references=y)
    expected = load().compute(
        predictions=X, references=y, train_predictions=X_train, train_references=y_train, subspaces=SUBSPACES
    )
    assert_same_metric_results(metric.compute(subspaces=SUBSPACES), expected, 1e-9)


def test_combine_streams_into_every_module_and_forwards_settings():
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=900, seed=1)
    combined = evaluate.combine({"a": load(), "b": load()})
    for rows in np.array_split(np.arange(len(X)), 4):
        combined.add_batch(predictions=X[rows], references=y[rows])
    # compute() settings, train_* included, reach every module; combine keeps results apart by prefix.
    result = combined.compute(train_predictions=X_train, train_references=y_train, subspaces=["all"])
    expected = load().compute(
        predictions=X, references=y, train_predictions=X_train, train_references=y_train, subspaces=["all"]
    )
    assert result == {f"{name}_{key}": value for name in "ab" for key, value in expected.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.lru_cache(maxsize=1)
def two_process_results() -> tuple[dict[str, list[dict]], Path]:
    """One torchrun launch of tests/metric_stream_worker.py (2 gloo processes) for every two-process test.

    Returns ``({mode: [process 0 result, process 1 result]}, out_dir)``; cached, so the interpreter start-ups
    (most of the cost) are paid once per test session.
    """
    out_dir = Path(tempfile.mkdtemp(prefix="metric_two_processes_"))
    atexit.register(shutil.rmtree, out_dir, ignore_errors=True)
    data_dir = Path(load(cache_dir=str(out_dir / "cache")).data_dir)
    for experiment_id in ("evaluate-False", "evaluate-True"):  # as if earlier evaluations had crashed
        plant_stale_states(data_dir, experiment_id, num_process=2)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(WORKER),
        str(out_dir),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]
    modes = ("evaluate", "torch", "torchmetrics")
    return {m: [json.loads((out_dir / f"{m}-{p}.json").read_text()) for p in (0, 1)] for m in modes}, out_dir


def one_process_answers():
    X, y = make_problem()
    X_train, y_train = make_problem(num_rows=900, seed=1)
    metric = load()
    return {
        "split": metric.compute(predictions=X, references=y, subspaces=SUBSPACES),
        "streamed_train": metric.compute(
            predictions=X,
            references=y,
            train_predictions=X_train,
            train_references=y_train,
            subspaces=SUBSPACES,
        ),
    }


STALE_TOKEN = "0123456789abcdef0123456789abcdef"


def plant_stale_states(data_dir: Path, experiment_id: str, num_process: int) -> list[Path]:
    """The files a crashed evaluation with this ``experiment_id`` may leave in the metric's ``data_dir``: process
    1's state (other rows) under the name of older versions and under a dead exchange's token, and that token."""
    stream = hf_recperc.streaming.ProbeStream()
    X, y = make_problem(num_rows=300, seed=7)
    stream.add(X * 3, (y + 1) % 3)
    prefix = f"{experiment_id}-{num_process}"
    paths = [data_dir / f"{prefix}-1.probe.pt", data_dir / f"{prefix}-1.{STALE_TOKEN}.probe.pt"]
    for path in paths:
        torch.save(stream.state(), path)
    (data_dir / f"{prefix}.probe-token").write_text(STALE_TOKEN)
    # A sender killed while writing leaves its partial file (publish.atomic's name: host and pid of the writer).
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    partial = data_dir / f".{prefix}-1.{STALE_TOKEN}.probe.tmp-{HOST}-{dead.pid}.pt"
    torch.save(stream.state(), partial)
    return [*paths, data_dir / f"{prefix}.probe-token", partial]


def exchange_files(data_dir: Path) -> list[str]:
    """State, partial and token files of the metric's multi-process mode left in ``data_dir``."""
    names = (".probe.pt", "probe-token", ".probe.tmp-")
    return sorted(p.name for p in data_dir.iterdir() if any(name in p.name for name in names))


def test_evaluate_multi_process_mode_never_merges_a_stale_file(tmp_path):
    """Trust 12: in evaluate's num_process mode, state files left by a crashed evaluation with the same
    experiment_id are never merged (the answer is the one-process answer, twice in a row with fresh metric
    objects), and no state file is left behind to poison the next evaluation."""
    X, y = make_problem()
    expected = load().compute(predictions=X, references=y, subspaces=SUBSPACES)
    halves = np.array_split(np.arange(len(X)), 2)
    data_dir = Path(load(cache_dir=str(tmp_path)).data_dir)
    plant_stale_states(data_dir, "exp", num_process=2)
    for _ in range(2):  # back to back: the second evaluation must not answer the first one's token
        metrics = [
            load(cache_dir=str(tmp_path), experiment_id="exp", num_process=2, process_id=p, timeout=30)
            for p in (0, 1)
        ]
        for metric, rows in zip(metrics, halves):
            metric.add_batch(predictions=X[rows], references=y[rows])
        answers = {}

        def process_1(metric=metrics[1], answers=answers):
            answers[1] = metric.compute(subspaces=SUBSPACES)

        second = threading.Thread(target=process_1)
        second.start()
        answers[0] = metrics[0].compute(subspaces=SUBSPACES)
        second.join(timeout=60)
        assert answers == {0: expected, 1: None}
        assert exchange_files(data_dir) == []


def test_evaluate_multi_process_mode_merges_the_training_rows_given_to_compute(tmp_path):
    """Trust 12 (found in review): in evaluate's num_process mode, `train_predictions`/`train_references` given to
    `compute` stayed with each process, so process 0 fitted its probe on its own half of the training rows and
    answered without error. They are merged like streamed training rows: the one-process answer on all rows."""
    X, y = make_problem()
    train, test = np.arange(0, len(X), 2), np.arange(1, len(X), 2)
    expected = load().compute(
        predictions=X[test], references=y[test], train_predictions=X[train], train_references=y[train],
        subspaces=SUBSPACES,
    )  # fmt: skip
    metrics = [
        load(cache_dir=str(tmp_path), experiment_id="train-rows", num_process=2, process_id=p, timeout=30)
        for p in (0, 1)
    ]
    answers = {}

    def compute(process, rows, answers=answers):
        train_rows, test_rows = np.array_split(train, 2)[process], np.array_split(test, 2)[process]
        answers[process] = metrics[process].compute(
            predictions=X[test_rows], references=y[test_rows], train_predictions=X[train_rows],
            train_references=y[train_rows], subspaces=SUBSPACES,
        )  # fmt: skip

    second = threading.Thread(target=compute, args=(1, None))
    second.start()
    compute(0, None)
    second.join(timeout=60)
    assert answers[1] is None and answers[0]["num_train"] == expected["num_train"] == len(train)
    assert_same_metric_results(answers[0], expected, 1e-9)


@pytest.mark.slow  # end-to-end (subprocesses, seconds to a minute): CI's second step
def test_evaluate_two_process_mode_gives_the_one_process_answer():
    results, out_dir = two_process_results()
    first, second = results["evaluate"]
    expected = one_process_answers()
    assert second == {"split": None, "streamed_train": None}  # evaluate's convention: process 0 reports
    assert first["split"] == expected["split"]
    assert_same_metric_results(first["streamed_train"], expected["streamed_train"], 1e-9)
    assert not list((out_dir / "cache").rglob("*.pt")), "state files are removed once merged"
    assert not list((out_dir / "cache").rglob("*.arrow"))


@pytest.mark.slow  # the same launch as above
def test_two_processes_never_merge_the_files_of_a_crashed_evaluation():
    """Trust 12: with files of a crashed evaluation planted under both experiment ids before the launch (process
    1's state under the old name and under a dead token, and that token), two real processes give the
    one-process answer and leave no state, partial or token file."""
    results, out_dir = two_process_results()
    expected = one_process_answers()
    assert results["evaluate"][0]["split"] == expected["split"]
    assert_same_metric_results(results["evaluate"][0]["streamed_train"], expected["streamed_train"], 1e-9)
    data_dir = Path(load(cache_dir=str(out_dir / "cache")).data_dir)
    assert exchange_files(data_dir) == []


def test_torch_distributed_gives_the_one_process_answer_on_every_rank():
    expected = one_process_answers()
    first, second = two_process_results()[0]["torch"]
    assert first.pop("rank0_arrays") == expected["split"] and "rank0_arrays" not in second
    for got in (first, second):
        assert got["split"] == expected["split"]
        assert_same_metric_results(got["streamed_train"], expected["streamed_train"], 1e-9)


def readme_snippets() -> list[str]:
    text = (Path(__file__).parents[1] / "docs" / "metric.md").read_text()
    section = text.split("## Three ways to call the metric")[1]
    return re.findall(r"```python\n(.*?)```", section, re.S)


@pytest.mark.parametrize("index", [0, 1, 2])
def test_readme_snippets_run_as_written(index, capsys):
    snippets = readme_snippets()
    assert len(snippets) == 3
    if index == 2:
        pytest.importorskip("lightning")
    exec(compile(snippets[index], f"README snippet {index + 1}", "exec"), {"__name__": "readme"})
    assert "accuracy/" in capsys.readouterr().out
