"""Ambiguous peaks told apart by refinement: the wide inverter's gate fingers beside a NAND.

A SKY130 ``inv_12`` has twelve gate fingers at one pitch; the blurred interior that the
first pass compares scores the print one finger pitch away nearly as well as where it
belongs, so that peak used to be refused as ambiguous. Refined at each repeat, the true
one fits many times better (the fingers' ends, the NAND's gates beside them); a true
repeat (a row's rail contacts, see ``test_registration_real.py``) fits alike at each and
stays refused.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from shared.registration import Aligner, AlignSettings, corner_errors_px, rotation_scale_shift
from shared.registration.correlation import contending_peaks
from toolkit.litho import LithoSimulator
from toolkit.litho.cell_rows import SKY130_HD_DIR, LayerSpec, Placement, RowWindow, placed_layout, read_cell
from toolkit.litho.farm import context_pad_px, simulate_clip
from toolkit.litho.layout_import import dose_to_size

SIZE_PX, NM_PER_PX, SHRINK, PAD_PX = 256, 4.0, 0.37, 48
POLY = LayerSpec.parse("poly=66/20")


def gate_fingers_pair(truth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mask, print) of the poly window 204 nm into a row ``inv_12, nand2_2, nand3_2``, the print
    delivered through the print->mask warp ``truth`` (as ``bench/align_bench.py`` does)."""
    cells = [read_cell(SKY130_HD_DIR / f"sky130_fd_sc_hd__{name}.gds", [POLY], SHRINK)
             for name in ("inv_12", "nand2_2", "nand3_2")]
    placements, x = [], 0.0
    for cell in cells:
        placements.append(Placement(cell, x, 0.0, mirrored=False))
        x += cell.width_nm
    layout = placed_layout(placements, "poly", "poly")
    window = RowWindow(204.0, (cells[0].height_nm - SIZE_PX * NM_PER_PX) / 2.0, "inv_12", ())
    dose = dose_to_size(LithoSimulator(size_px=SIZE_PX, nm_per_px=NM_PER_PX), layout, [window], SIZE_PX,
                        context_pad_px(SIZE_PX, NM_PER_PX))
    big = SIZE_PX + 2 * PAD_PX
    origin = (window.x_nm - PAD_PX * NM_PER_PX, window.y_nm - PAD_PX * NM_PER_PX)
    big_mask, big_print = simulate_clip(LithoSimulator(size_px=big, nm_per_px=NM_PER_PX), layout, origin, big,
                                        context_pad_px(big, NM_PER_PX), dose)
    mask = np.ascontiguousarray(big_mask[PAD_PX:-PAD_PX, PAD_PX:-PAD_PX])
    to_big = np.eye(3)
    to_big[:2, 2] = PAD_PX
    printed = cv2.warpPerspective(big_print, to_big @ truth, (SIZE_PX, SIZE_PX),
                                  flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP)
    return mask, np.clip(printed, 0.0, 1.0).astype(np.float32)


def test_gate_fingers_one_pitch_apart_are_told_apart_by_refinement() -> None:
    truth = rotation_scale_shift(SIZE_PX, (-14.3, 22.6))
    mask, printed = gate_fingers_pair(truth)
    refused = Aligner(AlignSettings(repeat_misfit_ratio=0.0)).register(mask, printed)
    assert not refused.ok and "ambiguous" in refused.reason
    reg = Aligner(AlignSettings()).register(mask, printed)
    assert reg.ok, reg.reason
    assert float(corner_errors_px(reg.matrix, truth, mask.shape).max()) < 1.0


@pytest.mark.parametrize("shift", [(11.8, -2.2), (17.0, 5.0)])
def test_gate_fingers_that_fit_alike_at_two_repeats_stay_refused(shift: tuple[float, float]) -> None:
    """Moved otherwise, the refined repeats fit too alike (not twenty times apart): refused as
    ambiguous, nothing guessed."""
    mask, printed = gate_fingers_pair(rotation_scale_shift(SIZE_PX, shift))
    reg = Aligner(AlignSettings()).register(mask, printed)
    assert not reg.ok and "ambiguous" in reg.reason


def test_contending_peaks_are_the_local_maxima_near_the_peak_score() -> None:
    yy, xx = np.indices((41, 41))
    bump = lambda y, x, height: height * np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / 8.0)  # noqa: E731
    scores = bump(20, 10, 1.0) + bump(20, 32, 0.98) + bump(5, 5, 0.5)
    assert contending_peaks(scores, 0.97, 8.0, 4) == [(20, 10), (20, 32)]
    assert contending_peaks(scores, 0.97, 8.0, 1) is None  # more contenders than allowed


def test_a_ridge_has_no_contending_peak() -> None:
    """Lines crossing the clip score alike along their length: the far cells climb to the peak."""
    yy, xx = np.indices((41, 41))
    scores = np.exp(-((xx - 20) ** 2) / 8.0) * (1.0 - 0.0005 * np.abs(yy - 20))
    assert contending_peaks(scores, 0.97, 8.0, 4) is None
