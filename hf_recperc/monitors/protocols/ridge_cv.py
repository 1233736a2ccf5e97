"""Closed-form ridge probe with its penalty chosen by k-fold cross-validation on the training rows.

The probe is :class:`~hf_recperc.probing.SubspaceProbe`'s ridge (covariance units, ``alpha = ridge * mean
eigenvalue``, unpenalised intercept; :class:`~.common.RidgeFit`). The training rows are split into ``num_folds``
seeded folds (:func:`kfold_assignments`); every penalty of the grid is fitted on each fold's complement and scored
on the fold, the penalty with the best mean fold accuracy wins (ties: the first in the grid, as scikit-learn's
``GridSearchCV``), and it is refitted on every training row before the test rows are scored once.

Cost: one pass of second moments over the training rows (one chunk per fold, merged), one `(D, D)`
eigendecomposition per fold and one for the refit; each penalty then costs a matrix product.

scikit-learn equivalent (tested): for each fold, ``RidgeClassifier(alpha=ridge * N_f * mean_var_f)`` with
``fit_intercept=True`` on the fold's complement, ``N_f`` its rows and ``mean_var_f`` its mean per-feature variance
(``1/N`` normalisation); pick the best mean fold accuracy; refit with ``alpha = ridge * N * mean_var`` on all rows.
"""

from __future__ import annotations

from typing import Any

import torch

from ...results import RIDGE_CV, ridge_cv_key
from ...spectral import SecondMoments
from ...validation import check_positive_int
from .common import (
    SELECTED_ON_TRAIN,
    ProtocolMonitor,
    RidgeFit,
    accuracy,
    check_grid,
    check_protocol_inputs,
    class_columns,
    restrict_to_subspace,
)

__all__ = [
    "RIDGE_CV",
    "DEFAULT_RIDGES",
    "ridge_cv_key",
    "kfold_assignments",
    "ridge_cv_protocol",
    "RidgeCVMonitor",
]

# Relative penalties (x mean eigenvalue), log-spaced around SubspaceProbe's default 1e-3.
DEFAULT_RIDGES = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)


def kfold_assignments(num_rows: int, num_folds: int, seed: int = 0) -> torch.Tensor:
    """Fold id `(num_rows,)` in ``[0, num_folds)`` of each row: a seeded permutation dealt out in turn, so fold
    sizes differ by at most one."""
    check_positive_int("num_folds", num_folds)
    if num_folds < 2 or num_folds > num_rows:
        raise ValueError(
            f"num_folds: expected an integer in [2, {num_rows}] (the training rows), got {num_folds}"
        )
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    folds = torch.empty(num_rows, dtype=torch.long)
    folds[order] = torch.arange(num_rows) % num_folds
    return folds


def _fold_moments(X: torch.Tensor, columns: torch.Tensor, folds: torch.Tensor, num_classes: int):
    """One :class:`SecondMoments` (features and one-hot targets) per fold."""
    moments = []
    for fold in range(int(folds.max()) + 1):
        rows = folds == fold
        targets = torch.nn.functional.one_hot(columns[rows], num_classes)
        moments.append(SecondMoments().update(X[rows], targets))
    return moments


def _merged(moments: list[SecondMoments], skip: int | None = None) -> SecondMoments:
    total = SecondMoments()
    for index, part in enumerate(moments):
        if index != skip:
            total.merge(part)
    return total


def ridge_cv_protocol(
    train_X,
    train_y,
    test_X,
    test_y,
    *,
    ridges=DEFAULT_RIDGES,
    num_folds: int = 5,
    seed: int = 0,
    subspace: str = "all",
) -> dict[str, Any]:
    """Ridge probe accuracy at the penalty chosen by ``num_folds``-fold cross-validation on the training rows.

    Args:
        train_X (`torch.Tensor` of shape `(N, D)`), train_y (`(N,)`): rows to select and fit on.
        test_X (`(M, D)`), test_y (`(M,)`): rows scored once, at the chosen penalty.
        ridges: relative penalties to try (> 0; ``alpha = ridge * mean eigenvalue``).
        num_folds: folds of the training rows (2..N); seed: their seeded assignment (:func:`kfold_assignments`).
        subspace: restrict to a PCA subspace of the training rows first (:func:`~.common.restrict_to_subspace`).

    Returns:
        ``ridge_cv/{accuracy,cv_accuracy,ridge,alpha,num_folds}``, ``ridge_cv/cv_accuracy/ridge=<r>`` per penalty,
        and ``ridge_cv/selection`` (a string: what the penalty was chosen on).
    """
    ridges = check_grid("ridges", ridges)
    train_X, train_y, test_X, test_y = check_protocol_inputs(train_X, train_y, test_X, test_y)
    folds = kfold_assignments(train_X.shape[0], num_folds, seed)
    train_X, test_X = restrict_to_subspace(train_X, test_X, subspace)
    classes, columns = class_columns(train_y)
    moments = _fold_moments(train_X, columns, folds, classes.numel())
    fold_accuracy = torch.zeros(len(ridges), dtype=torch.float64)  # mean over folds, as GridSearchCV
    for fold in range(num_folds):
        fit = RidgeFit.from_moments(_merged(moments, skip=fold), classes.numel())
        held_out = folds == fold
        for index, scores in enumerate(fit.decision_functions(train_X[held_out], ridges)):
            predicted = classes[scores.argmax(1)]
            fold_accuracy[index] += accuracy(predicted, train_y[held_out]) / num_folds
    best = int(fold_accuracy.argmax())  # the first maximum: ties go to the earlier grid value
    final = RidgeFit.from_moments(_merged(moments), classes.numel())
    predicted = classes[final.decision_function(test_X, ridges[best]).argmax(1)]
    results: dict[str, Any] = {
        ridge_cv_key("accuracy"): accuracy(predicted, test_y),
        ridge_cv_key("cv_accuracy"): float(fold_accuracy[best]),
        ridge_cv_key("ridge"): ridges[best],
        ridge_cv_key("alpha"): ridges[best] * final.scale,
        ridge_cv_key("num_folds"): num_folds,
    }
    results.update(
        {ridge_cv_key(f"cv_accuracy/ridge={r:g}"): float(a) for r, a in zip(ridges, fold_accuracy)}
    )
    results[ridge_cv_key("selection")] = f"{num_folds}-fold cross-validation on {SELECTED_ON_TRAIN}"
    return results


class RidgeCVMonitor(ProtocolMonitor):
    """:func:`ridge_cv_protocol` as a monitor (``--monitors ridge_cv``).

    Args:
        feature, prefix: see :class:`~.common.ProtocolMonitor`.
        ridges, num_folds, seed, subspace: see :func:`ridge_cv_protocol`.
    """

    name = RIDGE_CV
    protocol = staticmethod(ridge_cv_protocol)

    def __init__(
        self,
        feature: str = "embedding",
        ridges=DEFAULT_RIDGES,
        num_folds: int = 5,
        seed: int = 0,
        subspace: str = "all",
        prefix: str = "",
    ):
        check_grid("ridges", ridges)
        if check_positive_int("num_folds", num_folds) < 2:  # the rows' bound is checked when they are known
            raise ValueError(
                f"num_folds: expected an integer >= 2 (folds of the training rows), got {num_folds}"
            )
        super().__init__(
            feature, prefix, ridges=tuple(ridges), num_folds=num_folds, seed=seed, subspace=subspace
        )

    def settings(self) -> dict[str, Any]:
        return {
            **super().settings(),
            "selection": f"{self.options['num_folds']}-fold cross-validation on {SELECTED_ON_TRAIN}",
            "ridges": list(self.options["ridges"]),
            "seed": self.options["seed"],
        }
