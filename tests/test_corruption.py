"""Corruption strategies: string form, sampling, and moments that match the sampling (docs/science.md section 4)."""

import dataclasses
import math

import pytest
import torch

from hf_recperc.corruption import Corruption, GaussianNoise, Masking, NoCorruption, parse_corruption

IMAGE_SHAPE = (2, 4, 5)  # (C, H, W); 5 is not a multiple of 4, so patch 4 exercises the cropped last patches
NUM_IMAGES = 3
NUM_DRAWS = 2000


def _clean_images() -> torch.Tensor:
    generator = torch.Generator().manual_seed(1234)
    return torch.randn((NUM_IMAGES, *IMAGE_SHAPE), generator=generator, dtype=torch.float64)


def _empirical_moments(corruption, images: torch.Tensor, seed: int = 0):
    """Sample NUM_DRAWS corrupted copies of `images`; per-entry means and standard errors of both moments."""
    repeated = images.repeat(NUM_DRAWS, 1, 1, 1)  # (T*N, C, H, W), draw-major
    corrupted = corruption(repeated, generator=torch.Generator().manual_seed(seed)).pixel_values
    rows = corrupted.reshape(NUM_DRAWS, NUM_IMAGES, -1)  # (T, N, D)
    outer = torch.einsum("tnd,tne->tde", rows, rows)  # (T, D, D): X~_t^T X~_t for each draw
    stats = {}
    for name, samples in (("M1", rows), ("M2", outer)):
        mean = samples.mean(0)
        stderr = samples.std(0) / math.sqrt(NUM_DRAWS)
        stats[name] = (mean, stderr)
    return stats


def _assert_matches(empirical, expected: torch.Tensor, sigmas: float = 6.0):
    mean, stderr = empirical
    # Entries with no sampling variance (e.g. pixel pairs that are always kept together) must match exactly.
    tolerance = sigmas * stderr + 1e-9
    worst = ((mean - expected).abs() / tolerance).max().item()
    assert worst <= 1.0, f"empirical moment off by {worst * sigmas:.1f} standard errors"


CORRUPTIONS = [
    GaussianNoise(0.5),
    Masking(0.25, 1),
    Masking(0.75, 1),
    Masking(0.25, 4),
    Masking(0.75, 4),
    NoCorruption(),
]


@pytest.mark.parametrize("corruption", CORRUPTIONS, ids=str)
def test_moments_match_sampling(corruption):
    images = _clean_images()
    X = images.flatten(1)  # (N, D)
    stats = _empirical_moments(corruption, images)
    _assert_matches(stats["M1"], corruption.first_moment(X))
    _assert_matches(stats["M2"], corruption.second_moment(X, IMAGE_SHAPE))


def test_moment_check_detects_a_wrong_ratio():
    """The Monte-Carlo check has teeth: the moments of a slightly different ratio are rejected."""
    images = _clean_images()
    X = images.flatten(1)
    stats = _empirical_moments(Masking(0.5, 2), images)
    with pytest.raises(AssertionError):
        _assert_matches(stats["M2"], Masking(0.45, 2).second_moment(X, IMAGE_SHAPE))
    with pytest.raises(AssertionError):
        # same ratio, wrong patch size: the same-patch structure of M2 is what differs
        _assert_matches(stats["M2"], Masking(0.5, 1).second_moment(X, IMAGE_SHAPE))


@pytest.mark.parametrize("spec", ["gaussian:0.3", "mask:0.5:2"])
def test_draws_reproducible_from_seed(spec):
    corruption = parse_corruption(spec)
    images = _clean_images().float()
    first = corruption(images, generator=torch.Generator().manual_seed(7))
    again = corruption(images, generator=torch.Generator().manual_seed(7))
    other = corruption(images, generator=torch.Generator().manual_seed(8))
    assert torch.equal(first.pixel_values, again.pixel_values)
    assert not torch.equal(first.pixel_values, other.pixel_values)
    if first.mask is not None:
        assert torch.equal(first.mask, again.mask)


def test_masking_zeroes_whole_patches_across_channels():
    images = torch.ones(4, 3, 8, 8)
    out = Masking(0.5, 4)(images, generator=torch.Generator().manual_seed(0))
    assert out.mask.shape == (4, 1, 8, 8) and out.mask.dtype == torch.bool
    assert torch.equal(out.pixel_values == 0, out.mask.expand(-1, 3, -1, -1))
    patches = out.mask.reshape(4, 1, 2, 4, 2, 4)  # (B, 1, h, k, w, k)
    per_patch = patches.float().mean(dim=(3, 5))
    assert torch.all((per_patch == 0) | (per_patch == 1)), "a patch was partially masked"


def test_gaussian_and_identity_have_no_mask():
    images = torch.randn(2, 1, 4, 4)
    assert GaussianNoise(0.1)(images).mask is None
    out = NoCorruption()(images)
    assert out.mask is None and torch.equal(out.pixel_values, images)
    assert torch.equal(GaussianNoise(0)(images).pixel_values, images)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("none", NoCorruption()),
        (None, NoCorruption()),
        ("gaussian:0.1", GaussianNoise(0.1)),
        (" Gaussian:0.25 ", GaussianNoise(0.25)),
        ("mask:0.75:4", Masking(0.75, 4)),
        ("mask:0.5", Masking(0.5, 1)),
        ("mask:0:2", Masking(0.0, 2)),
    ],
)
def test_parse_valid_forms(spec, expected):
    corruption = parse_corruption(spec)
    assert corruption == expected
    assert parse_corruption(str(corruption)) == corruption  # the string form round-trips
    assert parse_corruption(corruption) is corruption


@pytest.mark.parametrize(
    "spec",
    [
        "gauss:0.1",
        "gaussian",
        "gaussian:-1",
        "gaussian:inf",
        "gaussian:abc",
        "mask:1.0:4",
        "mask:-0.1:4",
        "mask:0.5:0",
        "mask:0.5:2.5",
        "mask:0.5:2:1",
        "none:1",
        "",
        3,
    ],
)
def test_parse_rejects_malformed(spec):
    with pytest.raises(ValueError, match="corruption"):
        parse_corruption(spec)


def test_constructor_validation_and_moment_arguments():
    with pytest.raises(ValueError, match="std"):
        GaussianNoise(-0.5)
    with pytest.raises(ValueError, match="ratio"):
        Masking(1.0)
    with pytest.raises(ValueError, match="patch_size"):
        Masking(0.5, 0)
    X = torch.randn(3, 2 * 4 * 4)
    with pytest.raises(ValueError, match="image_shape"):
        Masking(0.5, 2).second_moment(X)  # patches need the image shape
    with pytest.raises(ValueError, match="image_shape"):
        Masking(0.5, 2).second_moment(X, (3, 4, 4))  # 48 values != 32 features
    # pixel masking needs no shape: every feature is its own patch
    expected = (X.double().T @ X.double()) * Masking(0.5, 1).keep_probabilities((32, 1, 1))
    assert torch.allclose(Masking(0.5, 1).second_moment(X), expected)
    with pytest.raises(ValueError, match="pixel_values"):
        GaussianNoise(0.1)(torch.randn(3, 4))


def test_corruptions_are_frozen_values():
    masking = Masking(0.5, 2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        masking.ratio = 0.1
    assert masking == parse_corruption("mask:0.5:2") and len({masking, Masking(0.5, 2)}) == 1
    assert GaussianNoise(1) == GaussianNoise(1.0) and isinstance(GaussianNoise(1).std, float)
    assert NoCorruption() == NoCorruption() and NoCorruption() != GaussianNoise(0)
    assert repr(masking) == "Masking(mask:0.5:2)"


@pytest.mark.parametrize(
    "spec, image_shape",
    [("none", None), ("gaussian:0.7", None), ("mask:0.3", None), ("mask:0.6:2", (2, 2, 4))],
)
def test_linear_moments_agree_with_the_moments(spec, image_shape):
    # The theory's (P, M2) from a cached X^T X must equal X^T E[X~] and E[X~^T X~] (whose sampling
    # test_moments_match_sampling checks), and the base class's generic path must give the same.
    corruption = parse_corruption(spec)
    X = torch.randn(9, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected = (X.T @ corruption.first_moment(X), corruption.second_moment(X, image_shape))
    for got in (
        corruption.linear_moments(X, gram=X.T @ X, image_shape=image_shape),
        Corruption.linear_moments(corruption, X, image_shape=image_shape),
    ):
        torch.testing.assert_close(got[0], expected[0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got[1], expected[1], rtol=1e-12, atol=1e-12)


def test_linear_moments_check_a_subclass_shapes():
    class Broken(NoCorruption):
        def linear_moments(self, X, gram=None, image_shape=None):
            return Corruption.linear_moments(self, X, gram, image_shape)

        def second_moment(self, X, image_shape=None):
            return torch.zeros(2, 2, dtype=torch.float64)

    with pytest.raises(ValueError, match="second_moment"):
        Broken().linear_moments(torch.zeros(3, 4))
