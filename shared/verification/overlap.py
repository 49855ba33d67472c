"""Where two clips of one layout overlap, and which shifts can register them.

Shifts are ``(dx, dy)`` with ``b[y, x] == a[y + dy, x + dx]``: the window of
``b`` lies ``(dx, dy)`` pixels right of and below ``a``'s on the layout.
Periodic or line-like layouts match at many shifts equally well
(:func:`tied_shifts`), so a caller judges each of them over its whole overlap.
"""

from __future__ import annotations

import cv2
import numpy as np

Window = tuple[slice, slice]

#: the largest relative window shift either service asks :func:`tied_shifts` to search
MAX_SHIFT_PX = 96
#: template SSD (in [0, 1] units) within which two shifts count as tied
TIE_SLACK = 1.0
#: tied shifts returned at most (the smallest first)
MAX_TIED_SHIFTS = 96


def overlap_windows(shape: tuple[int, int], dx: int, dy: int) -> tuple[Window, Window]:
    """Windows of ``a`` and ``b`` that see the same layout when ``b[y, x] == a[y + dy, x + dx]``."""
    h, w = shape
    in_a = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    in_b = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
    return in_a, in_b


def overlap_area(shape: tuple[int, int], dx: int, dy: int) -> int:
    """Pixels in the overlap of two windows of ``shape`` at shift ``(dx, dy)``."""
    h, w = shape
    return max(0, h - abs(dy)) * max(0, w - abs(dx))


def overlap_fraction(shape: tuple[int, int], dx: int, dy: int) -> float:
    """The overlap at shift ``(dx, dy)`` as a fraction of the window's area."""
    h, w = shape
    return overlap_area(shape, dx, dy) / float(h * w)


def tied_shifts(mask_a: np.ndarray, mask_b: np.ndarray, max_shift_px: int) -> list[tuple[int, int]]:
    """Shifts at which ``b``'s central mask matches ``a`` as well as at the best one, smallest
    first, at most ``MAX_TIED_SHIFTS`` (``b[y, x] == a[y + dy, x + dx]``; 8-bit masks of one shape).

    The template is ``b`` less a ``max_shift_px`` margin (less, on a small clip:
    at least 8 px of template remain); the search is a squared-difference template match."""
    h, w = mask_a.shape
    margin = min(max_shift_px, (min(h, w) - 8) // 2)
    if margin < 0:
        return []
    a = mask_a.astype(np.float32) / 255.0
    template = mask_b[margin : h - margin, margin : w - margin].astype(np.float32) / 255.0
    scores = cv2.matchTemplate(a, template, cv2.TM_SQDIFF)
    ys, xs = np.nonzero(scores <= float(scores.min()) + TIE_SLACK)
    shifts = sorted(
        zip((xs - margin).tolist(), (ys - margin).tolist(), strict=True),
        key=lambda s: (max(abs(s[0]), abs(s[1])), abs(s[0]) + abs(s[1])),
    )
    return [(int(dx), int(dy)) for dx, dy in shifts[:MAX_TIED_SHIFTS]]
