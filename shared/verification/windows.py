"""Two windows of one layout: every shift scored over its whole overlap, and what the strips show.

:func:`.overlap.tied_shifts` matches the *central* template of one mask: on a
sparse clip (a few contacts, a block edge) or a row whose contacts sit along the
rails at the window's borders, that template is empty, every shift ties, and
the true one is not among those returned. Here every shift within
``max_shift_px`` is scored over the whole overlap of the two windows at once
(:func:`overlap_scores`: sums of squared differences and of matched drawn area
from one correlation and integral images), so a sparse or rail-bound layout
registers as well as a dense one.

Registering by a translation leaves a strip of each clip outside the overlap,
pixels no check compared. A window moved by a few pixels shows, there, the
continuation of what crosses the other window's border; a window moved further
(or another part of the layout) shows drawn features the other window cannot
explain. :func:`strip_features` finds those: drawn components (8-connected) of
either mask that lie wholly outside the overlap. In strict mode a match with
more than ``strip_new_max_px`` such pixels is refused (the default of the dedupe
stage: a clip with new content is a new result); a farm that calls every window
of one layout a duplicate turns it off.

Every match records how much was compared: the overlap as a share of the window
(``compared_fraction``) and the smaller share of either clip's drawn pixels that
lie in it (``drawn_compared_fraction``).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np

from shared.verification.difference import mask_difference
from shared.verification.overlap import overlap_windows
from shared.verification.prints import PrintJudgement
from shared.verification.shifted_match import PixelTolerances, judge_windows

#: shifts judged at most per pair (those agreeing best on the most drawn area first)
MAX_JUDGED_SHIFTS = 24
#: a shift is judged only when at least this share of either clip's drawn pixels lies in its overlap
MIN_DRAWN_COMPARED = 0.25
#: with the strips checked (strict): at least MIN_DRAWN_COMPARED of one clip's drawn pixels and this share of
#: the other's (a sparse clip whose window move took most of what it shows out of the window; the rest of
#: the other clip's drawn area must then lie within the move, or the strip check refuses)
MIN_DRAWN_COMPARED_OTHER = 0.05
#: agreeing shifts matching at least this share of the best one's drawn area tie with it (``unique_shift``)
TIED_MATCH_SHARE = 0.9


@dataclass(frozen=True)
class StripFeatures:
    """Drawn pixels of each clip in components lying wholly outside the overlap (``a``, ``b``)."""

    new_px: tuple[int, int]

    @property
    def total_px(self) -> int:
        return self.new_px[0] + self.new_px[1]


@dataclass(frozen=True)
class WindowMatch:
    """``b`` is ``a`` seen through a window moved by ``shift_px``, with what was measured."""

    shift_px: tuple[int, int]
    mask_mismatch_px: int
    prints: PrintJudgement
    compared_fraction: float
    drawn_compared_fraction: float
    strip: StripFeatures
    matched_drawn_px: int = 0  # mask pixels drawn in both clips at the shift: the evidence compared

    def details(self) -> dict[str, object]:
        return {
            "shift_px": [self.shift_px[0], self.shift_px[1]],
            "mask_mismatch_px": self.mask_mismatch_px,
            **self.prints.details(),
            "compared_fraction": round(self.compared_fraction, 4),
            "drawn_compared_fraction": round(self.drawn_compared_fraction, 4),
            "matched_drawn_px": self.matched_drawn_px,
            "strip_new_px": list(self.strip.new_px),
        }


def _box_sums(values: np.ndarray, max_shift_px: int) -> np.ndarray:
    """Per shift ``(dx, dy)`` (array index ``[dy + S, dx + S]``), the sum of ``values`` over the part of its
    window that overlaps the other window shifted by ``(dx, dy)`` (``values`` is ``a``'s array)."""
    h, w = values.shape
    integral = cv2.integral(values.astype(np.float64))  # (h + 1, w + 1)
    d = np.arange(-max_shift_px, max_shift_px + 1)
    y0, y1 = np.maximum(0, d), h + np.minimum(0, d)
    x0, x1 = np.maximum(0, d), w + np.minimum(0, d)
    rows = integral[y1] - integral[y0]  # per dy, the column sums over its rows (prefix-summed along x)
    return np.asarray(rows[:, x1] - rows[:, x0])


@dataclass(frozen=True, eq=False)
class MaskSums:
    """One 8-bit mask's share of :func:`overlap_scores` at one reach, computed once and reused against
    every mask it is compared with (a result is verified against many candidates): the mask in [0, 1],
    zero-padded by the reach, its drawn area, and per shift ``(dx, dy)`` (index ``[dy + S, dx + S]``)
    its sum and its sum of squares over its part of the overlap with the other window moved so."""

    max_shift_px: int
    padded: np.ndarray
    total: float
    drawn: np.ndarray
    squares: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray, max_shift_px: int) -> MaskSums:
        s = max_shift_px
        values = mask.astype(np.float32) / 255.0
        return cls(s, cv2.copyMakeBorder(values, s, s, s, s, cv2.BORDER_CONSTANT, value=0.0),
                   float(mask.astype(np.float64).sum()) / 255.0, _box_sums(values, s),
                   _box_sums(values * values, s))

    @property
    def values(self) -> np.ndarray:
        """The mask in [0, 1] (a view of the padded copy)."""
        s = self.max_shift_px
        h, w = self.padded.shape
        return self.padded[s : h - s, s : w - s]

    def fits(self, mask: np.ndarray, max_shift_px: int) -> bool:
        return self.max_shift_px == max_shift_px and self.values.shape == mask.shape


def search_reach(shape: tuple[int, ...], tolerances: PixelTolerances) -> int:
    """The largest shift scored between two windows of ``shape`` (at most half the window)."""
    return min(tolerances.max_shift_px, min(shape[0], shape[1]) // 2 - 1)


def _sums(mask: np.ndarray, max_shift_px: int, known: MaskSums | None) -> MaskSums:
    return known if known is not None and known.fits(mask, max_shift_px) else MaskSums.of(mask, max_shift_px)


def overlap_scores(mask_a: np.ndarray, mask_b: np.ndarray, max_shift_px: int,
                   sums: tuple[MaskSums | None, MaskSums | None] = (None, None)) -> dict[str, np.ndarray]:
    """Per shift within ``max_shift_px`` (index ``[dy + S, dx + S]``, ``b[y, x] == a[y + dy, x + dx]``):
    ``ssd`` (squared differences of the [0, 1] masks over the overlap), ``matched`` (sum of ``a * b``
    there, the drawn area both show), ``drawn_a`` / ``drawn_b`` (each mask's sum over its part of it).
    ``sums``: either mask's :class:`MaskSums` at this reach where already computed."""
    s = max_shift_px
    a = _sums(mask_a, s, sums[0])
    b = _sums(mask_b, s, sums[1])
    matched = cv2.matchTemplate(a.padded, b.values, cv2.TM_CCORR).astype(np.float64)  # [dy + S, dx + S]
    # b's part of the overlap at (dx, dy) is a's at (-dx, -dy)
    ssd = np.maximum(a.squares + b.squares[::-1, ::-1] - 2.0 * matched, 0.0)
    return {"ssd": ssd, "matched": matched, "drawn_a": a.drawn, "drawn_b": b.drawn[::-1, ::-1]}


def candidate_shifts(
    mask_a: np.ndarray, mask_b: np.ndarray, tolerances: PixelTolerances
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Shifts to judge, and every shift at which the masks agree (an ``(n, 2)`` array of ``(dx, dy)``).
    See :func:`_shift_search`."""
    judged, agreeing, _ = _shift_search(mask_a, mask_b, tolerances)
    return judged, agreeing


def _shift_search(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    tolerances: PixelTolerances,
    min_other: float = MIN_DRAWN_COMPARED,
    sums: tuple[MaskSums | None, MaskSums | None] = (None, None),
) -> tuple[list[tuple[int, int]], np.ndarray, bool]:
    """Shifts to judge, every shift at which the masks agree (an ``(n, 2)`` array of ``(dx, dy)``), and
    whether the registration is ambiguous: more than one agreeing shift matches nearly as much drawn
    area as the best (``TIED_MATCH_SHARE``), as a lone rail does at every shift along it.

    The masks agree at a shift when their squared difference over the whole overlap is within the
    mismatch limit; a shift is judged when, besides, the overlap holds at least ``MIN_DRAWN_COMPARED``
    of one clip's drawn area and ``min_other`` of the other's. Judged first: the most drawn area
    agreeing, then the smallest shift; at most ``MAX_JUDGED_SHIFTS``."""
    s = search_reach(mask_a.shape, tolerances)
    if s < 0:
        return [], np.zeros((0, 2), dtype=np.int64), True
    known = (_sums(mask_a, s, sums[0]), _sums(mask_b, s, sums[1]))
    scores = overlap_scores(mask_a, mask_b, s, known)
    total_a, total_b = known[0].total, known[1].total
    share_a = scores["drawn_a"] / max(total_a, 1e-9)
    share_b = scores["drawn_b"] / max(total_b, 1e-9)
    compared = ((np.maximum(share_a, share_b) >= MIN_DRAWN_COMPARED)
                & (np.minimum(share_a, share_b) >= min(min_other, MIN_DRAWN_COMPARED)))
    agree = scores["ssd"] <= tolerances.mask_mismatch_max_px + 1.0
    ay, ax = np.nonzero(agree)
    agreeing = np.stack([ax - s, ay - s], axis=1).astype(np.int64)
    matched = scores["matched"][ay, ax]
    best = float(matched.max()) if matched.size else 0.0
    ambiguous = best <= 0.0 or int(np.count_nonzero(matched >= TIED_MATCH_SHARE * best)) > 1
    judged = agree & compared if total_a > 0 or total_b > 0 else agree
    ys, xs = np.nonzero(judged)
    order = sorted(
        zip(ys.tolist(), xs.tolist(), strict=True),
        key=lambda p: (-round(float(scores["matched"][p]), 1), max(abs(p[0] - s), abs(p[1] - s)),
                       abs(p[0] - s) + abs(p[1] - s)),
    )
    return [(int(x - s), int(y - s)) for y, x in order[:MAX_JUDGED_SHIFTS]], agreeing, ambiguous


def strip_features(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    shift: tuple[int, int],
    agreeing: np.ndarray | None = None,
    explained_px: int = 0,
) -> StripFeatures:
    """Drawn pixels of each mask in components (8-connected, > 127) wholly outside the overlap at ``shift``
    that neither the window move nor another agreeing shift explains.

    The move explains a feature that reaches within ``explained_px`` of the overlap (a re-simulation
    moves its window at most that far, so such a feature may have entered through the move).

    A component is explained by an agreeing shift ``T`` (``agreeing``: ``(n, 2)`` of ``(dx, dy)``, from
    :func:`candidate_shifts`) when it lies wholly in the overlap at ``T``: the other window shows the
    same feature one repeat further (an array along a rail, a grating), so it is no new content."""
    h, w = int(mask_a.shape[0]), int(mask_a.shape[1])
    windows = overlap_windows((h, w), *shift)
    counts = []
    for side, (mask, seen) in enumerate(((mask_a, windows[0]), (mask_b, windows[1]))):
        drawn = (mask > 127).astype(np.uint8)
        n, labels, stats, _ = cv2.connectedComponentsWithStats(drawn, connectivity=8, ltype=cv2.CV_32S)
        if n <= 1:
            counts.append(0)
            continue
        near = (slice(max(0, seen[0].start - explained_px), min(h, seen[0].stop + explained_px)),
                slice(max(0, seen[1].start - explained_px), min(w, seen[1].stop + explained_px)))
        inside = np.zeros(n, dtype=bool)
        inside[np.unique(labels[near])] = True
        new = np.flatnonzero(~inside[1:]) + 1
        if new.size and agreeing is not None and len(agreeing):
            sign = 1 if side == 0 else -1  # a's window at T is b's at -T
            tx, ty = sign * agreeing[:, 0], sign * agreeing[:, 1]
            x0, y0 = np.maximum(0, tx), np.maximum(0, ty)  # the overlap at T in this clip
            x1, y1 = w + np.minimum(0, tx), h + np.minimum(0, ty)
            left, top = stats[new, cv2.CC_STAT_LEFT], stats[new, cv2.CC_STAT_TOP]
            right = left + stats[new, cv2.CC_STAT_WIDTH]
            bottom = top + stats[new, cv2.CC_STAT_HEIGHT]
            held = ((left[:, None] >= x0[None]) & (right[:, None] <= x1[None])
                    & (top[:, None] >= y0[None]) & (bottom[:, None] <= y1[None]))
            new = new[~held.any(axis=1)]
        counts.append(int(stats[new, cv2.CC_STAT_AREA].sum()))
    return StripFeatures((counts[0], counts[1]))


def window_matches(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    mask_b: np.ndarray,
    print_b: np.ndarray,
    tolerances: PixelTolerances,
    strip_new_max_px: int | None,
    explained_px: int = 0,
    unique_shift: bool = False,
    min_matched_drawn_px: int = 0,
    sums: tuple[MaskSums | None, MaskSums | None] = (None, None),
    thin_match_px: int = 0,
) -> Iterator[WindowMatch]:
    """Each shift (from :func:`candidate_shifts`) at which the masks agree on the overlap, with its prints
    judged and its strips measured (:func:`strip_features` with ``explained_px``); ``strip_new_max_px``
    None: the strips are measured, never refused on. ``unique_shift``: none when the registration is
    ambiguous (only a rail, or another pattern that agrees all along one axis, was compared).
    ``min_matched_drawn_px``: a shift at which fewer mask pixels are drawn in both clips compared too
    little to tell two layouts apart (one contact matches any lone contact) and is passed over.
    ``thin_match_px``: so is a shift at which fewer are drawn in both *and* under ``MIN_DRAWN_COMPARED`` of
    one clip's drawn pixels lie in the overlap (a cut corner agreeing while the rest of the clip is left
    to the window move). ``sums``: the masks' :class:`MaskSums` where already computed (see
    :func:`search_reach`)."""
    if mask_a.shape != mask_b.shape or print_a.shape != mask_a.shape or print_b.shape != mask_b.shape:
        return
    shape = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    area = float(shape[0] * shape[1])
    drawn_a = max(int(np.count_nonzero(mask_a > 127)), 1)
    drawn_b = max(int(np.count_nonzero(mask_b > 127)), 1)
    min_other = MIN_DRAWN_COMPARED if strip_new_max_px is None else MIN_DRAWN_COMPARED_OTHER
    judged, agreeing, ambiguous = _shift_search(mask_a, mask_b, tolerances, min_other, sums)
    if unique_shift and ambiguous:
        return
    for dx, dy in judged:
        in_a, in_b = overlap_windows(shape, dx, dy)
        mismatch = int(np.count_nonzero(
            mask_difference(mask_a[in_a], mask_b[in_b], tolerances.mask_tolerance_levels)))
        if mismatch > tolerances.mask_mismatch_max_px:
            continue
        strip = strip_features(mask_a, mask_b, (dx, dy), agreeing, explained_px)
        if strip_new_max_px is not None and strip.total_px > strip_new_max_px:
            continue
        compared = float((in_a[0].stop - in_a[0].start) * (in_a[1].stop - in_a[1].start)) / area
        matched = int(np.count_nonzero((mask_a[in_a] > 127) & (mask_b[in_b] > 127)))
        if matched < min_matched_drawn_px:
            continue
        drawn_compared = min(int(np.count_nonzero(mask_a[in_a] > 127)) / drawn_a,
                             int(np.count_nonzero(mask_b[in_b] > 127)) / drawn_b)
        if matched < thin_match_px and drawn_compared < MIN_DRAWN_COMPARED:
            continue
        yield WindowMatch((dx, dy), mismatch, judge_windows(mask_a, print_a, print_b, in_a, in_b, tolerances),
                          compared, drawn_compared, strip, matched)


def verify_window_match(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    mask_b: np.ndarray,
    print_b: np.ndarray,
    tolerances: PixelTolerances,
    strip_new_max_px: int | None = 0,
    explained_px: int = 0,
    unique_shift: bool = False,
    min_matched_drawn_px: int = 0,
    sums: tuple[MaskSums | None, MaskSums | None] = (None, None),
    thin_match_px: int = 0,
) -> WindowMatch | None:
    """The first shift (most drawn area agreeing, then smallest) at which ``b`` is ``a`` seen through a
    moved window, prints accepted and (unless ``strip_new_max_px`` is None) no new feature in a strip;
    ``unique_shift``: only when no other shift agrees nearly as well; ``min_matched_drawn_px``,
    ``thin_match_px`` and ``sums``: see :func:`window_matches`."""
    return next(
        (
            m
            for m in window_matches(
                mask_a, print_a, mask_b, print_b, tolerances, strip_new_max_px, explained_px, unique_shift,
                min_matched_drawn_px, sums, thin_match_px,
            )
            if m.prints.accepted
        ),
        None,
    )
