"""Partially coherent imaging of a binary mask: Hopkins TCC, its SOCS kernels, and Abbe summation.

Scalar model of an immersion scanner: a circular pupil of radius ``NA/lambda``
with defocus as a pupil phase, a source sampled on a square grid in sigma units.
With source points ``s`` of weight ``J_s`` (sum 1) and the clip's discrete
frequencies ``f = k / L`` (``L`` = window size in nm, the mask is taken as
periodic over the window), Abbe's image is ``I(x) = sum_s J_s |sum_f P(f+s) M(f)
e^{2 pi i f x}|^2``. Writing ``A[s, f] = sqrt(J_s) P(f + s)``, the Hopkins TCC is
``A^H A``; its eigenvectors (the right singular vectors of ``A``) are the SOCS
kernels and the squared singular values their weights. Only frequencies with
``|f| <= (1 + sigma_outer) NA / lambda`` can pass, so kernels live on a small
``(2K+1)^2`` grid around DC.
"""

from __future__ import annotations

import math
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Literal

import numpy as np
import scipy.fft
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.errors import ConfigError, ContractError

SourceShape = Literal["annular", "conventional", "dipole", "quasar"]


class OpticsSettings(BaseModel):
    """Scanner optics. Frozen and hashable, so kernels can be cached per settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    wavelength_nm: float = Field(193.0, gt=0)
    na: float = Field(1.35, gt=0)
    immersion_index: float = Field(1.44, ge=1.0)
    source: SourceShape = "annular"
    sigma_inner: float = Field(0.6, ge=0.0, le=1.0)
    sigma_outer: float = Field(0.8, gt=0.0, le=1.0)
    pole_angle_deg: float = Field(35.0, gt=0.0, le=90.0)
    dipole_axis: Literal["x", "y"] = "x"
    n_kernels: int = Field(24, ge=1, le=512)
    source_grid: int = Field(41, ge=5, le=201)

    @model_validator(mode="after")
    def _check(self) -> OpticsSettings:
        if self.source != "conventional" and self.sigma_inner >= self.sigma_outer:
            raise ValueError("sigma_inner must be below sigma_outer")
        if self.na >= self.immersion_index:
            raise ValueError("na must be below the immersion index")
        return self

    @property
    def cutoff_per_nm(self) -> float:
        """Highest mask frequency that reaches the pupil for some source point."""
        return (1.0 + self.sigma_outer) * self.na / self.wavelength_nm


def source_points(optics: OpticsSettings) -> tuple[np.ndarray, np.ndarray]:
    """Source sample positions ``(n, 2)`` in sigma units and weights ``(n,)`` summing to 1.

    The grid is odd and centred, so every shape keeps its mirror symmetry.
    """
    n = optics.source_grid | 1
    axis = np.linspace(-1.0, 1.0, n)
    sx, sy = np.meshgrid(axis, axis)
    radius = np.hypot(sx, sy)
    tol = 1e-9
    inside = radius <= optics.sigma_outer + tol
    if optics.source != "conventional":
        inside &= radius >= optics.sigma_inner - tol
    if optics.source in ("dipole", "quasar"):
        angle = np.degrees(np.arctan2(sy, sx)) % 180.0
        half = optics.pole_angle_deg / 2.0
        if optics.source == "dipole":
            centre = 0.0 if optics.dipole_axis == "x" else 90.0
            dist = np.minimum(np.abs(angle - centre), 180.0 - np.abs(angle - centre))
        else:
            dist = np.minimum(np.abs(angle - 45.0), np.abs(angle - 135.0))
        inside &= dist <= half + tol
    points = np.stack([sx[inside], sy[inside]], axis=1)
    if len(points) == 0:
        raise ConfigError("the source has no sample points; raise source_grid or widen the source")
    return points, np.full(len(points), 1.0 / len(points))


def pupil(fx: np.ndarray, fy: np.ndarray, optics: OpticsSettings, defocus_nm: float) -> np.ndarray:
    """Complex pupil at spatial frequencies (1/nm): a disc of radius NA/lambda with defocus phase."""
    lam = optics.wavelength_nm
    rho2 = (fx * fx + fy * fy) * lam * lam
    inside = rho2 <= optics.na * optics.na * (1.0 + 1e-12)
    out = inside.astype(np.complex128)
    if defocus_nm != 0.0:
        n = optics.immersion_index
        phase = (2.0 * math.pi / lam) * defocus_nm * (np.sqrt(np.maximum(n * n - rho2, 0.0)) - n)
        out = out * np.exp(1j * phase)
    return out


def band_half_width(cutoff_per_nm: float, period_nm: float) -> int:
    """K such that frequencies ``k / period`` with ``|k| <= K`` cover the cutoff."""
    return math.floor(cutoff_per_nm * period_nm + 1e-9)


@dataclass(frozen=True)
class SocsKernels:
    """SOCS kernels in the frequency domain for one window period.

    ``kernels[k]`` is a ``(2K+1, 2K+1)`` complex array, DC at ``[K, K]``, row =
    y frequency, column = x frequency, frequency step ``1 / period_nm``. The image
    is ``sum_k weights[k] |IFFT(kernels[k] * M)|^2``, normalised so a clear field is 1.
    """

    kernels: np.ndarray
    weights: np.ndarray
    period_nm: float

    @property
    def half_width(self) -> int:
        return (self.kernels.shape[-1] - 1) // 2

    @cached_property
    def kernels_c64(self) -> np.ndarray:
        """Single-precision copy used by the fast imaging path."""
        return self.kernels.astype(np.complex64)

    def __post_init__(self) -> None:
        if (
            self.kernels.ndim != 3
            or self.kernels.shape[1] != self.kernels.shape[2]
            or self.kernels.shape[1] % 2 != 1
        ):
            raise ContractError(f"SOCS kernels must be (n, 2K+1, 2K+1), got {self.kernels.shape}")
        if self.weights.shape != (self.kernels.shape[0],):
            raise ContractError("one weight per SOCS kernel")

    def normalised(self) -> SocsKernels:
        """Rescale the weights so a clear field images to exactly 1."""
        k = self.half_width
        clear = float(np.sum(self.weights * np.abs(self.kernels[:, k, k]) ** 2))
        if not clear > 0:
            raise ConfigError("SOCS kernels pass no light at DC (clear field is dark)")
        return SocsKernels(self.kernels, self.weights / clear, self.period_nm)

    def resampled(self, period_nm: float) -> SocsKernels:
        """Kernels on the frequency grid of another period (linear interpolation in frequency)."""
        if math.isclose(period_nm, self.period_nm, rel_tol=1e-9):
            return self
        from scipy.ndimage import map_coordinates

        k_src = self.half_width
        k_dst = band_half_width(k_src / self.period_nm, period_nm)
        grid = np.arange(-k_dst, k_dst + 1) * (self.period_nm / period_nm) + k_src
        gy, gx = np.meshgrid(grid, grid, indexing="ij")
        out = np.empty((len(self.kernels), 2 * k_dst + 1, 2 * k_dst + 1), dtype=np.complex128)
        for i, ker in enumerate(self.kernels):
            re = map_coordinates(ker.real, [gy, gx], order=1, mode="constant", cval=0.0)
            im = map_coordinates(ker.imag, [gy, gx], order=1, mode="constant", cval=0.0)
            out[i] = re + 1j * im
        return SocsKernels(out, self.weights.copy(), period_nm).normalised()


def _source_pupil_matrix(
    optics: OpticsSettings, period_nm: float, defocus_nm: float
) -> tuple[np.ndarray, np.ndarray, int]:
    """``A[s, f] = sqrt(J_s) P(f + s)`` over the band frequencies inside the cutoff disc."""
    k = band_half_width(optics.cutoff_per_nm, period_nm)
    ks = np.arange(-k, k + 1)
    ky, kx = np.meshgrid(ks, ks, indexing="ij")
    in_disc = np.hypot(kx, ky) / period_nm <= optics.cutoff_per_nm * (1.0 + 1e-9)
    fx = kx[in_disc] / period_nm
    fy = ky[in_disc] / period_nm
    pts, weights = source_points(optics)
    scale = optics.na / optics.wavelength_nm
    a = pupil(fx[None, :] + pts[:, :1] * scale, fy[None, :] + pts[:, 1:] * scale, optics, defocus_nm)
    return a * np.sqrt(weights)[:, None], in_disc, k


def _single_threaded() -> AbstractContextManager[object]:
    """Limit BLAS to one thread: these small factorizations thrash when threads oversubscribe."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return nullcontext()
    return threadpool_limits(1)


@lru_cache(maxsize=64)
def compute_socs_kernels(optics: OpticsSettings, period_nm: float, defocus_nm: float = 0.0) -> SocsKernels:
    """Top ``optics.n_kernels`` SOCS kernels of the Hopkins TCC for a window of ``period_nm``.

    The TCC ``A^H A`` is large (frequencies squared); its top eigenvectors come
    from the small Gram matrix ``A A^H`` (source points squared): if
    ``A A^H u = s^2 u`` then ``v = A^H u / s`` is a TCC eigenvector of eigenvalue ``s^2``.
    """
    a, in_disc, k = _source_pupil_matrix(optics, period_nm, defocus_nm)
    with _single_threaded():
        gram = a @ a.conj().T
        eigval, eigvec = np.linalg.eigh(gram)
    order = np.argsort(eigval)[::-1]
    keep = [i for i in order[: optics.n_kernels] if eigval[i] > 1e-12 * eigval[order[0]]]
    sing = np.sqrt(eigval[keep])
    vh = (eigvec[:, keep].conj().T @ a) / sing[:, None]
    kernels = np.zeros((len(keep), 2 * k + 1, 2 * k + 1), dtype=np.complex128)
    kernels[:, in_disc] = vh
    return SocsKernels(kernels, sing**2, period_nm).normalised()


def check_mask(mask: np.ndarray) -> np.ndarray:
    """A square float mask with values in [0, 1] (transmission of the opening)."""
    if not isinstance(mask, np.ndarray) or mask.ndim != 2 or mask.shape[0] != mask.shape[1]:
        raise ContractError(f"mask must be a square 2-D array, got {getattr(mask, 'shape', None)}")
    if mask.dtype not in (np.float32, np.float64, np.uint8, np.bool_):
        raise ContractError(f"mask dtype {mask.dtype} is not supported")
    out = np.asarray(mask, dtype=np.float64)
    if not np.isfinite(out).all():
        raise ContractError("mask contains NaN or infinity")
    return out


def _band_indices(k: int, n: int) -> np.ndarray:
    """FFT indices of frequencies ``-k..k`` (centred order) on an ``n``-point axis."""
    return np.arange(-k, k + 1) % n


def band_spectrum(mask: np.ndarray, k: int) -> np.ndarray:
    """Mask spectrum at frequencies ``-k..k`` on both axes (centred, DC at ``[k, k]``), from a real FFT."""
    n = mask.shape[0]
    half = scipy.fft.rfft2(mask, workers=1)  # (n, n//2 + 1): x frequencies 0..n/2
    rows = _band_indices(k, n)
    out = np.empty((2 * k + 1, 2 * k + 1), dtype=half.dtype)
    out[:, k:] = half[rows][:, : k + 1]
    # Negative x frequencies from Hermitian symmetry: M(ky, -kx) = conj(M(-ky, kx)).
    out[:, :k] = np.conj(half[(-np.arange(-k, k + 1)) % n][:, k:0:-1])
    return out


def socs_intensity_spectrum(mask: np.ndarray, socs: SocsKernels, small_px: int) -> np.ndarray:
    """Half spectrum (``rfft2``) of the aerial image on a ``small_px`` grid.

    The field is band-limited to ``K`` and the intensity to ``2K``, so computing
    both on a grid of at least ``4K+1`` points loses nothing. Single precision
    throughout (errors ~1e-6 of the clear field).
    """
    n = mask.shape[0]
    k = socs.half_width
    band = band_spectrum(mask.astype(np.float32, copy=False), k)
    fields_spec = np.zeros((len(socs.kernels), small_px, small_px), dtype=np.complex64)
    sidx = _band_indices(k, small_px)
    fields_spec[:, sidx[:, None], sidx[None, :]] = socs.kernels_c64 * band[None]
    fields = scipy.fft.ifft2(fields_spec, axes=(-2, -1), workers=1, overwrite_x=True)
    scale = np.float32((small_px * small_px) / (n * n))
    power = fields.real**2 + fields.imag**2
    small = np.tensordot(socs.weights.astype(np.float32) * scale * scale, power, axes=1)
    return scipy.fft.rfft2(small, workers=1)


def upsample_spectrum(spec_small: np.ndarray, k_band: int, n: int) -> np.ndarray:
    """Real image of size ``n`` from the small grid's half spectrum, keeping ``|k| <= k_band``."""
    m = spec_small.shape[0]
    full = np.zeros((n, n // 2 + 1), dtype=spec_small.dtype)
    rows_small = _band_indices(k_band, m)
    rows_full = _band_indices(k_band, n)
    full[rows_full, : k_band + 1] = spec_small[rows_small, : k_band + 1]
    return scipy.fft.irfft2(full, s=(n, n), workers=1, overwrite_x=True) * np.float32((n * n) / (m * m))


def small_grid_px(k: int, n: int) -> int:
    """Smallest fast FFT size holding the intensity band ``2K`` without aliasing (<= n)."""
    return min(n, scipy.fft.next_fast_len(4 * k + 2))


def abbe_aerial(
    mask: np.ndarray, nm_per_px: float, optics: OpticsSettings, defocus_nm: float = 0.0
) -> np.ndarray:
    """Aerial image by direct summation over source points, one full-size FFT per point.

    Slow reference for the SOCS path (same physics, no truncation, no band tricks).
    """
    m = check_mask(mask)
    n = m.shape[0]
    period = n * nm_per_px
    spec = scipy.fft.fft2(m, workers=1)
    freqs = scipy.fft.fftfreq(n, d=nm_per_px)
    fy, fx = np.meshgrid(freqs, freqs, indexing="ij")
    pts, weights = source_points(optics)
    scale = optics.na / optics.wavelength_nm
    del period
    image = np.zeros((n, n))
    for (sx, sy), w in zip(pts, weights, strict=True):
        field = scipy.fft.ifft2(spec * pupil(fx + sx * scale, fy + sy * scale, optics, defocus_nm), workers=1)
        image += w * (field.real**2 + field.imag**2)
    return image.astype(np.float32)
