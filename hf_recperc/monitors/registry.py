"""The registry of monitors: what each measurement is called, how it is built, which keys it reports, and how a
model card, a log line and a report state its numbers (docs/design.md, "The evaluation engine").

A monitor is one file and one registration::

    register_monitor(MonitorSpec(
        name="mean_norm",
        build=lambda context: MeanNormMonitor(context.feature, prefix=context.prefix or ""),
        keys=("mean_norm",),
        card_rows=(CardRow("mean_norm", "mean feature norm", metric_type="norm"),),
        per_feature=True,
    ))

From then on ``--monitors mean_norm`` runs it in the trainer (its keys go to ``history.json``, ``results.json``,
TensorBoard and the model card, model-index included), and ``perception_report(..., monitors=[..., "mean_norm"])``
runs it on every probed layer (``report.json``, and the card that ``--update_model_card`` writes). Every key is
built here or in :mod:`hf_recperc.results`; nothing else spells one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ..results import layer_key
from .base import Monitor

__all__ = [
    "CardRow",
    "MonitorSpec",
    "MonitorContext",
    "register_monitor",
    "get_monitor_spec",
    "monitor_names",
    "build_monitors",
    "card_rows",
    "result_keys",
    "summary_parts",
    "feature_prefix",
    "figure_files",
    "monitor_defaults",
    "check_monitor_settings",
    "monitor_descriptions",
]


@dataclass(frozen=True)
class CardRow:
    """One number of a model card: a row of its results table and, with ``metric_type``, a ``model-index`` entry.

    ``label`` (the table) and ``name`` (model-index, default: ``label``) are ``str.format`` templates over the run's
    settings (``{knn_k}``, ``{knn_temperature:g}``, any argument of the run), so a card states the settings its
    numbers were measured with, never a literal.

    Args:
        key: the result key as the monitor reports it for the embedding (without ``eval/``).
        label, name: see above.
        metric_type: the model-index ``metric_type`` (``accuracy``, ``mse``, ...); ``None``: table only.
        config: the model-index ``metric_config``.
        format_spec: how the table prints the value; digits: how model-index rounds it.
    """

    key: str
    label: str
    metric_type: str | None = "accuracy"
    config: str | None = None
    name: str | None = None
    format_spec: str = ".4f"
    digits: int = 4

    def formatted(self, settings: Mapping[str, Any]) -> CardRow:
        """This row with its label and name filled in from ``settings``."""
        return replace(
            self, label=self.label.format(**settings), name=(self.name or self.label).format(**settings)
        )


@dataclass
class MonitorContext:
    """What a monitor is built from.

    Args:
        settings: the run's settings by argument name (``knn_k``, ``knn_temperature``, ``probe_subspaces``,
            ``probe_ridge``, ``probe_standardize``, ...): the trainer's arguments, or the report's settings.
        feature: the feature the monitor reads (``"embedding"``, ``"layer_3/cls"``).
        prefix: the key prefix (``None``: the monitor's own keys, as for the trainer's embedding;
            ``"layers/<feature>/"`` in the report).
        model: the trainer's model (monitors of its layers), ``None`` in the report.
        resources: anything else a monitor needs (``bands``: the pixel spectrum; ``bank_dtype``: the kNN bank's).
        built: the monitors already built for the same feature, by name (the spectrum reuses the subspace probe's
            eigenvalues).
    """

    settings: Mapping[str, Any]
    feature: str = "embedding"
    prefix: str | None = None
    model: Any = None
    resources: Mapping[str, Any] = field(default_factory=dict)
    built: dict[str, Monitor] = field(default_factory=dict)


@dataclass(frozen=True)
class MonitorSpec:
    """A registered monitor.

    Args:
        name: ``--monitors NAME``; also the monitor object's ``name``.
        build: context -> the :class:`~hf_recperc.monitors.Monitor`.
        keys: the keys it reports for the embedding (without ``eval/``); or settings -> keys (subspaces, bands).
        card_rows: its rows of a model card; or ``(settings, prefix) -> rows`` when they depend on the results
            (the subspace probe states each subspace's dimensions).
        summary: ``(key, label)`` pairs of the log line of an evaluation (``"kNN"`` for ``knn/accuracy``).
        per_feature: it reads nothing but ``features[context.feature]`` and the labels, so the report can run it
            on any pooled layer (keys then under ``layers/<feature>/``); otherwise it needs the trainer's model
            outputs (reconstruction, logits).
        own_prefix: the key level a report prefix replaces (``"subspace_probe/"`` for the subspace probe).
        figures: the file stems of the figures it may draw.
        tokens: it reads a token feature `(B, T, D)` (the report's ``tokens`` pooling) instead of a pooled
            `(B, D)` one; the report builds it on token features only, and the other monitors never on them.
        defaults: the settings it reads beyond the built-ins' (``knn_grid_k``, ``protocol_seed``, ...) with their
            defaults: a report fills them in (and records them), and refuses a setting no monitor declares.
        describe: settings -> one sentence on how it measured (its settings, and what its hyperparameters were
            chosen on), which the report prints under its numbers.
    """

    name: str
    build: Callable[[MonitorContext], Monitor]
    keys: Sequence[str] | Callable[[Mapping[str, Any]], Sequence[str]] = ()
    card_rows: Sequence[CardRow] | Callable[[Mapping[str, Any], Callable[[str], Any]], Sequence[CardRow]] = ()
    summary: Sequence[tuple[str, str]] = ()
    per_feature: bool = False
    own_prefix: str = ""
    figures: Sequence[str] = ()
    tokens: bool = False
    defaults: Mapping[str, Any] = field(default_factory=dict)
    describe: Callable[[Mapping[str, Any]], str] | None = None


_REGISTRY: dict[str, MonitorSpec] = {}


def register_monitor(spec: MonitorSpec, *, replace_existing: bool = False) -> MonitorSpec:
    """Add ``spec`` to the registry (its name must be new unless ``replace_existing``); returns it."""
    if not isinstance(spec, MonitorSpec):
        raise TypeError(f"spec: expected a MonitorSpec, got {type(spec).__name__}")
    if not spec.name or "/" in spec.name:
        raise ValueError(f"name: expected a non-empty name without '/', got {spec.name!r}")
    if spec.name in _REGISTRY and not replace_existing:
        raise ValueError(f"name: a monitor {spec.name!r} is registered already (pass replace_existing=True)")
    _REGISTRY[spec.name] = spec
    return spec


def unregister_monitor(name: str) -> None:
    """Remove a registered monitor (tests register their own and remove them again)."""
    _REGISTRY.pop(name, None)


def get_monitor_spec(name: str, argument: str = "monitors") -> MonitorSpec:
    """The registered monitor ``name``; a one-line ``ValueError`` naming ``argument`` otherwise."""
    if name not in _REGISTRY:
        raise ValueError(f"{argument}: expected names among {monitor_names()}, got {name!r}")
    return _REGISTRY[name]


def monitor_names(*, per_feature: bool | None = None, tokens: bool | None = None) -> tuple[str, ...]:
    """Registered names in registration order, optionally only those that run on any layer feature
    (``per_feature``), and only those that read token features (``tokens=True``) or pooled ones (``False``)."""
    return tuple(
        spec.name
        for spec in _REGISTRY.values()
        if (per_feature is None or spec.per_feature == per_feature)
        and (tokens is None or spec.tokens == tokens)
    )


def monitor_defaults(names: Iterable[str]) -> dict[str, Any]:
    """The declared settings of the monitors ``names`` with their defaults (:attr:`MonitorSpec.defaults`)."""
    defaults: dict[str, Any] = {}
    for name in names:
        defaults.update(get_monitor_spec(name).defaults)
    return defaults


def check_monitor_settings(
    names: Iterable[str],
    settings: Mapping[str, Any],
    given: Mapping[str, Any],
    argument: str = "monitor_settings",
) -> None:
    """Fail early, in one line naming ``argument``, on a setting in ``given`` that no registered monitor declares,
    and on a value a monitor of ``names`` refuses (each is built once on a stand-in feature: constructors only
    store and check, so this costs nothing)."""
    names = list(dict.fromkeys(names))
    declared, used = monitor_defaults(monitor_names()), monitor_defaults(names)
    for key in given:
        if key not in declared:
            raise ValueError(f"{argument}: unknown setting {key!r}; expected names among {sorted(declared)}")
        if (
            key not in used
        ):  # recorded in the report's settings, it would name a setting nothing measured with
            raise ValueError(
                f"{argument}: {key!r} is a setting of a monitor not selected ({', '.join(names)}); add that "
                "monitor to --monitors or drop the setting"
            )
    for name in names:
        try:
            get_monitor_spec(name).build(MonitorContext(settings, feature="check", prefix=""))
        except (ValueError, TypeError) as err:
            raise ValueError(f"{argument}: {name}: {str(err).splitlines()[0]}") from None


def monitor_descriptions(names: Iterable[str], settings: Mapping[str, Any]) -> dict[str, str]:
    """``{name: sentence}`` of the monitors ``names`` that describe themselves (:attr:`MonitorSpec.describe`)."""
    specs = [get_monitor_spec(name) for name in dict.fromkeys(names)]
    return {spec.name: spec.describe(settings) for spec in specs if spec.describe is not None}


def figure_files() -> frozenset[str]:
    """``<stem>.png`` of every figure a registered monitor may draw (a run's output folder declares them)."""
    return frozenset(f"{stem}.png" for spec in _REGISTRY.values() for stem in spec.figures)


def feature_prefix(feature: str) -> str:
    """The key prefix of a layer feature's monitors: ``"layer_3/cls"`` -> ``"layers/layer_3/cls/"``."""
    return layer_key(feature, "", "").removesuffix("/")


def _rekey(spec: MonitorSpec, key: str, prefix: str | None) -> str:
    """A key as the monitor reports it for the embedding -> the key under ``prefix``."""
    return key if prefix is None else prefix + key.removeprefix(spec.own_prefix)


def build_monitors(
    names: Iterable[str], context: MonitorContext, argument: str = "monitors"
) -> list[Monitor]:
    """The monitors ``names`` for one feature, built in registration order (a monitor may reuse one registered
    before it, :attr:`MonitorContext.built`) and returned in the order asked."""
    names = list(dict.fromkeys(names))
    specs = {name: get_monitor_spec(name, argument) for name in names}
    for spec in _REGISTRY.values():
        if spec.name in specs:
            context.built[spec.name] = spec.build(context)
    return [context.built[name] for name in names]


def result_keys(name: str, settings: Mapping[str, Any], prefix: str | None = None) -> list[str]:
    """The keys monitor ``name`` reports (without ``eval/``), under ``prefix`` when given."""
    spec = get_monitor_spec(name)
    keys = spec.keys(settings) if callable(spec.keys) else spec.keys
    return [_rekey(spec, key, prefix) for key in keys]


def card_rows(
    metrics: Mapping[str, Any],
    settings: Mapping[str, Any],
    prefix: str | None = None,
    key: Callable[[str], str] = lambda name: name,
    names: Iterable[str] | None = None,
) -> list[tuple[CardRow, Any]]:
    """``(row, value)`` of every registered monitor's card rows whose key is in ``metrics`` (registration order).

    Args:
        metrics: flat results (``results.json``'s ``eval/...`` keys, or a report's ``layers/...`` keys).
        settings: the run's settings (:attr:`MonitorContext.settings`), filling the rows' templates.
        prefix: ``"layers/<feature>/"`` for a report's feature, ``None`` for the trainer's embedding.
        key: how a monitor's key is stored in ``metrics`` (:func:`~hf_recperc.results.eval_key` for a run).
        names: only these monitors' rows (default: every registered monitor's).
    """
    rows = []
    wanted = None if names is None else set(names)
    for spec in _REGISTRY.values():
        if wanted is not None and spec.name not in wanted:
            continue

        def value(name: str, spec=spec) -> Any:
            return metrics.get(key(_rekey(spec, name, prefix)))

        declared = spec.card_rows(settings, value) if callable(spec.card_rows) else spec.card_rows
        for row in declared:
            stored = key(_rekey(spec, row.key, prefix))
            if stored in metrics:
                rows.append((row.formatted(settings), metrics[stored]))
    return rows


def summary_parts(record: Mapping[str, Any], key: Callable[[str], str]) -> list[str]:
    """``"<label> <value>"`` of every registered summary key present in ``record`` (the evaluation's log line)."""
    parts = []
    for spec in _REGISTRY.values():
        for name, label in spec.summary:
            if key(name) in record:
                parts.append(f"{label} {record[key(name)]:.4g}")
    return parts
