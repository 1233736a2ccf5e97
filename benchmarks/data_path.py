"""The training data path at paper scale: ImageNet-like JPEGs trained at 224 px, against the MAE reference loader.

    OMP_NUM_THREADS=1 python benchmarks/data_path.py                      # ~6 minutes on 2 cores
    python benchmarks/data_path.py --images 200 --repeats 1 --part loaders  # quicker, loaders only

The benchmark makes its own data set (no download): ``--images`` training images of mixed sizes around
500 x 375 (JPEG quality 90, with a few PNG, grayscale and CMYK JPEG files, as ImageNet has), written twice: as
parquet shards (row groups of ``--row_group`` rows) with the Hub's image schema (``img`` = ``{"bytes", "path"}``, ``label`` a ``ClassLabel``) for the
job, and as a torchvision class folder (``train/<class>/<file>``) for the baseline.

Part ``loaders``, interleaved in one run (each variant once per round, ``--repeats`` rounds, best round kept), at
0, 1 and 2 ``DataLoader`` workers:

* baseline: what the MAE reference code (``main_pretrain.py``) feeds its GPUs with: ``ImageFolder``, PIL,
  ``RandomResizedCrop(224, scale=(0.2, 1.0), interpolation=bicubic)`` + ``RandomHorizontalFlip`` + ``ToTensor`` +
  ``Normalize``, ``DataLoader(num_workers=W, pin_memory=True, drop_last=True)`` (pinned only where CUDA is);
* the job's training loader (``--random_resized_crop 0.2 --random_flip``), batches as the model receives them
  (augmented where the job does it: by the loader workers on a CPU training device with workers, handing over uint8,
  else by the device pipeline in the main process; normalised in the main process): from the uint8 store read warm, and streamed (``--streaming``);
* the store's cold build (an empty cache; images/s, the workers' start-up included) on ``--build_images`` rows (the
  training images repeated, written once), so that the start-up is a small share of the time.

Part ``train``: the tiny 224 px conv AE (``--preset cifar-conv-small --config_overrides
image_size=224,width=4,latent_dim=16``, batch 32, RandomResizedCrop + flip) trained by the job from the warm store
and streamed with 2 workers, blocks of steps alternating between the two (best block kept).

Each loader pass also records the CPU it used per batch, the main process's and the loader workers' (``CPU`` lines),
and what that allows W workers against 0 (``BOUND`` lines, :func:`cpu_bounds`): the main process still receives and
normalises every batch, and everything shares the machine's cores.

Only :func:`job_data`, :func:`job_store_build` and :func:`job_run` know the package's data modules; the rest is plain torch/torchvision.
The ratios against the issue's targets are printed last.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import resource
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
IMAGE_SIZE = 224
CLASSES = 10
TINY_CONV_AE = ["--preset", "cifar-conv-small", "--config_overrides", "image_size=224,width=4,latent_dim=16"]


# ------------------------------------------------------------------------------------------------ the data set


def _photo(rng: np.random.Generator, width: int, height: int):
    """A smooth RGB picture with some texture (a JPEG of it weighs what a photo of its size does)."""
    from PIL import Image

    coarse = rng.integers(0, 256, (height // 40 + 2, width // 40 + 2, 3), dtype=np.uint8)
    image = Image.fromarray(coarse).resize((width, height), Image.BICUBIC)
    texture = rng.normal(0, 12, (height, width, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + texture, 0, 255).astype(np.uint8))


def _encoded(rng: np.random.Generator, index: int) -> tuple[bytes, str]:
    """One image file's bytes and suffix: mostly RGB JPEG (quality 90), about 3% each PNG, grayscale and CMYK."""
    width, height = int(rng.integers(400, 601)), int(rng.integers(300, 451))
    if rng.random() < 0.5:  # portrait as often as ImageNet has them
        width, height = height, width
    image, kind = _photo(rng, width, height), index % 32
    buffer = io.BytesIO()
    if kind == 7:
        image.save(buffer, "PNG")
        return buffer.getvalue(), ".png"
    if kind == 15:
        image = image.convert("L")
    elif kind == 23:
        image = image.convert("CMYK")
    image.save(buffer, "JPEG", quality=90)
    return buffer.getvalue(), ".jpg"


def make_set(
    root: Path, images: int, eval_images: int, shards: int, row_group: int, seed: int = 0
) -> tuple[Path, Path]:
    """Write the ImageNet-like set: ``root/parquet`` (``train-0000i-of-N.parquet`` shards, ``test`` split) and
    ``root/folder/train/<class>/`` (the same training images as files). Returns both directories."""
    import datasets

    rng = np.random.default_rng(seed)
    parquet, folder = root / "parquet", root / "folder" / "train"
    parquet.mkdir(parents=True)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=[f"c{k}" for k in range(CLASSES)])}
    )
    rows = {"train": [], "test": []}
    for index in range(images + eval_images):
        data, suffix = _encoded(rng, index)
        label = index % CLASSES
        split = "train" if index < images else "test"
        rows[split].append(({"bytes": data, "path": f"{index:06d}{suffix}"}, label))
        if split == "train":
            (folder / f"c{label}").mkdir(parents=True, exist_ok=True)
            (folder / f"c{label}" / f"{index:06d}{suffix}").write_bytes(data)
    for split, count in (("train", shards), ("test", 1)):
        table = rows[split]
        for shard in range(count):
            part = table[shard::count]
            columns = {"img": [image for image, _ in part], "label": [label for _, label in part]}
            name = f"{split}-{shard:05d}-of-{count:05d}.parquet"
            datasets.Dataset.from_dict(columns, features=features).to_parquet(
                str(parquet / name), batch_size=row_group
            )
    return parquet, folder


def make_build_set(root: Path, parquet: Path, rows: int, row_group: int) -> Path:
    """``root`` (written once): the training images repeated up to ``rows`` rows, one parquet file (row groups of
    ``row_group`` rows) and the test split, for timing the store's cold build on enough images that the workers'
    start-up is a small share of it (the per-image decode cost is that of the training set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    if root.exists():
        return root
    tables = [pq.read_table(path) for path in sorted(parquet.glob("train-*.parquet"))]
    train = pa.concat_tables(tables)
    repeated = pa.concat_tables([train] * math.ceil(rows / train.num_rows)).slice(0, rows)
    staging = root.with_name(root.name + ".partial")
    staging.mkdir(parents=True)
    pq.write_table(repeated, staging / "train-00000-of-00001.parquet", row_group_size=row_group)
    for test in parquet.glob("test-*.parquet"):
        (staging / test.name).write_bytes(test.read_bytes())
    staging.rename(root)
    return root


# ------------------------------------------------------------------------------------------------ the baseline


def baseline_loader(folder: Path, workers: int, batch_size: int):
    """The MAE reference loader (``main_pretrain.py``): torchvision folder dataset, PIL decode, per-image
    transforms in the workers."""
    from torchvision import datasets as tv_datasets
    from torchvision import transforms

    transform = transforms.Compose(
        [
            transforms.RandomResizedCrop(IMAGE_SIZE, scale=(0.2, 1.0), interpolation=3),  # 3: bicubic
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
        ]
    )
    dataset = tv_datasets.ImageFolder(str(folder), transform=transform)
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
        pin_memory=torch.cuda.is_available(), drop_last=True,
    )  # fmt: skip


# ------------------------------------------------------------------------------- the adapter to the job's code


def _job_argv(parquet: Path, output_dir: str, workers: int, batch_size: int, streaming: bool) -> list[str]:
    return [
        "--dataset_name", str(parquet), "--output_dir", output_dir, "--model_family", "ae", *TINY_CONV_AE,
        "--per_device_train_batch_size", str(batch_size), "--dataloader_num_workers", str(workers),
        "--random_resized_crop", "0.2", "--random_flip", "--report_to", "none", "--overwrite_output_dir",
        "--probe_max_train_samples", "32", "--monitor_max_eval_samples", "32", "--shuffle_buffer_size", "256",
        *(["--streaming"] if streaming else []),
    ]  # fmt: skip


def job_data(parquet: Path, workers: int, batch_size: int, streaming: bool):
    """The job's training loader as the trainer builds it, and a function giving the model's input batch.

    Returns:
        ``(epoch, to_model)``: iterating ``epoch()`` gives one epoch of loader batches; ``to_model(batch, step)``
        gives the model's input of one as a training step does: augmented (``RandomResizedCrop`` + flip) and
        normalised on the device, or normalised as the loader workers augmented it (CPU training device with
        workers).
    """
    from accelerate import Accelerator

    from hf_recperc.images import load_stream
    from hf_recperc.images.datasets import collate_stored
    from hf_recperc.images.pipeline import step_seed, training_data, training_pipeline
    from hf_recperc.processing import image_processor_for
    from hf_recperc.training.arguments import parse_args
    from hf_recperc.training.builders import build_model

    with tempfile.TemporaryDirectory() as output_dir:
        data_args, model_args, args = parse_args(
            _job_argv(parquet, output_dir, workers, batch_size, streaming)
        )
    accelerator = Accelerator(cpu=True)
    data = load_stream(data_args) if streaming else data_args.load(seed=args.seed)
    config = build_model(model_args, data).config
    options = {"num_workers": workers, "pin_memory": torch.cuda.is_available()}
    options["collate_fn"] = collate_stored
    # As the trainer: on a CPU with workers, the workers augment (the pipeline's draws from the step's generator).
    pipeline = training_pipeline(config, accelerator.device, data_args)
    built = training_data(
        data, config, image_processor_for(config), data_args, args, accelerator, options, pipeline
    )
    loader, sampler = built[3], built[4]

    def epoch():
        if sampler is not None:
            sampler.set_epoch(0)
        else:
            built[0].set_position(0, 0)
        return loader

    def to_model(batch, step: int) -> torch.Tensor:  # the training step's: the seed of micro-batch `step`
        return pipeline.training(batch, torch.Generator().manual_seed(step_seed(args.seed, step, 0)))

    return epoch, to_model


def job_store_build(parquet: Path, workers: int) -> float:
    """Images/s of the job's cold build of the training split's uint8 store at 224 px (an empty cache: the
    caller's ``HF_RECPERC_CACHE``) with ``workers`` loader workers, start-up of the workers included (the data set
    is loaded before the clock starts)."""
    from hf_recperc.images import decode_uint8, load_image_dataset

    data = load_image_dataset(str(parquet))
    start = time.perf_counter()
    decode_uint8(data.train, data.image_column, 3, IMAGE_SIZE, workers=workers)
    return len(data.train) / (time.perf_counter() - start)


def job_run(parquet: Path, output_dir: str, workers: int, batch_size: int, streaming: bool):
    """A training run of the job (``PretrainingRun``, set up) and its endless optimiser steps."""
    from hf_recperc.training import PretrainingRun, parse_args

    never = str(10**9)  # no evaluation or checkpoint inside the timed steps
    argv = _job_argv(parquet, output_dir, workers, batch_size, streaming)
    argv += ["--eval_steps", never, "--checkpointing_steps", never, "--max_steps", never]
    run = PretrainingRun(*parse_args(argv))
    run.setup()
    run.progress.disable = True
    return run, run.optimiser_steps()


# ------------------------------------------------------------------------------------------------ measurements


@contextmanager
def pixel_cache(path: Path):
    """The job's decoded-image cache (``HF_RECPERC_CACHE``) at ``path`` for the duration."""
    previous = os.environ.get("HF_RECPERC_CACHE")
    os.environ["HF_RECPERC_CACHE"] = str(path)
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("HF_RECPERC_CACHE", None)
        else:
            os.environ["HF_RECPERC_CACHE"] = previous


def images_per_second(batches, to_model=None, cpu: dict | None = None, name: str = "") -> float:
    """Images/s of one pass over ``batches`` (starting its workers included), each batch made model-ready.

    ``cpu[name]`` (when given) receives ``(main, workers)`` CPU milliseconds per batch: the main process's (all its
    threads: all of the work at 0 workers, its own share with workers: receiving batches, normalising) and the
    loader workers' (reaped at the end of the pass, as a loader without persistent workers does)."""
    start, images, steps = time.perf_counter(), 0, 0
    main_start, workers_start = time.process_time(), _children_cpu()
    for step, batch in enumerate(batches):
        if to_model is not None:
            pixels = to_model(batch, step)
        else:
            pixels = batch[0] if isinstance(batch, (list, tuple)) else batch["pixels"]
        assert pixels.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE), pixels.shape
        images, steps = images + len(pixels), step + 1
    seconds = time.perf_counter() - start
    if cpu is not None:
        main, workers = time.process_time() - main_start, _children_cpu() - workers_start
        cpu[name] = (1000 * main / steps, 1000 * workers / steps)
    return images / seconds


def _children_cpu() -> float:
    """CPU seconds (user + system) of this process's ended and reaped children: the loader workers of past passes."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def measure_loaders(
    parquet: Path, folder: Path, build: Path, cache_root: Path, args
) -> tuple[dict[str, float], dict[str, float]]:
    """Best images/s over ``--repeats`` interleaved rounds of every loader variant (the cold build on ``build``),
    and the ``(main process, workers)`` CPU ms per batch of the loaders in their best rounds."""
    warm_cache = cache_root / "warm"
    with pixel_cache(warm_cache):  # the warm store, built once before the rounds
        job_data(parquet, 0, args.batch_size, streaming=False)
    best: dict[str, float] = {}
    best_cpu: dict[str, float] = {}
    for repeat in range(args.repeats):
        for workers in args.workers:
            rates, cpu = {}, {}
            name = f"baseline W={workers}"
            rates[name] = images_per_second(
                baseline_loader(folder, workers, args.batch_size), None, cpu, name
            )
            cold = cache_root / f"cold-{repeat}-{workers}"
            with pixel_cache(cold):
                rates[f"store cold build W={workers}"] = job_store_build(build, workers)
            with pixel_cache(warm_cache):
                for path, streaming in (("store warm", False), ("streaming", True)):
                    epoch, to_model = job_data(parquet, workers, args.batch_size, streaming=streaming)
                    name = f"{path} W={workers}"
                    rates[name] = images_per_second(epoch(), to_model, cpu, name)
            for name, rate in rates.items():
                if rate > best.get(name, 0.0):
                    best[name] = rate
                    best_cpu.update({name: cpu[name]} if name in cpu else {})
                used = (
                    f" (CPU per batch: main {cpu[name][0]:.1f} ms, workers {cpu[name][1]:.1f} ms)"
                    if name in cpu
                    else ""
                )
                print(f"round {repeat}: {name}: {rate:.1f} images/s{used}", flush=True)
    return best, best_cpu


def measure_training(parquet: Path, cache_root: Path, args) -> dict[str, float]:
    """Images/s of the job's training steps (tiny 224 px conv AE): warm store (0 workers) vs streamed (2 workers),
    blocks of ``--steps`` steps alternating (best block kept)."""
    best = {"train store warm W=0": math.inf, "train streaming W=2": math.inf}
    with pixel_cache(cache_root / "warm"), tempfile.TemporaryDirectory() as out:
        runs = {
            "train store warm W=0": job_run(parquet, f"{out}/store", 0, args.batch_size, streaming=False),
            "train streaming W=2": job_run(parquet, f"{out}/stream", 2, args.batch_size, streaming=True),
        }
        for _, steps in runs.values():  # warm-up: workers, allocator, first batches
            for _ in range(args.warmup):
                next(steps)
        for repeat in range(args.repeats + 1):
            order = list(runs.items())[:: 1 if repeat % 2 == 0 else -1]
            for name, (_, steps) in order:
                start = time.perf_counter()
                for _ in range(args.steps):
                    next(steps)
                best[name] = min(best[name], time.perf_counter() - start)
                print(
                    f"block {repeat}: {name}: {args.steps / (time.perf_counter() - start):.2f} it/s",
                    flush=True,
                )
        for run, _ in runs.values():
            run.accelerator.end_training()
    return {name: args.steps * args.batch_size / seconds for name, seconds in best.items()}


def ratios(rates: dict[str, float], workers: list[int]) -> list[tuple[str, float, str]]:
    """``(name, value, target)`` of the issue's acceptance figures that the measured variants allow."""
    rows = []
    for w in workers:
        for path in ("store warm", "streaming"):
            if f"{path} W={w}" in rates and f"baseline W={w}" in rates:
                rows.append(
                    (f"{path} / baseline, W={w}", rates[f"{path} W={w}"] / rates[f"baseline W={w}"], ">= 1.0")
                )
    for path in ("store warm", "streaming", "baseline"):
        if f"{path} W=2" in rates and f"{path} W=0" in rates:
            rows.append(
                (f"{path}: 2 workers / 0 workers", rates[f"{path} W=2"] / rates[f"{path} W=0"], ">= 1.7")
            )
    if "store cold build W=2" in rates and "store cold build W=1" in rates:
        value = rates["store cold build W=2"] / rates["store cold build W=1"]
        rows.append(("store cold build: 2 workers / 1 worker", value, ">= 1.7"))
    if "train streaming W=2" in rates:
        value = rates["train streaming W=2"] / rates["train store warm W=0"]
        rows.append(("training it/s: streaming 2 workers / warm store", value, ">= 0.9"))
    return rows


def cpu_bounds(
    cpu: dict[str, tuple[float, float]], rates: dict[str, float], workers: list[int], batch_size: int
) -> list[str]:
    """What the measured CPU allows ``W`` workers against 0. With ``t`` the measured time per batch at 0 workers
    and ``m``, ``w`` the main process's and the workers' CPU per batch with ``W`` workers: the main process still
    receives and normalises every batch, so ``W`` workers make at most one batch per ``m`` (ratio <= t / m) however
    fast they are, and all of it shares the machine's cores (ratio <= cores * t / (m + w))."""
    cores = len(os.sched_getaffinity(0))
    lines = []
    for path in ("store warm", "streaming", "baseline"):
        if f"{path} W=0" not in rates:
            continue
        alone = 1000 * batch_size / rates[f"{path} W=0"]  # ms per batch at 0 workers
        for w in (w for w in workers if w > 0 and f"{path} W={w}" in cpu):
            main, in_workers = cpu[f"{path} W={w}"]
            lines.append(
                f"BOUND {path}: {w} workers / 0 workers <= {alone / main:.2f} (the main process's share), "
                f"<= {cores * alone / (main + in_workers):.2f} (all CPU on {cores} cores)"
            )
    return lines


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("loaders", "train", "all"), default="all")
    parser.add_argument(
        "--images", type=int, default=2000,
        help="training images of the generated set (enough that starting the workers is a small share of an epoch)",
    )  # fmt: skip
    parser.add_argument("--eval_images", type=int, default=32)
    parser.add_argument(
        "--build_images", type=int, default=2000,
        help="rows of the set the store's cold build is timed on (the training images repeated)",
    )  # fmt: skip
    parser.add_argument("--shards", type=int, default=8, help="parquet files of the training split")
    parser.add_argument("--row_group", type=int, default=16, help="rows per parquet row group")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2, help="interleaved rounds (best kept)")
    parser.add_argument("--steps", type=int, default=8, help="training steps per timed block")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--data", default=None, help="reuse (or keep) the generated set in this directory")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(args.data or scratch) / "imagenet-like"
        os.environ["HF_DATASETS_CACHE"] = str(
            Path(scratch) / "datasets"
        )  # the Arrow copy: not in the timings
        if not root.exists():
            start = time.perf_counter()
            make_set(root, args.images, args.eval_images, args.shards, args.row_group)
            print(
                f"made {args.images} + {args.eval_images} images in {time.perf_counter() - start:.0f} s",
                flush=True,
            )
        parquet, folder = root / "parquet", root / "folder" / "train"
        size = sum(f.stat().st_size for f in parquet.glob("train-*.parquet")) / len(list(folder.rglob("*.*")))
        print(
            f"data: {root} ({size / 1024:.0f} KiB per training image); {torch.get_num_threads()} torch thread(s)"
        )
        rates: dict[str, float] = {}
        if args.part in ("loaders", "all"):
            build = parquet  # the training set itself, or its images repeated (or cut) to --build_images rows
            if args.build_images != args.images:
                build = make_build_set(
                    root / f"build-{args.build_images}", parquet, args.build_images, args.row_group
                )
            print(f"store cold build timed on {args.build_images} images ({build})", flush=True)
            loader_rates, loader_cpu = measure_loaders(parquet, folder, build, Path(scratch) / "cache", args)
            rates.update(loader_rates)
        if args.part in ("train", "all"):
            rates.update(measure_training(parquet, Path(scratch) / "cache", args))
    for name, rate in rates.items():
        unit = "it/s" if name.startswith("train") else "images/s"
        value = rate / args.batch_size if unit == "it/s" else rate
        print(f"RESULT {name}: {value:.2f} {unit}")
    if args.part in ("loaders", "all"):
        for name, (main, workers) in loader_cpu.items():
            print(f"CPU {name}: main process {main:.1f} ms, workers {workers:.1f} ms per batch")
        for line in cpu_bounds(loader_cpu, rates, args.workers, args.batch_size):
            print(line)
    for name, value, target in ratios(rates, args.workers):
        print(f"RATIO {name}: {value:.2f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
