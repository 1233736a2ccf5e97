"""Closed-form linear theory (hf_recperc.theory) against gradient descent, Monte Carlo and docs/science.md section 4."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from hf_recperc.corruption import GaussianNoise, Masking, NoCorruption, parse_corruption
from hf_recperc.theory import (
    LinearTheory,
    denoising_benefit,
    denoising_objective,
    never_beneficial,
    optimal_hybrid_linear_model,
    optimal_linear_autoencoder,
    subspace_audit,
    task_alignment,
)

CIFAR10 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10"


def random_data(num_samples: int, dim: int, seed: int, zero_columns: int = 0) -> np.ndarray:
    """`(N, D)` data with a spread spectrum (distinct eigenvalues) and optional constant-zero features."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((num_samples, dim)) * np.linspace(2.0, 0.5, dim) + 0.3 * rng.standard_normal(
        (num_samples, 1)
    )
    X[:, dim - zero_columns :] = 0.0  # like digits' always-blank border pixels
    return X


def max_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Largest principal angle (radians) between the column spans of ``a`` and ``b``."""
    return float(scipy.linalg.subspace_angles(a, b).max())


def expected_objective_torch(X: torch.Tensor, V, W, corruption, image_shape):
    """``E ||X - X~ V W||^2`` straight from the corruption object's own moments (not theory's fast path)."""
    M1 = corruption.first_moment(X)  # (N, D)
    M2 = corruption.second_moment(X, image_shape)  # (D, D)
    VW = V @ W
    return (X**2).sum() - 2 * (VW * (X.T @ M1)).sum() + (VW * (M2 @ VW)).sum()


def adam(parameters, loss_fn, steps: int = 1500, lr: float = 0.05) -> float:
    """Plain Adam with cosine decay, float64; returns the final loss."""
    optimizer = torch.optim.Adam(parameters, lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: extra threads only add synchronisation on a shared CPU
    try:
        for _ in range(steps):
            optimizer.zero_grad()
            loss = loss_fn()
            loss.backward()
            optimizer.step()
            schedule.step()
        with torch.no_grad():
            return float(loss_fn())
    finally:
        torch.set_num_threads(threads)


def init(shape, generator):
    return (0.1 * torch.randn(shape, generator=generator, dtype=torch.float64)).requires_grad_()


# --------------------------------------------------------------------------------------------------
# Moments: theory's cached fast path is the corruption objects' definition
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, image_shape",
    [
        ("none", None),
        ("gaussian:0.3", None),
        ("mask:0.4:1", None),
        ("mask:0.4:2", (1, 4, 4)),
        ("mask:0.7:2", (2, 2, 4)),
    ],
)
def test_moments_match_corruption_objects(spec, image_shape):
    X = random_data(12, 16, seed=0)
    corruption = parse_corruption(spec)
    P, M2 = LinearTheory(X, image_shape).moments(corruption)
    Xt = torch.tensor(X)
    np.testing.assert_allclose(P, (Xt.T @ corruption.first_moment(Xt)).numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(M2, corruption.second_moment(Xt, image_shape).numpy(), rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------------------------------
# Acceptance 1: closed forms = gradient descent on the same objective; Monte Carlo for the noise
# --------------------------------------------------------------------------------------------------

AUTOENCODER_CASES = [
    # (N, D, K, corruption, image_shape, zero_columns)
    (40, 8, 2, "none", None, 0),
    (6, 8, 2, "none", None, 0),  # N < D: rank-deficient X^T X
    (40, 8, 3, "gaussian:0.5", None, 0),
    (6, 8, 2, "gaussian:0.3", None, 0),
    (40, 16, 3, "mask:0.5:2", (1, 4, 4), 0),
    (10, 16, 4, "mask:0.6:2", (1, 4, 4), 0),
    (30, 12, 2, "mask:0.3:1", (3, 2, 2), 0),
    (30, 10, 3, "mask:0.5:1", None, 2),  # constant-zero features: singular M2, handled by the jitter
]


@pytest.mark.parametrize("num_samples, dim, k, spec, image_shape, zero_columns", AUTOENCODER_CASES)
def test_autoencoder_matches_gradient_descent(num_samples, dim, k, spec, image_shape, zero_columns):
    X = random_data(num_samples, dim, seed=num_samples + dim, zero_columns=zero_columns)
    corruption = parse_corruption(spec)
    encoder, decoder = optimal_linear_autoencoder(X, k, corruption, image_shape)
    assert encoder.shape == (dim, k) and decoder.shape == (k, dim)
    assert encoder.dtype == decoder.dtype == np.float64
    closed = denoising_objective(X, encoder, decoder, corruption, image_shape)

    Xt = torch.tensor(X)
    scale = float((Xt**2).sum())
    generator = torch.Generator().manual_seed(0)
    V, W = init((dim, k), generator), init((k, dim), generator)
    descended = scale * adam(
        [V, W], lambda: expected_objective_torch(Xt, V, W, corruption, image_shape) / scale
    )
    # The closed form uses the corruption's own moments too (checked independently of theory's code).
    reference = float(
        expected_objective_torch(Xt, torch.tensor(encoder), torch.tensor(decoder), corruption, image_shape)
    )
    assert closed == pytest.approx(reference, rel=1e-10)
    # Optimal: gradient descent cannot do better, and reaches it.
    assert closed <= descended * (1 + 1e-9)
    assert descended == pytest.approx(closed, rel=1e-7)
    # The decoder's row space (what gets reconstructed) is unique; compare by principal angles.
    assert max_angle(decoder.T, W.detach().numpy().T) < 1e-5
    if num_samples >= dim and zero_columns == 0 or spec.startswith("gaussian"):
        # Encoder subspace is unique too when M2 is positive definite.
        assert max_angle(encoder, V.detach().numpy()) < 1e-5


@pytest.mark.parametrize("spec, image_shape", [("gaussian:0.7", (2, 2, 2)), ("mask:0.5:2", (1, 4, 2))])
def test_denoising_objective_matches_monte_carlo(spec, image_shape):
    """Draw noisy copies with the training sampler and average the empirical loss."""
    X = random_data(30, 8, seed=3)
    corruption = parse_corruption(spec)
    encoder, decoder = optimal_linear_autoencoder(X, 2, corruption, image_shape)
    pca_encoder, pca_decoder = optimal_linear_autoencoder(X, 2)
    images = torch.tensor(X).reshape(-1, *image_shape)
    generator = torch.Generator().manual_seed(0)
    draws = 4000
    noisy = corruption(images.repeat(draws, 1, 1, 1), generator=generator).pixel_values.reshape(
        draws, *X.shape
    )
    noisy = noisy.numpy()  # (draws, N, D)
    target = X[None]

    def empirical(V, W):  # per-draw total squared error, (draws,)
        return ((target - noisy @ V @ W) ** 2).sum(axis=(1, 2))

    losses = empirical(encoder, decoder)
    expected = denoising_objective(X, encoder, decoder, corruption, image_shape)
    stderr = losses.std() / np.sqrt(draws)
    assert abs(losses.mean() - expected) < 4 * stderr
    # The noise-aware decoder beats the plain PCA autoencoder on the noisy copies, by the predicted margin.
    margin = empirical(pca_encoder, pca_decoder) - losses
    predicted = denoising_objective(X, pca_encoder, pca_decoder, corruption, image_shape) - expected
    assert predicted > 0
    assert abs(margin.mean() - predicted) < 4 * margin.std() / np.sqrt(draws) + 1e-9


@pytest.mark.parametrize("weight", [0.0, 0.5, 5.0])
def test_hybrid_matches_gradient_descent(weight):
    X = random_data(50, 8, seed=7)
    rng = np.random.default_rng(1)
    labels = (X[:, 0] + 0.5 * X[:, 5] + 0.3 * rng.standard_normal(50) > 0).astype(int) + (X[:, 6] > 0.8)
    Y = np.eye(3)[labels]
    k = 2
    encoder, head, decoder = optimal_hybrid_linear_model(X, labels, k, weight)
    assert encoder.shape == (8, k) and head.shape == (k, 3) and decoder.shape == (k, 8)

    def objective(V, W, Z, lib):
        code = X_ @ V if lib is torch else X @ V
        targets, data = (Yt, X_) if lib is torch else (Y, X)
        return ((targets - code @ W) ** 2).sum() + weight * ((data - code @ Z) ** 2).sum()

    X_, Yt = torch.tensor(X), torch.tensor(Y)
    closed = float(objective(encoder, head, decoder, np))
    scale = float((Yt**2).sum() + weight * (X_**2).sum())
    generator = torch.Generator().manual_seed(0)
    V, W, Z = init((8, k), generator), init((k, 3), generator), init((k, 8), generator)
    descended = scale * adam([V, W, Z], lambda: objective(V, W, Z, torch) / scale, steps=2500)
    assert closed <= descended * (1 + 1e-9)
    assert descended == pytest.approx(closed, rel=1e-6)
    assert max_angle(X @ encoder, X @ V.detach().numpy()) < 1e-4  # the code space is unique


# --------------------------------------------------------------------------------------------------
# Acceptance 2-3: PCA cases, the audit, Masking(0), hybrid limit, alignment properties
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", ["none", "gaussian:0.01", "gaussian:0.3", "gaussian:3"])
@pytest.mark.parametrize("num_samples", [60, 9])
def test_no_noise_and_gaussian_give_pca_for_every_k(spec, num_samples):
    X = random_data(num_samples, 10, seed=11)
    pca = scipy.linalg.eigh(X.T @ X)[1][:, ::-1]
    rank = min(num_samples, 10)
    for k in range(1, rank + 1):
        encoder, _ = optimal_linear_autoencoder(X, k, spec)
        # Compare within the data's span: directions with X v = 0 carry no code.
        assert max_angle(X @ encoder, X @ pca[:, :k]) < 1e-6, k
    if spec != "none":
        assert never_beneficial(X, spec)


def test_never_beneficial_detects_masking_on_digits():
    from sklearn.datasets import load_digits

    X = load_digits().images.reshape(-1, 64)[:600].astype(np.float64)
    X -= X.mean(axis=0)
    theory = LinearTheory(X, image_shape=(1, 8, 8))
    assert theory.rank < 64  # constant-zero border pixels
    assert never_beneficial(theory, "gaussian:0.5")
    audit = subspace_audit(theory, "mask:0.5:2")
    assert not audit.never_beneficial
    assert audit.max_distance > 0.1 and audit.worst_k is not None
    assert not never_beneficial(theory, "mask:0.5:1")


def test_audit_skips_degenerate_latent_sizes():
    """With repeated PCA eigenvalues the top-K subspace is arbitrary inside the block: not compared."""
    rng = np.random.default_rng(0)
    left = np.linalg.qr(rng.standard_normal((20, 6)))[0]
    right = np.linalg.qr(rng.standard_normal((6, 6)))[0]
    X = left @ np.diag([3.0, 2.0, 2.0, 1.0, 1.0, 0.5]) @ right.T
    audit = subspace_audit(X, "gaussian:0.4")
    assert audit.never_beneficial
    np.testing.assert_array_equal(audit.checked, [True, False, True, False, True, False])  # K = rank: trivial
    assert audit.distances[-1] == 0.0


def test_masking_ratio_zero_is_no_corruption():
    X = random_data(30, 16, seed=5)
    labels = np.arange(30) % 3
    clean_encoder, clean_decoder = optimal_linear_autoencoder(X, 4)
    encoder, decoder = optimal_linear_autoencoder(X, 4, Masking(0.0, 2), (1, 4, 4))
    np.testing.assert_allclose(encoder @ decoder, clean_encoder @ clean_decoder, atol=1e-10)
    theory = LinearTheory(X, (1, 4, 4))
    np.testing.assert_allclose(theory.moments(Masking(0.0, 2))[1], theory.moments(NoCorruption())[1])
    np.testing.assert_array_equal(theory.alignment(labels, "mask:0:2"), theory.alignment(labels))
    # A vanishing ratio goes through the generalized-eigenproblem path and lands on the same answer.
    np.testing.assert_allclose(
        theory.alignment(labels, Masking(1e-9, 2)), theory.alignment(labels), atol=1e-5
    )
    assert never_beneficial(theory, Masking(1e-9, 2), tol=1e-3)


def test_hybrid_tends_to_pca_as_reconstruction_weight_grows():
    X = random_data(80, 8, seed=2)
    labels = (X[:, 7] > 0).astype(int)  # the label lives in the lowest-variance feature
    pca = optimal_linear_autoencoder(X, 3)[0]
    angles = [max_angle(optimal_hybrid_linear_model(X, labels, 3, w)[0], pca) for w in (0.0, 1e-2, 1.0, 1e4)]
    assert angles[0] > 0.1  # reduced-rank regression picks the label direction
    assert all(b < a for a, b in zip(angles, angles[1:]))
    assert angles[-1] < 1e-3


@pytest.mark.parametrize(
    "spec, image_shape, num_samples, zero_columns",
    [
        ("none", None, 40, 0),
        ("gaussian:0.5", None, 40, 3),
        ("mask:0.5:2", (1, 4, 4), 12, 0),
        ("mask:0.8:1", None, 40, 4),
    ],
)
def test_task_alignment_is_monotone_and_reaches_100_at_rank(spec, image_shape, num_samples, zero_columns):
    X = random_data(num_samples, 16, seed=4, zero_columns=zero_columns)
    labels = np.random.default_rng(0).integers(0, 4, num_samples)
    curve = task_alignment(X, labels, spec, image_shape)
    rank = np.linalg.matrix_rank(X)
    assert curve.shape == (16,)
    assert np.all(np.diff(curve) >= -1e-12) and np.all(curve <= 100.0) and curve[0] > 0
    np.testing.assert_allclose(curve[rank - 1 :], 100.0)
    assert curve[rank - 2] < 100.0
    np.testing.assert_allclose(
        task_alignment(X, labels, spec, image_shape, ks=[1, rank, 16]), curve[[0, rank - 1, 15]]
    )


@pytest.mark.parametrize(
    "spec, image_shape", [("none", None), ("gaussian:0.5", None), ("mask:0.6:2", (1, 4, 3))]
)
def test_task_alignment_matches_paper_definition(spec, image_shape):
    """Brute force of docs/science.md section 4: all generalized eigenvectors, Z = X V, in-order QR, Y Y^T explicit."""
    X = random_data(40, 12, seed=9)
    labels = np.random.default_rng(2).integers(0, 3, 40)
    Y = np.eye(3)[labels]
    corruption = parse_corruption(spec)
    Xt = torch.tensor(X)
    M1 = corruption.first_moment(Xt).numpy()
    M2 = corruption.second_moment(Xt, image_shape).numpy()
    values, vectors = scipy.linalg.eigh(M1.T @ X @ X.T @ M1, M2)
    Q = np.linalg.qr(X @ vectors[:, ::-1])[0]  # (N, D), columns in eigenvalue order
    YYt = Y @ Y.T
    expected = [100 * np.linalg.norm(YYt @ Q[:, :k]) / np.linalg.norm(YYt @ Q) for k in range(1, 13)]
    np.testing.assert_allclose(task_alignment(X, labels, spec, image_shape), expected, rtol=1e-8)
    # The per-K autoencoder closed form spans the same code as the all-K alignment path.
    for k in (2, 5):
        encoder, _ = optimal_linear_autoencoder(X, k, spec, image_shape)
        assert max_angle(X @ encoder, Q[:, :k]) < 1e-6


def test_denoising_benefit_definition_and_gaussian_zero():
    X = random_data(50, 16, seed=8)
    labels = (X[:, 12] > 0).astype(int)
    theory = LinearTheory(X, (1, 4, 4))
    clean = task_alignment(theory, labels)
    noisy = task_alignment(theory, labels, "mask:0.7:2")
    np.testing.assert_allclose(denoising_benefit(theory, labels, "mask:0.7:2"), 100 * (noisy - clean) / clean)
    np.testing.assert_allclose(denoising_benefit(theory, labels, GaussianNoise(1.0)), 0.0, atol=1e-6)
    assert np.abs(denoising_benefit(theory, labels, "mask:0.7:2")).max() > 0.1


def test_torch_and_numpy_inputs_agree():
    X = random_data(20, 6, seed=1)
    labels = np.arange(20) % 2
    a = task_alignment(X, labels, "gaussian:0.2")
    b = task_alignment(torch.tensor(X, dtype=torch.float32), torch.tensor(labels), "gaussian:0.2")
    assert isinstance(b, np.ndarray) and b.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-5)
    encoder, decoder = optimal_linear_autoencoder(torch.tensor(X), 2, GaussianNoise(0.2))
    assert isinstance(encoder, np.ndarray) and isinstance(decoder, np.ndarray)


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda X: optimal_linear_autoencoder(X, 0), "k:"),
        (lambda X: optimal_linear_autoencoder(X, 17), "k:"),
        (lambda X: optimal_linear_autoencoder(X, 2.5), "k:"),
        (lambda X: optimal_linear_autoencoder(X, 2, "mask:0.5:2"), "image_shape"),
        (lambda X: optimal_linear_autoencoder(X, 2, "mask:0.5:2", (1, 4, 5)), "image_shape"),
        (lambda X: optimal_linear_autoencoder(X, 2, "blur:3"), "corruption"),
        (lambda X: optimal_linear_autoencoder(X[:, :, None], 2), "X:"),
        (lambda X: optimal_linear_autoencoder(np.where(X > 1, np.nan, X), 2), "X:"),
        (lambda X: task_alignment(X, np.arange(9), "none"), "labels"),
        (lambda X: task_alignment(X, np.arange(10), ks=[0, 3]), "ks"),
        (lambda X: task_alignment(X, np.arange(10), ks=[17]), "ks"),
        (lambda X: task_alignment(X, np.zeros(10)), "labels"),  # no label signal in centred X
        (lambda X: optimal_hybrid_linear_model(X, np.arange(10), 2, -1.0), "reconstruction_weight"),
        (lambda X: optimal_hybrid_linear_model(X, np.arange(8), 2, 1.0), "Y"),
        (lambda X: never_beneficial(X, "gaussian:0.1", tol=-1.0), "tol"),
        (lambda X: LinearTheory(np.zeros((4, 3))), "X:"),
    ],
)
def test_invalid_inputs_name_the_argument(call, match):
    X = random_data(10, 16, seed=0)
    X -= X.mean(axis=0)
    with pytest.raises(ValueError, match=match):
        call(X)


# --------------------------------------------------------------------------------------------------
# Acceptance 2 on real pixels: CIFAR-10 (D = 3072)
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cifar10_theory():
    if not (CIFAR10 / "train.parquet").exists():
        pytest.skip(f"CIFAR-10 parquet files not found at {CIFAR10} (see ../shared/data/cifar10/README.md)")
    from hf_recperc.images import images_to_array, load_image_dataset, paper_preprocessing

    data = load_image_dataset(str(CIFAR10), max_train_samples=2000)
    images = images_to_array(data.train, data.image_column)  # (2000, 3, 32, 32)
    return LinearTheory(paper_preprocessing(images), image_shape=images.shape[1:])


@pytest.mark.cifar10
def test_cifar10_gaussian_never_beneficial_masking_can_help(cifar10_theory):
    theory = cifar10_theory
    assert theory.dim == 3072
    start = time.perf_counter()
    gaussian = subspace_audit(theory, "gaussian:0.5")
    seconds = time.perf_counter() - start
    assert gaussian.never_beneficial and gaussian.checked.sum() > 100
    masking = subspace_audit(theory, "mask:0.75:4")
    assert not masking.never_beneficial and masking.max_distance > 0.5
    print(f"CIFAR-10 (N=2000, D=3072) audit of one corruption: {seconds:.1f}s")


def test_never_beneficial_refuses_to_guess_on_a_flat_spectrum():
    # Whitened data: every eigenvalue equal, no K has a resolvable gap, so no subspace can be compared.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(200, 16))
    X = (X - X.mean(0)) @ np.linalg.inv(np.linalg.cholesky(np.cov(X, rowvar=False, bias=True))).T
    with pytest.raises(ValueError, match="cannot decide"):
        never_beneficial(X, Masking(0.5, 1))
    assert never_beneficial(X, "none")


def test_features_whose_closed_forms_cannot_fit_are_refused_before_allocating(monkeypatch):
    """Trust 5: 100,000 features are refused with one line naming X and the size of X^T X (74.5 GiB), before any
    `(D, D)` matrix (or the float64 copy of X) is allocated; the limit is RECPERC_MEMORY_LIMIT_GB when set."""
    monkeypatch.setenv("RECPERC_MEMORY_LIMIT_GB", "16")
    X = np.ones((3, 100_000), dtype=np.float32)
    expected = r"^X: 100,000 features need a 100,000 x 100,000 float64 matrix X\^T X \(74.5 GiB\); .* 16 GiB"
    for call in (
        lambda: LinearTheory(X),
        lambda: task_alignment(X, [0, 1, 0]),
        lambda: optimal_linear_autoencoder(X, 1),
        lambda: optimal_hybrid_linear_model(X, [0, 1, 0], 1, 1.0),
    ):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=expected):
            call()
        assert time.perf_counter() - start < 1
