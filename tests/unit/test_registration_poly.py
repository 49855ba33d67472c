"""The first pass's Huber-weighted polish on SKY130 poly-gate prints shifted without rotation or scale.

Two pure-shift pairs of the bench's real set (see ``tests/unit/data/README.md``): with plain
least squares the polish keeps a 0.5 % scale that the approximate print's misplaced line ends
want, just over 1 px at the corners. Weighted by Huber's rule (the default, at 3 robust
standard deviations of the residuals on the print's edges), those pixels buy less of it.
"""

from __future__ import annotations

import numpy as np
from registration_pairs import load_pair

from shared.registration import Aligner, AlignSettings, corner_errors_px
from shared.registration.refine import huber_weights, similarity_params


def answer(mask: np.ndarray, printed: np.ndarray, truth: np.ndarray, huber_k: float) -> tuple[float, float]:
    """(corner error in px, |scale change|) of the registration at ``polish_huber_k``."""
    reg = Aligner(AlignSettings(polish_huber_k=huber_k)).register(mask, printed)
    assert reg.ok, reg.reason
    assert reg.method == "ncc+ecc"
    error = float(corner_errors_px(reg.matrix, truth, mask.shape).max())
    return error, abs(float(similarity_params(np.asarray(reg.matrix), mask.shape)[2]))


def test_the_huber_polish_brings_a_poly_shift_within_a_pixel() -> None:
    """Gates shifted (20.6, -8.4) px: least squares answers a 0.49 % scale, 1.05 px off at the corners;
    the Huber polish a smaller one, within 1 px."""
    mask, printed, truth = load_pair("sky130_poly_gates_shift.npz")
    plain_error, plain_scale = answer(mask, printed, truth, 0.0)
    huber_error, huber_scale = answer(mask, printed, truth, 2.0)
    assert plain_error > 1.0
    assert huber_error < 0.95
    assert huber_scale < plain_scale


def test_the_huber_polish_shrinks_the_scale_of_h_shaped_gates() -> None:
    """H-shaped gates, whose bars' ends lie along x: the scale the polish keeps shrinks, and
    the answer moves closer to the truth."""
    mask, printed, truth = load_pair("sky130_poly_hbars_shift.npz")
    plain_error, plain_scale = answer(mask, printed, truth, 0.0)
    huber_error, huber_scale = answer(mask, printed, truth, 2.0)
    assert huber_scale < plain_scale
    assert huber_error < plain_error


def test_the_default_polish_is_huber_weighted_and_brings_the_gates_within_a_pixel() -> None:
    assert AlignSettings().polish_huber_k == 3.0
    mask, printed, truth = load_pair("sky130_poly_gates_shift.npz")
    default_error, default_scale = answer(mask, printed, truth, AlignSettings().polish_huber_k)
    plain_error, plain_scale = answer(mask, printed, truth, 0.0)
    assert plain_error > 1.0
    assert default_error < 0.97
    assert default_scale < plain_scale


def test_huber_weights_fall_beyond_k_robust_sigmas() -> None:
    residual = np.array([-1.0, -0.5, 0.0, 0.5, 1.0, 20.0])
    weights = huber_weights(residual, 2.0)
    sigma = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    assert np.all(weights[:5] == 1.0)
    assert weights[5] == 2.0 * sigma / 20.0
    assert np.all(huber_weights(np.zeros(4), 2.0) == 1.0)  # no spread: every sample counts fully


def test_the_huber_scale_is_measured_on_the_edges() -> None:
    # a flat print fits almost exactly over most samples: measured over all of them the scale is
    # tiny and every edge sample counts as an outlier; measured over the edges only the outlier does
    flat = np.tile([-1e-3, 1e-3], 50)
    edges = np.array([-1.0, -0.5, 0.5, 1.0] * 10 + [20.0])
    residual = np.concatenate([flat, edges])
    on_edges = np.concatenate([np.zeros(100, dtype=bool), np.ones(edges.size, dtype=bool)])
    assert np.all(huber_weights(residual, 2.0)[100:] < 1.0)
    weights = huber_weights(residual, 2.0, scale_from=on_edges)
    assert np.all(weights[:-1] == 1.0)
    assert weights[-1] < 0.2
    # too few edge samples to measure on: the scale comes from every sample
    few = np.zeros(residual.size, dtype=bool)
    few[-3:] = True
    assert np.array_equal(huber_weights(residual, 2.0, scale_from=few), huber_weights(residual, 2.0))
