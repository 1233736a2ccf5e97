"""The linear-probe grid: multinomial logistic regression over learning rate x weight decay, all trained at once.

As dinov2's linear evaluation does, the weight matrices of every setting of the grid are stacked into one
`(G, D, C)` tensor, so each step over the cached features updates all of them (one batched matrix product instead
of ``G`` runs). The setting with the best accuracy on a held-out part of the *training* rows (``holdout``, seeded)
wins (ties: the first in grid order, learning rates outer); it is refitted on every training row and scores the
test rows once.

The objective of each setting is scikit-learn's: mean cross-entropy + ``weight_decay / 2 * ||W||^2`` (bias not
penalised), so at convergence it equals ``LogisticRegression(C=1 / (N * weight_decay))`` (tested). It is minimised
by gradient descent with Nesterov momentum and a cosine learning-rate decay to zero (full batch unless
``batch_size`` is given), on features centred on the training mean (lossless: the bias is unpenalised), with the
gradient of setting ``g`` preconditioned by ``(C + weight_decay_g I)^-1`` (``C`` the training covariance, one
eigendecomposition for the whole grid): the path is shorter whatever the feature scales, the optimum is the same.
Learning rates are steps of that preconditioned gradient (about 1 is a Newton step on the quadratic part).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ...results import LINEAR_GRID, linear_grid_key
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

DEFAULT_LEARNING_RATES = (0.1, 0.3, 1.0)  # steps of the preconditioned gradient (see the module docstring)
DEFAULT_WEIGHT_DECAYS = (1e-5, 1e-4, 1e-3)
DEFAULT_EPOCHS = 10


def holdout_split(num_rows: int, holdout: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(fit_rows, held_out_rows)``: index tensors of a seeded split, ``ceil(holdout * num_rows)`` held out
    (at least one row on each side)."""
    if check_finite_number("holdout", holdout) <= 0 or holdout >= 1:
        raise ValueError(f"holdout: expected a fraction in (0, 1) of the training rows, got {holdout!r}")
    held = min(max(1, math.ceil(holdout * num_rows)), num_rows - 1)
    order = torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))
    return order[held:], order[:held]


def covariance_spectrum(X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(eigenvalues (D,), eigenvectors (D, D) as columns)`` of the covariance of rows ``X`` `(N, D)`, in their
    precision (a preconditioner needs no more)."""
    centred = X - X.mean(0)
    return torch.linalg.eigh(centred.T @ centred / X.shape[0])


def _preconditioner(spectrum, decays: torch.Tensor, num_classes: int):
    """``grad -> (C + wd_g I)^-1 grad_g`` for every setting ``g``, ``C`` the covariance of the training rows.

    The penalised loss's Hessian is about ``C (x) S + wd I`` (``S`` the softmax curvature), so this makes every
    direction about equally fast whatever the feature scales. Any fixed positive-definite preconditioner leaves the
    optimum where it was (the objective is unchanged: scikit-learn's), it only shortens the path there.
    """
    eigenvalues, vectors = (part.to(decays.dtype) for part in spectrum)
    inverse = 1.0 / (eigenvalues.clamp_min(0)[:, None] + decays[None, :])  # (D, G)
    inverse = inverse.repeat_interleave(num_classes, dim=1)  # (D, G C)

    def precondition(gradient: torch.Tensor) -> torch.Tensor:  # (D, G C) -> (D, G C)
        return vectors @ ((vectors.T @ gradient) * inverse)

    return precondition


def _softmax(logits: torch.Tensor) -> torch.Tensor:
    """Softmax over the last axis of `(b, G, C)` logits, written out: torch's kernel is about 6x slower on a last
    axis of a few classes on the CPU, and the grid's steps are mostly this (benchmarks/report_protocols.py)."""
    exp = (logits - logits.amax(-1, keepdim=True)).exp_()
    return exp.div_(exp.sum(-1, keepdim=True))


def _batches(num_rows: int, batch: int, epochs: int, seed: int):
    """The rows of each step, ``epochs`` passes over ``num_rows`` rows: every row (``slice(None)``) when ``batch``
    covers them all, else index tensors of ``batch`` rows from one seeded shuffle per pass (the last may be
    shorter)."""
    generator = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        order = None if batch == num_rows else torch.randperm(num_rows, generator=generator)
        for start in range(0, num_rows, batch):
            yield slice(None) if order is None else order[start : start + batch]


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
    spectrum: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Train one multinomial logistic regression per (learning rate, weight decay), all in the same steps.

    Args:
        X (`torch.Tensor` of shape `(N, D)`): features (float32 unless float64).
        columns (`torch.LongTensor` of shape `(N,)`): target column of each row, in ``[0, num_classes)``.
        learning_rates, weight_decays: the grid (``G = len(learning_rates) * len(weight_decays)``, lr outer).
        epochs: passes over ``X``; batch_size: rows per step (``None``: full batch); momentum: Nesterov's.
        seed: order of the mini-batches.
        spectrum: :func:`covariance_spectrum` of the rows the preconditioner comes from (default: ``X``'s).

    Returns:
        ``(mean (D,), weights (G, D, C), biases (G, C))``: a setting's logits are ``(x - mean) @ W_g + b_g``.
    """
    dtype = compute_dtype(X.dtype)
    mean = X.to(dtype).mean(0)
    centred = X.to(dtype) - mean  # (N, D)
    settings = [(lr, wd) for lr in learning_rates for wd in weight_decays]
    rates = torch.tensor([lr for lr, _ in settings], dtype=dtype)  # (G,)
    decays = torch.tensor([wd for _, wd in settings], dtype=dtype)  # (G,)
    precondition = _preconditioner(spectrum or covariance_spectrum(centred), decays, num_classes)
    num_rows, dim = centred.shape
    num_settings = len(settings)
    # The grid's weights side by side, (D, G C): each step is two plain matrix products for every setting at once.
    weights = torch.zeros(dim, num_settings * num_classes, dtype=dtype)
    biases = torch.zeros(num_settings * num_classes, dtype=dtype)
    velocity_w, velocity_b = torch.zeros_like(weights), torch.zeros_like(biases)
    column_rates = rates.repeat_interleave(num_classes)  # (G C,)
    column_decays = decays.repeat_interleave(num_classes)
    targets = torch.nn.functional.one_hot(columns, num_classes).to(dtype)  # (N, C)
    batch = num_rows if batch_size is None else min(batch_size, num_rows)
    total = epochs * math.ceil(num_rows / batch)
    for step, rows in enumerate(_batches(num_rows, batch, epochs, seed)):
        inputs, batch_targets = centred[rows], targets[rows]  # (b, D), (b, C)
        # Nesterov: the gradient is taken at the look-ahead point W + momentum * v.
        ahead_w, ahead_b = weights + momentum * velocity_w, biases + momentum * velocity_b
        logits = (inputs @ ahead_w + ahead_b).view(-1, num_settings, num_classes)  # (b, G, C)
        residual = (_softmax(logits) - batch_targets[:, None]) / len(inputs)  # d(mean CE)/d logits
        residual = residual.view(-1, num_settings * num_classes)  # (b, G C)
        grad_w = precondition(inputs.T @ residual + column_decays * ahead_w)  # (D, G C)
        rate = column_rates * 0.5 * (1 + math.cos(math.pi * step / total))  # cosine decay to zero
        velocity_w.mul_(momentum).sub_(rate * grad_w)
        velocity_b.mul_(momentum).sub_(rate * residual.sum(0))
        weights += velocity_w
        biases += velocity_b
    weights = weights.view(dim, num_settings, num_classes).permute(1, 0, 2)  # (G, D, C)
    biases = biases.view(num_settings, num_classes)
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
        learning_rates (> 0, steps of the preconditioned gradient), weight_decays (> 0): the grid.
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
    # One preconditioner for the grid and the refit: every training row's covariance (no label is read).
    spectrum = covariance_spectrum(train_X.to(compute_dtype(train_X.dtype)))
    options = dict(epochs=epochs, batch_size=batch_size, momentum=momentum, seed=seed, spectrum=spectrum)
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
