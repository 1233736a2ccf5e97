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

from .probing import DEFAULT_SUBSPACES, SubspaceProbe, check_targets_memory
from .spectral import (
    _ACCUMULATE_ROWS,
    as_float_tensor,
    check_finite_values,
    check_moments_memory,
)
from .validation import check_labels

__all__ = ["SPLITS", "BlockPool", "ProbeStream", "StoredRows", "stratified_split", "subspace_probe_accuracy"]

SPLITS = ("test", "train")
# Rows moved at a time when training chunks are gathered in place: few enough to stay in cache.
_PIECE_ROWS = 512


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


def _labels(
    labels, name: str, num_rows: int, min_classes: int = 1, dim: int | None = None, device=None
) -> torch.Tensor:
    """Shared label checks plus the metric's own: at least ``min_classes`` distinct ids, and (with ``dim``, for
    labels a probe is fitted on) label statistics of ``dim`` features that fit in the memory of ``device``."""
    tensor = check_labels(name, labels, num_rows)
    found = int(torch.unique(tensor).numel())
    if found < min_classes:
        raise ValueError(f"{name}: need at least {min_classes} classes, got {found}")
    if dim is not None:
        check_targets_memory(name, dim, found, min(num_rows, _ACCUMULATE_ROWS), device)
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
    return _probe_accuracy(
        [features],
        references,
        train_predictions,
        train_references,
        train_probe=train_probe,
        subspaces=subspaces,
        probe=probe,
        ridge=ridge,
        standardize=standardize,
        seed=seed,
        test_size=test_size,
    )


def _take_rows(
    blocks: list[torch.Tensor], index: np.ndarray, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``torch.cat(blocks)[index]`` for a sorted ``index`` `(M,)`, without building the concatenation.

    The stratified split copies 80% + 20% of the rows; gathering them straight from the streamed batches
    saves one full copy of the evaluated rows, in time and in peak memory. ``out`` `(>= M, D)`: a buffer to
    reuse (its first ``M`` rows are returned).
    """
    dtype = blocks[0].dtype
    for block in blocks[1:]:
        dtype = torch.promote_types(dtype, block.dtype)
    if out is None or out.dtype != dtype or len(out) < len(index):
        out = torch.empty(len(index), blocks[0].shape[1], dtype=dtype, device=blocks[0].device)  # (M, D)
    out = out[: len(index)]
    if len(blocks) == 1:
        return torch.index_select(blocks[0], 0, torch.from_numpy(index).to(blocks[0].device), out=out)
    offsets = np.cumsum([0] + [len(block) for block in blocks])
    bounds = np.searchsorted(index, offsets)  # index[bounds[i]:bounds[i+1]] falls in block i
    for block, offset, low, high in zip(blocks, offsets, bounds[:-1], bounds[1:]):
        if high > low:
            rows = torch.from_numpy(index[low:high] - offset).to(block.device)
            if block.dtype == out.dtype:
                torch.index_select(block, 0, rows, out=out[low:high])  # no temporary
            else:
                out[low:high] = block.index_select(0, rows)
    return out


def _probe_accuracy(
    blocks: list[torch.Tensor],
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
    private_rows: bool = False,
) -> dict[str, float | int | str]:
    """:func:`subspace_probe_accuracy` (same defaults) of validated row blocks `(n_i, D)`, read as their concatenation.

    ``private_rows``: the blocks are this call's to overwrite, 16,384 rows each but the last (from
    :class:`StoredRows`); the stratified split then gathers its training chunks in place.
    """
    num_rows = sum(len(block) for block in blocks)
    has_train = train_probe is not None or train_references is not None
    dim, device = blocks[0].shape[1], blocks[0].device
    if train_probe is None:  # streamed training moments exist already
        check_moments_memory("predictions", dim, device)
    # The evaluated rows may all belong to one class (a per-class report); only training needs two.
    labels = _labels(
        references,
        "references",
        num_rows,
        min_classes=1 if has_train else 2,
        dim=None if has_train else dim,
        device=device,
    )
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
        return _score_with_streamed_moments(estimator, train_probe, _concatenated(blocks), labels)
    if train_predictions is not None:
        return _score_with_training_rows(
            estimator, _concatenated(blocks), labels, train_predictions, train_references
        )
    if not (0 < test_size < 1):
        raise ValueError(f"test_size: expected a fraction in (0, 1), got {test_size!r}")
    train_index, test_index = stratified_split(labels.cpu().numpy(), test_size, seed)
    train_labels = labels[torch.from_numpy(train_index)]
    features, labels = _take_rows(blocks, test_index), labels[torch.from_numpy(test_index)]
    if probe != "ridge":
        return estimator.fit(_take_rows(blocks, train_index), train_labels).score(features, labels)
    gather = _chunks_in_place if private_rows else _chunks_of_rows
    return estimator._fit_chunks(gather(blocks, train_index, train_labels)).score(features, labels)


def _concatenated(blocks: list[torch.Tensor]) -> torch.Tensor:
    """The evaluated rows `(N, D)` as one tensor (no copy for a single block)."""
    return blocks[0] if len(blocks) == 1 else torch.cat(blocks)


def _score_with_streamed_moments(
    estimator: SubspaceProbe, train_probe: SubspaceProbe, features: torch.Tensor, labels: torch.Tensor
) -> dict[str, float | int | str]:
    """Score ``features`` `(N, D)` with a probe solved from training moments streamed with split='train'."""
    estimator._validate_params()
    if estimator.probe != "ridge":
        raise ValueError(
            f"probe={estimator.probe!r} needs the training rows themselves: pass train_predictions to "
            "compute() instead of streaming them with split='train'"
        )
    if features.shape[1] != train_probe.moments_.dim:
        raise ValueError(
            f"predictions: expected {train_probe.moments_.dim} features per row like the training rows, "
            f"got {features.shape[1]}"
        )
    statistics = train_probe.statistics()
    params = {
        "subspaces": estimator.subspaces,
        "ridge": estimator.ridge,
        "standardize": estimator.standardize,
    }
    return SubspaceProbe.from_moments(**statistics, **params).score(features, labels)


def _score_with_training_rows(
    estimator: SubspaceProbe,
    features: torch.Tensor,
    labels: torch.Tensor,
    train_predictions,
    train_references,
) -> dict[str, float | int | str]:
    """Fit on ``train_predictions`` `(M, D)` / ``train_references`` `(M,)`, score ``features`` `(N, D)`."""
    train_features = as_float_tensor(train_predictions, "train_predictions")
    train_labels = _labels(
        train_references,
        "train_references",
        len(train_features),
        dim=features.shape[1],
        device=features.device,
    )
    if train_features.shape[1] != features.shape[1]:
        raise ValueError(
            f"train_predictions: expected {features.shape[1]} features per row like predictions, "
            f"got {train_features.shape[1]}"
        )
    if estimator.probe == "ridge":  # rows validated just above: fit without scanning them again
        return estimator._fit_chunks([(train_features, train_labels)]).score(features, labels)
    return estimator.fit(train_features, train_labels).score(features, labels)


def _chunks_of_rows(blocks: list[torch.Tensor], index: np.ndarray, labels: torch.Tensor):
    """``(rows (b, D), labels (b,))`` of ``torch.cat(blocks)[index]``, 16,384 rows at a time, gathered into one
    reused buffer: the chunks a one-shot fit uses (same numbers), without a copy of every training row."""
    buffer = None
    for start in range(0, len(index), _ACCUMULATE_ROWS):
        buffer = _take_rows(blocks, index[start : start + _ACCUMULATE_ROWS], out=buffer)
        yield buffer, labels[start : start + _ACCUMULATE_ROWS]


def _chunks_in_place(blocks: list[torch.Tensor], index: np.ndarray, labels: torch.Tensor):
    """:func:`_chunks_of_rows` without the buffer: chunk ``k`` is gathered into ``blocks[k]`` itself.

    Needs blocks of 16,384 rows (all but the last) and overwrites them. Safe in place: row ``index[j]``
    moves to position ``j <= index[j]`` in increasing ``j``, through a small piece that stays in cache, so
    every row is read before its position is written. Saves the buffer's fresh memory pages.
    """
    piece = None
    for block, start in zip(blocks, range(0, len(index), _ACCUMULATE_ROWS)):
        part = index[start : start + _ACCUMULATE_ROWS]
        for low in range(0, len(part), _PIECE_ROWS):
            piece = _take_rows(blocks, part[low : low + _PIECE_ROWS], out=piece)
            block[low : low + len(piece)].copy_(piece)
        yield block[: len(part)], labels[start : start + _ACCUMULATE_ROWS]


class BlockPool:
    """`(16384, D)` row blocks to refill instead of allocating new ones.

    Fresh memory costs a page fault per 4 KiB page at first touch: storing 50,000 x 768 float32 rows in new
    blocks took 0.05 s of page faults on our 2-core virtual machine, most of the streaming overhead. Blocks
    come back to the pool when their rows were folded into the moments, and a finished evaluation hands the
    blocks it used to the next one (every epoch, the same metric object), as PyTorch's CUDA caching
    allocator reuses freed memory. Held until the next evaluation ends or the owner is deleted.
    """

    def __init__(self, blocks: list[torch.Tensor] | None = None):
        self.spare = list(blocks or [])  # from an earlier evaluation
        self.returned: list[torch.Tensor] = []  # used in this one, free again

    def take(self, dim: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """A `(16384, dim)` block (contents undefined): a pooled one when one matches, else a new one."""
        for blocks in (self.returned, self.spare):
            for position, block in enumerate(blocks):
                if block.shape[1] == dim and block.dtype == dtype and block.device == device:
                    return blocks.pop(position)
        return torch.empty(_ACCUMULATE_ROWS, dim, dtype=dtype, device=device)


class StoredRows:
    """Rows `(N, D)`, copied batch by batch into `(16384, D)` blocks from a :class:`BlockPool`.

    One allocation per 16,384 rows instead of one per batch, and pages of the last block that no row reached
    are never touched (they cost no memory). Rows keep the widest float dtype seen: a wider batch widens the
    earlier blocks, exactly, as ``torch.cat`` would.
    """

    def __init__(self, pool: BlockPool):
        self.blocks: list[torch.Tensor] = []  # (16384, D) each
        self.num_rows = 0
        self.pool = pool

    @property
    def dim(self) -> int | None:
        return self.blocks[0].shape[1] if self.blocks else None

    def append(self, rows: torch.Tensor, name: str) -> None:
        """Copy ``rows`` `(n, D)` in; NaN / inf raise ``ValueError`` naming ``name`` and add nothing."""
        dtype = rows.dtype if not self.blocks else torch.promote_types(self.blocks[0].dtype, rows.dtype)
        widen = bool(self.blocks) and dtype != self.blocks[0].dtype
        end = self.num_rows + len(rows)
        checked_first = widen or end > len(self.blocks) * _ACCUMULATE_ROWS
        if checked_first:  # before widening or allocating: a refused batch must leave no trace
            check_finite_values(rows, name)
        if widen:
            self.blocks = [block.to(dtype) for block in self.blocks]
        while len(self.blocks) * _ACCUMULATE_ROWS < end:
            self.blocks.append(self.pool.take(rows.shape[1], dtype, rows.device))
        start = 0
        while start < len(rows):
            block, offset = divmod(self.num_rows + start, _ACCUMULATE_ROWS)
            take = min(len(rows) - start, _ACCUMULATE_ROWS - offset)
            copy = self.blocks[block][offset : offset + take]
            copy.copy_(rows[start : start + take])
            if not checked_first:
                check_finite_values(copy, name)  # in cache, right after the copy
            start += take
        self.num_rows = end

    def views(self) -> list[torch.Tensor]:
        """The rows, in order: the full blocks, then the filled part of the last one."""
        views = self.blocks[: -(-self.num_rows // _ACCUMULATE_ROWS)]
        if self.num_rows % _ACCUMULATE_ROWS:
            views[-1] = views[-1][: self.num_rows % _ACCUMULATE_ROWS]
        return views

    def drop_front(self, num_blocks: int) -> None:
        """Forget the first ``num_blocks`` blocks' rows and give those blocks back to the pool."""
        self.pool.returned.extend(self.blocks[:num_blocks])
        self.blocks = self.blocks[num_blocks:]
        self.num_rows = max(0, self.num_rows - num_blocks * _ACCUMULATE_ROWS)


class ProbeStream:
    """Batches of features and labels, accumulated for :func:`subspace_probe_accuracy`.

    * ``add(features (n, D), labels (n,), split="test")`` keeps the rows: they are scored at the end and,
      without training rows, split 80/20 exactly as the array path would.
    * ``add(..., split="train")`` folds the rows into second moments, one 16,384-row block at a time: the
      chunks of a one-shot fit (identical shift and products, hence the same numbers), and large matrix
      products; memory ``O(16384 D + D^2)``.

    Both kinds of rows are copied into :class:`StoredRows` blocks from one :class:`BlockPool` (``pool``: the
    blocks of an earlier evaluation, to refill). Mergeable: :meth:`state` / :meth:`merge` move the statistics
    between processes (files or ``torch.distributed``); merging in process order reproduces a single process
    that saw all rows.
    """

    def __init__(self, pool: BlockPool | None = None):
        self.pool = BlockPool() if pool is None else pool
        self.features = StoredRows(self.pool)  # evaluated rows
        self.labels: list[torch.Tensor] = []  # (n_i,) int64 each
        self.train: SubspaceProbe | None = None  # second moments of the folded training rows
        self._train_rows = StoredRows(self.pool)  # training rows not folded in yet: < 16,384 between batches
        self._train_labels: list[torch.Tensor] = []

    @property
    def num_rows(self) -> int:
        """Evaluated rows held."""
        return self.features.num_rows

    def add(self, features, labels, split: str = "test") -> None:
        """Add a batch: ``features`` `(n, D)` (any float dtype, numpy or torch), integer ``labels`` `(n,)`."""
        if split not in SPLITS:
            raise ValueError(f"split: expected one of {SPLITS}, got {split!r}")
        name = "predictions" if split == "test" else "train_predictions"
        # A view, not yet scanned for NaN / inf: the scan runs on the copy, while it is still in cache.
        features = as_float_tensor(features, name, check_finite=False)
        labels = check_labels(name.replace("predictions", "references"), labels, len(features))
        dim = self._dim()
        if dim is not None and features.shape[1] != dim:
            raise ValueError(
                f"{name}: expected {dim} features per row (as in earlier batches), got {features.shape[1]}"
            )
        if dim is None:  # the first batch: refuse features whose moments cannot fit before storing any row
            check_moments_memory(name, features.shape[1], features.device)
        if len(features) == 0:
            return
        # A copy either way: the caller may reuse its batch buffer.
        if split == "test":
            self.features.append(features.detach(), name)
            self.labels.append(labels.clone())
        else:
            self._train_rows.append(features.detach(), name)
            self._train_labels.append(labels.clone())
            self._fold(whole_blocks_only=True)

    def _dim(self) -> int | None:
        for rows in (self.features, self._train_rows):
            if rows.dim is not None:
                return rows.dim
        return None if self.train is None else self.train.moments_.dim

    def _fold(self, whole_blocks_only: bool = False) -> None:
        """Fold the stored training rows into the moments: the full 16,384-row blocks, then (unless
        ``whole_blocks_only``) the rest. Rows and labels were validated as they were added: no rescan."""
        rows = self._train_rows
        count = rows.num_rows
        folded = count - count % _ACCUMULATE_ROWS if whole_blocks_only else count
        if not folded:
            return
        labels = torch.cat(self._train_labels)
        if self.train is None:
            self.train = SubspaceProbe()
        num_blocks = -(-folded // _ACCUMULATE_ROWS)
        for start, block in zip(range(0, folded, _ACCUMULATE_ROWS), rows.views()[:num_blocks]):
            self.train._accumulate(block, labels[start : start + len(block)])
        rows.drop_front(num_blocks)
        self._train_labels = [labels[folded:]]

    # ------------------------------------------------------------------------------------ merging

    def state(self) -> dict:
        """Picklable CPU snapshot: evaluated rows and the training moments (folds pending training rows)."""
        self._fold()
        state = {
            "features": torch.cat(self.features.views()).cpu() if self.labels else None,
            "labels": torch.cat(self.labels).cpu() if self.labels else None,
            "train": None,
        }
        if self.train is not None:
            statistics = self.train.statistics()
            state["train"] = {
                **{
                    key: statistics[key] for key in ("count", "float64", "classes")
                },  # plain types: weights_only
                **{key: statistics[key].cpu() for key in ("shift", "sum", "outer", "target_sum", "cross")},
            }
        return state

    def merge(self, state: dict) -> None:
        """Append another stream's :meth:`state` (rows after this stream's, moments summed)."""
        self._fold()
        if state["features"] is not None:
            self.features.append(state["features"], "features")
            self.labels.append(state["labels"])
        train = state["train"]
        if train is None:
            return
        other = SubspaceProbe.from_moments(**train)
        if self.train is None:
            self.train = other
            return
        self.train.merge(other)  # one column layout for both: the sorted union of their class ids

    def gather(self) -> None:
        """Replace this rank's data with every ``torch.distributed`` rank's, in rank order (call on all ranks)."""
        dist = torch.distributed
        states = [None] * dist.get_world_size()
        dist.all_gather_object(states, self.state())
        self.__init__(pool=self.pool)
        for state in states:
            self.merge(state)

    # ---------------------------------------------------------------------------------- computing

    def compute(self, **kwargs) -> dict[str, float | int | str]:
        """:func:`subspace_probe_accuracy` of the accumulated rows (``kwargs``: its settings and train_*).

        Consumes the evaluated rows (the 80/20 split regroups them in place): a second call raises unless rows
        are added again. The training moments stay: streamed training rows count for later calls too.
        """
        self._fold()
        if not self.labels:
            raise ValueError(
                "predictions: no evaluated rows were added; add_batch(predictions=..., references=...)"
            )
        labels = torch.cat(self.labels) if len(self.labels) > 1 else self.labels[0]
        store, self.features, self.labels = self.features, StoredRows(self.pool), []
        settings = {"train_probe": self.train, **kwargs}
        result = _probe_accuracy(store.views(), labels, private_rows=True, **settings)
        # The blocks this evaluation used, for the next one; spare blocks it did not need are let go. The same
        # pool object, which every store of this stream draws from, so that no block is handed out twice. Only
        # CPU blocks: on a GPU, PyTorch's caching allocator already reuses freed memory without page faults.
        used = store.blocks + self._train_rows.blocks + self.pool.returned
        self.pool.spare, self.pool.returned = [block for block in used if block.device.type == "cpu"], []
        return result
