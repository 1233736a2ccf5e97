"""Few-shot probes: ``n`` training rows per class, several seeded draws, mean and spread of the test accuracy.

Each draw picks ``n`` rows of every class from the *training* rows only (:func:`few_shot_draws` receives nothing but
the training labels, so it cannot read a test row: CLIP_benchmark's reported few-shot leakage cannot happen here),
fits the closed-form ridge probe of :class:`~hf_recperc.probing.SubspaceProbe` on them (covariance units, in its
`(n C, n C)` dual form, :class:`~.common.RidgeFit`), and scores every test row. The spread is the standard
deviation over draws (``ddof=1``; 0 with one draw). No hyperparameter is chosen: ``ridge`` is fixed.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from ...results import FEW_SHOT, few_shot_key
from ...validation import check_finite_number, check_positive_int
from ..base import TRAIN
from .common import (
    SELECTED_ON_TRAIN,
    ProtocolMonitor,
    RidgeFit,
    accuracy,
    check_protocol_inputs,
    restrict_to_subspace,
)

__all__ = [
    "FEW_SHOT",
    "DEFAULT_SHOTS",
    "few_shot_key",
    "few_shot_draws",
    "few_shot_protocol",
    "FewShotMonitor",
]

logger = logging.getLogger(__name__)

DEFAULT_SHOTS = (1, 5, 10, 25)
DEFAULT_DRAWS = 5


def few_shot_draws(
    train_labels: torch.Tensor, shots: int, num_draws: int, seed: int = 0
) -> list[torch.Tensor]:
    """Row indices of ``num_draws`` draws of ``shots`` training rows per class (seeded; draw ``i`` of a given
    ``(seed, shots)`` is the same whatever ``num_draws`` is).

    Args:
        train_labels (`torch.LongTensor` of shape `(N,)`): the training labels (the only input: no test row).
        shots: rows per class; more than the rows of some class is an error naming ``shots``.

    Returns:
        ``num_draws`` increasing index tensors of shape `(shots * C,)`.
    """
    check_positive_int("shots", shots)
    check_positive_int("num_draws", num_draws)
    classes, counts = torch.unique(train_labels, return_counts=True)
    if int(counts.min()) < shots:
        scarce = classes[counts.argmin()].item()
        raise ValueError(
            f"shots: {shots} per class asked, but class {scarce} has only {int(counts.min())} training rows"
        )
    members = [torch.nonzero(train_labels == c).flatten() for c in classes.tolist()]
    draws = []
    for draw in range(num_draws):
        generator = torch.Generator().manual_seed(((seed * 1_000_003 + shots) * 1_000_003 + draw) % 2**63)
        picked = [rows[torch.randperm(len(rows), generator=generator)[:shots]] for rows in members]
        draws.append(torch.cat(picked).sort().values)
    return draws


def few_shot_protocol(
    train_X,
    train_y,
    test_X,
    test_y,
    *,
    shots=DEFAULT_SHOTS,
    num_draws: int = DEFAULT_DRAWS,
    ridge: float = 1e-3,
    seed: int = 0,
    subspace: str = "all",
) -> dict[str, Any]:
    """Mean and standard deviation over seeded draws of the ``n``-shot ridge probe's test accuracy, per ``n``.

    Args:
        train_X (`(N, D)`), train_y (`(N,)`): the pool the shots are drawn from; test_X, test_y: scored.
        shots: rows per class (each <= the rows of the scarcest class); num_draws: draws per ``n``; seed: theirs.
        ridge: the probe's relative penalty (> 0; ``alpha = ridge * mean eigenvalue`` of the drawn rows).
        subspace: restrict to a PCA subspace of (all) the training rows first.

    Returns:
        ``few_shot/accuracy/<n>-shot``, ``few_shot/std/<n>-shot``, ``few_shot/{num_draws,ridge}``,
        ``few_shot/selection`` (a string).
    """
    if isinstance(shots, (str, bytes)) or not hasattr(shots, "__iter__") or not len(shots):
        raise ValueError(f"shots: expected a non-empty list of integers >= 1, got {shots!r}")
    shots = tuple(check_positive_int("shots", n) for n in shots)
    check_positive_int("num_draws", num_draws)
    if check_finite_number("ridge", ridge) <= 0:
        raise ValueError(f"ridge: expected a number > 0, got {ridge!r}")
    train_X, train_y, test_X, test_y = check_protocol_inputs(train_X, train_y, test_X, test_y)
    draws = {n: few_shot_draws(train_y, n, num_draws, seed) for n in shots}  # training labels only
    train_X, test_X = restrict_to_subspace(train_X, test_X, subspace)
    classes, columns = torch.unique(train_y, return_inverse=True)
    results: dict[str, Any] = {}
    for n, rows_of_draws in draws.items():
        scores = []
        for rows in rows_of_draws:
            fit = RidgeFit.fit(train_X[rows], columns[rows], classes.numel())
            scores.append(accuracy(classes[fit.decision_function(test_X, ridge).argmax(1)], test_y))
        values = torch.tensor(scores, dtype=torch.float64)
        results[few_shot_key("accuracy", n)] = float(values.mean())
        results[few_shot_key("std", n)] = float(values.std()) if len(scores) > 1 else 0.0
    results[few_shot_key("num_draws")] = num_draws
    results[few_shot_key("ridge")] = float(ridge)
    results[few_shot_key("selection")] = f"shots drawn from {SELECTED_ON_TRAIN}; no hyperparameter chosen"
    return results


class FewShotMonitor(ProtocolMonitor):
    """:func:`few_shot_protocol` as a monitor (``--monitors few_shot``); arguments as the function's."""

    name = FEW_SHOT
    protocol = staticmethod(few_shot_protocol)

    def __init__(
        self,
        feature: str = "embedding",
        shots=DEFAULT_SHOTS,
        num_draws: int = DEFAULT_DRAWS,
        ridge: float = 1e-3,
        seed: int = 0,
        subspace: str = "all",
        prefix: str = "",
    ):
        for n in shots:
            check_positive_int("shots", n)
        check_positive_int("num_draws", num_draws)
        super().__init__(
            feature,
            prefix,
            shots=tuple(shots),
            num_draws=num_draws,
            ridge=ridge,
            seed=seed,
            subspace=subspace,
        )

    def protocol_options(self) -> dict[str, Any]:
        """The options, without the ``shots`` the scarcest training class cannot give (logged): a monitor runs after
        a whole extraction or training run, which one infeasible ``n`` should not throw away (the function, called
        directly, refuses it)."""
        train_y = self._gathered[TRAIN][1]
        scarcest = int(torch.unique(train_y, return_counts=True)[1].min())
        shots = tuple(n for n in self.options["shots"] if n <= scarcest)
        if not shots:
            raise ValueError(
                f"shots: {list(self.options['shots'])} per class asked, but a class has only {scarcest} training rows"
            )
        if shots != self.options["shots"]:
            dropped = [n for n in self.options["shots"] if n > scarcest]
            logger.warning(f"few_shot: {dropped}-shot skipped, a class has only {scarcest} training rows")
        return {**self.options, "shots": shots}

    def settings(self) -> dict[str, Any]:
        options = self.options
        return {
            **super().settings(),
            "selection": f"shots drawn from {SELECTED_ON_TRAIN}",
            "shots": list(options["shots"]),
            "num_draws": options["num_draws"],
            "ridge": options["ridge"],
            "seed": options["seed"],
        }
