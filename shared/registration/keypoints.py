"""Keypoint registration: ORB, AKAZE or SIFT features, ratio test, RANSAC homography.

On prints of real layouts keypoints are unreliable (corners round off, small features
vanish), so the aligner uses them only when correlation finds no clear peak; the
textbook pipeline on the raw mask is kept as a baseline to measure against.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from shared.errors import ConfigError
from shared.registration.images import checked_pair, is_blank
from shared.registration.model import Registration, not_ok

RATIO_TEST = 0.75
RANSAC_REPROJECTION_PX = 3.0
MIN_MATCHES = 8


@dataclass(frozen=True)
class KeypointFit:
    """A print->mask homography from keypoints, with its support."""

    matrix: np.ndarray
    inliers: int
    matches: int
    residual_px: float


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8))


def _detector(kind: str) -> cv2.Feature2D:
    # Looked up by name: OpenCV 5 moved AKAZE to the contrib module xfeatures2d, and the
    # stubs of either version lack one of the spellings.
    if kind == "orb":
        orb: cv2.Feature2D = cv2.ORB.create(nfeatures=1000)
        return orb
    if kind == "sift":
        sift: cv2.Feature2D = cv2.SIFT.create(nfeatures=1000)
        return sift
    if kind == "akaze":
        create = getattr(cv2, "AKAZE_create", None) or getattr(cv2.xfeatures2d, "AKAZE_create", None)
        if create is None:
            raise ConfigError("this OpenCV build has no AKAZE; use the orb fallback")
        akaze: cv2.Feature2D = create()
        return akaze
    raise ValueError(f"unknown keypoint detector {kind!r}")


def keypoint_homography(reference: np.ndarray, moving: np.ndarray, kind: str,
                        similarity: bool = False) -> KeypointFit | None:
    """Homography taking ``moving`` pixel coordinates to ``reference`` ones, or ``None``.

    With ``similarity`` the fit is held to shift, rotation and uniform scale (RANSAC on
    ``estimateAffinePartial2D``): what a farm's window can do, and four parameters where
    a homography has eight for keypoints that misplace corners of a print.
    """
    detector = _detector(kind)
    kp_ref, des_ref = detector.detectAndCompute(_to_uint8(reference), None)
    kp_mov, des_mov = detector.detectAndCompute(_to_uint8(moving), None)
    if des_ref is None or des_mov is None or len(kp_ref) < 2 or len(kp_mov) < 2:
        return None
    # SIFT describes with floats (L2); ORB and AKAZE with bit strings (Hamming).
    matcher = cv2.BFMatcher(cv2.NORM_L2 if kind == "sift" else cv2.NORM_HAMMING)
    good = []
    for pair in matcher.knnMatch(des_mov, des_ref, k=2):
        if len(pair) == 2 and pair[0].distance < RATIO_TEST * pair[1].distance:
            good.append(pair[0])
    if len(good) < MIN_MATCHES:
        return None
    src = np.array([kp_mov[m.queryIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    dst = np.array([kp_ref[m.trainIdx].pt for m in good], dtype=np.float32).reshape(-1, 1, 2)
    if similarity:
        partial, inlier_mask = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC,
                                                           ransacReprojThreshold=RANSAC_REPROJECTION_PX)
        matrix = None if partial is None else np.vstack([partial, [0.0, 0.0, 1.0]])
    else:
        matrix, inlier_mask = cv2.findHomography(src, dst, cv2.RANSAC, RANSAC_REPROJECTION_PX)
    if matrix is None or inlier_mask is None or not np.all(np.isfinite(matrix)):
        return None
    inliers = inlier_mask.ravel().astype(bool)
    if int(inliers.sum()) < MIN_MATCHES // 2:
        return None
    projected = cv2.perspectiveTransform(src[inliers], matrix)
    residual = float(np.sqrt(np.mean(np.sum((projected - dst[inliers]) ** 2, axis=-1))))
    return KeypointFit(np.asarray(matrix, np.float64), int(inliers.sum()), len(good), residual)


def keypoint_baseline(mask: np.ndarray, simulated: np.ndarray, kind: str = "orb") -> Registration:
    """Textbook keypoints (``orb``, ``akaze`` or ``sift``) + ratio test + RANSAC homography
    from the print to the raw mask."""
    mask_f, sim_f = checked_pair(mask, simulated)
    if is_blank(mask_f) or is_blank(sim_f):
        return not_ok("blank image", method=kind)
    fit = keypoint_homography(mask_f, sim_f, kind)
    if fit is None:
        return not_ok("too few consistent keypoint matches", method=kind)
    quality = fit.inliers / max(fit.matches, 1)
    return Registration(matrix=fit.matrix, method=kind, quality=quality, residual_px=fit.residual_px,
                        ok=True, reason="")


def orb_ransac_baseline(mask: np.ndarray, simulated: np.ndarray) -> Registration:
    """Textbook ORB + ratio test + RANSAC homography from the print to the raw mask."""
    return keypoint_baseline(mask, simulated, "orb")


def sift_ransac_baseline(mask: np.ndarray, simulated: np.ndarray) -> Registration:
    """Textbook SIFT + ratio test + RANSAC homography from the print to the raw mask."""
    return keypoint_baseline(mask, simulated, "sift")
