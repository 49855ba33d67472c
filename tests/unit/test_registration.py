"""Known-answer tests of print-to-mask registration on generated images with known warps."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from shared.contracts import Transform
from shared.errors import ContractError, ImageError
from shared.registration import (
    Aligner,
    AlignSettings,
    Registration,
    approximate_print,
    corner_errors_px,
    orb_ransac_baseline,
    rotation_scale_shift,
)

SIZE_PX = 160
PAD_PX = 48


def manhattan_mask(seed: int, size_px: int) -> np.ndarray:
    """Random non-periodic rectangles of printable and sub-resolution sizes."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((size_px, size_px), np.float32)
    for _ in range(size_px * size_px // 900):
        x, y = (int(v) for v in rng.integers(0, size_px, 2))
        w, h = (int(v) for v in rng.integers(6, 40, 2))
        if rng.random() < 0.4:  # a line
            w, h = (int(rng.integers(8, 14)), int(rng.integers(40, 90)))
            if rng.random() < 0.5:
                w, h = h, w
        mask[y : y + h, x : x + w] = 1.0
    return mask


def resist_print(mask: np.ndarray) -> np.ndarray:
    """A stand-in print: not the aligner's own approximation (other blur, other threshold)."""
    aerial = cv2.GaussianBlur(mask, (0, 0), 6.0)
    return (1.0 / (1.0 + np.exp(-(aerial - 0.42) / 0.02))).astype(np.float32)


def homography(shift: tuple[float, float], angle_deg: float = 0.0, scale: float = 1.0) -> np.ndarray:
    return rotation_scale_shift(SIZE_PX, shift, angle_deg, scale)


def make_pair(seed: int, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mask window and a print whose window is warped by ``truth`` (print -> mask).

    The print is simulated on a larger window and resampled, so its borders hold
    real pattern, as when a farm's print window is offset from the mask's.
    """
    big_mask = manhattan_mask(seed, SIZE_PX + 2 * PAD_PX)
    big_print = resist_print(big_mask)
    to_big = np.eye(3)
    to_big[:2, 2] = PAD_PX
    printed = cv2.warpPerspective(big_print, to_big @ truth, (SIZE_PX, SIZE_PX),
                                  flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    mask = np.ascontiguousarray(big_mask[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX])
    return mask, np.clip(printed, 0.0, 1.0).astype(np.float32)


@pytest.fixture(scope="module")
def aligner() -> Aligner:
    """The stand-in prints here are a Gaussian blur thresholded: the Gaussian print model."""
    return Aligner(AlignSettings(optics_sigma_px=6.5, print_model="gaussian"))


def max_corner_error(reg: Registration, truth: np.ndarray) -> float:
    return float(corner_errors_px(reg.matrix, truth, (SIZE_PX, SIZE_PX)).max())


@pytest.mark.parametrize(("seed", "shift"), [(1, (7.0, -5.0)), (2, (-23.0, 18.0)), (3, (3.4, -2.7)),
                                             (4, (-0.6, 12.25)), (5, (31.5, -30.0))])
def test_known_shifts_including_subpixel(aligner: Aligner, seed: int, shift: tuple[float, float]) -> None:
    truth = homography(shift)
    mask, printed = make_pair(seed, truth)
    reg = aligner.register(mask, printed)
    assert reg.ok, reg.reason
    assert reg.reason == ""
    assert reg.method.startswith("ncc")
    assert 0.9 <= reg.quality <= 1.0
    assert max_corner_error(reg, truth) < 0.25


def test_small_rotation_and_scale(aligner: Aligner) -> None:
    truth = homography((-9.0, 6.0), angle_deg=1.5, scale=1.015)
    mask, printed = make_pair(11, truth)
    reg = aligner.register(mask, printed)
    assert reg.ok, reg.reason
    assert reg.method == "ncc+ecc"
    assert max_corner_error(reg, truth) < 1.0
    # A pure shift cannot explain it: the translation-only result is far off at the corners.
    shift_only = Aligner(AlignSettings(optics_sigma_px=6.5, print_model="gaussian", use_ecc=False)).register(
        mask, printed)
    assert max_corner_error(shift_only, truth) > 2.0


def test_opencv_affine_ecc_option_runs(aligner: Aligner) -> None:
    truth = homography((4.0, 4.0), angle_deg=-1.0)
    mask, printed = make_pair(12, truth)
    reg = Aligner(AlignSettings(optics_sigma_px=6.5, ecc_motion="affine")).register(mask, printed)
    assert reg.ok, reg.reason
    assert max_corner_error(reg, truth) < 2.0


def test_warp_brings_the_print_onto_the_mask_frame(aligner: Aligner) -> None:
    truth = homography((12.0, -8.0))
    mask, printed = make_pair(21, truth)
    reg = aligner.register(mask, printed)
    warped = aligner.warp(printed, reg)
    assert warped.dtype == np.float32 and warped.shape == mask.shape
    assert float(warped.min()) >= 0.0 and float(warped.max()) <= 1.0
    expected = resist_print(mask)  # the print of the mask window itself
    inner = (slice(24, -24), slice(24, -24))
    assert float(np.abs(warped[inner] - expected[inner]).mean()) < 0.02


def test_blank_print_and_blank_mask_are_refused(aligner: Aligner) -> None:
    mask, printed = make_pair(31, homography((0.0, 0.0)))
    blank = np.zeros_like(mask)
    reg = aligner.register(mask, blank)
    assert not reg.ok and "blank print" in reg.reason
    assert np.allclose(reg.matrix, np.eye(3))
    reg = aligner.register(blank, printed)
    assert not reg.ok and "blank mask" in reg.reason


def test_unrelated_print_fails_the_quality_gate(aligner: Aligner) -> None:
    mask, _ = make_pair(41, homography((0.0, 0.0)))
    _, other_print = make_pair(42, homography((5.0, 5.0)))
    reg = aligner.register(mask, other_print)
    assert not reg.ok
    assert reg.reason


def test_grating_is_ambiguous() -> None:
    mask = np.zeros((SIZE_PX, SIZE_PX), np.float32)
    for x in range(0, SIZE_PX, 24):
        mask[:, x : x + 12] = 1.0
    printed = np.roll(resist_print(mask), 5, axis=1)
    reg = Aligner().register(mask, printed)
    assert not reg.ok
    assert "ambiguous" in reg.reason


def test_mismatched_shapes_raise_image_error(aligner: Aligner) -> None:
    mask = np.zeros((64, 64), np.float32)
    with pytest.raises(ImageError) as excinfo:
        aligner.register(mask, np.zeros((64, 65), np.float32))
    assert excinfo.value.reason == "image_shape_mismatch"
    with pytest.raises(ImageError):
        orb_ransac_baseline(mask, np.zeros((32, 64), np.float32))


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (np.zeros((4, 4, 3), np.float32), "image_rank"),
        (np.full((16, 16), np.nan, np.float32), "image_nonfinite"),
        (np.full((16, 16), 2.0, np.float32), "image_range"),
        (np.zeros((0, 16), np.float32), "image_empty"),
    ],
)
def test_invalid_arrays_raise_image_error(aligner: Aligner, bad: np.ndarray, reason: str) -> None:
    with pytest.raises(ImageError) as excinfo:
        aligner.register(bad, bad)
    assert excinfo.value.reason == reason


def test_tiny_images_are_refused_not_raised(aligner: Aligner) -> None:
    tiny = np.zeros((8, 8), np.float32)
    tiny[2:5, 2:6] = 1.0
    reg = aligner.register(tiny, tiny)
    assert not reg.ok and "smaller" in reg.reason
    small = manhattan_mask(51, 40)  # above the floor: runs end to end
    reg = aligner.register(small, resist_print(small))
    assert reg.matrix.shape == (3, 3)


def test_registration_converts_to_the_wire_transform(aligner: Aligner) -> None:
    mask, printed = make_pair(61, homography((2.0, -3.0)))
    reg = aligner.register(mask, printed)
    wire = reg.as_transform()
    assert isinstance(wire, Transform)
    assert np.allclose(wire.as_array(), reg.matrix)
    assert wire.method == reg.method and wire.quality == pytest.approx(reg.quality)


def test_orb_baseline_returns_a_registration() -> None:
    mask, printed = make_pair(71, homography((6.0, 6.0)))
    reg = orb_ransac_baseline(mask, printed)
    assert reg.method == "orb"
    assert reg.matrix.shape == (3, 3)
    assert not orb_ransac_baseline(mask, np.zeros_like(mask)).ok


def test_a_given_aerial_model_is_used() -> None:
    truth = homography((-6.0, 9.5), angle_deg=0.8)
    mask, printed = make_pair(82, truth)
    calls: list[tuple[int, int]] = []

    def aerial(m: np.ndarray) -> np.ndarray:
        calls.append(m.shape)
        return cv2.GaussianBlur(m, (0, 0), 6.0)  # the stand-in print's own optics

    reg = Aligner(aerial_model=aerial).register(mask, printed)
    assert calls == [mask.shape]
    assert reg.ok, reg.reason
    assert max_corner_error(reg, truth) < 0.5


def test_aerial_model_must_keep_the_shape() -> None:
    mask, printed = make_pair(81, homography((0.0, 0.0)))
    bad_model = Aligner(aerial_model=lambda m: m[:-1])
    with pytest.raises(ContractError):
        bad_model.register(mask, printed)


def test_approximate_print_matches_the_printed_area() -> None:
    mask = manhattan_mask(91, 128)
    approx = approximate_print(mask, printed_fraction=0.2, optics_sigma_px=7.0)
    assert approx.dtype == np.float32 and approx.shape == mask.shape
    assert float((approx > 0.5).mean()) == pytest.approx(0.2, abs=0.01)


def test_settings_are_frozen_and_checked() -> None:
    settings = AlignSettings()
    with pytest.raises(ValidationError):
        settings.quality_floor = 0.1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        AlignSettings(quality_floor=1.5)
    with pytest.raises(ValidationError):
        AlignSettings(fallback="surf")


def test_a_peak_beyond_the_range_lends_its_flank_to_no_answer() -> None:
    """Cells climbing to a maximum outside the range, and near it, are its flank; a ridge
    rising out of the range stays a competitor farther than the radius from its end."""
    from shared.registration.correlation import climbed_peaks, outside_flanks

    lag = np.arange(-40, 41, dtype=np.float64)
    yy, xx = np.meshgrid(lag, lag, indexing="ij")
    inside = (np.abs(yy) <= 32) & (np.abs(xx) <= 32)
    bumps = np.exp(-((xx - 5) ** 2 + yy**2) / 50.0) + 0.99 * np.exp(-((xx + 36) ** 2 + yy**2) / 50.0)
    peaks = climbed_peaks(bumps)
    assert np.unravel_index(int(peaks[40, 40 + 2]), bumps.shape) == (40, 45)  # climbs to its own peak
    assert np.unravel_index(int(peaks[40, 40 - 30]), bumps.shape) == (40, 4)  # to the one beyond -32
    flank = outside_flanks(bumps, inside, 16.0)
    assert flank[40, 40 - 30] and flank[40, 40 - 28] and not flank[40, 40 + 5]
    ridge = np.exp(-(yy**2) / 8.0) * (1.0 + 0.001 * xx)  # lines across the clip: rising to x = +40
    ridge_flank = outside_flanks(ridge, inside, 16.0)
    assert ridge_flank[40, 40 + 30] and not ridge_flank[40, 40]  # 40 px from the ridge's end


def test_whole_overlap_correlation_skips_the_flank_of_a_repeat_beyond_the_range() -> None:
    """Contacts one pitch (44 px) apart along both edges, shifted 9.5 px: their next repeat lies
    at -34.5 px, just beyond a 32 px search. Before, the edge of the map there outscored the
    true peak; now the repeat is seen as a peak of its own, out of range, and 10 px is unique."""
    from shared.registration.correlation import overlap_ncc_translation

    big = np.zeros((SIZE_PX + 2 * PAD_PX, SIZE_PX + 2 * PAD_PX), np.float32)
    for x in range(3, big.shape[1] - 12, 44):
        big[PAD_PX - 5 : PAD_PX + 5, x : x + 10] = 1.0
        big[PAD_PX + SIZE_PX - 5 : PAD_PX + SIZE_PX + 5, x : x + 10] = 1.0
    smooth = cv2.GaussianBlur(big, (0, 0), 4.0)
    reference = smooth[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX]

    def moved(dx: float) -> np.ndarray:  # moving(p) = reference(p + (dx, 0)), resampled
        warp = np.array([[1.0, 0.0, PAD_PX + dx], [0.0, 1.0, PAD_PX]], np.float32)
        return np.asarray(cv2.warpAffine(smooth, warp, (SIZE_PX, SIZE_PX),
                                         flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP), np.float32)

    for dx in (9.5, -9.5):
        found = overlap_ncc_translation(reference, moved(dx), 32, 16.0)
        assert not found.at_limit and found.second_peak < 0.97 * found.peak
        assert abs(found.dx_px - dx) < 0.3 and abs(found.dy_px) < 0.3
    tied = overlap_ncc_translation(reference, moved(14.0), 32, 16.0)  # its repeat at -30 px: in range
    assert tied.second_peak >= 0.97 * tied.peak


def test_whole_overlap_correlation_uses_the_border() -> None:
    """Pattern only within the border that the central-crop correlation leaves out: the
    whole-overlap correlation still finds the shift, and agrees with it where both see."""
    from shared.registration.correlation import ncc_translation, overlap_ncc_translation

    rng = np.random.default_rng(7)
    big = np.zeros((SIZE_PX + 2 * PAD_PX, SIZE_PX + 2 * PAD_PX), np.float32)
    for x in rng.integers(0, big.shape[1] - 12, 12):  # blobs in two bands, along the window's top and bottom
        big[PAD_PX - 4 : PAD_PX + 8, x : x + 10] = 1.0
    for x in rng.integers(0, big.shape[1] - 12, 12):
        big[PAD_PX + SIZE_PX - 8 : PAD_PX + SIZE_PX + 4, x : x + 10] = 1.0
    smooth = cv2.GaussianBlur(big, (0, 0), 4.0)
    reference = smooth[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX]
    # moving(p) = reference(p + (6, -3))
    moving = smooth[PAD_PX - 3 : PAD_PX - 3 + SIZE_PX, PAD_PX + 6 : PAD_PX + 6 + SIZE_PX]
    found = overlap_ncc_translation(reference, moving, 24, 16.0)
    assert not found.at_limit
    assert abs(found.dx_px - 6.0) < 0.2 and abs(found.dy_px + 3.0) < 0.2
    interior_only = ncc_translation(reference, moving, 24, 16.0)
    assert interior_only.peak < 0.9 or abs(interior_only.dx_px - 6.0) > 1.0
