"""Is clip ``b`` clip ``a`` seen through a shifted window? Masks first, then prints.

Each tied shift (:func:`.overlap.tied_shifts`, smallest first) is judged over
the whole overlap of the two windows, where a layout's non-periodic parts show
(in the print too: a line end just outside the window pulls the print back
inside):

- at most ``mask_mismatch_max_px`` mask pixels may differ by more than
  ``mask_tolerance_levels`` (8-bit levels): the same layout seen through a
  window moved by whole pixels has identical mask pixels there, while two
  distinct layouts (even gratings of nearly the same pitch), or a layout with a
  mask defect, differ;
- the binarised prints, at that shift, must pass :func:`.prints.judge_prints`
  (with ``print_edge_band_px = 0``: differ only in slivers up to
  ``2 * print_tolerance_px`` wide, at most ``print_mismatch_max_px`` pixels).
  This catches a print that changed with an identical mask (a focus or dose
  excursion that bridges or pinches).

A window moved by a fraction of a pixel changes the anti-aliased mask edges and
is not recognised (the safe side).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from shared.verification.difference import MASK_TOLERANCE_LEVELS, mask_difference
from shared.verification.overlap import Window, overlap_windows, tied_shifts
from shared.verification.prints import PrintJudgement, judge_prints


@dataclass(frozen=True)
class PixelTolerances:
    """How a pair of clips is registered and judged on pixels (see the module docstring).

    ``max_shift_px`` is the relative window shift searched; ``print_edge_band_px`` and
    ``marginal_width_fraction`` are those of :func:`.prints.judge_prints` (0: the plain print check)."""

    max_shift_px: int
    mask_mismatch_max_px: int
    print_tolerance_px: int
    print_mismatch_max_px: int
    mask_tolerance_levels: int = MASK_TOLERANCE_LEVELS
    print_edge_band_px: int = 0
    marginal_width_fraction: float = 0.0


@dataclass(frozen=True)
class ShiftedMatch:
    """A shift at which the masks agree on the overlap, and how the prints were judged there."""

    shift_px: tuple[int, int]  # (dx, dy): b[y, x] == a[y + dy, x + dx]
    mask_mismatch_px: int
    prints: PrintJudgement

    def details(self) -> dict[str, object]:
        """What was measured, as a duplicate record's details carry it."""
        return {
            "shift_px": [self.shift_px[0], self.shift_px[1]],
            "mask_mismatch_px": self.mask_mismatch_px,
            **self.prints.details(),
        }


def judge_windows(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    print_b: np.ndarray,
    window_a: Window,
    window_b: Window,
    tolerances: PixelTolerances,
) -> PrintJudgement:
    """The prints of ``a`` and ``b`` in these windows (where the masks agree) judged as ``tolerances`` say;
    ``a``'s 8-bit mask there is the drawn layout that marginal features are measured against."""
    marginal = tolerances.marginal_width_fraction
    drawn = mask_a[window_a] > 127 if marginal > 0 else None
    return judge_prints(
        print_a[window_a],
        print_b[window_b],
        tolerance_px=tolerances.print_tolerance_px,
        mismatch_max_px=tolerances.print_mismatch_max_px,
        edge_band_px=tolerances.print_edge_band_px,
        drawn=drawn,
        marginal_width_fraction=marginal,
    )


def shifted_matches(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    mask_b: np.ndarray,
    print_b: np.ndarray,
    tolerances: PixelTolerances,
) -> Iterator[ShiftedMatch]:
    """Each tied shift at which the masks agree on the overlap, smallest first, with its prints judged.

    Masks are 8-bit, prints boolean, all of one shape (nothing is yielded otherwise)."""
    if mask_a.shape != mask_b.shape or print_a.shape != mask_a.shape or print_b.shape != mask_b.shape:
        return
    shape = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    for dx, dy in tied_shifts(mask_a, mask_b, tolerances.max_shift_px):
        in_a, in_b = overlap_windows(shape, dx, dy)
        mismatch = int(
            np.count_nonzero(mask_difference(mask_a[in_a], mask_b[in_b], tolerances.mask_tolerance_levels))
        )
        if mismatch > tolerances.mask_mismatch_max_px:
            continue
        yield ShiftedMatch(
            (dx, dy), mismatch, judge_windows(mask_a, print_a, print_b, in_a, in_b, tolerances)
        )


def verify_shifted_match(
    mask_a: np.ndarray,
    print_a: np.ndarray,
    mask_b: np.ndarray,
    print_b: np.ndarray,
    tolerances: PixelTolerances,
) -> ShiftedMatch | None:
    """The smallest shift at which ``b`` is ``a`` seen through a shifted window, or None."""
    return next(
        (
            match
            for match in shifted_matches(mask_a, print_a, mask_b, print_b, tolerances)
            if match.prints.accepted
        ),
        None,
    )
