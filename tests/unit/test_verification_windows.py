"""Known answers for the whole-overlap shift search and the strip check (shared.verification.windows)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.verification import PixelTolerances, overlap_windows, strip_features, verify_window_match
from shared.verification.windows import MaskSums, overlap_scores

TOLERANCES = PixelTolerances(max_shift_px=32, mask_mismatch_max_px=4, print_tolerance_px=2,
                             print_mismatch_max_px=4, mask_tolerance_levels=2)


def _sheet(seed: int, size: int = 400) -> np.ndarray:
    dots = (np.random.default_rng(seed).random((size, size)) < 0.002).astype(np.uint8) * 255
    return cv2.dilate(dots, np.ones((9, 9), np.uint8))


@pytest.mark.parametrize("shift", [(0, 0), (-5, 7), (13, -2), (-32, 32)])
def test_overlap_scores_match_a_direct_sum(shift: tuple[int, int]) -> None:
    sheet = _sheet(0)
    a, b = sheet[50:306, 60:316], sheet[41:297, 70:326]
    scores = overlap_scores(a, b, 32)
    dx, dy = shift
    in_a, in_b = overlap_windows((256, 256), dx, dy)
    fa, fb = a[in_a] / 255.0, b[in_b] / 255.0
    index = (dy + 32, dx + 32)
    assert scores["ssd"][index] == pytest.approx(((fa - fb) ** 2).sum(), abs=1e-6)
    assert scores["matched"][index] == pytest.approx((fa * fb).sum(), abs=1e-6)
    assert scores["drawn_a"][index] == pytest.approx(fa.sum(), abs=1e-6)
    assert scores["drawn_b"][index] == pytest.approx(fb.sum(), abs=1e-6)


def test_mask_sums_computed_once_give_the_same_scores_and_verdicts() -> None:
    """A mask's share of the scores (computed once per result, reused against every candidate)
    changes nothing; sums made at another reach are not used."""
    sheet = _sheet(1)
    a, b = sheet[50:306, 60:316], sheet[41:297, 70:326]
    fresh = overlap_scores(a, b, 32)
    reused = overlap_scores(a, b, 32, (MaskSums.of(a, 32), MaskSums.of(b, 32)))
    wrong_reach = overlap_scores(a, b, 32, (MaskSums.of(a, 16), None))
    for key in fresh:
        np.testing.assert_array_equal(reused[key], fresh[key])
        np.testing.assert_array_equal(wrong_reach[key], fresh[key])
    printed = (cv2.GaussianBlur(sheet, (0, 0), 2.0) > 127).astype(np.uint8) * 255
    pa, pb = printed[50:306, 60:316], printed[41:297, 70:326]
    plain = verify_window_match(a, pa, b, pb, TOLERANCES, 0, 16)
    sums = (MaskSums.of(a, 32), MaskSums.of(b, 32))
    with_sums = verify_window_match(a, pa, b, pb, TOLERANCES, 0, 16, sums=sums)
    assert plain is not None and with_sums is not None
    assert with_sums.details() == plain.details()


def test_a_sparse_clip_registers_where_its_centre_is_empty() -> None:
    sheet = np.zeros((400, 400), np.uint8)
    sheet[60:76, 60:300] = 255  # a rail along the top border, contacts along it, nothing in the middle
    for x in range(70, 300, 42):
        sheet[78:94, x:x + 16] = 255
    a, b = sheet[58:314, 50:306], sheet[66:322, 39:295]  # b[y, x] == a[y + 8, x - 11]
    match = verify_window_match(a, a > 127, b, b > 127, TOLERANCES, 4, 16)
    assert match is not None and match.shift_px == (-11, 8)
    assert match.details()["compared_fraction"] == pytest.approx((256 - 11) * (256 - 8) / 256**2, abs=1e-4)


def test_strip_features_count_whole_features_beyond_the_move_only() -> None:
    a = np.zeros((256, 256), np.uint8)
    b = np.zeros((256, 256), np.uint8)
    a[100:140, 100:120] = b[100:140, 70:90] = 255  # one feature both show: b is a moved 30 px right
    b[10:26, 244:254] = 255  # a contact 18 px past the overlap (which ends at b's column 226)
    b[200:216, 227:229] = 255  # a sliver 1 px past the overlap: the move explains it
    assert strip_features(a, b, (30, 0), None, 0).new_px == (0, 16 * 10 + 16 * 2)
    assert strip_features(a, b, (30, 0), None, 16).new_px == (0, 16 * 10)
    assert strip_features(a, b, (30, 0), None, 24).new_px == (0, 0)


def test_a_new_contact_that_repeats_a_row_the_other_window_shows_is_explained() -> None:
    sheet = np.zeros((256, 400), np.uint8)
    for x in range(4, 400, 40):  # a row of identical contacts at one pitch across the window
        sheet[120:136, x:x + 16] = 255
    a, b = sheet[:, 40:296], sheet[:, 70:326]  # b is a moved 30 px: a whole contact enters past 16 px
    assert strip_features(a, b, (30, 0), None, 16).total_px > 0
    match = verify_window_match(a, a > 127, b, b > 127, TOLERANCES, 4, 16)
    assert match is not None and match.strip.total_px == 0
