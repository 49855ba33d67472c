"""Register two masks by local descriptors when the translation search cannot.

ORB keypoints on both 8-bit masks, a ratio test, and a RANSAC similarity
transform that must be a near-pure translation with enough inliers and a large
enough overlap. Keypoints are located to a pixel or so, so the integer shifts
around the estimate are tried (:func:`refine_shift`), and at the best one the
masks must agree on the overlap up to slivers one pixel wide (the edges of a
registration off by a sub-pixel amount).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from shared.verification.difference import MASK_TOLERANCE_LEVELS, mask_difference, sliver_free_mismatch
from shared.verification.overlap import overlap_fraction, overlap_windows

#: integer shifts tried on either side of the RANSAC translation
REFINE_PX = 2


@dataclass(frozen=True)
class DescriptorParams:
    """The keypoint registration's limits (the novelty service's confirmation settings name them)."""

    orb_features: int
    ratio_test: float
    ransac_threshold_px: float
    min_inliers: int
    max_scale_error: float
    max_rotation_deg: float
    min_overlap_fraction: float
    mask_mismatch_max_px: int  # after dropping 1 px slivers
    max_points: int  # matched keypoint coordinates kept in the details


@dataclass(frozen=True)
class DescriptorRegistration:
    """``shift_px`` (``b[y, x] == a[y + dy, x + dx]``) when the masks agree there, else None; ``details``:
    what was measured on the way (keypoints, inliers, scale, rotation, matched points, mask mismatch)."""

    shift_px: tuple[int, int] | None
    details: dict[str, Any]


def refine_shift(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    shift: tuple[int, int],
    radius_px: int = REFINE_PX,
    tolerance_levels: int = MASK_TOLERANCE_LEVELS,
) -> tuple[int, int]:
    """The integer shift within ``radius_px`` of ``shift`` where the fewest mask pixels differ on the overlap
    (the first found, rows of ``dy`` outer, on a tie)."""
    shape = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    dx, dy = shift
    best: tuple[int, int, int] | None = None
    for ddy in range(-radius_px, radius_px + 1):
        for ddx in range(-radius_px, radius_px + 1):
            in_a, in_b = overlap_windows(shape, dx + ddx, dy + ddy)
            raw = int(np.count_nonzero(mask_difference(mask_a[in_a], mask_b[in_b], tolerance_levels)))
            if best is None or raw < best[0]:
                best = (raw, dx + ddx, dy + ddy)
    assert best is not None
    return best[1], best[2]


def register_by_descriptors(
    mask_a: np.ndarray, mask_b: np.ndarray, params: DescriptorParams
) -> DescriptorRegistration:
    """Where ``b``'s 8-bit mask lies on ``a``'s by ORB keypoints and RANSAC (see the module docstring)."""
    orb = cv2.ORB.create(nfeatures=params.orb_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
    kp_a, des_a = orb.detectAndCompute(mask_a, None)
    kp_b, des_b = orb.detectAndCompute(mask_b, None)
    details: dict[str, Any] = {"keypoints": [len(kp_a), len(kp_b)], "inliers": 0}
    refused = DescriptorRegistration(None, details)
    if des_a is None or des_b is None or len(kp_a) < 2 or len(kp_b) < params.min_inliers:
        return refused
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(des_b, des_a, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < params.ratio_test * p[1].distance]
    details["ratio_matches"] = len(good)
    if len(good) < params.min_inliers:
        return refused
    src = np.array([kp_b[m.queryIdx].pt for m in good], dtype=np.float32)
    dst = np.array([kp_a[m.trainIdx].pt for m in good], dtype=np.float32)
    matrix, inlier_mask = cv2.estimateAffinePartial2D(
        src,
        dst,
        method=cv2.RANSAC,
        ransacReprojThreshold=params.ransac_threshold_px,
        maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or inlier_mask is None:
        return refused
    inliers = inlier_mask.ravel().astype(bool)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    rotation_deg = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    dx, dy = round(float(matrix[0, 2])), round(float(matrix[1, 2]))
    shape = (int(mask_a.shape[0]), int(mask_a.shape[1]))
    overlap = round(overlap_fraction(shape, dx, dy), 4)
    details.update(
        inliers=int(inliers.sum()),
        scale=round(scale, 4),
        rotation_deg=round(rotation_deg, 3),
        shift_px=[dx, dy],
        overlap_fraction=overlap,
    )
    cap = params.max_points
    details["points_result"] = [[round(float(x), 1), round(float(y), 1)] for x, y in src[inliers][:cap]]
    details["points_library"] = [[round(float(x), 1), round(float(y), 1)] for x, y in dst[inliers][:cap]]
    if (
        details["inliers"] < params.min_inliers
        or abs(scale - 1.0) > params.max_scale_error
        or abs(rotation_deg) > params.max_rotation_deg
        or overlap < params.min_overlap_fraction
    ):
        return refused
    # b (x, y) maps to a (x + dx, y + dy): b[y, x] == a[y + dy, x + dx]
    best = refine_shift(mask_a, mask_b, (dx, dy))
    in_a, in_b = overlap_windows(shape, *best)
    mismatch = sliver_free_mismatch(mask_a[in_a], mask_b[in_b])
    details["mask_mismatch_px"], details["shift_px"] = mismatch, [best[0], best[1]]
    if mismatch > params.mask_mismatch_max_px:
        return refused
    return DescriptorRegistration(best, details)
