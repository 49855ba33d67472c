"""Refuse a registration that hides a difference in its blind spot.

Registering two clips by a translation leaves a strip of each outside the
overlap: pixels no check has seen. For a real re-simulation that strip is new
layout that entered the window. On a periodic layout (gratings, arrays, SRAM)
the masks match at several shifts a period apart, and a defect near the border
can then be hidden: at the true shift the masks or prints differ at the defect,
one period further they agree everywhere on the (smaller) overlap, because the
defect now lies in the strip. Measured: a bridge 30 px from the edge of a
grating, re-simulated with a 4 px shift, was confirmed at a 38 px shift.

So after a shift ``S`` is accepted, every other shift ``T`` at which the
central mask template matches equally well (:func:`.overlap.tied_shifts`) and
whose overlap is larger is judged too: when the pair disagrees at ``T`` (masks
or prints beyond their limits) but would agree at ``T`` on the part of either
clip that ``S`` verified, the whole disagreement lies in ``S``'s blind spot, and
the two registrations tell different stories about pixels nobody checked at
``S``. The pair is then not confirmed. This only ever refuses; it never makes a
pair agree.
"""

from __future__ import annotations

import numpy as np

from shared.verification.difference import mask_difference, print_difference
from shared.verification.overlap import Window, overlap_area, overlap_windows, tied_shifts
from shared.verification.shifted_match import PixelTolerances, judge_windows


def blind_spot_conflict(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    mask_b: np.ndarray,
    print_b: np.ndarray,
    shift: tuple[int, int],
    tolerances: PixelTolerances,
) -> tuple[int, int] | None:
    """A tied shift with a larger overlap whose disagreement lies wholly in ``shift``'s blind spot, or None.

    ``a`` is the library clip, ``b`` the result; masks 8-bit, prints boolean, one
    shape; ``shift`` = ``(dx, dy)`` with ``b[y, x] == a[y + dy, x + dx]``. With
    ``print_edge_band_px`` > 0 the prints are judged as
    :func:`.shifted_match.judge_windows` does (topology and edge band, marginal
    features forgiven with ``marginal_width_fraction`` > 0), at ``T`` on its
    whole overlap and on the part ``shift`` verified; with 0, by the count of
    differing print pixels beyond slivers.
    """
    shape = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    dx, dy = shift
    seen_a, seen_b = overlap_windows(shape, dx, dy)
    verified_a = np.zeros(shape, dtype=bool)  # pixels of each clip that the accepted shift compared
    verified_a[seen_a] = True
    verified_b = np.zeros(shape, dtype=bool)
    verified_b[seen_b] = True
    accepted_area = overlap_area(shape, dx, dy)
    mask_max, print_max = tolerances.mask_mismatch_max_px, tolerances.print_mismatch_max_px
    for tx, ty in tied_shifts(mask_a, mask_b, tolerances.max_shift_px):
        if (tx, ty) == (dx, dy) or overlap_area(shape, tx, ty) <= accepted_area:
            continue
        in_a, in_b = overlap_windows(shape, tx, ty)
        mask_bad = mask_difference(mask_a[in_a], mask_b[in_b], tolerances.mask_tolerance_levels)
        # the disagreement at T, seen from each clip: is all of it where the accepted shift never looked?
        sides = [
            (side, seen)
            for side, seen in (("b", verified_b[in_b]), ("a", verified_a[in_a]))
            if int((mask_bad & seen).sum()) <= mask_max
        ]
        if not sides:
            continue  # T disagrees where S agreed: the layout is not periodic along T - S
        masks_agree = int(mask_bad.sum()) <= mask_max
        if tolerances.print_edge_band_px > 0:
            if masks_agree and judge_windows(mask_a, print_a, print_b, in_a, in_b, tolerances).accepted:
                continue  # both shifts agree: a periodic layout, the same story either way
            for side, _ in sides:  # T judged on the part of its overlap that S verified
                part_a, part_b = _verified_part(in_a, in_b, seen_a if side == "a" else seen_b, side, tx, ty)
                if (
                    part_a is not None
                    and part_b is not None
                    and judge_windows(mask_a, print_a, print_b, part_a, part_b, tolerances).accepted
                ):
                    return (tx, ty)
            continue
        print_bad = print_difference(print_a[in_a], print_b[in_b], tolerances.print_tolerance_px)
        if masks_agree and int(print_bad.sum()) <= print_max:
            continue  # both shifts agree: a periodic layout, the same story either way
        if any(int((print_bad & seen).sum()) <= print_max for _, seen in sides):
            return (tx, ty)
    return None


def _verified_part(
    in_a: Window, in_b: Window, seen: Window, side: str, tx: int, ty: int
) -> tuple[Window | None, Window | None]:
    """The windows of ``a`` and ``b`` at shift ``T`` inside ``seen``: the part of one clip ``S`` compared."""
    own = in_a if side == "a" else in_b
    ys = slice(max(own[0].start, seen[0].start), min(own[0].stop, seen[0].stop))
    xs = slice(max(own[1].start, seen[1].start), min(own[1].stop, seen[1].stop))
    if ys.stop - ys.start < 1 or xs.stop - xs.start < 1:
        return None, None
    sign = -1 if side == "a" else 1  # b[y, x] == a[y + ty, x + tx]
    oy, ox = sign * ty, sign * tx
    other = (slice(ys.start + oy, ys.stop + oy), slice(xs.start + ox, xs.stop + ox))
    return ((ys, xs), other) if side == "a" else (other, (ys, xs))
