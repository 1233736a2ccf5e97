"""Cost of the standard protocols beside the ridge probe, on the feature tensors a report over a cache sees.

    OMP_NUM_THREADS=1 python benchmarks/report_protocols.py                  # 10,000 x 512 train, 2,000 test
    python benchmarks/report_protocols.py --train_rows 20000 --dim 768 --threads 2

Measured in one process on the same fixed float32 features (Gaussian classes with anisotropic noise, seeded):

* ridge-only: :class:`~hf_recperc.probing.SubspaceProbe` over the report's default subspaces (fit + score), what a
  ridge-only report pays per feature;
* report baseline: ridge-only + the report's kNN monitor (k = 20), for reference;
* each protocol of :mod:`hf_recperc.monitors.protocols` at its defaults (ridge CV, logistic grid, kNN grid,
  few-shot), and the attentive probe on token features (``--tokens``), which a pooled cache does not hold and which
  is therefore outside the ratios.

Target (issue 18): ridge-only + the whole protocol set <= 2 x ridge-only. Every measurement is repeated
``--repeats`` times, interleaved, and the fastest kept (interference on a shared machine only adds time). The
ratio is printed last.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one BLAS thread unless asked otherwise

import time  # noqa: E402

import torch  # noqa: E402

from hf_recperc.monitors import KNNMonitor, MonitorBatch  # noqa: E402
from hf_recperc.monitors.protocols import (  # noqa: E402
    attentive_protocol,
    few_shot_protocol,
    knn_grid_protocol,
    linear_grid_protocol,
    ridge_cv_protocol,
)
from hf_recperc.probing import DEFAULT_SUBSPACES, SubspaceProbe  # noqa: E402


def features(rows: int, dim: int, classes: int, seed: int, tokens: int = 0):
    """Float32 Gaussian classes `(rows, dim)` (or `(rows, tokens, dim)` with the class in one token) and labels."""
    means = torch.randn(classes, dim, generator=torch.Generator().manual_seed(0)) * 0.15
    scales = torch.linspace(0.2, 2.0, dim)
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (rows,), generator=g)
    if not tokens:
        return means[labels] + torch.randn(rows, dim, generator=g) * scales, labels
    X = torch.randn(rows, tokens, dim, generator=g)
    X[torch.arange(rows), torch.randint(1, tokens, (rows,), generator=g)] += 20 * means[labels]
    return X, labels


def ridge_only(X, y, Xt, yt):
    return SubspaceProbe(subspaces=DEFAULT_SUBSPACES).fit(X, y).score(Xt, yt)


def knn_monitor(X, y, Xt, yt):
    monitor = KNNMonitor(k=20)
    monitor.update(MonitorBatch("train", labels=y, features={"embedding": X}))
    monitor.update(MonitorBatch("eval", labels=yt, features={"embedding": Xt}))
    return monitor.compute()


PROTOCOLS = {
    "ridge_cv": ridge_cv_protocol,
    "linear_grid": linear_grid_protocol,
    "knn_grid": knn_grid_protocol,
    "few_shot": few_shot_protocol,
}


def timed(function, *args) -> tuple[float, dict]:
    start = time.perf_counter()
    result = function(*args)
    return time.perf_counter() - start, result


def headline(result: dict) -> str:
    """The accuracy a protocol reports first (its chosen setting's), for a glance at sanity."""
    key = next(k for k in result if "accuracy" in k)
    return f"{key} = {result[key]:.4f}"


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--train_rows", type=int, default=10000)
    parser.add_argument("--test_rows", type=int, default=2000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument(
        "--tokens", type=int, default=17, help="tokens per image of the attentive probe's input"
    )
    parser.add_argument("--token_rows", type=int, default=2000, help="training images of the attentive probe")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    X, y = features(args.train_rows, args.dim, args.classes, seed=1)
    Xt, yt = features(args.test_rows, args.dim, args.classes, seed=2)
    print(
        f"train {tuple(X.shape)} float32, test {tuple(Xt.shape)}, {args.classes} classes, threads {args.threads}"
    )

    runs: dict[str, list[float]] = {name: [] for name in ("ridge_only", "knn_monitor", *PROTOCOLS)}
    results = {}
    for _ in range(args.repeats):  # interleaved: a burst of interference hits every measurement alike
        for name, function in (("ridge_only", ridge_only), ("knn_monitor", knn_monitor), *PROTOCOLS.items()):
            seconds, results[name] = timed(function, X, y, Xt, yt)
            runs[name].append(seconds)
    best = {name: min(times) for name, times in runs.items()}
    for name, times in runs.items():
        shown = (
            headline(results[name])
            if name != "ridge_only"
            else f"accuracy/all = {results[name]['accuracy/all']:.4f}"
        )
        print(f"{name:12s} {best[name]:7.3f} s   (runs: {', '.join(f'{t:.3f}' for t in times)})   {shown}")

    tokens, labels = features(args.token_rows, 64, args.classes, seed=3, tokens=args.tokens)
    test_tokens, test_labels = features(args.token_rows // 4, 64, args.classes, seed=4, tokens=args.tokens)
    seconds, result = timed(attentive_protocol, tokens, labels, test_tokens, test_labels)
    print(
        f"attentive_probe on {tuple(tokens.shape)} tokens: {seconds:.3f} s   {headline(result)}  (not in the ratios)"
    )

    protocols = sum(best[name] for name in PROTOCOLS)
    report = best["ridge_only"] + best["knn_monitor"]
    print("\nratio                                                   value   target")
    print(f"{'report (ridge + kNN k=20) / ridge-only':55s} {report / best['ridge_only']:7.2f}   (reference)")
    print(
        f"{'report + protocols, kNN grid replacing kNN / report':55s} "
        f"{(best['ridge_only'] + protocols) / report:7.2f}   (reference)"
    )
    print(
        f"{'ridge-only + whole protocol set / ridge-only':55s} {(best['ridge_only'] + protocols) / best['ridge_only']:7.2f}   <= 2.0"
    )


if __name__ == "__main__":
    main()
