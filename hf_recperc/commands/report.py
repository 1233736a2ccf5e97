"""``scripts/perception_report.py`` / ``recperc-report``: the perception report of any vision model, one command.

    accelerate launch scripts/perception_report.py --model_name_or_path MODEL --dataset_name DATA \
        [--layers last|all|IDX ...] [--pooling cls|mean|pooler ...] [--subspaces top:0.9 bottom:0.2 all] \
        [--monitors subspace knn spectrum ridge_cv linear_grid knn_grid few_shot attentive_probe pca_maps]
        [--monitor_settings 'knn_grid_k=[10,20],protocol_seed=1'] [--max_train_samples N] [--output_dir DIR]
        [--update_model_card] [--feature_cache DIR]

Several models (``--model_name_or_path A B C``) get a report each, in a subfolder of ``--output_dir`` named after
the model, and one comparison table and figure in ``--output_dir`` itself (:mod:`hf_recperc.report.table`).

Bad input is one line ``error: <argument>: ...`` on stderr and exit code 2, with nothing written.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from ..cli import DataArguments, parse_arguments, parse_config_overrides
from ..monitors import DEFAULT_SUBSPACES, monitor_names
from . import configure_logging, run_command

__all__ = ["ReportArguments", "ReportDataArguments", "main", "run", "run_several"]


@dataclass
class ReportArguments:
    """What to report on and where (data flags: :class:`hf_recperc.cli.DataArguments`)."""

    model_name_or_path: list[str] = field(
        metadata={
            "help": "Hub id or local directory of a transformers vision model (ours included), timm:<name>, "
            "hf-hub:timm/<name>, or a timm save_for_hf directory. Several: a report each (in a subfolder of "
            "output_dir named after the model) and one comparison table."
        }
    )
    layers: list[str] = field(
        default_factory=lambda: ["last"],
        metadata={
            "help": "'last', 'all' (every block) or layer indices (0 = embeddings/input, negative from the end)."
        },
    )
    pooling: list[str] | None = field(
        default=None,
        metadata={
            "help": "Among cls, mean, pooler (the model's pooled output, last layer), tokens (every token of a "
            "transformer layer, read only by attentive_probe and pca_maps). Default: the model's."
        },
    )
    subspaces: list[str] = field(
        default_factory=lambda: list(DEFAULT_SUBSPACES),
        metadata={"help": "Probe subspaces (top:p, bottom:q, all...)."},
    )
    monitors: list[str] = field(
        default_factory=lambda: ["subspace", "knn", "spectrum"],
        metadata={"help": f"Among {', '.join(monitor_names(per_feature=True))} (docs/protocols.md)."},
    )
    monitor_settings: str | None = field(
        default=None,
        metadata={
            "help": "Settings of the monitors as key=value pairs separated by commas, values read as JSON, e.g. "
            "'knn_grid_k=[10,20],few_shot_shots=[1,5],protocol_seed=1' (names: docs/protocols.md)."
        },
    )
    output_dir: str = field(
        default="outputs/perception_report",
        metadata={"help": "Where the report goes (default under outputs/, beside the training runs)."},
    )
    per_device_batch_size: int = field(default=64, metadata={"help": "Images per forward pass, per process."})
    mixed_precision: str = field(
        default="no", metadata={"help": "'no' (the model's dtype), 'bf16' or 'fp16'."}
    )
    image_size: int | None = field(
        default=None, metadata={"help": "Resize images to this size (default: processor's)."}
    )
    trust_remote_code: bool = field(default=False, metadata={"help": "Passed to the Auto classes."})
    ridge: float = field(default=1e-3, metadata={"help": "Ridge penalty of the probes."})
    knn_k: int = field(default=20, metadata={"help": "Neighbours of the kNN vote."})
    dataloader_num_workers: int = field(default=0, metadata={"help": "Image decoding workers per process."})
    seed: int | None = field(
        default=None,
        metadata={
            "help": "Seed of a validation split carved out of train. Default: the model's training run's (our "
            "checkpoints: the report then scores the run's own validation images), else 0."
        },
    )
    update_model_card: bool = field(
        default=False,
        metadata={"help": "Add the results as model-index entries to the local model's README.md."},
    )
    push_to_hub: bool = field(default=False, metadata={"help": "Upload the updated README.md (card only)."})
    hub_model_id: str | None = field(default=None, metadata={"help": "Repository the card is pushed to."})
    hub_token: str | None = field(
        default=None, metadata={"help": "Token for the push (default: the stored login)."}
    )
    feature_cache: str | None = field(
        default=None,
        metadata={
            "help": "Folder keeping the pooled features per model, data and extraction settings; a later report "
            "on them (other subspaces, k, monitors) reads them without loading the model."
        },
    )


@dataclass
class ReportDataArguments(DataArguments):
    """The shared data flags; a carved split's fraction defaults to the model's training run's."""

    train_val_split: float | None = field(
        default=None,
        metadata={
            "help": "Fraction of train held out for validation when the data has no such split. Default: the "
            "model's training run's (our checkpoints), else 0.2."
        },
    )


def _model_folders(models: Sequence[str], output_dir: str) -> list[Path]:
    """One subfolder of ``output_dir`` per model, named after it (a path's last part, a Hub id with ``--`` for
    ``/``), made unique with ``-2``, ``-3``..."""
    folders, used = [], set()
    for name in models:
        stem = Path(name).name if Path(name).expanduser().is_dir() else name
        stem = re.sub(r"[^A-Za-z0-9._-]+", "--", stem).strip(".-") or "model"
        folder, count = stem, 1
        while folder in used:
            count += 1
            folder = f"{stem}-{count}"
        used.add(folder)
        folders.append(Path(output_dir) / folder)
    return folders


def run_several(args: ReportArguments, data_args: DataArguments) -> list[dict]:
    """A report per model in its own subfolder of ``output_dir``, then the comparison table in ``output_dir``;
    every folder is checked before the first model is loaded."""
    from ..report.run import report_output_dir  # noqa: PLC0415
    from ..report.table import load_reports, table_output_dir, write_comparison  # noqa: PLC0415

    for flag in ("update_model_card", "push_to_hub"):
        if getattr(args, flag):
            raise ValueError(f"{flag}: updates one model's card; run the report of each model alone for that")
    folders = _model_folders(args.model_name_or_path, args.output_dir)
    table_output_dir(args.output_dir).check()
    for folder in folders:
        report_output_dir(folder).check()
    reports = [
        run(replace(args, model_name_or_path=[model], output_dir=str(folder)), data_args)
        for model, folder in zip(args.model_name_or_path, folders, strict=True)
    ]
    if os.environ.get("RANK", "0") == "0":
        write_comparison(load_reports(folders), args.output_dir)
    return reports


def run(args: ReportArguments, data_args: DataArguments) -> dict:
    """Check the arguments, run :func:`hf_recperc.perception_report` on every process, update the card."""
    from ..report import perception_report  # noqa: PLC0415
    from ..report.card import check_model_card_target, push_model_card, update_model_card  # noqa: PLC0415

    if isinstance(args.model_name_or_path, str):  # a caller's ReportArguments of one model
        args = replace(args, model_name_or_path=[args.model_name_or_path])
    if len(args.model_name_or_path) != 1:
        raise ValueError(
            f"model_name_or_path: run() reports on one model, got {len(args.model_name_or_path)} (run_several)"
        )
    model_name_or_path = args.model_name_or_path[0]
    if args.push_to_hub and not args.update_model_card:
        raise ValueError("push_to_hub: uploads the updated model card, so it needs --update_model_card")
    if args.push_to_hub and not args.hub_model_id:
        raise ValueError("hub_model_id: required with --push_to_hub (the repository the card goes to)")
    if args.update_model_card:
        check_model_card_target(model_name_or_path)
    from accelerate import PartialState  # noqa: PLC0415

    from ..training.environment import no_accelerator_device  # noqa: PLC0415

    state = PartialState(cpu=no_accelerator_device())
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if launched > 1 and state.num_processes != launched:
        raise RuntimeError(
            f"launched as {launched} processes but accelerate formed a group of {state.num_processes}"
        )
    data_kwargs = {k: v for k, v in asdict(data_args).items() if k not in ("dataset_name",)}
    data_kwargs["seed"] = args.seed
    report = perception_report(
        model_name_or_path,
        data_args.dataset_name,
        layers=args.layers,
        poolings=args.pooling,
        subspaces=args.subspaces,
        monitors=args.monitors,
        output_dir=args.output_dir,
        batch_size=args.per_device_batch_size,
        mixed_precision=args.mixed_precision,
        image_size=args.image_size,
        trust_remote_code=args.trust_remote_code,
        device=state.device,
        ridge=args.ridge,
        knn_k=args.knn_k,
        num_workers=args.dataloader_num_workers,
        data_kwargs=data_kwargs,
        monitor_settings=parse_config_overrides(args.monitor_settings, "monitor_settings"),
        progress=True,  # one bar per split, log lines above it
        feature_cache=args.feature_cache,
    )
    if state.is_main_process and args.update_model_card:
        card = update_model_card(model_name_or_path, report)
        print(f"model card updated: {card}")
        if args.push_to_hub:
            print(
                f"model card pushed: {push_model_card(model_name_or_path, args.hub_model_id, args.hub_token)}"
            )
    return report


def _report(argv: Sequence[str] | None) -> int:
    """Parse, report, print the finding and where the report went."""
    configure_logging(logging.WARNING)
    logging.getLogger("hf_recperc.report.cache").setLevel(logging.INFO)  # "features ... read from cache ..."
    args, data_args = parse_arguments([ReportArguments, ReportDataArguments], argv)
    if len(args.model_name_or_path) > 1:
        reports = run_several(args, data_args)
        if os.environ.get("RANK", "0") == "0":
            for model, report in zip(args.model_name_or_path, reports, strict=True):
                print(f"{model}: {report['finding'] or ''}")
            print(f"reports and their comparison in {args.output_dir}")
        return 0
    report = run(args, data_args)
    if os.environ.get("RANK", "0") == "0":
        print(report["finding"] or "")
        print(f"report in {args.output_dir}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry point: one-line ``error: ...`` and exit code 2 on bad input."""
    return run_command(_report, argv)
