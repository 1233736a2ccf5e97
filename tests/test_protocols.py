"""Standard protocols beside the subspace probe (hf_recperc.monitors.protocols, docs/protocols.md): each equals its
scikit-learn reference, chooses on training rows only, and can be restricted to a subspace."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from hf_recperc.monitors import Monitor, MonitorBatch, knn_predict
from hf_recperc.monitors.protocols import (
    PROTOCOLS,
    AttentiveProbeMonitor,
    FewShotMonitor,
    KNNGridMonitor,
    LinearGridMonitor,
    PCAMapsMonitor,
    RidgeCVMonitor,
    RidgeFit,
    attentive_key,
    attentive_protocol,
    few_shot,
    few_shot_draws,
    few_shot_key,
    few_shot_protocol,
    kfold_assignments,
    knn_grid_key,
    knn_grid_predict,
    knn_grid_protocol,
    linear_grid_key,
    linear_grid_protocol,
    pca_maps_figure,
    pca_rgb_maps,
    ridge_cv_key,
    ridge_cv_protocol,
    train_logistic_grid,
)
from hf_recperc.probing import SubspaceProbe
from hf_recperc.spectral import PCA

sklearn = pytest.importorskip("sklearn")
# Small tensors: one intra-op thread beats two (no sync overhead on a shared machine).
pytestmark = pytest.mark.usefixtures("one_thread")


def blobs(n, num_classes=4, dim=12, spread=1.0, seed=0, scales=None):
    """Gaussian classes `(n, dim)` float64 around fixed means (the same means for every ``seed``)."""
    means = torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(123), dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    noise = torch.randn(n, dim, generator=g, dtype=torch.float64) * spread
    if scales is not None:
        noise = noise * scales
    return means[y] + noise, y


# Anisotropic noise: the useful directions are the weak ones, so the penalty matters (an interior optimum).
SCALES = torch.linspace(0.2, 4.0, 12, dtype=torch.float64)


@pytest.fixture(scope="module")
def data():
    X, y = blobs(240, spread=0.7, seed=1, scales=SCALES)
    Xt, yt = blobs(300, spread=0.7, seed=2, scales=SCALES)
    return X, y, Xt, yt


# ---------------------------------------------------------------------------------------------------- ridge CV


def sklearn_ridge_cv(X, y, Xt, yt, ridges, folds):
    """RidgeClassifier per penalty on our folds, scikit-learn's GridSearchCV choice (first best mean fold score)."""
    from sklearn.linear_model import RidgeClassifier

    X, y, Xt, yt = X.numpy(), y.numpy(), Xt.numpy(), yt.numpy()
    mean_scores = []
    for ridge in ridges:
        scores = []
        for fold in range(int(folds.max()) + 1):
            fit = folds != fold
            # Our penalty is in covariance units (ridge x mean eigenvalue of the 1/N covariance); scikit-learn's
            # objective is the summed squared error, hence alpha = N x that.
            alpha = ridge * fit.sum() * X[fit].var(0).mean()
            scores.append(RidgeClassifier(alpha=alpha).fit(X[fit], y[fit]).score(X[~fit], y[~fit]))
        mean_scores.append(np.mean(scores))
    best = int(np.argmax(mean_scores))
    final = RidgeClassifier(alpha=ridges[best] * len(X) * X.var(0).mean()).fit(X, y)
    return ridges[best], mean_scores, final.score(Xt, yt)


def test_ridge_cv_equals_sklearn_on_the_same_folds(data):
    """Protocols: the CV-chosen ridge equals a RidgeClassifierCV-style reference on the same folds (penalty chosen,
    every fold score, test accuracy)."""
    X, y, Xt, yt = data
    ridges = (1e-4, 1e-2, 0.1, 0.3, 1.0, 3.0, 10.0)
    results = ridge_cv_protocol(X, y, Xt, yt, ridges=ridges, num_folds=4, seed=3)
    best, mean_scores, test_accuracy = sklearn_ridge_cv(
        X, y, Xt, yt, ridges, kfold_assignments(len(X), 4, 3).numpy()
    )
    assert results[ridge_cv_key("ridge")] == best
    assert 0 < ridges.index(best) < len(ridges) - 1  # an interior optimum: the penalty decided something
    for ridge, score in zip(ridges, mean_scores):
        assert results[ridge_cv_key(f"cv_accuracy/ridge={ridge:g}")] == pytest.approx(score, abs=1e-9)
    assert results[ridge_cv_key("accuracy")] == pytest.approx(test_accuracy, abs=1e-9)
    assert results[ridge_cv_key("num_folds")] == 4
    assert "training rows" in results[ridge_cv_key("selection")]


def test_kfold_assignments_are_seeded_and_balanced():
    """Protocols: folds are reproducible by seed and differ in size by at most one."""
    folds = kfold_assignments(103, 5, seed=7)
    assert torch.equal(folds, kfold_assignments(103, 5, seed=7))
    assert not torch.equal(folds, kfold_assignments(103, 5, seed=8))
    counts = torch.bincount(folds)
    assert counts.max() - counts.min() <= 1 and counts.sum() == 103
    with pytest.raises(ValueError, match="num_folds"):
        kfold_assignments(10, 11)


@pytest.mark.parametrize("rows", [8, 200])  # the dual (rows < features) and the primal (moments) forms
def test_ridge_fit_equals_subspace_probe(rows):
    """Protocols: the ridge used for selection is SubspaceProbe's ridge on 'all' (same penalty convention)."""
    X, y = blobs(rows, dim=12, seed=4)
    Xt, _ = blobs(50, dim=12, seed=5)
    classes, columns = torch.unique(y, return_inverse=True)
    fit = RidgeFit.fit(X, columns, classes.numel())
    probe = SubspaceProbe(subspaces=("all",), ridge=0.05).fit(X, y)
    torch.testing.assert_close(
        fit.decision_function(Xt, 0.05), probe.decision_function(Xt, "all"), rtol=1e-7, atol=1e-9
    )


# ------------------------------------------------------------------------------------------------- linear grid


def test_linear_grid_equals_sklearn_logistic_at_the_chosen_setting():
    """Protocols: the logistic grid's test accuracy equals scikit-learn's LogisticRegression (lbfgs,
    C = 1 / (N weight_decay)) at the chosen setting to 1e-3."""
    from sklearn.linear_model import LogisticRegression

    # Few rows for many features: the penalty matters (about 1-2 points of accuracy per factor 10).
    X, y = blobs(200, num_classes=5, dim=40, spread=2.0, seed=6)
    Xt, yt = blobs(2000, num_classes=5, dim=40, spread=2.0, seed=7)
    decays = (1e-3, 0.01, 0.1, 1.0, 10.0)
    results = linear_grid_protocol(X, y, Xt, yt, learning_rates=(0.5, 1.0), weight_decays=decays, epochs=400)
    decay = results[linear_grid_key("weight_decay")]
    accuracies = {
        wd: LogisticRegression(C=1 / (len(X) * wd), max_iter=5000, tol=1e-10)
        .fit(X.numpy(), y.numpy())
        .score(Xt.numpy(), yt.numpy())
        for wd in decays
    }
    assert len({round(a, 3) for a in accuracies.values()}) == len(decays)  # each penalty gives another answer
    assert results[linear_grid_key("accuracy")] == pytest.approx(accuracies[decay], abs=1e-3)
    assert "training rows" in results[linear_grid_key("selection")]


def test_logistic_grid_trains_every_setting_as_if_alone():
    """Protocols: the batched grid (one pass for all settings) gives each setting's own training run."""
    X, y = blobs(120, seed=8)
    X = X.float()
    grid = train_logistic_grid(X, y, 4, (0.5, 2.0), (1e-3, 0.1), epochs=5, batch_size=32)
    for index, (lr, wd) in enumerate([(0.5, 1e-3), (0.5, 0.1), (2.0, 1e-3), (2.0, 0.1)]):
        alone = train_logistic_grid(X, y, 4, (lr,), (wd,), epochs=5, batch_size=32)
        torch.testing.assert_close(grid[1][index], alone[1][0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(grid[2][index], alone[2][0], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------------------- kNN


def test_knn_grid_majority_equals_sklearn_for_each_k():
    """Protocols: kNN over k equals KNeighborsClassifier(metric="cosine") for each k (uniform votes), and the
    weighted votes equal knn_predict's."""
    from sklearn.neighbors import KNeighborsClassifier

    X, y = blobs(260, num_classes=5, dim=8, spread=1.5, seed=9)
    Xt, _ = blobs(150, num_classes=5, dim=8, spread=1.5, seed=10)
    ks = (10, 20, 100, 200)
    majority, weighted = knn_grid_predict(X, y, Xt, ks, (0.07, 0.5), num_classes=5)
    for k in ks:
        reference = (
            KNeighborsClassifier(n_neighbors=k, metric="cosine").fit(X.numpy(), y.numpy()).predict(Xt.numpy())
        )
        np.testing.assert_array_equal(majority[k].numpy(), reference)
        for t in (0.07, 0.5):
            _, expected = knn_predict(X, y, Xt, k=k, temperature=t, num_classes=5)
            assert torch.equal(weighted[(k, t)], expected)


def test_knn_grid_clips_k_above_the_bank_and_says_so(caplog):
    """Protocols: a k larger than the training rows is clipped to them, logged and recorded in the results."""
    X, y = blobs(60, seed=11)
    Xt, yt = blobs(40, seed=12)
    results = knn_grid_protocol(X, y, Xt, yt, ks=(10, 500), temperatures=(0.1,))
    assert results[knn_grid_key("clipped")] == "k=500 -> 60"
    assert "clipped" in caplog.text
    majority, _ = knn_grid_predict(X, y, Xt, (60,), (0.1,), 4)
    assert results[knn_grid_key("accuracy", 500)] == float((majority[60] == yt).double().mean())
    assert knn_grid_key("clipped") not in knn_grid_protocol(X, y, Xt, yt, ks=(10,), temperatures=(0.1,))


def test_knn_grid_chooses_on_training_rows():
    """Protocols: the chosen (k, temperature) does not depend on the test rows."""
    X, y = blobs(200, seed=13, spread=1.5)
    Xt, yt = blobs(100, seed=14, spread=1.5)
    first = knn_grid_protocol(X, y, Xt, yt, ks=(5, 20), temperatures=(0.02, 0.5))
    flipped = knn_grid_protocol(X, y, Xt, (yt + 1) % 4, ks=(5, 20), temperatures=(0.02, 0.5))
    for field in ("k", "temperature", "holdout_accuracy"):
        assert first[knn_grid_key(field)] == flipped[knn_grid_key(field)]
    assert first[knn_grid_key("accuracy")] != flipped[knn_grid_key("accuracy")]


# ----------------------------------------------------------------------------------------------------- few-shot


def test_few_shot_draws_are_reproducible_by_seed():
    """Protocols: few-shot draws are reproducible by seed, n per class, and differ across seeds and draws."""
    _, y = blobs(200, seed=15)
    draws = few_shot_draws(y, 5, 3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(draws, few_shot_draws(y, 5, 3, seed=1)))
    assert not torch.equal(draws[0], few_shot_draws(y, 5, 3, seed=2)[0])
    assert not torch.equal(draws[0], draws[1])
    assert torch.equal(few_shot_draws(y, 5, 1, seed=1)[0], draws[0])  # draw i does not depend on num_draws
    for rows in draws:
        assert torch.equal(torch.bincount(y[rows]), torch.full((4,), 5))
    X, _ = blobs(200, seed=15)
    Xt, yt = blobs(80, seed=16)
    assert few_shot_protocol(X, y, Xt, yt, seed=4, shots=(1, 5)) == few_shot_protocol(
        X, y, Xt, yt, seed=4, shots=(1, 5)
    )


def test_few_shot_selection_never_reads_test_rows(monkeypatch):
    """Protocols: few-shot selection sees the training labels only; poisoned test rows change no draw."""
    X, y = blobs(200, seed=17)
    Xt, yt = blobs(80, seed=18)
    seen = []

    def spy(labels, shots, num_draws, seed=0):
        seen.append(labels.clone())
        return original(labels, shots, num_draws, seed)

    original = few_shot.few_shot_draws
    monkeypatch.setattr(few_shot, "few_shot_draws", spy)
    fitted_rows = []
    original_fit = RidgeFit.fit.__func__
    monkeypatch.setattr(
        RidgeFit,
        "fit",
        classmethod(lambda cls, X, c, n: fitted_rows.append(X.clone()) or original_fit(cls, X, c, n)),
    )
    results = few_shot_protocol(X, y, Xt, yt, shots=(1, 5), num_draws=2)
    assert len(seen) == 2 and all(torch.equal(labels, y) for labels in seen)
    # Poisoned test rows (huge values, one label): the fitted training rows are the same, bit for bit.
    first_fits = list(fitted_rows)
    fitted_rows.clear()
    poisoned = few_shot_protocol(
        X, y, torch.full_like(Xt, 1e6), torch.zeros_like(yt), shots=(1, 5), num_draws=2
    )
    assert all(torch.equal(a, b) for a, b in zip(first_fits, fitted_rows)) and len(fitted_rows) == 4
    assert poisoned[few_shot_key("accuracy", 5)] != results[few_shot_key("accuracy", 5)]


def test_few_shot_more_shots_than_a_class_has_is_an_error():
    """Protocols: n larger than the rows of a class is a ValueError naming `shots`."""
    X, y = blobs(40, seed=19)
    with pytest.raises(
        ValueError, match=r"^shots: 30 per class asked, but class \d has only \d+ training rows"
    ):
        few_shot_protocol(X, y, X, y, shots=(1, 30))


# ---------------------------------------------------------------------------------------------------- attentive


def patch_task(n, seed, tokens=9, dim=16, num_classes=4):
    """Tokens `(n, tokens, dim)` whose class lives in one random patch: token 0 (cls) and the rest are noise."""
    g = torch.Generator().manual_seed(seed)
    vectors = torch.nn.functional.normalize(
        torch.randn(num_classes, dim, generator=torch.Generator().manual_seed(5)), dim=1
    )
    marker = torch.nn.functional.normalize(
        torch.randn(dim, generator=torch.Generator().manual_seed(6)), dim=0
    )
    y = torch.randint(0, num_classes, (n,), generator=g)
    X = torch.randn(n, tokens, dim, generator=g)
    where = torch.randint(1, tokens, (n,), generator=g)  # never the cls token
    X[torch.arange(n), where] += 4 * (vectors[y] + marker)
    return X, y


def test_attentive_probe_beats_cls_pooling_when_the_class_lives_in_one_patch():
    """Protocols: the attentive probe beats a probe on the cls token on a task whose class sits in one patch."""
    X, y = patch_task(400, seed=1)
    Xt, yt = patch_task(300, seed=2)
    attentive = attentive_protocol(X, y, Xt, yt, epochs=20, batch_size=32, learning_rate=3e-3)[
        attentive_key("accuracy")
    ]
    cls = SubspaceProbe(subspaces=("all",)).fit(X[:, 0], y).score(Xt[:, 0], yt)["accuracy/all"]
    assert cls < 0.4 and attentive > 0.75
    state = torch.random.get_rng_state()
    again = attentive_protocol(X, y, Xt, yt, epochs=20, batch_size=32, learning_rate=3e-3)[
        attentive_key("accuracy")
    ]
    assert again == attentive and torch.equal(
        state, torch.random.get_rng_state()
    )  # seeded, caller's RNG untouched


# ----------------------------------------------------------------------------------------------------- PCA maps


def test_pca_maps_figure_shows_top_and_bottom_components():
    """Protocols: the PCA RGB maps are one column per image, components 1-3 and the last three, values in [0, 1]."""
    tokens = torch.randn(3, 1 + 4 * 5, 8, generator=torch.Generator().manual_seed(0))
    figure = pca_maps_figure(tokens, (4, 5), num_prefix_tokens=1)
    axes = figure.axes
    assert len(axes) == 6
    titles = [axis.get_title() for axis in axes]
    assert titles[:3] == [f"{i}: components 1-3" for i in range(3)]
    assert titles[3:] == [f"{i}: last 3 components" for i in range(3)]
    for axis in axes:
        picture = axis.get_images()[0].get_array()
        assert picture.shape == (4, 5, 3) and picture.min() >= 0 and picture.max() <= 1
    maps = pca_rgb_maps(tokens, (4, 5), num_prefix_tokens=1)
    flat = tokens[:, 1:].reshape(-1, 8)
    first = PCA().fit(flat).transform(flat, "first:1")[:, 0]
    expected = (first - first.min()) / (first.max() - first.min())
    torch.testing.assert_close(maps["top"][..., 0].reshape(-1), expected, rtol=1e-5, atol=1e-6)
    last = PCA().fit(flat).transform(flat, "last:1")[:, 0]  # the bottom map's blue channel
    expected = (last - last.min()) / (last.max() - last.min())
    torch.testing.assert_close(maps["bottom"][..., 2].reshape(-1), expected, rtol=1e-5, atol=1e-6)
    assert len(pca_maps_figure(tokens, (4, 5), 1, images=np.zeros((3, 8, 10, 3))).axes) == 9
    with pytest.raises(ValueError, match="grid_size"):
        pca_rgb_maps(tokens, 4, num_prefix_tokens=1)


def test_pca_maps_monitor_draws_the_first_eval_images():
    """Protocols: the PCA-maps monitor keeps the first eval images' tokens and pixels and draws their maps."""
    g = torch.Generator().manual_seed(1)
    monitor = PCAMapsMonitor(grid_size=2, num_images=3)
    for _ in range(2):
        tokens, pixels = torch.randn(2, 5, 6, generator=g), torch.randn(2, 1, 8, 8, generator=g)
        monitor.update(
            MonitorBatch("eval", labels=torch.zeros(2), features={"tokens": tokens}, pixel_values=pixels)
        )
        monitor.update(MonitorBatch("train", labels=torch.zeros(2), features={"tokens": tokens}))
    assert monitor.compute() == {}
    figure = monitor.figures()["pca_maps"]
    assert len(figure.axes) == 9  # 3 images x (image, top, bottom)
    assert figure.axes[0].get_images()[0].get_array().shape == (8, 8, 3)
    assert isinstance(monitor, Monitor)


# ------------------------------------------------------------------------------------------ subspaces and monitors

FAST_OPTIONS = {
    "ridge_cv": {"ridges": (1e-3, 1.0), "num_folds": 3},
    "linear_grid": {"learning_rates": (1.0,), "weight_decays": (1e-3, 0.1), "epochs": 20},
    "knn_grid": {"ks": (5, 20), "temperatures": (0.07,)},
    "few_shot": {"shots": (1, 5), "num_draws": 2},
    "attentive_probe": {"epochs": 4, "batch_size": 32, "learning_rate": 3e-3},
}


def protocol_inputs(name, data):
    if name == "attentive_probe":
        return (*patch_task(120, seed=3), *patch_task(60, seed=4))
    return data


def numbers(results):
    return {k: v for k, v in results.items() if not isinstance(v, str)}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_every_protocol_restricts_to_a_subspace(name, data):
    """Protocols: 'all' is the unrestricted protocol; 'top:p' is the protocol on features projected onto the
    training PCA's top subspace (hf_recperc.spectral.PCA.project)."""
    protocol, _ = PROTOCOLS[name]
    X, y, Xt, yt = protocol_inputs(name, data)
    options = FAST_OPTIONS[name]
    unrestricted = protocol(X, y, Xt, yt, **options)
    assert protocol(X, y, Xt, yt, subspace="all", **options) == unrestricted
    restricted = protocol(X, y, Xt, yt, subspace="top:0.5", **options)
    shape = X.shape
    pca = PCA().fit(X.reshape(-1, shape[-1]))
    dtype = torch.float64 if X.dtype == torch.float64 else torch.float32

    def project(rows):
        flat = rows.reshape(-1, shape[-1])
        return pca.project(flat, "top:0.5", add_mean=True).to(dtype).reshape(rows.shape)

    assert protocol(project(X), y, project(Xt), yt, **options) == restricted
    assert numbers(restricted) != numbers(unrestricted)  # the restriction changed something


MONITORS = {
    "ridge_cv": RidgeCVMonitor,
    "linear_grid": LinearGridMonitor,
    "knn_grid": KNNGridMonitor,
    "few_shot": FewShotMonitor,
    "attentive_probe": AttentiveProbeMonitor,
}


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_monitor_reports_its_protocol_on_the_rows_it_was_fed(name, data):
    """Protocols: each monitor follows the Monitor protocol and reports its function's numbers on the batches it
    saw, with the prefix, and states its settings (what it selected on)."""
    protocol, monitor_class = PROTOCOLS[name]
    assert monitor_class is MONITORS[name] and monitor_class.name == name
    X, y, Xt, yt = protocol_inputs(name, data)
    monitor = monitor_class(feature="f", prefix="layers/layer_2/mean/", **FAST_OPTIONS[name])
    assert isinstance(monitor, Monitor)
    for split, rows, labels in (("train", X, y), ("eval", Xt, yt)):
        for chunk, chunk_labels in zip(rows.split(50), labels.split(50)):
            monitor.update(MonitorBatch(split, labels=chunk_labels, features={"f": chunk}))
    monitor.all_reduce()
    expected = numbers(protocol(X, y, Xt, yt, **FAST_OPTIONS[name]))
    assert monitor.compute() == {f"layers/layer_2/mean/{k}": float(v) for k, v in expected.items()}
    settings = monitor.settings()
    assert "training rows" in settings["selection"] and settings["subspace"] == "all"
    assert monitor.figures() == {}
    monitor.reset()
    with pytest.raises(ValueError, match="no 'train' rows"):
        monitor.compute()


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_half_precision_features_give_the_float32_numbers(name, data):
    """Protocols: bfloat16 features (mixed-precision models) give the numbers of the same values in float32."""
    protocol, _ = PROTOCOLS[name]
    X, y, Xt, yt = protocol_inputs(name, data)
    X, Xt = X.to(torch.bfloat16), Xt.to(torch.bfloat16)
    half = protocol(X, y, Xt, yt, **FAST_OPTIONS[name])
    assert half == protocol(X.float(), y, Xt.float(), yt, **FAST_OPTIONS[name])
    assert all(np.isfinite(v) for v in numbers(half).values())


# ------------------------------------------------------------------ the protocols in the perception report


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory) -> str:
    """A randomly initialised transformers ViT (16 x 16 images, 4 x 4 patches: 16 patch tokens + CLS), saved."""
    import transformers as tf

    path = tmp_path_factory.mktemp("tiny_vit")
    torch.manual_seed(0)
    config = tf.ViTConfig(
        image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64
    )  # fmt: skip
    tf.ViTModel(config).save_pretrained(path)
    tf.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(path)
    return str(path)


PROTOCOL_NAMES = ["ridge_cv", "linear_grid", "knn_grid", "few_shot", "attentive_probe", "pca_maps"]


@pytest.fixture(scope="module")
def protocol_report(tiny_vit, tmp_path_factory):
    """``recperc-report --monitors subspace knn spectrum <every protocol> --pooling cls tokens`` with settings."""
    from hf_recperc.commands import report as command

    out = tmp_path_factory.mktemp("protocol_report") / "report"
    argv = [
        "--model_name_or_path", tiny_vit, "--dataset_name", "digits", "--max_train_samples", "300",
        "--max_eval_samples", "100", "--output_dir", str(out), "--pooling", "cls", "tokens",
        "--monitors", "subspace", "knn", "spectrum", *PROTOCOL_NAMES,
        "--monitor_settings", "knn_grid_k=[3,7],few_shot_shots=[2,4],ridge_cv_folds=3,attentive_epochs=5",
    ]  # fmt: skip
    assert command.main(argv) == 0
    return out, json.loads((out / "report.json").read_text())


def test_the_report_runs_every_protocol_with_the_settings_given(protocol_report):
    """Protocols in the report: each registered protocol reports its numbers per layer feature in report.json, with
    the settings given (k, shots, folds), and the attentive probe reads the tokens feature only."""
    _, report = protocol_report
    metrics, cls, tokens = report["metrics"], "layers/layer_2/cls/", "layers/layer_2/tokens/"
    assert 0 <= metrics[cls + ridge_cv_key("accuracy")] <= 1 and metrics[cls + ridge_cv_key("num_folds")] == 3
    assert cls + linear_grid_key("accuracy") in metrics
    assert {cls + knn_grid_key("accuracy", k) for k in (3, 7)} <= set(metrics)
    assert cls + knn_grid_key("accuracy", 20) not in metrics
    assert {cls + few_shot_key("accuracy", n) for n in (2, 4)} <= set(metrics)
    assert (
        0 <= metrics[tokens + attentive_key("accuracy")] <= 1
        and metrics[tokens + attentive_key("epochs")] == 5
    )
    assert not any(key.startswith(tokens) and "attentive" not in key for key in metrics)  # no probe on tokens
    assert not any(key.startswith(cls) and "attentive" in key for key in metrics)
    assert report["settings"]["knn_grid_k"] == [3, 7] and report["settings"]["linear_grid_epochs"] == 10
    assert (
        report["features"]["layer_2/tokens"][attentive_key("accuracy")]
        == metrics[tokens + attentive_key("accuracy")]
    )


def test_report_md_states_each_protocols_settings_and_selection_and_draws_pca_maps(protocol_report):
    """Protocols in the report: report.md says, per protocol, the settings used and that hyperparameters were chosen
    on training rows only, shows the numbers per feature, and the PCA maps of the tokens are drawn."""
    out, report = protocol_report
    text = (out / "report.md").read_text()
    section = text[text.index("## Standard protocols") :]
    for name in PROTOCOL_NAMES[:-1]:
        line = next(line for line in section.splitlines() if line.startswith(f"- **{name}**"))
        assert "training rows only" in line
    assert "3-fold cross-validation" in section and "k in 3, 7" in section and "n in (2, 4)" in section
    assert "| layer_2/cls | 2-shot ridge probe accuracy, mean of 5 draws |" in section
    value = report["metrics"]["layers/layer_2/tokens/" + attentive_key("accuracy")]
    assert (
        f"| layer_2/tokens | attentive probe accuracy (cross-attention on patch tokens, 5 epochs) | {value:.4f} |"
        in section
    )
    assert (out / "pca_maps_layer_2_tokens.png").stat().st_size > 0
    assert "| 2 | tokens |" not in text  # the per-layer probe table has no row for token features


def test_protocol_card_rows_state_the_run_settings():
    """Protocols on a card: a row's label is filled in from the run's settings (never a literal): other folds,
    shots and k give other labels."""
    from hf_recperc.monitors import card_rows

    metrics = {ridge_cv_key("accuracy"): 0.5, few_shot_key("accuracy", 3): 0.4, knn_grid_key("accuracy"): 0.3}
    labels = [
        row.label
        for row, _ in card_rows(
            metrics, {"ridge_cv_folds": 7, "few_shot_shots": [3], "knn_grid_k": [9]}, names=PROTOCOL_NAMES
        )
    ]
    assert any("7-fold" in label for label in labels)
    assert any(label.startswith("3-shot") for label in labels)
    assert any("k in 9," in label for label in labels)
    default = [row.label for row, _ in card_rows(metrics, {}, names=PROTOCOL_NAMES)]
    assert any("5-fold" in label for label in default)


def test_knn_and_knn_grid_share_one_similarity_pass(data, monkeypatch):
    """Speed (acceptance 5): with knn_grid on the same feature, the report's kNN monitor reads its neighbours from
    the grid's test pass (no pass of its own) and reports what it reports alone; the grid's numbers are unchanged."""
    from hf_recperc.monitors import MonitorContext, build_monitors, compute_monitors
    from hf_recperc.monitors import knn as knn_module

    X, y, Xt, yt = (t.float() if t.is_floating_point() else t for t in data)
    settings = {"knn_k": 7, "knn_temperature": 0.1, "knn_grid_k": [3, 10]}

    def run(names):
        monitors = build_monitors(names, MonitorContext(settings))
        for monitor in monitors:
            monitor.reset()
            monitor.update(MonitorBatch("train", labels=y, features={"embedding": X}))
            monitor.update(MonitorBatch("eval", labels=yt, features={"embedding": Xt}))
        return compute_monitors(monitors)

    alone, grid_alone = run(["knn"]), run(["knn_grid"])
    passes = []
    real = knn_module.knn_predict
    monkeypatch.setattr(knn_module, "knn_predict", lambda *a, **k: passes.append(1) or real(*a, **k))
    both = run(["knn", "knn_grid"])
    assert not passes  # the kNN monitor made no similarity pass of its own
    assert both == {**alone, **grid_alone}


def test_the_few_shot_monitor_skips_shots_a_class_cannot_give(data, caplog):
    """Protocols in a run: an n above the scarcest class's training rows is skipped with a warning by the monitor
    (a report or a training run is not thrown away after its extraction), not measured on fewer rows."""
    X, y, Xt, yt = data
    monitor = FewShotMonitor(shots=(1, 500), num_draws=2)
    monitor.update(MonitorBatch("train", labels=y, features={"embedding": X}))
    monitor.update(MonitorBatch("eval", labels=yt, features={"embedding": Xt}))
    metrics = monitor.compute()
    assert few_shot_key("accuracy", 1) in metrics and few_shot_key("accuracy", 500) not in metrics
    assert "[500]-shot skipped" in caplog.text


def test_knn_grid_chooses_a_clipped_k_without_failing():
    """A k above the selection bank is clipped there; when that setting wins, the protocol answers with the k asked
    for and scores it as the sweep does (it raised KeyError: the selection's clipped k was looked up among the
    test's, clipped to more rows)."""
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(340, 8, generator=generator)
    y = (torch.rand(340, generator=generator) < 0.2).long()  # noise around a majority class: large k wins
    results = knn_grid_protocol(
        X[:300], y[:300], X[300:], y[300:], ks=(1, 250, 400), temperatures=(1.0,), holdout=0.3
    )
    assert results["knn_grid/k"] in (250, 400) and "k=400 -> 300" in results["knn_grid/clipped"]
    swept = results[f"knn_grid/weighted_accuracy/k={results['knn_grid/k']},t=1"]
    assert results["knn_grid/accuracy"] == swept
