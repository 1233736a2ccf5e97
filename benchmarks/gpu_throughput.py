"""Images/s of our training job's step path against transformers' ViTMAEForPreTraining in a bare loop, on one GPU.

    python benchmarks/gpu_throughput.py                      # cuda, bf16: cifar-vit-tiny and ViT-B/16 MAE at 224 px
    python benchmarks/gpu_throughput.py --smoke              # CPU, tiny shapes, a few steps: checks the script runs

Self-contained: synthetic uint8 images (no data set files, no Hub access). For each model:

* **job**: ``PretrainingRun`` (what ``accelerate launch scripts/pretrain.py`` runs) on an in-memory data set of
  the synthetic images, ``--mixed_precision bf16``: the uint8 store, the loader, normalisation on the device, the
  seeded masking noise, ``RecPercMAEForPreTraining`` (guidance 0: its probe reads detached embeddings), backward,
  clipping, fused AdamW with the on-device non-finite guard, the schedule, device-side loss sums, logging;
* **bare**: ``transformers.ViTMAEForPreTraining`` with the same ViTMAE configuration and initial weights, the same
  images preloaded on the GPU as normalised float tensors, ``torch.autocast(bfloat16)``, the same AdamW (fused,
  same parameter groups) and clipping, nothing else.

Blocks of ``--steps`` optimiser steps alternate between the two (order alternating), with a device synchronisation
at each block's end; each figure is the best block. The last lines print ``job / bare``; the target is >= 0.95.
The models: ``cifar-vit-tiny`` (our preset, 32 px, batch 256) and the ``facebook/vit-mae-base`` configuration
(ViT-B/16 encoder, 8-layer 512-wide decoder, mask ratio 0.75, norm_pix_loss, random init, 224 px, batch 128).

Needs hf_recperc's dependencies importable (``datasets`` included, though no data set file is read).
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time

import numpy as np
import torch

VIT_MAE_BASE = dict(  # facebook/vit-mae-base's config.json
    image_size=224, patch_size=16, num_channels=3, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
    intermediate_size=3072, decoder_hidden_size=512, decoder_num_hidden_layers=8, decoder_num_attention_heads=16,
    decoder_intermediate_size=2048, mask_ratio=0.75, norm_pix_loss=True, qkv_bias=True, layer_norm_eps=1e-12,
)  # fmt: skip
SMOKE_SHAPES = dict(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
    decoder_hidden_size=32, decoder_num_hidden_layers=1, decoder_num_attention_heads=2, decoder_intermediate_size=64,
)  # fmt: skip


def synthetic_data(count: int, size: int, num_labels: int = 10, seed: int = 0):
    """An :class:`hf_recperc.images.ImageData` of random uint8 RGB images (``count`` train and 16 validation rows)."""
    import datasets
    from PIL import Image

    from hf_recperc.images import ImageData

    rng = np.random.default_rng(seed)
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=[str(i) for i in range(num_labels)])}
    )

    def split(rows: int) -> datasets.Dataset:
        images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(rows)]
        return datasets.Dataset.from_dict(
            {"image": images, "label": (np.arange(rows) % num_labels).tolist()}, features
        )

    names = [str(i) for i in range(num_labels)]
    return ImageData(split(count), split(16), "image", "label", names, f"synthetic {size}px")


def job_steps(name: str, overrides: dict, args, output_dir: str):
    """Our job's training steps (endless generator) and its run, on synthetic data."""
    from hf_recperc.training import PretrainingRun, parse_args

    never = str(10**9)
    config = ",".join(f"{key}={value}" for key, value in overrides.items()).replace("True", "true")
    argv = [
        "--model_family", "mae", "--preset", "cifar-vit-tiny", "--output_dir", output_dir, "--report_to", "none",
        "--per_device_train_batch_size", str(args.batch_size[name]), "--mixed_precision", args.precision,
        "--max_steps", never, "--eval_steps", never, "--checkpointing_steps", never, "--overwrite_output_dir",
        "--monitors", "reconstruction", *(["--config_overrides", config] if config else []),
    ]  # fmt: skip
    data_args, model_args, train_args = parse_args(argv)
    size = overrides.get("image_size", 32)
    data = synthetic_data(args.images_per_model, size)
    data_args.load = lambda seed=0: data  # the synthetic images instead of a data set on disk
    run = PretrainingRun(data_args, model_args, train_args)
    run.setup()
    run.progress.disable = True
    return run, run.optimiser_steps()  # max_steps is 10**9: endless for the benchmark


def bare_steps(run, args, name: str):
    """transformers' ViTMAEForPreTraining, same configuration and weights, on preloaded normalised tensors."""
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    ours = run.accelerator.unwrap_model(run.prepared_model)
    fields = {k: v for k, v in ours.config.to_dict().items() if k in ViTMAEConfig().to_dict()}
    fields = {
        k: v for k, v in fields.items() if k not in ("model_type", "transformers_version", "architectures")
    }
    device = run.accelerator.device
    model = ViTMAEForPreTraining(ViTMAEConfig(**fields)).to(device).train()
    missing, _ = model.load_state_dict(ours.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f"ViTMAE weights missing from ours: {missing}")
    loader = torch.utils.data.DataLoader(
        run.train_set, batch_size=256, collate_fn=run.train_loader.collate_fn
    )
    pixels = torch.cat([run.pipeline.evaluation(batch)["pixel_values"] for batch in loader])  # (N, C, S, S)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": run.args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=run.learning_rate, betas=(run.args.adam_beta1, run.args.adam_beta2), fused=run.defer_non_finite or None,
    )  # fmt: skip
    batch_size = args.batch_size[name]
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32

    def steps():
        while True:
            order = torch.randperm(len(pixels), device=device)
            for start in range(0, len(order) - batch_size + 1, batch_size):
                with torch.autocast(device.type, dtype=dtype, enabled=args.precision == "bf16"):
                    loss = model(pixel_values=pixels[order[start : start + batch_size]]).loss
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), run.args.max_grad_norm)
                optimizer.step()
                yield

    return steps()


def block(steps, count: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(count):
        next(steps)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compare(name: str, overrides: dict, args) -> float:
    with tempfile.TemporaryDirectory() as output_dir:
        run, job = job_steps(name, overrides, args, output_dir)
        bare = bare_steps(run, args, name)
        device = run.accelerator.device
        block(job, args.warmup, device)
        block(bare, args.warmup, device)
        best = {"job": math.inf, "bare": math.inf}
        for repeat in range(args.repeats):
            pairs = [("job", job), ("bare", bare)][:: 1 if repeat % 2 == 0 else -1]
            for variant, steps in pairs:
                best[variant] = min(best[variant], block(steps, args.steps, device))
        run.guard.check(run.describe_checkpoint)
        run.accelerator.end_training()
    images = args.steps * args.batch_size[name]
    rates = {variant: images / seconds for variant, seconds in best.items()}
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(
        f"{name} on {card} ({args.precision}, batch {args.batch_size[name]}): job {rates['job']:.0f} images/s, "
        f"bare ViTMAEForPreTraining {rates['bare']:.0f} images/s",
        flush=True,
    )
    return rates["job"] / rates["bare"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    parser.add_argument("--steps", type=int, default=20, help="optimiser steps per timed block")
    parser.add_argument("--repeats", type=int, default=5, help="timed blocks per variant (best reported)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=("bf16", "no"), default="bf16")
    parser.add_argument("--images_per_model", type=int, default=1024, help="synthetic training images")
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny shapes, 2 steps: checks the script")
    args = parser.parse_args(argv)
    args.batch_size = {"cifar-vit-tiny": 256, "vit-mae-base": 128}
    args.models = {"cifar-vit-tiny": {}, "vit-mae-base": dict(VIT_MAE_BASE)}
    if args.smoke:
        args.device, args.steps, args.repeats, args.warmup, args.images_per_model = "cpu", 2, 1, 1, 16
        args.batch_size = {"cifar-vit-tiny": 4, "vit-mae-base": 4}
        args.models["vit-mae-base"].update(SMOKE_SHAPES)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda: no GPU here; pass --device cpu or --smoke")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cpu":
        import os

        os.environ["ACCELERATE_USE_CPU"] = "true"  # accelerate picks the CPU
    ratios = {name: compare(name, overrides, args) for name, overrides in args.models.items()}
    for name, ratio in ratios.items():
        print(f"RATIO {name} job/bare images/s: {ratio:.3f} (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
