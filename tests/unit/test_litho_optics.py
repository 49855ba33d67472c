"""Known-answer tests of the imaging physics: SOCS against Abbe, clear field, resolution, focus, dose."""

from __future__ import annotations

import numpy as np
import pytest

from shared.errors import ConfigError, ContractError
from toolkit.litho import (
    LithoSimulator,
    OpticsSettings,
    ResistSettings,
    abbe_aerial,
    compute_socs_kernels,
    rasterize,
)
from toolkit.litho.optics import source_points


def _random_manhattan_mask(seed: int, size_px: int, nm_per_px: float) -> np.ndarray:
    rng = np.random.default_rng(seed)
    span = size_px * nm_per_px
    rects = []
    for _ in range(25):
        x, y = rng.uniform(0, span - 100, 2)
        w, h = rng.uniform(40, 300, 2)
        rects.append((x, y, x + w, y + h))
    return rasterize(np.array(rects), (0.0, 0.0), size_px, nm_per_px)


@pytest.mark.parametrize(
    ("optics", "size_px", "nm_per_px", "defocus_nm"),
    [
        (OpticsSettings(), 256, 4.0, 0.0),
        (OpticsSettings(source="conventional", sigma_outer=0.5), 128, 8.0, 0.0),
        (OpticsSettings(source="quasar"), 128, 8.0, 60.0),
        (OpticsSettings(source="dipole", dipole_axis="y"), 128, 8.0, 0.0),
    ],
)
def test_socs_matches_direct_abbe_summation(
    optics: OpticsSettings, size_px: int, nm_per_px: float, defocus_nm: float
) -> None:
    mask = _random_manhattan_mask(7, size_px, nm_per_px)
    sim = LithoSimulator(size_px, nm_per_px, optics=optics)
    socs = sim.aerial(mask, defocus_nm=defocus_nm)
    abbe = abbe_aerial(mask, nm_per_px, optics, defocus_nm=defocus_nm)
    assert socs.dtype == np.float32 and socs.shape == mask.shape
    # Within 1 % of the clear-field intensity (which is 1) everywhere.
    assert float(np.abs(socs - abbe).max()) < 0.01
    assert float(abbe.max()) > 0.3  # the mask really images something


def test_clear_field_images_to_one() -> None:
    sim = LithoSimulator(128, 8.0)
    aerial = sim.aerial(np.ones((128, 128), dtype=np.float32))
    np.testing.assert_allclose(aerial, 1.0, atol=1e-5)
    assert float(sim.printed(np.ones((128, 128), dtype=np.float32)).min()) == 1.0
    np.testing.assert_allclose(abbe_aerial(np.ones((64, 64)), 16.0, OpticsSettings()), 1.0, atol=1e-9)


def test_dark_field_images_to_zero() -> None:
    sim = LithoSimulator(128, 8.0)
    assert float(np.abs(sim.aerial(np.zeros((128, 128), dtype=np.float32))).max()) < 1e-9


def test_feature_far_below_resolution_does_not_print() -> None:
    sim = LithoSimulator()
    mask = rasterize(np.array([[500.0, 500.0, 510.0, 510.0]]), (0.0, 0.0), 256, 4.0)
    assert mask.sum() == pytest.approx(100.0 / 16.0)  # the 10 nm square is on the mask
    assert float(sim.aerial(mask).max()) < 0.01
    assert float(sim.printed(mask, dose=1.1).max()) == 0.0


def test_resolved_contact_prints_as_round_blob() -> None:
    sim = LithoSimulator()
    mask = rasterize(np.array([[460.0, 460.0, 570.0, 570.0]]), (0.0, 0.0), 256, 4.0)
    printed = sim.printed(mask)
    rows = np.flatnonzero(printed.max(axis=1) > 0.5)
    cols = np.flatnonzero(printed.max(axis=0) > 0.5)
    assert 10 <= len(rows) <= 30 and abs(len(rows) - len(cols)) <= 1
    # Round, not square: the bounding-box corners stay empty.
    assert printed[rows[0], cols[0]] < 0.5 and printed[rows[-1], cols[-1]] < 0.5


def _grating_mask(pitch_nm: float, width_nm: float) -> np.ndarray:
    xs = np.arange(0.0, 1024.0, pitch_nm)
    return rasterize(np.array([(x, 0.0, x + width_nm, 1024.0) for x in xs]), (0.0, 0.0), 256, 4.0)


def test_defocus_lowers_contrast() -> None:
    sim = LithoSimulator()
    mask = _grating_mask(128.0, 64.0)

    def contrast(image: np.ndarray) -> float:
        row = image[128]
        return float((row.max() - row.min()) / (row.max() + row.min()))

    focused = contrast(sim.aerial(mask))
    blurred = contrast(sim.aerial(mask, defocus_nm=100.0))
    assert focused > 0.5
    assert blurred < focused - 0.05


def test_dose_and_threshold_move_the_printed_width() -> None:
    sim = LithoSimulator()
    mask = _grating_mask(256.0, 128.0)
    nominal = float(sim.printed(mask).sum())
    assert float(sim.printed(mask, dose=1.2).sum()) > nominal
    assert float(sim.printed(mask, dose=0.85).sum()) < nominal
    high = LithoSimulator(resist=ResistSettings(threshold=0.4))
    assert float(high.printed(mask).sum()) < nominal
    # Nominal conditions print the 128 nm line near size (within 20 nm).
    lines_in_clip = 4  # 1024 nm / 256 nm pitch
    width_nm = float(sim.printed(mask)[128].sum()) * 4.0 / lines_in_clip
    assert abs(width_nm - 128.0) < 20.0


def test_print_is_soft_edged_in_unit_range() -> None:
    sim = LithoSimulator()
    printed = sim.printed(_grating_mask(200.0, 90.0))
    assert printed.dtype == np.float32
    assert float(printed.min()) >= 0.0 and float(printed.max()) <= 1.0
    partial = (printed > 0.02) & (printed < 0.98)
    assert 0 < int(partial.sum()) < printed.size // 10  # anti-aliased edges, not a blur


def test_kernels_are_cached_and_ordered() -> None:
    optics = OpticsSettings()
    first = compute_socs_kernels(optics, 1024.0, 0.0)
    assert compute_socs_kernels(optics, 1024.0, 0.0) is first
    assert first.kernels.shape == (optics.n_kernels, 2 * first.half_width + 1, 2 * first.half_width + 1)
    assert np.all(np.diff(first.weights) <= 1e-12)


def test_source_shapes() -> None:
    annular, weights = source_points(OpticsSettings())
    radius = np.hypot(annular[:, 0], annular[:, 1])
    assert radius.min() >= 0.6 - 1e-9 and radius.max() <= 0.8 + 1e-9
    assert weights.sum() == pytest.approx(1.0)
    dipole, _ = source_points(OpticsSettings(source="dipole"))
    assert np.all(np.abs(dipole[:, 0]) > np.abs(dipole[:, 1]))
    quasar, _ = source_points(OpticsSettings(source="quasar"))
    assert np.all(np.abs(quasar[:, 0]) > 0.2) and np.all(np.abs(quasar[:, 1]) > 0.2)
    with pytest.raises(ValueError):
        OpticsSettings(sigma_inner=0.9, sigma_outer=0.8)


def test_contract_errors() -> None:
    sim = LithoSimulator(128, 8.0)
    with pytest.raises(ContractError):
        sim.aerial(np.zeros((64, 32), dtype=np.float32))
    with pytest.raises(ContractError):
        sim.aerial(np.full((128, 128), np.nan, dtype=np.float32))
    with pytest.raises(ConfigError):
        sim.printed(np.zeros((128, 128), dtype=np.float32), dose=0.0)
