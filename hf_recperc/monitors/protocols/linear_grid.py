"""The linear-probe grid: multinomial logistic regression over learning rate x weight decay, all trained at once.

As dinov2's linear evaluation does, the weight matrices of every setting of the grid are stacked into one
`(G, D, C)` tensor, so each step over the cached features updates all of them (one batched matrix product instead
of ``G`` runs). The setting with the best accuracy on a held-out part of the *training* rows (``holdout``, seeded)
wins (ties: the first in grid order, learning rates outer); it is refitted on every training row and scores the
test rows once.

The objective of each setting is scikit-learn's: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` (bias not
penalised), minimised by SGD with Nesterov momentum and a cosine learning-rate decay to zero (full batch unless
``batch_size`` is given). It equals ``LogisticRegression(C=1 / (N * weight_decay))`` at convergence (tested with
enough steps). Features are centred on the training mean (the unpenalised bias makes that lossless) and learning
rates are in units of ``1 / L``, ``L`` the largest eigenvalue of the training covariance plus the weight decay (the
curvature bound of the loss, up to a factor 2), so one grid serves features of any scale.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...spectral import compute_dtype
from ...validation import check_finite_number, check_positive_int
from .common import (
    SELECTED_ON_TRAIN,
    ProtocolMonitor,
    accuracy,
    check_grid,
    check_protocol_inputs,
    class_columns,
    restrict_to_subspace,
)

__all__ = [
    "LINEAR_GRID",
    "DEFAULT_LEARNING_RATES",
    "DEFAULT_WEIGHT_DECAYS",
    "linear_grid_key",
    "holdout_split",
    "train_logistic_grid",
    "linear_grid_protocol",
    "LinearGridMonitor",
]

LINEAR_GRID = "linear_grid"
DEFAULT_LEARNING_RATES = (0.5, 1.0, 2.0)  # x 1 / L (see the module docstring)
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)
DEFAULT_EPOCHS = 30


def linear_grid_key(field: str) -> str:
    """``"accuracy"`` -> ``"linear_grid/accuracy"``. Fields: ``accuracy`` (test, chosen setting, refitted on all
    training rows), ``holdout_accuracy`` (the chosen setting's), ``learning_rate``, ``weight_decay``, and
    ``holdout_accuracy/lr=<a>,wd=<b>`` per setting."""
    return f"{LINEAR_GRID}/{field}"


def holdout_split(num_rows: int, holdout: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit_rows, held_out_rows)``: index tensors of a seeded split, ``ceil(holdout * num_rows)`` held out
    (at least one row on each side)."""
    if check_finite_number("holdout", holdout) <= 0 or holdout >= 1:
        raise ValueError(f"holdout: expected a fraction in (0, 1) of the training rows, got {holdout!r}")
    held = min(max(1, math.ceil(holdout * num_rows)), num_rows - 1)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def _largest_eigenvalue(centred: torch.Tensor, iterations: int = 30) -> float:
    """Largest eigenvalue of ``centred^T centred / N`` `(N, D)` by power iteration (deterministic start)."""
    vector = torch.ones(centred.shape[1], dtype=centred.dtype) / math.sqrt(centred.shape[1])
    value = 0.0
    for _ in range(iterations):
        product = centred.T @ (centred @ vector) / centred.shape[0]  # (D,)
        value = float(product.norm())
        if value == 0.0:
            return 0.0
        vector = product / value
    return value


@torch.no_grad()
def train_logistic_grid(
    X: torch.Tensor,
    columns: torch.Tensor,
    num_classes: int,
    learning_rates,
    weight_decays,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int | None = None,
    momentum: float = 0.9,
    seed: int = 0,
):
    """Train one multinomial logistic regression per (learning rate, weight decay), all in the same steps.

    Args:
        X (`torch.Tensor` of shape `(N, D)`): features (float32 unless float64).
        columns (`torch.LongTensor` of shape `(N,)`): target column of each row, in ``[0, num_classes)``.
        learning_rates, weight_decays: the grid (``G = len(learning_rates) * len(weight_decays)``, lr outer).
        epochs: passes over ``X``; batch_size: rows per step (``None``: full batch); momentum: Nesterov's.
        seed: order of the mini-batches.

    Returns:
        ``(mean (D,), weights (G, D, C), biases (G, C))``: a setting's logits are ``(x - mean) @ W_g + b_g``.
    """
    dtype = compute_dtype(X.dtype)
    mean = X.to(dtype).mean(0)
    centred = X.to(dtype) - mean  # (N, D)
    settings = [(lr, wd) for lr in learning_rates for wd in weight_decays]
    curvature = _largest_eigenvalue(centred)
    rates = torch.tensor([lr / (curvature + wd) for lr, wd in settings], dtype=dtype)  # (G,)
    decays = torch.tensor([wd for _, wd in settings], dtype=dtype)  # (G,)
    num_rows, dim = centred.shape
    weights = torch.zeros(len(settings), dim, num_classes, dtype=dtype)  # (G, D, C)
    biases = torch.zeros(len(settings), num_classes, dtype=dtype)  # (G, C)
    velocity_w, velocity_b = torch.zeros_like(weights), torch.zeros_like(biases)
    targets = torch.nn.functional.one_hot(columns, num_classes).to(dtype)  # (N, C)
    batch = num_rows if batch_size is None else min(batch_size, num_rows)
    steps_per_epoch = math.ceil(num_rows / batch)
    total, step = epochs * steps_per_epoch, 0
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = torch.arange(num_rows) if batch == num_rows else torch.randperm(num_rows, generator=generator)
        for start in range(0, num_rows, batch):
            rows = order[start : start + batch]
            inputs, batch_targets = centred[rows], targets[rows]  # (b, D), (b, C)
            # Nesterov: the gradient is taken at the look-ahead point W + momentum * v.
            ahead_w, ahead_b = weights + momentum * velocity_w, biases + momentum * velocity_b
            logits = torch.einsum("nd,gdc->gnc", inputs, ahead_w) + ahead_b[:, None]  # (G, b, C)
            residual = (logits.softmax(-1) - batch_targets) / len(rows)  # d(mean CE)/d logits
            grad_w = torch.einsum("nd,gnc->gdc", inputs, residual) + decays[:, None, None] * ahead_w
            grad_b = residual.sum(1)  # (G, C)
            rate = rates * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine decay to zero
            velocity_w.mul_(momentum).sub_(rate[:, None, None] * grad_w)
            velocity_b.mul_(momentum).sub_(rate[:, None] * grad_b)
            weights += velocity_w
            biases += velocity_b
            step += 1
    return mean, weights, biases


def _predict(mean, weights, biases, X: torch.Tensor) -> torch.Tensor:
    """Predicted columns `(G, M)` of every setting for rows ``X`` `(M, D)`."""
    logits = torch.einsum("nd,gdc->gnc", X.to(mean.dtype) - mean, weights) + biases[:, None]
    return logits.argmax(-1)


def linear_grid_protocol(
    train_X,
    train_y,
    test_X,
    test_y,
    *,
    learning_rates=DEFAULT_LEARNING_RATES,
    weight_decays=DEFAULT_WEIGHT_DECAYS,
    epochs: int = DEFAULT_EPOCHS,
    batch_size: int | None = None,
    momentum: float = 0.9,
    holdout: float = 0.2,
    seed: int = 0,
    subspace: str = "all",
) -> dict[str, Any]:
    """Logistic linear-probe accuracy at the (learning rate, weight decay) chosen on held-out training rows.

    Args:
        train_X (`(N, D)`), train_y (`(N,)`): rows to select and fit on; test_X (`(M, D)`), test_y (`(M,)`): scored.
        learning_rates (> 0, in units of ``1 / L``), weight_decays (> 0): the grid.
        epochs, batch_size, momentum: the optimiser (:func:`train_logistic_grid`).
        holdout: fraction of the training rows held out to choose on; seed: that split and the batch order.
        subspace: restrict to a PCA subspace of the training rows first.

    Returns:
        ``linear_grid/{accuracy,holdout_accuracy,learning_rate,weight_decay}``, per-setting
        ``linear_grid/holdout_accuracy/lr=<a>,wd=<b>``, and ``linear_grid/selection`` (a string).
    """
    learning_rates = check_grid("learning_rates", learning_rates)
    weight_decays = check_grid("weight_decays", weight_decays)
    check_positive_int("epochs", epochs)
    check_positive_int("batch_size", batch_size, allow_none=True)
    if not 0 <= check_finite_number("momentum", momentum) < 1:
        raise ValueError(f"momentum: expected a number in [0, 1), got {momentum!r}")
    train_X, train_y, test_X, test_y = check_protocol_inputs(train_X, train_y, test_X, test_y)
    fit_rows, held_rows = holdout_split(train_X.shape[0], holdout, seed)
    train_X, test_X = restrict_to_subspace(train_X, test_X, subspace)
    classes, columns = class_columns(train_y)
    options = dict(epochs=epochs, batch_size=batch_size, momentum=momentum, seed=seed)
    grid = train_logistic_grid(
        train_X[fit_rows], columns[fit_rows], classes.numel(), learning_rates, weight_decays, **options
    )
    predicted = classes[_predict(*grid, train_X[held_rows])]  # (G, held)
    held_accuracy = [accuracy(row, train_y[held_rows]) for row in predicted]
    best = max(range(len(held_accuracy)), key=lambda g: (held_accuracy[g], -g))  # first maximum
    settings = [(lr, wd) for lr in learning_rates for wd in weight_decays]
    lr, wd = settings[best]
    final = train_logistic_grid(train_X, columns, classes.numel(), (lr,), (wd,), **options)
    results: dict[str, Any] = {
        linear_grid_key("accuracy"): accuracy(classes[_predict(*final, test_X)[0]], test_y),
        linear_grid_key("holdout_accuracy"): held_accuracy[best],
        linear_grid_key("learning_rate"): lr,
        linear_grid_key("weight_decay"): wd,
    }
    for (a, b), value in zip(settings, held_accuracy):
        results[linear_grid_key(f"holdout_accuracy/lr={a:g},wd={b:g}")] = value
    results[linear_grid_key("selection")] = f"held-out {holdout:g} of {SELECTED_ON_TRAIN}"
    return results


class LinearGridMonitor(ProtocolMonitor):
    """:func:`linear_grid_protocol` as a monitor (``--monitors linear_grid``); arguments as the function's."""

    name = LINEAR_GRID
    protocol = staticmethod(linear_grid_protocol)

    def __init__(
        self,
        feature: str = "embedding",
        learning_rates=DEFAULT_LEARNING_RATES,
        weight_decays=DEFAULT_WEIGHT_DECAYS,
        epochs: int = DEFAULT_EPOCHS,
        batch_size: int | None = None,
        holdout: float = 0.2,
        seed: int = 0,
        subspace: str = "all",
        prefix: str = "",
    ):
        check_grid("learning_rates", learning_rates)
        check_grid("weight_decays", weight_decays)
        check_positive_int("epochs", epochs)
        super().__init__(
            feature,
            prefix,
            learning_rates=tuple(learning_rates),
            weight_decays=tuple(weight_decays),
            epochs=epochs,
            batch_size=batch_size,
            holdout=holdout,
            seed=seed,
            subspace=subspace,
        )

    def settings(self) -> dict[str, Any]:
        options = self.options
        return {
            **super().settings(),
            "selection": f"held-out {options['holdout']:g} of {SELECTED_ON_TRAIN}",
            "learning_rates": list(options["learning_rates"]),
            "weight_decays": list(options["weight_decays"]),
            "epochs": options["epochs"],
            "batch_size": options["batch_size"] or "full",
            "seed": options["seed"],
        }
