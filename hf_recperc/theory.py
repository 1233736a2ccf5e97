"""Closed-form linear theory of learning by reconstruction and denoising (docs/science.md section 4).

Everything here uses samples as rows, like the rest of the package: ``X`` has shape `(N, D)`. The paper
(docs/science.md section 4) writes the same formulas with samples as columns (``X_paper = X^T``); the translation is

================================  ======================================================================
paper (columns)                   here (rows)
================================  ======================================================================
``X`` `(D, N)`                    ``X.T``; ``X`` is `(N, D)`
``M1 = E[X~]`` `(D, N)`           ``M1.T`` with ``M1 = corruption.first_moment(X)`` `(N, D)`
``M2 = E[X~ X~^T]`` `(D, D)`      ``M2 = corruption.second_moment(X, image_shape)``, the same matrix
``V`` `(D, K)`, ``W`` `(K, D)`    ``encoder`` `(D, K)`, ``decoder`` `(K, D)`
``W^T V^T X~``                    ``X~ @ encoder @ decoder``, the reconstruction `(N, D)`
``M1 X^T X M1^T``                 ``P.T @ P`` with ``P = X.T @ M1`` `(D, D)`
================================  ======================================================================

so the denoising objective is ``E ||X - X~ @ V @ W||_F^2`` and its optimum (docs/science.md section 4) is

* ``V*`` = top-K generalized eigenvectors of the symmetric pencil ``(P^T P) v = lambda M2 v``,
* ``W* = (V*^T M2 V*)^{-1} V*^T M1^T X = (V*^T M2 V*)^{-1} V*^T P^T``.

Numerics. Everything runs in float64 with :func:`scipy.linalg.eigh` on the symmetric pencil. ``M2`` is
singular when ``X`` is rank deficient (digits has constant-zero pixels; any ``N < D``), and LAPACK's
generalized solver needs a positive definite right-hand side, so we add ``jitter * trace(M2) * I``
(``_JITTER = 1e-10``). An isotropic jitter is itself Gaussian noise (docs/science.md section 4: it shares PCA's
eigenbasis without reordering it), so it cannot change the no-noise or Gaussian answers; directions the
data never reaches (``X~ v = 0``) get ``lambda = 0`` and sort last, where they belong.

Cost, for ``D = 3072`` (CIFAR-10): one ``X^T X`` and its PCA per data set (:class:`LinearTheory` caches
both; the PCA is the no-noise solution), then per corruption a few `(D, D)` products, one Cholesky
factorisation and one `(r, r)` symmetric ``eigh`` and QR (``r = rank X``), never an `(N, N)` matrix: the
code space ``X V`` in ``R^N`` is handled through its isometric image ``diag(sqrt(l)) U^T V`` in PCA
coordinates (``X = O diag(sqrt(l)) U^T`` with ``O`` orthonormal), and the labels through ``Y^T X``.

Return values are numpy float64 arrays; inputs may be numpy arrays or torch tensors.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import torch
from tqdm.auto import tqdm

from .corruption import Corruption, parse_corruption
from .spectral import as_float_tensor, fix_eigenvector_signs
from .validation import check_finite_number, check_labels, check_memory, check_positive_int, format_bytes

__all__ = [
    "LinearTheory",
    "SubspaceAudit",
    "optimal_linear_autoencoder",
    "optimal_hybrid_linear_model",
    "denoising_objective",
    "task_alignment",
    "denoising_benefit",
    "subspace_audit",
    "never_beneficial",
    "alignment_study",
    "check_theory_memory",
    "theory_memory",
]

# Relative ridge added to the right-hand matrix of every generalized eigenproblem (see module docstring).
# Large enough that the Cholesky factorisation of a PSD matrix with a numerically zero eigenvalue
# (error ~ D * eps * ||M2|| <= 1e-12 trace for D <= 1e4) succeeds; small enough to sit far below the
# variance of any real image direction (CIFAR-10's smallest PCA eigenvalue is ~1e-6 of the trace).
_JITTER = 1e-10

# Default tolerances of the noise audit. Subspaces are only compared at latent sizes K where both
# spectra have a gap of at least GAP_TOL * largest eigenvalue: below that the top-K subspace is not
# determined (degenerate eigenvalues) or not resolvable in float64 (Davis-Kahan: the error of an
# eigen-subspace is about eps * ||A|| / gap).
_AUDIT_GAP_TOL = 1e-6
_AUDIT_TOL = 1e-4

# Peak memory of the closed forms, in `(D, D)` float64 matrices: X^T X and its eigenvectors, then per corruption
# P, M2, the jittered pencil and its Cholesky factor with their temporaries (alignment_study measured ~15).
_THEORY_MATRICES = 16


# --------------------------------------------------------------------------------------------------
# Input handling
# --------------------------------------------------------------------------------------------------


def theory_memory(num_samples: int, dim: int) -> int:
    """Estimated peak bytes of the closed forms on `(num_samples, dim)` data (float64 copies and `(D, D)` solves)."""
    return _THEORY_MATRICES * 8 * dim * dim + 16 * num_samples * dim


def check_theory_memory(name: str, num_samples: int, dim: int, hint: str = "") -> None:
    """``ValueError`` naming ``name`` when the closed forms on `(num_samples, dim)` data cannot fit in memory.

    Called before any `(D, D)` matrix exists: 4096 x 4096 RGB images (``D = 50,331,648``) would need 18 PiB for
    ``X^T X`` alone.
    """
    matrix = 8 * dim * dim
    check_memory(
        name,
        f"{dim:,} features need a {dim:,} x {dim:,} float64 matrix X^T X ({format_bytes(matrix)})",
        theory_memory(num_samples, dim),
        hint=hint or "reduce the features (downsample the images or project them)",
    )


def _as_data(X, name: str = "X", *, gram: bool = False) -> np.ndarray:
    """Validated float64 numpy copy of a 2-D array `(N, D)` (numpy or torch input).

    ``gram``: ``X`` is the data of a closed form, whose `(D, D)` matrices must fit in memory (checked first).
    """
    tensor = as_float_tensor(X, name=name)
    if gram:
        check_theory_memory(name, tensor.shape[0], tensor.shape[1])
    array = np.asarray(tensor.detach().cpu().numpy(), dtype=np.float64)
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"{name}: expected at least one sample and one feature, got shape {array.shape}")
    return array


def _targets(labels, num_samples: int, name: str = "labels") -> np.ndarray:
    """Targets ``Y`` of shape `(N, C)` float64: one-hot of integer/string labels `(N,)`, or given `(N, C)`."""
    if isinstance(labels, torch.Tensor):
        labels = labels.detach().cpu().numpy()
    array = np.asarray(labels)
    if array.ndim not in (1, 2):
        raise ValueError(
            f"{name}: expected labels of shape (N,) or targets of shape (N, C), got {array.shape}"
        )
    if array.shape[0] != num_samples:
        raise ValueError(f"{name}: got {array.shape[0]} rows but X has {num_samples} samples")
    if array.ndim == 1:
        if array.dtype.kind in "iu":
            array = check_labels(name, array, num_samples).numpy()  # shared checks: dtype, >= 0
        # One-hot over the classes present (docs/science.md section 4: Y one-hot); label order is irrelevant.
        _, inverse = np.unique(array, return_inverse=True)
        return np.eye(inverse.max() + 1)[inverse]
    if not np.issubdtype(array.dtype, np.number) or not np.isfinite(array).all():
        raise ValueError(f"{name}: targets of shape (N, C) must be finite numbers")
    return array.astype(np.float64)


def _check_k(k, dim: int, name: str = "k") -> int:
    """A latent size in ``[1, D]``."""
    return check_positive_int(name, k, maximum=dim)


def _check_ks(ks, dim: int) -> np.ndarray:
    """Latent sizes as an int array; ``None`` means every ``K = 1 .. D``."""
    if ks is None:
        return np.arange(1, dim + 1)
    array = np.atleast_1d(np.asarray(ks))
    if array.ndim != 1 or array.size == 0 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ks: expected a non-empty list of integer latent sizes, got {ks!r}")
    if array.min() < 1 or array.max() > dim:
        raise ValueError(
            f"ks: latent sizes must lie in [1, {dim}] (D), got min {array.min()}, max {array.max()}"
        )
    return array.astype(np.int64)


def _check_image_shape(image_shape, dim: int) -> tuple[int, int, int] | None:
    if image_shape is None:
        return None
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) != 3
        or not all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) and v >= 1 for v in image_shape
        )
    ):
        raise ValueError(
            f"image_shape: expected (num_channels, height, width) positive integers, got {image_shape!r}"
        )
    shape = tuple(int(v) for v in image_shape)
    if math.prod(shape) != dim:
        raise ValueError(
            f"image_shape: {shape} holds {math.prod(shape)} values but X has {dim} features per sample"
        )
    return shape


def _check_corruption(corruption) -> Corruption:
    return parse_corruption(corruption)


# --------------------------------------------------------------------------------------------------
# Linear algebra
# --------------------------------------------------------------------------------------------------


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Eigenvectors as columns `(D, k)` with :func:`hf_recperc.spectral.fix_eigenvector_signs`'s convention."""
    rows = torch.from_numpy(vectors.T.copy())  # (k, D); a copy: torch refuses negative strides
    return fix_eigenvector_signs(rows).numpy().T


def _top_eigh(matrix: np.ndarray, k: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (default all) eigenpairs of a symmetric matrix, decreasing: `(k,)`, `(D, k)` columns."""
    dim = matrix.shape[0]
    subset = None if k is None or k == dim else [dim - k, dim - 1]
    values, vectors = scipy.linalg.eigh((matrix + matrix.T) / 2, subset_by_index=subset)
    return values[::-1].copy(), _fix_signs(vectors[:, ::-1])


def _generalized_top_eigh(
    A: np.ndarray, B: np.ndarray, k: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` (default all) eigenpairs of the symmetric pencil ``A v = lambda B v``, ``B`` PSD.

    ``B`` gets the relative jitter ``_JITTER * trace(B)`` so that it is positive definite (module
    docstring). Returns eigenvalues `(k,)` decreasing and eigenvectors `(D, k)` as columns, normalised by
    LAPACK to ``V^T (B + jitter I) V = I``, with deterministic signs.
    """
    dim = A.shape[0]
    ridge = _JITTER * max(np.trace(B), np.finfo(np.float64).tiny)
    B = (B + B.T) / 2 + ridge * np.eye(dim)
    subset = None if k is None or k == dim else [dim - k, dim - 1]
    values, vectors = scipy.linalg.eigh((A + A.T) / 2, B, subset_by_index=subset)
    return values[::-1].copy(), _fix_signs(vectors[:, ::-1])


def _moments(
    X: np.ndarray, gram: np.ndarray, corruption: Corruption, image_shape
) -> tuple[np.ndarray, np.ndarray]:
    """``(P, M2)`` of docs/science.md section 4 in rows: ``P = X^T E[X~]`` `(D, D)`, ``M2 = E[X~^T X~]`` `(D, D)`.

    The corruption object computes both (:meth:`hf_recperc.corruption.Corruption.linear_moments`), so that
    training and theory keep one definition of each noise; passing the cached ``gram = X^T X`` lets the
    built-in corruptions skip an `(N, D) x (N, D)` product per corruption.
    """
    P, M2 = corruption.linear_moments(
        torch.from_numpy(X),
        gram=torch.from_numpy(gram),
        image_shape=None if image_shape is None else tuple(int(v) for v in image_shape),
    )
    return P.numpy(), M2.numpy()


# --------------------------------------------------------------------------------------------------
# Cached analysis of one data matrix
# --------------------------------------------------------------------------------------------------


@dataclass
class _Spectrum:
    """A corruption's generalized spectrum, reduced to what alignment and the audit need.

    eigenvalues: `(D,)` decreasing generalized eigenvalues of ``(P^T P, M2)``.
    code_basis: `(r, r)` orthogonal ``Q'``; column ``j`` is the ``j``-th Gram-Schmidt direction of the code
        ``X v_1, X v_2, ...`` written in the orthonormal basis ``X u_i / sqrt(l_i)`` of PCA's code (so PCA
        itself has ``Q' = I``).
    """

    eigenvalues: np.ndarray
    code_basis: np.ndarray


@dataclass
class SubspaceAudit:
    """How far a corruption's learned subspaces are from PCA's, for every latent size.

    Attributes:
        corruption: the corruption's string form.
        distances (`np.ndarray` of shape `(D,)`): at index ``K - 1``, ``||sin Theta_K||_F``: the Frobenius norm
            of the sines of the principal angles between the top-K codes ``X V_K`` and ``X U_K`` (equal to
            the projector distance ``||P_V - P_U||_F / sqrt(2)``); 0 for ``K >= rank``, where both codes span
            all of ``X``'s columns.
        checked (`np.ndarray` of bool, shape `(D,)`): the latent sizes where both spectra have a resolvable
            gap (else the top-K subspace is not determined and is not compared).
        never_beneficial: ``max(distances[checked]) <= tol``.
        tol, gap_tol: the tolerances used.
    """

    corruption: str
    distances: np.ndarray
    checked: np.ndarray
    never_beneficial: bool
    tol: float
    gap_tol: float

    @property
    def max_distance(self) -> float:
        """Largest checked distance (0 when nothing was checked)."""
        return float(self.distances[self.checked].max()) if self.checked.any() else 0.0

    @property
    def worst_k(self) -> int | None:
        """Latent size of :attr:`max_distance`, or ``None``."""
        if not self.checked.any():
            return None
        return int(np.flatnonzero(self.checked)[self.distances[self.checked].argmax()] + 1)


class LinearTheory:
    """One data matrix's shared quantities for the closed forms of docs/science.md section 4, computed once.

    Holds ``X^T X`` and its PCA (the no-noise solution), so that alignment curves, denoising benefits and
    audits for many corruptions reuse them; the last few corruptions' spectra are cached too. Every public
    function of this module accepts a :class:`LinearTheory` in place of ``X``.

    Args:
        X (array of shape `(N, D)`): the data, samples as rows (e.g. :func:`hf_recperc.images.paper_preprocessing`
            output). Numpy or torch; converted to float64.
        image_shape (`(C, H, W)`, *optional*): needed for patch masking.

    Attributes:
        X (`np.ndarray` `(N, D)` float64), gram (`(D, D)`, ``X^T X``), pca_eigenvalues (`(D,)` decreasing,
        of ``X^T X``), pca_components (`(D, D)`, columns), rank (numerical rank of ``X``), image_shape.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).standard_normal((50, 16))
        >>> theory = LinearTheory(X, image_shape=(1, 4, 4))
        >>> labels = np.arange(50) % 3
        >>> theory.alignment(labels, "mask:0.5:2").shape
        (16,)
        >>> float(theory.alignment(labels, ks=[16])[0])
        100.0
    """

    _CACHE_SIZE = 2

    def __init__(self, X, image_shape: tuple[int, int, int] | None = None):
        self.X = _as_data(X, gram=True)
        num_samples, dim = self.X.shape
        self.image_shape = _check_image_shape(image_shape, dim)
        self.gram = self.X.T @ self.X  # (D, D), the one X^T X every corruption reuses
        values, vectors = _top_eigh(self.gram)
        self.pca_eigenvalues = np.clip(values, 0.0, None)
        self.pca_components = vectors
        if self.pca_eigenvalues[0] <= 0:
            raise ValueError("X: all values are zero; there is nothing to reconstruct")
        # numpy.linalg.matrix_rank's tolerance, applied to eigenvalues of X^T X (their absolute error is
        # about eps * l_max, so smaller ones are indistinguishable from 0).
        tolerance = max(num_samples, dim) * np.finfo(np.float64).eps * self.pca_eigenvalues[0]
        self.rank = int((self.pca_eigenvalues > tolerance).sum())
        self._spectra: OrderedDict = OrderedDict()

    @property
    def num_samples(self) -> int:
        return self.X.shape[0]

    @property
    def dim(self) -> int:
        return self.X.shape[1]

    def _shape(self, image_shape):
        return self.image_shape if image_shape is None else _check_image_shape(image_shape, self.dim)

    def moments(self, corruption=None, image_shape=None) -> tuple[np.ndarray, np.ndarray]:
        """``(P, M2)``: ``P = X^T E[X~]`` `(D, D)` and ``M2 = E[X~^T X~]`` `(D, D)` (docs/science.md section 4, rows)."""
        return _moments(self.X, self.gram, _check_corruption(corruption), self._shape(image_shape))

    def spectrum(self, corruption=None, image_shape=None) -> _Spectrum:
        """The corruption's generalized eigenvalues and code basis (cached for the last few corruptions)."""
        corruption = _check_corruption(corruption)
        shape = self._shape(image_shape)
        key = (corruption, shape)
        if key in self._spectra:
            self._spectra.move_to_end(key)
            return self._spectra[key]
        r = self.rank
        if corruption.is_identity:
            # No noise (or std 0 / ratio 0): the pencil (G^2, G) has G's eigenvectors and eigenvalues l
            # (docs/science.md section 4, "V* spans the top-K PCA subspace"); use the well-conditioned PCA.
            result = _Spectrum(self.pca_eigenvalues.copy(), np.eye(r))
        else:
            result = self._generalized_spectrum(*self.moments(corruption, shape))
        self._spectra[key] = result
        while len(self._spectra) > self._CACHE_SIZE:
            self._spectra.popitem(last=False)
        return result

    def _generalized_spectrum(self, P: np.ndarray, M2: np.ndarray) -> _Spectrum:
        """All of the pencil ``(P^T P, M2)`` that alignment needs, through an `(r, r)` symmetric problem.

        ``P = X^T E[X~]`` has its columns in the row space of ``X``, so ``P^T P = F F^T`` with
        ``F = P^T U_r`` `(D, r)`. The non-zero generalized eigenpairs of ``(F F^T, M2)`` are
        ``v = M2^{-1} F w`` with ``F^T M2^{-1} F w = lambda w``: one Cholesky solve and an `(r, r)` ``eigh``
        instead of a `(D, D)` generalized ``eigh`` (faster when ``N < D``), and the ``D - r`` directions
        that the data never reaches are exactly excluded instead of competing, through round-off, with the
        smallest real eigenvalues.
        """
        r, dim = self.rank, self.dim
        U_r = self.pca_components[:, :r]  # (D, r)
        F = P.T @ U_r  # (D, r)
        ridge = _JITTER * max(np.trace(M2), np.finfo(np.float64).tiny)  # module docstring
        try:
            factor = scipy.linalg.cho_factor((M2 + M2.T) / 2 + ridge * np.eye(dim), lower=True)
        except np.linalg.LinAlgError as err:
            raise ValueError(
                f"corruption: its second moment M2 is not positive semi-definite ({err})"
            ) from None
        solved = scipy.linalg.cho_solve(factor, F)  # (D, r): M2^{-1} F
        values, W = _top_eigh(F.T @ solved)  # (r,), (r, r)
        eigenvalues = np.zeros(dim)
        eigenvalues[:r] = np.clip(values, 0.0, None)
        # The code X V_r in R^N, isometrically in PCA coordinates: X v = O diag(sqrt l) U^T v with O
        # orthonormal `(N, r)`. An in-order QR gives the nested orthonormal codes of the alignment
        # (docs/science.md section 4); column scales of V (its normalisation) do not change the spans.
        coded = np.sqrt(self.pca_eigenvalues[:r])[:, None] * ((U_r.T @ solved) @ W)  # (r, r)
        q, upper = scipy.linalg.qr(coded)
        q *= np.where(np.diag(upper) < 0, -1.0, 1.0)  # make R's diagonal >= 0: a unique QR
        return _Spectrum(eigenvalues, q)

    def _label_coordinates(self, labels) -> tuple[np.ndarray, np.ndarray]:
        """``(H, Y^T Y)``: ``H = Y^T X U_r diag(l_r)^{-1/2}`` `(C, r)` is ``Y^T`` on PCA's orthonormal code."""
        Y = _targets(labels, self.num_samples)
        r = self.rank
        H = (Y.T @ self.X) @ self.pca_components[:, :r] / np.sqrt(self.pca_eigenvalues[:r])
        return H, Y.T @ Y

    def alignment(self, labels, corruption=None, ks=None, image_shape=None) -> np.ndarray:
        """Task alignment in percent (docs/science.md section 4) of the optimal K-dimensional code.

        ``align(K) = ||Y Y^T Q[:, :K]||_F / ||Y Y^T Q||_F`` with ``Q`` the in-order orthonormal basis of
        ``X V*``. Computed without `(N, N)` matrices: ``||Y Y^T q||^2 = t^T (Y^T Y) t`` with ``t = Y^T q``.

        Args:
            labels: `(N,)` class labels (one-hot encoded) or `(N, C)` targets.
            corruption: ``None``/``"none"``, a corruption string or object.
            ks: latent sizes in ``[1, D]``; default every ``K = 1 .. D``.

        Returns:
            `np.ndarray` float64 of shape `(len(ks),)`, non-decreasing in K, 100 from ``K = rank`` on.
        """
        ks = _check_ks(ks, self.dim)
        spectrum = self.spectrum(corruption, image_shape)
        H, YtY = self._label_coordinates(labels)
        T = H @ spectrum.code_basis  # (C, r): column j is Y^T q_j
        energy = np.clip(np.einsum("cj,cd,dj->j", T, YtY, T), 0.0, None)  # ||Y Y^T q_j||^2, (r,)
        total = energy.sum()
        # ||Y Y^T Q||_F^2 <= ||Y Y^T||_F^2 = ||Y^T Y||_F^2; far below that, what is left is round-off.
        if total <= 1e-12 * np.sum(YtY**2):
            raise ValueError(
                "labels: no part of the targets is linearly predictable from X; alignment is undefined"
            )
        curve = np.ones(self.dim)
        curve[: self.rank] = np.sqrt(np.minimum(np.cumsum(energy) / total, 1.0))
        return 100.0 * curve[ks - 1]

    def benefit(self, labels, corruption, ks=None, image_shape=None) -> np.ndarray:
        """Denoising benefit ``100 (align_noise - align_clean) / align_clean`` per K (docs/science.md section 4).

        Returns `np.ndarray` float64 `(len(ks),)`; NaN where the clean alignment is 0.
        """
        clean = self.alignment(labels, None, ks)
        noisy = self.alignment(labels, corruption, ks, image_shape)
        out = np.full_like(clean, np.nan)
        np.divide(100.0 * (noisy - clean), clean, out=out, where=clean > 0)
        return out

    def audit(
        self, corruption, image_shape=None, tol: float = _AUDIT_TOL, gap_tol: float = _AUDIT_GAP_TOL
    ) -> SubspaceAudit:
        """Compare the corruption's nested top-K subspaces with PCA's for every K (docs/science.md section 4's test).

        The comparison is between codes ``X V_K`` and ``X U_K`` (in ``R^N``), which is what any labelling
        sees; for ``X`` of full column rank it is the same as comparing ``span V_K`` with ``span U_K``.
        With ``Q'`` the code basis in PCA coordinates (PCA: identity), ``||sin Theta_K||_F =
        ||Q'[K:, :K]||_F``, all K at once from cumulative sums.
        """
        tol, gap_tol = (
            check_finite_number("tol", tol, minimum=0),
            check_finite_number("gap_tol", gap_tol, minimum=0),
        )
        corruption = _check_corruption(corruption)
        spectrum = self.spectrum(corruption, image_shape)
        r, dim = self.rank, self.dim
        squares = spectrum.code_basis**2  # (r, r)
        below = np.cumsum(squares[::-1], axis=0)[::-1]  # below[i, j] = sum_{i' >= i} Q'_{i'j}^2
        # ||Q'[K:, :K]||_F^2 = sum_{j < K} below[K, j], for K = 1 .. r-1.
        leaked = np.cumsum(below[1:], axis=1)[np.arange(r - 1), np.arange(r - 1)] if r > 1 else np.zeros(0)
        distances = np.zeros(dim)
        distances[: r - 1] = np.sqrt(np.clip(leaked, 0.0, None))

        def resolvable(values: np.ndarray) -> np.ndarray:  # gap after each of the first r-1 eigenvalues
            return (values[: r - 1] - values[1:r]) > gap_tol * max(values[0], np.finfo(np.float64).tiny)

        checked = np.zeros(dim, dtype=bool)
        checked[: r - 1] = resolvable(self.pca_eigenvalues) & resolvable(spectrum.eigenvalues)
        worst = distances[checked].max() if checked.any() else 0.0
        return SubspaceAudit(
            str(corruption), distances, checked, bool(worst <= tol), float(tol), float(gap_tol)
        )


def _theory(X, image_shape) -> LinearTheory:
    if isinstance(X, LinearTheory):
        return X
    return LinearTheory(X, image_shape)


# --------------------------------------------------------------------------------------------------
# Public closed forms
# --------------------------------------------------------------------------------------------------


def optimal_linear_autoencoder(
    X, k: int, corruption=None, image_shape: tuple[int, int, int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form optimal linear (denoising) autoencoder, docs/science.md section 4.

    Minimises ``E ||X - X~ @ encoder @ decoder||_F^2`` over ``encoder`` `(D, K)` and ``decoder`` `(K, D)`,
    where ``X~`` is a corrupted copy of ``X``:

    * ``encoder`` = top-K generalized eigenvectors of ``(P^T P) v = lambda M2 v`` with ``P = X^T E[X~]``,
      ``M2 = E[X~^T X~]`` (normalised ``encoder^T (M2 + jitter) encoder = I``); with no corruption, the
      top-K PCA directions of ``X^T X`` (unit columns);
    * ``decoder = (encoder^T M2 encoder)^+ encoder^T P^T`` (pseudo-inverse: latents the data never excite
      get a zero decoder row).

    Args:
        X (array of shape `(N, D)` or :class:`LinearTheory`): clean data, samples as rows.
        k: latent size ``K`` in ``[1, D]``.
        corruption: ``None``/``"none"``, ``"gaussian:STD"``, ``"mask:RATIO:PATCH"`` or a :class:`Corruption`.
        image_shape: `(C, H, W)` with ``C*H*W = D``; required for patch masking (``PATCH > 1``).

    Returns:
        ``(encoder, decoder)``: float64 numpy arrays of shapes `(D, K)` and `(K, D)`; the reconstruction of
        a corrupted batch ``X~`` `(n, D)` is ``X~ @ encoder @ decoder``.
    """
    corruption = _check_corruption(corruption)
    theory = X if isinstance(X, LinearTheory) else None
    data = theory.X if theory else _as_data(X, gram=True)
    dim = data.shape[1]
    k = _check_k(k, dim)
    shape = theory._shape(image_shape) if theory else _check_image_shape(image_shape, dim)
    gram = theory.gram if theory else data.T @ data  # (D, D)
    P, M2 = _moments(data, gram, corruption, shape)  # (D, D) each
    if corruption.is_identity:
        # PCA (docs/science.md section 4, no noise): the pencil (G^2, G) has G's eigenvectors; the standard
        # symmetric problem is better conditioned than the generalized one with a singular G.
        encoder = theory.pca_components[:, :k].copy() if theory else _top_eigh(gram, k)[1]
    else:
        encoder = _generalized_top_eigh(P.T @ P, M2, k)[1]
    decoder = scipy.linalg.pinvh(encoder.T @ M2 @ encoder) @ (encoder.T @ P.T)  # (K, D)
    return encoder, decoder


def denoising_objective(
    X, encoder, decoder, corruption=None, image_shape: tuple[int, int, int] | None = None
) -> float:
    """Expected denoising loss ``E ||X - X~ @ encoder @ decoder||_F^2`` of any linear autoencoder, exactly.

    ``= ||X||^2 - 2 tr(W^T V^T P^T) + tr(W^T V^T M2 V W)`` with ``V = encoder`` `(D, K)`, ``W = decoder``
    `(K, D)`, ``P = X^T E[X~]``, ``M2 = E[X~^T X~]`` (docs/science.md section 4). Returns a Python float (a sum
    over the N samples, not a mean).
    """
    corruption = _check_corruption(corruption)
    theory = X if isinstance(X, LinearTheory) else None
    data = theory.X if theory else _as_data(X, gram=True)
    dim = data.shape[1]
    V = _as_data(encoder, "encoder")
    W = _as_data(decoder, "decoder")
    if V.shape[0] != dim or W.shape != (V.shape[1], dim):
        raise ValueError(
            f"encoder/decoder: expected shapes (D, K) and (K, D) with D = {dim}, got {V.shape} and {W.shape}"
        )
    shape = theory._shape(image_shape) if theory else _check_image_shape(image_shape, dim)
    P, M2 = _moments(data, theory.gram if theory else data.T @ data, corruption, shape)
    VW = V @ W  # (D, D)
    return float((data**2).sum() - 2.0 * np.sum(VW * P) + np.sum(VW * (M2 @ VW)))


def optimal_hybrid_linear_model(
    X, Y, k: int, reconstruction_weight: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Closed-form supervised + reconstruction linear model (docs/science.md section 4, "Hybrid").

    Minimises ``||Y - X V W||_F^2 + lambda ||X - X V Z||_F^2`` (rows form of the paper's objective) over
    the encoder ``V`` `(D, K)`, classifier head ``W`` `(K, C)` and decoder ``Z`` `(K, D)`:

    * ``V`` = top-K generalized eigenvectors of ``(X^T Y Y^T X + lambda G^2) v = mu G v``, ``G = X^T X``;
    * ``W = (V^T G V)^+ V^T X^T Y`` and ``Z = (V^T G V)^+ V^T G``.

    ``lambda -> inf`` gives PCA; ``lambda = 0`` reduced-rank regression. ``Y Y^T`` is never formed: the
    `(D, C)` product ``X^T Y`` carries the labels.

    Args:
        X (array `(N, D)`): data, samples as rows.
        Y: `(N,)` class labels (one-hot encoded) or `(N, C)` targets.
        k: latent size in ``[1, D]``.
        reconstruction_weight: ``lambda >= 0``.

    Returns:
        ``(encoder, head, decoder)``: float64 arrays `(D, K)`, `(K, C)`, `(K, D)`; predictions
        ``X @ encoder @ head``, reconstructions ``X @ encoder @ decoder``.
    """
    data = X.X if isinstance(X, LinearTheory) else _as_data(X, gram=True)
    dim = data.shape[1]
    k = _check_k(k, dim)
    reconstruction_weight = check_finite_number("reconstruction_weight", reconstruction_weight, minimum=0)
    targets = _targets(Y, data.shape[0], "Y")
    gram = X.gram if isinstance(X, LinearTheory) else data.T @ data  # (D, D)
    XtY = data.T @ targets  # (D, C)
    A = XtY @ XtY.T + reconstruction_weight * (gram @ gram)
    encoder = _generalized_top_eigh(A, gram, k)[1]
    inverse = scipy.linalg.pinvh(encoder.T @ gram @ encoder)  # (K, K)
    head = inverse @ (encoder.T @ XtY)
    decoder = inverse @ (encoder.T @ gram)
    return encoder, head, decoder


def task_alignment(
    X, labels, corruption=None, image_shape: tuple[int, int, int] | None = None, ks=None
) -> np.ndarray:
    """Task alignment curve in percent (docs/science.md section 4) of the optimal linear (denoising) autoencoder.

    ``align(K) = 100 ||Y Y^T Q[:, :K]||_F / ||Y Y^T Q||_F`` where ``Q`` is the in-order orthonormal basis of
    the code ``X V*`` of all generalized eigenvectors. See :meth:`LinearTheory.alignment`.

    Args:
        X (array `(N, D)` or :class:`LinearTheory`): data, samples as rows. Pass a :class:`LinearTheory` to
            reuse ``X^T X`` and the PCA across calls.
        labels: `(N,)` labels or `(N, C)` targets.
        corruption: ``None``/``"none"``, a corruption string or object.
        image_shape: `(C, H, W)`, required for patch masking.
        ks: latent sizes in ``[1, D]``; default all ``1 .. D``.

    Returns:
        `np.ndarray` float64 `(len(ks),)`: non-decreasing, 100 from ``K = rank(X)`` on.
    """
    return _theory(X, image_shape).alignment(labels, corruption, ks, image_shape)


def denoising_benefit(
    X, labels, corruption, image_shape: tuple[int, int, int] | None = None, ks=None
) -> np.ndarray:
    """``100 (align_noise(K) - align_clean(K)) / align_clean(K)`` for each K (docs/science.md section 4).

    Same arguments as :func:`task_alignment`; returns `np.ndarray` float64 `(len(ks),)` (NaN where the
    clean alignment is 0). The clean curve comes from the cached PCA of a :class:`LinearTheory`.
    """
    return _theory(X, image_shape).benefit(labels, corruption, ks, image_shape)


def subspace_audit(
    X,
    corruption,
    image_shape: tuple[int, int, int] | None = None,
    tol: float = _AUDIT_TOL,
    gap_tol: float = _AUDIT_GAP_TOL,
) -> SubspaceAudit:
    """Per-K distance between a corruption's learned subspaces and PCA's; see :meth:`LinearTheory.audit`."""
    return _theory(X, image_shape).audit(corruption, image_shape, tol, gap_tol)


def never_beneficial(
    X,
    corruption,
    image_shape: tuple[int, int, int] | None = None,
    tol: float = _AUDIT_TOL,
    gap_tol: float = _AUDIT_GAP_TOL,
) -> bool:
    """docs/science.md section 4's noise audit: can this corruption ever change what a linear AE learns?

    True when the corruption's nested top-K generalized eigen-subspaces equal PCA's for every K, so the
    task alignment is unchanged whatever the labels (isotropic Gaussian noise is the canonical case); False
    when some K's learned code moves away from PCA's by more than ``tol`` (``||sin Theta_K||_F``). Latent
    sizes where either spectrum's gap is below ``gap_tol`` times its largest eigenvalue (degenerate or
    numerically unresolvable subspaces) are not compared.

    Args:
        X (array `(N, D)` or :class:`LinearTheory`): data, samples as rows.
        corruption: a corruption string or object.
        image_shape: `(C, H, W)`, required for patch masking.
        tol: largest ``||sin Theta_K||_F`` counted as equal.
        gap_tol: relative eigen-gap below which a K is skipped.

    Raises:
        ValueError: when no latent size could be compared (every gap unresolvable, e.g. whitened data):
            the audit cannot tell, and "never beneficial" would be a guess.
    """
    audit = subspace_audit(X, corruption, image_shape, tol, gap_tol)
    if not audit.checked.any() and not parse_corruption(corruption).is_identity:
        raise ValueError(
            f"corruption {str(parse_corruption(corruption))!r}: no latent size has a resolvable eigen-gap "
            f"(relative gap_tol={gap_tol:g}), so the audit cannot decide; the data's spectrum is flat"
        )
    return audit.never_beneficial


def alignment_study(
    X,
    labels,
    corruptions,
    image_shape: tuple[int, int, int] | None = None,
    tol: float = _AUDIT_TOL,
    gap_tol: float = _AUDIT_GAP_TOL,
    progress: bool = False,
) -> dict:
    """Alignment curves, denoising benefits and the noise audit for a list of corruptions (docs/science.md, E5).

    One :class:`LinearTheory` (one ``X^T X``, one PCA) serves every corruption; each corruption costs one
    generalized eigenproblem.

    Args:
        X (array `(N, D)` or :class:`LinearTheory`): data, samples as rows.
        labels: `(N,)` labels or `(N, C)` targets.
        corruptions: corruption strings or objects (``"none"``, ``"gaussian:0.1"``, ``"mask:0.75:4"``...).
        image_shape: `(C, H, W)`, required for patch masking.
        tol, gap_tol: audit tolerances, see :func:`never_beneficial`.
        progress: show a tqdm bar over corruptions.

    Returns:
        A JSON-ready dict: ``num_samples``, ``dim``, ``rank``, ``ks`` (``1 .. D``) and ``corruptions``, a dict
        keyed by each corruption's string form with ``alignment`` and ``benefit`` (lists over ``ks``, in
        percent), ``never_beneficial``, ``max_subspace_distance``, ``worst_k`` and ``checked_ks`` (how many
        latent sizes the audit compared).
    """
    theory = _theory(X, image_shape)
    parsed = [_check_corruption(c) for c in corruptions]
    if not parsed:
        raise ValueError("corruptions: expected at least one corruption, got none")
    clean = theory.alignment(labels)
    results = {}
    for corruption in tqdm(parsed, desc="corruptions", disable=not progress):
        curve = theory.alignment(labels, corruption, image_shape=image_shape)
        benefit = np.full_like(clean, np.nan)
        np.divide(100.0 * (curve - clean), clean, out=benefit, where=clean > 0)
        audit = theory.audit(corruption, image_shape, tol, gap_tol)
        results[str(corruption)] = {
            "alignment": curve.tolist(),
            "benefit": [None if np.isnan(b) else float(b) for b in benefit],
            "never_beneficial": audit.never_beneficial,
            "max_subspace_distance": audit.max_distance,
            "worst_k": audit.worst_k,
            "checked_ks": int(audit.checked.sum()),
        }
    return {
        "num_samples": theory.num_samples,
        "dim": theory.dim,
        "rank": theory.rank,
        "tol": tol,
        "gap_tol": gap_tol,
        "ks": list(range(1, theory.dim + 1)),
        "corruptions": results,
    }
