"""SubspaceProbe: closed-form ridge vs scikit-learn, logistic, streaming, CIFAR-10 reference numbers."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA as SklearnPCA
from sklearn.linear_model import LogisticRegression, RidgeClassifier

from hf_recperc import SubspaceProbe

CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def make_problem(num_rows=600, dim=20, num_classes=4, seed=0):
    """Gaussian classes whose means differ along low-variance directions, plus loud nuisance ones."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, num_rows)
    scales = np.geomspace(10, 0.1, dim)
    X = rng.normal(size=(num_rows, dim)) * scales
    X[:, -num_classes:] += 0.3 * np.eye(num_classes)[labels]
    return X.astype(np.float32), labels


@pytest.mark.parametrize("spec", ["top:0.9", "bottom:0.2", "first:3", "last:5", "all"])
def test_ridge_equals_sklearn_pca_plus_ridge_classifier(spec):
    X, y = make_problem()
    X_test, y_test = make_problem(seed=1)
    X, X_test = X.astype(np.float64), X_test.astype(np.float64)  # float64 in -> float64 eigh
    probe = SubspaceProbe(subspaces=(spec,), ridge=1e-3).fit(X, y)
    index = probe.pca_.subspace(spec).numpy()

    pca = SklearnPCA(svd_solver="covariance_eigh").fit(X.astype(np.float64))
    # Covariance units -> sklearn's summed loss: alpha_sklearn = N * alpha; RidgeClassifier's {-1, 1}
    # targets are 2 * one-hot - 1, an affine map that leaves the argmax unchanged and doubles the scores.
    classifier = RidgeClassifier(alpha=len(X) * probe.alpha_).fit(pca.transform(X)[:, index], y)
    ours = probe.decision_function(X_test, spec).numpy()
    theirs = classifier.decision_function(pca.transform(X_test.astype(np.float64))[:, index])
    np.testing.assert_allclose(2 * ours - 1, theirs, atol=1e-6)
    np.testing.assert_array_equal(
        probe.predict(X_test, spec).numpy(),
        classifier.predict(pca.transform(X_test.astype(np.float64))[:, index]),
    )


def test_logistic_within_one_point_of_sklearn():
    X, y = make_problem(num_rows=1500, seed=2)
    X_test, y_test = make_problem(num_rows=1500, seed=3)
    probe = SubspaceProbe(subspaces=("bottom:0.2", "all"), probe="logistic", ridge=1e-3).fit(X, y)
    scores = probe.score(X_test, y_test)
    pca = SklearnPCA(svd_solver="covariance_eigh").fit(X.astype(np.float64))
    for spec in ("bottom:0.2", "all"):
        index = probe.pca_.subspace(spec).numpy()
        sklearn = LogisticRegression(C=1 / (len(X) * probe.alpha_), max_iter=5000, tol=1e-10)
        sklearn.fit(pca.transform(X)[:, index], y)
        expected = sklearn.score(pca.transform(X_test.astype(np.float64))[:, index], y_test)
        assert abs(scores[f"accuracy/{spec}"] - expected) <= 0.01, (spec, scores, expected)
    assert scores["probe"] == "logistic"


def test_partial_fit_over_batches_equals_fit():
    X, y = make_problem(num_rows=500)
    X = X.astype(np.float64)
    whole = SubspaceProbe().fit(X, y)
    streamed = SubspaceProbe()
    for rows in np.array_split(np.arange(len(X)), 9):
        streamed.partial_fit(X[rows], y[rows])
    assert streamed.score(X, y) == pytest.approx(whole.score(X, y), abs=1e-10)
    for spec in whole.subspaces:
        np.testing.assert_allclose(
            streamed.decision_function(X, spec).numpy(), whole.decision_function(X, spec).numpy(), atol=1e-9
        )
    # float32 batches: products round differently than one big product, at the 1e-8 level.
    streamed32 = SubspaceProbe()
    for rows in np.array_split(np.arange(len(X)), 9):
        streamed32.partial_fit(X[rows].astype(np.float32), y[rows])
    assert streamed32.score(X, y) == pytest.approx(whole.score(X, y), abs=1e-6)


def test_classes_first_seen_in_a_later_batch_are_handled():
    X, y = make_problem(num_rows=400, num_classes=3)
    order = np.argsort(y, kind="stable")  # batch 1 holds classes 0-1 only
    streamed = SubspaceProbe(subspaces=("all",))
    streamed.partial_fit(X[order[:200]], y[order[:200]]).partial_fit(X[order[200:]], y[order[200:]])
    assert streamed.score(X, y) == pytest.approx(SubspaceProbe(subspaces=("all",)).fit(X, y).score(X, y))


def test_the_label_lives_where_the_probe_can_see_it():
    X, y = make_problem(num_rows=2000, num_classes=4)
    result = SubspaceProbe(subspaces=("first:8", "last:8")).fit(X, y).score(X, y)
    assert result["accuracy/last:8"] > 0.7 > 0.4 > result["accuracy/first:8"]
    assert result["dims/last:8"] == 8 and result["num_train"] == 2000
    assert 0 < result["explained_variance/last:8"] < result["explained_variance/first:8"] < 1


def test_accuracy_curve_agrees_with_first_and_last_k():
    X, y = make_problem(num_rows=300, dim=10)
    probe = SubspaceProbe(subspaces=("first:3", "last:4", "all")).fit(X, y)
    curve = probe.accuracy_curve(X, y)
    score = probe.score(X, y)
    assert curve["top"][2] == pytest.approx(score["accuracy/first:3"])
    assert curve["bottom"][3] == pytest.approx(score["accuracy/last:4"])
    assert curve["top"][-1] == pytest.approx(curve["bottom"][-1]) == pytest.approx(score["accuracy/all"])
    assert curve["explained_variance_top"][-1] == pytest.approx(1.0)


def test_float32_and_float64_inputs_and_tensors_agree():
    X, y = make_problem()
    a = SubspaceProbe().fit(X, y).score(X, y)
    b = SubspaceProbe().fit(torch.from_numpy(X.astype(np.float64)), torch.from_numpy(y)).score(X, y)
    assert a == pytest.approx(b, abs=1e-6)


@pytest.mark.parametrize(
    "kwargs, data, message",
    [
        ({"probe": "svm"}, None, "probe: expected one of"),
        ({"ridge": -1.0}, None, "ridge: expected a finite number >= 0"),
        ({"subspaces": "top:0.9"}, None, "subspaces: expected a non-empty list"),
        ({"subspaces": ("top:2",)}, None, "fraction must be in"),
        ({}, "nan", "X: contains NaN"),
        ({}, "length", "y: expected 600 integer labels"),
        ({}, "one_class", "at least 2 classes"),
        ({}, "negative", "class ids must be >= 0"),
    ],
)
def test_bad_input_is_rejected_naming_the_argument(kwargs, data, message):
    X, y = make_problem()
    if data == "nan":
        X[3, 2] = np.nan
    elif data == "length":
        y = y[:-1]
    elif data == "one_class":
        y = np.zeros_like(y)
    elif data == "negative":
        y = y - 1
    with pytest.raises(ValueError, match=message):
        SubspaceProbe(**kwargs).fit(X, y)


def test_logistic_refuses_partial_fit_and_unfitted_probe_says_so():
    X, y = make_problem()
    with pytest.raises(ValueError, match="use fit"):
        SubspaceProbe(probe="logistic").partial_fit(X, y)
    with pytest.raises(ValueError, match="not fitted yet"):
        SubspaceProbe().score(X, y)


def test_two_processes_give_the_score_of_one(tmp_path):
    """torchrun, 2 gloo processes on CPU: each sees half the rows, all_reduce merges the statistics."""
    worker = Path(__file__).with_name("distributed_probe_worker.py")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        "29533",
        str(worker),
        str(tmp_path),
    ]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-3000:]
    X, y = make_problem(num_rows=601)
    expected = SubspaceProbe().fit(X, y).score(X, y)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got["world_size"] == 2 and got["rows_seen_locally"] < 601
        # float32 rows: per-rank products round differently from one product, at the 1e-8 level.
        assert got["score"] == pytest.approx(expected, abs=1e-6)
        assert {k: v for k, v in got["score"].items() if k.startswith("accuracy")} == {
            k: v for k, v in expected.items() if k.startswith("accuracy")
        }


@pytest.mark.cifar10
@pytest.mark.skipif(not CIFAR10.exists(), reason=f"CIFAR-10 parquet files not found at {CIFAR10}")
def test_cifar10_reference_numbers():
    """shared/data/cifar10/README.md: top:0.9 64 dims 0.386, bottom:0.2 3,055 dims 0.234, all 0.397."""
    import evaluate

    import hf_recperc
    from hf_recperc.images import images_to_array, load_image_dataset, paper_preprocessing

    data = load_image_dataset(str(CIFAR10))
    train, test = paper_preprocessing(
        images_to_array(data.train, data.image_column), images_to_array(data.validation, data.image_column)
    )
    metric = evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    result = metric.compute(
        predictions=test,
        references=np.asarray(data.validation[data.label_column]),
        train_predictions=train,
        train_references=np.asarray(data.train[data.label_column]),
    )
    assert result["dims/top:0.9"] == 64 and result["dims/bottom:0.2"] == 3055 and result["dims/all"] == 3072
    assert result["explained_variance/top:0.9"] == pytest.approx(0.899, abs=0.0005)
    assert result["explained_variance/bottom:0.2"] == pytest.approx(0.205, abs=0.0005)
    assert result["accuracy/top:0.9"] == pytest.approx(0.386, abs=0.005)
    assert result["accuracy/bottom:0.2"] == pytest.approx(0.234, abs=0.005)
    assert result["accuracy/all"] == pytest.approx(0.397, abs=0.005)
    assert result["num_train"] == 50000 and result["probe"] == "ridge"


def test_tiny_float32_features_give_the_numbers_of_unit_features():
    """Trust 13: float32 features of magnitude ~1e-22 (products below float32's smallest normal number) give the
    same dims and accuracies as the same features at unit magnitude, in the probe and in the metric, bit for bit
    (a power-of-two scale is exact)."""
    from hf_recperc.streaming import subspace_probe_accuracy

    X, y = make_problem(num_rows=1200, dim=48)
    tiny = X * np.float32(2.0**-74)  # max |x| ~ 1e-21, most entries ~1e-23
    assert np.abs(tiny).max() < 1e-20
    assert SubspaceProbe().fit(tiny, y).score(tiny, y) == SubspaceProbe().fit(X, y).score(X, y)
    assert subspace_probe_accuracy(tiny, y) == subspace_probe_accuracy(X, y)
