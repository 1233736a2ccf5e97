"""Issue 12 rows 1 and 13: half-precision and huge features, non-finite statistics, sparse and unsigned ids."""

import time

import evaluate
import numpy as np
import pytest
import torch
from conftest import assert_same_metric_results

import hf_recperc
from hf_recperc import PCA, SecondMoments, SubspaceProbe
from hf_recperc.experiments import fit_pixel_pca


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)


def loud_problem(num_rows=5000, dim=64, seed=0):
    """The issue's reproduction: ``normal(5000, 64) * 5`` with a class signal (float16 sums overflow)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(num_rows) % 4
    features = rng.normal(size=(num_rows, dim)) * 5
    features[:, :4] += 4 * np.eye(4)[labels]
    return features.astype(np.float32), labels


@pytest.mark.parametrize("dtype", [np.float16, "bfloat16"])
def test_metric_on_half_precision_features_gives_the_float32_answer(metric, dtype):
    X, y = loud_problem()
    half = torch.from_numpy(X).to(torch.bfloat16) if dtype == "bfloat16" else X.astype(dtype)
    widened = half.float().numpy() if dtype == "bfloat16" else half.astype(np.float32)
    expected = metric.compute(predictions=widened, references=y, subspaces=["all", "first:8"])
    result = metric.compute(predictions=half, references=y, subspaces=["all", "first:8"])
    assert expected["accuracy/all"] > 0.4  # the signal is found (the old code gave chance, 0.25 here)
    assert_same_metric_results(result, expected, 1e-3)
    # Rounding to half moves features by ~1e-3 relative: the answer stays that of the float32 data.
    assert_same_metric_results(
        result, metric.compute(predictions=X, references=y, subspaces=["all", "first:8"]), 0.02
    )


def test_probe_and_moments_accumulate_half_precision_in_float32_or_wider():
    X, y = loud_problem()
    half = torch.from_numpy(X).half()
    moments = SecondMoments().update(half)
    reference = SecondMoments().update(half.float())
    assert torch.isfinite(moments.covariance()).all()
    torch.testing.assert_close(moments.covariance(), reference.covariance(), rtol=1e-5, atol=1e-4)
    probe = SubspaceProbe(subspaces=("all",))
    for rows in torch.arange(len(X)).split(1000):
        probe.partial_fit(half[rows], y[rows.numpy()])
    expected = SubspaceProbe(subspaces=("all",)).fit(half.float(), y)
    assert_same_metric_results(probe.score(half, y), expected.score(half.float(), y), 1e-3)
    torch.testing.assert_close(probe.eigenvalues_, expected.eigenvalues_, rtol=1e-4, atol=1e-6)


def test_pixel_pca_of_the_experiments_accepts_half_precision_pixels():
    X, _ = loud_problem(num_rows=6000, dim=48)
    half = fit_pixel_pca(X.astype(np.float16), cache=False)
    full = fit_pixel_pca(X.astype(np.float16).astype(np.float32), cache=False)
    assert torch.isfinite(half.eigenvalues_).all()
    torch.testing.assert_close(half.eigenvalues_, full.eigenvalues_, rtol=1e-4, atol=1e-6)


def test_features_too_large_for_float32_products_give_the_right_answer(metric):
    X, y = loud_problem(num_rows=2000, dim=16)
    expected = metric.compute(predictions=X.astype(np.float64), references=y, subspaces=["all", "first:4"])
    # 5e30 squared overflows float32 (3.4e38): the products are redone in float64, the eigensolver rescaled.
    huge = X * np.float32(1e30)
    assert np.isfinite(huge).all()
    result = metric.compute(predictions=huge, references=y, subspaces=["all", "first:4"])
    assert_same_metric_results(result, expected, 1e-6)
    pca = PCA().fit(huge)
    torch.testing.assert_close(
        pca.eigenvalues_ / 1e60, PCA().fit(X.astype(np.float64)).eigenvalues_, rtol=1e-4, atol=0
    )


def test_non_finite_statistics_are_an_error_not_a_linalg_error():
    X, y = loud_problem(num_rows=500, dim=8)
    overflowing = X.astype(np.float64) * 1e160  # squares overflow even float64
    with pytest.raises(ValueError, match="overflow"):
        SubspaceProbe().fit(overflowing, y)
    with pytest.raises(ValueError, match="overflow"):
        PCA().fit(overflowing)


def test_sparse_class_ids_take_memory_for_the_classes_present_only():
    rng = np.random.default_rng(0)
    labels = np.where(np.arange(1000) % 2 == 0, 0, 1_000_000)
    X = rng.normal(size=(1000, 8)).astype(np.float32)
    X[:, 0] += 3 * (labels > 0)
    start = time.perf_counter()
    probe = SubspaceProbe(subspaces=("all",)).fit(X, labels)
    result = probe.score(X, labels)
    assert time.perf_counter() - start < 5  # the one-hot of a million columns took a minute and 10 GB
    assert probe.moments_.cross.shape == (8, 2) and probe.classes_.tolist() == [0, 1_000_000]
    assert result["accuracy/all"] > 0.9
    assert set(probe.predict(X).tolist()) == {0, 1_000_000}  # original ids, not column positions
    assert probe.decision_function(X, "all").shape == (1000, 2)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint32, np.uint64, np.int16])
def test_unsigned_and_narrow_integer_labels_are_accepted(metric, dtype):
    X, y = loud_problem(num_rows=600, dim=8)
    expected = metric.compute(predictions=X, references=y, subspaces=["all"])
    assert metric.compute(predictions=X, references=y.astype(dtype), subspaces=["all"]) == expected
    assert SubspaceProbe().fit(X, y.astype(dtype)).score(X, y.astype(dtype)) == SubspaceProbe().fit(
        X, y
    ).score(X, y)


def test_ids_compacted_per_batch_and_merged_give_the_one_shot_answer():
    X, y = loud_problem(num_rows=900, dim=10)
    X = X.astype(np.float64)  # float64 sums: batching changes nothing but round-off ~1e-16
    ids = np.array([7, 3, 1_000, 42])[y]  # sparse ids, first met in a different order in each batch
    streamed = SubspaceProbe(subspaces=("all", "first:3"))
    for rows in (np.arange(900)[::-1][:300], np.arange(600), np.arange(900)[600:][::-1]):
        streamed.partial_fit(X[rows], ids[rows])
    direct = SubspaceProbe(subspaces=("all", "first:3")).fit(
        np.concatenate([X[::-1][:300], X[:600], X[600:][::-1]]),
        np.concatenate([ids[::-1][:300], ids[:600], ids[600:][::-1]]),
    )
    assert streamed.classes_.tolist() == [3, 7, 42, 1_000] == direct.classes_.tolist()
    assert_same_metric_results(streamed.score(X, ids), direct.score(X, ids), 1e-12)
    torch.testing.assert_close(streamed.coef_, direct.coef_, rtol=1e-9, atol=1e-12)


def test_one_label_check_behind_every_caller(metric):
    from hf_recperc.validation import check_labels

    with pytest.raises(ValueError, match="y: class ids must be >= 0"):
        check_labels("y", [0, -1])
    with pytest.raises(ValueError, match="y: expected integer class ids, got dtype"):
        check_labels("y", np.array([0.5, 1.0]))
    with pytest.raises(ValueError, match="y: expected integer class ids, got dtype torch.bool"):
        check_labels("y", torch.tensor([True, False]))
    X, y = loud_problem(num_rows=100, dim=4)
    with pytest.raises(ValueError, match="references: class ids must be >= 0"):
        metric.compute(predictions=X, references=y - 1)
    with pytest.raises(ValueError, match="y: class ids must be >= 0"):
        SubspaceProbe().fit(X, y - 1)
    with pytest.raises(ValueError, match="labels: class ids must be >= 0"):
        hf_recperc.task_alignment(X.astype(np.float64), y - 1)
