"""One measurement of a model under training: the perception report's feature extraction and monitors.

:class:`PerceptionMeasurement` is what the trainer callbacks (:mod:`hf_recperc.integrations`) run at each
evaluation. It calls the code of :mod:`hf_recperc.report` (``load_backbone``, ``choose_features``,
``build_feature_monitors``, ``BackboneFeatureSource`` and the engine's runner), so its numbers are the report's on the same weights
and rows: subspace-restricted probes (arXiv 2402.11337, section 2), kNN and spectrum statistics per feature.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Sequence

from torch import nn

from ..images import ImageData
from ..monitors import DEFAULT_SUBSPACES, Monitor, layer_feature, runner
from ..report.extract import load_backbone
from ..report.run import (
    MONITORS,
    BackboneFeatureSource,
    _bank_dtype,
    _check_arguments,
    _load_data,
    build_feature_monitors,
    choose_features,
    report_settings,
)

__all__ = ["PerceptionMeasurement", "vision_model", "EMBEDDING"]

EMBEDDING = "embedding"  # the feature name our monitors read by default
_LAYER_FEATURE = re.compile(r"layer_(\d+)/(\w+)")


def vision_model(model: nn.Module) -> nn.Module:
    """The vision backbone of a model being trained: a ``...ForPreTraining`` head's ``base_model`` (transformers'
    ``ViTMAEForPreTraining`` -> ``ViTMAEModel``, ours -> the encoder model), the model itself otherwise."""
    model = getattr(model, "module", model)  # DistributedDataParallel
    return getattr(model, "base_model", model)


@contextlib.contextmanager
def _measuring(model: nn.Module):
    """Restore what the extraction changes on a model that keeps training: its train/eval mode, and ViTMAE's
    ``config.mask_ratio`` (``load_backbone`` sets it to 0 so that every patch is seen)."""
    config = getattr(model, "config", None)
    mask_ratio = getattr(config, "mask_ratio", None)
    was_training = model.training
    try:
        yield
    finally:
        if mask_ratio is not None:
            config.mask_ratio = mask_ratio
        model.train(was_training)


class PerceptionMeasurement:
    """Monitors over a labelled image data set, run on a model's features whenever called.

    Args:
        data: anything :func:`hf_recperc.images.load_image_dataset` accepts (``None`` = digits) or an
            :class:`~hf_recperc.images.ImageData`: its train split fits the probes and fills the kNN bank, its
            validation split is scored.
        monitors: names among ``subspace``, ``knn``, ``spectrum`` (built per feature by the report's
            ``build_monitors``; keys ``layers/<feature>/...``, as in ``report.json``), or :class:`Monitor`
            objects. Objects read ``"embedding"`` (the model's own pooled output when it has one, else the last
            layer under the model's first default pooling) or ``"layer_<i>/<pooling>"`` features.
        layers, poolings, subspaces, ridge, knn_k, knn_temperature, batch_size, num_workers, mixed_precision,
            image_processor, max_train_samples, max_eval_samples, data_kwargs: as in
            :func:`hf_recperc.report.perception_report` (``layers``/``poolings`` apply to monitor names).

    Raises:
        ValueError: one line naming the argument, at construction (before any training).
    """

    def __init__(
        self,
        data: str | ImageData | None = None,
        *,
        monitors: Sequence[str | Monitor] = MONITORS,
        layers: str | Sequence[int | str] = "last",
        poolings: Sequence[str] | None = None,
        subspaces: Sequence[str] = DEFAULT_SUBSPACES,
        ridge: float = 1e-3,
        knn_k: int = 20,
        knn_temperature: float = 0.07,
        batch_size: int = 64,
        num_workers: int = 0,
        mixed_precision: str = "no",
        image_processor=None,
        max_train_samples: int | None = None,
        max_eval_samples: int | None = None,
        data_kwargs: dict | None = None,
    ):
        monitors = list(monitors)
        self.names = list(dict.fromkeys(m for m in monitors if isinstance(m, str)))
        self.monitors = [m for m in monitors if not isinstance(m, str)]
        if self.names and self.monitors:
            raise ValueError(
                "monitors: expected names (subspace, knn, spectrum) or Monitor objects, not both"
            )
        for monitor in self.monitors:
            if not isinstance(monitor, Monitor):
                raise ValueError(f"monitors: expected Monitor objects or names, got {type(monitor).__name__}")
        _check_arguments(
            self.names or list(MONITORS), list(subspaces), mixed_precision, batch_size, poolings, None, knn_k,
            ridge,
        )  # fmt: skip
        self.layers, self.poolings, self.subspaces = layers, poolings, list(subspaces)
        self.ridge, self.knn_k, self.knn_temperature = ridge, knn_k, knn_temperature
        self.batch_size, self.num_workers, self.mixed_precision = batch_size, num_workers, mixed_precision
        self.image_processor = image_processor
        self.data = _load_data(
            data, None, max_train_samples, max_eval_samples, data_kwargs
        )  # no run split: any model

    def __call__(self, model: nn.Module, image_processor=None) -> dict[str, float]:
        """Measure ``model``'s features (in eval mode, without gradients; its mode and config are restored).

        Args:
            model: the model being trained (its :func:`vision_model` is measured).
            image_processor: used when none was given at construction (e.g. the Trainer's ``processing_class``).

        Returns:
            The monitors' numbers, flat keys without prefix (``layers/layer_2/cls/accuracy/top:0.9``, ...).
        """
        module = vision_model(model)
        with _measuring(module):
            backbone = load_backbone(module, image_processor=self.image_processor or image_processor)
            if self.monitors:
                monitors, layers, poolings, aliases = self._given_monitors(backbone)
            else:
                _, layers, poolings, features = choose_features(
                    backbone, self.data, self.layers, self.poolings, self.mixed_precision
                )
                settings = report_settings(self.subspaces, self.ridge, self.knn_k, self.knn_temperature)
                built = build_feature_monitors(features, self.names, settings, _bank_dtype(backbone.device))
                monitors, aliases = [m for by_name in built.values() for m in by_name.values()], None
            source = BackboneFeatureSource(
                backbone, self.data, layers, poolings, self.batch_size, self.num_workers, self.mixed_precision,
                aliases,
            )  # fmt: skip
            return runner.run_monitors(monitors, source)  # the report's and the trainer's runner

    def _given_monitors(self, backbone):
        """The layers and poolings the given monitors read, and the ``embedding`` alias."""
        _, (last,), default_poolings, _ = choose_features(
            backbone, self.data, "last", None, self.mixed_precision
        )
        wanted = {name for monitor in self.monitors for name in monitor.features}
        embedding = layer_feature(last, default_poolings[0])
        pairs = set()
        for name in wanted:
            match = _LAYER_FEATURE.fullmatch(embedding if name == EMBEDDING else name)
            if match is None:
                raise ValueError(
                    f"monitors: a monitor reads feature {name!r}; expected 'embedding' or 'layer_<i>/<pooling>'"
                )
            pairs.add((int(match[1]), match[2]))
        layers = sorted({layer for layer, _ in pairs})
        poolings = sorted({pooling for _, pooling in pairs})
        choose_features(backbone, self.data, layers, poolings, self.mixed_precision)  # layer/pooling errors
        aliases = {EMBEDDING: embedding} if EMBEDDING in wanted else None
        return self.monitors, layers, poolings, aliases
