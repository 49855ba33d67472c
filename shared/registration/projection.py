"""Aerial images of a projection scanner for the approximate print, from two numbers.

A Gaussian point spread prints line ends and corners differently than a scanner does:
with a partially coherent source the image of a line end falls off faster and farther
from the drawn end than a Gaussian of the same width predicts, so ends the print pulls
back read as a shrink of the whole clip. This model images the mask through a circular
pupil (cutoff ``cutoff_per_px`` cycles per pixel, i.e. NA / wavelength times the pixel
size) from an annulus of source points (Abbe's summation; an annular source, as 193 nm
immersion scanners use for dense layers) with an optional defocus phase. It assumes no
farm's exact optics: the cutoff follows from the approximate print's Gaussian sigma
(about 0.2 wavelength / NA), the annulus is a typical setting (0.6-0.8), and focus is
left to the fit (:func:`projection_basis` gives an in-focus and a defocused image that
the approximate print mixes per result).
"""

from __future__ import annotations

import math
from functools import lru_cache

import cv2
import numpy as np
import scipy.fft

GAUSSIAN_SIGMA_PER_WAVELENGTH_OVER_NA = 0.2  # the Gaussian width that stands in for a 193i PSF
ANNULUS_SIGMA = (0.6, 0.8)  # inner and outer source radius, in units of the pupil's
SOURCE_RINGS = 3  # rings across the annulus, at the middles of equal-width bands
SOURCE_POINTS = 32  # per ring; the intensity is symmetric in s and -s in focus
DEFOCUS_PHASE_RAD = 1.5  # pupil-edge phase of the defocused basis (~50 nm at 193i, NA 1.35)


def cutoff_from_sigma(optics_sigma_px: float) -> float:
    """Pupil cutoff NA / wavelength, in cycles per pixel, of the optics a Gaussian of
    ``optics_sigma_px`` stands in for."""
    return GAUSSIAN_SIGMA_PER_WAVELENGTH_OVER_NA / optics_sigma_px


def projection_aerial(mask: np.ndarray, cutoff_per_px: float, defocus_rad: float = 0.0,
                      annulus: tuple[float, float] = ANNULUS_SIGMA) -> np.ndarray:
    """Aerial image (float32, clear field 1) of ``mask`` through a circular pupil of radius
    ``cutoff_per_px`` lit from an ``annulus`` of source points (inner and outer radius in
    units of the cutoff: ``SOURCE_RINGS`` rings of ``SOURCE_POINTS``, weighted by their
    circumference), with a paraxial defocus phase of ``defocus_rad`` at the pupil's edge.

    The mask is extended by reflection beyond its edges (like the Gaussian model), not
    taken as periodic. The fields pass only frequencies up to ``1 + annulus[1]`` times
    the cutoff, so they and their intensities are computed on a coarse grid that holds
    the intensity's band, then brought to full resolution by zero-padding its spectrum."""
    return _Imaging(mask, cutoff_per_px, annulus).aerial(defocus_rad)


class _Imaging:
    """One mask's band-limited spectrum, from which aerial images at several foci are made."""

    def __init__(self, mask: np.ndarray, cutoff_per_px: float, annulus: tuple[float, float]) -> None:
        self.cutoff, self.annulus, self.shape = cutoff_per_px, annulus, mask.shape
        self.pad = min(math.ceil(1.5 / cutoff_per_px), max(mask.shape))
        pad = self.pad
        padded = cv2.copyMakeBorder(np.ascontiguousarray(mask, dtype=np.float32), pad, pad, pad, pad,
                                    cv2.BORDER_REFLECT)
        h, w = padded.shape
        band = 2.0 * (1.0 + annulus[1]) * cutoff_per_px  # intensity band, cycles per px
        small_h = min(scipy.fft.next_fast_len(2 * math.ceil(band * h) + 2), h)
        small_w = min(scipy.fft.next_fast_len(2 * math.ceil(band * w) + 2), w)
        self.full_shape, self.small_shape = (h, w), (small_h, small_w)
        self.rows, self.cols = _band_indices(small_h) % h, _band_indices(small_w) % w
        spectrum = scipy.fft.fft2(padded, workers=1)[np.ix_(self.rows, self.cols)].astype(np.complex64)
        # Standard FFT order on the coarse grid, scaled so that a clear field stays 1.
        self.spectrum = np.fft.ifftshift(spectrum * np.float32(small_h * small_w / (h * w)))

    def aerial(self, defocus_rad: float) -> np.ndarray:
        """The aerial image at ``defocus_rad`` (see :func:`projection_aerial`)."""
        pupils, weights = _pupils(self.full_shape, self.small_shape, self.cutoff, defocus_rad, self.annulus)
        fields = scipy.fft.ifft2(self.spectrum[None] * pupils, axes=(-2, -1), workers=1)
        intensity = fields.real * fields.real + fields.imag * fields.imag
        small = np.tensordot(weights, intensity, axes=1).astype(np.float32)
        h, w = self.full_shape
        full = np.zeros((h, w), np.complex64)
        full[np.ix_(self.rows, self.cols)] = np.fft.fftshift(scipy.fft.fft2(small, workers=1)) * np.float32(
            h * w / (small.shape[0] * small.shape[1]))
        image = scipy.fft.ifft2(full, workers=1).real.astype(np.float32)
        top, (rows, cols) = self.pad, self.shape
        return np.ascontiguousarray(image[top : top + rows, top : top + cols])


@lru_cache(maxsize=4)  # a few clip sizes; each entry holds every source point's pupil (up to 5 MB at 256 px)
def _pupils(full_shape: tuple[int, int], small_shape: tuple[int, int], cutoff_per_px: float,
            defocus_rad: float, annulus: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The shifted pupils of every source point on the coarse grid (standard FFT order,
    ``(points, h, w)`` complex64) and the points' weights (summing to 1). In focus the
    pupil is real and even, so source points s and -s give the same image and half of
    them do."""
    (h, w), (small_h, small_w) = full_shape, small_shape
    fy = np.fft.ifftshift(_band_indices(small_h) / h).astype(np.float32)[:, None]
    fx = np.fft.ifftshift(_band_indices(small_w) / w).astype(np.float32)[None, :]
    symmetric = defocus_rad == 0.0 and SOURCE_POINTS % 2 == 0
    angles = np.arange(SOURCE_POINTS // 2 if symmetric else SOURCE_POINTS) * (2.0 * math.pi / SOURCE_POINTS)
    width = (annulus[1] - annulus[0]) / SOURCE_RINGS
    radii = annulus[0] + width * (np.arange(SOURCE_RINGS) + 0.5)
    pupils, weights = [], []
    for radius in radii:
        for angle in angles:
            sx = float(radius) * cutoff_per_px * math.cos(angle)
            sy = float(radius) * cutoff_per_px * math.sin(angle)
            rho2 = ((fx + sx) ** 2 + (fy + sy) ** 2) / np.float32(cutoff_per_px * cutoff_per_px)
            pupil = (rho2 <= 1.0).astype(np.complex64)
            if defocus_rad != 0.0:
                pupil = pupil * np.exp(1j * defocus_rad * rho2).astype(np.complex64)
            pupils.append(pupil)
            weights.append(float(radius))
    weight = np.asarray(weights, dtype=np.float64)
    stacked = np.stack(pupils)
    stacked.setflags(write=False)
    return stacked, weight / weight.sum()


def _band_indices(n_small: int) -> np.ndarray:
    """Frequency indices ``-n_small // 2 .. (n_small - 1) // 2``, in centred order."""
    return np.arange(n_small) - n_small // 2


def projection_basis(mask: np.ndarray, optics_sigma_px: float, fit_shape: bool) -> list[np.ndarray]:
    """The approximate print's basis under the projection model: the in-focus aerial image,
    then (to fit focus per result) a defocused one."""
    imaging = _Imaging(mask, cutoff_from_sigma(optics_sigma_px), ANNULUS_SIGMA)
    basis = [imaging.aerial(0.0)]
    if fit_shape:
        basis.append(imaging.aerial(DEFOCUS_PHASE_RAD))
    return basis
