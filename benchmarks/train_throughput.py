"""Training throughput of ``scripts/pretrain.py`` against a bare PyTorch loop, and the monitor's share (issue 11).

    OMP_NUM_THREADS=1 python benchmarks/train_throughput.py                  # both parts, CIFAR-10, ~6 minutes
    python benchmarks/train_throughput.py --part steps --presets cifar-conv-small
    python benchmarks/train_throughput.py --part monitor --epochs 5

Part ``steps``: the job's training steps (``PretrainingRun``: loader, on-device data path, seeded randomness,
forward, backward, clipping, AdamW, schedule, loss bookkeeping, logging; evaluation and checkpoints excluded) against
a bare loop over the same model (same initial weights), the same optimiser (AdamW with the job's parameter groups,
the same clipping and schedule) and the training images preloaded as normalised float tensors. Blocks of ``--steps``
steps alternate between the two (which one goes first alternates too) so that load drifts on a shared machine hit
both; each figure is the best block. Acceptance: job / bare >= 0.95.

Part ``monitor``: a default run of ``--epochs`` epochs (evaluation every epoch, every monitor) on
``--max_train_samples`` images, twice, each in a fresh process: the first with empty caches (pixel store, pixel
spectrum and datasets' Arrow cache in a temporary directory), the second warm. Reports the monitor's share of the
first run's wall time (evaluations plus the pixel spectrum; acceptance <= 10%) and the second run's time to the
first step against the first's (acceptance <= 10%).

The ratios are printed last.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
CIFAR10 = ROOT.parent / "shared" / "data" / "cifar10"
FAMILY = {"cifar-conv-small": "ae", "cifar-vit-tiny": "mae", "cifar-resnet18": "ae"}


def job_argv(preset: str, output_dir: str, args, extra=()) -> list[str]:
    return [
        "--dataset_name", str(args.dataset), "--max_train_samples", str(args.max_train_samples),
        "--model_family", FAMILY[preset], "--preset", preset, "--output_dir", output_dir,
        "--per_device_train_batch_size", str(args.batch_size), "--report_to", "none", "--overwrite_output_dir",
        *extra,
    ]  # fmt: skip


def job_steps(preset: str, output_dir: str, args):
    """The job's training steps as an endless generator (one ``yield`` per optimiser step) and the run."""
    from hf_recperc.training import PretrainingRun, parse_args

    never = str(10**9)  # no evaluation or checkpoint inside the timed steps
    argv = job_argv(preset, output_dir, args, ["--eval_steps", never, "--checkpointing_steps", never])
    data_args, model_args, train_args = parse_args([*argv, "--max_steps", never])
    run = PretrainingRun(data_args, model_args, train_args)
    run.setup()
    run.progress.disable = True
    return run, run.optimiser_steps()  # max_steps is 10**9: endless for the benchmark


def bare_steps(run, args):
    """A bare loop over a copy of the job's model (same initial weights) and preloaded normalised tensors."""
    from transformers import get_scheduler

    from hf_recperc.training.builders import build_optimizer

    model = type(run.model)(run.model.config)
    model.load_state_dict(run.accelerator.unwrap_model(run.prepared_model).state_dict())
    model.to(run.accelerator.device).train()
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_size=1024, collate_fn=run.train_loader.collate_fn
    )
    batches = [run.pipeline.evaluation(batch) for batch in loader]  # normalised, on the device
    pixels = torch.cat([b["pixel_values"] for b in batches])
    labels = torch.cat([b["labels"] for b in batches])
    optimizer = build_optimizer(model, run.args, run.learning_rate, fused=run.defer_non_finite)  # the job's
    scheduler = get_scheduler(
        run.args.lr_scheduler_type, optimizer, num_warmup_steps=10, num_training_steps=10**6
    )
    batch_size = args.batch_size

    def steps():
        while True:
            order = torch.randperm(len(labels), device=pixels.device)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                rows = order[start : start + batch_size]
                loss = model(pixel_values=pixels[rows], labels=labels[rows]).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.args.max_grad_norm)
                optimizer.step()
                scheduler.step()
                yield

    return steps()


def timed_block(steps, count: int, device) -> float:
    start = time.perf_counter()
    for _ in range(count):
        next(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare_steps(preset: str, args) -> float:
    """Images/s of the job's steps and of the bare loop, interleaved; returns job / bare."""
    with tempfile.TemporaryDirectory() as output_dir:
        run, job = job_steps(preset, output_dir, args)
        bare = bare_steps(run, args)
        device = run.accelerator.device
        for steps in (job, bare):  # warm-up: first batches, allocator, lazy initialisation
            timed_block(steps, args.warmup, device)
        best = {"job": math.inf, "bare": math.inf}
        for repeat in range(args.repeats):
            order = [("job", job), ("bare", bare)][:: 1 if repeat % 2 == 0 else -1]
            for name, steps in order:
                best[name] = min(best[name], timed_block(steps, args.steps, device))
        run.accelerator.end_training()
    rates = {name: args.steps * args.batch_size / seconds for name, seconds in best.items()}
    ratio = rates["job"] / rates["bare"]
    print(
        f"{preset}: job {rates['job']:.0f} images/s, bare loop {rates['bare']:.0f} images/s "
        f"(best of {args.repeats} blocks of {args.steps} steps, batch {args.batch_size}, {device})",
        flush=True,
    )
    return ratio


def child_run(output_dir: str, preset: str, args) -> None:
    """One default training run in this process (called by :func:`monitor_share` in a fresh process)."""
    from hf_recperc.training import PretrainingRun, parse_args

    argv = job_argv(preset, output_dir, args, ["--num_train_epochs", str(args.epochs)])
    run = PretrainingRun(*parse_args(argv))
    run.setup()
    run.progress.disable = True
    while run.state.step < run.max_steps:
        for batch in run.epoch_batches():
            if run.train_step(batch):
                run.after_step()
            if run.state.step >= run.max_steps:
                break
    run.publish()
    print("TIMINGS " + json.dumps(run.timer.timings), flush=True)


def monitor_share(preset: str, args) -> tuple[float, float]:
    """Two default runs in fresh processes (cold, then warm caches); returns (monitor share, warm/cold setup)."""
    timings = []
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "HF_RECPERC_CACHE": f"{cache}/recperc", "HF_DATASETS_CACHE": f"{cache}/datasets"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
        for _ in range(2):
            with tempfile.TemporaryDirectory() as output_dir:
                command = [sys.executable, __file__, "--child_run", output_dir, "--presets", preset]
                command += ["--epochs", str(args.epochs), "--max_train_samples", str(args.max_train_samples)]
                command += ["--batch_size", str(args.batch_size), "--dataset", str(args.dataset)]
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
                lines = [line for line in done.stdout.splitlines() if line.startswith("TIMINGS ")]
                if done.returncode or not lines:
                    raise RuntimeError(f"training run failed:\n{done.stderr[-3000:]}")
                timings.append(json.loads(lines[-1].removeprefix("TIMINGS ")))
    cold, warm = timings
    share = cold["monitor"] / cold["total"]
    print(
        f"{preset}, {args.epochs} epochs on {args.max_train_samples} images: cold run {cold['total']:.1f} s "
        f"(data preparation {cold['setup']:.1f} s, training {cold['training']:.1f} s, monitor {cold['monitor']:.1f} s: "
        f"pixel spectrum {cold['spectrum']:.1f} s + evaluations {cold['evaluate']:.1f} s, checkpoints "
        f"{cold['checkpoint']:.1f} s); warm run: data preparation {warm['setup']:.2f} s",
        flush=True,
    )
    return share, warm["setup"] / cold["setup"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("steps", "monitor", "all"), default="all")
    parser.add_argument("--presets", nargs="+", default=["cifar-conv-small", "cifar-vit-tiny"])
    parser.add_argument("--dataset", default=str(CIFAR10))
    parser.add_argument("--max_train_samples", type=int, default=10000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per timed block")
    parser.add_argument("--repeats", type=int, default=6, help="timed blocks per variant (best reported)")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5, help="epochs of the monitor-share run")
    parser.add_argument("--monitor_preset", default="cifar-conv-small")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--child_run", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.child_run:
        child_run(args.child_run, args.presets[0], args)
        return 0
    ratios = {}
    if args.part in ("steps", "all"):
        for preset in args.presets:
            ratios[f"{preset} job/bare images/s"] = (compare_steps(preset, args), ">= 0.95")
    if args.part in ("monitor", "all"):
        share, warm = monitor_share(args.monitor_preset, args)
        ratios["monitor share of the run's wall time"] = (share, "<= 0.10")
        ratios["warm / cold time to first step"] = (warm, "<= 0.10")
    for name, (value, target) in ratios.items():
        print(f"RATIO {name}: {value:.3f} (target {target})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
