"""A coarse, cheap likeness of two masks: which candidates are worth a pixel check.

About 0.1 ms a pair: cheap enough to rank a few dozen embedding neighbours and
check only the best on pixels, so a weak encoder that puts the true entry at
rank 10 instead of 1 still finds it.

- :func:`coarse_ncc`: the query's central template over the entry (the novelty
  stage's confirmation; a dense clip's likeness).
- :func:`coarse_overlap_mismatches`: every shift scored over the whole overlap of
  the two windows, as :func:`.windows.overlap_scores` does at full size, so clips
  whose content lies along their borders (the rails' contacts of a standard-cell
  row, a block edge) rank as well as dense ones (the dedupe stage's order of its
  bridge and profile candidates). One query against all its candidates at once:
  each mask's spectrum is taken once (:class:`CoarseMask`), and of the correlation
  of a query with each candidate only the lags within the reach are transformed
  back (two batched matrix products): about 22 us a pair against 83 scored pair
  by pair with ``matchTemplate``.
- :func:`coarse_phase_mismatch`: what the blocks' phase alone costs a window of
  one layout moved by whole pixels (the mask against itself moved half a block):
  the dedupe stage's bound on the score of a true duplicate, so a candidate
  scoring far above it is not worth a pixel check.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft

from shared.verification.windows import MIN_DRAWN_COMPARED, MaskSums

#: block size of :func:`coarse_overlap_sums`: a contact of a row at 4 nm/px (16 x 16 px) stays 4 x 4 blocks
OVERLAP_BLOCK_PX = 4


def downsample_mask(mask: np.ndarray, scale: int) -> np.ndarray:
    """The mask downsampled ``scale`` times (area average, at least 8 x 8; float32, contiguous)."""
    h, w = mask.shape
    size = (max(8, w // scale), max(8, h // scale))
    return np.ascontiguousarray(cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA))


def coarse_ncc(library_coarse: np.ndarray, query_coarse: np.ndarray, max_shift_px: int, scale: int) -> float:
    """Peak normalised cross-correlation of the query's central coarse mask over the entry's.

    The template is the query less a margin of ``max_shift_px`` (in full-size
    pixels; coarse masks made with ``scale``). -1 for masks of different shapes;
    a flat mask scores 1 against an identical one, else 0."""
    if library_coarse.shape != query_coarse.shape:
        return -1.0
    h, w = query_coarse.shape
    margin = min(-(-max_shift_px // scale), (min(h, w) - 4) // 2)
    template = query_coarse[margin : h - margin, margin : w - margin]
    if float(template.std()) < 1e-6 or float(library_coarse.std()) < 1e-6:
        return 1.0 if np.array_equal(library_coarse, query_coarse) else 0.0
    scores = cv2.matchTemplate(library_coarse, template, cv2.TM_CCOEFF_NORMED)
    return float(np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0).max())


@dataclass(frozen=True, eq=False)
class CoarseMask:
    """What one mask brings to :func:`coarse_overlap_mismatches`, made once however many masks it is
    compared with (:func:`coarse_overlap_sums`): the reach and shape of its coarse mask, its drawn area,
    per shift its sum and sum of squares over its part of the overlap (as :class:`.windows.MaskSums`),
    and the spectrum of the coarse mask zero-padded by the reach (``rfft2`` at ``fft_shape``, complex64)."""

    max_shift_px: int
    shape: tuple[int, int]
    total: float
    drawn: np.ndarray
    squares: np.ndarray
    fft_shape: tuple[int, int]
    spectrum: np.ndarray

    @property
    def nbytes(self) -> int:
        return int(self.drawn.nbytes + self.squares.nbytes + self.spectrum.nbytes)

    def comparable(self, other: CoarseMask) -> bool:
        return self.shape == other.shape and self.max_shift_px == other.max_shift_px


def coarse_overlap_sums(mask: np.ndarray, max_shift_px: int, block_px: int = OVERLAP_BLOCK_PX) -> CoarseMask:
    """An 8-bit ``mask`` averaged over ``block_px`` blocks, with what :func:`coarse_overlap_mismatches`
    needs of it for shifts up to ``max_shift_px`` full-size pixels."""
    small = downsample_mask(mask.astype(np.float32) / 255.0, block_px)
    levels = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    reach = max(min(math.ceil(max_shift_px / block_px), min(levels.shape) // 2 - 1), 0)
    sums = MaskSums.of(levels, reach)
    h, w = levels.shape
    # Circular correlation equals the linear one at lags up to the reach when the transform is at least
    # the mask plus the reach (lags beyond the mask's size are zero), so the padded mask, zero outside
    # the mask's rows and columns, may be cut to it.
    fft_shape = (scipy.fft.next_fast_len(h + reach, real=True), scipy.fft.next_fast_len(w + reach, real=True))
    spectrum = scipy.fft.rfft2(sums.padded, s=fft_shape, workers=1).astype(np.complex64)
    return CoarseMask(reach, (h, w), sums.total, sums.drawn, sums.squares, fft_shape, spectrum)


def coarse_overlap_mismatches(candidates: Sequence[CoarseMask], query: CoarseMask) -> np.ndarray:
    """How far each candidate window is from showing the query's layout at any shift, from
    :func:`coarse_overlap_sums`: the least, over the shifts whose overlap holds at least
    ``MIN_DRAWN_COMPARED`` of one mask's drawn area, squared difference over the overlap relative to the
    drawn area both masks have there (0: they agree; 1: nothing in common). Two empty masks agree; 1 for
    masks of different shapes or reaches."""
    out = np.ones(len(candidates), dtype=np.float64)
    scored: list[int] = []
    for i, candidate in enumerate(candidates):
        if not candidate.comparable(query):
            continue
        if candidate.total <= 0.0 or query.total <= 0.0:
            out[i] = 0.0 if candidate.total <= 0.0 and query.total <= 0.0 else 1.0
        else:
            scored.append(i)
    if not scored:
        return out
    chosen = [candidates[i] for i in scored]
    spectra = np.stack([c.spectrum for c in chosen]) * np.conj(query.spectrum)[None]
    # cell [dy + S, dx + S]: the sum of candidate * query with the query moved by (dx, dy), as
    # windows.overlap_scores's ``matched`` with the candidate as ``a``
    rows, columns = _inverse_at_lags(query.fft_shape, query.max_shift_px)
    matched = np.matmul(np.matmul(rows, spectra), columns).real.astype(np.float64)
    drawn_a = np.stack([c.drawn for c in chosen])
    totals = np.array([c.total for c in chosen])[:, None, None]
    # the query's part of the overlap at (dx, dy) is the candidate's at (-dx, -dy)
    drawn_b = query.drawn[::-1, ::-1][None]
    ssd = np.maximum(np.stack([c.squares for c in chosen]) + query.squares[::-1, ::-1][None] - 2.0 * matched,
                     0.0)
    drawn = drawn_a + drawn_b
    compared = np.maximum(drawn_a / totals, drawn_b / query.total) >= MIN_DRAWN_COMPARED
    relative = np.where(compared & (drawn > 0.0), ssd / np.maximum(drawn, 1e-9), 1.0)
    out[scored] = np.minimum(1.0, relative.min(axis=(1, 2)))
    return out


@functools.lru_cache(maxsize=8)
def _inverse_at_lags(fft_shape: tuple[int, int], reach: int) -> tuple[np.ndarray, np.ndarray]:
    """The inverse real 2-D DFT (of ``rfft2`` spectra at ``fft_shape``) at lags -reach..reach only, as
    ``rows @ spectrum @ columns`` (the real part): rows ``(2 reach + 1, Fy)``, columns
    ``(Fx // 2 + 1, 2 reach + 1)``, the half spectrum's bins other than 0 and Nyquist counted twice."""
    fy, fx = fft_shape
    lags = np.arange(-reach, reach + 1)
    rows = np.exp(2j * np.pi * np.outer(lags, np.arange(fy)) / fy) / fy
    bins = np.arange(fx // 2 + 1)
    weight = np.where((bins == 0) | (2 * bins == fx), 1.0, 2.0)
    columns = weight[:, None] * np.exp(2j * np.pi * np.outer(bins, lags) / fx) / fx
    return rows.astype(np.complex64), columns.astype(np.complex64)


def coarse_overlap_mismatch(a: CoarseMask, b: CoarseMask) -> float:
    """:func:`coarse_overlap_mismatches` of one pair (``a`` the candidate, ``b`` the query)."""
    return float(coarse_overlap_mismatches([a], b)[0])


def coarse_phase_mismatch(mask: np.ndarray, max_shift_px: int, block_px: int = OVERLAP_BLOCK_PX,
                          own: CoarseMask | None = None) -> float:
    """The largest :func:`coarse_overlap_mismatches` of an 8-bit ``mask`` against itself moved half a
    block along x, along y and along both (zero-filled where moved out); ``own``: the mask's
    :func:`coarse_overlap_sums` with the same arguments, when made already.

    A window of the same layout moved by whole pixels agrees with the mask at some shift, but its blocks
    are cut at another phase, so its coarse score is not 0. The phase costs most at half a block; how
    much depends on the features (4 px lines, or contacts the size of a block, cost most), so the mask
    measures it on itself."""
    half = block_px // 2
    h, w = mask.shape
    moved = []
    for dy, dx in ((0, half), (half, 0), (half, half)):
        shifted = np.zeros_like(mask)
        shifted[: h - dy, : w - dx] = mask[dy:, dx:]
        moved.append(coarse_overlap_sums(shifted, max_shift_px, block_px))
    if own is None:
        own = coarse_overlap_sums(mask, max_shift_px, block_px)
    return float(coarse_overlap_mismatches(moved, own).max())
