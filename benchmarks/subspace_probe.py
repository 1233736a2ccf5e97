"""Speed and memory of the subspace probe metric against its floor and scikit-learn, in one run.

    python benchmarks/subspace_probe.py                     # CIFAR-10 pixels from ../shared/data/cifar10
    python benchmarks/subspace_probe.py --max_train_samples 10000

Measured on the same machine in the same process, one after another:

* floor: a bare float32 ``X.T @ X`` and ``eigh`` of the train features (what any PCA must pay);
* ``metric.compute`` of ``evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)`` (fit on train, score test,
  subspaces top:0.9 / bottom:0.2 / all);
* scikit-learn's best: ``PCA(svd_solver="covariance_eigh")`` + one ``RidgeClassifier`` per subspace.

Targets (issue 2): compute <= 1.3 x floor, >= 2 x faster than scikit-learn, peak extra memory <= 2 x the
float32 train input. Peak memory is the process RSS sampled every 5 ms above its level before the call, in
a separate untimed run.
Floor and metric are timed ``--repeats`` times, interleaved, and the fastest of each is kept: on a shared
machine interference only ever adds time, so the minimum is the least noisy estimate.
"""

from __future__ import annotations

import argparse
import gc
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import torch

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"
SUBSPACES = ["top:0.9", "bottom:0.2", "all"]


class PeakRSS:
    """Context manager: peak resident memory above the level at entry, sampled in a thread."""

    def __enter__(self):
        gc.collect()
        self._process = psutil.Process()
        self.baseline = self.peak = self._process.memory_info().rss
        self._running = True
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while self._running:
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    def __exit__(self, *exc):
        self._running = False
        self._thread.join()
        self.extra = self.peak - self.baseline


def load_pixels(data_dir: str, max_train_samples: int | None):
    from hf_recperc.images import images_to_array, load_image_dataset, paper_preprocessing

    data = load_image_dataset(data_dir, max_train_samples=max_train_samples)
    train, test = paper_preprocessing(
        images_to_array(data.train, data.image_column), images_to_array(data.validation, data.image_column)
    )
    return (
        np.ascontiguousarray(train, dtype=np.float32),
        np.asarray(data.train[data.label_column]),
        np.ascontiguousarray(test, dtype=np.float32),
        np.asarray(data.validation[data.label_column]),
    )


def time_floor(X: np.ndarray) -> float:
    tensor = torch.from_numpy(X)
    start = time.perf_counter()
    gram = tensor.T @ tensor
    torch.linalg.eigh(gram)
    return time.perf_counter() - start


def run_metric(X, y, X_test, y_test):
    import evaluate

    import hf_recperc

    metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    start = time.perf_counter()
    result = metric.compute(
        predictions=X_test, references=y_test, train_predictions=X, train_references=y, subspaces=SUBSPACES
    )
    return time.perf_counter() - start, result


def peak_metric_memory(X, y, X_test, y_test) -> int:
    """Peak extra RSS of one ``metric.compute``, in its own untimed run: the sampling thread would steal
    time slices from the BLAS threads of a timed run on a 2-core machine."""
    with PeakRSS() as memory:
        run_metric(X, y, X_test, y_test)
    return memory.extra


def time_sklearn(X, y, X_test, y_test, alphas: dict[str, float], indices: dict[str, np.ndarray]):
    from sklearn.decomposition import PCA
    from sklearn.linear_model import RidgeClassifier

    start = time.perf_counter()
    pca = PCA(svd_solver="covariance_eigh").fit(X)
    Z, Z_test = pca.transform(X), pca.transform(X_test)
    accuracies = {}
    for spec in SUBSPACES:
        # Same penalty as ours: covariance units -> sklearn's summed loss (alpha * N).
        classifier = RidgeClassifier(alpha=alphas[spec] * len(X)).fit(Z[:, indices[spec]], y)
        accuracies[spec] = classifier.score(Z_test[:, indices[spec]], y_test)
    return time.perf_counter() - start, accuracies


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data_dir", default=str(DEFAULT_DATA))
    parser.add_argument("--max_train_samples", type=int, default=None)
    parser.add_argument("--skip_sklearn", action="store_true")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timings of floor and metric")
    args = parser.parse_args()

    from hf_recperc import SubspaceProbe

    X, y, X_test, y_test = load_pixels(args.data_dir, args.max_train_samples)
    print(
        f"train {X.shape} float32 ({X.nbytes / 2**20:.0f} MiB), test {X_test.shape}, threads {torch.get_num_threads()}"
    )

    floors, computes = [], []
    for _ in range(args.repeats):
        floors.append(time_floor(X))
        seconds, result = run_metric(X, y, X_test, y_test)
        computes.append(seconds)
    floor, seconds = min(floors), min(computes)
    extra = peak_metric_memory(X, y, X_test, y_test)
    print(
        f"floor (float32 X.T @ X + eigh):      {floor:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in floors)})"
    )
    print(
        f"metric.compute:                      {seconds:8.2f} s   (runs: {', '.join(f'{t:.2f}' for t in computes)})"
    )
    print(f"  peak extra memory {extra / 2**20:.0f} MiB")
    print(
        "  "
        + ", ".join(f"{s}: {result[f'accuracy/{s}']:.4f} ({result[f'dims/{s}']} dims)" for s in SUBSPACES)
    )

    rows = [("compute / floor", seconds / floor, "<= 1.3"), ("memory / input", extra / X.nbytes, "<= 2.0")]
    if not args.skip_sklearn:
        # The same subspaces and penalty as ours (fitted outside the timed region).
        reference = SubspaceProbe(subspaces=SUBSPACES).fit(X, y)
        indices = {s: reference.pca_.subspace(s).numpy() for s in SUBSPACES}
        alphas = dict.fromkeys(SUBSPACES, reference.alpha_)
        sk_seconds, sk_accuracy = time_sklearn(X, y, X_test, y_test, alphas, indices)
        print(f"sklearn PCA(covariance_eigh)+Ridge:  {sk_seconds:8.2f} s")
        print("  " + ", ".join(f"{s}: {sk_accuracy[s]:.4f}" for s in SUBSPACES))
        rows.append(("sklearn / compute", sk_seconds / seconds, ">= 2.0"))
    print("\nratio                value   target")
    for name, value, target in rows:
        print(f"{name:18s} {value:7.2f}   {target}")


if __name__ == "__main__":
    main()
