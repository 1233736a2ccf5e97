"""Cost of the standard protocols beside the ridge probe: a whole perception report over cached features, and the
protocol functions alone on fixed tensors.

    OMP_NUM_THREADS=1 python benchmarks/report_protocols.py                  # the report-level benchmark
    python benchmarks/report_protocols.py --train_rows 10000 --eval_rows 2000 --threads 2
    python benchmarks/report_protocols.py --functions                        # also the protocol functions alone

Report level (issue 18, acceptance 5): a small ViT (randomly initialised, saved) on CIFAR-10 rows (the parquet
files of ``--data``, else the embedded digits), features extracted once into a feature cache; then, interleaved,
``--repeats`` times each (fastest kept: interference on a shared machine only adds time):

* the ridge-only report: ``--monitors subspace`` over the cache;
* the whole protocol set: ``--monitors subspace knn spectrum ridge_cv linear_grid knn_grid few_shot`` over the same
  cache (the attentive probe and the PCA maps read token features, which this pooled cache does not hold: they are
  timed apart with ``--tokens``).

Both write the same report files (``report.json``, ``report.md``, figures). The wall-clock ratio is printed last,
with the fitting-only ratio (``runtime.fitting_seconds``: the monitors' compute, without loading the data and
writing the files) beside it. Target: <= 2x.

Function level (``--functions``), on the same fixed float32 features (Gaussian classes with anisotropic noise,
seeded): :class:`~hf_recperc.probing.SubspaceProbe` over the report's default subspaces (fit + score) against each
protocol of :mod:`hf_recperc.monitors.protocols` at its defaults.
"""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch: one BLAS thread unless asked otherwise

import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

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


REPORT_MONITORS = ["subspace", "knn", "spectrum", "ridge_cv", "linear_grid", "knn_grid", "few_shot"]


def tiny_vit(path: Path, hidden_size: int) -> str:
    """A randomly initialised ViT (32 x 32 images, 4 x 4 patches, 4 blocks), saved with its image processor."""
    import transformers as tf  # noqa: PLC0415

    torch.manual_seed(0)
    config = tf.ViTConfig(
        image_size=32, patch_size=4, hidden_size=hidden_size, num_hidden_layers=4, num_attention_heads=4,
        intermediate_size=2 * hidden_size,
    )  # fmt: skip
    tf.ViTModel(config).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 32, "width": 32}).save_pretrained(path)
    return str(path)


def report_benchmark(args) -> None:
    """Ridge-only report vs the whole protocol set, both over the same feature cache, interleaved."""
    from hf_recperc.report import perception_report  # noqa: PLC0415

    root = Path(tempfile.mkdtemp(prefix="report_protocols_"))
    data = args.data if Path(args.data).is_dir() else "digits"
    common = dict(
        max_train_samples=args.train_rows, max_eval_samples=args.eval_rows, feature_cache=root / "cache",
        data_kwargs={"seed": 0},
    )  # fmt: skip
    model = tiny_vit(root / "vit", args.hidden_size)
    started = time.perf_counter()
    first = perception_report(model, data, monitors=["subspace"], output_dir=root / "fill", **common)
    print(
        f"data {data}: {first['data']['num_train']} train / {first['data']['num_eval']} evaluation rows; features "
        f"{first['features'].keys() and list(first['features'])} ({args.hidden_size} dims) extracted into the cache "
        f"in {time.perf_counter() - started:.1f} s; threads {torch.get_num_threads()}"
    )
    runs = {"ridge-only": ["subspace"], "whole protocol set": REPORT_MONITORS}
    wall: dict[str, list[float]] = {name: [] for name in runs}
    fitting: dict[str, list[float]] = {name: [] for name in runs}
    reports = {}
    for repeat in range(args.repeats):  # interleaved: a burst of interference hits both alike
        for name, monitors in runs.items():
            out = root / f"{name.replace(' ', '_')}_{repeat}"
            started = time.perf_counter()
            reports[name] = perception_report(model, data, monitors=monitors, output_dir=out, **common)
            wall[name].append(time.perf_counter() - started)
            fitting[name].append(reports[name]["runtime"]["fitting_seconds"])
            assert reports[name]["settings"]["feature_cache"]["hit"], "the benchmark must read the cache"
    for name in runs:
        print(
            f"{name:20s} wall {min(wall[name]):6.2f} s (runs {', '.join(f'{t:.2f}' for t in wall[name])}), "
            f"fitting {min(fitting[name]):6.2f} s"
        )
    metrics = reports["whole protocol set"]["metrics"]
    feature = next(iter(reports["whole protocol set"]["features"]))
    print(f"{feature}: " + ", ".join(
        f"{key.rsplit('/', 2)[-2]} {metrics[f'layers/{feature}/{key}']:.3f}"
        for key in ("ridge_cv/accuracy", "linear_grid/accuracy", "knn_grid/accuracy", "knn/accuracy")
    ))  # fmt: skip
    shutil.rmtree(root, ignore_errors=True)
    ratio = min(wall["whole protocol set"]) / min(wall["ridge-only"])
    fit_ratio = min(fitting["whole protocol set"]) / max(min(fitting["ridge-only"]), 1e-9)
    print(f"\nfitting-only ratio (monitors' compute): {fit_ratio:.2f}")
    print(
        f"report ratio, whole protocol set / ridge-only, over the same cache: {ratio:.2f}   (target <= 2.0)"
    )


def function_benchmark(args) -> None:
    """The protocol functions alone on fixed tensors, against the ridge-only probe."""
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


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", default=str(Path(__file__).resolve().parents[1].parent / "shared/data/cifar10")
    )
    parser.add_argument("--train_rows", type=int, default=5000)
    parser.add_argument("--eval_rows", type=int, default=1000)
    parser.add_argument("--hidden_size", type=int, default=192, help="the ViT's width (feature dimension)")
    parser.add_argument("--functions", action="store_true", help="also time the protocol functions alone")
    parser.add_argument("--test_rows", type=int, default=2000, help="--functions: test rows")
    parser.add_argument("--dim", type=int, default=512, help="--functions: feature dimension")
    parser.add_argument("--classes", type=int, default=10, help="--functions: classes")
    parser.add_argument(
        "--tokens", type=int, default=17, help="--functions: tokens per image of the attentive probe's input"
    )
    parser.add_argument("--token_rows", type=int, default=2000, help="--functions: attentive probe images")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.functions:
        function_benchmark(args)
    report_benchmark(args)


if __name__ == "__main__":
    main()
