"""Cost of the perception report's extraction and probe fitting against their bare floors, in one run.

    python benchmarks/feature_extraction.py                       # ViT (6 x 192, 32x32 images), 512 images
    python benchmarks/feature_extraction.py --model convnext --num_images 1024 --threads 2

Measured in the same process on the same model (random initialisation) and the same preloaded tensors:

* extraction floor: a bare ``torch.inference_mode()`` loop of ``model(pixel_values=x)`` over the batches;
* extraction: the report's own path (:func:`hf_recperc.report.extract_split`: ``output_hidden_states``, every
  layer pooled with every pooling, cast to float32), with no monitor attached;
* fitting floor, per layer x pooling: ``X.T @ X`` of the float64 centred train features and ``eigh`` (the
  features are tiled to ``--fit_rows`` rows: a report fits on many more images than it can extract here);
* fitting: the report's :class:`~hf_recperc.monitors.SubspaceProbeMonitor` streaming the same rows batch by batch,
  in blocks of ``UPDATE_ROWS`` rows as :func:`~hf_recperc.report.extract_split` does, ``all_reduce`` and the solve (PCA + ridge in its basis), scoring excluded.

Targets (issue 10): extraction >= 0.9 x the floor's images/s; fitting <= 1.3 x its floor. Each is timed ``--repeats``
times, interleaved, and the fastest kept (interference on a shared machine only adds time).
"""

from __future__ import annotations

import argparse
import time

import torch

from hf_recperc.monitors import TRAIN, MonitorBatch, SubspaceProbeMonitor
from hf_recperc.report import extract_split, load_backbone, pooled_features
from hf_recperc.report.run import UPDATE_ROWS


def build(kind: str):
    import transformers as tf  # noqa: PLC0415

    torch.manual_seed(0)
    if kind == "vit":
        config = tf.ViTConfig(
            image_size=32,
            patch_size=4,
            hidden_size=192,
            num_hidden_layers=6,
            num_attention_heads=3,
            intermediate_size=768,
        )
        model = tf.ViTModel(config, add_pooling_layer=False)
    elif kind == "convnext":
        config = tf.ConvNextConfig(hidden_sizes=[48, 96, 192, 384], depths=[2, 2, 2, 2], image_size=32)
        model = tf.ConvNextModel(config)
    else:
        raise ValueError(f"model: expected 'vit' or 'convnext', got {kind!r}")
    processor = tf.ViTImageProcessor(size={"height": 32, "width": 32})
    return load_backbone(model, image_processor=processor)


def best_of(repeats: int, *functions):
    """Run the functions interleaved ``repeats`` times; the fastest time of each."""
    times = [float("inf")] * len(functions)
    for _ in range(repeats):
        for i, function in enumerate(functions):
            start = time.perf_counter()
            function()
            times[i] = min(times[i], time.perf_counter() - start)
    return times


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit", choices=["vit", "convnext"])
    parser.add_argument("--num_images", type=int, default=512)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--fit_rows",
        type=int,
        default=16384,
        help="Rows the fitting comparison streams: the extracted features tiled (timing depends on shapes only).",
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    backbone = build(args.model)
    model = backbone.model
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(args.num_images, 3, 32, 32, generator=generator)  # preloaded (N, C, H, W)
    labels = torch.randint(0, 10, (args.num_images,), generator=generator)
    batches = [
        {"pixel_values": pixels[i : i + args.batch_size], "labels": labels[i : i + args.batch_size]}
        for i in range(0, args.num_images, args.batch_size)
    ]
    with torch.inference_mode():
        hidden, pooled = backbone.hidden_states(pixels[:2])
    layers = list(range(1, len(hidden)))
    poolings = list(backbone.default_poolings)

    def bare():
        with torch.inference_mode():
            for batch in batches:
                model(pixel_values=batch["pixel_values"])

    def report():
        extract_split(backbone, batches, layers, poolings, TRAIN, monitors=[])

    bare_s, report_s = best_of(args.repeats, bare, report)
    print(
        f"model {args.model}: {len(layers)} layers x {poolings}, {args.num_images} images, {args.threads} thread(s)"
    )
    print(
        f"extraction: bare loop {args.num_images / bare_s:.1f} img/s, report {args.num_images / report_s:.1f} img/s "
        f"-> ratio {bare_s / report_s:.3f} (target >= 0.9)"
    )

    # Features once, then the fitting comparison per layer x pooling.
    features = {}
    with torch.inference_mode():
        for batch in batches:
            h, p = backbone.hidden_states(batch["pixel_values"])
            for name, rows in pooled_features(h, p, layers, poolings, backbone.num_prefix_tokens).items():
                features.setdefault(name, []).append(rows.clone())
    total_floor = total_fit = 0.0
    tiles = max(1, args.fit_rows // args.num_images)
    batches = batches * tiles
    for name, chunks in features.items():
        chunks = chunks * tiles
        X = torch.cat(chunks)  # (N, D) float32
        y = torch.cat([batch["labels"] for batch in batches])  # (N,)

        def floor(X=X):
            X64 = X.double()
            centred = X64 - X64.mean(0)
            torch.linalg.eigh(centred.T @ centred)

        def fit(X=X, y=y, name=name):
            monitor = SubspaceProbeMonitor(name, ["top:0.9", "bottom:0.2", "all"])
            # blocks of UPDATE_ROWS rows, as extract_split hands them over
            for start in range(0, X.shape[0], UPDATE_ROWS):
                block = {name: X[start : start + UPDATE_ROWS]}
                monitor.update(MonitorBatch(TRAIN, labels=y[start : start + UPDATE_ROWS], features=block))
            monitor.all_reduce()
            monitor.probe.eigenvalues_  # noqa: B018  (solves the PCA and the ridge probes)

        floor_s, fit_s = best_of(args.repeats, floor, fit)
        total_floor, total_fit = total_floor + floor_s, total_fit + fit_s
        print(
            f"  {name} (D={X.shape[1]}): floor {floor_s * 1e3:.2f} ms, fit {fit_s * 1e3:.2f} ms, x{fit_s / floor_s:.2f}"
        )
    print(
        f"fitting: floor {total_floor:.3f} s, report {total_fit:.3f} s -> x{total_fit / total_floor:.2f} (target <= 1.3)"
    )


if __name__ == "__main__":
    main()
