"""Translation by unwhitened normalised cross-correlation with a subpixel peak.

The reference's central crop is slid over the print (``TM_CCOEFF_NORMED``): every
candidate shift is scored on the same pixels, the score is a true correlation
coefficient, and the reference's border (where an approximate print lacks the
neighbours outside the clip) is never used, while the print's is (a farm's print holds
real pattern there). The peak is refined by a parabola through its neighbours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import scipy.fft


@dataclass(frozen=True)
class PeakResult:
    """Shift (print coords -> reference coords, px), its score, the best score well away
    from it, and whether it sits on the edge of the search range."""

    dx_px: float
    dy_px: float
    peak: float
    second_peak: float
    at_limit: bool


def search_margin_px(shape: tuple[int, int], max_shift_px: int) -> int:
    """How far the template may move: one pixel past the requested range (so its ends get a
    subpixel peak), capped to a quarter of the image."""
    return max(1, min(max_shift_px + 1, min(shape) // 4))


def _parabolic_offset(minus: float, centre: float, plus: float) -> float:
    denom = minus - 2.0 * centre + plus
    if denom >= 0.0:  # not a maximum (flat or convex): stay on the integer peak
        return 0.0
    return float(np.clip(0.5 * (minus - plus) / denom, -0.5, 0.5))


def _best_elsewhere(scores: np.ndarray, iy: int, ix: int, radius_px: float) -> float:
    """Best score farther than ``radius_px`` from the peak: a repeat (periodic pattern) or
    a ridge (lines that cross the clip) both show up here."""
    yy, xx = np.mgrid[0 : scores.shape[0], 0 : scores.shape[1]]
    far = (yy - iy) ** 2 + (xx - ix) ** 2 > radius_px**2
    return float(scores[far].max()) if np.any(far) else -1.0


def ncc_translation(reference: np.ndarray, moving: np.ndarray, max_shift_px: int,
                    ambiguity_radius_px: float) -> PeakResult:
    """Shift ``t`` such that ``moving(p) ~ reference(p + t)``.

    Both images are smooth float32 arrays of one shape. ``second_peak`` is the best
    score farther than ``ambiguity_radius_px`` from the peak.
    """
    return peak_of(*ncc_scores(reference, moving, max_shift_px), ambiguity_radius_px)


def peak_of(scores: np.ndarray, margin: int, ambiguity_radius_px: float) -> PeakResult:
    """The subpixel peak of a map from :func:`ncc_scores` (with its margin), as a shift."""
    x, y, found = _subpixel_peak(scores, ambiguity_radius_px)
    # The template (reference pixel q + margin) sits on print pixel q + (x, y).
    return PeakResult(margin - x, margin - y, found.peak, found.second_peak, found.at_limit)


def ncc_scores(reference: np.ndarray, moving: np.ndarray, max_shift_px: int) -> tuple[np.ndarray, int]:
    """The score map :func:`ncc_translation` takes its peak from, and its margin: cell ``(iy, ix)``
    scores the shift ``(margin - ix, margin - iy)``."""
    h, w = reference.shape
    margin = search_margin_px((h, w), max_shift_px)
    template = np.ascontiguousarray(reference[margin : h - margin, margin : w - margin])
    scores = cv2.matchTemplate(moving, template, cv2.TM_CCOEFF_NORMED)
    return np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0), margin


def contending_peaks(scores: np.ndarray, ratio: float, radius_px: float,
                     most: int) -> list[tuple[int, int]] | None:
    """The local maxima of a score map whose peak is ambiguous, best first, the peak among them: those
    that the cells scoring at least ``ratio`` of the peak farther than ``radius_px`` from it climb to
    (:func:`climbed_peaks`). ``None`` when such a cell climbs to the peak itself (a ridge: lines
    crossing the clip score alike all along their length, so no peak stands apart), or when there are
    more than ``most`` (a plateau, or a grid of repeats)."""
    flat = scores.ravel()
    best = int(np.argmax(flat))
    iy, ix = divmod(best, scores.shape[1])
    yy, xx = np.indices(scores.shape)
    far = ((yy - iy) ** 2 + (xx - ix) ** 2 > radius_px**2) & (scores >= ratio * flat[best])
    reached = set(int(i) for i in climbed_peaks(scores)[far])
    if best in reached or len(reached) + 1 > most:
        return None
    ordered = [best, *sorted(reached, key=lambda i: -float(flat[i]))]
    return [divmod(i, scores.shape[1]) for i in ordered]


def _subpixel_peak(scores: np.ndarray, ambiguity_radius_px: float) -> tuple[float, float, PeakResult]:
    """The best score's (x, y) index refined by a parabola, and a :class:`PeakResult` holding
    its score, the best far from it and whether it lies on the map's edge (its shift is 0)."""
    flat_index = int(np.argmax(scores))
    iy, ix = flat_index // scores.shape[1], flat_index % scores.shape[1]
    found = PeakResult(0.0, 0.0, float(scores[iy, ix]), _best_elsewhere(scores, iy, ix, ambiguity_radius_px),
                       at_limit=on_edge(scores, iy, ix))
    return (*_subpixel_at(scores, iy, ix), found)


def on_edge(scores: np.ndarray, iy: int, ix: int) -> bool:
    """Whether cell ``(iy, ix)`` lies on the map's edge: its shift is at the search limit."""
    return iy in (0, scores.shape[0] - 1) or ix in (0, scores.shape[1] - 1)


def _subpixel_at(scores: np.ndarray, iy: int, ix: int) -> tuple[float, float]:
    """(x, y) of cell ``(iy, ix)`` refined by a parabola through its neighbours (none on the map's edge)."""
    peak = float(scores[iy, ix])
    last_y, last_x = scores.shape[0] - 1, scores.shape[1] - 1
    sub_x = 0.0 if ix in (0, last_x) else _parabolic_offset(
        float(scores[iy, ix - 1]), peak, float(scores[iy, ix + 1]))
    sub_y = 0.0 if iy in (0, last_y) else _parabolic_offset(
        float(scores[iy - 1, ix]), peak, float(scores[iy + 1, ix]))
    return ix + sub_x, iy + sub_y


def _spectra(images: list[np.ndarray], shape: tuple[int, int]) -> list[np.ndarray]:
    """Real 2-D FFTs of ``images`` zero-padded to ``shape``."""
    return [scipy.fft.rfft2(image, shape) for image in images]


def _lagged_sum(f_padded: np.ndarray, f_template: np.ndarray, shape: tuple[int, int],
                lags: int) -> np.ndarray:
    """``out[v, u] = sum_q padded[q + (v, u)] * template[q]`` for lags 0..``lags`` - 1, from the two
    images' spectra (``_spectra`` at ``shape``, at least the padded image's size: no lag wraps)."""
    return np.asarray(scipy.fft.irfft2(f_padded * np.conj(f_template), shape)[:lags, :lags], dtype=np.float64)


def overlap_ncc_scores(reference: np.ndarray, moving: np.ndarray, margin: int,
                       moving_valid: np.ndarray | None = None) -> np.ndarray:
    """Correlation coefficient of ``moving`` with ``reference`` over their whole overlap at every
    shift up to ``margin`` px (index ``[dy + margin, dx + margin]`` for ``moving(p) ~
    reference(p + (dx, dy))``). ``moving_valid`` (1 where ``moving`` holds the print, 0
    elsewhere) leaves out what a warp did not cover. Six sums over the overlap at every lag, by
    FFT at a size with small prime factors (386 px, the default reach on a 256 px clip, has 193)."""
    h, w = reference.shape
    lags = 2 * margin + 1
    valid = np.ones((h, w)) if moving_valid is None else (moving_valid > 0.999).astype(np.float64)
    ref = reference.astype(np.float64) - float(reference.mean())
    mov = (moving.astype(np.float64) - float(moving[valid > 0].mean())) * valid
    pad = ((margin, margin), (margin, margin))
    ref_padded, inside_padded = np.pad(ref, pad), np.pad(np.ones_like(ref), pad)
    shape = (scipy.fft.next_fast_len(h + 2 * margin, real=True),
             scipy.fft.next_fast_len(w + 2 * margin, real=True))
    f_inside, f_ref, f_ref2 = _spectra([inside_padded, ref_padded, ref_padded * ref_padded], shape)
    f_valid, f_mov, f_mov2 = _spectra([valid, mov, mov * mov], shape)
    # Overlap at lag (v, u): moving pixel q meets reference pixel q + (v, u) - margin.
    count = np.maximum(_lagged_sum(f_inside, f_valid, shape, lags), 1.0)
    sum_r = _lagged_sum(f_ref, f_valid, shape, lags)
    sum_rr = _lagged_sum(f_ref2, f_valid, shape, lags)
    sum_m = _lagged_sum(f_inside, f_mov, shape, lags)
    sum_mm = _lagged_sum(f_inside, f_mov2, shape, lags)
    sum_rm = _lagged_sum(f_ref, f_mov, shape, lags)
    cov = sum_rm - sum_r * sum_m / count
    var = np.maximum(sum_rr - sum_r * sum_r / count, 0.0) * np.maximum(sum_mm - sum_m * sum_m / count, 0.0)
    tiny = 1e-12 * max(float((ref * ref).sum()) * float((mov * mov).sum()), 1e-30)
    return np.asarray(np.where(var > tiny, cov / np.sqrt(np.maximum(var, tiny)), -1.0))


def climbed_peaks(scores: np.ndarray) -> np.ndarray:
    """For every cell of a score map, the flat index of the local maximum that steepest ascent
    over its eight neighbours reaches from it (a maximum maps to itself)."""
    h, w = scores.shape
    padded = np.pad(scores.astype(np.float64), 1, constant_values=-np.inf)
    index = np.pad(np.arange(h * w).reshape(h, w), 1, constant_values=-1)
    best, step = scores.astype(np.float64).copy(), np.arange(h * w).reshape(h, w)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            if dy == dx == 0:
                continue
            value = padded[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]
            better = value > best
            best = np.where(better, value, best)
            step = np.where(better, index[1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w], step)
    pointer = step.ravel()
    while True:  # pointer jumping: every cell ends on the maximum of its climb
        jumped = pointer[pointer]
        if np.array_equal(jumped, pointer):
            return pointer.reshape(h, w)
        pointer = jumped


def outside_flanks(scores: np.ndarray, in_range: np.ndarray, radius_px: float) -> np.ndarray:
    """Cells on the flank of a peak that lies outside ``in_range``: their climb ends on a
    maximum outside it, less than ``radius_px`` away. A pattern that repeats just beyond the
    search range raises the map's edge there without offering a shift inside it; a ridge
    (lines crossing the clip) stays a competitor farther than ``radius_px`` from its end."""
    peaks = climbed_peaks(scores)
    peak_y, peak_x = np.divmod(peaks, scores.shape[1])
    yy, xx = np.indices(scores.shape)
    near = (peak_y - yy) ** 2 + (peak_x - xx) ** 2 < radius_px**2
    return np.asarray(~in_range.ravel()[peaks] & near)


def overlap_ncc_translation(reference: np.ndarray, moving: np.ndarray, max_shift_px: int,
                            ambiguity_radius_px: float, repeats_beyond_range: bool = True) -> PeakResult:
    """Like :func:`ncc_translation`, but each shift is scored over the whole overlap of the two
    images, borders included (:func:`overlap_ncc_scores`).

    The central crop that ``ncc_translation`` slides holds nothing of a clip whose pattern
    lies along its edges (contacts on the power rails at the top and bottom of a cell row),
    and the content near the border can also tell apart shifts that the interior cannot.
    The price: the overlap, and so the pixels compared, changes with the shift, and the
    reference's border is used where an approximate print lacks the neighbours outside the
    clip.

    The map reaches ``ambiguity_radius_px`` beyond the search range, so that a repeat lying
    just outside the range (a row's rail contacts, one site pitch away) shows as its own peak
    there: its flank inside the range (:func:`outside_flanks`) is neither an answer nor a
    competitor, since the range bounds the farm's offsets. Without ``repeats_beyond_range``
    the map ends one pixel past the range and every cell in it counts.
    """
    h, w = reference.shape
    margin = search_margin_px((h, w), max_shift_px)
    wide = margin
    if repeats_beyond_range:
        wide = max(margin, min(margin + math.ceil(ambiguity_radius_px), min(h, w) // 2 - 1))
    scores = overlap_ncc_scores(reference, moving, wide)
    lag = np.abs(np.arange(-wide, wide + 1))
    in_range = (lag[:, None] <= margin) & (lag[None, :] <= margin)
    inside_peak = (lag[:, None] <= max_shift_px) & (lag[None, :] <= max_shift_px)
    candidate = in_range
    if repeats_beyond_range:
        candidate = in_range & ~outside_flanks(scores, inside_peak, ambiguity_radius_px)
    ranked = np.where(candidate, scores, -np.inf)
    iy, ix = (int(i) for i in np.unravel_index(int(np.argmax(ranked)), scores.shape))
    x, y = _subpixel_at(scores, iy, ix)
    second = _best_elsewhere(np.where(candidate, scores, -1.0), iy, ix, ambiguity_radius_px)
    at_limit = abs(iy - wide) == margin or abs(ix - wide) == margin
    return PeakResult(x - wide, y - wide, float(scores[iy, ix]), second, at_limit)
