"""Probes at several depths: at which layer does perception live?

A model's hidden states (``output_hidden_states``: index 0 is the embedding/input stage, index ``i`` the output
of block ``i``) are pooled to one vector per image and probed like the final embedding. Feature names are
``layer_<i>/<pooling>``. Poolings: ``cls`` (the first token of a token sequence), ``mean`` (the mean of the
patch tokens, or of a feature map's positions; the identity on vectors), ``pooler`` (reserved for the model's
own pooled output, supplied by the caller).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence

import torch

from ..results import LAYERS, POOLINGS, layer_key, spectrum_key
from .base import MonitorBatch
from .probes import DEFAULT_SUBSPACES, SubspaceProbeMonitor
from .spectrum import spectrum_figure, spectrum_statistics

__all__ = [
    "LayerProbeMonitor",
    "parse_layers",
    "pool_hidden_state",
    "layer_feature",
    "accuracy_per_layer_figure",
    "layer_accuracies",
    "POOLINGS",
]

logger = logging.getLogger(__name__)

# Subspaces in their usual order get fixed colours and markers, so that the figures of a run and of a report read
# alike; a line hidden under another one still shows its markers.
_SUBSPACE_STYLES = (
    ("tab:blue", "o"),
    ("tab:red", "s"),
    ("tab:gray", "^"),
    ("tab:green", "D"),
    ("tab:purple", "v"),
)
_POOLING_LINES = {"cls": "-", "mean": "--", "pooler": ":"}


def layer_feature(layer: int, pooling: str) -> str:
    """The feature name of a pooled hidden state: ``(3, "cls")`` -> ``"layer_3/cls"``."""
    return f"layer_{layer}/{pooling}"


def parse_layers(
    spec: str | Sequence[int | str], num_layers: int, argument: str = "probe_layers"
) -> list[int]:
    """``"last"``, ``"all"`` or layer indices (negative counts from the end) -> sorted indices in ``[0, num_layers]``.

    ``num_layers`` is the number of blocks; index 0 is the embedding (or input) stage, ``"all"`` means blocks
    ``1..num_layers``.
    """
    items = [spec] if isinstance(spec, (str, int)) else list(spec)
    if len(items) == 1 and str(items[0]) == "last":
        return [num_layers]
    if len(items) == 1 and str(items[0]) == "all":
        return list(range(1, num_layers + 1))
    layers = set()
    for item in items:
        try:
            index = int(item)
        except (TypeError, ValueError):
            raise ValueError(f"{argument}: expected 'last', 'all' or layer indices, got {item!r}") from None
        resolved = index + num_layers + 1 if index < 0 else index
        if not 0 <= resolved <= num_layers:
            raise ValueError(
                f"{argument}: layer {index} is out of range; this model has layers 0..{num_layers} "
                f"(0 = embeddings, {num_layers} = last block; negative indices count from the end)"
            )
        layers.add(resolved)
    return sorted(layers)


def pool_hidden_state(hidden: torch.Tensor, pooling: str, num_prefix_tokens: int = 1) -> torch.Tensor:
    """One vector per image from a hidden state.

    Args:
        hidden: `(B, D)` vectors, `(B, T, D)` tokens (the first ``num_prefix_tokens`` are CLS/register tokens),
            or `(B, C, H, W)` feature maps.
        pooling: ``"cls"`` or ``"mean"``.
        num_prefix_tokens: leading non-patch tokens of a token sequence (1 for ViT's CLS, 0 for Swin).

    Returns:
        `(B, D)` (`(B, C)` for feature maps).
    """
    if pooling not in ("cls", "mean"):
        raise ValueError(f"pooling: expected 'cls' or 'mean' for a hidden state, got {pooling!r}")
    if hidden.ndim == 2:
        if pooling == "cls":
            raise ValueError(
                "pooling: 'cls' needs a token sequence, but this layer gives one vector per image"
            )
        return hidden
    if hidden.ndim == 4:
        if pooling == "cls":
            raise ValueError(
                "pooling: 'cls' needs a token sequence, but this layer is a (C, H, W) feature map"
            )
        return hidden.mean(dim=(2, 3))  # (B, C)
    if hidden.ndim == 3:
        if pooling == "cls":
            if num_prefix_tokens < 1:
                raise ValueError(
                    "pooling: 'cls' needs a CLS token, and this model's tokens have none; use mean"
                )
            return hidden[:, 0]  # (B, D)
        return hidden[:, num_prefix_tokens:].mean(dim=1)  # (B, D): patch tokens only
    raise ValueError(f"hidden state: expected 2, 3 or 4 dimensions, got shape {tuple(hidden.shape)}")


class LayerProbeMonitor:
    """The subspace probe on the pooled hidden states of several layers, plus each layer's spectrum statistics.

    Reports ``layers/<feature>/{accuracy,dims,explained_variance}/<S>``, ``layers/<feature>/num_train`` and
    ``layers/<feature>/spectrum/<statistic>`` for every feature ``layer_<i>/<pooling>``; figures: accuracy per
    layer, eigenvalue spectrum per layer.

    Args:
        layers: resolved layer indices (:func:`parse_layers`).
        poolings: e.g. ``("cls", "mean")``.
        subspaces, ridge, standardize: see :class:`~hf_recperc.probing.SubspaceProbe`.
    """

    name = "layers"

    def __init__(
        self,
        layers: Sequence[int],
        poolings: Sequence[str] = ("mean",),
        subspaces: Sequence[str] = DEFAULT_SUBSPACES,
        ridge: float = 1e-3,
        standardize: bool = False,
    ):
        if not layers:
            raise ValueError("layers: expected at least one layer index")
        for pooling in poolings:
            if pooling not in POOLINGS:
                raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
        self.layers, self.poolings, self.subspaces = list(layers), list(poolings), list(subspaces)
        self.features = tuple(layer_feature(i, p) for i in self.layers for p in self.poolings)
        self.probes = {
            feature: SubspaceProbeMonitor(
                feature, subspaces, ridge, standardize, prefix=f"{LAYERS}/{feature}/"
            )
            for feature in self.features
        }
        self._results: dict[str, float] = {}

    def reset(self) -> None:
        for probe in self.probes.values():
            probe.reset()
        self._results = {}

    def update(self, batch: MonitorBatch) -> None:
        for probe in self.probes.values():
            probe.update(batch)

    def all_reduce(self) -> None:
        for probe in self.probes.values():
            probe.all_reduce()

    def compute(self) -> dict[str, float]:
        results: dict[str, float] = {}
        for feature, probe in self.probes.items():
            results.update(probe.compute())
            statistics = spectrum_statistics(probe.probe.eigenvalues_)
            results.update({f"{LAYERS}/{feature}/{spectrum_key(k)}": v for k, v in statistics.items()})
        self._results = results
        return results

    def figures(self) -> dict:
        """``eigenvalue_spectrum_per_layer`` and, when two or more layers are probed, ``accuracy_per_layer`` (one
        layer would make a "per layer" plot of one point: it is not drawn, and the log says so once)."""
        if not self._results:
            return {}
        spectra = {feature: probe.probe.eigenvalues_ for feature, probe in self.probes.items()}
        figures = {"eigenvalue_spectrum_per_layer": spectrum_figure(spectra, "Eigenvalue spectrum per layer")}
        figure = accuracy_per_layer_figure(
            layer_accuracies(self._results, self.layers, self.poolings, self.subspaces)
        )
        if figure is not None:
            figures["accuracy_per_layer"] = figure
        elif not getattr(self, "_said_one_layer", False):
            self._said_one_layer = True
            logger.info(
                f"accuracy_per_layer.png not drawn: one layer probed (layer {self.layers[0]}), its accuracies are "
                "in results.json; --probe_layers all draws accuracy over depth"
            )
        return figures


def layer_accuracies(
    metrics: Mapping[str, float], layers: Sequence[int], poolings: Sequence[str], subspaces: Sequence[str]
) -> dict[tuple[str, str], dict[int, float]]:
    """``{(pooling, subspace): {layer: accuracy}}`` from flat ``layers/<feature>/accuracy/<S>`` keys, for
    :func:`accuracy_per_layer_figure`; features that were not probed are left out (and a pair with none)."""
    accuracy = {
        (pooling, spec): {
            i: metrics[layer_key(layer_feature(i, pooling), "accuracy", spec)]
            for i in layers
            if layer_key(layer_feature(i, pooling), "accuracy", spec) in metrics
        }
        for pooling in poolings
        for spec in subspaces
    }
    return {key: values for key, values in accuracy.items() if values}


def accuracy_per_layer_figure(
    accuracy: Mapping[tuple[str, str], Mapping[int, float]], chance: float | None = None
):
    """Subspace probe accuracy against depth: one line per (pooling, subspace), colour and marker per subspace,
    line style per pooling; ``None`` when fewer than two layers were probed (a "per layer" plot of one point says
    nothing a table does not).

    Args:
        accuracy: ``{(pooling, subspace): {layer: accuracy}}``; a NaN (a subspace not measured at that layer, say
            ``bottom:0.2`` of a feature with too few dimensions) leaves a gap, and the legend says where.
        chance: the accuracy of a uniform guess, 1 / number of classes (a dotted line), if known.

    Returns:
        A :class:`~matplotlib.figure.Figure` or ``None``.
    """
    layers = sorted({layer for values in accuracy.values() for layer in values})
    if len(layers) < 2:
        return None
    from ..plotting import new_figure  # noqa: PLC0415  (matplotlib only when drawing)

    figure, axis = new_figure()
    specs = list(dict.fromkeys(spec for _, spec in accuracy))
    poolings = list(dict.fromkeys(pooling for pooling, _ in accuracy))
    # "all" is drawn underneath, wide and pale, so that a subspace as accurate as all of it stays visible.
    for (pooling, spec), values in accuracy.items():
        color, marker = _SUBSPACE_STYLES[specs.index(spec) % len(_SUBSPACE_STYLES)]
        shown = sorted(values)
        missing = [layer for layer in shown if not math.isfinite(values[layer])]
        label = spec if len(poolings) == 1 else f"{spec}, {pooling}"
        if missing:
            label += f" (not measured at layer {', '.join(map(str, missing))})"
        axis.plot(
            shown, [values[layer] for layer in shown], color=color, marker=marker, markersize=5,
            linestyle=_POOLING_LINES.get(pooling, "-."), linewidth=3.0 if spec == "all" else 1.5,
            alpha=0.45 if spec == "all" else 1.0, zorder=1.5 if spec == "all" else 2.5, label=label,
        )  # fmt: skip
    if chance is not None:
        axis.axhline(chance, color="0.4", linestyle=":", linewidth=1.0, label=f"chance ({chance:.2g})")
    pooled = "" if len(poolings) > 1 else f" ({poolings[0]} pooling)"
    axis.set(
        xlabel="layer", ylabel="subspace probe accuracy (validation)", title=f"Perception per layer{pooled}"
    )
    axis.set_xticks(layers)
    axis.legend(fontsize=7, title="subspace" + (", pooling" if len(poolings) > 1 else ""), title_fontsize=7)
    axis.grid(alpha=0.3)
    return figure
