"""Streaming ``add_batch`` + ``compute()`` against one ``compute(predictions=X, ...)`` call, in one run.

    OMP_NUM_THREADS=1 python benchmarks/metric_streaming.py              # embeddings + CIFAR-10 pixels
    python benchmarks/metric_streaming.py --skip_cifar10 --repeats 1     # the 50,000 x 768 case only

Two data sets: synthetic "embeddings" (50,000 x 768 float32, 10 classes, 10,000 more rows to evaluate)
and CIFAR-10 pixels (50,000 x 3,072 train, 10,000 test, paper preprocessing, from ../shared/data/cifar10).
Two ways to use each:

* ``split``: only evaluated rows (all 50,000); the metric fits on a stratified 80% of them. Streamed:
  ``add_batch(predictions=..., references=...)`` per batch of 256, then ``compute()``.
* ``train``: 50,000 training rows and 10,000 evaluated rows. Direct: ``train_predictions=`` at
  ``compute``; streamed: ``add_batch(..., split="train")`` per batch of 256 for the training rows, then the
  evaluated rows, then ``compute()``.

Targets (issue 13): streamed <= 1.2 x direct time; peak extra memory O(D^2 + evaluated rows); no Arrow
file written (the module's cache directory is listed after the runs). Times are the fastest of
``--repeats`` interleaved runs (interference on a shared machine only adds time), as wall-clock and as
process CPU time (steadier when other processes compete for the cores). The timed runs reuse one metric
object, as an evaluation loop does: from the second evaluation on, the streamed rows refill the blocks of
the previous one (``hf_recperc.streaming.BlockPool``). The first streamed evaluation of a fresh metric object
(new memory pages) is timed separately and printed too. Peak memory is the RSS above its level before the
call, sampled every 5 ms in separate untimed runs on a fresh metric object (benchmarks/subspace_probe.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from subspace_probe import DEFAULT_DATA, SUBSPACES, PeakRSS, load_pixels  # noqa: E402

BATCH = 256


def embeddings(num_train=50_000, num_test=10_000, dim=768, num_classes=10, seed=0):
    """float32 rows with a decaying spectrum and a class signal in a few low-variance directions."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_train + num_test)
    scales = np.geomspace(10, 0.1, dim).astype(np.float32)
    features = rng.standard_normal((num_train + num_test, dim), dtype=np.float32) * scales
    features[:, -num_classes:] += 0.3 * np.eye(num_classes, dtype=np.float32)[labels]
    return features[:num_train], labels[:num_train], features[num_train:], labels[num_train:]


def direct(metric, case):
    if case["train"] is None:
        return metric.compute(predictions=case["X"], references=case["y"], subspaces=SUBSPACES)
    X_train, y_train = case["train"]
    return metric.compute(
        predictions=case["X"],
        references=case["y"],
        train_predictions=X_train,
        train_references=y_train,
        subspaces=SUBSPACES,
    )


def streamed(metric, case):
    if case["train"] is not None:
        X_train, y_train = case["train"]
        for start in range(0, len(X_train), BATCH):
            metric.add_batch(
                predictions=X_train[start : start + BATCH],
                references=y_train[start : start + BATCH],
                split="train",
            )
    X, y = case["X"], case["y"]
    for start in range(0, len(X), BATCH):
        metric.add_batch(predictions=X[start : start + BATCH], references=y[start : start + BATCH])
    return metric.compute(subspaces=SUBSPACES)


def timed(function, metric, case):
    """(wall seconds, CPU seconds of this process, result). With one thread, CPU time excludes the time other
    processes held the cores: on a shared machine it is the steadier measure of the work done."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function(metric, case)
    return time.perf_counter() - start, time.process_time() - cpu, result


def measure(load_metric, metric, case, repeats):
    """One data set and case: fastest interleaved times, the first evaluation of a fresh object, peak memory."""
    times, outputs = {"direct": [], "streamed": []}, {}
    for _ in range(repeats):
        for name, function in (("direct", direct), ("streamed", streamed)):
            seconds, cpu, outputs[name] = timed(function, metric, case)
            times[name].append((seconds, cpu))
    # After the timed runs, so that only the object is fresh (its new memory), not the process.
    first_wall, _, _ = timed(streamed, load_metric(), case)
    expected, result = outputs["direct"], outputs["streamed"]
    with PeakRSS() as direct_memory:
        direct(metric, case)
    with PeakRSS() as stream_memory:  # a fresh object: the rows it stores count
        streamed(load_metric(), case)
    return {
        "direct": min(t[0] for t in times["direct"]),
        "streamed": min(t[0] for t in times["streamed"]),
        "direct_cpu": min(t[1] for t in times["direct"]),
        "streamed_cpu": min(t[1] for t in times["streamed"]),
        "first": first_wall,
        "direct_memory": direct_memory.extra / 2**20,
        "streamed_memory": stream_memory.extra / 2**20,
        "evaluated_rows": case["X"].nbytes / 2**20,
        "difference": max(abs(result[k] - expected[k]) for k in expected if isinstance(expected[k], float)),
    }


def print_line(data_name, case_name, r, dim):
    print(
        f"{data_name} [{case_name}]: direct {r['direct']:.2f} s, streamed {r['streamed']:.2f} s "
        f"(x{r['streamed'] / r['direct']:.2f}); CPU {r['direct_cpu']:.2f} s vs {r['streamed_cpu']:.2f} s "
        f"(x{r['streamed_cpu'] / r['direct_cpu']:.2f}); first streamed evaluation of a fresh metric object "
        f"{r['first']:.2f} s (x{r['first'] / r['direct']:.2f}); peak extra memory direct {r['direct_memory']:.0f} "
        f"MiB, streamed {r['streamed_memory']:.0f} MiB (evaluated rows {r['evaluated_rows']:.0f} MiB, D^2 float64 "
        f"{dim * dim * 8 / 2**20:.0f} MiB); max |streamed - direct| {r['difference']:.1e}",
        flush=True,
    )


def print_table(rows):
    print(
        "\n| data | training rows | direct: wall / CPU | add_batch + compute: wall / CPU | ratio: wall / CPU "
        "| first evaluation of a fresh object: wall (ratio) | peak extra memory: direct / streamed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for data_name, case_name, r in rows:
        how = "80/20 split of the evaluated rows" if case_name == "split" else 'streamed, `split="train"`'
        print(
            f"| {data_name} | {how} | {r['direct']:.2f} / {r['direct_cpu']:.2f} s | {r['streamed']:.2f} / "
            f"{r['streamed_cpu']:.2f} s | {r['streamed'] / r['direct']:.2f} / {r['streamed_cpu'] / r['direct_cpu']:.2f} "
            f"| {r['first']:.2f} s ({r['first'] / r['direct']:.2f}) | {r['direct_memory']:.0f} / "
            f"{r['streamed_memory']:.0f} MiB |"
        )


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--skip_cifar10", action="store_true")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    import evaluate

    import hf_recperc

    datasets = {"embeddings 50,000 x 768": embeddings()}
    if not args.skip_cifar10:
        datasets["CIFAR-10 pixels 50,000 x 3,072"] = load_pixels(args.data_dir, None)
    cache_dir = tempfile.mkdtemp(prefix="metric_streaming_")

    def load_metric():
        return evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY, cache_dir=cache_dir)

    metric = load_metric()
    print(f"threads {torch.get_num_threads()}, batches of {BATCH} rows, module cache {cache_dir}")
    rows = []
    for data_name, (X, y, X_test, y_test) in datasets.items():
        cases = {
            "split": {"X": X, "y": y, "train": None},
            "train": {"X": X_test, "y": y_test, "train": (X, y)},
        }
        for case_name, case in cases.items():
            rows.append((data_name, case_name, measure(load_metric, metric, case, args.repeats)))
            print_line(data_name, case_name, rows[-1][2], X.shape[1])
    written = [str(p) for p in Path(cache_dir).rglob("*") if p.is_file()]
    print(f"\nfiles in the module's cache directory after every run: {written or 'none'}")
    print_table(rows)


if __name__ == "__main__":
    main()
