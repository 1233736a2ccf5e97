"""Monitors (hf_recperc.monitors): each against a direct computation written here, and the Monitor contract."""

import numpy as np
import pytest
import torch
from sklearn.neighbors import KNeighborsClassifier

from hf_recperc.monitors import (
    EVAL,
    TRAIN,
    KNNMonitor,
    LayerProbeMonitor,
    Monitor,
    MonitorBatch,
    OnlineProbeMonitor,
    ReconstructionMonitor,
    SpectrumMonitor,
    SubspaceProbeMonitor,
    knn_predict,
    parse_layers,
    pool_hidden_state,
    spectrum_statistics,
)
from hf_recperc.probing import SubspaceProbe


def _clustered(n, dim=24, classes=5, seed=0):
    """Features with a class signal: class means plus noise, (n, dim) float32 and (n,) labels."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n,), generator=generator)
    centres = torch.randn(classes, dim, generator=torch.Generator().manual_seed(99))
    return centres[labels] + 1.5 * torch.randn(n, dim, generator=generator), labels


def _feed(monitor, train, evaluation, feature="embedding", batch=64):
    for split, (X, y) in ((TRAIN, train), (EVAL, evaluation)):
        for start in range(0, len(y), batch):
            rows = slice(start, start + batch)
            monitor.update(MonitorBatch(split, labels=y[rows], features={feature: X[rows]}))
    monitor.all_reduce()
    return monitor.compute()


def test_knn_majority_equals_sklearn_cosine_on_random_features():
    X, y = _clustered(600)
    Q, _ = _clustered(300, seed=1)
    majority, _ = knn_predict(X, y, Q, k=20, chunk_size=37)  # chunks that do not divide the queries
    expected = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(X, y).predict(Q)
    np.testing.assert_array_equal(majority.numpy(), expected)


def test_knn_weighted_vote_equals_a_direct_implementation():
    X, y = _clustered(400, classes=4)
    Q, _ = _clustered(120, classes=4, seed=2)
    _, weighted = knn_predict(X, y, Q, k=10, temperature=0.1)
    Xn, Qn = X / X.norm(dim=1, keepdim=True), Q / Q.norm(dim=1, keepdim=True)
    expected = []
    for query in Qn.double().numpy():
        similarity = Xn.double().numpy() @ query
        nearest = np.argsort(-similarity)[:10]
        votes = np.zeros(4)
        for index in nearest:
            votes[y[index]] += np.exp(similarity[index] / 0.1)
        expected.append(votes.argmax())
    np.testing.assert_array_equal(weighted.numpy(), np.array(expected))


@pytest.mark.cifar10
def test_knn_equals_sklearn_on_cifar10_pixels(cifar10_pixels):
    (X, y), (Q, q) = cifar10_pixels
    majority, _ = knn_predict(X, y, Q, k=20, chunk_size=256)
    expected = KNeighborsClassifier(n_neighbors=20, metric="cosine", algorithm="brute").fit(X, y).predict(Q)
    np.testing.assert_array_equal(majority.numpy(), expected)


def test_knn_monitor_accuracy_matches_predictions_and_a_half_precision_bank():
    train, evaluation = _clustered(500), _clustered(200, seed=3)
    scores = _feed(KNNMonitor(k=20), train, evaluation)
    majority, weighted = knn_predict(*train, evaluation[0], k=20)
    assert scores["knn/accuracy"] == pytest.approx((majority == evaluation[1]).double().mean().item())
    assert scores["knn/weighted_accuracy"] == pytest.approx(
        (weighted == evaluation[1]).double().mean().item()
    )
    assert scores["knn/accuracy"] > 0.5  # the class signal is found (chance is 0.2)
    half = _feed(KNNMonitor(k=20, bank_dtype=torch.float16), train, evaluation)
    assert abs(half["knn/accuracy"] - scores["knn/accuracy"]) <= 0.01


def _direct_spectrum(features: np.ndarray):
    centred = features - features.mean(0)
    singular = np.linalg.svd(centred, compute_uv=False)
    singular = singular[singular > singular[0] * 1e-6]
    p = singular / singular.sum()
    eigenvalues = singular**2
    slope = np.polyfit(np.log(np.arange(1, len(eigenvalues) + 1)), np.log(eigenvalues), 1)[0]
    return float(np.exp(-(p * np.log(p)).sum())), float(-slope)


def test_spectrum_matches_numpy_svd_of_the_centred_features():
    features = torch.randn(800, 40, dtype=torch.float64) * torch.linspace(3, 0.1, 40, dtype=torch.float64)
    scores = _feed(
        SpectrumMonitor(),
        (features, torch.zeros(800, dtype=torch.long)),
        (features[:4], torch.zeros(4, dtype=torch.long)),
    )
    rank_me, alpha = _direct_spectrum(features.numpy())
    assert scores["spectrum/effective_rank"] == pytest.approx(rank_me, rel=1e-6)
    assert scores["spectrum/alpha"] == pytest.approx(alpha, rel=1e-6)


@pytest.mark.parametrize("alpha", [0.8, 1.5])
def test_spectrum_recovers_a_known_power_law(alpha):
    dim = 64
    basis, _ = torch.linalg.qr(
        torch.randn(dim, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    )
    scales = torch.arange(1, dim + 1, dtype=torch.float64) ** (-alpha / 2)  # eigenvalues i^-alpha
    features = (
        torch.randn(50_000, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * scales
    ) @ basis.T
    statistics = spectrum_statistics(torch.linalg.eigvalsh(torch.cov(features.T)))
    assert abs(statistics["alpha"] - alpha) <= 0.05
    exact = spectrum_statistics(scales**2)
    assert exact["alpha"] == pytest.approx(alpha, rel=1e-9)
    assert exact["participation_ratio"] == pytest.approx(float((scales**2).sum() ** 2 / (scales**4).sum()))


def test_spectrum_linked_to_the_subspace_probe_reuses_its_eigenvalues():
    train, evaluation = _clustered(300), _clustered(100, seed=4)
    probe = SubspaceProbeMonitor()
    spectrum = SpectrumMonitor(source=probe)
    for monitor in (probe, spectrum):
        for split, (X, y) in ((TRAIN, train), (EVAL, evaluation)):
            monitor.update(MonitorBatch(split, labels=y, features={"embedding": X}))
        monitor.all_reduce()
    probe.compute()
    linked = spectrum.compute()
    alone = _feed(SpectrumMonitor(), train, evaluation)
    for key, value in alone.items():
        assert linked[key] == pytest.approx(value, rel=1e-9)


def test_subspace_monitor_equals_the_probe_on_all_rows():
    train, evaluation = _clustered(400), _clustered(150, seed=5)
    scores = _feed(SubspaceProbeMonitor(subspaces=["top:0.5", "all"]), train, evaluation, batch=33)
    direct = (
        SubspaceProbe(subspaces=["top:0.5", "all"])
        .fit(train[0].double(), train[1])
        .score(evaluation[0].double(), evaluation[1])
    )
    for spec in ("top:0.5", "all"):
        assert scores[f"subspace_probe/accuracy/{spec}"] == pytest.approx(direct[f"accuracy/{spec}"])
        assert scores[f"subspace_probe/dims/{spec}"] == direct[f"dims/{spec}"]


def test_reconstruction_and_online_probe_monitors_average_over_every_row():
    pixels = torch.rand(10, 1, 4, 4)
    reconstruction = pixels + 0.1
    weight = torch.zeros(10, 1, 4, 4)
    weight[:, :, :2] = 1
    mse, online = ReconstructionMonitor(), OnlineProbeMonitor()
    logits = torch.eye(3)[torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0])]
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 1])  # 9 of 10 right
    for rows in (slice(0, 3), slice(3, 10)):
        batch = MonitorBatch(
            EVAL,
            labels=labels[rows],
            pixel_values=pixels[rows],
            reconstruction=reconstruction[rows],
            reconstruction_weight=weight[rows],
            logits=logits[rows],
        )
        mse.update(batch)
        online.update(batch)
    mse.all_reduce(), online.all_reduce()
    assert mse.compute()["reconstruction_mse"] == pytest.approx(0.01)
    assert online.compute()["online_probe_accuracy"] == pytest.approx(0.9)


def test_every_monitor_follows_the_protocol():
    for monitor in (
        KNNMonitor(),
        SpectrumMonitor(),
        SubspaceProbeMonitor(),
        OnlineProbeMonitor(),
        ReconstructionMonitor(),
        LayerProbeMonitor([1]),
    ):
        assert isinstance(monitor, Monitor)


def test_layer_probe_monitor_reports_one_entry_per_layer_and_figures():
    train, evaluation = _clustered(300), _clustered(100, seed=6)
    monitor = LayerProbeMonitor([1, 2], poolings=["mean"], subspaces=["all"])
    for split, (X, y) in ((TRAIN, train), (EVAL, evaluation)):
        monitor.update(MonitorBatch(split, labels=y, features={"layer_1/mean": X, "layer_2/mean": X[:, :8]}))
    monitor.all_reduce()
    scores = monitor.compute()
    assert scores["layers/layer_1/mean/dims/all"] == 24 and scores["layers/layer_2/mean/dims/all"] == 8
    assert "layers/layer_2/mean/spectrum/effective_rank" in scores
    assert set(monitor.figures()) == {"accuracy_per_layer", "eigenvalue_spectrum_per_layer"}


def test_parse_layers_and_pooling_reject_what_a_model_cannot_do():
    assert parse_layers("last", 12) == [12]
    assert parse_layers("all", 3) == [1, 2, 3]
    assert parse_layers(["0", "-1", "2"], 4) == [0, 2, 4]
    with pytest.raises(ValueError, match="probe_layers: layer 13 is out of range"):
        parse_layers([13], 12)
    tokens = torch.randn(2, 5, 8)
    assert torch.equal(pool_hidden_state(tokens, "cls"), tokens[:, 0])
    assert torch.allclose(pool_hidden_state(tokens, "mean"), tokens[:, 1:].mean(1))
    with pytest.raises(ValueError, match="pooling: 'cls' needs a token sequence"):
        pool_hidden_state(torch.randn(2, 3, 4, 4), "cls")
