"""Translation by unwhitened normalised cross-correlation with a subpixel peak.

The reference's central crop is slid over the print (``TM_CCOEFF_NORMED``): every
candidate shift is scored on the same pixels, the score is a true correlation
coefficient, and the reference's border (where an approximate print lacks the
neighbours outside the clip) is never used, while the print's is (a farm's print holds
real pattern there). The peak is refined by a parabola through its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


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
    h, w = reference.shape
    margin = search_margin_px((h, w), max_shift_px)
    template = np.ascontiguousarray(reference[margin : h - margin, margin : w - margin])
    scores = cv2.matchTemplate(moving, template, cv2.TM_CCOEFF_NORMED)
    scores = np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0)
    flat_index = int(np.argmax(scores))
    iy, ix = flat_index // scores.shape[1], flat_index % scores.shape[1]
    peak = float(scores[iy, ix])
    last_y, last_x = scores.shape[0] - 1, scores.shape[1] - 1
    at_limit = iy in (0, last_y) or ix in (0, last_x)
    sub_x = 0.0 if ix in (0, last_x) else _parabolic_offset(
        float(scores[iy, ix - 1]), peak, float(scores[iy, ix + 1]))
    sub_y = 0.0 if iy in (0, last_y) else _parabolic_offset(
        float(scores[iy - 1, ix]), peak, float(scores[iy + 1, ix]))
    # The template (reference pixel q + margin) sits on print pixel q + (ix, iy).
    return PeakResult(
        dx_px=margin - (ix + sub_x),
        dy_px=margin - (iy + sub_y),
        peak=peak,
        second_peak=_best_elsewhere(scores, iy, ix, ambiguity_radius_px),
        at_limit=at_limit,
    )
