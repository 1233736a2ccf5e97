"""Subspace probe accuracy as a ``torchmetrics.Metric``: the evaluate module's twin for Lightning users.

Needs the ``[lightning]`` extra (``pip install "hf_recperc[lightning]"``, which installs only torchmetrics;
Lightning itself is optional). The numbers are those of the evaluate module
(``metrics/subspace_probe_accuracy``): both call :func:`hf_recperc.streaming.subspace_probe_accuracy`.

State kept per process, synchronised by torchmetrics' own machinery at ``compute()``:

* training rows (``update(..., split="train")``) as float64 sums, reduced with ``"sum"``: the row count,
  ``sum x`` `(D,)`, ``sum x x^T`` `(D, D)`, ``sum y`` `(C,)` and ``sum x y^T`` `(D, C)` of one-hot labels.
  The features themselves are never gathered. Each batch's products are formed around the batch's own mean
  (``hf_recperc.spectral.SecondMoments``) and re-expressed around zero in float64, so the sums are
  additive across batches and processes without losing the float32 products' accuracy.
* evaluated rows (``split="test"``), reduced with ``"cat"``: they are scored once the PCA is known, and
  without training rows 80% of them train the probe (the evaluate module's stratified split).

As with every torchmetrics metric, ``compute()`` returns tensors and ``metric(features, labels)`` (forward) adds
the batch and returns the metric of that batch alone; a training batch (``split="train"``) has no value of its
own, so its forward returns ``{}``. The states keep their dtypes under ``Module.to(dtype)``, ``half()`` and
``set_dtype`` (Lightning's ``precision="bf16-true"`` casts the whole LightningModule): the second moments stay
float64 and the stored rows in the dtype they came in, only the device follows (docs/design.md, "Half precision").
:func:`subspace_probe_accuracy` is the functional form.

Example:
    >>> import torch
    >>> from hf_recperc.torchmetrics import SubspaceProbeAccuracy
    >>> metric = SubspaceProbeAccuracy(num_features=8, num_classes=2, subspaces=["all"])
    >>> g = torch.Generator().manual_seed(0)
    >>> for _ in range(4):
    ...     labels = torch.randint(0, 2, (64,), generator=g)
    ...     features = torch.randn(64, 8, generator=g) + 3 * labels[:, None]
    ...     metric.update(features, labels, split="train")
    ...     metric.update(features, labels)
    >>> result = metric.compute()
    >>> bool(result["accuracy/all"] > 0.9), result["dims/all"]
    (True, tensor(8))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchmetrics
from lightning_utilities import apply_to_collection
from torchmetrics.utilities.data import dim_zero_cat

from . import streaming
from .probing import DEFAULT_SUBSPACES, SubspaceProbe, check_targets_memory
from .spectral import SecondMoments, as_float_tensor, check_moments_memory, compute_dtype
from .streaming import SPLITS
from .validation import check_labels, check_positive_int

__all__ = ["SubspaceProbeAccuracy", "subspace_probe_accuracy"]


def _as_tensors(result: dict[str, Any], device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """The evaluate module's dict of Python scalars as torchmetrics returns results: 0-d tensors.

    ``dims/S`` and ``num_train`` are int64, accuracies and explained variances float64 (the Python floats
    exactly, so the twin and the module agree bit for bit); the ``probe`` name, a setting, is dropped.
    """
    return {
        key: torch.tensor(
            value, dtype=torch.int64 if isinstance(value, int) else torch.float64, device=device
        )
        for key, value in result.items()
        if not isinstance(value, str)
    }


def subspace_probe_accuracy(
    features,
    labels,
    train_features=None,
    train_labels=None,
    *,
    subspaces: Sequence[str] = DEFAULT_SUBSPACES,
    probe: str = "ridge",
    ridge: float = 1e-3,
    standardize: bool = False,
    seed: int = 0,
    test_size: float = 0.2,
) -> dict[str, torch.Tensor]:
    """Functional form of :class:`SubspaceProbeAccuracy` (torchmetrics' ``functional`` convention).

    Args:
        features (`torch.Tensor` of shape `(N, D)`): rows to score, any float dtype.
        labels (`torch.LongTensor` of shape `(N,)`): their class ids.
        train_features (`(M, D)`), train_labels (`(M,)`): rows to fit the PCA and the probes on; without them
            a deterministic stratified split of the given rows (``test_size``, ``seed``) is used.
        subspaces, probe, ridge, standardize, seed, test_size: as in the evaluate module's ``compute``.

    Returns:
        The class's ``compute()`` dict: ``accuracy/S``, ``dims/S``, ``explained_variance/S``, ``num_train`` as
        0-d tensors on the device of ``features``.
    """
    device = features.device if isinstance(features, torch.Tensor) else "cpu"
    result = streaming.subspace_probe_accuracy(
        features,
        labels,
        train_features,
        train_labels,
        subspaces=subspaces,
        probe=probe,
        ridge=ridge,
        standardize=standardize,
        seed=seed,
        test_size=test_size,
    )
    return _as_tensors(result, device)


class SubspaceProbeAccuracy(torchmetrics.Metric):
    """Accuracy of linear probes restricted to PCA variance subspaces of features (see the metric card).

    Args:
        num_features: ``D``, features per row (the states are `(D, D)` and must have fixed shapes to sync).
        num_classes: ``C``; labels must lie in ``[0, C)``. Classes without training rows get no probe output.
        subspaces, probe, ridge, standardize, seed, test_size: as in the evaluate module's ``compute``.
        **kwargs: torchmetrics' ``Metric`` options (``process_group``, ``dist_sync_fn``, ...).

    ``update(features (n, D), labels (n,), split="test" | "train")``; ``compute()`` returns the evaluate
    module's numbers as a flat dict of 0-d tensors (``accuracy/S``, ``dims/S``, ``explained_variance/S``,
    ``num_train``; see :func:`_as_tensors`), ready for ``LightningModule.log_dict``.
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        subspaces: Sequence[str] = DEFAULT_SUBSPACES,
        probe: str = "ridge",
        ridge: float = 1e-3,
        standardize: bool = False,
        seed: int = 0,
        test_size: float = 0.2,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_positive_int("num_features", num_features)
        check_positive_int("num_classes", num_classes)
        # The states below are allocated at once: refuse sizes that cannot fit before allocating them.
        check_moments_memory("num_features", num_features)
        check_targets_memory("num_classes", num_features, num_classes)
        if isinstance(subspaces, str):
            subspaces = [subspaces]
        SubspaceProbe(tuple(subspaces), probe, ridge, standardize)._validate_params()  # fail at construction
        if not (0 < test_size < 1):
            raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
        self.num_features, self.num_classes = num_features, num_classes
        self.settings = dict(
            subspaces=tuple(subspaces),
            probe=probe,
            ridge=ridge,
            standardize=standardize,
            seed=seed,
            test_size=test_size,
        )
        f64 = torch.float64
        self.add_state("train_count", torch.zeros((), dtype=f64), dist_reduce_fx="sum")
        self.add_state("train_sum", torch.zeros(num_features, dtype=f64), dist_reduce_fx="sum")
        self.add_state(
            "train_outer", torch.zeros(num_features, num_features, dtype=f64), dist_reduce_fx="sum"
        )
        self.add_state("train_target_sum", torch.zeros(num_classes, dtype=f64), dist_reduce_fx="sum")
        self.add_state("train_cross", torch.zeros(num_features, num_classes, dtype=f64), dist_reduce_fx="sum")
        # 1 once a float64 training batch was seen: the eigensolver then runs in float64, as in the module.
        self.add_state("train_float64", torch.zeros((), dtype=f64), dist_reduce_fx="max")
        self.add_state("features", [], dist_reduce_fx="cat")
        self.add_state("labels", [], dist_reduce_fx="cat")

    def update(self, features, labels, split: str = "test") -> None:
        """Add a batch: ``features`` `(n, D)` (any float dtype) and class ids ``labels`` `(n,)` in ``[0, C)``."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        features = as_float_tensor(features, "features").detach()
        labels = check_labels("labels", labels, features.shape[0]).to(features.device)
        if features.shape[1] != self.num_features:
            raise ValueError(
                f"features: expected {self.num_features} per row (num_features), got {features.shape[1]}"
            )
        if labels.numel() and int(labels.max()) >= self.num_classes:
            raise ValueError(
                f"labels: values must lie in [0, {self.num_classes}) (num_classes), got {int(labels.max())}"
            )
        if features.shape[0] == 0:
            return
        if split == "test":
            self.features.append(features.clone())
            self.labels.append(labels.clone())
            return
        one_hot = torch.nn.functional.one_hot(labels, self.num_classes).to(compute_dtype(features.dtype))
        batch = SecondMoments().update(features, one_hot)  # (n, D) rows, (n, C) targets
        zero = torch.zeros_like(batch.shift)
        total, outer, cross = batch._rebased(zero)  # exact float64 algebra: sums around the origin
        device = self.train_sum.device
        self.train_count += batch.count
        self.train_sum += total.to(device)
        self.train_outer += outer.to(device)
        self.train_target_sum += batch.target_sum.to(device)
        self.train_cross += cross.to(device)
        if features.dtype == torch.float64:
            self.train_float64.fill_(1.0)

    def forward(self, features, labels, split: str = "test") -> dict[str, torch.Tensor]:
        """Add the batch to the state and return the metric of this batch alone (torchmetrics' contract).

        A training batch only adds statistics: it has no evaluated rows, hence no value of its own, and returns
        ``{}`` (``compute()`` on the accumulated state still needs evaluated rows).
        """
        if split == "train":
            self.update(features, labels, split=split)
            self._forward_cache = {}
            return self._forward_cache
        return super().forward(features, labels, split=split)

    def _apply(self, fn, exclude_state: Sequence[str] = ()):
        """Move the states with the module, but never change their dtype.

        torchmetrics applies ``Module.to(dtype)`` (and, after ``set_dtype``, any cast) to the states. Ours are
        float64 sums and the rows as given: cast to bfloat16 they would lose the digits the probe needs, and
        ``compute`` would mix float64 and bfloat16 operands. So the states follow the device only.
        """
        states = [key for key in self._defaults if key not in exclude_state]
        cached = (self._computed, self._forward_cache)
        this = super()._apply(fn, exclude_state=(*exclude_state, *states))
        device = this.device  # updated by torchmetrics from ``fn`` applied to a probe tensor

        def move(tensor: torch.Tensor) -> torch.Tensor:
            return tensor.to(device)

        for key in states:
            this._defaults[key] = apply_to_collection(this._defaults[key], torch.Tensor, move)
            setattr(this, key, apply_to_collection(getattr(this, key), torch.Tensor, move))
        this._computed, this._forward_cache = apply_to_collection(cached, torch.Tensor, move)
        return this

    def _train_probe(self) -> SubspaceProbe | None:
        """A ridge probe holding the (synchronised) training statistics, or None without training rows."""
        count = int(self.train_count.item())
        if count == 0:
            return None
        return SubspaceProbe.from_moments(
            count=count, shift=torch.zeros_like(self.train_sum), sum=self.train_sum, outer=self.train_outer,
            target_sum=self.train_target_sum, cross=self.train_cross,
            classes={label: label for label in range(self.num_classes)}, float64=bool(self.train_float64.item()),
        )  # fmt: skip

    def compute(self) -> dict[str, torch.Tensor]:
        """The evaluate module's numbers as 0-d tensors (see the class docstring) over every process's batches."""
        features = self.features if isinstance(self.features, torch.Tensor) else None
        if features is None:
            if not self.features:
                raise ValueError("features: no evaluated rows; call update(features, labels) first")
            features = dim_zero_cat(self.features)
        labels = self.labels if isinstance(self.labels, torch.Tensor) else dim_zero_cat(self.labels)
        result = streaming.subspace_probe_accuracy(
            features, labels, train_probe=self._train_probe(), **self.settings
        )
        return _as_tensors(result, self.train_sum.device)
