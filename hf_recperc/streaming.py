"""The subspace probe metric computed where users call it: from whole arrays or batch by batch.

One code path behind both front ends, the `evaluate` module (``metrics/subspace_probe_accuracy``) and the
torchmetrics twin (:mod:`hf_recperc.torchmetrics`):

* :func:`subspace_probe_accuracy` scores arrays: fit a :class:`~hf_recperc.probing.SubspaceProbe` on the
  training rows (or on a stratified 80/20 split of the evaluated rows when none are given), score the
  evaluated rows.
* :class:`ProbeStream` accumulates batches. Training rows (``split="train"``) go into the probe's
  second moments (``O(D^2 + D C)`` memory, never the rows); evaluated rows are kept as tensors, because
  they can only be scored once the PCA is known and, without training rows, 80% of them *are* the
  training rows. ``compute`` then equals :func:`subspace_probe_accuracy` on the concatenated arrays.
"""

from __future__ import annotations

import numpy as np
import torch

from .probing import DEFAULT_SUBSPACES, SubspaceProbe
from .spectral import _ACCUMULATE_ROWS, SecondMoments, as_float_tensor
from .validation import check_labels

__all__ = ["SPLITS", "ProbeStream", "stratified_split", "subspace_probe_accuracy"]

SPLITS = ("test", "train")


def stratified_split(labels: np.ndarray, test_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Deterministic stratified split of row indices: within each class a seeded permutation sends
    ``round(test_size * n_class)`` rows to test. Returns sorted ``(train (M,), test (N - M,))`` indices."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        num_test = int(round(test_size * members.size))
        test.append(members[:num_test])
        train.append(members[num_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _labels(labels, name: str, num_rows: int, min_classes: int = 1) -> torch.Tensor:
    """Shared label checks plus the metric's own: at least ``min_classes`` distinct ids."""
    tensor = check_labels(name, labels, num_rows)
    found = int(torch.unique(tensor).numel())
    if found < min_classes:
        raise ValueError(f"{name}: need at least {min_classes} classes, got {found}")
    return tensor


def subspace_probe_accuracy(
    predictions,
    references,
    train_predictions=None,
    train_references=None,
    *,
    train_probe: SubspaceProbe | None = None,
    subspaces=DEFAULT_SUBSPACES,
    probe: str = "ridge",
    ridge: float = 1e-3,
    standardize: bool = False,
    seed: int = 0,
    test_size: float = 0.2,
) -> dict[str, float | int | str]:
    """Subspace-restricted probe accuracy of features ``predictions`` `(N, D)` with labels ``references`` `(N,)`.

    Training data, in order of precedence: ``train_probe`` (a ridge :class:`SubspaceProbe` that accumulated
    training rows with ``partial_fit``; its statistics are reused, its settings replaced by these),
    ``train_predictions`` `(M, D)` / ``train_references`` `(M,)`, or a deterministic stratified split of the
    given rows (``test_size``, ``seed``). See the metric card for the returned keys.
    """
    features = as_float_tensor(predictions, "predictions")
    has_train = train_probe is not None or train_references is not None
    # The evaluated rows may all belong to one class (a per-class report); only training needs two.
    labels = _labels(references, "references", len(features), min_classes=1 if has_train else 2)
    if (train_predictions is None) != (train_references is None):
        raise ValueError("train_predictions and train_references: give both or neither")
    if train_probe is not None and train_predictions is not None:
        raise ValueError(
            "train_predictions: training rows were already streamed with split='train'; give them one way"
        )
    if isinstance(subspaces, str):
        subspaces = [subspaces]
    estimator = SubspaceProbe(subspaces=tuple(subspaces), probe=probe, ridge=ridge, standardize=standardize)
    if train_probe is not None:
        estimator._validate_params()
        if probe != "ridge":
            raise ValueError(
                f"probe={probe!r} needs the training rows themselves: pass train_predictions to compute() "
                "instead of streaming them with split='train'"
            )
        estimator.moments_ = train_probe.moments_
        estimator._class_columns = dict(train_probe._class_columns)
        estimator._stale = True
        if features.shape[1] != train_probe.moments_.dim:
            raise ValueError(
                f"predictions: expected {train_probe.moments_.dim} features per row like the training rows, "
                f"got {features.shape[1]}"
            )
        return estimator.score(features, labels)
    if train_predictions is None:
        if not (0 < test_size < 1):
            raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
        train_index, test_index = stratified_split(labels.cpu().numpy(), test_size, seed)
        train_index, test_index = torch.from_numpy(train_index), torch.from_numpy(test_index)
        train_features, train_labels = features[train_index.to(features.device)], labels[train_index]
        features, labels = features[test_index.to(features.device)], labels[test_index]
    else:
        train_features = as_float_tensor(train_predictions, "train_predictions")
        train_labels = _labels(train_references, "train_references", len(train_features))
        if train_features.shape[1] != features.shape[1]:
            raise ValueError(
                f"train_predictions: expected {features.shape[1]} features per row like predictions, "
                f"got {train_features.shape[1]}"
            )
    return estimator.fit(train_features, train_labels).score(features, labels)


def _detached(values, name: str, ndim: int) -> torch.Tensor:
    """A private copy of a batch (the caller may reuse its buffer), validated, on its own device."""
    if ndim == 2:
        tensor = as_float_tensor(values, name)
    else:
        tensor = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    return tensor.detach().clone()


class ProbeStream:
    """Batches of features and labels, accumulated for :func:`subspace_probe_accuracy`.

    * ``add(features (n, D), labels (n,), split="test")`` keeps the rows: they are scored at the end and,
      without training rows, split 80/20 exactly as the array path would.
    * ``add(..., split="train")`` folds the rows into second moments. They are buffered up to 16,384 rows
      first so that the moments see the same chunks as a one-shot fit (identical shift and products, hence
      the same numbers) and large matrix products stay efficient; memory ``O(16384 D + D^2)``.

    Mergeable: :meth:`state` / :meth:`merge` move the statistics between processes (files or
    ``torch.distributed``); merging in process order reproduces a single process that saw all rows.
    """

    def __init__(self):
        self.features: list[torch.Tensor] = []  # evaluated rows, (n_i, D) each
        self.labels: list[torch.Tensor] = []  # (n_i,) int64 each
        self.train: SubspaceProbe | None = None  # second moments of the flushed training rows
        self._pending: list[tuple[torch.Tensor, torch.Tensor]] = []  # training rows not yet flushed
        self._pending_rows = 0

    @property
    def num_rows(self) -> int:
        """Evaluated rows held."""
        return sum(len(labels) for labels in self.labels)

    def add(self, features, labels, split: str = "test") -> None:
        """Add a batch: ``features`` `(n, D)` (any float dtype, numpy or torch), integer ``labels`` `(n,)`."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        name = "predictions" if split == "test" else "train_predictions"
        features = _detached(features, name, 2)
        labels = check_labels(name.replace("predictions", "references"), labels, len(features))
        dim = self._dim()
        if dim is not None and features.shape[1] != dim:
            raise ValueError(
                f"{name}: expected {dim} features per row (as in earlier batches), got {features.shape[1]}"
            )
        if len(features) == 0:
            return
        if split == "test":
            self.features.append(features)
            self.labels.append(labels)
            return
        self._pending.append((features, labels))
        self._pending_rows += len(features)
        if self._pending_rows >= _ACCUMULATE_ROWS:
            self._flush(whole_chunks_only=True)

    def _dim(self) -> int | None:
        for rows in (self.features, [f for f, _ in self._pending]):
            if rows:
                return rows[0].shape[1]
        return None if self.train is None else self.train.moments_.dim

    def _flush(self, whole_chunks_only: bool = False) -> None:
        """Fold pending training rows into the moments (whole 16,384-row chunks only, unless finishing)."""
        if not self._pending:
            return
        features = torch.cat([f for f, _ in self._pending])
        labels = torch.cat([y for _, y in self._pending])
        cut = (len(features) // _ACCUMULATE_ROWS) * _ACCUMULATE_ROWS if whole_chunks_only else len(features)
        if cut:
            if self.train is None:
                self.train = SubspaceProbe()
            self.train.partial_fit(features[:cut], labels[:cut])
        rest = features[cut:], labels[cut:]
        self._pending = [rest] if len(rest[1]) else []
        self._pending_rows = len(rest[1])

    # ------------------------------------------------------------------------------------ merging

    def state(self) -> dict:
        """Picklable CPU snapshot: evaluated rows and the training moments (flushes pending rows)."""
        self._flush()
        state = {
            "features": torch.cat(self.features).cpu() if self.features else None,
            "labels": torch.cat(self.labels).cpu() if self.labels else None,
            "train": None,
        }
        if self.train is not None:
            moments = self.train.moments_
            state["train"] = {
                "count": moments.count,
                "float64": moments.dtype == torch.float64,  # plain types: loadable with weights_only=True
                "shift": moments.shift.cpu(),
                "sum": moments.sum.cpu(),
                "outer": moments.outer.cpu(),
                "target_sum": moments.target_sum.cpu(),
                "cross": moments.cross.cpu(),
                "classes": dict(self.train._class_columns),
            }
        return state

    def merge(self, state: dict) -> None:
        """Append another stream's :meth:`state` (rows after this stream's, moments summed)."""
        self._flush()
        if state["features"] is not None:
            self.features.append(state["features"])
            self.labels.append(state["labels"])
        train = state["train"]
        if train is None:
            return
        other = SubspaceProbe()
        other.moments_ = SecondMoments()
        other.moments_._allocate(train["sum"].numel(), train["sum"].device, train["shift"])
        other.moments_.sum, other.moments_.outer = train["sum"], train["outer"]
        other.moments_.target_sum, other.moments_.cross = train["target_sum"], train["cross"]
        other.moments_.count = train["count"]
        other.moments_.dtype = torch.float64 if train["float64"] else torch.float32
        other._class_columns = dict(train["classes"])
        if self.train is None:
            self.train = other
            return
        # One column layout for both: the sorted union of their class ids.
        union = sorted(set(self.train._class_columns) | set(other._class_columns))
        self.train._remap_columns(union)
        other._remap_columns(union)
        self.train.moments_.merge(other.moments_)
        self.train._stale = True

    def gather(self) -> None:
        """Replace this rank's data with every ``torch.distributed`` rank's, in rank order (call on all ranks)."""
        dist = torch.distributed
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self.__init__()
        for state in states:
            self.merge(state)

    # ---------------------------------------------------------------------------------- computing

    def compute(self, **kwargs) -> dict[str, float | int | str]:
        """:func:`subspace_probe_accuracy` of the accumulated rows (``kwargs``: its settings and train_*)."""
        self._flush()
        if not self.labels:
            raise ValueError(
                "predictions: no evaluated rows were added; add_batch(predictions=..., references=...)"
            )
        # Concatenate once and keep only the result: the batches' memory is released before the probe's own
        # copies (the 80/20 split) are made, so the peak stays ~2x the evaluated rows, not 3x.
        self.features = [torch.cat(self.features)] if len(self.features) > 1 else self.features
        self.labels = [torch.cat(self.labels)] if len(self.labels) > 1 else self.labels
        return subspace_probe_accuracy(self.features[0], self.labels[0], train_probe=self.train, **kwargs)
