"""The lithography simulator: SOCS aerial image, resist diffusion, constant-threshold print.

Tone: the mask value is the transmission of an opening (1 = drawn feature = clear
glass on a dark-field mask, as for trenches, contacts and vias); the resist prints
a feature where ``dose * I`` exceeds the threshold. A clear field (all ones)
images to 1.

The window is taken as periodic (the FFT wraps). :class:`~toolkit.litho.farm.FarmGenerator`
simulates a window padded with the layout's real neighbourhood and crops the
centre, so wrap-around never reaches a sample.
"""

from __future__ import annotations

import math

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.errors import ConfigError, ContractError
from toolkit.litho.optics import (
    OpticsSettings,
    SocsKernels,
    check_mask,
    compute_socs_kernels,
    small_grid_px,
    socs_intensity_spectrum,
    upsample_spectrum,
)


class ResistSettings(BaseModel):
    """Constant-threshold resist with optional Gaussian acid diffusion.

    The default threshold prints a dense 1:1 grating of 120 nm pitch near size
    under the default optics (see ``bench/litho_bench.py``).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float = Field(0.30, gt=0.0, lt=10.0)
    diffusion_nm: float = Field(5.0, ge=0.0, le=200.0)


def _diffusion_filter(grid_px: int, period_nm: float, diffusion_nm: float) -> np.ndarray:
    """Gaussian blur transfer function on the half spectrum (``rfft2`` layout) of a ``grid_px`` grid."""
    ky = np.fft.fftfreq(grid_px, d=1.0 / grid_px) / period_nm
    kx = np.arange(grid_px // 2 + 1) / period_nm
    f2 = ky[:, None] ** 2 + kx[None, :] ** 2
    return np.exp(-2.0 * math.pi**2 * diffusion_nm**2 * f2).astype(np.float32)


def threshold_area_fraction(image: np.ndarray, threshold: float) -> np.ndarray:
    """Soft threshold: each pixel gets the fraction of its area where ``image > threshold``.

    The image is taken as locally linear across a pixel, so the fraction is
    ``clip(0.5 + (image - threshold) / |grad image|, 0, 1)`` (gradient in per-pixel
    units). Away from an edge this is exactly 0 or 1; on an edge it anti-aliases
    by the sub-pixel position of the contour.
    """
    image = np.asarray(image, dtype=np.float32)
    gy, gx = np.gradient(image)
    grad = np.sqrt(gx * gx + gy * gy)
    frac = (image - np.float32(threshold)) / np.maximum(grad, np.float32(1e-6))
    frac += np.float32(0.5)
    return np.clip(frac, 0.0, 1.0, out=frac)


class LithoSimulator:
    """Aerial and printed images of square masks at a fixed pixel pitch.

    Kernels are computed from ``optics`` (cached per optics, window size,
    pixel pitch and defocus) unless ``kernels`` (e.g. read from contest files)
    are given; those are resampled to the window's frequency grid.
    """

    def __init__(
        self,
        size_px: int = 256,
        nm_per_px: float = 4.0,
        optics: OpticsSettings | None = None,
        resist: ResistSettings | None = None,
        kernels: SocsKernels | None = None,
    ) -> None:
        if size_px < 8 or not nm_per_px > 0:
            raise ConfigError(f"simulator needs size_px >= 8 and nm_per_px > 0, got {size_px}, {nm_per_px}")
        self.size_px = size_px
        self.nm_per_px = float(nm_per_px)
        self.optics = optics or OpticsSettings()
        self.resist = resist or ResistSettings()
        self.external_kernels = kernels
        self._filters: dict[tuple[int, float], np.ndarray] = {}

    def kernels(self, size_px: int, defocus_nm: float = 0.0) -> SocsKernels:
        """SOCS kernels for a window of ``size_px`` pixels at this pixel pitch."""
        period = size_px * self.nm_per_px
        if self.external_kernels is not None:
            if defocus_nm != 0.0:
                raise ConfigError("external SOCS kernels have a fixed focus; defocus_nm must be 0")
            return self.external_kernels.resampled(period)
        return compute_socs_kernels(self.optics, period, float(defocus_nm))

    def _intensity(self, mask: np.ndarray, defocus_nm: float, diffusion_nm: float) -> np.ndarray:
        m = check_mask(mask)
        n = m.shape[0]
        socs = self.kernels(n, defocus_nm)
        if 2 * socs.half_width >= n // 2:
            raise ContractError(f"a {n} px window is too small for the optical band (K={socs.half_width})")
        small = small_grid_px(socs.half_width, n)
        spec = socs_intensity_spectrum(m, socs, small)
        if diffusion_nm > 0:
            key = (small, n * self.nm_per_px)
            filt = self._filters.get(key)
            if filt is None:
                filt = _diffusion_filter(small, n * self.nm_per_px, diffusion_nm)
                self._filters[key] = filt
            spec = spec * filt
        return upsample_spectrum(spec, 2 * socs.half_width, n)

    def aerial(self, mask: np.ndarray, defocus_nm: float = 0.0) -> np.ndarray:
        """Aerial image (float32, clear field == 1) of a square mask; 1 = opening."""
        return np.asarray(self._intensity(mask, defocus_nm, 0.0), dtype=np.float32)

    def printed(self, mask: np.ndarray, dose: float = 1.0, defocus_nm: float = 0.0) -> np.ndarray:
        """Resist image (float32 in [0, 1], 1 = printed feature) at a relative ``dose``."""
        if not dose > 0:
            raise ConfigError(f"dose must be positive, got {dose}")
        latent = self._intensity(mask, defocus_nm, self.resist.diffusion_nm)
        return threshold_area_fraction(dose * latent, self.resist.threshold)
