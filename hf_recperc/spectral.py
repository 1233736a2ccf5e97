"""Streaming second moments, PCA and variance subspaces (docs/science.md section 2).

Everything here works on rows: ``X`` has shape `(num_samples, num_features)` (``D = C * H * W`` for
flattened images). Inputs may be numpy arrays or torch tensors on any device, in any float precision
(half-precision embeddings of mixed-precision models included); products are formed in float32 or wider and
statistics are summed in float64 whatever the input dtype, and non-finite statistics are an error.

Subspaces are named by short strings, validated by :func:`parse_subspace`:

=============  ===========================================================================
``top:p``      leading components whose cumulative explained variance ``c_i <= p``
``bottom:q``   the complement of ``top:(1-q)``: components with ``c_i > 1 - q``
``first:k``    the ``k`` leading components
``last:k``     the ``k`` trailing components
``all``        every component
=============  ===========================================================================
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .validation import check_memory, format_bytes

__all__ = [
    "SUBSPACE_FORMS",
    "SubspaceSpec",
    "parse_subspace",
    "subspace_indices",
    "SecondMoments",
    "PCA",
    "as_float_tensor",
    "check_moments_memory",
    "compute_dtype",
    "num_components",
    "fix_eigenvector_signs",
]

SUBSPACE_FORMS = "'top:P' or 'bottom:P' (0 < P <= 1), 'first:K' or 'last:K' (integer K >= 1), or 'all'"

# Cumulative sums of float64 ratios can land a hair above an exact threshold (0.9 -> 0.9000000000000001);
# this tolerance keeps `top:p` and `bottom:(1-p)` exact complements without moving any real boundary.
_CUMULATIVE_TOL = 1e-10

# Half-precision inputs are widened to float32 before any arithmetic: float16 overflows at 65504, so sums of
# squares of ordinary embeddings (a few thousand rows of magnitude ~5) would become inf (docs/design.md,
# "Half precision").
_HALF = (torch.float16, torch.bfloat16)

# Rows per matrix product when accumulating: big enough for BLAS efficiency, small enough that the
# temporary (batch_rows, D) copy stays a small fraction of the input.
_ACCUMULATE_ROWS = 16384
# Rows per block when choosing that shift: temporaries of a few MB instead of a copy of the first chunk.
_SHIFT_BLOCK_ROWS = 2048
# Peak memory of accumulating second moments and solving their PCA, in `(D, D)` float64 matrices: the sums, the
# covariance and its symmetrised copy, the eigensolver's input and eigenvectors (SubspaceProbe.fit measured ~5).
_MOMENT_MATRICES = 5
# Largest magnitude of float32 rows whose products are formed after scaling to unit magnitude (_underflow_scale).
_TINY_FLOAT32_PEAK = 2.0**-40


@dataclass(frozen=True)
class SubspaceSpec:
    """A parsed subspace name: ``kind`` in {top, bottom, first, last, all} and its parameter."""

    kind: str
    value: float | int | None = None

    def __str__(self) -> str:
        if self.kind == "all":
            return "all"
        return f"{self.kind}:{self.value:g}" if isinstance(self.value, float) else f"{self.kind}:{self.value}"


def parse_subspace(spec: str | SubspaceSpec) -> SubspaceSpec:
    """Parse and validate a subspace string such as ``"top:0.9"`` or ``"last:100"``.

    Raises:
        ValueError: naming the string and the accepted forms, e.g.
            ``subspace 'top:1.3': fraction must be in (0, 1]``.
    """
    if isinstance(spec, SubspaceSpec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"subspace: expected a string of the form {SUBSPACE_FORMS}, got {spec!r}")
    text = spec.strip().lower()
    if text == "all":
        return SubspaceSpec("all")
    kind, sep, arg = text.partition(":")
    if not sep or kind not in ("top", "bottom", "first", "last"):
        raise ValueError(f"subspace {spec!r}: unknown form; expected {SUBSPACE_FORMS}")
    if kind in ("top", "bottom"):
        try:
            fraction = float(arg)
        except ValueError:
            raise ValueError(
                f"subspace {spec!r}: fraction {arg!r} is not a number; expected {SUBSPACE_FORMS}"
            ) from None
        if not (0 < fraction <= 1):
            raise ValueError(f"subspace {spec!r}: fraction must be in (0, 1], got {fraction:g}")
        return SubspaceSpec(kind, fraction)
    if not arg.isdigit() or int(arg) < 1:
        raise ValueError(f"subspace {spec!r}: count must be an integer >= 1, got {arg!r}")
    return SubspaceSpec(kind, int(arg))


def subspace_indices(spec: str | SubspaceSpec, explained_variance_ratio) -> torch.Tensor:
    """Indices (into components sorted by decreasing variance) of the components a subspace keeps.

    Args:
        spec: a subspace string, see :func:`parse_subspace`.
        explained_variance_ratio (array of shape `(D,)`): ratios ``r_i``, sorted decreasingly.

    Returns:
        `torch.LongTensor` of shape `(d,)`, increasing, ``d >= 1``.

    Raises:
        ValueError: if the subspace is empty or asks for more components than exist.
    """
    parsed = parse_subspace(spec)
    ratios = torch.as_tensor(explained_variance_ratio, dtype=torch.float64).cpu()
    dim = ratios.numel()
    cumulative = torch.cumsum(ratios, 0)  # c_i
    if parsed.kind == "all":
        keep = torch.ones(dim, dtype=torch.bool)
    elif parsed.kind == "top":
        keep = cumulative <= parsed.value + _CUMULATIVE_TOL
    elif parsed.kind == "bottom":
        keep = ~(cumulative <= 1.0 - parsed.value + _CUMULATIVE_TOL)
    else:
        if parsed.value > dim:
            raise ValueError(f"subspace '{parsed}': asks for {parsed.value} components but only {dim} exist")
        keep = torch.zeros(dim, dtype=torch.bool)
        if parsed.kind == "first":
            keep[: parsed.value] = True
        else:
            keep[dim - parsed.value :] = True
    indices = torch.nonzero(keep).flatten()
    if indices.numel() == 0:
        if parsed.kind == "top":
            why = f"the first component alone explains {ratios[0].item():.3g} of the variance (> {parsed.value:g})"
        else:
            why = f"no component lies beyond cumulative variance {1 - parsed.value:g} (the trailing ones have none)"
        raise ValueError(f"subspace '{parsed}' is empty: {why}")
    return indices


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The precision arithmetic on inputs of ``dtype`` runs in: float64 stays, anything else is float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def as_float_tensor(X, name: str = "X", ndim: int = 2, *, check_finite: bool = True) -> torch.Tensor:
    """A float tensor view of ``X`` (numpy or torch, no copy when possible), validated.

    Half-precision inputs keep their dtype (no copy); consumers widen them chunk by chunk (:func:`compute_dtype`).
    ``check_finite=False`` leaves the NaN / inf scan to the caller (:func:`check_finite_values`), e.g. to run it on a
    copy that is still in cache.

    Raises:
        ValueError: naming ``name`` when ``X`` is ragged, has the wrong number of dimensions, or holds
            NaN / inf.
    """
    if isinstance(X, torch.Tensor):
        tensor = X
    else:
        try:
            array = np.asarray(X)
        except ValueError as err:  # ragged nested lists
            raise ValueError(f"{name}: expected a rectangular array, got ragged rows ({err})") from None
        if array.dtype == object:
            raise ValueError(f"{name}: expected a rectangular numeric array, got ragged or non-numeric rows")
        tensor = torch.from_numpy(array)
    if tensor.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(tensor.shape)}")
    if tensor.is_complex():
        # A cast to real would silently drop the imaginary parts (torch only warns).
        raise ValueError(
            f"{name}: expected real features, got complex dtype {tensor.dtype}; pass the real and imaginary "
            "parts (or the magnitudes) as real features"
        )
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float64 if tensor.dtype == torch.int64 else torch.float32)
    if check_finite:
        check_finite_values(tensor, name)
    return tensor


def check_finite_values(tensor: torch.Tensor, name: str) -> None:
    """``ValueError`` naming ``name`` when the float ``tensor`` holds NaN or inf."""
    # One reduction pass is enough: a sum is finite unless some entry is NaN/inf (or it overflows, in
    # which case the exact element-wise check below decides).
    if not torch.isfinite(tensor.sum(dtype=compute_dtype(tensor.dtype))) and not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: contains NaN or infinite values")


def check_moments_memory(name: str, dim: int, device=None) -> None:
    """``ValueError`` naming ``name`` when second moments of ``dim`` features (and their PCA) would not fit in memory.

    Called before the `(D, D)` float64 sums are allocated: ``D = 100,000`` needs 74.5 GiB per matrix.
    """
    matrix = 8 * dim * dim
    check_memory(
        name,
        f"{dim:,} features need a {dim:,} x {dim:,} float64 second-moment matrix ({format_bytes(matrix)})",
        _MOMENT_MATRICES * matrix,
        device,
        hint="reduce the features (pool, project or subsample them)",
    )


def _reference_shift(first_rows: torch.Tensor) -> torch.Tensor:
    """The shift of :class:`SecondMoments`: the rows' mean, or zeros when centring would not pay.

    Summing products of rows with per-feature offset ``mu_j`` and spread ``sigma_j`` in floating point costs
    a relative error of about ``eps * (1 + mu_j^2 / sigma_j^2)``; when every ``mu_j^2 <= sigma_j^2`` that is
    at most one bit, and skipping the shift saves a copy of every batch (15% of the time on CIFAR-10).
    """
    dtype = compute_dtype(first_rows.dtype)  # half would overflow in the squares
    # Tiny float32 rows would underflow in the squares; a power of two leaves the decision and the mean exact.
    scale = _underflow_scale(first_rows)
    # Per-feature sums of x and x^2 over blocks (a decision, not a statistic: the input precision is enough).
    # mu^2 <= sigma^2 = E[x^2] - mu^2 is tested as 2 mu^2 <= E[x^2]: no subtraction, so no cancellation, and
    # two plain sums cost a quarter of torch's variance along dim 0. Squares that overflow float32 (|x| ~ 1e19
    # and up) read as inf, which selects no shift; SecondMoments.update then forms such products in float64.
    total = torch.zeros(first_rows.shape[1], dtype=dtype, device=first_rows.device)
    total_square = torch.zeros_like(total)
    for block in first_rows.split(_SHIFT_BLOCK_ROWS):
        block = block.to(dtype) if scale == 1.0 else block.to(dtype) * scale
        total += block.sum(0)
        total_square += block.square().sum(0)
    mean = total.to(torch.float64) / len(first_rows)
    mean_square = total_square.to(torch.float64) / len(first_rows)
    if bool((2 * mean.square() <= mean_square).all()):
        return torch.zeros_like(mean)
    # The shift itself is the rows' mean as torch computes it in the input precision (one more pass, only
    # when shifting), so that the sums keep the same low bits whichever way the decision was reached.
    return first_rows.to(dtype).mean(0).to(torch.float64)


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(tensor).all()) for tensor in tensors)


def _underflow_scale(chunk: torch.Tensor) -> float:
    """A power of two that brings tiny rows `(b, D)` (float32 or half) to unit scale before their products, else 1.0.

    Products of float32 features of magnitude 1e-22 are ~1e-44, below float32's smallest normal number (1.2e-38):
    they lose their digits or flush to zero, and the PCA then sees a few directions instead of all. float32 rows
    whose largest magnitude is below ``2**-40`` (~1e-12: squares 2**23 times above the smallest normal) are
    scaled by ``2**-e`` with ``peak = m 2**e``; scaling by a power of two is exact, and the float64 sums hold the
    scaled-back products of any float32 value. Rows of ordinary magnitude, and float64 rows (whose products are
    formed in float64), are left alone: their numbers stay bit-identical.
    """
    if compute_dtype(chunk.dtype) != torch.float32:
        return 1.0
    low, high = torch.aminmax(chunk)  # one pass, no |chunk| copy
    peak = max(-float(low), float(high))
    if not (0.0 < peak < _TINY_FLOAT32_PEAK):
        return 1.0
    return 2.0 ** -math.frexp(peak)[1]  # peak * scale in [0.5, 1)


def _chunk_products(chunk: torch.Tensor, targets: torch.Tensor | None):
    """float64 ``(sum (D,), outer (D, D), cross (D, T) or None)`` of one chunk `(b, D)` (targets `(b, T)`).

    The products run in the chunk's precision: torch reduces float32 with cascaded partial sums (error ~
    eps log b), so this is safe and 10x cheaper than casting every entry to float64 first. When a float32
    product overflows (features of magnitude ~1e19 and up) the chunk is redone in float64; the diagonal
    bounds every entry (``|o_ij| <= sqrt(o_ii o_jj)``), so checking it is enough and costs only ``O(D)``.
    Tiny rows are scaled to unit magnitude for the outer product and scaled back in float64, exactly
    (:func:`_underflow_scale`).
    """
    scale = _underflow_scale(chunk)
    if scale != 1.0:
        scaled = chunk * scale  # exact: a power of two
        outer = (scaled.T @ scaled).to(torch.float64) / scale**2  # (D, D); exact in float64
        return _finish_products(chunk, chunk.sum(0), outer, targets)
    attempt = chunk
    outer, chunk_sum = attempt.T @ attempt, attempt.sum(0)  # (D, D), (D,)
    if not _finite(outer.diagonal(), chunk_sum) and chunk.dtype != torch.float64:
        # Only now the float64 copy (2x the chunk's memory): building it up front cost 20% of the time.
        attempt = chunk.to(torch.float64)
        outer, chunk_sum = attempt.T @ attempt, attempt.sum(0)
    if not _finite(outer.diagonal(), chunk_sum):
        peak = float(chunk.abs().max())
        raise ValueError(f"X: second moments overflow float64 (max |x| = {peak:.3g}); rescale the features")
    return _finish_products(attempt, chunk_sum, outer, targets)


def _finish_products(rows: torch.Tensor, chunk_sum, outer, targets):
    """:func:`_chunk_products`' float64 result, with the cross moment of ``rows`` `(b, D)` and ``targets``."""
    cross = None
    if targets is not None:
        # (T, b) @ (b, D) runs as a proper GEMM; chunk.T @ targets takes a slow skinny path (5x).
        cross = (targets.to(rows.dtype).T @ rows).T.to(torch.float64)
    return chunk_sum.to(torch.float64), outer.to(torch.float64), cross


class SecondMoments:
    """Streaming, mergeable first and second moments of rows, summed in float64.

    Memory is ``O(D^2)`` whatever the number of rows. Each batch's products are formed in the input's
    precision (float32 for half-precision inputs, float64 where float32 would overflow) after subtracting a fixed shift (the first batch's mean), then added to float64 sums: the
    shift keeps float32 round-off at the scale of the data's spread instead of its offset (the classic
    shifted-data variance algorithm), while float32 batches keep float32 BLAS speed. Data that is already
    about centred (no feature's offset exceeds its spread) skips the shift and its copy of every batch.

    Optional targets ``Y`` (e.g. one-hot labels) are accumulated alongside, for regression probes: their
    sum and the cross moment with the rows. The number of target columns may grow between batches (a class
    first seen late); missing columns count as zeros.

    Attributes:
        count (`int`): rows seen.
        shift (`torch.DoubleTensor` of shape `(D,)`): the reference point of the sums.
        sum (`torch.DoubleTensor` of shape `(D,)`): ``sum_n (x_n - shift)``.
        outer (`torch.DoubleTensor` of shape `(D, D)`): ``sum_n (x_n - shift)(x_n - shift)^T``.
        target_sum (`torch.DoubleTensor` of shape `(T,)`): ``sum_n y_n`` (``None`` without targets).
        cross (`torch.DoubleTensor` of shape `(D, T)`): ``sum_n (x_n - shift) y_n^T``.
    """

    def __init__(self):
        self.dim = None
        self.dtype = torch.float32  # widest input precision seen: the eigensolver follows it
        self.device = None
        self.count = 0
        self.shift = self.sum = self.outer = None
        self.target_sum = self.cross = None

    def _allocate(self, dim: int, device, shift: torch.Tensor) -> None:
        self.dim, self.device = dim, device
        self.shift = shift.to(device=device, dtype=torch.float64)
        self.sum = torch.zeros(dim, dtype=torch.float64, device=device)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64, device=device)

    def update(self, X, targets=None) -> SecondMoments:
        """Add rows ``X`` of shape `(n, D)` and, optionally, their ``targets`` of shape `(n, T)`."""
        return self._add(as_float_tensor(X), targets)

    def _add(self, X: torch.Tensor, targets=None) -> SecondMoments:
        """:meth:`update` with rows ``X`` `(n, D)` that :func:`as_float_tensor` already validated."""
        if X.shape[0] == 0:
            return self
        if self.sum is None:
            check_moments_memory("X", X.shape[1], X.device)
            self._allocate(X.shape[1], X.device, _reference_shift(X[:_ACCUMULATE_ROWS]))
        elif X.shape[1] != self.dim:
            raise ValueError(
                f"X: expected {self.dim} features per row (as in earlier batches), got {X.shape[1]}"
            )
        if targets is not None:
            targets = as_float_tensor(targets, "targets").to(device=self.device, dtype=compute_dtype(X.dtype))
            if targets.shape[0] != X.shape[0]:
                raise ValueError(f"targets: expected {X.shape[0]} rows like X, got {targets.shape[0]}")
            self._grow_targets(targets.shape[1])
        dtype = compute_dtype(X.dtype)
        shift = self.shift.to(dtype) if self.shift.any() else None
        for start in range(0, X.shape[0], _ACCUMULATE_ROWS):
            chunk = X[start : start + _ACCUMULATE_ROWS].to(self.device, dtype)  # (b, D), float32/64
            if shift is not None:
                chunk = chunk - shift
            target_chunk = None if targets is None else targets[start : start + _ACCUMULATE_ROWS]  # (b, T')
            chunk_sum, outer, cross = _chunk_products(chunk, target_chunk)
            self.sum += chunk_sum
            self.outer += outer
            if target_chunk is not None:
                width = target_chunk.shape[1]
                self.target_sum[:width] += target_chunk.sum(0, dtype=torch.float64)
                self.cross[:, :width] += cross
        self.count += X.shape[0]
        if X.dtype == torch.float64:
            self.dtype = torch.float64
        return self

    def _grow_targets(self, width: int) -> None:
        """Make room for ``width`` target columns (zeros for columns never seen before)."""
        current = 0 if self.target_sum is None else self.target_sum.numel()
        if width <= current:
            return
        target_sum = torch.zeros(width, dtype=torch.float64, device=self.device)
        cross = torch.zeros(self.dim, width, dtype=torch.float64, device=self.device)
        if current:
            target_sum[:current], cross[:, :current] = self.target_sum, self.cross
        self.target_sum, self.cross = target_sum, cross

    def _rebased(self, shift: torch.Tensor):
        """``(sum, outer, cross)`` re-expressed around another shift (exact algebra, in float64)."""
        delta = (self.shift - shift).to(self.sum)  # x - new = (x - old) + delta
        total = self.sum + self.count * delta
        outer = self.outer + torch.outer(self.sum, delta) + torch.outer(delta, self.sum)
        outer += self.count * torch.outer(delta, delta)
        cross = None if self.cross is None else self.cross + torch.outer(delta, self.target_sum)
        return total, outer, cross

    def merge(self, other: SecondMoments) -> SecondMoments:
        """Add another accumulator's rows into this one (in place); returns self."""
        if other.count == 0:
            return self
        if self.count == 0:
            self._allocate(other.dim, other.device, other.shift)
        elif other.dim != self.dim:
            raise ValueError(f"cannot merge moments of {other.dim} features into moments of {self.dim}")
        other_sum, other_outer, other_cross = other._rebased(self.shift.to(other.sum.device))
        self.sum += other_sum.to(self.device)
        self.outer += other_outer.to(self.device)
        if other_cross is not None:
            width = other_cross.shape[1]
            self._grow_targets(width)
            self.target_sum[:width] += other.target_sum.to(self.device)
            self.cross[:, :width] += other_cross.to(self.device)
        self.count += other.count
        if other.dtype == torch.float64:
            self.dtype = torch.float64
        return self

    def all_reduce(self) -> SecondMoments:
        """Sum the statistics of every process of the default ``torch.distributed`` group (in place).

        A no-op without an initialised process group. Every rank must call it, and every rank must have
        seen at least one row (so that all agree on ``D``). Sums are re-based on the mean of the ranks'
        shifts, then all-reduced, so every rank ends with identical statistics.
        """
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return self
        if self.count == 0:
            raise ValueError("all_reduce: this process saw no rows; give every process at least one batch")
        dist = torch.distributed
        world = dist.get_world_size()
        # Agree on the number of target columns first (a rank may not have seen the last class).
        width = torch.tensor(
            [0 if self.target_sum is None else self.target_sum.numel()], device=self.sum.device
        )
        dist.all_reduce(width, op=dist.ReduceOp.MAX)
        if width.item() > 0:
            self._grow_targets(int(width.item()))
        common_shift = self.shift.clone()
        dist.all_reduce(common_shift)
        common_shift /= world
        self.sum, self.outer, cross = self._rebased(common_shift)
        self.shift = common_shift
        count = torch.tensor([float(self.count)], dtype=torch.float64, device=self.sum.device)
        tensors = [self.sum, self.outer, count]
        if cross is not None:
            self.cross = cross
            tensors += [self.target_sum, self.cross]
        for tensor in tensors:
            dist.all_reduce(tensor)
        self.count = int(count.item())
        wide = torch.tensor([int(self.dtype == torch.float64)], device=self.sum.device)
        dist.all_reduce(wide, op=dist.ReduceOp.MAX)
        self.dtype = torch.float64 if wide.item() else torch.float32
        return self

    @property
    def mean(self) -> torch.Tensor:
        """`(D,)` float64 mean of the rows."""
        self._check_fitted()
        return self.shift + self.sum / self.count

    def covariance(self) -> torch.Tensor:
        """`(D, D)` float64 covariance with the ``1/N`` normalisation (docs/science.md section 2: ``C = X^T X / N``)."""
        self._check_fitted()
        centred_mean = self.sum / self.count
        cov = self.outer / self.count - torch.outer(centred_mean, centred_mean)
        return (cov + cov.T) / 2

    def cross_covariance(self) -> torch.Tensor:
        """`(D, T)` float64 ``sum_n (x_n - mean)(y_n - mean_y)^T / N``."""
        self._check_fitted()
        if self.cross is None:
            raise ValueError("no targets accumulated: pass targets to update()")
        target_mean = self.target_sum / self.count
        return self.cross / self.count - torch.outer(self.sum / self.count, target_mean)

    def _check_fitted(self) -> None:
        if self.count == 0:
            raise ValueError("no rows accumulated yet: call update() with data first")
        # Cheap (O(D)) guard: a non-finite entry anywhere makes the diagonal or the sum non-finite in practice,
        # and the eigensolver checks the rest; a silent NaN would give chance-level probe accuracy.
        if not (bool(torch.isfinite(self.sum).all()) and bool(torch.isfinite(self.outer.diagonal()).all())):
            raise ValueError("second moments are not finite: the features overflow float64; rescale them")


def _eigh_descending(
    matrix: torch.Tensor, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a symmetric matrix sorted by decreasing eigenvalue, with deterministic signs.

    The decomposition runs in ``dtype``; results are float64. Returns ``(eigenvalues (D,), components
    (D, D))`` with the eigenvectors as *rows*. Each is flipped so that its entry of largest magnitude is
    positive (sklearn's ``svd_flip`` convention), which makes components reproducible across runs,
    processes and BLAS libraries.
    """
    if not bool(torch.isfinite(matrix).all()):
        raise ValueError("covariance: contains NaN or infinite values; the features overflow, rescale them")
    # float32 spans ~1e-38 .. 3e38: a covariance of features ~1e30 (entries ~1e60) would become inf in a
    # float32 solve. Scaling by a power of two is exact, so out-of-range matrices are brought to unit scale
    # and the eigenvalues scaled back; in-range matrices are left alone (results bit-identical).
    peak = float(matrix.diagonal().abs().max()) if matrix.numel() else 0.0
    scale = 1.0
    if dtype != torch.float64 and peak > 0 and not (2.0**-60 < peak < 2.0**60):
        scale = 2.0 ** round(math.log2(peak))
    values, vectors = torch.linalg.eigh((matrix / scale).to(dtype))  # ascending; eigenvectors as columns
    values = values.to(torch.float64) * scale
    if not (bool(torch.isfinite(values).all()) and bool(torch.isfinite(vectors).all())):
        raise ValueError(
            "covariance: the eigendecomposition returned non-finite values; rescale the features"
        )
    components = vectors.T.flip(0)  # (D, D) rows, decreasing; one copy, in the solver's precision
    return values.flip(0).to(torch.float64).clamp_min(0), fix_eigenvector_signs(components).to(torch.float64)


def fix_eigenvector_signs(components: torch.Tensor) -> torch.Tensor:
    """Flip each row of ``components`` `(k, D)` so that its entry of largest magnitude is positive.

    Eigenvectors are defined up to sign; this convention (sklearn's ``svd_flip``) makes them reproducible
    across runs, processes and BLAS libraries. Used by :class:`PCA` and by :mod:`hf_recperc.theory`.
    """
    largest = components.abs().argmax(1)
    signs = torch.sign(components.gather(1, largest[:, None]))  # (k, 1)
    signs[signs == 0] = 1
    return components * signs


class PCA:
    """Principal component analysis from streaming second moments (sklearn-style estimator).

    Args:
        standardize: divide every feature by its standard deviation before the decomposition (a PCA of
            the correlation matrix). Features of zero variance are left unscaled.
        eigh_dtype: precision of the eigendecomposition; by default that of the inputs (float32 unless a
            float64 batch was seen). Results are float64 either way.

    Fitted attributes:
        mean_ (`(D,)` float64), scale_ (`(D,)` float64, ones unless ``standardize``),
        eigenvalues_ (`(D,)`, decreasing; the ``1/N`` covariance's), components_ (`(D, D)`, rows are
        unit principal directions), explained_variance_ratio_ (`(D,)`), n_samples_seen_ (`int`),
        moments_ (:class:`SecondMoments`).

    Example:
        >>> import torch
        >>> pca = PCA().fit(torch.randn(100, 5))
        >>> pca.transform(torch.randn(3, 5), "first:2").shape
        torch.Size([3, 2])
    """

    def __init__(self, standardize: bool = False, eigh_dtype: torch.dtype | None = None):
        self.standardize = standardize
        self.eigh_dtype = eigh_dtype

    def fit(self, X) -> PCA:
        """Fit on rows ``X`` of shape `(N, D)`; returns self."""
        return self.fit_from_moments(SecondMoments().update(X))

    def fit_from_moments(self, moments: SecondMoments) -> PCA:
        """Fit from accumulated (possibly merged / all-reduced) moments; returns self."""
        covariance = moments.covariance()
        std = covariance.diagonal().clamp_min(0).sqrt()
        scale = torch.where(std > 0, std, torch.ones_like(std)) if self.standardize else torch.ones_like(std)
        if self.standardize:
            covariance = covariance / scale[:, None] / scale[None, :]
        # The eigensolver follows the input precision (float32 features -> float32 eigh, 1.7x faster on
        # CPU): batch products of float32 rows already limit the covariance to float32 accuracy, so a
        # float64 solve would not buy real digits. Float64 features get a float64 solve.
        eigenvalues, components = _eigh_descending(covariance, self.eigh_dtype or moments.dtype)
        self.moments_ = moments
        self.mean_ = moments.mean
        self.scale_ = scale
        self.eigenvalues_ = eigenvalues
        self.components_ = components
        total = eigenvalues.sum()
        self.explained_variance_ratio_ = eigenvalues / total if total > 0 else torch.zeros_like(eigenvalues)
        self.n_samples_seen_ = moments.count
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "components_"):
            raise ValueError(f"This {type(self).__name__} instance is not fitted yet: call fit() first")

    def subspace(self, spec: str | SubspaceSpec) -> torch.Tensor:
        """Indices of the components in ``spec`` (see :func:`subspace_indices`)."""
        self._check_fitted()
        return subspace_indices(spec, self.explained_variance_ratio_)

    def explained_variance(self, spec: str | SubspaceSpec) -> float:
        """Fraction of the total variance that the subspace ``spec`` holds."""
        return float(self.explained_variance_ratio_[self.subspace(spec)].sum())

    def basis(self, spec: str | SubspaceSpec) -> torch.Tensor:
        """Orthonormal basis ``U_S`` of shape `(D, d)` (columns) of the subspace ``spec``."""
        return self.components_[self.subspace(spec)].T

    def transform(self, X, spec: str | SubspaceSpec = "all") -> torch.Tensor:
        """Coordinates ``U_S^T (x - mean) / scale``: `(N, D)` -> `(N, d)` float64."""
        basis = self.basis(spec)
        X = as_float_tensor(X).to(device=basis.device, dtype=torch.float64)
        return ((X - self.mean_) / self.scale_) @ basis

    def project(self, X, spec: str | SubspaceSpec, add_mean: bool = False) -> torch.Tensor:
        """Projection onto a subspace in input space: ``U_S U_S^T (x - mean)``, shape `(N, D)` float64.

        For images, reshape the result back to `(N, C, H, W)` to look at it or to train a network on it
        (docs/science.md, E1/E2). ``add_mean=True`` adds the mean image back. Projections onto ``top:p`` and
        ``bottom:(1-p)`` sum to the centred input.
        """
        basis = self.basis(spec)  # (D, d)
        X = as_float_tensor(X).to(device=basis.device, dtype=torch.float64)
        centred = (X - self.mean_) / self.scale_
        projected = (centred @ basis) @ basis.T * self.scale_
        return projected + self.mean_ if add_mean else projected


def num_components(spec: str, explained_variance_ratio) -> int:
    """Number of components the subspace ``spec`` keeps (convenience for reports)."""
    return int(subspace_indices(spec, explained_variance_ratio).numel())
