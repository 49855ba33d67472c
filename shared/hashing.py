"""Exact and shift-robust perceptual hashes of (mask, print) clips, and their band keys.

Farms re-simulate the same layout with the clip window moved by a few pixels, so
a perceptual hash of the window itself is useless for deduplication: plain pHash
moves about as far for an 8 px shift as between unrelated clips. This module
hashes what a window shift does not change:

- :func:`exact_digest`: sha256 over the canonical 8-bit pixels of mask and print
  (:func:`shared.imaging.pixel_digest`), so PNG/NPY encoding does not matter.
- :func:`spectral_hash` (kind ``spectral-v1``, 256 bits): a SimHash of the
  *magnitude* spectrum of the mask. A translation only changes the phase of the
  Fourier transform; the Hann taper keeps the content that enters or leaves the
  window at its borders from moving the magnitudes much. The log-magnitudes up
  to ``MAX_FREQUENCY`` cycles per window are whitened per (radius, angle to the
  nearest axis) stratum, so the bits describe a layout's pitch and orientation structure
  rather than the 1/f fall-off and the Manhattan cross every clip shares, then
  pooled 2x2 and projected on fixed +-1 vectors (derived from sha256, so the bits
  never depend on a numpy version). Each bit keeps its projection magnitude as
  a reliability margin, used to choose multi-probe lookups.

- :func:`centred_spectral_hash` (kind ``spectral-centred-v1``): the same on a
  canvas twice the window's size with the content's centroid at its centre. The
  Hann taper weighs content by where it sits in the window, so a sparse clip
  (a block edge, a few contacts near a border) moves the plain hash by 100 bits
  and more when its window moves; centred, it moves far less. The dedupe stage
  looks candidates up by the bands of both.

The mask is hashed, not the print: prints of sparse layouts look alike, and the
print also moves with dose and focus. Magnitude spectra drop the phase, so
distinct layouts can share a spectrum (two gratings of nearly the same pitch,
a pattern and its point reflection): a hash match is a *candidate*, which the
dedupe stage confirms on pixels before calling anything a duplicate.

- :func:`profile_signature` (``profile-v1``, 128 bytes): the drawn share of each 4 px band of
  rows and of columns. A block-edge clip or a few contacts by a border can bring in or lose so
  much of what it shows with a 16 px window move that both spectral hashes move by 100 bits
  and more; its row and column profiles, compared at the best relative shift
  (:func:`profile_distances`), still find it among hundreds of other clips. Not a band key:
  the dedupe store ranks its newest results by this distance when no hash candidate is a
  duplicate.

Band keys (multi-index hashing): the hash is split into ``n_bands`` bands; by
the pigeonhole principle two hashes within ``n_bands - 1`` bits share at least
one band exactly. :func:`band_probes` adds, per band, the values with the
least reliable bits flipped, which finds most pairs at larger distances too.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import cv2
import numpy as np
import scipy.fft

from shared.errors import ImageError
from shared.imaging import pixel_digest, sha256_hex

SPECTRAL_KIND = "spectral-v1"
CENTRED_KIND = "spectral-centred-v1"
SPECTRAL_BITS = 256
CANONICAL_SIZE_PX = 256
MAX_FREQUENCY = 32  # cycles per window: a 32 nm period at 4 nm/px, beyond the optics' cutoff
BLUR_SIGMA_PX = 1.0
POOL = 2
FLOOR_FRACTION = 1e-3  # log floor relative to the spectrum's maximum (empty bins)
ANGLE_EDGES_DEG = (0.0, 3.0, 8.0, 20.0)


def exact_digest(mask: np.ndarray, printed: np.ndarray) -> str:
    """Digest of the canonical pixel content of a (mask, print) pair, independent of encoding."""
    return sha256_hex(f"mask:{pixel_digest(mask)};print:{pixel_digest(printed)}".encode())


@dataclass(frozen=True)
class PerceptualHash:
    """A fixed-width bit string (bit ``i`` = projection ``i`` positive) with per-bit margins."""

    kind: str
    bits: int
    value: int
    margins: np.ndarray = field(repr=False, compare=False)

    def hex(self) -> str:
        return format(self.value, f"0{self.bits // 4}x")


def hash_from_hex(kind: str, hex_value: str) -> PerceptualHash:
    """A hash read back from its hex form (margins unknown: all equal)."""
    bits = 4 * len(hex_value)
    return PerceptualHash(kind, bits, int(hex_value, 16), np.ones(bits, dtype=np.float32))


def hamming_distance(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def _check_image(image: np.ndarray) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 2 or image.size == 0:
        raise ImageError(f"hashing needs a non-empty 2-D image, got {getattr(image, 'shape', None)}",
                         reason="image_rank")
    out = np.ascontiguousarray(image, dtype=np.float32)
    if not np.isfinite(out).all():
        raise ImageError("image contains NaN or infinity", reason="image_nonfinite")
    if out.shape != (CANONICAL_SIZE_PX, CANONICAL_SIZE_PX):
        resized = cv2.resize(out, (CANONICAL_SIZE_PX, CANONICAL_SIZE_PX), interpolation=cv2.INTER_AREA)
        out = np.ascontiguousarray(resized, dtype=np.float32)
    return out


@lru_cache(maxsize=1)
def _hann_2d() -> np.ndarray:
    w = np.hanning(CANONICAL_SIZE_PX).astype(np.float32)
    return np.outer(w, w)


@lru_cache(maxsize=1)
def _strata() -> tuple[np.ndarray, int]:
    """Label per half-plane bin (ky in [-K, K), kx in [0, K)): rounded radius x angle class.

    The angle class is the bin's angle to the nearest axis (on the axis, up to 3, 8,
    20 and 45 degrees): Manhattan clips put most energy on and near the axes, and
    whitening within these strata removes that shared structure, so the bits are
    balanced and describe what differs between layouts.
    """
    k = MAX_FREQUENCY
    ky = np.abs(np.arange(-k, k))[:, None].astype(np.float64)
    kx = np.arange(0, k)[None, :].astype(np.float64)
    radius = np.rint(np.hypot(ky, kx)).astype(np.int64)
    angle = np.degrees(np.arctan2(ky, kx))
    angle = np.minimum(angle, 90.0 - angle)
    angle_class = np.digitize(angle, ANGLE_EDGES_DEG, right=True)
    labels = radius * (len(ANGLE_EDGES_DEG) + 1) + angle_class
    return labels.ravel(), int(labels.max()) + 1


@lru_cache(maxsize=4)
def _projections(kind: str, bits: int, dim: int) -> np.ndarray:
    """Fixed +-1 projection vectors from a sha256 counter stream (stable across versions)."""
    need = bits * dim
    stream = bytearray()
    counter = 0
    while len(stream) * 8 < need:
        stream += hashlib.sha256(f"lithowatch:{kind}:{bits}x{dim}:{counter}".encode()).digest()
        counter += 1
    signs = np.unpackbits(np.frombuffer(bytes(stream), dtype=np.uint8))[:need].astype(np.float32)
    return (2.0 * signs - 1.0).reshape(bits, dim)


def spectral_features(image: np.ndarray) -> np.ndarray:
    """Whitened, pooled log-magnitude spectrum of a clip: unit-norm float32 vector (512 values)."""
    x = _check_image(image)
    x = cv2.GaussianBlur(x, (0, 0), BLUR_SIGMA_PX)
    x = (x - float(x.mean())) * _hann_2d()
    spectrum = np.abs(scipy.fft.rfft2(x))
    k = MAX_FREQUENCY
    half = np.concatenate([spectrum[-k:, :k], spectrum[:k, :k]], axis=0)  # ky from -K to K-1
    log_mag = np.log(half + FLOOR_FRACTION * float(half.max()) + 1e-12).ravel().astype(np.float64)
    labels, n_labels = _strata()
    counts = np.maximum(np.bincount(labels, minlength=n_labels), 1)
    mean = np.bincount(labels, log_mag, n_labels) / counts
    var = np.bincount(labels, log_mag * log_mag, n_labels) / counts - mean * mean
    z = (log_mag - mean[labels]) / (np.sqrt(np.maximum(var, 0.0))[labels] + 1e-6)
    pooled = z.reshape(2 * k // POOL, POOL, k // POOL, POOL).mean(axis=(1, 3)).ravel()
    pooled -= pooled.mean()
    norm = float(np.linalg.norm(pooled))
    return (pooled / norm if norm > 0 else pooled).astype(np.float32)


def _projected_hash(kind: str, features: np.ndarray, bits: int) -> PerceptualHash:
    if bits % 8:
        raise ValueError("bits must be a multiple of 8")
    projected = _projections(kind, bits, features.size) @ features
    positive = projected > 0
    value = int.from_bytes(np.packbits(positive).tobytes(), "big")
    return PerceptualHash(kind, bits, value, np.abs(projected).astype(np.float32))


def spectral_hash(image: np.ndarray, bits: int = SPECTRAL_BITS) -> PerceptualHash:
    """The shift-robust 256-bit hash of a mask (see the module docstring)."""
    return _projected_hash(SPECTRAL_KIND, spectral_features(image), bits)


def centre_content(image: np.ndarray) -> np.ndarray:
    """The clip on a canvas twice its size with its content's centroid at the centre, scaled back to the
    canonical size (float32). A window move that brings no content in or out leaves this unchanged."""
    x = _check_image(image)
    n = CANONICAL_SIZE_PX
    total = float(x.sum())
    if total <= 0:
        return x
    index = np.arange(n, dtype=np.float64)
    cy = float(x.sum(axis=1) @ index) / total
    cx = float(x.sum(axis=0) @ index) / total
    canvas = np.zeros((2 * n, 2 * n), dtype=np.float32)
    oy, ox = round(n - cy), round(n - cx)
    canvas[oy:oy + n, ox:ox + n] = x
    return np.ascontiguousarray(cv2.resize(canvas, (n, n), interpolation=cv2.INTER_AREA), dtype=np.float32)


def centred_spectral_hash(image: np.ndarray, bits: int = SPECTRAL_BITS) -> PerceptualHash:
    """The spectral hash of :func:`centre_content` (kind ``spectral-centred-v1``): the taper then weighs
    a sparse clip's content alike in every window that shows it, wherever it sits in the window."""
    return _projected_hash(CENTRED_KIND, spectral_features(centre_content(image)), bits)


def split_bands(value: int, bits: int, n_bands: int) -> list[int]:
    """The hash cut into ``n_bands`` equal bands, most significant first."""
    if bits % n_bands:
        raise ValueError(f"{bits} bits do not split into {n_bands} equal bands")
    width = bits // n_bands
    mask = (1 << width) - 1
    return [(value >> (bits - (j + 1) * width)) & mask for j in range(n_bands)]


def band_probes(h: PerceptualHash, n_bands: int, flips_per_band: int) -> list[tuple[int, int]]:
    """(band index, band value) lookups: each band exactly, then with each of its
    ``flips_per_band`` least reliable bits flipped (one at a time)."""
    width = h.bits // n_bands
    probes: list[tuple[int, int]] = []
    for j, band in enumerate(split_bands(h.value, h.bits, n_bands)):
        probes.append((j, band))
        if flips_per_band <= 0:
            continue
        margins = h.margins[j * width:(j + 1) * width]
        for bit in np.argsort(margins, kind="stable")[:flips_per_band]:
            probes.append((j, band ^ (1 << (width - 1 - int(bit)))))
    return probes


PROFILE_KIND = "profile-v1"
PROFILE_BIN_PX = 4  # rows (columns) summed per profile bin, at the canonical size
PROFILE_BINS = CANONICAL_SIZE_PX // PROFILE_BIN_PX
PROFILE_BYTES = 2 * PROFILE_BINS
PROFILE_MAX_SHIFT_BINS = 4  # a window move of up to 16 px


def profile_signature(image: np.ndarray) -> bytes:
    """Row then column profile of a clip (kind ``profile-v1``): per 4 px band, the drawn share in 1/255
    (``PROFILE_BYTES`` bytes). A window move shifts each profile and changes it only where content
    enters or leaves the window."""
    x = np.clip(_check_image(image), 0.0, 1.0)
    n, b = CANONICAL_SIZE_PX, PROFILE_BIN_PX
    rows = x.sum(axis=1).reshape(PROFILE_BINS, b).sum(axis=1) / (b * n)
    cols = x.sum(axis=0).reshape(PROFILE_BINS, b).sum(axis=1) / (b * n)
    return np.rint(np.concatenate([rows, cols]) * 255.0).astype(np.uint8).tobytes()


def _profile_distance(query: np.ndarray, pool: np.ndarray, max_shift: int) -> np.ndarray:
    """Per row of ``pool``: the smallest, over relative shifts up to ``max_shift`` bins, L1 difference of
    the overlapping parts of two 1-D profiles over their sum there (0: the same, 1: nothing shared)."""
    n = query.size
    best = np.full(pool.shape[0], 1.0)
    for s in range(-max_shift, max_shift + 1):
        q = query[max(0, s):n + min(0, s)]
        p = pool[:, max(0, -s):n + min(0, -s)]
        total = q.sum() + p.sum(axis=1)
        diff = np.abs(p - q[None, :]).sum(axis=1)
        best = np.minimum(best, np.where(total > 0, diff / np.maximum(total, 1e-9), 1.0))
    return best


def profile_distances(query: bytes, pool: Sequence[bytes]) -> np.ndarray:
    """Distance (0 to 2) of one :func:`profile_signature` to each of ``pool``: rows and columns each
    compared at their best relative shift up to 16 px. Re-simulations of one window lie near."""
    if not pool:
        return np.zeros(0)
    q = np.frombuffer(query, dtype=np.uint8).astype(np.float64)
    p = np.frombuffer(b"".join(pool), dtype=np.uint8).astype(np.float64).reshape(len(pool), -1)
    if q.size != PROFILE_BYTES or p.shape[1] != PROFILE_BYTES:
        raise ValueError(f"profile signatures are {PROFILE_BYTES} bytes")
    k = PROFILE_BINS
    return (_profile_distance(q[:k], p[:, :k], PROFILE_MAX_SHIFT_BINS)
            + _profile_distance(q[k:], p[:, k:], PROFILE_MAX_SHIFT_BINS))
