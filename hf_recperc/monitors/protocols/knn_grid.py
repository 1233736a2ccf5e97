"""kNN over a grid of neighbour counts and temperatures, from one similarity pass.

The votes are those of :func:`~hf_recperc.monitors.knn_predict` (cosine similarity; plain majority with ties to the
smallest class id, as scikit-learn's ``KNeighborsClassifier``; and the temperature-weighted vote of Wu et al. 2018 /
DINO, ``exp(similarity / temperature)``), for every ``k`` and temperature at once: each query's neighbours are
ranked once up to the largest ``k`` and every setting reads a prefix of that ranking (tested equal to
``knn_predict`` setting by setting). A ``k`` above the bank's rows is clipped to them, with a warning and a
``knn_grid/clipped`` entry.

Selection: the weighted setting ``(k, temperature)`` with the best accuracy on held-out *training* rows (``holdout``,
at most ``max_selection_queries`` of them, classified against the other training rows) is reported as
``knn_grid/accuracy``; every setting's test accuracy is reported beside it (the sweep, nothing chosen on it).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

from ...results import KNN_GRID, knn_grid_key
from ...spectral import parse_subspace
from ...validation import check_positive_int
from ..base import EVAL, TRAIN
from .common import (
    SELECTED_ON_TRAIN,
    ProtocolMonitor,
    accuracy,
    check_grid,
    check_protocol_inputs,
    class_columns,
    restrict_to_subspace,
)
from .linear_grid import holdout_split

__all__ = [
    "KNN_GRID",
    "DEFAULT_KS",
    "DEFAULT_TEMPERATURES",
    "knn_grid_key",
    "knn_grid_predict",
    "knn_ranking",
    "knn_grid_protocol",
    "KNNGridMonitor",
]

logger = logging.getLogger(__name__)

DEFAULT_KS = (10, 20, 100, 200)
DEFAULT_TEMPERATURES = (0.02, 0.07, 0.2)


def _unit_rows(rows: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows scaled to unit L2 norm, computed in float32 at least (as :func:`knn_predict`)."""
    rows = rows.float() if rows.dtype in (torch.float16, torch.bfloat16) else rows
    return torch.nn.functional.normalize(rows, dim=1).to(dtype)


def _top_k(similarity: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``similarity.topk(k, dim=1)`` (values, indices; most similar first). On the CPU through numpy's
    ``argpartition`` and a sort of the k kept: 2-3x faster than ``torch.topk`` for k = 200 of thousands of bank rows
    (the kNN grid's largest cost, docs/protocols.md "Cost"); the same rows up to the order of exact ties."""
    if similarity.device.type != "cpu" or k >= similarity.shape[1]:
        return similarity.topk(k, dim=1)
    scores = similarity.numpy()
    kept = np.argpartition(scores, -k, axis=1)[:, -k:]  # (c, k), unordered
    values = np.take_along_axis(scores, kept, axis=1)
    order = np.argsort(-values, axis=1, kind="stable")
    return (
        torch.from_numpy(np.take_along_axis(values, order, axis=1)),
        torch.from_numpy(np.take_along_axis(kept, order, axis=1)),
    )


@torch.no_grad()
def knn_ranking(
    bank: torch.Tensor,
    queries: torch.Tensor,
    largest: int,
    chunk_size: int = 1024,
    exclude: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's ``largest`` most cosine-similar bank rows, most similar first: ``(top_similarity (M, largest)
    float32, top_index (M, largest))``; one similarity pass in chunks of ``chunk_size`` queries (memory
    ``chunk_size x N``), in float32 (float64 for float64 rows). ``exclude`` (`(N,)` bool): bank rows no query may use."""
    dtype = torch.float64 if bank.dtype == torch.float64 else torch.float32
    bank = _unit_rows(bank, dtype)  # (N, D)
    similarities, indices = [], []
    for start in range(0, queries.shape[0], chunk_size):
        similarity = _unit_rows(queries[start : start + chunk_size], dtype) @ bank.T  # (c, N)
        if exclude is not None:
            similarity[:, exclude] = -torch.inf
        top_similarity, top_index = _top_k(similarity.float(), largest)  # (c, largest)
        similarities.append(top_similarity)
        indices.append(top_index)
    return torch.cat(similarities), torch.cat(indices)


@torch.no_grad()
def knn_grid_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    ks,
    temperatures,
    num_classes: int,
    chunk_size: int = 1024,
    exclude: torch.Tensor | None = None,
    ranking: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[dict[int, torch.Tensor], dict[tuple[int, float], torch.Tensor]]:
    """Majority predictions per ``k`` and weighted predictions per ``(k, temperature)``, from one ranking.

    Args:
        bank (`(N, D)`), bank_labels (`(N,)` ids in ``[0, num_classes)``): training rows.
        queries (`(M, D)`): rows to classify. ks: neighbour counts (each <= N); temperatures: > 0.
        exclude (`torch.BoolTensor` of shape `(N,)`, optional): bank rows no query may use (the held-out rows
            when selecting on training data).
        ranking: :func:`knn_ranking` of these queries, at least ``max(ks)`` wide, when already made (shared
            with the report's kNN monitor); otherwise it is made here.

    Returns:
        ``(majority {k: (M,)}, weighted {(k, T): (M,)})`` predicted class ids.
    """
    largest = max(ks)
    if ranking is None or ranking[0].shape[1] < largest:
        ranking = knn_ranking(bank, queries, largest, chunk_size, exclude)
    top_similarity, top_labels = ranking[0], bank_labels[ranking[1][:, :largest]]  # (M, k_max)
    majority, weighted = {}, {}
    for k in ks:
        labels = top_labels[:, :k]
        votes = torch.zeros(labels.shape[0], num_classes).scatter_add_(1, labels, torch.ones(labels.shape))
        majority[k] = votes.argmax(1)  # the first maximum: the smallest class id on ties
        for t in temperatures:
            weights = (top_similarity[:, :k] / t).exp()
            weighted[(k, t)] = (
                torch.zeros(labels.shape[0], num_classes).scatter_add_(1, labels, weights).argmax(1)
            )
    return majority, weighted


def _clipped(ks, bank_rows: int, what: str) -> tuple[tuple[int, ...], dict[int, int]]:
    """``ks`` with values above ``bank_rows`` clipped (deduplicated, order kept) and the map of clipped values."""
    clipped = {k: bank_rows for k in ks if k > bank_rows}
    if clipped:
        logger.warning(f"knn_grid: k={sorted(clipped)} clipped to the {bank_rows} rows of the {what}")
    return tuple(dict.fromkeys(min(k, bank_rows) for k in ks)), clipped


def _holdout_accuracy(train_X, train_y, columns, classes, held_rows, ks, temperatures, chunk_size) -> dict:
    """``{(k, T): accuracy}`` of the weighted vote for the held-out training rows ``held_rows`` against every other
    training row (the selection: no test row is read)."""
    bank_rows = torch.ones(train_X.shape[0], dtype=torch.bool)
    bank_rows[held_rows] = False
    _, held_weighted = knn_grid_predict(
        train_X[bank_rows],
        columns[bank_rows],
        train_X[held_rows],
        ks,
        temperatures,
        classes.numel(),
        chunk_size,
    )
    return {key: accuracy(classes[p], train_y[held_rows]) for key, p in held_weighted.items()}


def _select_on_holdout(
    train_X, train_y, columns, classes, held_rows, ks, temperatures, chunk_size
) -> tuple[tuple[int, float], float]:
    """``((k, T), held-out accuracy)`` of the weighted setting chosen on the held-out training rows ``held_rows``
    (:func:`_holdout_accuracy`; ties: the first in grid order). Each ``k`` is clipped to the selection's bank (every
    training row but ``held_rows``); the ``k`` returned is the one asked for, as the sweep's keys name it."""
    bank = train_X.shape[0] - len(held_rows)
    selection_ks, _ = _clipped(ks, bank, "selection bank")
    held_accuracy = _holdout_accuracy(
        train_X, train_y, columns, classes, held_rows, selection_ks, temperatures, chunk_size
    )
    (used, t) = max(held_accuracy, key=held_accuracy.get)  # dicts keep grid order: the first maximum
    asked = next(k for k in ks if min(k, bank) == used)
    return (asked, t), held_accuracy[(used, t)]


def _test_predictions(train_X, columns, test_X, ks, temperatures, num_classes: int, chunk_size, ranking):
    """Every setting on the test rows ``test_X`` `(M, D)`, with the whole training set ``train_X`` `(N, D)` as the
    bank: ``(majority {k: (M,)}, weighted {(k, T): (M,)}, clipped)`` predicted columns (:func:`knn_grid_predict`)
    and the map of the ``ks`` clipped to the ``N`` rows (:func:`_clipped`)."""
    test_ks, clipped = _clipped(ks, train_X.shape[0], "training bank")
    majority, weighted = knn_grid_predict(
        train_X, columns, test_X, test_ks, temperatures, num_classes, chunk_size, ranking=ranking
    )
    return majority, weighted, clipped


def _checked_ks(ks) -> tuple[int, ...]:
    """``ks`` as a tuple of integers >= 1; a one-line ``ValueError`` for anything else (a string, an empty list)."""
    if isinstance(ks, (str, bytes)) or not hasattr(ks, "__iter__") or not len(ks):
        raise ValueError(f"ks: expected a non-empty list of integers >= 1, got {ks!r}")
    return tuple(check_positive_int("ks", k) for k in ks)


def _sweep_accuracies(
    classes, majority, weighted, test_y, ks, temperatures, bank_rows: int
) -> dict[str, float]:
    """Test accuracy of every setting of the grid (nothing chosen on it): ``knn_grid/accuracy/k=<k>`` (majority)
    and ``knn_grid/weighted_accuracy/k=<k>,t=<T>``, from the predicted columns ``{k: (M,)}`` and ``{(k, T): (M,)}``
    of a bank of ``bank_rows`` rows."""
    results = {}
    # Keys name the k asked for (tables line up across models); a clipped k scores the whole bank.
    for k in ks:
        used = min(k, bank_rows)
        results[knn_grid_key("accuracy", k)] = accuracy(classes[majority[used]], test_y)
        for t in temperatures:
            results[knn_grid_key("weighted_accuracy", k, t)] = accuracy(classes[weighted[(used, t)]], test_y)
    return results


def knn_grid_protocol(
    train_X,
    train_y,
    test_X,
    test_y,
    *,
    ks=DEFAULT_KS,
    temperatures=DEFAULT_TEMPERATURES,
    holdout: float = 0.2,
    max_selection_queries: int = 1000,
    seed: int = 0,
    chunk_size: int = 1024,
    subspace: str = "all",
    test_ranking: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, Any]:
    """kNN accuracy of every ``k`` (majority) and ``(k, temperature)`` (weighted), and of the weighted setting
    chosen on held-out training rows.

    Args:
        train_X (`(N, D)`), train_y (`(N,)`): the bank (and the selection queries); test_X, test_y: scored.
        ks: neighbour counts (integers >= 1; above the bank's rows: clipped and said).
        temperatures: of the weighted vote (> 0).
        holdout, max_selection_queries, seed: the held-out training queries the weighted setting is chosen on.
        subspace: restrict to a PCA subspace of the training rows first.
        test_ranking: :func:`knn_ranking` of ``test_X`` among ``train_X`` (``subspace="all"`` only), when made
            already: the test pass is then not made again.

    Returns:
        ``knn_grid/accuracy/k=<k>``, ``knn_grid/weighted_accuracy/k=<k>,t=<T>`` (test), the chosen
        ``knn_grid/{accuracy,holdout_accuracy,k,temperature}``, ``knn_grid/selection`` and, when a k was clipped,
        ``knn_grid/clipped`` (strings).
    """
    ks = _checked_ks(ks)
    temperatures = check_grid("temperatures", temperatures)
    check_positive_int("max_selection_queries", max_selection_queries)
    train_X, train_y, test_X, test_y = check_protocol_inputs(train_X, train_y, test_X, test_y)
    _, held_rows = holdout_split(train_X.shape[0], holdout, seed)
    held_rows = held_rows[:max_selection_queries]
    if test_ranking is not None and str(parse_subspace(subspace)) != "all":
        raise ValueError("test_ranking: a ranking of the unrestricted features cannot serve a subspace")
    train_X, test_X = restrict_to_subspace(train_X, test_X, subspace)
    classes, columns = class_columns(train_y)
    (best_k, best_t), held_accuracy = _select_on_holdout(
        train_X, train_y, columns, classes, held_rows, ks, temperatures, chunk_size
    )
    majority, weighted, clipped = _test_predictions(
        train_X, columns, test_X, ks, temperatures, classes.numel(), chunk_size, test_ranking
    )
    chosen = weighted[(min(best_k, train_X.shape[0]), best_t)]  # (M,) predicted columns
    results: dict[str, Any] = {
        knn_grid_key("accuracy"): accuracy(classes[chosen], test_y),
        knn_grid_key("holdout_accuracy"): held_accuracy,
        knn_grid_key("k"): best_k,
        knn_grid_key("temperature"): best_t,
        **_sweep_accuracies(classes, majority, weighted, test_y, ks, temperatures, train_X.shape[0]),
        knn_grid_key("selection"): f"held-out {holdout:g} of {SELECTED_ON_TRAIN}",
    }
    if clipped:
        results[knn_grid_key("clipped")] = ", ".join(f"k={k} -> {v}" for k, v in clipped.items())
    return results


class KNNGridMonitor(ProtocolMonitor):
    """:func:`knn_grid_protocol` as a monitor (``--monitors knn_grid``); arguments as the function's."""

    name = KNN_GRID
    protocol = staticmethod(knn_grid_protocol)

    def __init__(
        self,
        feature: str = "embedding",
        ks=DEFAULT_KS,
        temperatures=DEFAULT_TEMPERATURES,
        holdout: float = 0.2,
        max_selection_queries: int = 1000,
        seed: int = 0,
        subspace: str = "all",
        prefix: str = "",
    ):
        for k in ks:
            check_positive_int("ks", k)
        check_grid("temperatures", temperatures)
        super().__init__(
            feature,
            prefix,
            ks=tuple(ks),
            temperatures=tuple(temperatures),
            holdout=holdout,
            max_selection_queries=max_selection_queries,
            seed=seed,
            subspace=subspace,
            chunk_size=1024,
        )

    def reset(self) -> None:
        super().reset()
        self._test_ranking: tuple[torch.Tensor, torch.Tensor] | None = None

    def neighbours(self, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The ``"eval"`` rows' ``k`` nearest ``"train"`` rows, most similar first, ``(top_similarity (M, k),
        top_index (M, k))``, from this monitor's test pass (:func:`knn_ranking`, made once, as wide as the grid's
        largest ``k`` and ``k``): the report's kNN monitor of the same feature reads its neighbours here instead of
        making a second similarity pass (:attr:`~hf_recperc.monitors.KNNMonitor.neighbours`). ``None`` for float64
        rows, whose similarities this pass makes in float64 where the kNN monitor's are float32."""
        if self._gathered is None:
            self.all_reduce()
        (train_X, _), (test_X, _) = self._gathered[TRAIN], self._gathered[EVAL]
        if train_X.dtype == torch.float64:
            return None
        width = min(max(*self.options["ks"], k), train_X.shape[0])
        if self._test_ranking is None or self._test_ranking[0].shape[1] < width:
            self._test_ranking = knn_ranking(train_X, test_X, width, self.options["chunk_size"])
        return self._test_ranking[0][:, :k], self._test_ranking[1][:, :k]

    def protocol_options(self) -> dict[str, Any]:
        shared = self._test_ranking is not None and str(parse_subspace(self.options["subspace"])) == "all"
        return {**self.options, "test_ranking": self._test_ranking} if shared else self.options

    def settings(self) -> dict[str, Any]:
        options = self.options
        return {
            **super().settings(),
            "selection": f"held-out {options['holdout']:g} of {SELECTED_ON_TRAIN}",
            "ks": list(options["ks"]),
            "temperatures": list(options["temperatures"]),
            "similarity": "cosine",
        }
