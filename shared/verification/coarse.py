"""A coarse, cheap likeness of two masks: which candidates are worth a pixel check.

About 0.1 ms a pair: cheap enough to rank a few dozen embedding neighbours and
check only the best on pixels, so a weak encoder that puts the true entry at
rank 10 instead of 1 still finds it.

- :func:`coarse_ncc`: the query's central template over the entry (the novelty
  stage's confirmation; a dense clip's likeness).
- :func:`coarse_overlap_mismatch`: every shift scored over the whole overlap of
  the two windows, as :func:`.windows.overlap_scores` does at full size, so clips
  whose content lies along their borders (the rails' contacts of a standard-cell
  row, a block edge) rank as well as dense ones (the dedupe stage's order of its
  bridge and profile candidates).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from shared.verification.windows import MIN_DRAWN_COMPARED, MaskSums, overlap_scores

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


def coarse_overlap_sums(mask: np.ndarray, max_shift_px: int, block_px: int = OVERLAP_BLOCK_PX) -> MaskSums:
    """An 8-bit ``mask`` averaged over ``block_px`` blocks, with its :class:`MaskSums` for shifts up to
    ``max_shift_px`` full-size pixels: what one mask brings to :func:`coarse_overlap_mismatch`, computed once
    however many masks it is compared with."""
    small = downsample_mask(mask.astype(np.float32) / 255.0, block_px)
    levels = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    reach = min(math.ceil(max_shift_px / block_px), min(levels.shape) // 2 - 1)
    return MaskSums.of(levels, max(reach, 0))


def coarse_overlap_mismatch(a: MaskSums, b: MaskSums) -> float:
    """How far two windows are from showing one layout at any shift, from :func:`coarse_overlap_sums`:
    the least, over the shifts whose overlap holds at least ``MIN_DRAWN_COMPARED`` of one mask's drawn
    area, squared difference over the overlap relative to the drawn area both masks have there (0: they
    agree; 1: nothing in common). Two empty masks agree; 1 for masks of different shapes or reaches."""
    if a.values.shape != b.values.shape or a.max_shift_px != b.max_shift_px:
        return 1.0
    if a.total <= 0.0 or b.total <= 0.0:
        return 0.0 if a.total <= 0.0 and b.total <= 0.0 else 1.0
    scores = overlap_scores(a.values, b.values, a.max_shift_px, (a, b))
    drawn = scores["drawn_a"] + scores["drawn_b"]
    compared = np.maximum(scores["drawn_a"] / a.total, scores["drawn_b"] / b.total) >= MIN_DRAWN_COMPARED
    relative = np.where(compared & (drawn > 0.0), scores["ssd"] / np.maximum(drawn, 1e-9), 1.0)
    return float(min(1.0, relative.min()))
