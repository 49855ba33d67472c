"""Register a simulated print to its mask: correlation, ECC refinement, keypoint fallback.

1. The print is compared with an approximate print of the mask (see ``images`` and
   ``projection``), both low-passed, so what did not print does not pull the answer.
2. Translation: normalised cross-correlation over shifts up to ``max_shift_px`` with a
   subpixel peak.
3. ECC refinement from that peak (similarity by default), fitting the approximate
   print's threshold and focus (or PSF shape) too. Small rotation and scale are kept only when they
   explain a real share of the misfit; otherwise a pure shift is refitted, since there
   they mostly fit the approximate print's errors.
4. Keypoints (ORB, AKAZE or SIFT + RANSAC: ``fallback``) only when the correlation result is weak.
5. Quality gate: the correlation of the warped print with the reference must reach
   ``quality_floor``; the registration is also refused when the peak is ambiguous
   (periodic or line-only patterns) or at the edge of the search range, and when the
   print needs a rotation or scale that its (compact) pattern cannot pin down.
6. A print still below the floor, or answered by a shift because it is too compact for
   rotation and scale, gets a second look over the whole overlap of the two images,
   borders included (``whole_overlap``): a clip whose pattern lies along its edges (a row's
   rail contacts) then gets an answer where it is unique, rotation and scale included.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from shared.errors import ContractError
from shared.imaging import validate_image
from shared.registration.correlation import (
    PeakResult,
    contending_peaks,
    ncc_scores,
    ncc_translation,
    on_edge,
    outside_flanks,
    overlap_ncc_scores,
    overlap_ncc_translation,
    peak_of,
)
from shared.registration.images import (
    AerialModel,
    ApproximatePrint,
    FixedReference,
    checked_pair,
    gaussian,
    gaussian_basis,
    interior,
    is_blank,
)
from shared.registration.keypoints import KeypointFit, keypoint_homography
from shared.registration.model import (
    AlignSettings,
    PrintModel,
    Registration,
    corner_errors_px,
    not_ok,
    translation_matrix,
)
from shared.registration.projection import projection_basis
from shared.registration.refine import (
    Reference,
    Refined,
    correlation_after_warp,
    ecc_affine,
    ecc_similarity,
    plausible,
    similarity_params,
)

MAX_REFINE_DRIFT_PX = 4.0  # refinement may move the image centre this far from the peak
SHIFT_ONLY_MAX_CORNER_PX = 2.0  # rotation/scale moving corners farther is never a fitting artefact
COARSE_STRIDE = 4  # sampling of the coarse ECC pass (the fine pass uses every other pixel)
RECUT_ROUNDS = 5  # second look: re-cuts of the print under the estimate before it must have settled
RECUT_SETTLED_PX = 0.02  # a re-cut moving the image centre less than this has settled
HERE_PX = 1.5  # the uniqueness check: how near the answer the best score must lie
RETURN_PX = 0.5  # second look: how near the answer a refinement from the check's nearby best must settle
AXIS_SCALE_AGREEMENT = 0.005  # second look: the largest scale residual of the better-fitting axis
ReferenceState = tuple[float, np.ndarray, np.ndarray]  # Reference.snapshot()
MAX_CONTENDERS = 4  # an ambiguous peak is decided by refinement among at most this many local maxima


def warp_to_mask(simulated: np.ndarray, matrix: np.ndarray, border: float = 0.0) -> np.ndarray:
    """``simulated`` resampled into the mask frame; pixels it does not cover get ``border``."""
    h, w = simulated.shape
    return np.asarray(
        cv2.warpPerspective(simulated, matrix, (w, h), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=border),
        dtype=np.float32,
    )


class Aligner:
    """Registers prints to masks under one set of :class:`AlignSettings`.

    ``aerial_model`` maps a mask to an image that increases with exposure, from which
    the approximate print is thresholded. By default it is the settings' ``print_model``:
    a projection scanner's image whose focus the refinement fits per result, or a
    Gaussian of ``optics_sigma_px`` whose shape it adjusts (two more Gaussian terms);
    where the farm's optics are known, its aerial image (e.g. ``LithoSimulator.aerial``)
    can be given instead.
    """

    def __init__(self, settings: AlignSettings | None = None,
                 aerial_model: AerialModel | None = None) -> None:
        self.settings = settings or AlignSettings()
        self.aerial_model = aerial_model

    def register(self, mask: np.ndarray, simulated: np.ndarray) -> Registration:
        """The print->mask homography of one result, gated on quality.

        Raises :class:`shared.errors.ImageError` for images that are not 2-D float
        [0, 1] arrays of one shape; blank or tiny images give ``ok=False``.
        """
        s = self.settings
        mask_f, sim_f = checked_pair(mask, simulated)
        if min(mask_f.shape) < s.min_size_px:
            return not_ok(f"image smaller than {s.min_size_px} px")
        if is_blank(mask_f):
            return not_ok("blank mask")
        if is_blank(sim_f):
            return not_ok("blank print")

        reference = self._reference(mask_f, sim_f)
        fresh = reference.snapshot()
        sim_smooth = gaussian(sim_f, s.blur_sigma_px)
        inside = interior(mask_f.shape, s.border_px(min(mask_f.shape)))
        template = reference.render()[0]
        scores, margin = ncc_scores(template, sim_smooth, s.max_shift_px)
        peak = peak_of(scores, margin, s.ambiguity_radius_px)
        matrix = translation_matrix(peak.dx_px, peak.dy_px)
        method = "ncc"
        centre_flat = self._centre_flat(template, margin)
        quality = 0.0 if centre_flat else correlation_after_warp(template, sim_smooth, matrix, inside)

        if s.use_ecc and not peak.at_limit and not centre_flat:
            refined = self._refine(reference, sim_smooth, matrix, inside, s.polish_huber_k)
            if refined is not None and refined.correlation >= quality - 0.005:
                matrix, method, quality = refined.matrix, "ncc+ecc", refined.correlation

        decided = False  # an ambiguous peak that refinement told apart from its repeats
        if (s.repeat_misfit_ratio > 0.0 and s.use_ecc and quality >= s.quality_floor and not peak.at_limit
                and self._ambiguous(peak)):
            chosen = self._decide_between_repeats(reference, fresh, sim_smooth, inside, scores, margin)
            if chosen is not None:
                matrix, quality, decided, method = chosen.matrix, chosen.correlation, True, "ncc+ecc"

        residual_px: float | None = None
        if (quality < s.quality_floor or peak.at_limit) and s.fallback != "none":
            found = self._keypoint_fallback(reference, sim_smooth, inside)
            if found is not None and found[1].correlation > quality:
                fit, refined, check = found
                matrix, quality, peak, decided = refined.matrix, refined.correlation, check, False
                method = s.fallback if refined.iterations == 0 else f"{s.fallback}+ecc"
                residual_px = fit.residual_px

        reason = self._refusal(quality, peak, decided)
        compact = not reason and method == "ncc+ecc" and self._compact_shift(reference, matrix, inside)
        if (compact and s.refuse_unpinned_rotation
                and self._unpinned_rotation_scale(reference, sim_smooth, matrix, inside)):
            reason = ("the print needs rotation or scale, but the pattern is too compact to pin them down "
                      "(a few contacts close together)")
        # A pure shift for a clip compact inside the border: the whole overlap may be spread (a
        # row's rail contacts along the clip's edges), and pins rotation and scale where the
        # clump cannot, so its answer, where it gives one, is preferred.
        if (quality < s.quality_floor or (compact and s.whole_overlap_similarity)) and s.whole_overlap:
            # The second look compares cut features along the clip's edges, where the
            # projection model's reflected surroundings ring: it keeps the Gaussian model.
            if s.print_model == "gaussian" or self.aerial_model is not None:
                reference.restore(fresh)
            else:
                reference = self._reference(mask_f, sim_f, "gaussian")
            rescued = self._whole_overlap(reference, sim_f, sim_smooth)
            if rescued is not None:
                matrix, quality, peak = rescued
                method, residual_px, reason = "overlap+ecc", None, ""
        return Registration(matrix=matrix, method=method, quality=max(0.0, min(1.0, quality)),
                            residual_px=residual_px, ok=not reason, reason=reason)

    def _whole_overlap(self, reference: Reference, sim_f: np.ndarray,
                       sim_smooth: np.ndarray) -> tuple[np.ndarray, float, PeakResult] | None:
        """A second look at a print whose correlation stayed below the floor, comparing the
        whole overlap of the two images, borders included: contacts on the power rails lie
        along the top and bottom edges of a row's clip, in the border that the first pass
        leaves out (where an approximate print lacks what lies outside the clip).

        The shift from :func:`overlap_ncc_translation`; then the print is resampled into the
        mask frame, cut at the clip's edges like the mask and refined there: a pure shift
        where rotation and scale move the corners by under 2 px (cut features' outward bias
        reads as a scale of about 1 % there), else the similarity, re-cut until it settles
        (:meth:`_recut_similarity`; refused without ``whole_overlap_similarity``). The answer
        is kept when its peak is neither ambiguous nor at the search limit, its correlation
        reaches the floor, and it stays unique over every shift the search could have
        answered; else ``None``. Ambiguous
        (periodic or line-only) clips are not looked at again: what would tell their repeats
        apart near the border is mostly line ends, which the approximate print misplaces.
        """
        s = self.settings
        template = reference.render()[0]
        peak = overlap_ncc_translation(template, sim_smooth, s.max_shift_px, s.ambiguity_radius_px,
                                       s.ignore_repeats_beyond_range)
        if self._ambiguous(peak):
            return None
        start = translation_matrix(peak.dx_px, peak.dy_px)
        # The threshold from the printed area where the print covers the clip (a row of rail
        # contacts may lie in the part it does not), and the reference rendered again.
        covered = warp_to_mask(np.ones_like(sim_f), start) > 0.999
        printed = warp_to_mask(sim_f, start) > 0.5
        n_covered = max(int(np.count_nonzero(covered)), 1)
        reference.match_area(float(np.count_nonzero(printed & covered)) / n_covered, covered)
        template = reference.render()[0]
        resampled, compared = self._resampled(sim_f, start, template)
        identity = np.eye(3)
        matrix, quality = identity, correlation_after_warp(template, resampled, identity, compared)
        if s.use_ecc:
            refined = self._refine(reference, resampled, identity, compared, 0.0, edge_drift=True)
            if refined is None:
                return None
            if self._small_rotation_scale(refined.matrix, sim_f.shape):
                shift_only = ecc_similarity(reference, resampled, refined.matrix, compared, False,
                                            s.ecc_max_iterations, s.ecc_tolerance_px, fit_reference=False)
                if shift_only is not None:
                    matrix, quality = shift_only.matrix, shift_only.correlation
            elif not s.whole_overlap_similarity:
                return None
            else:
                settled = self._recut_similarity(reference, sim_f, refined.matrix @ start, template)
                if settled is None:
                    return None
                start, (matrix, quality) = identity, settled
        matrix = matrix @ start
        if quality < s.whole_overlap_floor:
            return None
        # the reference as the refinement left it (threshold and PSF shape fitted to this print)
        if s.refuse_mask_repeats and self._mask_repeats_in_range(reference.render()[0], peak):
            return None
        # Checked again like a keypoint answer: the print warped by it must fit best where it
        # is, and clearly better than one repeat away (a rotation makes repeats score unequally
        # before it is undone).
        unique, near = self._unique_in_range(template, sim_f, matrix, peak)
        if not unique and (near is None or not self._settles_back(reference, sim_f, matrix, near, template)):
            return None
        return matrix, quality, peak

    def _settles_back(self, reference: Reference, sim_f: np.ndarray, matrix: np.ndarray,
                      near: tuple[float, float], template: np.ndarray) -> bool:
        """Whether the second look, started again where the uniqueness check scored best (``near``, a
        lag within ``ambiguity_radius_px`` of the answer ``matrix``, taken either way), settles back
        within ``RETURN_PX`` of the answer. Then that score's offset is the whole overlap's bias, not
        a better fit: on a rails-only clip the contacts the clip's edges cut make the check score
        2 px away in y a little higher than at an answer 0.2-0.6 px from the truth. The reference
        is left as it came."""
        state = reference.snapshot()
        shape = (sim_f.shape[0], sim_f.shape[1])
        for sign in (1.0, -1.0):
            start = translation_matrix(sign * near[0], sign * near[1]) @ matrix
            settled = self._recut_similarity(reference, sim_f, start, template)
            reference.restore(state)
            if settled is not None and corner_errors_px(settled[0], matrix, shape).max() <= RETURN_PX:
                return True
        return False

    def _recut_similarity(self, reference: Reference, sim_f: np.ndarray, matrix: np.ndarray,
                          template: np.ndarray) -> tuple[np.ndarray, float] | None:
        """A second-look answer that needs rotation or scale, refined until it settles: the
        print is resampled and cut at the clip's edges under the current estimate and
        refined again, up to ``RECUT_ROUNDS`` times. Cut once under the first pass's pure
        shift, a rotated row's edge contacts are cut along a line the mask does not cut them
        on, and the refinement reads that as up to a pixel of shift and a scale; cut under
        the estimate, the cuts agree once it is right. ``None`` when a round does not refine
        or the estimate has not settled (moves the centre by ``RECUT_SETTLED_PX`` or more)."""
        identity = np.eye(3)
        shape = (sim_f.shape[0], sim_f.shape[1])
        for _ in range(RECUT_ROUNDS):
            resampled, compared = self._resampled(sim_f, matrix, template)
            refined = self._refine(reference, resampled, identity, compared, 0.0, edge_drift=True)
            if refined is None:
                return None
            matrix = refined.matrix @ matrix
            if float(np.hypot(*similarity_params(refined.matrix, shape)[:2])) < RECUT_SETTLED_PX:
                if not self._scale_seen_on_an_axis(reference, resampled, refined.matrix, compared):
                    return None
                return matrix, refined.correlation
        return None

    def _scale_seen_on_an_axis(self, reference: Reference, resampled: np.ndarray, matrix: np.ndarray,
                               compared: np.ndarray) -> bool:
        """Whether the x or the y scale fitted apart (a stretch, from ``matrix``) agrees with the
        similarity's scale within ``AXIS_SCALE_AGREEMENT``. A row's rail contacts pin the x
        scale through the site pitch and the y scale only through contacts cut at the clip's
        edges, so on a true answer the y scale may wander while the x scale stays; a scale
        that neither axis confirms is a compromise between two wrong ones (a sparse window's
        pure shift read as a 1.7 % shrink, 4 px off at the corners)."""
        s = self.settings
        stretched = ecc_similarity(reference, resampled, matrix, compared, True, s.ecc_max_iterations,
                                   s.ecc_tolerance_px, fit_reference=False, stretch=True)
        if stretched is None:
            return False
        residual = np.linalg.inv(stretched.matrix)[:2, :2] @ matrix[:2, :2]
        return min(abs(float(residual[0, 0]) - 1.0), abs(float(residual[1, 1]) - 1.0)) <= AXIS_SCALE_AGREEMENT

    def _resampled(self, sim_f: np.ndarray, matrix: np.ndarray,
                   fill: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The print resampled into the mask frame and cut at its edges, then low-passed like
        the reference (features the clip's edge cuts are then cut, and reflected by the
        smoothing, alike in both), and the mask-frame pixels it covers, at least
        ``blur_sigma_px`` from its own window's edge. Pixels the print does not cover take
        ``fill`` (the reference) before the low-pass, so that the print's window edge does
        not show as an edge of its own."""
        s = self.settings
        cover = warp_to_mask(np.ones_like(sim_f), matrix)
        resampled = gaussian(warp_to_mask(sim_f, matrix) + (1.0 - cover) * fill, s.blur_sigma_px)
        edge_px = math.ceil(2.0 * s.blur_sigma_px)
        compared = cv2.erode((cover > 0.5).astype(np.uint8), np.ones((3, 3), np.uint8),
                             iterations=edge_px, borderType=cv2.BORDER_REPLICATE) > 0
        return resampled, compared

    def _unique_in_range(self, template: np.ndarray, sim_f: np.ndarray, matrix: np.ndarray,
                         peak: PeakResult) -> tuple[bool, tuple[float, float] | None]:
        """Whether the print warped by ``matrix`` fits best where it is and clearly better than
        at any other shift the search could have answered (with a rotation undone, repeats that
        scored unequally before may tie). A repeat beyond the search range does not count, nor
        does its flank inside it. Second, where only the first fails and the best score lies
        within ``ambiguity_radius_px`` (nothing farther competes), its lag ``(x, y)``; else ``None``."""
        s = self.settings
        reach = self._lag_reach(sim_f.shape)
        warped, covered = self._resampled(sim_f, matrix, template)
        scores = self._answers_in_range(overlap_ncc_scores(template, warped, reach, covered), peak)
        lag = np.arange(-reach, reach + 1, dtype=np.float64)
        distance = np.hypot(lag[None, :], lag[:, None])
        best_here = float(scores[distance <= HERE_PX].max())
        elsewhere = float(scores[distance > s.ambiguity_radius_px].max(initial=-1.0))
        if elsewhere >= s.ambiguity_ratio * best_here:
            return False, None
        if best_here >= float(scores.max()) - 1e-9:
            return True, None
        iy, ix = np.unravel_index(int(np.argmax(scores)), scores.shape)
        return False, (float(lag[ix]), float(lag[iy]))

    def _lag_reach(self, shape: tuple[int, ...]) -> int:
        """How far the second look's checks shift the two images against each other."""
        return min(2 * self.settings.max_shift_px + 1, min(shape[0], shape[1]) // 2 - 1)

    def _answers_in_range(self, scores: np.ndarray, peak: PeakResult) -> np.ndarray:
        """A map of scores over residual lags from the answer at ``peak`` (index ``[v + reach, u + reach]``
        for lag ``(u, v)``) with -1 wherever the lag moves the answer to a shift the search could not
        have given: beyond its range, or on the flank of a repeat beyond it."""
        s = self.settings
        reach = (scores.shape[0] - 1) // 2
        lag = np.arange(-reach, reach + 1, dtype=np.float64)
        # Residual shift u moves the answer to peak + u: only those within the search range count.
        in_x = np.abs(lag + peak.dx_px) <= s.max_shift_px + 1
        in_y = np.abs(lag + peak.dy_px) <= s.max_shift_px + 1
        # The flank of a repeat that lies beyond the range is no answer the search could give.
        peak_x, peak_y = np.abs(np.round(lag + peak.dx_px)), np.abs(np.round(lag + peak.dy_px))
        inside = (peak_y[:, None] <= s.max_shift_px) & (peak_x[None, :] <= s.max_shift_px)
        counted = in_y[:, None] & in_x[None, :]
        if s.ignore_repeats_beyond_range:
            counted &= ~outside_flanks(scores, inside, s.ambiguity_radius_px)
        return np.where(counted, scores, -1.0)

    def _mask_repeats_in_range(self, template: np.ndarray, peak: PeakResult) -> bool:
        """Whether the reference matches itself over its whole overlap, at ``ambiguity_ratio`` or
        better, at a lag ``ambiguity_radius_px`` or more away that moves the answer at ``peak`` to
        another shift the search could give (see :meth:`_answers_in_range`). The clip then repeats
        within the search's reach, and only what lies beyond its edges, in the print and not in the
        mask, could tell the two answers apart."""
        s = self.settings
        reach = self._lag_reach(template.shape)
        scores = self._answers_in_range(overlap_ncc_scores(template, template, reach), peak)
        lag = np.arange(-reach, reach + 1, dtype=np.float64)
        far = np.hypot(lag[None, :], lag[:, None]) > s.ambiguity_radius_px
        return float(scores[far].max(initial=-1.0)) >= s.ambiguity_ratio

    def _decide_between_repeats(self, reference: Reference, fresh: ReferenceState, sim_smooth: np.ndarray,
                                inside: np.ndarray, scores: np.ndarray, margin: int) -> Refined | None:
        """The answer to a first pass whose peak is ambiguous, where refinement tells the repeats apart:
        the peak and each local maximum of its score map (``scores``, ``margin``: :func:`ncc_scores`)
        contending with it (:func:`contending_peaks`) refined alike from ``fresh`` (the reference as
        first fitted), and the best kept when its misfit (1 - correlation)
        is at most ``repeat_misfit_ratio`` of every other's; the reference is left as the best's fit.
        ``None`` (refused as ambiguous; the reference left as it came) for a ridge, more than
        ``MAX_CONTENDERS`` contenders, a best that does not refine or lies on the search limit, or
        misfits too alike (a true repeat)."""
        s = self.settings
        entry = reference.snapshot()
        peaks = contending_peaks(scores, s.ambiguity_ratio, s.ambiguity_radius_px, MAX_CONTENDERS)
        if peaks is None:
            reference.restore(entry)
            return None
        fits: list[tuple[float, Refined | None, ReferenceState, bool]] = []
        for iy, ix in peaks:
            reference.restore(fresh)
            start = translation_matrix(float(margin - ix), float(margin - iy))
            refined = self._refine(reference, sim_smooth, start, inside, s.polish_huber_k)
            correlation = (refined.correlation if refined is not None
                           else correlation_after_warp(reference.render()[0], sim_smooth, start, inside))
            fits.append((correlation, refined, reference.snapshot(), on_edge(scores, iy, ix)))
        fits.sort(key=lambda fit: -fit[0])
        best, refined, snapshot, at_limit = fits[0]
        misfit = max(1.0 - best, 1e-9)
        if refined is None or at_limit or any(misfit > s.repeat_misfit_ratio * max(1.0 - other, 1e-9)
                                              for other, *_ in fits[1:]):
            reference.restore(entry)
            return None
        reference.restore(snapshot)
        return refined

    def _centre_flat(self, template: np.ndarray, margin: int) -> bool:
        """Whether the centre the first pass compares (``template`` inside ``margin``) has under
        ``min_centre_contrast`` of the whole template's contrast: nothing there to correlate."""
        share = self.settings.min_centre_contrast
        h, w = template.shape
        if share <= 0.0 or min(h, w) <= 2 * margin:
            return False
        centre = float(template[margin : h - margin, margin : w - margin].std())
        return centre < share * float(template.std())

    def _ambiguous(self, peak: PeakResult) -> bool:
        s = self.settings
        return peak.at_limit or peak.peak <= 0.0 or peak.second_peak >= s.ambiguity_ratio * peak.peak

    def _keypoint_fallback(self, reference: Reference, sim_smooth: np.ndarray,
                           inside: np.ndarray) -> tuple[KeypointFit, Refined, PeakResult] | None:
        """Keypoints (a similarity by RANSAC), refined like a correlation peak, and checked
        like one: the print warped by the answer is correlated again over the whole search
        range, so an answer that could as well sit one repeat away is refused as ambiguous
        (a keypoint match is no less fooled by rails and periodic cells than a peak is)."""
        s = self.settings
        template = reference.render()[0]
        fit = keypoint_homography(template, sim_smooth, s.fallback, similarity=True)
        if fit is None or not plausible(fit.matrix, s.max_rotation_deg, s.max_scale_change):
            return None
        refined = Refined(fit.matrix, correlation_after_warp(template, sim_smooth, fit.matrix, inside), 0)
        if s.use_ecc:
            polished = self._refine(reference, sim_smooth, fit.matrix, inside, s.polish_huber_k)
            if polished is not None and polished.correlation >= refined.correlation:
                refined = Refined(polished.matrix, polished.correlation, max(polished.iterations, 1))
        warped = warp_to_mask(sim_smooth, refined.matrix)
        again = ncc_translation(reference.render()[0], warped, s.max_shift_px, s.ambiguity_radius_px)
        if float(np.hypot(again.dx_px, again.dy_px)) > 1.0:  # the warped print still sits elsewhere
            return None
        return fit, refined, PeakResult(0.0, 0.0, again.peak, again.second_peak, at_limit=False)

    def _reference(self, mask: np.ndarray, simulated: np.ndarray,
                   print_model: PrintModel | None = None) -> Reference:
        """What the print is registered against: its approximate print (under the settings'
        ``print_model`` unless another is named), or the mask itself."""
        s = self.settings
        if not s.approx_print:
            return FixedReference(mask, s.blur_sigma_px)
        if self.aerial_model is None and (print_model or s.print_model) == "projection":
            basis = projection_basis(mask, s.optics_sigma_px, s.fit_psf_shape)
        elif self.aerial_model is None:
            basis = gaussian_basis(mask, s.optics_sigma_px, s.fit_psf_shape)
        else:
            aerial = np.asarray(self.aerial_model(mask), dtype=np.float32)
            if aerial.shape != mask.shape or not np.all(np.isfinite(aerial)):
                raise ContractError(f"aerial model gave {aerial.shape} (finite: {np.isfinite(aerial).all()}) "
                                    f"for a {mask.shape} mask")
            basis = [aerial]
        if float(basis[0].std()) < 1e-6:
            return FixedReference(mask, s.blur_sigma_px)
        printed_fraction = float(np.count_nonzero(simulated > 0.5)) / simulated.size
        return ApproximatePrint(basis, printed_fraction, s.blur_sigma_px)

    def _refine(self, reference: Reference, sim_smooth: np.ndarray, start: np.ndarray,
                inside: np.ndarray, huber_k: float, edge_drift: bool = False) -> Refined | None:
        """ECC from the correlation peak, with model selection for rotation and scale; the
        geometry's polish weighs residuals by Huber's rule at ``huber_k`` (0: plain least
        squares; the second look uses 0, see ``AlignSettings.polish_huber_k``)."""
        s = self.settings
        shape = (sim_smooth.shape[0], sim_smooth.shape[1])
        if s.ecc_motion == "affine":
            refined = ecc_affine(reference.render()[0], sim_smooth, start, inside, s.ecc_max_iterations)
        else:
            similarity = s.ecc_motion == "similarity" and self._spread_supports_rotation_scale(
                reference.render()[0], inside)
            refined = None
            if s.ecc_coarse_to_fine:
                # Geometry and the reference's threshold and PSF shape fitted on a quarter of the
                # samples; then the geometry alone polished on every other pixel.
                before = reference.snapshot()
                coarse = ecc_similarity(reference, sim_smooth, start, inside, similarity,
                                        s.ecc_max_iterations, s.ecc_tolerance_px, stride=COARSE_STRIDE,
                                        huber_k=huber_k)
                if coarse is not None and self._near(coarse.matrix, start, shape, edge_drift):
                    refined = ecc_similarity(reference, sim_smooth, coarse.matrix, inside, similarity,
                                             s.ecc_max_iterations, s.ecc_tolerance_px, fit_reference=False,
                                             huber_k=huber_k)
                if refined is None:
                    reference.restore(before)
            if refined is None:
                refined = ecc_similarity(reference, sim_smooth, start, inside, similarity,
                                         s.ecc_max_iterations, s.ecc_tolerance_px, huber_k=huber_k)
            if refined is not None and similarity and self._small_rotation_scale(refined.matrix, shape):
                # The reference stays as the similarity fit left it, or its PSF shape would
                # absorb the misfit that rotation and scale explain.
                shift_only = ecc_similarity(reference, sim_smooth, refined.matrix, inside, False,
                                            s.ecc_max_iterations, s.ecc_tolerance_px, fit_reference=False,
                                            huber_k=huber_k)
                if shift_only is not None:
                    misfit = max(1.0 - shift_only.correlation, 1e-9)
                    gain = (refined.correlation - shift_only.correlation) / misfit
                    if gain < s.similarity_min_gain or gain < s.similarity_stretch_ratio * self._stretch_gain(
                            reference, sim_smooth, refined, inside, misfit, huber_k):
                        refined = shift_only
        if refined is None or not plausible(refined.matrix, s.max_rotation_deg, s.max_scale_change):
            return None
        if not self._near(refined.matrix, start, shape, edge_drift):
            return None
        return refined

    def _compact_shift(self, reference: Reference, matrix: np.ndarray, inside: np.ndarray) -> bool:
        """Whether ``matrix`` is a pure shift given because the pattern compared is too compact
        for rotation and scale (see ``_spread_supports_rotation_scale``)."""
        if self.settings.ecc_motion != "similarity" or not np.allclose(matrix[:2, :2], np.eye(2), atol=1e-12):
            return False
        return not self._spread_supports_rotation_scale(reference.render()[0], inside)

    def _unpinned_rotation_scale(self, reference: Reference, sim_smooth: np.ndarray, matrix: np.ndarray,
                                 inside: np.ndarray) -> bool:
        """Whether a pure-shift answer given because the pattern is too compact for rotation and
        scale (``matrix``, for which :meth:`_compact_shift` holds: the caller checks) is wrong at
        the corners: a similarity fit from it moves the corners by ``SHIFT_ONLY_MAX_CORNER_PX`` or
        more and explains at least ``similarity_min_gain`` of the shift's misfit, so the print is
        rotated or scaled by an amount the clip cannot measure."""
        s = self.settings
        shape = (sim_smooth.shape[0], sim_smooth.shape[1])
        template = reference.render()[0]
        shift_quality = correlation_after_warp(template, sim_smooth, matrix, inside)
        free = ecc_similarity(reference, sim_smooth, matrix, inside, True, s.ecc_max_iterations,
                              s.ecc_tolerance_px, fit_reference=False, huber_k=s.polish_huber_k)
        if free is None or self._small_rotation_scale(free.matrix, shape):
            return False
        gain = (free.correlation - shift_quality) / max(1.0 - shift_quality, 1e-9)
        return gain >= s.similarity_min_gain

    def _spread_supports_rotation_scale(self, template: np.ndarray, inside: np.ndarray) -> bool:
        """Whether the compared pattern is spread enough to pin rotation and scale down.

        Their lever is the RMS distance of the template's edges (weighted by squared gradient)
        from the edges' centre, against the half-diagonal where corner errors are measured:
        a feature's position misread by the approximate print by ``e`` px turns into a corner
        error of about ``e`` times their ratio. A clip showing one contact or a tight clump
        then gets a pure shift, not a scale fitted to a few features.
        """
        grad_x = cv2.Sobel(template, cv2.CV_32F, 1, 0, ksize=3)
        grad_y = cv2.Sobel(template, cv2.CV_32F, 0, 1, ksize=3)
        weight = np.where(inside, grad_x * grad_x + grad_y * grad_y, 0.0).astype(np.float64)
        total = float(weight.sum())
        if total <= 0.0:
            return False
        ys, xs = np.indices(template.shape, dtype=np.float64)
        cx, cy = float((weight * xs).sum()) / total, float((weight * ys).sum()) / total
        lever = math.sqrt(float((weight * ((xs - cx) ** 2 + (ys - cy) ** 2)).sum()) / total)
        return lever >= self.settings.similarity_min_spread * 0.5 * math.hypot(*template.shape)

    def _stretch_gain(self, reference: Reference, sim_smooth: np.ndarray, similarity: Refined,
                      inside: np.ndarray, misfit: float, huber_k: float) -> float:
        """Share of the shift-only misfit that a stretch (unequal x and y scale, which a
        farm's window does not produce) explains beyond the similarity: how much a
        parameter the geometry does not need gains from errors of the approximate print
        (line ends pulled back along one axis read as a stretch, and the similarity's
        scale splits it). 0 when ``similarity_stretch_ratio`` is 0."""
        s = self.settings
        if s.similarity_stretch_ratio <= 0.0:
            return 0.0
        stretched = ecc_similarity(reference, sim_smooth, similarity.matrix, inside, True,
                                   s.ecc_max_iterations, s.ecc_tolerance_px,
                                   fit_reference=False, stretch=True, huber_k=huber_k)
        if stretched is None:
            return 0.0
        return max(0.0, (stretched.correlation - similarity.correlation) / misfit)

    @staticmethod
    def _near(matrix: np.ndarray, start: np.ndarray, shape: tuple[int, int],
              edge_drift: bool = False) -> bool:
        """Whether a refinement kept the image centre within ``MAX_REFINE_DRIFT_PX`` of the peak; with
        ``edge_drift`` (the second look) plus what the rotation and scale it found move a point half
        the clip from the centre: the whole overlap's shift peak of a rotated or scaled print whose
        pattern lies along the clip's edges (a row's rail contacts) is off by up to that much."""
        params = similarity_params(matrix, shape)
        drift = float(np.hypot(*(params[:2] - similarity_params(start, shape)[:2])))
        allowed = MAX_REFINE_DRIFT_PX
        if edge_drift:
            allowed += float(np.hypot(params[2], params[3])) * 0.5 * max(shape)
        return drift <= allowed

    @staticmethod
    def _small_rotation_scale(matrix: np.ndarray, shape: tuple[int, int]) -> bool:
        """Whether rotation and scale move the corners so little that a pure shift may do."""
        a, b = similarity_params(matrix, shape)[2:]
        corner_px = 0.5 * float(np.hypot(*shape)) * float(np.hypot(a, b))
        return corner_px < SHIFT_ONLY_MAX_CORNER_PX

    def _refusal(self, quality: float, peak: PeakResult, decided: bool = False) -> str:
        """Why an answer is refused ("" when it is not); ``decided``: an ambiguous peak that refinement
        told apart from its repeats (:meth:`_decide_between_repeats`)."""
        s = self.settings
        if quality < s.quality_floor:
            return f"quality {quality:.3f} below floor {s.quality_floor:.3f}"
        if not decided and peak.peak > 0.0 and peak.second_peak >= s.ambiguity_ratio * peak.peak:
            return (f"ambiguous correlation peak ({peak.second_peak:.3f} vs {peak.peak:.3f}): "
                    "periodic or line-only pattern")
        if peak.at_limit:
            return f"shift at the search limit of {s.max_shift_px} px"
        return ""

    def warp(self, simulated: np.ndarray, reg: Registration) -> np.ndarray:
        """The print resampled into the mask frame (float32 [0, 1], uncovered pixels = 0)."""
        sim_f = validate_image(simulated)
        return np.clip(warp_to_mask(sim_f, np.asarray(reg.matrix, dtype=np.float64)), 0.0, 1.0)
