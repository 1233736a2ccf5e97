"""Model cards and Hub uploads for trained models.

:func:`render_model_card` fills ``model_cards/recperc_model_card.md`` (a Jinja template, rendered by
huggingface_hub's :meth:`~huggingface_hub.ModelCard.from_template`) from a run's ``results.json``: what the model
is, its data, objective and hyperparameters, a results table that states reconstruction error *and* perception
metrics, how to load it, limitations and the paper's citation. The YAML header carries ``model-index`` results
built with :class:`~huggingface_hub.EvalResult`: one entry per probe subspace, plus the online probe and the
reconstruction error.

:func:`push_to_hub` uploads a whole output directory with ``HfApi().create_repo`` + ``upload_folder``.
``PreTrainedModel.push_to_hub`` is deliberately not used: it regenerates README.md from transformers' own template
and would replace our card.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .results import LAYERS, SPECTRUM_FIELDS, SUBSPACE_FIELDS, band_key, eval_key, layer_key, spectrum_key

__all__ = [
    "DEFAULT_TEMPLATE",
    "CITATION",
    "HubPushError",
    "render_model_card",
    "model_index_results",
    "eval_results",
    "dataset_fields",
    "push_to_hub",
    "project_url",
]

# The template lives in model_cards/ at the repository root; hf_recperc/templates/ links to it so that a
# built wheel (setuptools copies the link's target) carries it too, not only editable installs.
DEFAULT_TEMPLATE = Path(__file__).parent / "templates" / "recperc_model_card.md"

CITATION = """@inproceedings{balestriero2024learning,
  title     = {How Learning by Reconstruction Produces Uninformative Features for Perception},
  author    = {Balestriero, Randall and LeCun, Yann},
  booktitle = {Proceedings of the 41st International Conference on Machine Learning},
  series    = {Proceedings of Machine Learning Research},
  volume    = {235},
  pages     = {2566--2585},
  year      = {2024},
  eprint    = {2402.11337},
  archivePrefix = {arXiv}
}"""

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
# Files a pushed model needs; README.md must be ours (see the module docstring).
_REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json", "README.md")
# Checkpoints hold optimiser states (twice the weights) and are for resuming, not for users; hidden files are
# temporaries of interrupted writes.
_UPLOAD_IGNORE = ["checkpoints/**", ".*", "**/.*"]


class HubPushError(RuntimeError):
    """Uploading to the Hub failed; the message says why and how to retry from the intact local output."""


# The [project.urls] labels (pyproject.toml) that name the project itself, most specific first; "Paper" is not one.
PROJECT_URL_LABELS = ("repository", "source", "homepage", "documentation")


def project_url() -> str | None:
    """The project's own address from the installed package's metadata (``[project.urls]`` of pyproject.toml:
    Repository, Source, Homepage or Documentation), or ``None``: the card then names hf_recperc without a link
    rather than linking its name to the paper."""
    from importlib.metadata import PackageNotFoundError, metadata  # noqa: PLC0415

    try:
        entries = metadata("hf_recperc").get_all("Project-URL") or []
    except PackageNotFoundError:
        return None
    urls = {}
    for entry in entries:  # "Label, https://..."
        label, _, url = entry.partition(",")
        urls[label.strip().lower()] = url.strip()
    return next((urls[label] for label in PROJECT_URL_LABELS if urls.get(label)), None)


def _hub_dataset_id(source: str) -> str | None:
    """``source`` when it names a Hub data set (not a local path, not the embedded digits), else ``None``."""
    if source == "digits" or Path(source).expanduser().exists() or source.startswith((".", "/", "~")):
        return None
    return source if _HUB_ID.match(source) else None


def _dataset_label(source: str) -> str:
    """A short data set name for tables: the Hub id, ``digits``, or a local path's last component."""
    if source == "digits":
        return "scikit-learn digits (8x8)"
    return _hub_dataset_id(source) or Path(source).name or source


def dataset_fields(source: str) -> dict[str, str]:
    """The ``model-index`` data set of every card entry (training run and perception report alike): its type (the Hub
    id, ``digits``, or a local folder's name), its name for tables, and the split scored."""
    return {
        "dataset_type": _hub_dataset_id(source) or (source if source == "digits" else _dataset_label(source)),
        "dataset_name": _dataset_label(source),
        "dataset_split": "validation",
    }


def eval_results(
    metrics: Mapping[str, Any],
    settings: Mapping[str, Any],
    source: str,
    task_name: str,
    *,
    key: Callable[[str], str] = eval_key,
    prefix: str | None = None,
    feature: str | None = None,
    config_prefix: str = "",
) -> list[EvalResult]:
    """The one ``model-index`` builder: an entry per registered card row (:mod:`hf_recperc.monitors.registry`) with a
    metric type and a finite value, its name stating the run's settings.

    Args:
        metrics: flat results (a run's ``eval/...`` keys, a report's ``layers/...`` keys).
        settings: the run's settings (``results.json`` ``args``, or the report's settings).
        source: the data set the numbers were measured on (:func:`dataset_fields`).
        task_name: the model-index task name.
        key: how a monitor's key is stored in ``metrics``; prefix: a report feature's key prefix.
        feature: named after each metric name (a report's ``layer_<i>/<pooling>``); config_prefix: put before
            each ``metric_config``.
    """
    from .monitors.registry import card_rows  # noqa: PLC0415  (the monitors import torch)

    task = {"task_type": "image-feature-extraction", "task_name": task_name, **dataset_fields(source)}
    entries = []
    for row, value in card_rows(metrics, settings, prefix, key):
        if row.metric_type is None or value is None or not math.isfinite(value):
            continue  # table only, or not measured (monitor off, an empty subspace of degenerate embeddings)
        config = row.config if not config_prefix else f"{config_prefix}{row.config or row.metric_type}"
        entries.append(
            EvalResult(
                **task,
                metric_type=row.metric_type,
                metric_name=row.name if feature is None else f"{row.name}, {feature}",
                metric_config=config,
                metric_value=round(float(value), row.digits),
            )
        )
    return entries


def model_index_results(results: Mapping[str, Any]) -> list[EvalResult]:
    """``model-index`` entries of a run (:func:`eval_results`): the probes per subspace, the online probe, kNN,
    the effective rank, the reconstruction MSE, and any registered monitor's rows.

    Args:
        results: the content of ``results.json`` (flat ``eval/...`` metrics, ``args``, ``run``).
    """
    return eval_results(
        results, results["args"], results["run"]["dataset"], "Linear probes on the embeddings"
    )


def cell(value: Any, spec: str = ".4f") -> str:
    """A table cell: the number formatted, or "not measured" for a missing or NaN value (never "nan")."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "not measured"
    return format(value, spec)


def _measurement_rows(results: Mapping[str, Any]) -> list[tuple[str, str]]:
    """``(metric, value)`` rows of the card's results table, for whatever the run's monitors measured."""
    from .monitors.registry import card_rows  # noqa: PLC0415

    rows = card_rows(results, results["args"], key=eval_key)
    return [(row.label, cell(value, row.format_spec)) for row, value in rows]


def _layer_rows(results: Mapping[str, Any], subspaces: list[str]) -> list[dict[str, str]]:
    """One row per probed layer feature (``layers/<feature>/...``): accuracy per subspace and effective rank."""
    prefix, accuracy = eval_key(f"{LAYERS}/"), f"/{SUBSPACE_FIELDS[0]}/"
    features = sorted(
        {k.removeprefix(prefix).rsplit("/", 2)[0] for k in results if k.startswith(prefix) and accuracy in k},
        key=lambda name: (int(name.split("/")[0].removeprefix("layer_")), name),
    )
    rank = spectrum_key(SPECTRUM_FIELDS[0])
    return [
        {
            "feature": feature,
            "accuracies": [
                cell(results.get(eval_key(layer_key(feature, "accuracy", spec)))) for spec in subspaces
            ],
            "effective_rank": cell(results.get(f"{prefix}{feature}/{rank}"), ".2f"),
        }
        for feature in features
    ]


def _card_data(
    results: Mapping[str, Any], spec: Any, *, model_name: str, base_model: str | None, dataset_id: str | None
) -> ModelCardData:
    """The card's YAML header: license, tags, datasets, base model and ``model-index`` results."""
    return ModelCardData(
        model_name=model_name,
        license=results["args"].get("model_license") or "apache-2.0",
        library_name="transformers",
        pipeline_tag="image-feature-extraction",
        tags=[
            "hf_recperc",
            "self-supervised",
            *spec.card_tags,
            "reconstruction",
        ],
        datasets=[dataset_id] if dataset_id else None,
        base_model=base_model,
        metrics=["accuracy", "mse"],
        eval_results=model_index_results(results),
    )


def _band_cells(results: Mapping[str, Any]) -> dict[str, str]:
    """``{band: cell}`` of the frequency-band measurements; empty when none was measured."""
    band_prefix = eval_key(band_key(""))
    bands = {k.removeprefix(band_prefix): cell(v) for k, v in results.items() if k.startswith(band_prefix)}
    if all(value == "not measured" for value in bands.values()):
        bands = {}
    return bands


def _training_transforms(args: Mapping[str, Any]) -> str:
    """The training augmentations that were on, comma-separated, or ``"none"``."""
    resized_crop = args.get("random_resized_crop")  # absent from runs made before it existed
    return (
        ", ".join(
            part
            for part, on in (
                (f"RandomResizedCrop (area {resized_crop}-1.0 of the image)", resized_crop),
                (f"random crop (padding {args['random_crop_padding']})", args["random_crop_padding"]),
                ("horizontal flip", args["random_flip"]),
            )
            if on
        )
        or "none"
    )


def _hyperparameters(results: Mapping[str, Any], family: str) -> dict[str, Any]:
    """The card's hyperparameter table: ``{row label: value}`` from the run's arguments and run record."""
    args, run = results["args"], results["run"]
    preset = run.get("preset") or args.get("model_name_or_path") or f"{family} default"
    return {
        "model family / preset": f"{family} / {preset}",
        "monitors": ", ".join(run.get("monitors") or []) or "default",
        "parameters": f"{run['num_parameters']:,}",
        "corruption": run["corruption"],
        "guidance g": run["guidance"],
        "optimiser": f"AdamW (betas {args['adam_beta1']}, {args['adam_beta2']}; weight decay {args['weight_decay']})",
        "learning rate": f"{run['effective_learning_rate']:g}"
        + (f" (= {args['learning_rate']:g} x {run['total_batch_size']} / 256)" if args["scale_lr"] else ""),
        "schedule": f"{args['lr_scheduler_type']}, warmup {args['warmup_steps'] or args['warmup_ratio']}",
        "total batch size": f"{run['total_batch_size']} ({run['num_processes']} process(es) x "
        f"{args['per_device_train_batch_size']} x {args['gradient_accumulation_steps']} accumulation)",
        "steps / epochs": f"{results['step']} / {results['epoch']:.2f}",
        "mixed precision": run["mixed_precision"],
        "augmentation": _training_transforms(args),
        "seed": args["seed"],
        # The run's one duration (results.json run.runtime_seconds), which the run's last log line quotes.
        "training time": f"{run['runtime_seconds']:.1f} s on {run['device']} (until publishing)",
    }


def render_model_card(
    results: Mapping[str, Any],
    *,
    hub_model_id: str | None = None,
    figures: Mapping[str, str] | None = None,
    template_path: str | Path = DEFAULT_TEMPLATE,
) -> ModelCard:
    """The model card of a run.

    Args:
        results: the content of ``results.json`` written by :func:`hf_recperc.training.train`.
        hub_model_id: the repository the card will live in (used in the loading example and as model name).
        figures: ``{caption: file name}`` of PNG files next to the card.
        template_path: a Jinja template; it must start with the ``card_data`` YAML block.

    Returns:
        A :class:`~huggingface_hub.ModelCard`; ``card.save(output_dir / "README.md")`` writes it.
    """
    template_path = Path(template_path)
    if not template_path.is_file():
        raise ValueError(f"template_path: {str(template_path)!r} does not exist")
    args, run = results["args"], results["run"]
    model_name = (hub_model_id or Path(args["output_dir"]).name).split("/")[-1]
    base_model = args.get("model_name_or_path")
    base_model = base_model if base_model and _hub_dataset_id(base_model) else None  # Hub ids only
    dataset_id = _hub_dataset_id(run["dataset"])
    from .models import get_family  # noqa: PLC0415  (the model families import torch)

    family = run["family"]
    spec = get_family(family, argument="results['run']['family']")
    card_data = _card_data(results, spec, model_name=model_name, base_model=base_model, dataset_id=dataset_id)
    bands, hyperparameters = _band_cells(results), _hyperparameters(results, family)
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path),
        model_name=model_name,
        repo_id=hub_model_id or "path/to/output_dir",
        family=family,
        description=spec.card_description(run["corruption"]),
        model_type=run["model_type"],
        dataset_label=_dataset_label(run["dataset"]),
        dataset_id=dataset_id,
        num_train=run["num_train"],
        num_validation=run["num_validation"],
        num_labels=len(run["label_names"]),
        corruption=run["corruption"],
        guidance=run["guidance"],
        hyperparameters=hyperparameters,
        measurements=_measurement_rows(results),
        layer_subspaces=args["probe_subspaces"],
        layers=_layer_rows(results, args["probe_subspaces"]),
        probe=f"closed-form ridge (penalty {args['probe_ridge']:g} x mean eigenvalue)"
        + (", standardised features" if args["probe_standardize"] else ""),
        bands=bands,
        figures=dict(figures or {}),
        versions=results["versions"],
        citation=CITATION,
        project_url=project_url(),
    )


def push_to_hub(
    output_dir: str | Path,
    hub_model_id: str,
    *,
    private: bool = False,
    token: str | None = None,
    commit_message: str = "Upload hf_recperc model",
) -> str:
    """Upload a finished output directory (model, processor, card, results, figures, logs) to the Hub.

    ``checkpoints/`` and hidden temporaries are left out. The card uploaded is the directory's README.md as it is.

    Args:
        output_dir: a directory written by :func:`hf_recperc.training.train`.
        hub_model_id: ``"user/name"`` (or ``"name"`` for the token's own namespace).
        private: create the repository as private (an existing repository keeps its visibility).
        token: a Hub token; by default huggingface_hub's (``HF_TOKEN`` or ``hf auth login``).
        commit_message: the commit message.

    Returns:
        The URL of the repository.

    Raises:
        ValueError: ``output_dir`` is not a finished run, or ``hub_model_id`` is malformed.
        HubPushError: the Hub could not be reached or refused the upload (offline mode, no token, ...); the
            local output is untouched.
    """
    from huggingface_hub import HfApi  # noqa: PLC0415  (looked up at call time: tests intercept HfApi)

    if not isinstance(hub_model_id, str) or not _HUB_ID.match(hub_model_id) or hub_model_id.count("/") > 1:
        raise ValueError(f"hub_model_id: expected 'user/name', got {hub_model_id!r}")
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise ValueError(f"output_dir: {str(output_dir)!r} is not a directory")
    missing = [name for name in _REQUIRED_FILES if not (output_dir / name).is_file()]
    if missing:
        raise ValueError(f"output_dir: {str(output_dir)!r} is not a finished run, it lacks {missing}")
    api = HfApi(token=token)
    try:
        repo_url = api.create_repo(hub_model_id, private=private, exist_ok=True, repo_type="model")
        api.upload_folder(
            repo_id=hub_model_id,
            folder_path=str(output_dir),
            repo_type="model",
            commit_message=commit_message,
            ignore_patterns=_UPLOAD_IGNORE,
        )
    except Exception as err:  # offline mode, network, authentication, permissions: one clear message
        raise HubPushError(
            f"push_to_hub: could not upload {str(output_dir)!r} to {hub_model_id!r} ({type(err).__name__}: {err}). "
            f"The local output in {str(output_dir)!r} is complete; push it later with "
            f"`python scripts/push_to_hub.py {output_dir} --hub_model_id {hub_model_id}`"
        ) from err
    return str(repo_url)
