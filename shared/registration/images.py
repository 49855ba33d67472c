"""Input checks and the smooth images that registration compares.

A print differs from its mask in exactly the fine detail (rounded corners, pulled-back
line ends, features too small to print), so neither whitened spectra nor keypoints
match them. What does match is a low-passed *approximate print* of the mask: the mask
blurred by a Gaussian standing in for the optics, thresholded so that its printed area
equals the print's (which absorbs dose and bias), then blurred like the print. The
threshold and the blur's shape stay free parameters that the refinement fits along with
the transform.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

from shared.errors import ImageError
from shared.imaging import validate_image

BLANK_STD = 1e-3  # an image whose standard deviation is below this carries no pattern


def checked_pair(mask: np.ndarray, simulated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both images as float32 [0, 1] of one shape, or :class:`ImageError`."""
    mask_f = validate_image(mask)
    sim_f = validate_image(simulated)
    if mask_f.shape != sim_f.shape:
        raise ImageError(
            f"mask {mask_f.shape} and simulated {sim_f.shape} differ in shape",
            reason="image_shape_mismatch",
        )
    return mask_f, sim_f


def is_blank(image: np.ndarray) -> bool:
    return float(image.std()) < BLANK_STD


def gaussian(image: np.ndarray, sigma_px: float) -> np.ndarray:
    """Gaussian low-pass with reflected borders (a no-op for sigma 0)."""
    if sigma_px <= 0.0:
        return np.ascontiguousarray(image, dtype=np.float32)
    return np.asarray(cv2.GaussianBlur(image, (0, 0), sigma_px, borderType=cv2.BORDER_REFLECT), np.float32)


def strided_gaussian(image: np.ndarray, sigma_px: float, stride: int) -> np.ndarray:
    """``gaussian(image, sigma_px)`` sampled every ``stride`` pixels (1, 2, 4, ...), computed at
    the low resolution: ``pyrDown`` once per halving (a binomial of variance 1 px at its input,
    then every other pixel), then the rest of the blur. Pixel (i, j) of the result is pixel
    (stride * i, stride * j) of the full-resolution blur."""
    out = np.ascontiguousarray(image, dtype=np.float32)
    halvings = max(1, stride).bit_length() - 1  # stride a power of two
    for _ in range(halvings):
        out = np.asarray(cv2.pyrDown(out, borderType=cv2.BORDER_REFLECT), dtype=np.float32)
    done_variance = (4.0**halvings - 1.0) / 3.0  # in full-resolution px^2
    rest_px = float(np.sqrt(max(sigma_px * sigma_px - done_variance, 0.0))) / 2**halvings
    return gaussian(out, rest_px)


def interior(shape: tuple[int, int], border_px: int) -> np.ndarray:
    """Boolean mask of the pixels at least ``border_px`` from every edge."""
    h, w = shape
    inside = np.zeros((h, w), dtype=bool)
    inside[border_px : h - border_px, border_px : w - border_px] = True
    return inside


AerialModel = Callable[[np.ndarray], np.ndarray]
PSF_SHAPE_RATIOS = (0.5, 2.0)  # extra Gaussians, relative to the optical sigma
PSF_SHAPE_LIMITS = (-0.45, 2.0)  # two terms at the floor still leave 1 + sum(c_k) >= 0.1
PSF_SHAPE_STEP = 0.3


def gaussian_aerial(optics_sigma_px: float) -> AerialModel:
    """The default aerial model: the mask blurred by a Gaussian point spread."""

    def aerial(mask: np.ndarray) -> np.ndarray:
        return gaussian(mask, optics_sigma_px)

    return aerial


def gaussian_basis(mask: np.ndarray, optics_sigma_px: float, fit_shape: bool) -> list[np.ndarray]:
    """The mask blurred at the optical sigma, then (to fit the PSF's shape) at half and twice it."""
    sigmas = [optics_sigma_px] + ([r * optics_sigma_px for r in PSF_SHAPE_RATIOS] if fit_shape else [])
    return [gaussian(mask, sigma) for sigma in sigmas]


def _edge_width(aerial: np.ndarray, threshold: float) -> float:
    """Half the aerial slope across the threshold: a sigmoid of that width is ~1 px wide."""
    grad_y, grad_x = np.gradient(aerial)
    slope = np.hypot(grad_x, grad_y)
    spread = max(float(np.percentile(np.abs(aerial - threshold), 5.0)), 1e-6)
    near = np.abs(aerial - threshold) <= spread
    return max(0.5 * float(np.median(slope[near])), 1e-4)


class ApproximatePrint:
    """A cheap print of the mask, low-passed, with free resist threshold and PSF shape.

    The aerial image is ``(basis[0] + sum(c_k basis[k])) / (1 + sum(c_k))``: ``basis[0]`` is any image that
    increases with exposure (by default the mask blurred at the optical resolution; a
    farm's own optics give a closer one), the others let a fit reshape the point spread
    (dense and isolated features print differently than one Gaussian predicts). The
    threshold starts where the printed area equals the print's. ``render()`` gives the
    smoothed approximate print and its derivatives with respect to the threshold and the
    ``c_k``, so a Gauss-Newton fit adjusts them jointly with the geometry.
    """

    def __init__(self, basis: Sequence[np.ndarray], printed_fraction: float, blur_sigma_px: float) -> None:
        self.basis = [np.ascontiguousarray(b, dtype=np.float32) for b in basis]
        self.shape_coefficients = np.zeros(len(self.basis) - 1)
        self.blur_sigma_px = blur_sigma_px
        self.aerial = self.basis[0]
        self.threshold = self._area_threshold(printed_fraction)
        self.edge_width = _edge_width(self.aerial, self.threshold)
        self._rendered: dict[int, tuple[np.ndarray, list[np.ndarray]]] = {}

    @property
    def n_params(self) -> int:
        return len(self.basis)

    def _area_threshold(self, printed_fraction: float, region: np.ndarray | None = None) -> float:
        fraction = min(max(printed_fraction, 1e-4), 1.0 - 1e-4)
        flat = self.aerial.ravel() if region is None else self.aerial[region]
        k = round((1.0 - fraction) * (flat.size - 1))
        return float(np.partition(flat, k)[k])

    def match_area(self, printed_fraction: float, region: np.ndarray) -> None:
        """Set the threshold so that the printed share of ``region`` (a boolean mask-frame
        mask) is ``printed_fraction``: where the print covers only part of the mask's clip,
        its printed area says nothing about the rest."""
        if np.any(region):
            self.threshold = self._area_threshold(printed_fraction, region)
            self._rendered = {}

    def sharp(self) -> np.ndarray:
        """The approximate print itself (float32 [0, 1], not low-passed)."""
        z = np.clip((self.aerial - self.threshold) / self.edge_width, -30.0, 30.0)
        return (1.0 / (1.0 + np.exp(-z))).astype(np.float32)

    def render(self, n_derivatives: int | None = None,
               stride: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
        """Smoothed approximate print and its first ``n_derivatives`` derivatives (threshold,
        then each ``c_k``; all by default), sampled every ``stride`` pixels (pixel (i, j) is
        full-resolution pixel (stride * i, stride * j)): stride 2 is four times cheaper."""
        wanted = self.n_params if n_derivatives is None else min(n_derivatives, self.n_params)
        cached = self._rendered.get(stride)
        if cached is None or len(cached[1]) < wanted:
            def smooth(image: np.ndarray) -> np.ndarray:
                return strided_gaussian(image, self.blur_sigma_px, stride)

            printed = self.sharp()
            slope = printed * (1.0 - printed) / self.edge_width
            norm = 1.0 + float(self.shape_coefficients.sum())
            derivatives = [smooth(-slope)]
            derivatives += [smooth(slope * (b - self.aerial) / norm) for b in self.basis[1:wanted]]
            cached = (smooth(printed), derivatives[:wanted])
            self._rendered[stride] = cached
        return cached[0], cached[1][:wanted]

    def snapshot(self) -> tuple[float, np.ndarray, np.ndarray]:
        return self.threshold, self.shape_coefficients.copy(), self.aerial

    def restore(self, state: tuple[float, np.ndarray, np.ndarray]) -> None:
        self.threshold, self.shape_coefficients, self.aerial = state[0], state[1].copy(), state[2]
        self._rendered = {}

    def update(self, deltas: np.ndarray, trust: float = 1.0) -> None:
        """Apply a fitted step: threshold first, then the PSF-shape coefficients.

        Steps are capped to where the linearisation holds, times ``trust``: the threshold
        moves at most two edge widths (a pixel or two of edge placement), the shape by
        ``PSF_SHAPE_STEP``.
        """
        # One factor for all, so the step keeps its direction (threshold and shape interact).
        biggest = max(abs(float(deltas[0])) / (2.0 * self.edge_width * trust),
                      float(np.abs(deltas[1:]).max(initial=0.0)) / (PSF_SHAPE_STEP * trust), 1.0)
        step = np.asarray(deltas, dtype=np.float64) / biggest
        self.threshold += float(step[0])
        if self.shape_coefficients.size and np.any(step[1:] != 0.0):
            self.shape_coefficients = np.clip(self.shape_coefficients + step[1:], *PSF_SHAPE_LIMITS)
            aerial = self.basis[0].copy()
            for coefficient, term in zip(self.shape_coefficients, self.basis[1:], strict=True):
                aerial += np.float32(coefficient) * term
            # Normalised so that the coefficients change the PSF's shape, not its gain (which
            # the threshold already covers).
            self.aerial = aerial / np.float32(1.0 + self.shape_coefficients.sum())
        self.threshold = min(max(self.threshold, float(self.aerial.min())), float(self.aerial.max()))
        self._rendered = {}


def approximate_print(mask: np.ndarray, printed_fraction: float, optics_sigma_px: float) -> np.ndarray:
    """A cheap stand-in for the print of ``mask`` whose printed area is ``printed_fraction``."""
    return ApproximatePrint([gaussian(mask, optics_sigma_px)], printed_fraction, 0.0).sharp()


class FixedReference:
    """A reference with no free parameter (the raw mask, low-passed)."""

    def __init__(self, image: np.ndarray, blur_sigma_px: float) -> None:
        self.smooth = gaussian(image, blur_sigma_px)

    n_params = 0

    def render(self, n_derivatives: int | None = None,
               stride: int = 1) -> tuple[np.ndarray, list[np.ndarray]]:
        return (np.ascontiguousarray(self.smooth[::stride, ::stride]) if stride > 1 else self.smooth), []

    def snapshot(self) -> tuple[float, np.ndarray, np.ndarray]:
        return 0.0, np.zeros(0), self.smooth

    def restore(self, state: tuple[float, np.ndarray, np.ndarray]) -> None:
        """Nothing to restore."""

    def match_area(self, printed_fraction: float, region: np.ndarray) -> None:
        """No threshold to set."""

    def update(self, deltas: np.ndarray, trust: float = 1.0) -> None:
        """Nothing to adjust."""
