"""The `evaluate` module: offline loading, result format, split, array fast path, validation."""

import evaluate
import numpy as np
import pytest

import hf_recperc
from hf_recperc import SubspaceProbe


@pytest.fixture(scope="module")
def metric():
    return evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY)


def make_problem(num_rows=500, dim=10, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.arange(num_rows) % 3
    features = rng.normal(size=(num_rows, dim)) * np.geomspace(5, 0.2, dim)
    features[:, -3:] += 0.5 * np.eye(3)[labels]
    return features.astype(np.float32), labels


def test_load_is_offline_and_the_path_is_exported(metric):
    assert metric.name == "subspace_probe_accuracy"
    assert "arXiv" in metric.citation or "Balestriero" in metric.citation
    assert "train_predictions" in metric.inputs_description


def test_result_is_a_flat_dict_of_python_scalars(metric):
    X, y = make_problem()
    X_test, y_test = make_problem(seed=1)
    result = metric.compute(predictions=X_test, references=y_test, train_predictions=X, train_references=y)
    expected_keys = {
        f"{what}/{spec}"
        for what in ("accuracy", "dims", "explained_variance")
        for spec in ("top:0.9", "bottom:0.2", "all")
    } | {"probe", "num_train"}
    assert set(result) == expected_keys
    assert all(type(v) in (float, int, str) for v in result.values())
    assert result["num_train"] == 500 and result["probe"] == "ridge"
    assert result == SubspaceProbe().fit(X, y).score(X_test, y_test)


def test_without_train_data_a_deterministic_stratified_split_is_used(metric):
    X, y = make_problem(num_rows=600)
    first = metric.compute(predictions=X, references=y, subspaces=["all"], seed=3)
    again = metric.compute(predictions=X, references=y, subspaces=["all"], seed=3)
    other = metric.compute(predictions=X, references=y, subspaces=["all"], seed=4)
    assert first == again and first["num_train"] == 480  # 80% of each class of 200
    assert first != other  # another seed, another split


def test_add_batch_path_gives_the_same_result(metric):
    X, y = make_problem()
    direct = metric.compute(predictions=X, references=y, subspaces=["first:2", "all"])
    for rows in np.array_split(np.arange(len(X)), 4):
        metric.add_batch(predictions=X[rows], references=y[rows])
    buffered = metric.compute(subspaces=["first:2", "all"])
    assert buffered["num_train"] == direct["num_train"]
    for key in ("accuracy/first:2", "accuracy/all", "dims/all"):
        assert buffered[key] == pytest.approx(direct[key], abs=1e-9)


def test_logistic_read_out_is_reported(metric):
    X, y = make_problem()
    result = metric.compute(predictions=X, references=y, probe="logistic", subspaces=["all"])
    assert result["probe"] == "logistic" and result["accuracy/all"] > 0.5


@pytest.mark.parametrize(
    "change, message",
    [
        ({"predictions": "nan"}, "predictions: contains NaN"),
        ({"predictions": "ragged"}, "predictions: expected a rectangular"),
        ({"references": "short"}, "references: expected 500 integer labels"),
        ({"references": "one_class"}, "references: need at least 2 classes"),
        ({"subspaces": ["middle:3"]}, "subspace 'middle:3': unknown form"),
        ({"subspaces": ["top:1.5"]}, r"subspace 'top:1.5': fraction must be in \(0, 1\]"),
        ({"train_predictions": "alone"}, "give both or neither"),
        ({"probe": "knn"}, "probe: expected one of"),
    ],
)
def test_bad_input_names_the_argument(metric, change, message):
    X, y = make_problem()
    kwargs = {"predictions": X, "references": y}
    for key, value in change.items():
        if value == "nan":
            X = X.copy()
            X[0, 0] = np.nan
            kwargs[key] = X
        elif value == "ragged":
            kwargs[key] = [[1.0, 2.0], [3.0]]
            kwargs["references"] = [0, 1]
        elif value == "short":
            kwargs[key] = y[:-1]
        elif value == "one_class":
            kwargs[key] = np.zeros_like(y)
        elif value == "alone":
            kwargs[key] = X
        else:
            kwargs[key] = value
    with pytest.raises(ValueError, match=message):
        metric.compute(**kwargs)


def test_a_one_class_evaluation_set_is_fine_when_training_data_is_given(metric):
    X, y = make_problem()
    result = metric.compute(
        predictions=X[y == 1],
        references=y[y == 1],
        train_predictions=X,
        train_references=y,
        subspaces=["all"],
    )
    assert 0 <= result["accuracy/all"] <= 1
    with pytest.raises(ValueError, match="references: class ids must be >= 0"):
        metric.compute(predictions=X, references=y - 1)


# ---- Citizen 10: evaluate's common metric checks (its tests/test_metric_common.py) and combine ----


def test_evaluate_common_checks_compute_signature_and_docstring_examples():
    """Citizen 10: as evaluate's own test_metric_common: `_compute` takes no **kwargs, and the module's
    docstring examples run (more than one) through the module file evaluate imports."""
    import doctest
    import importlib
    import inspect

    factory = evaluate.loading.evaluation_module_factory(hf_recperc.SUBSPACE_PROBE_ACCURACY)
    module = importlib.import_module(factory.module_path)
    metric_class = evaluate.loading.import_main_class(module.__name__)
    parameters = inspect.signature(metric_class._compute).parameters.values()
    assert all(p.kind != p.VAR_KEYWORD for p in parameters)
    results = doctest.testmod(module, raise_on_error=True)
    assert results.failed == 0 and results.attempted > 1


def test_add_takes_the_input_names_as_evaluate_documents_them(metric):
    """Citizen 10: `add(predictions=..., references=...)` (evaluate's docs) used to raise a TypeError."""
    X, y = make_problem()
    expected = metric.compute(predictions=X, references=y, subspaces=["first:2", "all"])
    for row in range(len(X)):
        if row % 2:
            metric.add(predictions=X[row], references=y[row])
        else:
            metric.add(prediction=X[row], reference=y[row])
    assert metric.compute(subspaces=["first:2", "all"]) == expected


def test_combine_adds_rows_and_batches_and_computes_like_the_modules(metric):
    """Citizen 10: `evaluate.combine([...]).add(predictions=..., references=...)` works, and so do add_batch and
    compute; two modules of the same name get evaluate's prefixes."""
    X, y = make_problem()
    expected = metric.compute(predictions=X, references=y, subspaces=["all"])
    combined = evaluate.combine([metric])
    for row in range(len(X)):
        combined.add(predictions=X[row], references=y[row])
    assert combined.compute(subspaces=["all"]) == expected
    pair = evaluate.combine({"a": evaluate.load(hf_recperc.SUBSPACE_PROBE_ACCURACY), "b": metric})
    for rows in np.array_split(np.arange(len(X)), 3):
        pair.add_batch(predictions=X[rows], references=y[rows])
    assert pair.compute(subspaces=["all"]) == {f"{name}_{k}": v for name in "ab" for k, v in expected.items()}
