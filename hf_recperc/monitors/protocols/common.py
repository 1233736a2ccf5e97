"""What every standard protocol shares: input checks, the subspace restriction, the closed-form ridge used for
selection, and the monitor shell that feeds a protocol function from :class:`~hf_recperc.monitors.MonitorBatch` rows.

A protocol is a pure function ``protocol(train_X, train_y, test_X, test_y, *, subspace="all", ...) -> dict``: it
chooses its hyperparameters on the training rows only, refits at the chosen setting, and scores the test rows once.
Its result keys come from the protocol's own ``*_key`` function, never from literals (docs/protocols.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ...spectral import PCA, SecondMoments, as_float_tensor, parse_subspace
from ...validation import check_finite_number, check_labels
from ..base import EVAL, TRAIN, MonitorBatch, gather_rows

__all__ = [
    "SELECTED_ON_TRAIN",
    "check_protocol_inputs",
    "restrict_to_subspace",
    "restrict_tokens_to_subspace",
    "RidgeFit",
    "accuracy",
    "ProtocolMonitor",
]

# Stated in every protocol's settings (and on cards): hyperparameters are never chosen on the scored rows.
SELECTED_ON_TRAIN = "training rows only"


def check_protocol_inputs(train_X, train_y, test_X, test_y, ndim: int = 2):
    """Validated ``(train_X, train_y, test_X, test_y)`` on the CPU: float features `(N, D)` / `(M, D)` (or
    `(N, T, D)` tokens with ``ndim=3``; half precision kept, widened where used), int64 labels `(N,)` / `(M,)`, at
    least two training classes, matching widths. Protocols run on the CPU: a cached feature set fits there, and their
    seeded draws then give the same rows on every machine."""
    train_X = as_float_tensor(train_X, "train_X", ndim).cpu()
    test_X = as_float_tensor(test_X, "test_X", ndim).cpu()
    train_y = check_labels("train_y", train_y, train_X.shape[0], allow_float=True).cpu()
    test_y = check_labels("test_y", test_y, test_X.shape[0], allow_float=True).cpu()
    if train_X.shape[1:] != test_X.shape[1:]:
        raise ValueError(
            f"test_X: expected rows shaped like train_X's {tuple(train_X.shape[1:])}, got {tuple(test_X.shape[1:])}"
        )
    if test_X.shape[0] == 0:
        raise ValueError("test_X: no rows to score")
    if torch.unique(train_y).numel() < 2:
        raise ValueError(f"train_y: need at least 2 classes, got {torch.unique(train_y).tolist()}")
    return train_X, train_y, test_X, test_y


def restrict_to_subspace(
    train_X: torch.Tensor, test_X: torch.Tensor, subspace: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Features projected onto a PCA variance subspace of the *training* rows, in input space.

    ``"all"`` returns the features unchanged; any other spec (``top:0.9``, ``bottom:0.2``, ...) fits
    :class:`~hf_recperc.spectral.PCA` on ``train_X`` and returns ``PCA.project(X, spec, add_mean=True)`` of both
    sets as float32 (docs/science.md section 2): the same `(N, D)` shape, so every protocol runs on it unchanged,
    and ``"all"`` is the identity the projection reduces to.

    Args:
        train_X (`torch.Tensor` of shape `(N, D)`), test_X (`(M, D)`): features.
        subspace: a subspace string (:func:`~hf_recperc.spectral.parse_subspace`).
    """
    if str(parse_subspace(subspace)) == "all":
        return train_X, test_X
    pca = PCA().fit(train_X)
    dtype = torch.float64 if train_X.dtype == torch.float64 else torch.float32
    return (
        pca.project(train_X, subspace, add_mean=True).to(dtype),
        pca.project(test_X, subspace, add_mean=True).to(dtype),
    )


def restrict_tokens_to_subspace(
    train_tokens: torch.Tensor, test_tokens: torch.Tensor, subspace: str = "all"
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`restrict_to_subspace` for token features `(N, T, D)`: the PCA is fitted on every training token."""
    if str(parse_subspace(subspace)) == "all":
        return train_tokens, test_tokens
    (n, t, d), m = train_tokens.shape, test_tokens.shape[0]
    train, test = restrict_to_subspace(
        train_tokens.reshape(n * t, d), test_tokens.reshape(m * t, d), subspace
    )
    return train.reshape(n, t, d), test.reshape(m, t, d)


def accuracy(predicted: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of ``predicted`` `(M,)` equal to ``labels`` `(M,)`."""
    return float((predicted.to(labels.device) == labels).double().mean())


class RidgeFit:
    """Closed-form ridge to one-hot targets, in the convention of :class:`~hf_recperc.probing.SubspaceProbe`.

    Covariance units: ``C = X_c^T X_c / N``, penalty ``alpha = ridge * mean(eig(C))`` (= ``ridge * trace(C) / D``),
    unpenalised intercept (the label mean); the solution ``W = (C + alpha I)^-1 X_c^T Y_c / N`` is the one
    SubspaceProbe's PCA-basis formula gives on ``"all"`` (docs/science.md; tested). It is scikit-learn's
    ``RidgeClassifier(alpha=N * alpha)`` up to the factor 2 of its +-1 targets, which no argmax sees.

    SubspaceProbe pays one `(D, D)` eigendecomposition per fit; selection needs many fits (folds x penalties,
    few-shot draws), so this form keeps one eigendecomposition per set of rows for a whole grid of penalties
    (:meth:`from_moments`), and solves tiny sets (``N < D``: a 1-shot fit) in the `(N, N)` dual
    (:meth:`from_rows`).
    """

    def __init__(
        self, mean: torch.Tensor, label_mean: torch.Tensor, solve: Callable, scale: float, basis=None
    ):
        self._mean, self._label_mean, self._solve, self.scale = mean, label_mean, solve, scale
        self._basis = basis  # (D, D) eigenvectors when ``solve`` gives coefficients in their basis

    @classmethod
    def from_moments(cls, moments: SecondMoments, num_classes: int) -> RidgeFit:
        """From :class:`~hf_recperc.spectral.SecondMoments` of features with one-hot targets `(N, C)`."""
        covariance = moments.covariance()  # (D, D) float64
        # The solver follows the input precision, as PCA's (float32 rows carry float32 accuracy anyway).
        eigenvalues, vectors = torch.linalg.eigh(covariance.to(moments.dtype))  # (D,), (D, D) columns
        eigenvalues, vectors = eigenvalues.double().clamp_min(0), vectors.double()
        projected = vectors.T @ moments.cross_covariance()[:, :num_classes]  # (D, C)

        def solve(alpha: float) -> torch.Tensor:  # coefficients in the eigenbasis, as SubspaceProbe's coef_
            denominator = eigenvalues + alpha
            return torch.where(
                denominator[:, None] > 0, projected / denominator.clamp_min(1e-300)[:, None], 0.0
            )

        label_mean = moments.target_sum[:num_classes] / moments.count
        return cls(moments.mean, label_mean, solve, float(eigenvalues.mean()), basis=vectors)

    @classmethod
    def from_rows(cls, X: torch.Tensor, columns: torch.Tensor, num_classes: int) -> RidgeFit:
        """From rows ``X`` `(n, D)` with target columns `(n,)` in ``[0, num_classes)``: the dual form, `(n, n)`."""
        X = X.double()
        mean = X.mean(0)
        centred = X - mean  # (n, D)
        targets = torch.nn.functional.one_hot(columns, num_classes).double()  # (n, C)
        label_mean = targets.mean(0)
        gram = centred @ centred.T / X.shape[0]  # (n, n); trace(gram) = trace(C)
        eye = torch.eye(X.shape[0], dtype=torch.float64)

        def solve(alpha: float) -> torch.Tensor:
            if alpha <= 0:
                raise ValueError("ridge: expected a number > 0 for a fit on fewer rows than features")
            # W = X_c^T (X_c X_c^T / n + alpha I)^-1 Y_c / n: the primal solution, by the push-through identity.
            dual = torch.linalg.solve(gram + alpha * eye, targets - label_mean)  # (n, C)
            return centred.T @ dual / X.shape[0]  # (D, C)

        return cls(mean, label_mean, solve, float(gram.diagonal().sum()) / X.shape[1])

    @classmethod
    def fit(cls, X: torch.Tensor, columns: torch.Tensor, num_classes: int) -> RidgeFit:
        """From rows ``X`` `(n, D)` and target columns `(n,)`: the dual form when ``n <= D``, else the moments."""
        if X.shape[0] <= X.shape[1]:
            return cls.from_rows(X, columns, num_classes)
        targets = torch.nn.functional.one_hot(columns, num_classes)
        return cls.from_moments(SecondMoments().update(X, targets), num_classes)

    def weights(self, ridge: float) -> torch.Tensor:
        """Coefficients `(D, C)` at relative penalty ``ridge`` (``alpha = ridge * mean eigenvalue``)."""
        coef = self._solve(ridge * self.scale)
        return coef if self._basis is None else self._basis @ coef

    def decision_function(self, X: torch.Tensor, ridge: float) -> torch.Tensor:
        """Scores `(M, C)` float64 of rows ``X`` `(M, D)`."""
        return self.decision_functions(X, [ridge])[0]

    def decision_functions(self, X: torch.Tensor, ridges) -> list[torch.Tensor]:
        """Scores `(M, C)` float64 of rows ``X`` `(M, D)` at every penalty of ``ridges`` (the rows are centred, and
        rotated into the eigenbasis, once)."""
        centred = X.double() - self._mean  # (M, D)
        if self._basis is None:
            return [centred @ self.weights(ridge) + self._label_mean for ridge in ridges]
        rotated = centred @ self._basis  # (M, D)
        return [rotated @ self._solve(ridge * self.scale) + self._label_mean for ridge in ridges]


def class_columns(train_y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes (C,), columns (N,))``: the sorted class ids and each label's column (ties go to the smaller id)."""
    classes, columns = torch.unique(train_y, return_inverse=True)
    return classes, columns


def check_grid(name: str, values, minimum: float = 0.0, strict: bool = True) -> tuple[float, ...]:
    """A non-empty tuple of finite numbers above ``minimum`` (``>=`` when not ``strict``)."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or not len(values):
        raise ValueError(f"{name}: expected a non-empty list of numbers, got {values!r}")
    checked = tuple(check_finite_number(name, value) for value in values)
    for value in checked:
        if value < minimum or (strict and value == minimum):
            raise ValueError(f"{name}: expected numbers {'>' if strict else '>='} {minimum:g}, got {value!r}")
    return checked


class ProtocolMonitor:
    """The :class:`~hf_recperc.monitors.Monitor` shell of a protocol function.

    Keeps the ``"train"`` and ``"eval"`` rows of one feature (gathered from every process in :meth:`all_reduce`),
    and :meth:`compute` runs the protocol on them once; every process computes the same numbers (seeded draws).
    Subclasses set ``name``, ``protocol`` (the function) and :meth:`settings`.

    Args:
        feature: which :attr:`MonitorBatch.features` entry to read (`(B, D)`, or `(B, T, D)` for token protocols).
        prefix: put before every key, e.g. ``layers/layer_3/cls/``.
        options: keyword arguments of the protocol function (``subspace``, grids, seeds, ...).
    """

    name = "protocol"

    @staticmethod
    def protocol(train_X, train_y, test_X, test_y, **options) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def __init__(self, feature: str = "embedding", prefix: str = "", **options):
        parse_subspace(options.get("subspace", "all"))  # a malformed spec fails now, not after a pass
        self.feature, self.prefix, self.options = feature, prefix, options
        self.features = (feature,)
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, list[torch.Tensor]] = {TRAIN: [], EVAL: []}
        self._labels: dict[str, list[torch.Tensor]] = {TRAIN: [], EVAL: []}
        self._gathered: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.results_: dict[str, Any] = {}

    def update(self, batch: MonitorBatch) -> None:
        if batch.split not in (TRAIN, EVAL) or self.feature not in batch.features:
            return
        self._rows[batch.split].append(batch.features[self.feature].detach().cpu())
        self._labels[batch.split].append(batch.labels.detach().cpu())

    def all_reduce(self) -> None:
        gathered = {}
        for split in (TRAIN, EVAL):
            if not self._rows[split]:
                raise ValueError(f"{self.name}: no '{split}' rows of feature {self.feature!r} were seen")
            gathered[split] = (
                gather_rows(torch.cat(self._rows[split])),
                gather_rows(torch.cat(self._labels[split])),
            )
        self._gathered = gathered

    def compute(self) -> dict[str, float]:
        if self._gathered is None:
            self.all_reduce()
        (train_X, train_y), (test_X, test_y) = self._gathered[TRAIN], self._gathered[EVAL]
        self.results_ = self.protocol(train_X, train_y, test_X, test_y, **self.protocol_options())
        return {
            f"{self.prefix}{key}": float(value)
            for key, value in self.results_.items()
            if isinstance(value, (int, float))
        }

    def protocol_options(self) -> dict[str, Any]:
        """The keyword arguments :meth:`compute` passes to the protocol (``options``; a subclass may add work it
        shares with another monitor)."""
        return self.options

    def settings(self) -> dict[str, Any]:
        """Card-worthy settings the numbers were measured with (subclasses add theirs)."""
        return {
            "subspace": str(parse_subspace(self.options.get("subspace", "all"))),
            "selection": SELECTED_ON_TRAIN,
        }

    def figures(self) -> dict:
        return {}
