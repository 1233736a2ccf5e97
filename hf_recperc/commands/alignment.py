"""E5 (docs/science.md sections 3-4): which noise can make a linear autoencoder learn features for perception?

For every corruption, the closed-form optimal linear (denoising) autoencoder of every latent size K gives
a task-alignment curve (how much of the label signal its K-dimensional code can reach, in %), a
denoising benefit against no noise, and the noise audit: ``never beneficial`` (the learned subspaces are
PCA's for every K, whatever the labels; isotropic Gaussian noise), ``can help`` (a benefit above
``hf_recperc.findings.BENEFIT_MARGIN`` percent at some K on these data), ``no gain here`` (other subspaces than PCA's,
but no measurable benefit on these data) or ``too few images`` (:func:`hf_recperc.findings.noise_verdict`).

Examples::

    recperc-alignment                                   # embedded digits, default grid
    recperc-alignment --dataset_name path/to/cifar10 --max_train_samples 5000 \\
        --output_dir alignment_cifar10
    recperc-alignment --corruptions none gaussian:0.1 mask:0.25:1 mask:0.75:4

Writes ``alignment.png`` (alignment vs K), ``denoising_benefit.png`` (benefit vs K, one curve per mask
ratio, one panel per patch size, as in the paper) and ``alignment.json`` (all curves and audits) to
``--output_dir``, and prints the audit. Data are preprocessed as in docs/science.md section 2.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..cli import DataArguments, parse_arguments
from ..corruption import GaussianNoise, Masking, parse_corruption
from ..findings import noise_verdict
from ..images import images_to_array, paper_preprocessing
from ..plotting import plot_curve_panels
from ..publish import OutputDirectory, Outputs, json_marker, write_json
from ..theory import alignment_study, check_theory_memory, theory_memory
from ..validation import available_memory
from . import configure_logging, run_command

logger = logging.getLogger(__name__)

# docs/science.md section 4's grid: mask ratios linspace(0, 0.99, 10) (ratio 0 is "none") at patch sizes 1, 2, 4,
# plus Gaussian noise at a few std (in units of the preprocessed pixels, whose per-image std is 1).
DEFAULT_CORRUPTIONS = ["none", "gaussian:0.1", "gaussian:0.5", "gaussian:2"] + [
    f"mask:{ratio:g}:{patch}" for patch in (1, 2, 4) for ratio in np.linspace(0, 0.99, 10)[1:].round(2)
]


@dataclass
class AlignmentArguments:
    corruptions: list[str] = field(
        default_factory=lambda: list(DEFAULT_CORRUPTIONS),
        metadata={
            "help": "Corruptions: 'none', 'gaussian:STD', 'mask:RATIO:PATCH'. "
            "Default: the paper's grid (docs/science.md section 4)."
        },
    )
    output_dir: str = field(default="alignment", metadata={"help": "Where figures and alignment.json go."})
    tol: float = field(
        default=1e-4, metadata={"help": "Audit: largest ||sin Theta_K||_F counted as 'same as PCA'."}
    )
    gap_tol: float = field(
        default=1e-6, metadata={"help": "Audit: skip K whose relative eigen-gap is below this (degenerate)."}
    )
    disable_tqdm: bool = field(default=False, metadata={"help": "Hide the progress bar."})
    image_size: int | None = field(
        default=None, metadata={"help": "Resize every image to N x N pixels (needed when sizes differ)."}
    )


def figure_panels(study: dict, key: str) -> dict:
    """``{panel: {label: (ks, curve)}}``: no noise + Gaussian in one panel, masking by patch size."""
    ks = np.array(study["ks"][: study["rank"]])  # beyond the rank every curve is flat (100% / 0)
    panels: dict = {"no noise / Gaussian": {}}
    for spec, result in study["corruptions"].items():
        corruption = parse_corruption(spec)
        curve = np.array(result[key][: study["rank"]], dtype=float)
        if isinstance(corruption, Masking) and not corruption.is_identity:
            title = f"masking, {corruption.patch_size}x{corruption.patch_size} patches"
            panels.setdefault(title, {})[f"ratio {corruption.ratio:g}"] = (ks, curve)
        elif isinstance(corruption, GaussianNoise) and not corruption.is_identity:
            panels["no noise / Gaussian"][f"std {corruption.std:g}"] = (ks, curve)
        else:
            panels["no noise / Gaussian"].setdefault("no noise", (ks, curve))
    return {title: curves for title, curves in panels.items() if curves}


def best_benefit(study: dict, result: dict) -> tuple[float, int]:
    """``(benefit in %, K)`` of a corruption's largest benefit up to the rank (beyond it every code spans all of
    X: benefit 0, nothing to report there); NaN when no K has one."""
    benefits = np.array([np.nan if b is None else b for b in result["benefit"][: study["rank"]]])
    if not np.isfinite(benefits).any():
        return float("nan"), 1
    best = int(np.nanargmax(benefits))
    return float(benefits[best]), best + 1


def add_verdicts(study: dict) -> dict:
    """Each corruption's ``verdict`` (:func:`hf_recperc.findings.noise_verdict`), in place; returns ``study``."""
    for result in study["corruptions"].values():
        benefit, _ = best_benefit(study, result)
        result["verdict"] = noise_verdict(result["never_beneficial"], benefit, study["num_samples"])
    return study


def audit_lines(study: dict) -> list[str]:
    width = max(len(spec) for spec in study["corruptions"])
    lines = []
    for spec, result in study["corruptions"].items():
        benefit, best_k = best_benefit(study, result)
        verdict = result.get("verdict") or noise_verdict(
            result["never_beneficial"], benefit, study["num_samples"]
        )
        detail = f"max ||sin Theta_K||_F {result['max_subspace_distance']:.2g}"
        if not result["never_beneficial"]:
            detail += f" at K={result['worst_k']}"
        detail += f" ({result['checked_ks']} K compared); best benefit {benefit:+.2f}% at K={best_k}"
        lines.append(f"  {spec:<{width}}  {verdict:<16}  {detail}")
    return lines


# What the command writes into --output_dir (a user's file of these names is never overwritten).
ALIGNMENT_OUTPUTS = Outputs(
    command="alignment",
    names=frozenset({"alignment.json", "alignment.png", "denoising_benefit.png"}),
    legacy=json_marker("alignment.json", ("corruptions", "ks", "rank")),
)


def check_memory_before_decoding(data, image_size: int | None) -> None:
    """Refuse, from the first image alone, images whose closed-form theory cannot fit in memory (before decoding
    them all): the ``D x D`` matrices grow as the fourth power of the image side."""
    first = images_to_array(data.train.select([0]), data.image_column, image_size=image_size, cache=False)
    channels, height, width = first.shape[1:]
    num_samples, limit = len(data.train), available_memory()
    side = min(height, width)
    while side > 1 and theory_memory(num_samples, channels * side * side) > limit:
        side = int(side / 1.1)
    check_theory_memory(
        "image_size",
        num_samples,
        channels * height * width,
        hint=f"images of {channels} x {height} x {width} pixels; pass --image_size {side} or smaller",
    )


def _figure_writers(study: dict, name: str) -> dict:
    """``{file name: writer}`` of the two figures for :meth:`OutputDirectory.write`: task alignment and denoising
    benefit against K (:func:`figure_panels`), titled with the data set's ``name``."""

    def figure(kind: str, ylabel: str, title: str, **options):
        return functools.partial(
            plot_curve_panels, figure_panels(study, kind), xlabel="latent size K", ylabel=ylabel,
            title=f"{title}, {name}", logx=True, colormap="viridis", **options,
        )  # fmt: skip

    alignment_figure = figure(
        "alignment", "task alignment (%)", "Optimal linear (denoising) autoencoders: task alignment"
    )
    # Gaussian benefits are 0 up to round-off: min_yspan shows them as flat, not as 1e-12 wiggles.
    benefit_figure = figure(
        "benefit", "denoising benefit (%)", "Alignment gained over no noise", reference=0.0, min_yspan=1.0
    )
    return {"alignment.png": alignment_figure, "denoising_benefit.png": benefit_figure}


def run(argv: Sequence[str] | None = None) -> dict:
    """Parse ``argv``, solve every corruption in closed form, write figures and curves; returns the study."""
    data_args, args = parse_arguments((DataArguments, AlignmentArguments), argv)
    configure_logging(logging.INFO)
    corruptions = [parse_corruption(spec) for spec in args.corruptions]  # fail on a typo before loading data
    output = OutputDirectory(args.output_dir, ALIGNMENT_OUTPUTS)
    output.check()  # a user's alignment.json: refused before loading data

    data = data_args.load()
    check_memory_before_decoding(data, args.image_size)
    images = images_to_array(
        data.train, data.image_column, image_size=args.image_size
    )  # (N, C, H, W) in [0, 1]
    X = paper_preprocessing(images)  # (N, D)
    labels = np.asarray(data.train[data.label_column])
    logger.info("%d images of %s, image shape %s", len(X), data.source, images.shape[1:])

    study = alignment_study(
        X,
        labels,
        corruptions,
        image_shape=tuple(images.shape[1:]),
        tol=args.tol,
        gap_tol=args.gap_tol,
        progress=not args.disable_tqdm,
    )
    study = add_verdicts({"dataset": data.source, "image_shape": list(images.shape[1:]), **study})

    name = f"{Path(data.source).name} ({len(X)} images, D={study['dim']})"
    output_dir = output.write(
        {
            **_figure_writers(study, name),
            "alignment.json": functools.partial(write_json, payload=study, indent=None),
        }
    )

    print(f"noise audit (docs/science.md section 4) on {name}, rank {study['rank']}:")
    print("\n".join(audit_lines(study)))
    print(f"figures: {output_dir / 'alignment.png'}, {output_dir / 'denoising_benefit.png'}")
    print(f"curves: {output_dir / 'alignment.json'}")
    return study


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point ``recperc-alignment``: exit code 0, or 2 with ``error: ...`` for bad input."""
    return run_command(run, argv)
