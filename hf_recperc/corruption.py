"""Noise strategies shared by training (sampling) and the linear theory (moments).

Each corruption is a small object that

* corrupts a batch of images: ``corruption(pixel_values, generator=g)`` returns a :class:`Corrupted`
  with the corrupted pixels and, for masking, the per-pixel mask;
* exposes the first and second moments of its corrupted data given the clean data, ``M1 = E[X~]`` and
  ``M2 = E[X~^T X~]`` (docs/science.md section 4, written here with samples as rows, ``X`` of shape ``(N, D)``),
  which :mod:`hf_recperc.theory` uses for the closed-form optimal linear (denoising) autoencoder.

Sampling and moments live on the same object so that the theory always describes the noise that training
actually applies; ``tests/test_corruption.py`` checks the two against each other by Monte Carlo.

The compact string form (``"none"``, ``"gaussian:0.1"``, ``"mask:0.75:4"``) is what configs and command
lines store; :func:`parse_corruption` is the one place that parses and validates it.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch

__all__ = [
    "Corrupted",
    "Corruption",
    "NoCorruption",
    "GaussianNoise",
    "Masking",
    "parse_corruption",
    "CORRUPTION_FORMS",
]

CORRUPTION_FORMS = (
    "'none', 'gaussian:STD' (STD >= 0) or 'mask:RATIO:PATCH' (0 <= RATIO < 1, integer PATCH >= 1)"
)


@dataclass
class Corrupted:
    """A corrupted batch.

    Attributes:
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            The corrupted images.
        mask (`torch.BoolTensor` of shape `(batch_size, 1, height, width)`, *optional*):
            `True` where a pixel was masked (all channels of that pixel are zeroed). `None` for corruptions
            that do not mask.
    """

    pixel_values: torch.Tensor
    mask: torch.Tensor | None = None


def _check_images(pixel_values: torch.Tensor) -> None:
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
        shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
        raise ValueError(
            f"pixel_values: expected a tensor of shape (batch_size, num_channels, height, width), got {shape}"
        )


def _as_rows(X) -> torch.Tensor:
    """Clean data as a float64 tensor of shape `(N, D)` (samples as rows)."""
    X = torch.as_tensor(X)
    if X.ndim != 2:
        raise ValueError(
            f"X: expected a 2-D array of shape (num_samples, num_features), got shape {tuple(X.shape)}"
        )
    return X.to(torch.float64)


class Corruption:
    """Base class: a noise strategy with a sampler and closed-form moments.

    Subclasses are frozen dataclasses: a corruption is a value (compared, hashed, stored in configs by its
    string form), never mutated after validation.
    """

    def __call__(self, pixel_values: torch.Tensor, generator: torch.Generator | None = None) -> Corrupted:
        raise NotImplementedError

    def first_moment(self, X) -> torch.Tensor:
        """``E[X~]`` for clean rows ``X`` of shape `(N, D)`; returns float64 `(N, D)`."""
        raise NotImplementedError

    def second_moment(self, X, image_shape: tuple[int, int, int] | None = None) -> torch.Tensor:
        """``E[X~^T X~]`` for clean rows ``X`` of shape `(N, D)`; returns float64 `(D, D)`.

        ``image_shape`` is `(num_channels, height, width)` with ``C * H * W == D`` in the row-major
        `(C, H, W)` flattening of ``pixel_values.flatten(1)``; only patch masking needs it.
        """
        raise NotImplementedError

    def linear_moments(
        self, X, gram: torch.Tensor | None = None, image_shape: tuple[int, int, int] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(P, M2)`` for the closed-form linear theory (docs/science.md section 4, samples as rows).

        ``P = X^T E[X~]`` `(D, D)` and ``M2 = E[X~^T X~]`` `(D, D)`, float64. ``gram`` is ``X^T X`` `(D, D)`
        when the caller already has it (:class:`hf_recperc.theory.LinearTheory` caches it): the built-in
        corruptions derive both moments from it instead of one `(N, D) x (N, D)` product per corruption.
        This default goes through :meth:`first_moment` and :meth:`second_moment`, for any subclass.
        """
        X = _as_rows(X)
        first, second = self.first_moment(X), self.second_moment(X, image_shape)  # (N, D), (D, D)
        dim = X.shape[1]
        if first.shape != X.shape or second.shape != (dim, dim):
            raise ValueError(
                f"corruption {self}: first_moment must return {tuple(X.shape)} and second_moment "
                f"{(dim, dim)}, got {tuple(first.shape)} and {tuple(second.shape)}"
            )
        return X.T @ first.to(torch.float64), second.to(torch.float64)

    @property
    def is_identity(self) -> bool:
        """True when the corruption leaves every input unchanged."""
        return False

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self!s})"


def _gram(X, gram: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """``(X^T X`` float64 `(D, D)`, ``N)``, reusing ``gram`` when given."""
    X = _as_rows(X)
    return (X.T @ X if gram is None else torch.as_tensor(gram, dtype=torch.float64)), X.shape[0]


@dataclass(frozen=True, repr=False)
class NoCorruption(Corruption):
    """Plain autoencoding: the input is the clean image."""

    def __call__(self, pixel_values, generator=None):
        _check_images(pixel_values)
        return Corrupted(pixel_values)

    def first_moment(self, X):
        return _as_rows(X)

    def second_moment(self, X, image_shape=None):
        return self.linear_moments(X, image_shape=image_shape)[1]

    def linear_moments(self, X, gram=None, image_shape=None):
        # M1 = X, M2 = X^T X: both moments are the Gram matrix.
        gram, _ = _gram(X, gram)
        return gram, gram

    @property
    def is_identity(self):
        return True

    def __str__(self):
        return "none"


@dataclass(frozen=True, repr=False)
class GaussianNoise(Corruption):
    """Additive isotropic Gaussian noise ``x~ = x + std * eps``, ``eps ~ N(0, I)``.

    Moments (docs/science.md section 4): ``M1 = X`` and ``M2 = X^T X + N std^2 I``: the same eigenvectors as
    PCA, in the same order, so this noise never changes the learned linear subspace.
    """

    std: float

    def __post_init__(self):
        std = self.std
        if not isinstance(std, numbers.Real) or isinstance(std, bool) or not math.isfinite(std) or std < 0:
            raise ValueError(f"GaussianNoise std: expected a finite number >= 0, got {std!r}")
        object.__setattr__(self, "std", float(std))  # frozen: the one write, at construction

    def __call__(self, pixel_values, generator=None):
        _check_images(pixel_values)
        if self.std == 0:
            return Corrupted(pixel_values)
        noise = torch.randn(
            pixel_values.shape, generator=generator, device=pixel_values.device, dtype=pixel_values.dtype
        )
        return Corrupted(pixel_values + self.std * noise)

    def first_moment(self, X):
        return _as_rows(X)

    def second_moment(self, X, image_shape=None):
        return self.linear_moments(X, image_shape=image_shape)[1]

    def linear_moments(self, X, gram=None, image_shape=None):
        gram, num_samples = _gram(X, gram)
        noise = num_samples * self.std**2 * torch.eye(gram.shape[0], dtype=torch.float64)  # E[eps^T eps]
        return gram, gram + noise

    @property
    def is_identity(self):
        return self.std == 0

    def __str__(self):
        return f"gaussian:{self.std:g}"


@dataclass(frozen=True, repr=False)
class Masking(Corruption):
    """Random masking of non-overlapping ``patch_size x patch_size`` patches.

    Each patch (spanning all channels) is masked independently with probability ``ratio``; masked pixels
    are set to 0. When the image size is not a multiple of ``patch_size`` the last row/column of patches
    is cropped. This is the masking of the paper's theory (docs/science.md section 4); MAE's fixed-count
    masking (exactly ``round(ratio * L)`` patches per image, as in ``ViTMAEEmbeddings.random_masking``) is a
    slightly different distribution and is kept by the MAE family.

    Moments: ``M1 = (1 - ratio) X`` and ``M2 = (X^T X) * M`` (entrywise) with ``M_ij = 1 - ratio`` when
    pixels ``i`` and ``j`` fall in the same patch (``i == j`` included) and ``(1 - ratio)^2`` otherwise.
    """

    ratio: float
    patch_size: int = 1

    def __post_init__(self):
        ratio, patch_size = self.ratio, self.patch_size
        if not isinstance(ratio, numbers.Real) or isinstance(ratio, bool) or not (0 <= ratio < 1):
            raise ValueError(f"Masking ratio: expected a number in [0, 1), got {ratio!r}")
        if not isinstance(patch_size, int) or isinstance(patch_size, bool) or patch_size < 1:
            raise ValueError(f"Masking patch_size: expected an integer >= 1, got {patch_size!r}")
        object.__setattr__(self, "ratio", float(ratio))  # frozen: the one write, at construction

    def sample_mask(
        self, batch_size: int, height: int, width: int, generator=None, device=None
    ) -> torch.Tensor:
        """Draw a mask of shape `(batch_size, 1, height, width)`, `True` where masked."""
        k = self.patch_size
        grid = (batch_size, 1, math.ceil(height / k), math.ceil(width / k))
        masked_patches = torch.rand(grid, generator=generator, device=device) < self.ratio  # (B, 1, h, w)
        pixels = masked_patches.repeat_interleave(k, dim=2).repeat_interleave(k, dim=3)
        return pixels[:, :, :height, :width]

    def __call__(self, pixel_values, generator=None):
        _check_images(pixel_values)
        batch_size, _, height, width = pixel_values.shape
        mask = self.sample_mask(batch_size, height, width, generator=generator, device=pixel_values.device)
        return Corrupted(pixel_values.masked_fill(mask, 0.0), mask)

    def patch_index(self, image_shape: tuple[int, int, int]) -> torch.Tensor:
        """Patch id of every flattened pixel, shape `(C * H * W,)`, in ``pixel_values.flatten(1)`` order."""
        num_channels, height, width = _check_image_shape(image_shape)
        k = self.patch_size
        rows = torch.arange(height) // k
        cols = torch.arange(width) // k
        per_pixel = rows[:, None] * math.ceil(width / k) + cols[None, :]  # (H, W)
        return per_pixel.expand(num_channels, height, width).reshape(-1)

    def keep_probabilities(self, image_shape: tuple[int, int, int]) -> torch.Tensor:
        """The matrix ``M`` with ``M2 = (X^T X) * M``; float64 `(D, D)`."""
        patch = self.patch_index(image_shape)
        keep = 1.0 - self.ratio
        same_patch = patch[:, None] == patch[None, :]
        return torch.where(same_patch, keep, keep**2).to(torch.float64)

    def first_moment(self, X):
        return (1.0 - self.ratio) * _as_rows(X)

    def second_moment(self, X, image_shape=None):
        return self.linear_moments(X, image_shape=image_shape)[1]

    def linear_moments(self, X, gram=None, image_shape=None):
        gram, _ = _gram(X, gram)
        dim = gram.shape[0]
        if image_shape is None:
            if self.patch_size != 1:
                raise ValueError(
                    f"image_shape: patch masking with patch_size={self.patch_size} needs the image shape "
                    "(num_channels, height, width) to know which pixels share a patch"
                )
            # Pixel masking masks every feature on its own; treat them as (D, 1, 1) "images".
            image_shape = (dim, 1, 1)
        if math.prod(image_shape) != dim:
            raise ValueError(
                f"image_shape: {tuple(image_shape)} holds {math.prod(image_shape)} values but X has "
                f"{dim} features per sample"
            )
        return (1.0 - self.ratio) * gram, gram * self.keep_probabilities(tuple(image_shape))

    @property
    def is_identity(self):
        return self.ratio == 0

    def __str__(self):
        return f"mask:{self.ratio:g}:{self.patch_size}"


def _check_image_shape(image_shape) -> tuple[int, int, int]:
    if (
        not isinstance(image_shape, (tuple, list))
        or len(image_shape) != 3
        or not all(isinstance(v, int) and v >= 1 for v in image_shape)
    ):
        raise ValueError(
            f"image_shape: expected (num_channels, height, width) positive integers, got {image_shape!r}"
        )
    return tuple(image_shape)


def parse_corruption(spec: str | Corruption | None) -> Corruption:
    """Build a corruption from its string form.

    Args:
        spec: ``"none"`` (or ``None``), ``"gaussian:STD"``, ``"mask:RATIO:PATCH"`` (``"mask:RATIO"`` means
            patch size 1), or an existing :class:`Corruption`, returned as is.

    Raises:
        ValueError: naming the string and the accepted forms.

    Example:
        >>> parse_corruption("mask:0.75:4")
        Masking(mask:0.75:4)
        >>> str(parse_corruption("gaussian:0.1"))
        'gaussian:0.1'
    """
    if spec is None:
        return NoCorruption()
    if isinstance(spec, Corruption):
        return spec
    if not isinstance(spec, str):
        raise ValueError(f"corruption: expected a string of the form {CORRUPTION_FORMS}, got {spec!r}")
    kind, *args = spec.strip().lower().split(":")
    try:
        if kind == "none" and not args:
            return NoCorruption()
        if kind == "gaussian" and len(args) == 1:
            return GaussianNoise(float(args[0]))
        if kind == "mask" and len(args) in (1, 2):
            patch = args[1] if len(args) == 2 else "1"
            if not patch.isdigit():
                raise ValueError(f"patch size {patch!r} is not an integer")
            return Masking(float(args[0]), int(patch))
    except ValueError as err:
        raise ValueError(f"corruption {spec!r}: {err}; expected {CORRUPTION_FORMS}") from None
    raise ValueError(f"corruption {spec!r}: unknown form; expected {CORRUPTION_FORMS}")
