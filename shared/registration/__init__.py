"""Registration of a simulated print to its mask (the alignment stage's core).

``Aligner(settings).register(mask, simulated)`` returns a :class:`Registration` whose
``matrix`` takes print pixel coordinates to mask pixel coordinates;
``Aligner.warp`` resamples the print into the mask frame. ``orb_ransac_baseline`` is
the textbook keypoint pipeline, kept to measure against.
"""

from __future__ import annotations

from shared.registration.aligner import Aligner, warp_to_mask
from shared.registration.images import AerialModel, approximate_print
from shared.registration.keypoints import keypoint_baseline, orb_ransac_baseline, sift_ransac_baseline
from shared.registration.model import AlignSettings, Registration, corner_errors_px, rotation_scale_shift

__all__ = [
    "AerialModel",
    "AlignSettings",
    "Aligner",
    "Registration",
    "approximate_print",
    "corner_errors_px",
    "keypoint_baseline",
    "orb_ransac_baseline",
    "rotation_scale_shift",
    "sift_ransac_baseline",
    "warp_to_mask",
]
