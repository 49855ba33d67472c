"""The result and settings types of print-to-mask registration."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from shared.contracts import Transform

Fallback = Literal["orb", "akaze", "sift", "none"]
EccMotion = Literal["similarity", "affine", "translation"]
PrintModel = Literal["gaussian", "projection"]


class AlignSettings(BaseModel):
    """How the alignment stage registers a print to its mask.

    Lengths are in pixels of the images being registered. ``optics_sigma_px`` is the
    Gaussian standing in for the optical point spread when the approximate print is
    simulated from the mask (about 0.2 * wavelength / NA: ~7 px at 4 nm/px for 193 nm
    immersion); ``fit_psf_shape`` lets the refinement reshape it per result (weights of
    two more Gaussians, at half and twice the sigma). ``blur_sigma_px`` is the low-pass
    applied to both images before they are compared. ``ecc_motion`` is the model the ECC
    refinement fits after the correlation peak: ``similarity`` (shift, rotation, uniform
    scale; when they move the corners by under 2 px, rotation and scale are kept only if
    they explain at least ``similarity_min_gain`` of the misfit a pure shift leaves, and
    ``similarity_stretch_ratio`` times what a stretch (x and y scales unequal, which no
    farm window does) explains beyond them -- that gain is the approximate print's error
    showing, line ends pulled back along one axis; and
    only a pure shift is fitted when the compared pattern's edges lie within
    ``similarity_min_spread`` of the half-diagonal of their centre (RMS, weighted by edge
    strength: a few contacts in a clump cannot pin rotation and scale down); with
    ``ecc_coarse_to_fine`` the fit runs on every fourth pixel and the geometry alone is
    then polished on every other one),
    ``affine`` (OpenCV's ``findTransformECC``) or ``translation``. A result is refused
    (``ok=False``) below ``quality_floor``, when the correlation ``ambiguity_radius_px``
    or more from the peak reaches ``ambiguity_ratio`` of it, or at the search limit.
    ``fallback`` names the keypoints tried when the correlation result is weak (or the
    shift lies beyond the search range): ``sift`` (the default: on prints of real cell
    rows it answers more and better than ORB and AKAZE, see ``docs/alignment.md``, and
    it is in OpenCV's main package, where OpenCV 5 moved AKAZE to contrib), ``orb``,
    ``akaze`` or ``none``. With ``whole_overlap``, a print whose correlation stays below the
    floor is looked at again over the whole overlap of the two images, borders included
    (contacts on a row's power rails lie along the clip's edges, where the first pass does
    not look); such an answer is given only when it is unique within the search range and
    the correlation reaches ``whole_overlap_floor`` (higher than ``quality_floor``: over a clip of a few
    contacts one contact more or less costs the correlation only a tenth; see
    ``docs/alignment.md``). With ``whole_overlap_similarity`` it keeps rotation and scale
    where they move the corners by 2 px or more, the print re-cut at the clip's edges under
    each estimate until the estimate settles, and a clip the first pass answers by a shift
    because it is too compact inside the border for rotation and scale (a clump of contacts,
    the rails' contacts along the edges) gets the second look too, whose answer is then
    preferred; without, the second look answers pure shifts only, to prints below the floor.
    ``print_model`` names the aerial image the approximate print is thresholded from:
    ``projection`` (a scanner's image through a circular pupil from an annular source,
    cutoff from ``optics_sigma_px``, focus fitted per result: see ``projection``; it
    predicts pulled-back line ends, which the Gaussian reads as a scale on real poly
    gates) or ``gaussian`` (the mask blurred at ``optics_sigma_px``, PSF shape fitted;
    half the CPU). The second look over the whole overlap always uses the Gaussian.
    With ``refuse_unpinned_rotation``, a clip too compact for rotation and scale (the
    spread check) is refused when a similarity fitted from its shift moves the corners by
    2 px or more: its shift alone would be right at the clump and pixels off at the
    corners. With ``ignore_repeats_beyond_range``, the second look treats ``max_shift_px``
    as the bound of the farm's offsets: a repeat of the pattern just beyond it (a row's
    rail contacts one site pitch away) shows as a peak of its own there, and neither it
    nor its flank inside the range is an answer or a competitor. With ``polish_huber_k`` > 0
    (default 3) the first pass fits the geometry (the reference held) by Huber-weighted least
    squares at that many robust standard deviations of the residuals on the print's edges:
    the pixels the approximate print mispredicts most, line ends above all, then buy less of
    a scale a shift does not need (on SKY130 poly gates; see ``docs/alignment.md``); 0: plain
    least squares. The second look always uses plain least squares (its cut features along
    the edges are what pin the answer there; weighed down, two rotated rails-only windows
    drifted past 1 px). With ``repeat_misfit_ratio`` > 0 (default 0.05) an ambiguous first-pass
    peak is not refused at once: the peak and each repeat that contends with it (at most
    four local maxima of the score map, and none a ridge leading back to the peak) are
    refined alike, and the best is answered when its misfit (1 - correlation) is at most that
    share of every other's. Periodic SKY130 gates whose repeats the blurred interior scores
    alike fit 26 to 94 times better at the true one once rotation, scale and the print's
    threshold are fitted (line ends and gate bends differ); the emulator's contact arrays,
    true repeats, fitted up to 13 times better at a wrong one, so a twentieth is asked.
    0: an ambiguous peak is refused. The first pass compares the reference's centre (inside
    the search margin); where the centre's contrast (standard deviation) is below
    ``min_centre_contrast`` of the whole reference's, the pattern lies along the clip's edges
    and the centre holds only the blur tails of features outside it, which the normalised
    correlation scales up to a pattern: a print warped in its frame with a blank border then
    matched them pixels off at a correlation of 0.99. Such a print goes straight to the
    keypoint fallback and the second look. 0: off. With ``refuse_mask_repeats`` the second look
    gives no answer where the approximate print matches itself over its whole overlap (at
    ``ambiguity_ratio``) one repeat away, at a lag that moves the answer to another shift
    within the search range: only what lies beyond the clip's edges, in the print and not in the
    mask, could tell the two apart (a row's rail contacts moved more than about 10 px along the
    row). A print warped in its frame with a blank border was answered a repeat (42.5 px) off
    there.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    quality_floor: float = Field(0.9, ge=0.0, le=1.0)
    approx_print: bool = True
    optics_sigma_px: float = Field(7.0, gt=0.0, le=64.0)
    print_model: PrintModel = "projection"
    fit_psf_shape: bool = True
    blur_sigma_px: float = Field(4.0, ge=0.5, le=64.0)
    max_shift_px: int = Field(32, ge=0, le=4096)
    use_ecc: bool = True
    ecc_motion: EccMotion = "similarity"
    ecc_max_iterations: int = Field(30, ge=1, le=1000)
    ecc_tolerance_px: float = Field(0.01, gt=0.0)
    ecc_coarse_to_fine: bool = True
    similarity_min_gain: float = Field(0.2, ge=0.0, le=1.0)
    similarity_min_spread: float = Field(0.2, ge=0.0, le=1.0)
    similarity_stretch_ratio: float = Field(8.0, ge=0.0)
    max_rotation_deg: float = Field(10.0, gt=0.0, le=90.0)
    max_scale_change: float = Field(0.1, gt=0.0, lt=1.0)
    ambiguity_ratio: float = Field(0.97, gt=0.0, le=1.0)
    ambiguity_radius_px: float = Field(16.0, gt=0.0)
    fallback: Fallback = "sift"
    whole_overlap: bool = True
    refuse_unpinned_rotation: bool = True
    ignore_repeats_beyond_range: bool = True
    whole_overlap_floor: float = Field(0.95, ge=0.0, le=1.0)
    whole_overlap_similarity: bool = True
    polish_huber_k: float = Field(3.0, ge=0.0, le=100.0)
    repeat_misfit_ratio: float = Field(0.05, ge=0.0, le=1.0)
    min_centre_contrast: float = Field(0.05, ge=0.0, le=1.0)
    refuse_mask_repeats: bool = True
    min_size_px: int = Field(16, ge=8)

    def border_px(self, size_px: int) -> int:
        """Width of the mask-frame border left out of comparisons: where the approximate
        print lacks the neighbours outside the clip. At most a quarter of the image."""
        optics = 2.0 * self.optics_sigma_px if self.approx_print else 0.0
        return min(math.ceil(optics + 2.0 * self.blur_sigma_px) + 1, size_px // 4)


@dataclass(frozen=True, eq=False)
class Registration:
    """A registration of a print onto its mask.

    ``matrix`` is a 3x3 float64 homography taking print pixel coordinates (x, y) to
    mask pixel coordinates. ``quality`` is the normalised correlation (clipped to
    [0, 1]) of the approximate print with the print resampled into the mask frame.
    ``residual_px`` is the RMS reprojection error of keypoint inliers when keypoints
    decided the result, ``None`` otherwise.
    """

    matrix: np.ndarray
    method: str
    quality: float
    residual_px: float | None
    ok: bool
    reason: str

    def as_transform(self) -> Transform:
        """The wire form used in ``AlignedResult.transform``."""
        m = [float(v) for v in np.asarray(self.matrix, dtype=np.float64).reshape(9)]
        return Transform(
            matrix=(m[0], m[1], m[2], m[3], m[4], m[5], m[6], m[7], m[8]),
            method=self.method,
            quality=float(self.quality),
            residual_px=self.residual_px,
        )


def not_ok(reason: str, method: str = "none", matrix: np.ndarray | None = None,
           quality: float = 0.0) -> Registration:
    """A failed registration: identity unless a best-effort matrix is given."""
    mat = np.eye(3, dtype=np.float64) if matrix is None else np.asarray(matrix, dtype=np.float64)
    return Registration(matrix=mat, method=method, quality=quality, residual_px=None, ok=False, reason=reason)


def translation_matrix(dx: float, dy: float) -> np.ndarray:
    return np.array([[1.0, 0.0, dx], [0.0, 1.0, dy], [0.0, 0.0, 1.0]], dtype=np.float64)


def rotation_scale_shift(size_px: int, shift: tuple[float, float], angle_deg: float = 0.0,
                         scale: float = 1.0) -> np.ndarray:
    """Print -> mask homography: rotate and scale about the centre of a square clip, then shift."""
    c = (size_px - 1) / 2.0
    a = math.radians(angle_deg)
    linear = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    h = np.eye(3)
    h[:2, :2] = linear
    h[:2, 2] = np.array([c + shift[0], c + shift[1]]) - linear @ np.array([c, c])
    return h


def corner_errors_px(estimated: np.ndarray, truth: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Displacement of the four image corners between two homographies (px, length 4)."""
    h, w = shape
    corners = np.array([[0.0, 0.0, 1.0], [w - 1.0, 0.0, 1.0], [0.0, h - 1.0, 1.0], [w - 1.0, h - 1.0, 1.0]]).T
    a = estimated @ corners
    b = truth @ corners
    a = a[:2] / a[2]
    b = b[:2] / b[2]
    return np.asarray(np.hypot(*(a - b)), dtype=np.float64)
