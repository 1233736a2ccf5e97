"""Subspace-restricted probes: how well can a linear read-out classify from a PCA variance subspace?

:class:`SubspaceProbe` fits one PCA of the training features and one probe per subspace (``top:0.9``,
``bottom:0.2``, ... see :mod:`hf_recperc.spectral`), then scores them on held-out features.

The default probe is closed-form ridge regression to one-hot targets, solved in the PCA basis with the
convention of ``shared/data/cifar10/README.md``: covariance units (``C = X^T X / N`` of the centred
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
from collections.abc import Sequence

import numpy as np
import torch

from .spectral import PCA, SecondMoments, as_float_tensor, parse_subspace

__all__ = ["SubspaceProbe", "PROBES", "DEFAULT_SUBSPACES"]

PROBES = ("ridge", "logistic")
DEFAULT_SUBSPACES = ("top:0.9", "bottom:0.2", "all")

# Rows converted to float64 at once when scoring: bounds the temporary copy (4096 x D x 8 bytes).
_SCORE_ROWS = 4096
# Rows scored at once when building accuracy curves: the (rows, D, C) cumulative-score block stays ~100 MB.
_CURVE_ROWS = 256


def _as_labels(y, num_rows: int, name: str = "y") -> torch.Tensor:
    """Integer labels `(N,)` as int64, validated against the number of feature rows."""
    labels = torch.as_tensor(np.asarray(y) if not isinstance(y, torch.Tensor) else y)
    if labels.ndim != 1:
        raise ValueError(
            f"{name}: expected a 1-D sequence of integer class ids, got shape {tuple(labels.shape)}"
        )
    if labels.is_floating_point():
        if not torch.equal(labels, labels.round()):
            raise ValueError(f"{name}: expected integer class ids, got non-integer values")
        labels = labels.long()
    if labels.dtype == torch.bool or not (labels.dtype.is_signed or labels.dtype == torch.uint8):
        raise ValueError(f"{name}: expected integer class ids, got dtype {labels.dtype}")
    if labels.numel() != num_rows:
        raise ValueError(f"{name}: expected {num_rows} labels (one per feature row), got {labels.numel()}")
    if labels.numel() and labels.min() < 0:
        raise ValueError(f"{name}: class ids must be >= 0, got {labels.min().item()}")
    return labels.long()


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
        explained_variance_ratio_ (`(D,)`), mean_ (`(D,)`), classes_ (`(C,)`), alpha_ (`float`),
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

    def _accumulate(self, X, y) -> None:
        X = as_float_tensor(X)
        labels = _as_labels(y, X.shape[0])
        if X.shape[0] == 0:
            return
        one_hot = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).to(
            device=X.device, dtype=X.dtype
        )
        self.moments_.update(X, one_hot)  # (N, D) features, (N, C) targets
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
        if not hasattr(self, "moments_"):
            self.moments_ = SecondMoments()
        self._accumulate(X, y)
        return self

    def fit(self, X, y) -> SubspaceProbe:
        """Fit the PCA and every subspace's probe on features ``X`` `(N, D)` and labels ``y`` `(N,)`."""
        self._validate_params()
        self.moments_ = SecondMoments()
        self._accumulate(X, y)
        self._solve()
        if self.probe == "logistic":
            self._fit_logistic(as_float_tensor(X), _as_labels(y, len(X)))
        return self

    def all_reduce(self) -> SubspaceProbe:
        """Merge the statistics of every ``torch.distributed`` process (call on every rank).

        After it, every rank holds the statistics of all rows and scores identically: a multi-process
        evaluation gives the numbers of one process that saw all the data.
        """
        if self.probe != "ridge":
            raise ValueError("all_reduce: only probe='ridge' merges across processes")
        self._check_has_data()
        self.moments_.all_reduce()
        self._stale = True
        return self

    def _check_has_data(self) -> None:
        if not hasattr(self, "moments_") or self.moments_.count == 0:
            raise ValueError(
                f"This {type(self).__name__} is not fitted yet: call fit() or partial_fit() first"
            )

    def _solve(self) -> None:
        """PCA of the accumulated features and the ridge coefficients in its basis."""
        self._check_has_data()
        moments = self.moments_
        counts = moments.target_sum
        if int((counts > 0).sum()) < 2:
            raise ValueError(f"y: need at least 2 classes to fit a probe, got {int((counts > 0).sum())}")
        pca = PCA(standardize=self.standardize).fit_from_moments(moments)
        # Cross-covariance of the (scaled) features with the one-hot labels, in the PCA basis: (D, C).
        projected = pca.components_ @ (moments.cross_covariance() / pca.scale_[:, None])
        self.alpha_ = float(self.ridge * pca.eigenvalues_.mean())
        denominator = pca.eigenvalues_ + self.alpha_
        # Directions with no variance carry no signal; guard 0/0 when ridge == 0.
        self.coef_ = torch.where(
            denominator[:, None] > 0, projected / denominator.clamp_min(1e-300)[:, None], 0.0
        )
        self.intercept_ = counts / moments.count  # training label mean (unpenalised)
        self.classes_ = torch.arange(counts.numel())
        self._present = counts > 0
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
        targets = labels.to(coordinates.device)
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

        Absent classes (no training row) score ``-inf``.
        """
        return self._decision_functions(X, [subspace])[str(parse_subspace(subspace))]

    def _decision_functions(self, X, subspaces) -> dict[str, torch.Tensor]:
        """Scores `(N, C)` of several subspaces' probes, from one pass over ``X`` `(N, D)`."""
        pca = self._fitted_pca()
        names = [str(parse_subspace(spec)) for spec in subspaces]
        X = as_float_tensor(X)
        if X.shape[1] != pca.mean_.numel():
            raise ValueError(
                f"X: expected {pca.mean_.numel()} features per row (as in training), got {X.shape[1]}"
            )
        absent = ~self._present.to(pca.mean_.device)
        if self.probe == "logistic":
            missing = sorted(set(names) - set(self._logistic))
            if missing:
                raise ValueError(f"subspaces {missing} were not fitted; fitted: {sorted(self._logistic)}")
            coordinates = pca.transform(X)  # (N, D)
            scores = {}
            for name in names:
                weight, bias = self._logistic[name]
                scores[name] = (coordinates[:, pca.subspace(name)] @ weight + bias).masked_fill(
                    absent, float("-inf")
                )
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
            name: (self.intercept_ + block).masked_fill(absent, float("-inf"))
            for name, block in zip(names, stacked.split(num_classes, dim=1))
        }

    def _restricted_coef(self, subspace: str) -> torch.Tensor:
        """``coef_`` `(D, C)` with the rows of components outside ``subspace`` zeroed (no (D, d) copy)."""
        keep = torch.zeros(self.coef_.shape[0], 1, dtype=self.coef_.dtype, device=self.coef_.device)
        keep[self.pca_.subspace(subspace).to(keep.device)] = 1.0
        return self.coef_ * keep

    def predict(self, X, subspace: str = "all") -> torch.Tensor:
        """Predicted class ids `(N,)` of the probe restricted to ``subspace``."""
        return self.decision_function(X, subspace).argmax(1)

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
            result[f"accuracy/{name}"] = float((subspace_scores.argmax(1) == labels).double().mean())
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
        absent = (~self._present).to(pca.mean_.device)
        for start in range(0, X.shape[0], _CURVE_ROWS):
            z = pca.transform(X[start : start + _CURVE_ROWS])  # (b, D)
            contributions = z[:, :, None] * self.coef_[None]  # (b, D, C)
            chunk_labels = labels[start : start + _CURVE_ROWS, None]  # (b, 1)
            for name, ordered in (("top", contributions), ("bottom", contributions.flip(1))):
                scores = self.intercept_ + ordered.cumsum(1)  # (b, K, C)
                scores.masked_fill_(absent, float("-inf"))
                correct[name] += (scores.argmax(2) == chunk_labels).sum(0).double().cpu()
        ratio = pca.explained_variance_ratio_.cpu()
        return {
            "k": np.arange(1, dim + 1),
            "top": (correct["top"] / X.shape[0]).numpy(),
            "bottom": (correct["bottom"] / X.shape[0]).numpy(),
            "explained_variance_top": ratio.cumsum(0).numpy(),
            "explained_variance_bottom": ratio.flip(0).cumsum(0).numpy(),
        }
