"""The report's results as ``model-index`` entries of a local model's README card (what is there is kept).

Each probed layer x pooling x subspace becomes one :class:`~huggingface_hub.EvalResult` (plus the kNN accuracy);
entries this report wrote before (same ``metric_config``) are replaced, every other entry and the card's text stay.
:func:`push_model_card` uploads the README alone (``HfApi().upload_file``): the weights on the Hub are untouched.
"""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

from ..publish import write_text

__all__ = ["report_eval_results", "update_model_card", "push_model_card", "REPORT_CONFIG_PREFIX"]

REPORT_CONFIG_PREFIX = "perception_report/"


def report_eval_results(report: dict) -> list[EvalResult]:
    """``model-index`` entries of a perception report, per layer x pooling: every registered monitor's card rows
    (subspace accuracies, kNN, effective rank, ...), built by the one builder of run cards
    (:func:`hf_recperc.cards.eval_results`) with the report's own settings (its ``k``, temperature, subspaces)."""
    from ..cards import eval_results  # noqa: PLC0415
    from ..monitors import feature_prefix  # noqa: PLC0415
    from .run import report_settings  # noqa: PLC0415

    options = report["settings"]
    settings = {
        **options,  # with the settings of registered monitors (perception_report's monitor_settings)
        **report_settings(
            report["subspaces"], options["ridge"], options["knn_k"], options["knn_temperature"]
        ),
    }
    entries = []
    for feature in report["features"]:
        entries += eval_results(
            report["metrics"], settings, report["data"]["source"], "Perception report (linear probes per layer)",
            key=str, prefix=feature_prefix(feature), feature=feature,
            config_prefix=f"{REPORT_CONFIG_PREFIX}{feature}/",
        )  # fmt: skip
    return entries


def check_model_card_target(model_name_or_path) -> Path:
    """``--update_model_card`` needs a local model directory whose ``README.md``, if any, parses as a model card
    (YAML front matter, ``model-index``); checked before any costly work, so a broken card never costs a report."""
    if not isinstance(model_name_or_path, str) or not Path(model_name_or_path).expanduser().is_dir():
        raise ValueError(
            f"update_model_card: expected model_name_or_path to be a local model directory, got {model_name_or_path!r}"
        )
    model_dir = Path(model_name_or_path).expanduser()
    card = model_dir / "README.md"
    if card.exists():
        try:
            ModelCard(card.read_text()).data.eval_results  # noqa: B018  (parses the front matter and model-index)
        except Exception as err:  # yaml's errors, huggingface_hub's ValueError, an unreadable file
            reason = " ".join(f"{type(err).__name__}: {err}".split())[:300]
            raise ValueError(
                f"update_model_card: {str(card)!r} is not a valid model card ({reason}); fix its YAML front matter "
                "(between the leading '---' lines) or move the file away"
            ) from None
    return model_dir


def update_model_card(model_dir: str | Path, report: dict) -> Path:
    """Add the report's results to ``model_dir/README.md`` (created when absent) and return its path."""
    path = check_model_card_target(str(model_dir)) / "README.md"
    if path.exists():
        card = ModelCard(path.read_text())
    else:
        card = ModelCard.from_template(ModelCardData(), model_id=Path(model_dir).name)
    new = report_eval_results(report)
    kept = [
        r
        for r in (card.data.eval_results or [])
        if not str(r.metric_config or "").startswith(REPORT_CONFIG_PREFIX)
    ]
    card.data.eval_results = kept + new
    if not card.data.model_name:
        card.data.model_name = Path(model_dir).resolve().name  # model-index needs a name
    write_text(path, str(card))  # what card.save writes, atomically
    return path


def push_model_card(model_dir: str | Path, repo_id: str, token: str | None = None) -> str:
    """Upload ``model_dir/README.md`` alone to ``repo_id``; returns the commit URL."""
    info = HfApi(token=token).upload_file(
        path_or_fileobj=str(Path(model_dir) / "README.md"),
        path_in_repo="README.md",
        repo_id=repo_id,
        commit_message="Perception report results (hf_recperc)",
    )
    return str(getattr(info, "commit_url", info))
