"""Subspace-restricted probes: how well can a linear read-out classify from a PCA variance subspace?

:class:`SubspaceProbe` fits one PCA of the training features and one probe per subspace (``top:0.9``,
``bottom:0.2``, ... see :mod:`hf_recperc.spectral`), then scores them on held-out features.

The default probe is closed-form ridge regression to one-hot targets, solved in the PCA basis with the
convention of docs/science.md section 6: covariance units (``C = X^T X / N`` of the centred
features, eigenvalues ``e_i``), penalty ``alpha = ridge * mean(e)``, unpenalised intercept (the training
label mean). In the PCA basis the ridge solution is diagonal,

    coef_i = (U^T X_c^T (Y - mean Y) / N)_i / (e_i + alpha),

so after the single `(D, D)` second-moment pass and one eigendecomposition every subspace's probe, and
the whole accuracy-vs-K curve, costs almost nothing extra. The same ``alpha`` serves every subspace, so
results are comparable across subspaces.

``probe="logistic"`` fits a multinomial logistic regression on the subspace coordinates with L-BFGS (the
classic linear probe), with an L2 penalty of the same strength ``alpha / 2 * ||w||^2`` on the mean
cross-entropy (scikit-learn's ``C = 1 / (N * alpha)``).
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from .distributed import gather_rows
from .spectral import PCA, SecondMoments, as_float_tensor, compute_dtype, parse_subspace
from .validation import check_labels, check_memory, format_bytes

__all__ = ["SubspaceProbe", "PROBES", "DEFAULT_SUBSPACES", "check_targets_memory"]

PROBES = ("ridge", "logistic")
DEFAULT_SUBSPACES = ("top:0.9", "bottom:0.2", "all")

# Rows converted to float64 at once when scoring: bounds the temporary copy (4096 x D x 8 bytes).
_SCORE_ROWS = 4096
# Rows scored at once when building accuracy curves: the (rows, D, C) cumulative-score block stays ~100 MB.
_CURVE_ROWS = 256
# Peak memory of the label statistics, in `(D, C)` float64 matrices: the cross moment (twice while it grows), the
# cross-covariance and its class columns, the coefficients in the PCA basis.
_TARGET_MATRICES = 6


def check_targets_memory(name: str, dim: int, num_classes: int, num_rows: int = 0, device=None) -> None:
    """``ValueError`` naming ``name`` when ``num_classes`` classes of ``dim`` features would not fit in memory.

    Counts the `(D, C)` float64 label statistics of a ridge probe and the `(num_rows, C)` one-hot targets of a
    batch; called before they are allocated.
    """
    matrix = 8 * dim * num_classes
    check_memory(
        name,
        f"{num_classes:,} classes of {dim:,} features need a {dim:,} x {num_classes:,} float64 cross-moment "
        f"matrix ({format_bytes(matrix)})",
        _TARGET_MATRICES * matrix + 8 * num_rows * num_classes,
        device,
        hint="merge classes or reduce the features",
    )


def _as_labels(y, num_rows: int, name: str = "y") -> torch.Tensor:
    """Integer labels `(N,)` as int64, validated against the number of feature rows (whole floats accepted)."""
    return check_labels(name, y, num_rows, allow_float=True)


def _fit_softmax(inputs, targets, num_classes, scale, alpha, max_iter):
    """Minimise mean cross-entropy + ``alpha/2 ||v / scale||^2`` over ``(v (d, C), b (C,))`` with L-BFGS."""
    weight = torch.zeros(
        inputs.shape[1], num_classes, dtype=torch.float64, device=inputs.device, requires_grad=True
    )
    bias = torch.zeros(num_classes, dtype=torch.float64, device=inputs.device, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        max_iter=max_iter,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        optimizer.zero_grad()
        logits = inputs @ weight + bias  # (N, C)
        penalty = 0.5 * alpha * ((weight / scale[:, None]) ** 2).sum()
        loss = torch.nn.functional.cross_entropy(logits, targets) + penalty
        loss.backward()
        return loss

    optimizer.step(closure)
    return weight.detach(), bias.detach()


class SubspaceProbe:
    """Linear probes restricted to PCA variance subspaces of the features (scikit-learn style).

    Args:
        subspaces: subspace strings to report, e.g. ``("top:0.9", "bottom:0.2", "all")``.
        probe: ``"ridge"`` (closed form, default) or ``"logistic"`` (multinomial, L-BFGS).
        ridge: penalty strength relative to the mean eigenvalue: ``alpha = ridge * mean(e)``.
        standardize: scale each feature to unit variance before the PCA (a PCA of the correlations);
            useful for embeddings whose coordinates have arbitrary scales.
        max_iter: L-BFGS iterations for ``probe="logistic"``.

    Fitted attributes (after :meth:`fit`, or lazily after :meth:`partial_fit`):
        pca_ (:class:`~hf_recperc.spectral.PCA`), components_ (`(D, D)`), eigenvalues_ (`(D,)`),
        explained_variance_ratio_ (`(D,)`), mean_ (`(D,)`), classes_ (`(C,)` ids of the classes with training rows, increasing), alpha_ (`float`),
        coef_ (`(D, C)`, ridge coefficients in the PCA basis), intercept_ (`(C,)`), n_samples_seen_.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X, y = torch.randn(200, 6, generator=g), torch.arange(200) % 2
        >>> X[:, 5] += 3 * y  # the label lives in one direction
        >>> probe = SubspaceProbe(subspaces=("first:1", "all")).fit(X, y)
        >>> sorted(probe.score(X, y))[:3]
        ['accuracy/all', 'accuracy/first:1', 'dims/all']
    """

    def __init__(
        self,
        subspaces: Sequence[str] = DEFAULT_SUBSPACES,
        probe: str = "ridge",
        ridge: float = 1e-3,
        standardize: bool = False,
        max_iter: int = 200,
    ):
        self.subspaces = subspaces
        self.probe = probe
        self.ridge = ridge
        self.standardize = standardize
        self.max_iter = max_iter

    @classmethod
    def from_moments(
        cls,
        *,
        count: int,
        shift: torch.Tensor,
        sum: torch.Tensor,  # noqa: A002  (the statistic's name, as SecondMoments calls it)
        outer: torch.Tensor,
        target_sum: torch.Tensor,
        cross: torch.Tensor,
        classes: Mapping[int, int],
        float64: bool = True,
        **params,
    ) -> SubspaceProbe:
        """A ridge probe from training statistics summed elsewhere (a torchmetrics state, a saved stream): the
        public way to build one from sums; solved lazily like :meth:`partial_fit`.

        Args:
            count: training rows summed.
            shift (`(D,)`), sum (`(D,)`), outer (`(D, D)`): ``sum_n (x_n - shift)`` and its outer products
                (:class:`~hf_recperc.spectral.SecondMoments`, float64).
            target_sum (`(T,)`), cross (`(D, T)`): the one-hot targets' sums and cross moments.
            classes: class id -> target column (``{label: label}`` when column ``j`` is class ``j``).
            float64: whether the rows were float64 (the eigensolver follows the widest input precision).
            **params: the estimator's parameters (``subspaces``, ``ridge``, ``standardize``).
        """
        probe = cls(**params)
        probe._validate_params()
        if probe.probe != "ridge":
            raise ValueError(
                f"probe={probe.probe!r} needs the training rows: from_moments builds ridge probes"
            )
        moments = SecondMoments()
        moments._allocate(int(sum.numel()), sum.device, shift)
        moments.count, moments.sum, moments.outer = int(count), sum, outer
        moments.target_sum, moments.cross = target_sum, cross
        moments.dtype = torch.float64 if float64 else torch.float32
        probe.moments_ = moments
        probe._class_columns = {int(k): int(v) for k, v in classes.items()}
        probe._stale = True
        return probe

    def statistics(self) -> dict:
        """The training statistics as plain values, the inverse of :meth:`from_moments` (``count``, ``shift``,
        ``sum``, ``outer``, ``target_sum``, ``cross``, ``classes``, ``float64``)."""
        self._check_has_data()
        moments = self.moments_
        return {
            "count": moments.count, "shift": moments.shift, "sum": moments.sum, "outer": moments.outer,
            "target_sum": moments.target_sum, "cross": moments.cross, "classes": dict(self._class_columns),
            "float64": moments.dtype == torch.float64,
        }  # fmt: skip

    def merge(self, other: SubspaceProbe) -> SubspaceProbe:
        """Add another probe's training statistics into this one (in place; class columns laid out as the sorted
        union of both probes' class ids); returns self."""
        union = sorted(set(self._class_columns) | set(other._class_columns))
        self._remap_columns(union)
        other._remap_columns(union)
        self.moments_.merge(other.moments_)
        self._stale = True
        return self

    # ----------------------------------------------------------------------------------------- fitting

    def _validate_params(self) -> None:
        if isinstance(self.subspaces, str) or not len(self.subspaces):
            raise ValueError(
                f"subspaces: expected a non-empty list of subspace strings, got {self.subspaces!r}"
            )
        for spec in self.subspaces:
            parse_subspace(spec)
        if self.probe not in PROBES:
            raise ValueError(f"probe: expected one of {PROBES}, got {self.probe!r}")
        if not isinstance(self.ridge, numbers.Real) or not np.isfinite(self.ridge) or self.ridge < 0:
            raise ValueError(f"ridge: expected a finite number >= 0, got {self.ridge!r}")
        if self.probe == "logistic" and self.ridge == 0:
            raise ValueError("ridge: probe='logistic' needs ridge > 0 (an unpenalised softmax can diverge)")

    def _columns(self, labels: torch.Tensor, dim: int, device) -> torch.Tensor:
        """Target column `(N,)` of each label: a class gets the next free column when first seen.

        Compacting ids keeps memory ``O(D C)`` in the number of classes *present*: labels ``{0, 10**6}``
        take two columns, not a million (one-hot by raw id took 10 GB). New classes are counted against the
        memory (``dim`` features) before any column is added.
        """
        ids, inverse = torch.unique(labels, return_inverse=True)  # sorted ids (U,), (N,) positions
        columns = self._class_columns
        new = sum(class_id not in columns for class_id in ids.tolist())
        if new:
            check_targets_memory("y", dim, len(columns) + new, len(labels), device)
        for class_id in ids.tolist():
            columns.setdefault(class_id, len(columns))
        lookup = torch.tensor([columns[class_id] for class_id in ids.tolist()], dtype=torch.long)
        return lookup.to(inverse.device)[inverse]

    def _accumulate(self, X: torch.Tensor, labels: torch.Tensor) -> None:
        """Fold validated rows into the moments: float ``X`` `(n, D)` from :func:`as_float_tensor`, int64
        ``labels`` `(n,)` from :func:`_as_labels` (callers validate once; this path scans nothing again)."""
        if not hasattr(self, "moments_"):
            self.moments_ = SecondMoments()
            self._class_columns = {}
        if X.shape[0] == 0:
            return
        columns = self._columns(labels, X.shape[1], X.device)
        one_hot = torch.nn.functional.one_hot(columns, len(self._class_columns)).to(
            device=X.device, dtype=compute_dtype(X.dtype)
        )
        self.moments_._add(X, one_hot)  # (N, D) features, (N, C) targets
        self._stale = True

    def partial_fit(self, X, y) -> SubspaceProbe:
        """Accumulate a batch: features ``X`` `(n, D)`, integer labels ``y`` `(n,)`.

        Memory stays ``O(D^2 + D C)``: only float64 sums are kept, never the rows. The PCA and the probes
        are solved lazily at the first :meth:`score` / :meth:`transform` / attribute access. Only
        ``probe="ridge"`` can be fitted from statistics; ``"logistic"`` needs :meth:`fit`.
        """
        self._validate_params()
        if self.probe != "ridge":
            raise ValueError(f"probe={self.probe!r} needs the training rows: use fit(X, y), not partial_fit")
        X = as_float_tensor(X)
        self._accumulate(X, _as_labels(y, X.shape[0]))
        return self

    def fit(self, X, y) -> SubspaceProbe:
        """Fit the PCA and every subspace's probe on features ``X`` `(N, D)` and labels ``y`` `(N,)`."""
        self._validate_params()
        X = as_float_tensor(X)
        labels = _as_labels(y, X.shape[0])
        self._fit_chunks([(X, labels)])
        if self.probe == "logistic":
            self._fit_logistic(X, labels)
        return self

    def _fit_chunks(self, chunks) -> SubspaceProbe:
        """Fit the PCA and the ridge probes on validated ``(X (n, D), labels (n,))`` pairs, in order.

        Chunks of 16,384 rows (the moments' own chunk size) give :meth:`fit` on their concatenation bit for
        bit, without ever holding the concatenation.
        """
        self._validate_params()
        self.moments_ = SecondMoments()
        self._class_columns = {}
        for X, labels in chunks:
            self._accumulate(X, labels)
        self._solve()
        return self

    def all_reduce(self) -> SubspaceProbe:
        """Merge the statistics of every ``torch.distributed`` process (call on every rank).

        After it, every rank holds the statistics of all rows and scores identically: a multi-process
        evaluation gives the numbers of one process that saw all the data.
        """
        if self.probe != "ridge":
            raise ValueError("all_reduce: only probe='ridge' merges across processes")
        self._check_has_data()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            self._align_classes_across_processes()
        self.moments_.all_reduce()
        self._stale = True
        return self

    def _align_classes_across_processes(self) -> None:
        """Give every rank the same target columns: the sorted union of the class ids all ranks saw.

        Ranks assign columns in the order they meet classes, so column ``j`` may mean different classes on
        different ranks; summing the statistics needs one common layout first.
        """
        device = self.moments_.sum.device
        local = torch.tensor(sorted(self._class_columns), dtype=torch.long, device=device)  # (U,)
        union = torch.unique(gather_rows(local))  # every rank's class ids, concatenated, then deduplicated
        self._remap_columns([int(i) for i in union.tolist()])

    def _remap_columns(self, class_ids: list[int]) -> None:
        """Re-lay the target statistics out as columns ``class_ids`` (a superset of the classes seen)."""
        moments = self.moments_
        position = {class_id: index for index, class_id in enumerate(class_ids)}
        old = torch.tensor(list(self._class_columns.values()), dtype=torch.long)
        new = torch.tensor([position[c] for c in self._class_columns], dtype=torch.long)
        target_sum = torch.zeros(len(class_ids), dtype=torch.float64, device=moments.sum.device)
        cross = torch.zeros(moments.dim, len(class_ids), dtype=torch.float64, device=moments.sum.device)
        if old.numel():
            target_sum[new] = moments.target_sum[old]
            cross[:, new] = moments.cross[:, old]
        moments.target_sum, moments.cross = target_sum, cross
        self._class_columns = position

    def _check_has_data(self) -> None:
        if not hasattr(self, "moments_") or self.moments_.count == 0:
            raise ValueError(
                f"This {type(self).__name__} is not fitted yet: call fit() or partial_fit() first"
            )

    def _solve(self) -> None:
        """PCA of the accumulated features and the ridge coefficients in its basis."""
        self._check_has_data()
        moments = self.moments_
        # Columns -> classes in increasing id order, keeping only classes with training rows (after a merge a
        # column may exist for a class this data never had). Sorted ids make argmax ties go to the smaller id.
        ids = torch.tensor(list(self._class_columns), dtype=torch.long)
        columns = torch.tensor(list(self._class_columns.values()), dtype=torch.long)
        order = torch.argsort(ids)
        ids, columns = ids[order], columns[order]
        counts_all = moments.target_sum.cpu()[columns]
        present = counts_all > 0
        ids, columns = ids[present], columns[present].to(moments.target_sum.device)
        if ids.numel() < 2:
            raise ValueError(f"y: need at least 2 classes to fit a probe, got {ids.numel()}")
        counts = moments.target_sum[columns]
        pca = PCA(standardize=self.standardize).fit_from_moments(moments)
        # Cross-covariance of the (scaled) features with the one-hot labels, in the PCA basis: (D, C).
        cross_covariance = moments.cross_covariance()[:, columns]
        projected = pca.components_ @ (cross_covariance / pca.scale_[:, None])
        self.alpha_ = float(self.ridge * pca.eigenvalues_.mean())
        denominator = pca.eigenvalues_ + self.alpha_
        # Directions with no variance carry no signal; guard 0/0 when ridge == 0.
        self.coef_ = torch.where(
            denominator[:, None] > 0, projected / denominator.clamp_min(1e-300)[:, None], 0.0
        )
        self.intercept_ = counts / moments.count  # training label mean (unpenalised)
        self._classes = ids.to(counts.device)  # (C,) original class ids, increasing
        self.pca_ = pca
        self._logistic = {}
        self._stale = False

    def _fitted_pca(self) -> PCA:
        if getattr(self, "_stale", True):
            self._solve()
        return self.pca_

    @property
    def components_(self) -> torch.Tensor:
        return self._fitted_pca().components_

    @property
    def eigenvalues_(self) -> torch.Tensor:
        return self._fitted_pca().eigenvalues_

    @property
    def explained_variance_ratio_(self) -> torch.Tensor:
        return self._fitted_pca().explained_variance_ratio_

    @property
    def mean_(self) -> torch.Tensor:
        return self._fitted_pca().mean_

    @property
    def classes_(self) -> torch.Tensor:
        """`(C,)` int64 ids of the classes with training rows, increasing (column order of the scores)."""
        self._fitted_pca()
        return self._classes

    @property
    def n_samples_seen_(self) -> int:
        self._check_has_data()
        return self.moments_.count

    # ---------------------------------------------------------------------------------------- logistic

    def _fit_logistic(self, X: torch.Tensor, labels: torch.Tensor) -> None:
        """One multinomial logistic regression per subspace, on whitened PCA coordinates.

        The optimisation variable ``v`` lives in coordinates scaled by ``1/sqrt(e_i + alpha)``, so L-BFGS
        sees a well-conditioned problem; the penalty is rewritten to stay ``alpha/2 ||w||^2`` in the
        original coordinates, hence the optimum is the same as scikit-learn's with ``C = 1/(N alpha)``.
        """
        pca = self.pca_
        num_classes = self.classes_.numel()
        coordinates = pca.transform(X)  # (N, D) float64
        # Cross-entropy wants column indices: position of each label in the sorted classes_ (all present).
        targets = torch.searchsorted(self.classes_, labels.to(self.classes_.device)).to(coordinates.device)
        for spec in self.subspaces:
            index = pca.subspace(spec).to(coordinates.device)
            scale = (pca.eigenvalues_[index] + self.alpha_).sqrt()  # (d,)
            inputs = coordinates[:, index] / scale  # (N, d) whitened
            weight, bias = _fit_softmax(inputs, targets, num_classes, scale, self.alpha_, self.max_iter)
            # Back to PCA coordinates: logits = z_S @ (v / scale) + b.
            self._logistic[str(parse_subspace(spec))] = (weight / scale[:, None], bias)

    # ----------------------------------------------------------------------------------------- scoring

    def transform(self, X, subspace: str = "all") -> torch.Tensor:
        """PCA coordinates of ``X`` `(N, D)` restricted to ``subspace``: `(N, d)` float64."""
        return self._fitted_pca().transform(X, subspace)

    def decision_function(self, X, subspace: str) -> torch.Tensor:
        """Class scores `(N, C)` float64 of the probe restricted to ``subspace``.

        Column ``j`` scores class ``classes_[j]``: only classes with training rows get a column (scikit-learn's
        convention), so ids need not be contiguous.
        """
        return self._decision_functions(as_float_tensor(X), [subspace])[str(parse_subspace(subspace))]

    def _decision_functions(self, X: torch.Tensor, subspaces) -> dict[str, torch.Tensor]:
        """Scores `(N, C)` of several subspaces' probes, from one pass over validated ``X`` `(N, D)`."""
        pca = self._fitted_pca()
        names = [str(parse_subspace(spec)) for spec in subspaces]
        if X.shape[1] != pca.mean_.numel():
            raise ValueError(
                f"X: expected {pca.mean_.numel()} features per row (as in training), got {X.shape[1]}"
            )
        if self.probe == "logistic":
            missing = sorted(set(names) - set(self._logistic))
            if missing:
                raise ValueError(f"subspaces {missing} were not fitted; fitted: {sorted(self._logistic)}")
            coordinates = pca.transform(X)  # (N, D)
            scores = {}
            for name in names:
                weight, bias = self._logistic[name]
                scores[name] = coordinates[:, pca.subspace(name)] @ weight + bias
            return scores
        # Fold each basis into its coefficients, scores = mean_y + ((x - mu) / s) @ (U_S coef_S), and stack
        # the subspaces: one (D, S*C) matrix, so scoring every subspace costs a single N*D*S*C pass.
        num_classes = self.coef_.shape[1]
        weights = torch.cat([pca.components_.T @ self._restricted_coef(name) for name in names], dim=1)
        weights /= pca.scale_[:, None]  # (D, S*C)
        stacked = torch.cat(
            [
                (chunk.to(weights.device, torch.float64) - pca.mean_) @ weights
                for chunk in X.split(_SCORE_ROWS)
            ]
        )  # (N, S*C)
        return {
            name: self.intercept_ + block for name, block in zip(names, stacked.split(num_classes, dim=1))
        }

    def _restricted_coef(self, subspace: str) -> torch.Tensor:
        """``coef_`` `(D, C)` with the rows of components outside ``subspace`` zeroed (no (D, d) copy)."""
        keep = torch.zeros(self.coef_.shape[0], 1, dtype=self.coef_.dtype, device=self.coef_.device)
        keep[self.pca_.subspace(subspace).to(keep.device)] = 1.0
        return self.coef_ * keep

    def predict(self, X, subspace: str = "all") -> torch.Tensor:
        """Predicted class ids `(N,)` (values of ``classes_``) of the probe restricted to ``subspace``."""
        self._fitted_pca()
        return self.classes_[self.decision_function(X, subspace).argmax(1)]

    def score(self, X, y) -> dict[str, float | int | str]:
        """Accuracy of every subspace's probe on features ``X`` `(N, D)` with labels ``y`` `(N,)`.

        Returns:
            A flat dict of Python scalars: for each subspace ``S``, ``accuracy/S``, ``dims/S`` and
            ``explained_variance/S`` (its share of the training variance), plus ``probe`` and
            ``num_train``.
        """
        pca = self._fitted_pca()
        X = as_float_tensor(X)
        labels = _as_labels(y, X.shape[0]).to(pca.mean_.device)
        if X.shape[0] == 0:
            raise ValueError("X: no rows to score")
        scores = self._decision_functions(X, self.subspaces)
        result: dict[str, float | int | str] = {}
        for name, subspace_scores in scores.items():
            predicted = self.classes_[subspace_scores.argmax(1)]  # original ids
            result[f"accuracy/{name}"] = float((predicted == labels).double().mean())
            result[f"dims/{name}"] = int(pca.subspace(name).numel())
            result[f"explained_variance/{name}"] = pca.explained_variance(name)
        result["probe"] = self.probe
        result["num_train"] = int(self.moments_.count)
        return result

    def accuracy_curve(self, X, y) -> dict[str, np.ndarray]:
        """Ridge accuracy for every latent size ``K``, keeping the top ``K`` or the bottom ``K`` components.

        One pass over ``X``: the scores of all ``D`` nested subspaces are cumulative sums of per-component
        contributions ``z_i coef_i``.

        Returns:
            ``{"k": (D,), "top": (D,), "bottom": (D,), "explained_variance_top": (D,),
            "explained_variance_bottom": (D,)}`` numpy arrays; ``top[K-1]`` is the accuracy on the first
            ``K`` components.
        """
        if self.probe != "ridge":
            raise ValueError("accuracy_curve: only probe='ridge' has a closed-form curve")
        pca = self._fitted_pca()
        X = as_float_tensor(X)
        labels = _as_labels(y, X.shape[0]).to(pca.mean_.device)
        dim = pca.mean_.numel()
        correct = {
            "top": torch.zeros(dim, dtype=torch.float64),
            "bottom": torch.zeros(dim, dtype=torch.float64),
        }
        for start in range(0, X.shape[0], _CURVE_ROWS):
            z = pca.transform(X[start : start + _CURVE_ROWS])  # (b, D)
            contributions = z[:, :, None] * self.coef_[None]  # (b, D, C)
            chunk_labels = labels[start : start + _CURVE_ROWS, None]  # (b, 1)
            for name, ordered in (("top", contributions), ("bottom", contributions.flip(1))):
                scores = self.intercept_ + ordered.cumsum(1)  # (b, K, C)
                predicted = self.classes_[scores.argmax(2)]  # (b, K) original ids
                correct[name] += (predicted == chunk_labels).sum(0).double().cpu()
        ratio = pca.explained_variance_ratio_.cpu()
        return {
            "k": np.arange(1, dim + 1),
            "top": (correct["top"] / X.shape[0]).numpy(),
            "bottom": (correct["bottom"] / X.shape[0]).numpy(),
            "explained_variance_top": ratio.cumsum(0).numpy(),
            "explained_variance_bottom": ratio.flip(0).cumsum(0).numpy(),
        }
