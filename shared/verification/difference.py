"""Pixel differences of two clips' overlaps, with slivers dropped.

A re-simulation of one layout moves print edges by a pixel or two (a few
percent of dose, a little blur) and, when its window moved by a fraction of a
pixel, changes anti-aliased mask edges by a level or two. Neither is a
difference of layout, so a difference map is opened (eroded, then dilated)
with a square ``2 * tolerance_px + 1`` wide: what survives is wider than
``2 * tolerance_px`` somewhere, a real difference.
"""

from __future__ import annotations

import cv2
import numpy as np

#: 8-bit levels two mask pixels of one layout may differ by (rounding of anti-aliased edges)
MASK_TOLERANCE_LEVELS = 2


def mask_difference(mask_a: np.ndarray, mask_b: np.ndarray, tolerance_levels: int) -> np.ndarray:
    """Where two 8-bit masks of one shape differ by more than ``tolerance_levels`` (bool map)."""
    return np.abs(mask_a.astype(np.int16) - mask_b.astype(np.int16)) > tolerance_levels


def drop_slivers(diff: np.ndarray, tolerance_px: int) -> np.ndarray:
    """``diff`` (bool) less the slivers up to ``2 * tolerance_px`` wide: a morphological opening."""
    if tolerance_px > 0 and diff.any():
        size = 2 * tolerance_px + 1
        return cv2.morphologyEx(diff.astype(np.uint8), cv2.MORPH_OPEN, np.ones((size, size), np.uint8)) > 0
    return diff.astype(bool, copy=False)


def print_difference(print_a: np.ndarray, print_b: np.ndarray, tolerance_px: int) -> np.ndarray:
    """Where two binarised prints of one shape differ, slivers up to ``2 * tolerance_px`` wide dropped."""
    return drop_slivers(print_a != print_b, tolerance_px)


def sliver_free_mismatch(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    tolerance_levels: int = MASK_TOLERANCE_LEVELS,
    tolerance_px: int = 1,
) -> int:
    """Mask pixels that differ by more than ``tolerance_levels``, after dropping slivers up to
    ``2 * tolerance_px`` wide (with 1: the edges of a registration off by a sub-pixel amount)."""
    return int(
        np.count_nonzero(drop_slivers(mask_difference(mask_a, mask_b, tolerance_levels), tolerance_px))
    )
