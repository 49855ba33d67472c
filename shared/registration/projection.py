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
    pad = min(math.ceil(1.5 / cutoff_per_px), max(mask.shape))
    padded = cv2.copyMakeBorder(np.ascontiguousarray(mask, dtype=np.float32), pad, pad, pad, pad,
                                cv2.BORDER_REFLECT)
    h, w = padded.shape
    band = 2.0 * (1.0 + annulus[1]) * cutoff_per_px  # intensity band, cycles per px
    small_h = min(scipy.fft.next_fast_len(2 * math.ceil(band * h) + 2), h)
    small_w = min(scipy.fft.next_fast_len(2 * math.ceil(band * w) + 2), w)
    ky = _band_indices(small_h)
    kx = _band_indices(small_w)
    spectrum = scipy.fft.fft2(padded, workers=1)[np.ix_(ky % h, kx % w)].astype(np.complex64)
    spectrum *= np.float32(small_h * small_w / (h * w))
    fy = (ky / h).astype(np.float32)[:, None]
    fx = (kx / w).astype(np.float32)[None, :]
    # In focus the pupil is real and even, so source points s and -s give the same image.
    symmetric = defocus_rad == 0.0 and SOURCE_POINTS % 2 == 0
    angles = np.arange(SOURCE_POINTS // 2 if symmetric else SOURCE_POINTS) * (2.0 * math.pi / SOURCE_POINTS)
    width = (annulus[1] - annulus[0]) / SOURCE_RINGS
    radii = annulus[0] + width * (np.arange(SOURCE_RINGS) + 0.5)
    small = np.zeros((small_h, small_w), np.float32)
    for radius in radii:
        ring = np.zeros((small_h, small_w), np.float32)
        for angle in angles:
            sx = float(radius) * cutoff_per_px * math.cos(angle)
            sy = float(radius) * cutoff_per_px * math.sin(angle)
            rho2 = ((fx + sx) ** 2 + (fy + sy) ** 2) / np.float32(cutoff_per_px * cutoff_per_px)
            pupil = (rho2 <= 1.0).astype(np.complex64)
            if defocus_rad != 0.0:
                pupil = pupil * np.exp(1j * defocus_rad * rho2).astype(np.complex64)
            field = scipy.fft.ifft2(np.fft.ifftshift(spectrum * pupil), workers=1)
            ring += (field.real * field.real + field.imag * field.imag).astype(np.float32)
        small += ring * np.float32(radius / (len(angles) * float(radii.sum())))
    full = np.zeros((h, w), np.complex64)
    full[np.ix_(ky % h, kx % w)] = np.fft.fftshift(scipy.fft.fft2(small, workers=1)) * np.float32(
        h * w / (small_h * small_w))
    image = scipy.fft.ifft2(full, workers=1).real.astype(np.float32)
    return np.ascontiguousarray(image[pad : pad + mask.shape[0], pad : pad + mask.shape[1]])


def _band_indices(n_small: int) -> np.ndarray:
    """Frequency indices ``-n_small // 2 .. (n_small - 1) // 2``, in centred order."""
    return np.arange(n_small) - n_small // 2


def projection_basis(mask: np.ndarray, optics_sigma_px: float, fit_shape: bool) -> list[np.ndarray]:
    """The approximate print's basis under the projection model: the in-focus aerial image,
    then (to fit focus per result) a defocused one."""
    cutoff = cutoff_from_sigma(optics_sigma_px)
    basis = [projection_aerial(mask, cutoff)]
    if fit_shape:
        basis.append(projection_aerial(mask, cutoff, DEFOCUS_PHASE_RAD))
    return basis
