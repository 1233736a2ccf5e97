"""Subspace definitions (docs/science.md section 2), streaming moments and PCA."""

import numpy as np
import pytest
import torch

from hf_recperc.spectral import PCA, SecondMoments, fix_eigenvector_signs, parse_subspace, subspace_indices

RATIOS = torch.tensor([0.5, 0.2, 0.15, 0.1, 0.05], dtype=torch.float64)  # cumulative 0.5 .7 .85 .95 1


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("top:0.5", [0]),
        ("top:0.85", [0, 1, 2]),  # c_i <= p, boundary included
        ("top:0.9", [0, 1, 2]),
        ("top:1", [0, 1, 2, 3, 4]),
        ("bottom:0.15", [3, 4]),  # c_i > 0.85
        ("bottom:0.5", [1, 2, 3, 4]),
        ("first:2", [0, 1]),
        ("last:2", [3, 4]),
        ("first:4", [0, 1, 2, 3]),
        ("last:4", [1, 2, 3, 4]),
        ("all", [0, 1, 2, 3, 4]),
    ],
)
def test_subspace_indices_follow_the_paper_definitions(spec, expected):
    assert subspace_indices(spec, RATIOS).tolist() == expected


@pytest.mark.parametrize("p", [0.5, 0.7, 0.85, 0.9, 0.95])
def test_top_and_bottom_are_complements(p):
    top = set(subspace_indices(f"top:{p}", RATIOS).tolist())
    bottom = set(subspace_indices(f"bottom:{1 - p:.10g}", RATIOS).tolist())
    assert top.isdisjoint(bottom) and top | bottom == set(range(5))


def test_top_explains_at_most_p_and_bottom_at_least_q():
    ratios = torch.distributions.Dirichlet(torch.ones(50)).sample().sort(descending=True).values.double()
    for fraction in (0.3, 0.6, 0.9):
        try:
            top = subspace_indices(f"top:{fraction}", ratios)
            assert ratios[top].sum() <= fraction + 1e-12
        except ValueError:
            assert ratios[0] > fraction
        bottom = subspace_indices(f"bottom:{fraction}", ratios)
        assert ratios[bottom].sum() >= fraction - 1e-12


@pytest.mark.parametrize(
    "spec, message",
    [
        ("top:1.3", "fraction must be in (0, 1]"),
        ("bottom:0", "fraction must be in (0, 1]"),
        ("top:abc", "is not a number"),
        ("middle:0.5", "unknown form"),
        ("first:0", "integer >= 1"),
        ("last:2.5", "integer >= 1"),
        ("top", "unknown form"),
    ],
)
def test_bad_subspace_strings_are_rejected_with_the_reason(spec, message):
    with pytest.raises(ValueError, match=f"subspace '{spec}'.*") as info:
        parse_subspace(spec)
    assert message in str(info.value)


def test_empty_subspaces_say_why():
    with pytest.raises(ValueError, match=r"'top:0.3' is empty: the first component alone explains 0.5"):
        subspace_indices("top:0.3", RATIOS)
    with pytest.raises(ValueError, match="asks for 9 components but only 5 exist"):
        subspace_indices("first:9", RATIOS)


def test_streaming_moments_equal_batch_moments_and_merge():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(500, 7)) * 3 + 100.0  # a large offset: the shift keeps float32 sums accurate
    whole = SecondMoments().update(X)
    streamed = SecondMoments()
    for chunk in np.array_split(X, 7):
        streamed.update(chunk.astype(np.float32))
    left, right = SecondMoments().update(X[:123]), SecondMoments().update(X[123:] + 0)
    merged = left.merge(right)
    expected_cov = np.cov(X, rowvar=False, bias=True)
    for moments, tol in ((whole, 1e-10), (merged, 1e-10), (streamed, 1e-4)):
        assert moments.count == 500
        np.testing.assert_allclose(moments.mean.numpy(), X.mean(0), rtol=1e-6)
        np.testing.assert_allclose(moments.covariance().numpy(), expected_cov, atol=tol * 9)


def test_shift_is_used_only_where_an_offset_would_cost_precision():
    rng = np.random.default_rng(4)
    centred = rng.normal(size=(400, 5))
    assert not SecondMoments().update(centred).shift.any()
    offset = SecondMoments().update(centred.astype(np.float32) + 1e4)
    np.testing.assert_allclose(offset.shift.numpy(), centred.mean(0) + 1e4, rtol=1e-6)
    # float32 rows 1e4 away from the origin still give float32-accurate covariances thanks to the shift.
    np.testing.assert_allclose(
        offset.covariance().numpy(), np.cov(centred, rowvar=False, bias=True), atol=2e-3
    )


def test_moments_accumulate_targets_with_growing_width():
    rng = np.random.default_rng(1)
    X, Y = rng.normal(size=(60, 4)), rng.normal(size=(60, 3))
    moments = SecondMoments().update(X[:30], Y[:30, :2]).update(X[30:], Y[30:])
    Y_seen = Y.copy()
    Y_seen[:30, 2] = 0  # the first batch had no third column: it counts as zeros
    expected = (X - X.mean(0)).T @ (Y_seen - Y_seen.mean(0)) / 60
    np.testing.assert_allclose(moments.cross_covariance().numpy(), expected, atol=1e-12)


def test_pca_matches_numpy_eigendecomposition_with_deterministic_signs():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))
    pca = PCA().fit(X)
    values, vectors = np.linalg.eigh(np.cov(X, rowvar=False, bias=True))
    np.testing.assert_allclose(pca.eigenvalues_.numpy(), values[::-1], rtol=1e-9)
    for component, vector in zip(pca.components_.numpy(), vectors[:, ::-1].T):
        np.testing.assert_allclose(abs(component @ vector), 1.0, atol=1e-9)
        assert component[np.argmax(np.abs(component))] > 0
    refit = PCA().fit(X[::-1].copy())
    np.testing.assert_allclose(refit.components_.numpy(), pca.components_.numpy(), atol=1e-9)
    np.testing.assert_allclose(pca.explained_variance_ratio_.sum().item(), 1.0)


def test_projection_is_idempotent_and_complements_sum_to_the_centred_input():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(200, 12)) @ rng.normal(size=(12, 12)) + 5
    pca = PCA().fit(X)
    top, bottom = pca.project(X, "top:0.8"), pca.project(X, "bottom:0.2")
    np.testing.assert_allclose((top + bottom).numpy(), X - X.mean(0), atol=1e-9)
    again = pca.project(top.numpy() + pca.mean_.numpy(), "top:0.8")
    np.testing.assert_allclose(again.numpy(), top.numpy(), atol=1e-9)
    assert abs(float((top * bottom).sum())) < 1e-6  # orthogonal subspaces


def test_inputs_are_validated():
    with pytest.raises(ValueError, match="X: contains NaN"):
        SecondMoments().update(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="X: expected a rectangular"):
        SecondMoments().update([[1.0, 2.0], [3.0]])
    with pytest.raises(ValueError, match="X: expected 3 features per row"):
        SecondMoments().update(np.ones((2, 3))).update(np.ones((2, 4)))


def test_fix_eigenvector_signs_is_sign_invariant():
    # Each row's largest-magnitude entry ends positive, whatever sign the solver returned.
    rows = torch.randn(5, 7, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0], dtype=torch.float64)[:, None]
    fixed = fix_eigenvector_signs(rows)
    assert torch.equal(fix_eigenvector_signs(rows * signs), fixed)
    assert (fixed.gather(1, fixed.abs().argmax(1, keepdim=True)) > 0).all()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_complex_features_are_refused(dtype):
    """Trust 14: complex features are refused with one line naming the argument, never cast to real (dropping
    the imaginary parts) in the moments, the probe, the metric or the theory."""
    from hf_recperc import SubspaceProbe
    from hf_recperc.streaming import subspace_probe_accuracy
    from hf_recperc.theory import LinearTheory

    X = (np.arange(40).reshape(20, 2) + 1j).astype(dtype)
    y = np.arange(20) % 2
    calls = [
        ("X", lambda: SecondMoments().update(X)),
        ("X", lambda: SecondMoments().update(torch.from_numpy(X))),
        ("X", lambda: SubspaceProbe().fit(X, y)),
        ("predictions", lambda: subspace_probe_accuracy(X, y)),
        ("train_predictions", lambda: subspace_probe_accuracy(X.real, y, X, y)),
        ("X", lambda: LinearTheory(X)),
    ]
    for name, call in calls:
        with pytest.raises(ValueError, match=rf"^{name}: expected real features, got complex dtype"):
            call()
