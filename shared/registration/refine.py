"""Rotation and scale: ECC refinement of the correlation peak.

The default fits a similarity (shift, rotation, uniform scale) by Gauss-Newton on the
ECC criterion -- least squares with a free gain and offset, so only the pattern's
shape matters -- and adjusts the approximate print's threshold and PSF shape in the same
solve: where one Gaussian mispredicts the print (small isolated features, line ends) its
errors otherwise leak into the scale. The warp is parametrised about the image centre so
shift and rotation/scale do not trade off. OpenCV's
``findTransformECC`` (affine, six parameters) is available as an alternative; on
prints it is noisier because nothing ties its shear and anisotropic scale down.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import cv2
import numpy as np

MAX_SHIFT_STEP_PX = 2.0
MAX_LINEAR_STEP = 0.01
MODEL_SETTLED = 1e-3  # PSF-shape coefficients moving less than this have settled
#: the Huber scale is measured on the samples where the print's gradient reaches this share of its
#: largest: its edges (where flat print meets flat reference the residual is 0 and says nothing)
HUBER_EDGE_SHARE = 0.2
HUBER_MIN_EDGE_SAMPLES = 32


class Reference(Protocol):
    """A smooth mask-frame reference with ``n_params`` fittable parameters."""

    @property
    def n_params(self) -> int: ...

    def render(self, n_derivatives: int | None = None,
               stride: int = 1) -> tuple[np.ndarray, list[np.ndarray]]: ...

    def update(self, deltas: np.ndarray, trust: float = 1.0) -> None: ...

    def snapshot(self) -> tuple[float, np.ndarray, np.ndarray]: ...

    def restore(self, state: tuple[float, np.ndarray, np.ndarray]) -> None: ...

    def match_area(self, printed_fraction: float, region: np.ndarray) -> None: ...


@dataclass(frozen=True)
class Refined:
    """A refined print->mask homography and the correlation it reaches."""

    matrix: np.ndarray
    correlation: float
    iterations: int


def _centre(shape: tuple[int, int]) -> np.ndarray:
    h, w = shape
    return np.array([(w - 1) / 2.0, (h - 1) / 2.0])


def similarity_params(print_to_mask: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(tx, ty, a, b) of the mask->print warp x' = c + [[1+a, -b], [b, 1+a]] (x - c) + t."""
    centre = _centre(shape)
    warp = np.linalg.inv(print_to_mask)
    linear = warp[:2, :2]
    a = 0.5 * (linear[0, 0] + linear[1, 1]) - 1.0
    b = 0.5 * (linear[1, 0] - linear[0, 1])
    shift = linear @ centre + warp[:2, 2] - centre
    return np.array([shift[0], shift[1], a, b], dtype=np.float64)


def similarity_matrix(params: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The print->mask homography of similarity parameters (see ``similarity_params``)."""
    centre = _centre(shape)
    linear = np.array([[1.0 + params[2], -params[3]], [params[3], 1.0 + params[2]]])
    warp = np.eye(3)
    warp[:2, :2] = linear
    warp[:2, 2] = centre + params[:2] - linear @ centre
    return np.asarray(np.linalg.inv(warp), dtype=np.float64)


def _linear(params: np.ndarray) -> np.ndarray:
    """The mask->print linear part of (tx, ty, a, b[, d]): scale 1 + a (x: 1 + a + d,
    y: 1 + a - d), rotation b."""
    d = float(params[4]) if params.size > 4 else 0.0
    return np.array([[1.0 + params[2] + d, -params[3]], [params[3], 1.0 + params[2] - d]])


def linear_matrix(linear: np.ndarray, shift: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """The print->mask homography of a mask->print linear part about the centre and a shift."""
    centre = _centre(shape)
    warp = np.eye(3)
    warp[:2, :2] = linear
    warp[:2, 2] = centre + shift - linear @ centre
    return np.asarray(np.linalg.inv(warp), dtype=np.float64)


def weighted_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two equal-length samples (0 when either is flat)."""
    a = a.astype(np.float64) - float(a.mean())
    b = b.astype(np.float64) - float(b.mean())
    # Elementwise products, not np.dot: BLAS threads are a poor trade on a busy small CPU.
    denom = math.sqrt(float((a * a).sum()) * float((b * b).sum()))
    return float((a * b).sum() / denom) if denom > 0.0 else 0.0


def ecc_similarity(reference: Reference, moving: np.ndarray, initial: np.ndarray, inside: np.ndarray,
                   with_rotation_scale: bool, max_iterations: int, tolerance_px: float,
                   fit_reference: bool = True, stride: int = 2, stretch: bool = False,
                   huber_k: float = 0.0) -> Refined | None:
    """Gauss-Newton ECC fit of a similarity (or a pure shift) from ``initial``.

    ``moving`` is the smoothed print; ``inside`` marks the mask-frame pixels compared, of
    which every ``stride``-th row and column is used (the images are low-passed: at the
    default blur of 4 px a stride of 4 aliases under 1 % of the signal), the reference
    being rendered at that resolution.
    Unless ``fit_reference`` is false, the reference's own parameters are fitted too:
    its threshold from the start, its PSF shape once the geometry has settled (far from
    the answer the shape would absorb misfit that the geometry has to explain). With
    ``stretch`` the x and y scales are fitted apart (a diagnostic: a farm's window does not
    stretch). With ``huber_k`` > 0, the steps that fit the geometry alone (the reference
    held) weigh each sample by Huber's rule: a residual beyond ``huber_k`` robust standard
    deviations (1.4826 times the median absolute deviation of the residuals on the print's
    edges) counts linearly, not squared, so the few pixels the reference mispredicts most
    (line ends the approximate print pulls back too little or too far) cannot buy a scale.
    Returns ``None`` when there is no pattern to fit.
    """
    h, w = moving.shape
    centre = _centre((h, w))
    params = similarity_params(initial, (h, w))
    if not with_rotation_scale:
        params[2:] = 0.0
    stretch = stretch and with_rotation_scale
    params = np.append(params, 0.0)  # stretch: x scale 1 + a + d, y scale 1 + a - d
    grad_x = cv2.Sobel(moving, cv2.CV_32F, 1, 0, ksize=3, scale=0.125)
    grad_y = cv2.Sobel(moving, cv2.CV_32F, 0, 1, ksize=3, scale=0.125)
    stack = np.dstack([moving, grad_x, grad_y, np.ones_like(moving)])
    # Every stride-th row and column: the reference is then rendered at that resolution.
    rows = np.flatnonzero(inside.any(axis=1))
    cols = np.flatnonzero(inside.any(axis=0))
    rows, cols = rows[rows % stride == 0], cols[cols % stride == 0]
    if rows.size * cols.size < 64:
        return None
    # A rectangular grid, so the maps handed to cv2.remap stay 2-D (it limits each side to 32767).
    ys, xs = (g.ravel() for g in np.meshgrid(rows, cols, indexing="ij"))
    grid_shape = (rows.size, cols.size)
    x = (xs - centre[0]).astype(np.float32)
    y = (ys - centre[1]).astype(np.float32)
    radius = float(np.hypot(*centre))
    n_geo = (5 if stretch else 4) if with_rotation_scale else 2
    n_model = reference.n_params if fit_reference else 0
    n_free = min(n_model, 1)  # the threshold first, the PSF shape later
    gain, offset = 1.0, 0.0
    iterations = 0
    trust = 1.0  # scales the reference's steps; halved whenever one made the fit worse
    best_corr = -2.0
    before_step = reference.snapshot()
    for iterations in range(1, max_iterations + 1):  # noqa: B007 - the count is reported
        ref_image, ref_derivatives = reference.render(n_free, stride=stride)
        linear = _linear(params)
        map_x = (centre[0] + params[0] + linear[0, 0] * x + linear[0, 1] * y).reshape(grid_shape)
        map_y = (centre[1] + params[1] + linear[1, 0] * x + linear[1, 1] * y).reshape(grid_shape)
        warped = cv2.remap(stack, map_x.astype(np.float32), map_y.astype(np.float32), cv2.INTER_LINEAR,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0.0).reshape(-1, 4)
        valid = warped[:, 3] > 0.999
        if np.count_nonzero(valid) < 64:
            return None
        values, gx, gy = warped[valid, 0], warped[valid, 1], warped[valid, 2]
        vy, vx = ys[valid] // stride, xs[valid] // stride
        # Model: gain * reference + offset ~ warped print. The gain sits on the reference
        # side so that flattening the reference (a broader PSF) cannot shrink the misfit.
        ref = ref_image[vy, vx].astype(np.float64)
        if n_free:
            corr = weighted_correlation(ref, values)
            if corr < best_corr - 1e-6:  # the last reference step overshot: undo it, go slower
                reference.restore(before_step)
                trust *= 0.5
                if trust < 1e-3:
                    break
                continue
            best_corr = corr
            before_step = reference.snapshot()
        columns = [gx, gy]
        if with_rotation_scale:
            xv, yv = x[valid], y[valid]
            columns += [gx * xv + gy * yv, gy * xv - gx * yv]
            if stretch:
                columns.append(gx * xv - gy * yv)
        columns += [-ref, -np.ones_like(ref)]
        columns += [-gain * d[vy, vx] for d in ref_derivatives[:n_free]]
        jac = np.stack(columns, axis=1).astype(np.float64)
        residual = gain * ref + offset - values
        if huber_k > 0.0 and not n_free:
            slope = np.hypot(gx, gy)
            edges = slope >= HUBER_EDGE_SHARE * slope.max()
            root = np.sqrt(huber_weights(residual, huber_k, scale_from=edges))
            jac, residual = jac * root[:, None], residual * root
        normal = jac.T @ jac
        diag = np.sqrt(np.diag(normal))
        if diag.min() <= 0.0 or np.linalg.cond(normal / np.outer(diag, diag)) > 1e10:
            return None
        step = np.linalg.solve(normal, jac.T @ residual)
        step[:2] = np.clip(step[:2], -MAX_SHIFT_STEP_PX, MAX_SHIFT_STEP_PX)
        if with_rotation_scale:
            step[2:n_geo] = np.clip(step[2:n_geo], -MAX_LINEAR_STEP, MAX_LINEAR_STEP)
        params[:n_geo] += step[:n_geo]
        gain += step[n_geo]
        offset += step[n_geo + 1]
        if n_free:
            deltas = np.zeros(n_model)
            deltas[:n_free] = step[n_geo + 2 :]
            reference.update(deltas, trust)
        motion_px = float(np.hypot(step[0], step[1]))
        if with_rotation_scale:
            motion_px += radius * float(np.linalg.norm(step[2:n_geo]))
        shape_change = np.abs(reference.snapshot()[1] - before_step[1]).max(initial=0.0)
        shape_moving = n_free > 1 and float(shape_change) > MODEL_SETTLED
        if motion_px < tolerance_px and not shape_moving:
            if n_free == n_model:
                break
            n_free = n_model
    matrix = linear_matrix(_linear(params), params[:2], (h, w))
    ref_image, _ = reference.render(0)
    return Refined(matrix, correlation_after_warp(ref_image, moving, matrix, inside), iterations)


def huber_weights(residual: np.ndarray, k: float, scale_from: np.ndarray | None = None) -> np.ndarray:
    """Huber's weights of least-squares residuals: 1 within ``k`` robust standard deviations
    (1.4826 times the median absolute deviation), falling as 1 / |r| beyond. ``scale_from`` (a
    boolean mask of the samples) picks the samples the deviation is measured on, when at least
    ``HUBER_MIN_EDGE_SAMPLES``: the print's edges, as the flat regions' zero residuals would make
    it so small that every edge sample counted as an outlier."""
    sample = residual
    if scale_from is not None and int(np.count_nonzero(scale_from)) >= HUBER_MIN_EDGE_SAMPLES:
        sample = residual[scale_from]
    sigma = 1.4826 * float(np.median(np.abs(sample - np.median(sample))))
    if sigma <= 0.0:
        return np.ones_like(residual)
    return np.minimum(1.0, k * sigma / np.maximum(np.abs(residual), 1e-12))


def correlation_after_warp(reference: np.ndarray, moving: np.ndarray, print_to_mask: np.ndarray,
                           inside: np.ndarray) -> float:
    """Correlation coefficient of ``reference`` with ``moving`` resampled into the mask frame."""
    h, w = moving.shape
    pair = np.dstack([moving, np.ones_like(moving)])
    warped = cv2.warpPerspective(pair, print_to_mask, (w, h), flags=cv2.INTER_LINEAR,
                                 borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)
    valid = inside & (warped[..., 1] > 0.999)
    if np.count_nonzero(valid) < 64:
        return 0.0
    return weighted_correlation(reference[valid], warped[..., 0][valid])


def ecc_affine(reference: np.ndarray, moving: np.ndarray, initial: np.ndarray, inside: np.ndarray,
               max_iterations: int) -> Refined | None:
    """OpenCV's ECC with a six-parameter affine warp, or ``None`` when it does not converge."""
    start = np.ascontiguousarray(np.linalg.inv(initial)[:2], dtype=np.float32)
    criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, max_iterations, 1e-6)
    template_mask = inside.astype(np.uint8)
    input_mask = np.ones_like(template_mask)
    try:
        _, found = cv2.findTransformECCWithMask(reference, moving, template_mask, input_mask, start,
                                                cv2.MOTION_AFFINE, criteria, 1)
    except cv2.error:  # OpenCV raises when the iteration diverges or the images are flat
        return None
    refined = np.vstack([np.asarray(found, dtype=np.float64), [0.0, 0.0, 1.0]])
    if not np.all(np.isfinite(refined)) or abs(np.linalg.det(refined)) < 1e-9:
        return None
    matrix = np.asarray(np.linalg.inv(refined), dtype=np.float64)
    return Refined(matrix, correlation_after_warp(reference, moving, matrix, inside), max_iterations)


def plausible(print_to_mask: np.ndarray, max_rotation_deg: float, max_scale_change: float) -> bool:
    """Whether a warp stays within the rotations and scales a farm can produce."""
    if not np.all(np.isfinite(print_to_mask)) or np.abs(print_to_mask[2, :2]).max() > 1e-3:
        return False
    linear = print_to_mask[:2, :2]
    if np.linalg.det(linear) <= 0.0:
        return False
    singular = np.linalg.svd(linear, compute_uv=False)
    if np.any(np.abs(singular - 1.0) > max_scale_change):
        return False
    rotation_deg = math.degrees(math.atan2(linear[1, 0] - linear[0, 1], linear[0, 0] + linear[1, 1]))
    return abs(rotation_deg) <= max_rotation_deg
