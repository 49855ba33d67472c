"""The projection print model: a scanner's aerial image as the approximate print's basis."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_registration import PAD_PX, SIZE_PX, homography, manhattan_mask, max_corner_error

from shared.registration import Aligner, AlignSettings
from shared.registration.projection import cutoff_from_sigma, projection_aerial, projection_basis

CUTOFF = cutoff_from_sigma(7.0)


def test_clear_and_dark_fields() -> None:
    assert np.allclose(projection_aerial(np.ones((96, 96), np.float32), CUTOFF), 1.0, atol=1e-3)
    assert np.allclose(projection_aerial(np.zeros((96, 96), np.float32), CUTOFF), 0.0, atol=1e-6)


@pytest.mark.parametrize("defocus_rad", [0.0, 1.5])
def test_image_follows_the_mask_without_offset(defocus_rad: float) -> None:
    """Mirroring or shifting the mask mirrors or shifts its image: no half-pixel bias that
    would show as a shift or scale of the registration."""
    mask = np.zeros((128, 128), np.float32)
    mask[32:-32, 32:-32] = manhattan_mask(3, 64)  # dark around, so a shift moves nothing out
    image = projection_aerial(mask, CUTOFF, defocus_rad)
    assert image.shape == mask.shape and image.dtype == np.float32
    mirrored = projection_aerial(np.ascontiguousarray(mask[:, ::-1]), CUTOFF, defocus_rad)
    assert np.abs(mirrored[:, ::-1] - image).max() < 1e-4
    moved = projection_aerial(np.roll(mask, 5, axis=0), CUTOFF, defocus_rad)
    assert np.abs(np.roll(image, 5, axis=0) - moved)[24:-24, 24:-24].max() < 5e-3


def test_line_ends_fall_short_of_a_gaussians() -> None:
    """A partially coherent image pulls a line's end back farther than a Gaussian of the
    same width does, relative to its width: what the projection model is for."""
    mask = np.zeros((160, 160), np.float32)
    mask[72:88, 20:100] = 1.0  # a 16 px line ending at x = 100
    image = projection_aerial(mask, CUTOFF)
    gauss = cv2.GaussianBlur(mask, (0, 0), 7.0)

    def pull_back(aerial: np.ndarray) -> float:
        threshold = float(aerial[80, 60]) * 0.5  # half the line's centre intensity
        return 100.0 - float(np.nonzero(aerial[80] >= threshold)[0].max())

    assert pull_back(image) > pull_back(gauss) + 1.0


def test_basis_has_a_defocused_term_when_the_shape_is_fitted() -> None:
    mask = manhattan_mask(4, 96)
    assert len(projection_basis(mask, 7.0, True)) == 2
    assert len(projection_basis(mask, 7.0, False)) == 1


def projection_pair(seed: int, truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A mask window and a print of it imaged defocused, thresholded, warped by ``truth``."""
    big_mask = manhattan_mask(seed, SIZE_PX + 2 * PAD_PX)
    aerial = projection_aerial(big_mask, CUTOFF * 0.97, defocus_rad=0.8)
    big_print = (1.0 / (1.0 + np.exp(-(aerial - 0.3) / 0.02))).astype(np.float32)
    to_big = np.eye(3)
    to_big[:2, 2] = PAD_PX
    printed = cv2.warpPerspective(big_print, to_big @ truth, (SIZE_PX, SIZE_PX),
                                  flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    return np.ascontiguousarray(big_mask[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX]), np.clip(printed, 0.0, 1.0)


def test_projection_model_fits_projection_prints_better() -> None:
    """Prints imaged through a pupil (defocused, a slightly different cutoff than the model's),
    rotated and scaled: the projection model answers every window within a pixel, the
    Gaussian model misses some (it misreads the line ends' pull-back as a scale)."""
    truth = homography((-9.0, 6.0), 1.5, 1.015)
    errors: dict[str, list[float]] = {"gaussian": [], "projection": []}
    for seed in range(11, 16):
        mask, printed = projection_pair(seed, truth)
        for model, found in errors.items():
            reg = Aligner(AlignSettings(print_model=model)).register(mask, printed)
            assert reg.ok, reg.reason
            found.append(max_corner_error(reg, truth))
    assert max(errors["projection"]) < 1.0
    assert np.median(errors["projection"]) < np.median(errors["gaussian"])
    assert sum(e > 1.0 for e in errors["gaussian"]) >= 2


def test_shifts_with_the_projection_model() -> None:
    truth = homography((6.0, -11.5))
    mask, printed = projection_pair(12, truth)
    reg = Aligner(AlignSettings(print_model="projection")).register(mask, printed)
    assert reg.ok, reg.reason
    assert max_corner_error(reg, truth) < 0.3
