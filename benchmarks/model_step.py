"""Cost of the hybrid objective: a RecPercMAEForPreTraining step against a plain ViTMAEForPreTraining step.

    python benchmarks/model_step.py                              # CPU, preset cifar-vit-tiny, batch 32
    python benchmarks/model_step.py --device cuda --batch_size 256
    python benchmarks/model_step.py --threads 1 --clock process   # on a busy shared CPU machine

Both models share one configuration (the preset) and the same weights, pixels and masking noise; the hybrid
model also gets labels and ``guidance`` (0.01 by default), so it pays for the probe, its cross-entropy, the
label check and the image-shaped reconstruction. One step is ``zero_grad``, forward and backward (no optimiser
update, identical for both). Repeats alternate between the models (and which goes first) so that drifts in
machine load hit both alike; each figure is the median over repeats.

Target (issue 3): the hybrid step costs <= 5% more than the plain one.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from transformers import ViTMAEConfig, ViTMAEForPreTraining

from hf_recperc import RecPercMAEConfig, RecPercMAEForPreTraining


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="cifar-vit-tiny", choices=RecPercMAEConfig.presets())
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--guidance", type=float, default=0.01)
    parser.add_argument("--repeats", type=int, default=15, help="timed repeats per model (median reported)")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed repeat")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per model first")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (or cuda:N)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument(
        "--clock",
        choices=("wall", "process"),
        default="wall",
        help="wall: elapsed time; process: this process's CPU time (steadier on a shared CPU machine)",
    )
    args = parser.parse_args(argv)
    for name in ("batch_size", "repeats", "steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name}: expected an integer >= 1, got {getattr(args, name)}")
    if args.guidance < 0:
        parser.error(f"--guidance: expected a number >= 0, got {args.guidance}")
    if args.clock == "process" and args.device != "cpu":
        parser.error("--clock process measures CPU time; use it with --device cpu")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: CUDA is not available on this machine")
    return args


def build_models(preset: str, guidance: float, device: torch.device):
    config = RecPercMAEConfig.preset(preset, guidance=guidance)
    hybrid = RecPercMAEForPreTraining(config).to(device).train()
    # The same ViTMAE fields, none of ours; identical weights so both do the same arithmetic.
    vitmae_fields = {
        name: getattr(config, name) for name in ViTMAEConfig().to_dict() if hasattr(config, name)
    }
    vitmae_fields = {
        k: v for k, v in vitmae_fields.items() if k not in ("model_type", "transformers_version")
    }
    plain = ViTMAEForPreTraining(ViTMAEConfig(**vitmae_fields)).to(device).train()
    missing, unexpected = plain.load_state_dict(hybrid.state_dict(), strict=False)
    if missing or set(unexpected) != {"probe.weight", "probe.bias"}:
        raise RuntimeError(f"weights do not line up: missing {missing}, unexpected {unexpected}")
    return config, hybrid, plain


def make_step(model, inputs: dict, device: torch.device, clock=time.perf_counter):
    def step():
        model.zero_grad(set_to_none=True)
        model(**inputs).loss.backward()

    def timed(steps: int) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = clock()
        for _ in range(steps):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return clock() - start

    return step, timed


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    config, hybrid, plain = build_models(args.preset, args.guidance, device)

    num_patches = (config.image_size // config.patch_size) ** 2
    shape = (args.batch_size, config.num_channels, config.image_size, config.image_size)
    pixels = torch.randn(shape, device=device)
    noise = torch.rand(args.batch_size, num_patches, device=device)
    labels = torch.randint(0, config.num_labels, (args.batch_size,), device=device)
    clock = time.process_time if args.clock == "process" else time.perf_counter
    runs = {
        "hybrid": make_step(hybrid, dict(pixel_values=pixels, noise=noise, labels=labels), device, clock),
        "plain": make_step(plain, dict(pixel_values=pixels, noise=noise), device, clock),
    }
    for step, _ in runs.values():
        for _ in range(args.warmup):
            step()

    seconds = {name: [] for name in runs}
    for repeat in range(args.repeats):
        order = ("hybrid", "plain") if repeat % 2 == 0 else ("plain", "hybrid")
        for name in order:
            seconds[name].append(runs[name][1](args.steps))

    images = args.batch_size * args.steps
    result = {name: images / statistics.median(times) for name, times in seconds.items()}
    overhead = result["plain"] / result["hybrid"] - 1.0
    device_name = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu x{torch.get_num_threads()}"
    )
    print(
        f"preset {args.preset}, batch {args.batch_size}, guidance {args.guidance}, device {device_name}, "
        f"{args.repeats} interleaved repeats x {args.steps} steps (forward + backward), {args.clock} clock"
    )
    print(f"plain ViTMAEForPreTraining      : {result['plain']:9.1f} images/s")
    print(f"hybrid RecPercMAEForPreTraining : {result['hybrid']:9.1f} images/s")
    print(f"ratio hybrid/plain time         : {1 + overhead:.3f}  ({overhead:+.1%}; target <= +5%)")
    return {**result, "overhead": overhead}


if __name__ == "__main__":
    main()
