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
    >>> metric.compute()["accuracy/all"] > 0.9
    True
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torchmetrics
from torchmetrics.utilities.data import dim_zero_cat

from .probing import DEFAULT_SUBSPACES, SubspaceProbe, check_targets_memory
from .spectral import SecondMoments, as_float_tensor, check_moments_memory, compute_dtype
from .streaming import SPLITS, subspace_probe_accuracy
from .validation import check_labels, check_positive_int

__all__ = ["SubspaceProbeAccuracy"]


class SubspaceProbeAccuracy(torchmetrics.Metric):
    """Accuracy of linear probes restricted to PCA variance subspaces of features (see the metric card).

    Args:
        num_features: ``D``, features per row (the states are `(D, D)` and must have fixed shapes to sync).
        num_classes: ``C``; labels must lie in ``[0, C)``. Classes without training rows get no probe output.
        subspaces, probe, ridge, standardize, seed, test_size: as in the evaluate module's ``compute``.
        **kwargs: torchmetrics' ``Metric`` options (``process_group``, ``dist_sync_fn``, ...).

    ``update(features (n, D), labels (n,), split="test" | "train")``; ``compute()`` returns the evaluate
    module's flat dict of Python scalars (``accuracy/S``, ``dims/S``, ``explained_variance/S``, ``probe``,
    ``num_train``); log the numbers with ``{k: v for k, v in result.items() if k != "probe"}``.
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

    def _train_probe(self) -> SubspaceProbe | None:
        """A ridge probe holding the (synchronised) training statistics, or None without training rows."""
        count = int(self.train_count.item())
        if count == 0:
            return None
        moments = SecondMoments()
        moments._allocate(self.num_features, self.train_sum.device, torch.zeros_like(self.train_sum))
        moments.count, moments.sum, moments.outer = count, self.train_sum, self.train_outer
        moments.target_sum, moments.cross = self.train_target_sum, self.train_cross
        moments.dtype = torch.float64 if self.train_float64.item() else torch.float32
        probe = SubspaceProbe()
        probe.moments_ = moments
        probe._class_columns = {label: label for label in range(self.num_classes)}
        probe._stale = True
        return probe

    def compute(self) -> dict[str, float | int | str]:
        """The evaluate module's result dict (see the class docstring) over every process's batches."""
        features = self.features if isinstance(self.features, torch.Tensor) else None
        if features is None:
            if not self.features:
                raise ValueError("features: no evaluated rows; call update(features, labels) first")
            features = dim_zero_cat(self.features)
        labels = self.labels if isinstance(self.labels, torch.Tensor) else dim_zero_cat(self.labels)
        return subspace_probe_accuracy(features, labels, train_probe=self._train_probe(), **self.settings)
