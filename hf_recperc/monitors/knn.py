"""k-nearest-neighbour accuracy of embeddings: the self-supervised literature's label-free-training read-out.

Validation embeddings vote with the labels of their ``k`` most cosine-similar training embeddings (the *bank*):
a plain majority vote (ties to the smallest class id, as scikit-learn's ``KNeighborsClassifier``) and the
temperature-weighted vote of Wu et al. 2018 / DINO (each neighbour votes ``exp(similarity / temperature)``,
``k = 20``, ``temperature = 0.07``). See ``docs/design.md`` (monitors).

Memory stays ``O(chunk x bank)``: queries are scored in chunks against the whole bank, which may be kept in
float16 (similarities are then accumulated by the matrix product in float16 on GPUs; on CPUs float32 is faster
and the default).
"""

from __future__ import annotations

import torch

from ..results import KNN_ACCURACY, KNN_WEIGHTED_ACCURACY
from ..validation import check_finite_number, check_positive_int
from .base import EVAL, TRAIN, MonitorBatch, distributed_sum, gather_rows, is_distributed

__all__ = ["KNNMonitor", "knn_predict", "knn_votes"]


def _normalised(features: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Rows scaled to unit L2 norm (computed in float32 at least: half-precision norms overflow)."""
    features = features.float() if features.dtype in (torch.float16, torch.bfloat16) else features
    return torch.nn.functional.normalize(features, dim=1).to(dtype)


@torch.no_grad()
def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    k: int = 20,
    temperature: float = 0.07,
    num_classes: int | None = None,
    chunk_size: int = 1024,
    bank_dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority and temperature-weighted kNN predictions under cosine similarity.

    Args:
        bank (`torch.Tensor` of shape `(num_bank, dim)`): training embeddings (any float dtype).
        bank_labels (`torch.LongTensor` of shape `(num_bank,)`): their class ids.
        queries (`torch.Tensor` of shape `(num_queries, dim)`): embeddings to classify.
        k: neighbours per query (clipped to the bank size).
        temperature: softness of the weighted vote.
        num_classes: number of classes (default: ``max(bank_labels) + 1``).
        chunk_size: queries scored at once (memory ``chunk_size x num_bank``).
        bank_dtype: dtype the normalised bank is kept in (default: float16 on CUDA, float32 elsewhere).

    Returns:
        ``(majority, weighted)``: two `(num_queries,)` LongTensors of predicted class ids.
    """
    check_positive_int("k", k)
    if check_finite_number("temperature", temperature) <= 0:
        raise ValueError(f"temperature: expected a number > 0, got {temperature!r}")
    if bank.ndim != 2 or queries.ndim != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank, queries: expected (N, D) and (M, D) with the same D, got {tuple(bank.shape)} and "
            f"{tuple(queries.shape)}"
        )
    if bank.shape[0] == 0:
        raise ValueError("bank: the kNN bank is empty (no training embeddings)")
    if bank_dtype is None:
        bank_dtype = torch.float16 if bank.device.type == "cuda" else torch.float32
    num_classes = int(bank_labels.max()) + 1 if num_classes is None else num_classes
    k = min(k, bank.shape[0])
    bank = _normalised(bank, bank_dtype)  # (N, D)
    bank_labels = bank_labels.to(bank.device)
    majority, weighted = [], []
    for start in range(0, queries.shape[0], chunk_size):
        chunk = _normalised(queries[start : start + chunk_size].to(bank.device), bank_dtype)  # (C, D)
        similarity = (chunk @ bank.T).float()  # (C, N)
        top_similarity, top_index = similarity.topk(k, dim=1)  # (C, k), most similar first
        chunk_majority, chunk_weighted = knn_votes(
            top_similarity, bank_labels[top_index], num_classes, temperature
        )
        majority.append(chunk_majority)
        weighted.append(chunk_weighted)
    if not majority:  # no queries
        empty = torch.zeros(0, dtype=torch.long, device=bank.device)
        return empty, empty.clone()
    return torch.cat(majority), torch.cat(weighted)


def knn_votes(
    top_similarity: torch.Tensor, neighbour_labels: torch.Tensor, num_classes: int, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(majority, weighted)`` `(M,)` predictions from each query's neighbours, most similar first: similarities
    `(M, k)` float32 and class ids `(M, k)`."""
    votes = torch.zeros(top_similarity.shape[0], num_classes, device=top_similarity.device)  # (M, classes)
    votes.scatter_add_(1, neighbour_labels, torch.ones_like(top_similarity))
    majority = votes.argmax(1)  # argmax returns the first maximum: the smallest class id on ties
    votes.zero_().scatter_add_(1, neighbour_labels, (top_similarity / temperature).exp())
    return majority, votes.argmax(1)


class KNNMonitor:
    """kNN accuracy of one feature: the ``"train"`` rows form the bank, the ``"eval"`` rows are classified.

    Across processes the bank is gathered on every process (each then classifies its own queries) and the correct
    counts are summed, so two processes report the one-process numbers.

    Args:
        feature: which :attr:`MonitorBatch.features` entry to read.
        k, temperature, chunk_size, bank_dtype: see :func:`knn_predict`.
        prefix: key prefix (the per-layer monitor uses ``layers/<feature>/``).

    Attributes:
        neighbours: ``None``, or ``k -> (top_similarity (M, k), top_index (M, k))`` (or ``None``: not shareable):
            the ``"eval"`` rows' nearest bank rows, most similar first, from another pass over the same rows (the kNN grid of the same feature
            shares its test pass, :mod:`hf_recperc.monitors.protocols.knn_grid`). Used for a one-process float32
            bank on the CPU, the case where that pass computes the same similarities as this monitor would.
    """

    name = "knn"

    def __init__(
        self,
        feature: str = "embedding",
        k: int = 20,
        temperature: float = 0.07,
        chunk_size: int = 1024,
        bank_dtype: torch.dtype | None = None,
        prefix: str = "",
    ):
        check_positive_int("k", k)
        check_finite_number("temperature", temperature, minimum=0)
        self.feature, self.k, self.temperature = feature, k, temperature
        self.chunk_size, self.bank_dtype, self.prefix = chunk_size, bank_dtype, prefix
        self.features = (feature,)
        self.neighbours = None
        self.reset()

    def reset(self) -> None:
        self._rows: dict[str, list[torch.Tensor]] = {TRAIN: [], EVAL: []}
        self._labels: dict[str, list[torch.Tensor]] = {TRAIN: [], EVAL: []}
        self._bank = self._bank_labels = None
        self._scores: dict[str, float] = {}

    def update(self, batch: MonitorBatch) -> None:
        rows = batch.features[self.feature].detach()
        if batch.split == TRAIN:  # the bank: normalise now, keep in the compact dtype
            dtype = self.bank_dtype or (torch.float16 if rows.device.type == "cuda" else torch.float32)
            rows = _normalised(rows, dtype)
        self._rows[batch.split].append(rows)
        self._labels[batch.split].append(batch.labels.detach())

    def all_reduce(self) -> None:
        self._bank = gather_rows(torch.cat(self._rows[TRAIN]))  # (N, D) on every process
        self._bank_labels = gather_rows(torch.cat(self._labels[TRAIN]))

    def compute(self) -> dict[str, float]:
        if self._bank is None:
            self.all_reduce()
        queries, labels = torch.cat(self._rows[EVAL]), torch.cat(self._labels[EVAL])
        num_classes = int(max(self._bank_labels.max(), labels.max())) + 1
        shared = (
            self._bank.device.type == "cpu" and self._bank.dtype == torch.float32 and not is_distributed()
        )
        ranking = self.neighbours(min(self.k, self._bank.shape[0])) if self.neighbours and shared else None
        if ranking is not None:
            top_similarity, top_index = ranking  # (M, k) each
            labels_of = self._bank_labels[top_index]  # (M, k)
            majority, weighted = knn_votes(top_similarity, labels_of, num_classes, self.temperature)
        else:
            majority, weighted = knn_predict(
                self._bank, self._bank_labels, queries, k=self.k, temperature=self.temperature,
                num_classes=num_classes, chunk_size=self.chunk_size, bank_dtype=self._bank.dtype,
            )  # fmt: skip
        labels = labels.to(majority.device)
        counts = torch.tensor(
            [(majority == labels).sum(), (weighted == labels).sum(), labels.numel()],
            dtype=torch.float64,
            device=majority.device,
        )
        correct, correct_weighted, total = distributed_sum(counts).tolist()
        self._scores = {
            f"{self.prefix}{KNN_ACCURACY}": correct / total,
            f"{self.prefix}{KNN_WEIGHTED_ACCURACY}": correct_weighted / total,
        }
        return dict(self._scores)

    def figures(self) -> dict:
        return {}
