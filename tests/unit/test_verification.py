"""Known answers of the pixel verification library on generated images: shifts, slivers, topology."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.verification import (
    DescriptorParams,
    PixelTolerances,
    PrintJudgement,
    blind_spot_conflict,
    coarse_ncc,
    coarse_overlap_mismatch,
    coarse_overlap_mismatches,
    coarse_overlap_sums,
    coarse_phase_mismatch,
    downsample_mask,
    drop_slivers,
    judge_prints,
    mask_difference,
    mask_hash_bits,
    overlap_area,
    overlap_fraction,
    overlap_windows,
    print_difference,
    print_hash_bits,
    refine_shift,
    register_by_descriptors,
    shifted_matches,
    sliver_free_mismatch,
    tied_shifts,
    topology_change,
    verify_shifted_match,
)
from shared.verification.windows import overlap_scores

WINDOW_PX = 256
PAD_PX = 48


def random_layout(seed: int, size_px: int = WINDOW_PX + 2 * PAD_PX, n_shapes: int = 40) -> np.ndarray:
    """A float [0, 1] mask of axis-aligned rectangles (8-40 px) placed at random: no two windows alike."""
    rng = np.random.default_rng(seed)
    canvas = np.zeros((size_px, size_px), np.float32)
    for _ in range(n_shapes):
        w, h = (int(v) for v in rng.integers(8, 40, size=2))
        x, y = (int(v) for v in rng.integers(0, size_px - 40, size=2))
        canvas[y : y + h, x : x + w] = 1.0
    return canvas


def printed(mask: np.ndarray, dose: float = 1.0) -> np.ndarray:
    """A blur-and-threshold print of ``mask`` (bool): edges move with ``dose``, topology stays."""
    return cv2.GaussianBlur(mask, (0, 0), 3.0) * dose > 0.45


def window(canvas: np.ndarray, shift_px: tuple[int, int] = (0, 0)) -> np.ndarray:
    """The window of ``canvas`` moved ``shift_px`` = (dx, dy) from the nominal one."""
    x, y = PAD_PX + shift_px[0], PAD_PX + shift_px[1]
    return canvas[y : y + WINDOW_PX, x : x + WINDOW_PX].copy()


def u8(mask: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(mask * 255.0), 0, 255).astype(np.uint8)


def clip(
    canvas: np.ndarray, shift_px: tuple[int, int] = (0, 0), dose: float = 1.0
) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit mask, bool print) of one window; the print is made on the whole canvas, as a simulator would."""
    return u8(window(canvas, shift_px)), window(printed(canvas, dose).astype(np.float32), shift_px) > 0.5


DEDUPE_LIMITS = PixelTolerances(
    max_shift_px=32, mask_mismatch_max_px=4, print_tolerance_px=2, print_mismatch_max_px=4
)


# -- overlap windows and tied shifts ---------------------------------------------------------------


@pytest.mark.parametrize("shift", [(0, 0), (7, -5), (-20, 13), (31, 31)])
def test_overlap_windows_see_the_same_layout(shift: tuple[int, int]) -> None:
    canvas = random_layout(1)
    a, b = window(canvas), window(canvas, shift)
    in_a, in_b = overlap_windows(a.shape, *shift)
    assert np.array_equal(a[in_a], b[in_b])
    dx, dy = shift
    assert a[in_a].size == overlap_area(a.shape, dx, dy) == (WINDOW_PX - abs(dx)) * (WINDOW_PX - abs(dy))
    assert overlap_fraction(a.shape, dx, dy) == pytest.approx(a[in_a].size / WINDOW_PX**2)


def test_overlap_of_windows_farther_apart_than_their_size_is_empty() -> None:
    assert overlap_area((64, 64), 70, 0) == 0 and overlap_fraction((64, 64), 0, -64) == 0.0


@pytest.mark.parametrize("shift", [(0, 0), (9, -4), (-17, 22)])
def test_a_non_periodic_layout_has_one_tied_shift_the_true_one(shift: tuple[int, int]) -> None:
    canvas = random_layout(2)
    assert tied_shifts(u8(window(canvas)), u8(window(canvas, shift)), 32) == [shift]


def test_a_grating_ties_at_every_pitch_smallest_shift_first() -> None:
    canvas = np.zeros((WINDOW_PX + 2 * PAD_PX,) * 2, np.float32)
    for x in range(0, canvas.shape[1], 20):  # vertical lines, 20 px pitch: periodic along x only
        canvas[:, x : x + 8] = 1.0
    canvas[150:160] = 0.0  # every line cut at one height: y is pinned
    shifts = tied_shifts(u8(window(canvas)), u8(window(canvas, (3, 6))), 32)
    assert shifts[0] == (3, 6)
    assert set(shifts) == {(3, 6), (-17, 6), (23, 6)}  # one pitch either side, within 32 px


def test_tied_shifts_of_a_clip_too_small_to_search_is_empty() -> None:
    tiny = np.zeros((6, 6), np.uint8)
    assert tied_shifts(tiny, tiny, 4) == []


# -- differences with slivers dropped ---------------------------------------------------------------


def test_slivers_up_to_twice_the_tolerance_are_dropped_wider_differences_kept() -> None:
    a = np.zeros((64, 64), dtype=bool)
    b = a.copy()
    b[10:50, 10:14] = True  # 4 px wide: an edge moved by 2 px on either side
    b[10:50, 30:35] = True  # 5 px wide: a real difference
    diff = print_difference(a, b, 2)
    assert diff.dtype == bool and int(diff.sum()) == 40 * 5 and not diff[:, 10:14].any()
    assert int(print_difference(a, b, 0).sum()) == 40 * 9  # no tolerance: everything counts
    assert int(print_difference(a, b, 3).sum()) == 0
    assert not drop_slivers(np.zeros((8, 8), dtype=bool), 2).any()


def test_mask_difference_ignores_levels_within_the_tolerance() -> None:
    a = np.full((32, 32), 100, np.uint8)
    b = a.copy()
    b[0, :8] = 102  # anti-aliasing noise
    b[10:20, 10:20] = 200  # a 10 x 10 defect
    b[30, 0:32] = 0  # a 1 px line: a sub-pixel registration edge
    assert int(mask_difference(a, b, 2).sum()) == 100 + 32
    assert int(mask_difference(a, b, 1).sum()) == 8 + 100 + 32
    assert sliver_free_mismatch(a, b) == 100  # the 1 px line dropped, the defect kept


# -- topology of the print -------------------------------------------------------------------------


def two_squares() -> np.ndarray:
    out = np.zeros((64, 64), dtype=bool)
    out[20:40, 10:25] = out[20:40, 35:50] = True
    return out


def test_topology_same_when_edges_move() -> None:
    grown = cv2.dilate(two_squares().astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
    assert topology_change(two_squares(), grown, 2) == "same"


def test_a_bridge_a_missing_square_and_a_filled_hole_are_topology_changes() -> None:
    bridged = two_squares()
    bridged[28:32, 25:35] = True
    assert topology_change(two_squares(), bridged, 2) == "components"
    missing = two_squares()
    missing[:, 30:] = False
    assert topology_change(two_squares(), missing, 2) == "components"
    ring = two_squares()
    ring[26:34, 14:21] = False  # a hole in the first square
    assert topology_change(ring, two_squares(), 2) == "holes"
    assert topology_change(ring, ring.copy(), 2) == "same"


def test_a_feature_wholly_within_the_border_band_is_not_judged() -> None:
    edge = two_squares()
    edge[0:2, 50:60] = True  # a sliver of a feature outside the window
    assert topology_change(two_squares(), edge, 2) == "same"
    assert topology_change(two_squares(), edge, 1) == "components"


# -- the shifted match: masks, then prints ---------------------------------------------------------


def test_a_shifted_window_of_one_layout_matches_at_its_shift() -> None:
    canvas = random_layout(3)
    mask_a, print_a = clip(canvas)
    mask_b, print_b = clip(canvas, (12, -9), dose=1.02)  # print edges wobble with the dose
    match = verify_shifted_match(mask_a, print_a, mask_b, print_b, DEDUPE_LIMITS)
    assert match is not None and match.shift_px == (12, -9) and match.mask_mismatch_px == 0
    assert match.prints.accepted and match.prints.topology == "not_checked"
    assert match.details() == {
        "shift_px": [12, -9],
        "mask_mismatch_px": 0,
        "print_mismatch_px": match.prints.mismatch_px,
    }


def test_a_mask_defect_a_print_change_or_another_layout_does_not_match() -> None:
    canvas = random_layout(3)
    mask_a, print_a = clip(canvas)
    mask_b, print_b = clip(canvas, (12, -9))
    defect = mask_b.copy()
    defect[100:106, 100:106] = 255 - defect[100:106, 100:106]
    assert verify_shifted_match(mask_a, print_a, defect, print_b, DEDUPE_LIMITS) is None
    blob = print_b.copy()
    blob[120:128, 120:128] = ~blob[120:128, 120:128]
    assert verify_shifted_match(mask_a, print_a, mask_b, blob, DEDUPE_LIMITS) is None
    other_mask, other_print = clip(random_layout(4), (12, -9))
    assert verify_shifted_match(mask_a, print_a, other_mask, other_print, DEDUPE_LIMITS) is None
    assert verify_shifted_match(mask_a, print_a, mask_b[:128], print_b[:128], DEDUPE_LIMITS) is None


def test_shifted_matches_yields_the_refused_prints_too() -> None:
    canvas = random_layout(3)
    mask_a, print_a = clip(canvas)
    mask_b, print_b = clip(canvas, (5, 5))
    blob = print_b.copy()
    blob[120:128, 120:128] = ~blob[120:128, 120:128]
    found = list(shifted_matches(mask_a, print_a, mask_b, blob, DEDUPE_LIMITS))
    assert [m.shift_px for m in found] == [(5, 5)] and not found[0].prints.accepted
    assert found[0].prints.mismatch_px == 64


def test_a_true_registration_of_a_non_periodic_layout_has_no_blind_spot() -> None:
    canvas = random_layout(5)
    mask_a, print_a = clip(canvas)
    mask_b, print_b = clip(canvas, (10, 4))
    for band in (0, 4):
        limits = PixelTolerances(32, 4, 2, 40, print_edge_band_px=band)
        assert blind_spot_conflict(mask_a, print_a, mask_b, print_b, (10, 4), limits) is None


def test_a_defect_hidden_one_period_off_is_found_in_the_blind_spot() -> None:
    canvas = np.zeros((400, 400), np.float32)
    for x in range(0, 400, 38):
        canvas[92:308, x : x + 14] = 1.0
    canvas[196:204] = 0.0
    library = canvas[72:328, 72:328].copy()
    result = canvas[76:332, 73:329].copy()  # result[y, x] == library[y + 4, x + 1]
    result[140:160, 240:256] = 1.0  # a bridge within 16 px of the right edge
    a, b = (u8(library), library > 0.5), (u8(result), result > 0.5)
    limits = PixelTolerances(
        max_shift_px=56, mask_mismatch_max_px=4, print_tolerance_px=2, print_mismatch_max_px=4
    )
    alias = verify_shifted_match(*a, *b, limits)
    assert alias is not None and alias.shift_px[0] - 1 in (38, -38)  # one pitch off: the bridge out of sight
    assert blind_spot_conflict(*a, *b, alias.shift_px, limits) == (1, 4)


# -- descriptors, refinement, coarse ranking, hashes -----------------------------------------------

DESCRIPTORS = DescriptorParams(
    orb_features=800,
    ratio_test=0.8,
    ransac_threshold_px=2.0,
    min_inliers=10,
    max_scale_error=0.02,
    max_rotation_deg=1.0,
    min_overlap_fraction=0.35,
    mask_mismatch_max_px=8,
    max_points=40,
)


def test_descriptors_recover_a_large_shift_and_refuse_a_blank_mask() -> None:
    canvas = random_layout(6)
    mask_a, mask_b = u8(window(canvas)), u8(window(canvas, (-40, 30)))
    found = register_by_descriptors(mask_a, mask_b, DESCRIPTORS)
    assert found.shift_px == (-40, 30) and found.details["mask_mismatch_px"] == 0
    assert found.details["inliers"] >= 10 and len(found.details["points_result"]) <= 40
    blank = register_by_descriptors(mask_a, np.zeros_like(mask_a), DESCRIPTORS)
    assert blank.shift_px is None and blank.details["inliers"] == 0


def test_refine_shift_finds_the_true_shift_near_an_estimate() -> None:
    canvas = random_layout(7)
    mask_a, mask_b = u8(window(canvas)), u8(window(canvas, (15, -6)))
    assert refine_shift(mask_a, mask_b, (14, -4)) == (15, -6)
    assert refine_shift(mask_a, mask_b, (15, -6), radius_px=0) == (15, -6)


def test_coarse_ncc_ranks_the_same_layout_above_another() -> None:
    canvas = random_layout(8)
    query = downsample_mask(window(canvas, (20, -12)), 4)
    assert query.shape == (64, 64) and query.dtype == np.float32 and query.flags["C_CONTIGUOUS"]
    same = coarse_ncc(downsample_mask(window(canvas), 4), query, 56, 4)
    other = coarse_ncc(downsample_mask(window(random_layout(9)), 4), query, 56, 4)
    assert same > 0.9 > other
    assert coarse_ncc(query[:32], query, 56, 4) == -1.0
    flat = np.zeros((64, 64), np.float32)
    assert coarse_ncc(flat, flat, 56, 4) == 1.0 and coarse_ncc(query, flat, 56, 4) == 0.0


def _rail_row(pitch_px: int, offset_px: int, size: int = 256) -> np.ndarray:
    """Contacts 16 px wide along the top and bottom borders, ``pitch_px`` apart: a row's rails."""
    mask = np.zeros((size, size), dtype=np.uint8)
    for x in range(offset_px % pitch_px, size, pitch_px):
        mask[2:18, x:x + 16] = 255
        mask[size - 18:size - 2, x:x + 16] = 255
    return mask


def test_coarse_overlap_mismatch_ranks_a_moved_window_first_where_the_centre_is_empty() -> None:
    canvas = random_layout(12)
    query = coarse_overlap_sums(u8(window(canvas, (13, -9))), 32)
    assert query.max_shift_px == 8 and query.shape == (64, 64)
    same = coarse_overlap_mismatch(coarse_overlap_sums(u8(window(canvas)), 32), query)
    other = coarse_overlap_mismatch(coarse_overlap_sums(u8(window(random_layout(13))), 32), query)
    assert same < 0.1 < 0.3 < other
    # rows of contacts along the rails only (the central template is empty): the same row moved 6 px
    # against rows of another pitch
    rails = coarse_overlap_sums(_rail_row(42, 0), 32)
    moved = coarse_overlap_mismatch(coarse_overlap_sums(_rail_row(42, 6), 32), rails)
    denser = coarse_overlap_mismatch(coarse_overlap_sums(_rail_row(34, 0), 32), rails)
    assert moved < 0.1 < denser
    blank = coarse_overlap_sums(np.zeros((256, 256), np.uint8), 32)
    assert coarse_overlap_mismatch(blank, blank) == 0.0 and coarse_overlap_mismatch(rails, blank) == 1.0
    assert coarse_overlap_mismatch(coarse_overlap_sums(_rail_row(42, 0, 128), 32), rails) == 1.0


def test_coarse_overlap_mismatches_of_a_batch_equal_the_overlap_scores_of_each_pair() -> None:
    """The batched FFT correlation against the direct definition (windows.overlap_scores on the
    coarse masks), for windows of one layout moved, other layouts, rails, a blank mask and one of
    another shape (1, unscored)."""
    canvas = random_layout(14)
    masks = [u8(window(canvas, shift)) for shift in [(0, 0), (13, -9), (-30, 22), (5, 31)]]
    masks += [u8(window(random_layout(15))), _rail_row(42, 6), _rail_row(34, 0),
              np.zeros((256, 256), np.uint8)]
    query_mask = u8(window(canvas, (7, 3)))
    query = coarse_overlap_sums(query_mask, 32)
    coarse = [coarse_overlap_sums(m, 32) for m in masks] + [coarse_overlap_sums(_rail_row(42, 0, 128), 32)]
    batched = coarse_overlap_mismatches(coarse, query)

    def direct(mask: np.ndarray) -> float:
        small = [np.clip(np.rint(downsample_mask(m.astype(np.float32) / 255.0, 4) * 255.0), 0, 255)
                 .astype(np.uint8) for m in (mask, query_mask)]
        totals = [float(m.astype(np.float64).sum()) / 255.0 for m in small]
        if min(totals) <= 0.0:
            return 0.0 if max(totals) <= 0.0 else 1.0
        scores = overlap_scores(small[0], small[1], 8)
        drawn = scores["drawn_a"] + scores["drawn_b"]
        compared = np.maximum(scores["drawn_a"] / totals[0], scores["drawn_b"] / totals[1]) >= 0.25
        relative = np.where(compared & (drawn > 0), scores["ssd"] / np.maximum(drawn, 1e-9), 1.0)
        return float(min(1.0, relative.min()))

    expected = [direct(m) for m in masks] + [1.0]
    assert np.allclose(batched, expected, atol=1e-5)
    assert [coarse_overlap_mismatch(c, query) for c in coarse] == pytest.approx(list(batched), abs=1e-9)
    assert batched[0] < 0.1 and batched[-2] == 1.0 and len(coarse_overlap_mismatches([], query)) == 0


def _scattered_squares(seed: int, side_px: int, count: int) -> np.ndarray:
    """A float [0, 1] mask of ``count`` squares ``side_px`` wide placed at random."""
    rng = np.random.default_rng(seed)
    size_px = WINDOW_PX + 2 * PAD_PX
    canvas = np.zeros((size_px, size_px), np.float32)
    for y, x in rng.integers(0, size_px - side_px, size=(count, 2)):
        canvas[y : y + side_px, x : x + side_px] = 1.0
    return canvas


@pytest.mark.parametrize("canvas", [random_layout(14), _scattered_squares(2, 4, 300),
                                    _scattered_squares(3, 16, 60)],
                         ids=["rectangles", "contacts-4px", "contacts-16px"])
def test_a_window_moved_by_whole_pixels_scores_near_its_own_phase_cost_another_layout_far_above(
        canvas: np.ndarray) -> None:
    """Windows of one layout moved by every phase of a 4 px block (and farther) score within the cost the
    query measures on itself at half a block (twice it, plus the dedupe gate's margin); another layout
    scores above that gate. Contacts 4 px wide cost most, and their gate is the widest."""
    query = u8(window(canvas))
    phase = coarse_phase_mismatch(query, 32)
    moved = [u8(window(canvas, (dx + ox, dy + oy))) for dx in range(4) for dy in range(4)
             for ox, oy in ((0, 0), (9, -13), (-15, 16))]
    own = coarse_overlap_sums(query, 32)
    scores = coarse_overlap_mismatches([coarse_overlap_sums(m, 32) for m in moved], own)
    assert phase > 0.0 and scores.max() <= 2.0 * phase + 0.05
    other = coarse_overlap_mismatch(coarse_overlap_sums(u8(window(random_layout(15))), 32), own)
    assert other > 2.0 * phase + 0.15
    assert coarse_phase_mismatch(query, 32, own=own) == phase


def test_coarse_overlap_mismatch_does_not_score_a_sliver_of_overlap() -> None:
    # moved 28 px, the two overlap on one contact each and nothing else: the rest of either lies in its
    # strip outside the overlap, so under a quarter of either mask's drawn area would be compared
    a = np.zeros((256, 256), np.uint8)
    b = np.zeros((256, 256), np.uint8)
    a[120:136, 240:256] = b[120:136, 212:228] = 255
    a[20:236, 0:24] = 255
    b[20:236, 232:256] = 255
    assert coarse_overlap_mismatch(coarse_overlap_sums(a, 32), coarse_overlap_sums(b, 32)) > 0.5


def test_hash_distances_of_identical_overlaps_are_zero() -> None:
    canvas = random_layout(10)
    mask, other = window(canvas), window(random_layout(11))
    assert mask_hash_bits(mask, mask.copy()) == 0 < mask_hash_bits(mask, other)
    assert print_hash_bits(printed(mask), printed(mask)) == 0 < print_hash_bits(printed(mask), printed(other))


# -- the topology-aware print check: what another dose or focus may change, and what it may not --------


def layout_print(grow: int = 0) -> np.ndarray:
    """Two lines, two contacts and a ring (a hole), every edge moved out by ``grow`` px (as defocus does)."""
    printed = np.zeros((128, 128), dtype=bool)
    for y0, y1, x0, x1 in (
        (10, 118, 16, 28),
        (10, 118, 52, 64),
        (20, 32, 84, 96),
        (50, 62, 84, 96),
        (80, 116, 76, 116),
    ):
        printed[y0 - grow : y1 + grow, x0 - grow : x1 + grow] = True
    printed[92 + grow : 104 - grow, 88 + grow : 104 - grow] = (
        False  # the ring's hole shrinks as the print grows
    )
    return printed


def judged(library: np.ndarray, result: np.ndarray, band: int) -> PrintJudgement:
    return judge_prints(library, result, tolerance_px=2, mismatch_max_px=40, edge_band_px=band)


def test_print_edges_moved_by_focus_are_accepted_only_within_the_edge_band() -> None:
    library, defocused = layout_print(), layout_print(grow=5)
    assert judged(library, defocused, 0).accepted is False  # 5 px strips: the older check alone refuses
    verdict = judged(library, defocused, 6)
    assert verdict.accepted and verdict.topology == "same" and verdict.mismatch_px == 0
    assert 5.0 <= verdict.edge_px <= 7.5  # 5 px along the edges, the diagonal at the corners
    moved_more = judged(library, layout_print(grow=5), 2)
    assert not moved_more.accepted and moved_more.topology == "same" and moved_more.mismatch_px > 40


@pytest.mark.parametrize(
    ("edit", "topology"),
    [
        ("bridge", "components"),
        ("missing_contact", "components"),
        ("sidelobe", "components"),
        ("pinched_off", "components"),
        ("hole_filled", "holes"),
    ],
)
def test_a_topology_change_in_the_print_is_refused_even_within_the_edge_band(
    edit: str, topology: str
) -> None:
    library, result = layout_print(), layout_print(grow=3)
    assert judged(library, result, 6).accepted
    if edit == "bridge":
        result[60:64, 30:52] = True  # the two lines joined by a 4 px neck
    elif edit == "missing_contact":
        result[17:35, 81:99] = False
    elif edit == "sidelobe":
        result[60:65, 38:43] = True  # a 5 x 5 blob between the lines: 25 px, within the older 40 px limit
    elif edit == "pinched_off":
        result[60:62, :40] = False  # the first line cut in two
    else:
        result[80:116, 76:116] = True
    verdict = judged(library, result, 6)
    assert not verdict.accepted and verdict.topology == topology
    if edit == "sidelobe":
        assert verdict.mismatch_px <= 40  # only the topology check refuses it


def test_a_feature_mostly_outside_the_overlap_is_left_out_of_the_topology() -> None:
    library, result = layout_print(), layout_print()
    library[60:64, :2] = True  # a line end just entering the window on one side only
    verdict = judge_prints(library, result, tolerance_px=2, mismatch_max_px=40, edge_band_px=4)
    assert verdict.accepted and verdict.topology == "same"


# -- marginal features: what may come and go between process conditions -----------------------------


def drawn_and_printed() -> tuple[np.ndarray, np.ndarray]:
    """A drawn mask (two lines, a 24 px contact, a 24 px island) and its print: the lines and the contact
    print near their drawn size, the island only as a 6 px speck (at the resolution limit)."""
    drawn = np.zeros((128, 128), dtype=bool)
    printed = np.zeros((128, 128), dtype=bool)
    for y0, y1, x0, x1 in ((10, 118, 16, 28), (10, 118, 52, 64), (20, 44, 84, 108)):
        drawn[y0:y1, x0:x1] = True
        printed[y0 + 1 : y1 - 1, x0 + 1 : x1 - 1] = True
    drawn[70:94, 84:108] = True  # the island
    printed[79:85, 93:99] = True
    return drawn, printed


def marginal_judged(library: np.ndarray, result: np.ndarray, drawn: np.ndarray | None) -> PrintJudgement:
    return judge_prints(
        library,
        result,
        tolerance_px=2,
        mismatch_max_px=40,
        edge_band_px=4,
        drawn=drawn,
        marginal_width_fraction=0.5,
    )


def test_a_marginal_feature_may_vanish_or_appear_but_a_printing_one_may_not() -> None:
    drawn, library = drawn_and_printed()
    result = library.copy()
    result[79:85, 93:99] = False  # the speck does not print at the other focus
    assert judged(library, result, 4).topology == "components"
    assert not marginal_judged(library, result, None).accepted  # no drawn mask: nothing is forgiven
    verdict = marginal_judged(library, result, drawn)
    assert verdict.accepted and verdict.topology == "marginal" and verdict.marginal == (1, 0)
    assert verdict.details()["print_marginal_vanished"] == 1
    appeared = marginal_judged(result, library, drawn)  # the other way round: the speck appears
    assert appeared.accepted and appeared.marginal == (0, 1)
    contact_gone = library.copy()
    contact_gone[21:43, 85:107] = False  # the contact printed near its drawn size: a hotspot
    assert not marginal_judged(library, contact_gone, drawn).accepted


@pytest.mark.parametrize("edit", ["sidelobe", "bridge", "pinched_off", "large_speck"])
def test_marginal_forgiveness_never_covers_a_sidelobe_a_bridge_or_a_pinch(edit: str) -> None:
    drawn, library = drawn_and_printed()
    result = library.copy()
    if edit == "sidelobe":
        result[60:65, 38:43] = True  # a blob in free space, on no drawn feature
    elif edit == "bridge":
        result[60:64, 27:54] = True
    elif edit == "pinched_off":
        result[60:62, 16:28] = False
    else:  # the island prints at 16 px of its 24: no longer at the resolution limit, so its loss counts
        library[74:90, 88:104] = True
        result[79:85, 93:99] = False
    verdict = marginal_judged(library, result, drawn)
    assert not verdict.accepted and verdict.topology == "components" and verdict.marginal == (0, 0)
