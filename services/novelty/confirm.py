"""Hybrid duplicate confirmation: an embedding neighbour first, then hashes, then local descriptors.

The dedupe stage misses re-simulations whose window moved further than its hash
bands reach, or whose print changed with another dose or focus. The encoder
still places such a result near its library entry, but a cosine similarity
cannot say "this is the same result". So when the nearest library neighbour is
near enough (similarity >= the gate), the pair is checked on pixels. Where the
gate belongs depends on the encoder, so it is calibrated per model
(:mod:`shared.calibration.near_identity`: a low quantile of the similarity of
re-simulation pairs, written into the thresholds file by ``lithowatch
calibrate``); ``near_identity_similarity`` is the fallback when the thresholds
file has none. The gate only decides what is worth checking: it never confirms.

An encoder trained on re-simulations with large window shifts puts the true
entry first or among the first three (an untrained one: among the nearest few
dozen), so the ``candidate_pool`` nearest entries above the gate are ranked by a
coarse cross-correlation of the masks (:func:`coarse_score`, ~0.1 ms each,
downsampled masks cached) and the best ``max_candidates`` are checked:

1. **exact**: the same canonical pixels (:func:`shared.hashing.exact_digest`);
2. **hash path**: the result's mask is registered to the neighbour's mask by a
   translation search (:func:`register`: the tied shifts of
   :func:`services.dedupe.core.verify_shifted_match`, where the masks must agree
   pixel for pixel on the overlap, so a mask defect is never merged), and the
   binarised prints are judged by :func:`judge`: with ``print_edge_band_px`` > 0
   they must keep one topology (the same components matched one to one, the
   same holes: nothing bridged, pinched off, vanished or appeared, so a
   print-only hotspot is scored) and differ only within that band of both
   prints' edges plus slivers up to ``print_tolerance_px`` wide, up to
   ``print_mismatch_max_px`` pixels (:mod:`services.novelty.print_check`; with
   0, only the latter, as the dedupe stage judges prints). Between results whose
   labels name different process conditions (``process_labels``), a feature at
   the resolution limit that vanished or appeared is forgiven
   (``marginal_width_fraction``; a bridge, a pinch, a sidelobe or a feature
   printing near its drawn width never is; with ``across_process =
   "mask_only"`` nothing the print shows refuses such a pair, it is only
   recorded); then the
   shift-robust spectral hash of the two mask overlaps must agree within
   ``mask_hash_radius_bits``. The pHash of
   the print overlaps is recorded but does not decide: on sparse prints
   (contact arrays) it moved 17-24 of 64 bits between re-simulations whose
   prints agreed to the pixel, while the pixel check above catches a bridge or
   a missing feature;
3. **descriptor path** (only when the hashes disagree or the masks cannot be
   registered by the translation search): ORB keypoints on both masks, a ratio
   test, a RANSAC similarity transform that must be a near-pure translation with
   at least ``min_inliers`` inliers, and, at that translation, masks that agree
   on the overlap up to slivers one pixel wide, and prints judged as above.

Either path's registration is refused when another shift at which the masks
match as well sees more of the pair and disagrees only where the accepted one
did not look (:mod:`services.novelty.blind_spot`): on a periodic layout a shift
one period off can hide a defect near the border outside the overlap.

A confirmed pair becomes a :class:`DuplicateRecord` of the library entry
(``embedding+hash`` or ``embedding+descriptors``), with the similarity, the
shift, the hash distances or the inliers, and (capped) matched keypoint
coordinates for the explanation panel. Anything else is scored as usual: a
failed confirmation, or an image that cannot be loaded, never loses a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np

from services.dedupe.core import DedupeSettings, tied_shifts
from services.novelty.blind_spot import blind_spot_conflict
from services.novelty.blind_spot import overlap_windows as _overlap
from services.novelty.confirm_settings import ConfirmSettings
from services.novelty.print_check import PrintJudgement, judge_prints
from shared import metrics
from shared.contracts import DuplicateRecord, EmbeddedResult, ImageRef, Neighbour, Topics
from shared.errors import ImageError, InputError
from shared.hashing import exact_digest, hamming_distance, spectral_hash
from shared.imaging import to_uint8
from shared.index import LibraryState
from shared.runtime import Output

STAGE = "novelty"
ImageLoadFn = Callable[[ImageRef], np.ndarray]
Path_ = Literal["exact", "hash", "descriptors"]
REFINE_PX = 2  # integer shifts tried around the RANSAC translation


Process = tuple[object, ...]


def process_of(labels: Mapping[str, object] | None, keys: Sequence[str]) -> Process | None:
    """The values of ``keys`` in a result's labels (its process condition), or None when one is missing."""
    if not keys or labels is None or any(labels.get(key) is None for key in keys):
        return None
    return tuple(labels[key] for key in keys)


@dataclass(frozen=True)
class Clip:
    """A (mask, print) pair as the confirmation compares it: float [0, 1], one shape.

    ``process`` is the result's process condition (:func:`process_of`), None when unknown."""

    mask: np.ndarray
    printed: np.ndarray
    process: Process | None = None
    mask_u8: np.ndarray = field(init=False, repr=False)
    print_binary: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if self.mask.ndim != 2 or self.mask.shape != self.printed.shape:
            raise ImageError(
                f"mask {self.mask.shape} and print {self.printed.shape} must be one 2-D shape",
                reason="image_shape",
            )
        object.__setattr__(self, "mask_u8", to_uint8(self.mask))
        object.__setattr__(self, "print_binary", self.printed > 0.5)


@dataclass(frozen=True)
class Confirmation:
    """A confirmed duplicate: which path said so, and what it measured."""

    path: Path_
    details: dict[str, Any]

    @property
    def method(self) -> Literal["embedding+hash", "embedding+descriptors"]:
        return "embedding+descriptors" if self.path == "descriptors" else "embedding+hash"


def _phash(binary: np.ndarray) -> int:
    digest = cv2.img_hash.pHash(binary.astype(np.uint8) * 255)
    return int.from_bytes(np.asarray(digest, dtype=np.uint8).tobytes(), "big")


def _overlap_fraction(shape: tuple[int, int], dx: int, dy: int) -> float:
    h, w = shape
    return max(0, h - abs(dy)) * max(0, w - abs(dx)) / float(h * w)


# -- ranking the candidates -------------------------------------------------------------------


def coarse_mask(mask: np.ndarray, settings: ConfirmSettings) -> np.ndarray:
    """The mask downsampled by ``coarse_scale`` (float32), what :func:`coarse_score` compares."""
    h, w = mask.shape
    size = (max(8, w // settings.coarse_scale), max(8, h // settings.coarse_scale))
    return np.ascontiguousarray(cv2.resize(mask.astype(np.float32), size, interpolation=cv2.INTER_AREA))


def coarse_score(library_coarse: np.ndarray, query_coarse: np.ndarray, settings: ConfirmSettings) -> float:
    """Peak normalised cross-correlation of the query's central coarse mask over the entry's.

    About 0.1 ms: cheap enough to rank a few dozen embedding neighbours and check
    only the best on pixels, so a weak encoder that puts the true entry at rank
    10 instead of 1 still finds it.
    """
    if library_coarse.shape != query_coarse.shape:
        return -1.0
    h, w = query_coarse.shape
    margin = min(-(-settings.max_shift_px // settings.coarse_scale), (min(h, w) - 4) // 2)
    template = query_coarse[margin:h - margin, margin:w - margin]
    if float(template.std()) < 1e-6 or float(library_coarse.std()) < 1e-6:
        return 1.0 if np.array_equal(library_coarse, query_coarse) else 0.0
    scores = cv2.matchTemplate(library_coarse, template, cv2.TM_CCOEFF_NORMED)
    return float(np.nan_to_num(scores, nan=-1.0, posinf=-1.0, neginf=-1.0).max())


# -- the hash path -----------------------------------------------------------------------------


def other_process(library: Clip, query: Clip) -> bool:
    """Whether both results name their process condition and the two differ."""
    return library.process is not None and query.process is not None and library.process != query.process


def marginal_fraction(library: Clip, query: Clip, settings: ConfirmSettings) -> float:
    """``marginal_width_fraction`` when the pair's process conditions differ, else 0 (nothing forgiven)."""
    return settings.marginal_width_fraction if other_process(library, query) else 0.0


def judge(
    library_print: np.ndarray, query_print: np.ndarray, settings: ConfirmSettings,
    drawn: np.ndarray | None = None, marginal: float = 0.0,
) -> PrintJudgement:
    """The prints of one overlap (masks agreeing there, ``drawn`` the mask), judged as ``settings`` say;
    ``marginal`` > 0 forgives marginal features (:func:`marginal_fraction`)."""
    return judge_prints(library_print, query_print, tolerance_px=settings.print_tolerance_px,
                        mismatch_max_px=settings.print_mismatch_max_px,
                        edge_band_px=settings.print_edge_band_px,
                        drawn=drawn, marginal_width_fraction=marginal)


def mask_only(library: Clip, query: Clip, settings: ConfirmSettings) -> bool:
    """Whether the hash path takes agreeing masks alone as the identity (``across_process``)."""
    return settings.across_process == "mask_only" and other_process(library, query)


def register(library: Clip, query: Clip, settings: ConfirmSettings) -> dict[str, Any] | None:
    """The smallest shift at which the masks agree on the overlap and the prints pass :func:`judge`.

    As :func:`services.dedupe.core.verify_shifted_match` (same tied shifts, same
    order, same mask check), with the prints judged by :func:`judge`. Under
    ``across_process = "mask_only"`` and other process conditions, when no shift's
    prints pass, the smallest shift with agreeing masks, marked
    ``print_refused_across_process``."""
    if library.mask.shape != query.mask.shape:
        return None
    tolerance = DedupeSettings().mask_tolerance_levels
    marginal = marginal_fraction(library, query, settings)
    overridden = mask_only(library, query, settings)
    fallback: dict[str, Any] | None = None  # another process condition: the print's change recorded
    for dx, dy in tied_shifts(library.mask_u8, query.mask_u8, min(settings.max_shift_px, 96)):
        in_lib, in_query = _overlap(library.mask.shape, dx, dy)
        diff = np.abs(library.mask_u8[in_lib].astype(np.int16) - query.mask_u8[in_query].astype(np.int16))
        mask_mismatch = int(np.count_nonzero(diff > tolerance))
        if mask_mismatch > settings.mask_mismatch_max_px:
            continue
        verdict = judge(library.print_binary[in_lib], query.print_binary[in_query], settings,
                        library.mask_u8[in_lib] > 127, marginal)
        found = {"shift_px": [int(dx), int(dy)], "mask_mismatch_px": mask_mismatch, **verdict.details()}
        if verdict.accepted:
            return found
        if overridden and fallback is None:  # kept unless a later shift's prints agree as well
            fallback = {**found, "print_refused_across_process": True}
    return fallback


def _blind_spot(
    library: Clip, query: Clip, shift: tuple[int, int], settings: ConfirmSettings
) -> list[int] | None:
    """A registration that sees more of the pair and disagrees only where ``shift`` did not look."""
    found = blind_spot_conflict(
        library.mask_u8, library.print_binary, query.mask_u8, query.print_binary, shift,
        max_shift_px=min(settings.max_shift_px, 96),
        mask_tolerance_levels=DedupeSettings().mask_tolerance_levels,
        mask_mismatch_max_px=settings.mask_mismatch_max_px, print_tolerance_px=settings.print_tolerance_px,
        print_mismatch_max_px=settings.print_mismatch_max_px, print_edge_band_px=settings.print_edge_band_px,
        marginal_width_fraction=marginal_fraction(library, query, settings),
    )
    if found is None:
        return None
    metrics.CONFIRMATIONS.labels("gate", "blind_spot").inc()
    return [found[0], found[1]]


def hash_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """Register the masks by translation, then compare the hashes of the overlaps."""
    match = register(library, query, settings)
    if match is None:
        return False, {"registered": False}
    dx, dy = match["shift_px"]
    details: dict[str, Any] = {"registered": True, **match,
                               "overlap_fraction": round(_overlap_fraction(library.mask.shape, dx, dy), 4)}
    if details["overlap_fraction"] < settings.min_overlap_fraction:
        return False, details
    in_lib, in_query = _overlap(library.mask.shape, dx, dy)
    mask_bits = hamming_distance(
        spectral_hash(library.mask[in_lib]).value, spectral_hash(query.mask[in_query]).value
    )
    print_bits = hamming_distance(_phash(library.print_binary[in_lib]), _phash(query.print_binary[in_query]))
    details.update(mask_hash_bits=mask_bits, print_hash_bits=print_bits)
    if mask_bits > settings.mask_hash_radius_bits:
        return False, details
    hidden = _blind_spot(library, query, (dx, dy), settings)
    if hidden is not None:
        details["blind_spot_shift_px"] = hidden
        return False, details
    return True, details


# -- the descriptor path -----------------------------------------------------------------------


def _sliver_free_mismatch(a_u8: np.ndarray, b_u8: np.ndarray) -> int:
    """Mask pixels that differ (> 2 levels), after dropping slivers one pixel wide (sub-pixel edges)."""
    diff = (np.abs(a_u8.astype(np.int16) - b_u8.astype(np.int16)) > 2).astype(np.uint8)
    if not diff.any():
        return 0
    return int(np.count_nonzero(cv2.morphologyEx(diff, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))))


def descriptor_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """ORB keypoints on the masks, ratio test, RANSAC translation, then the masks at that translation."""
    orb = cv2.ORB.create(nfeatures=settings.orb_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
    kp_lib, des_lib = orb.detectAndCompute(library.mask_u8, None)
    kp_query, des_query = orb.detectAndCompute(query.mask_u8, None)
    details: dict[str, Any] = {"keypoints": [len(kp_lib), len(kp_query)], "inliers": 0}
    if des_lib is None or des_query is None or len(kp_lib) < 2 or len(kp_query) < settings.min_inliers:
        return False, details
    pairs = cv2.BFMatcher(cv2.NORM_HAMMING).knnMatch(des_query, des_lib, k=2)
    good = [p[0] for p in pairs if len(p) == 2 and p[0].distance < settings.ratio_test * p[1].distance]
    details["ratio_matches"] = len(good)
    if len(good) < settings.min_inliers:
        return False, details
    src = np.array([kp_query[m.queryIdx].pt for m in good], dtype=np.float32)
    dst = np.array([kp_lib[m.trainIdx].pt for m in good], dtype=np.float32)
    matrix, inlier_mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_threshold_px, maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or inlier_mask is None:
        return False, details
    inliers = inlier_mask.ravel().astype(bool)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    rotation_deg = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    dx, dy = round(float(matrix[0, 2])), round(float(matrix[1, 2]))
    overlap = round(_overlap_fraction(library.mask.shape, dx, dy), 4)
    details.update(inliers=int(inliers.sum()), scale=round(scale, 4), rotation_deg=round(rotation_deg, 3),
                   shift_px=[dx, dy], overlap_fraction=overlap)
    cap = settings.max_panel_points
    details["points_result"] = [[round(float(x), 1), round(float(y), 1)] for x, y in src[inliers][:cap]]
    details["points_library"] = [[round(float(x), 1), round(float(y), 1)] for x, y in dst[inliers][:cap]]
    if (details["inliers"] < settings.min_inliers or abs(scale - 1.0) > settings.max_scale_error
            or abs(rotation_deg) > settings.max_rotation_deg
            or details["overlap_fraction"] < settings.min_overlap_fraction):
        return False, details
    # query (x, y) maps to library (x + dx, y + dy): query[y, x] == library[y + dy, x + dx];
    # keypoints are located to a pixel or so, so the integer shifts around the estimate are tried
    best: tuple[int, int, int] | None = None
    for ddy in range(-REFINE_PX, REFINE_PX + 1):
        for ddx in range(-REFINE_PX, REFINE_PX + 1):
            in_lib, in_query = _overlap(library.mask.shape, dx + ddx, dy + ddy)
            raw = int(np.count_nonzero(np.abs(library.mask_u8[in_lib].astype(np.int16)
                                              - query.mask_u8[in_query].astype(np.int16)) > 2))
            if best is None or raw < best[0]:
                best = (raw, dx + ddx, dy + ddy)
    assert best is not None
    in_lib, in_query = _overlap(library.mask.shape, best[1], best[2])
    mismatch = _sliver_free_mismatch(library.mask_u8[in_lib], query.mask_u8[in_query])
    details["mask_mismatch_px"], details["shift_px"] = mismatch, [best[1], best[2]]
    if mismatch > settings.descriptor_mask_mismatch_max_px:
        return False, details
    verdict = judge(library.print_binary[in_lib], query.print_binary[in_query], settings,
                    library.mask_u8[in_lib] > 127, marginal_fraction(library, query, settings))
    details.update(verdict.details())
    if not verdict.accepted:
        return False, details
    hidden = _blind_spot(library, query, (best[1], best[2]), settings)
    if hidden is not None:
        details["blind_spot_shift_px"] = hidden
        return False, details
    details["print_hash_bits"] = hamming_distance(
        _phash(library.print_binary[in_lib]), _phash(query.print_binary[in_query])
    )
    return True, details


# -- the decision ------------------------------------------------------------------------------


def confirm_pair(library: Clip, query: Clip, settings: ConfirmSettings) -> Confirmation | None:
    """Whether ``query`` is a re-simulation of ``library`` (and how that was shown), or None."""
    if library.mask.shape != query.mask.shape:
        agreed, details = False, {"registered": False, "reason": "shape"}
    elif exact_digest(library.mask, library.printed) == exact_digest(query.mask, query.printed):
        metrics.CONFIRMATIONS.labels("exact", "confirmed").inc()
        return Confirmation("exact", {"exact": True, "shift_px": [0, 0]})
    else:
        agreed, details = hash_path(library, query, settings)
    metrics.CONFIRMATIONS.labels("hash", "confirmed" if agreed else "rejected").inc()
    if agreed:
        _count_print_override(details)
        return Confirmation("hash", details)
    if library.mask.shape != query.mask.shape:
        return None
    agreed, found = descriptor_path(library, query, settings)
    metrics.CONFIRMATIONS.labels("descriptors", "confirmed" if agreed else "rejected").inc()
    if agreed:
        _count_print_override(found)
        return Confirmation("descriptors", {**found, "hash_path": details})
    return None


def _count_print_override(details: dict[str, Any]) -> None:
    """A confirmation whose prints differed by marginal features only (``print``, ``marginal_forgiven``),
    or that the print check refused but ``across_process = "mask_only"`` let through (``mask_only``)."""
    if details.get("print_refused_across_process"):
        metrics.CONFIRMATIONS.labels("print", "mask_only").inc()
    elif details.get("print_topology") == "marginal":
        metrics.CONFIRMATIONS.labels("print", "marginal_forgiven").inc()


class HybridConfirmer:
    """The novelty core's ``confirm`` hook (see the module docstring)."""

    def __init__(self, load: ImageLoadFn, settings: ConfirmSettings | None = None,
                 library: Callable[[], LibraryState | None] | None = None,
                 gate: Callable[[], float | None] | None = None) -> None:
        self.load = load
        self.settings = settings or ConfirmSettings()
        self._library = library
        self._gate = gate
        self.last_seconds = 0.0
        self.coarse_cache_size = 8192  # downsampled library masks (16 KiB each at 256 px)
        self._coarse_cache: dict[tuple[str, str], np.ndarray] = {}

    @classmethod
    def from_settings(
        cls, settings: Any, library: Callable[[], LibraryState | None],
        gate: Callable[[], float | None] | None = None,
    ) -> HybridConfirmer:
        """Built from the novelty service's settings (blob root, image limit, pool sizes); the
        similarity gate is the setting when given, else what ``gate`` says (the thresholds file)."""
        from shared.blobstore import LocalBlobStore
        from shared.imageref import ImageLoader

        loader = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
        overrides: dict[str, Any] = {
            "candidate_pool": settings.confirm_candidate_pool,
            "max_candidates": settings.confirm_max_candidates,
            "marginal_width_fraction": settings.confirm_marginal_width_fraction,
            "process_labels": tuple(k.strip() for k in settings.confirm_process_labels.split(",")
                                    if k.strip()),
            "across_process": settings.confirm_across_process,
        }
        if settings.near_identity_similarity is not None:
            overrides["near_identity_similarity"] = settings.near_identity_similarity
            gate = None
        return cls(loader, ConfirmSettings(**overrides), library, gate)

    @property
    def gate(self) -> float:
        """The similarity gate in force: the calibrated value when there is one, else the settings'."""
        calibrated = self._gate() if self._gate is not None else None
        return self.settings.near_identity_similarity if calibrated is None else calibrated

    def _library_refs(self, neighbour: Neighbour) -> tuple[ImageRef | None, ImageRef | None]:
        if neighbour.mask is not None and neighbour.simulated is not None:
            return neighbour.mask, neighbour.simulated
        state = self._library() if self._library is not None else None
        item = state.get(neighbour.id) if state is not None else None
        return (item.mask, item.simulated) if item is not None else (None, None)

    def candidates(
        self, neighbours: Sequence[Neighbour], vector: np.ndarray, exclude: str
    ) -> list[Neighbour]:
        """Entries above the gate: the core's neighbours plus, when the library is at hand, the pool."""
        gate = self.gate
        pool = list(neighbours)
        if not pool or max(n.similarity for n in pool) < gate:
            return []  # the nearest entry is below the gate, so is everything farther
        state = self._library() if self._library is not None else None
        if state is not None and self.settings.candidate_pool > len(pool):
            seen = {n.id for n in pool}
            more = state.neighbours(vector, self.settings.candidate_pool, exclude={exclude})
            pool.extend(n for n in more if n.id not in seen)
        return [n for n in pool if n.similarity >= gate][: self.settings.candidate_pool]

    def __call__(
        self, item: EmbeddedResult, vector: np.ndarray, neighbours: list[Neighbour]
    ) -> Output | None:
        started = time.perf_counter()
        try:
            return self._confirm(item, vector, neighbours)
        finally:
            self.last_seconds = time.perf_counter() - started

    def _coarse(self, entry_id: str, ref: ImageRef) -> np.ndarray:
        key = (entry_id, ref.sha256)
        cached = self._coarse_cache.pop(key, None)
        if cached is None:
            cached = coarse_mask(self.load(ref), self.settings)
        self._coarse_cache[key] = cached  # most recently used last
        while len(self._coarse_cache) > self.coarse_cache_size:
            del self._coarse_cache[next(iter(self._coarse_cache))]
        return cached

    def _confirm(
        self, item: EmbeddedResult, vector: np.ndarray, neighbours: list[Neighbour]
    ) -> Output | None:
        candidates = self.candidates(neighbours, vector, item.result_id)
        if not candidates:
            metrics.CONFIRMATIONS.labels("gate", "below_similarity").inc()
            return None
        try:
            query = Clip(self.load(item.mask), self.load(item.aligned_simulated),
                         process_of(item.labels, self.settings.process_labels))
        except InputError:
            metrics.CONFIRMATIONS.labels("gate", "image_error").inc()
            return None
        query_coarse = coarse_mask(query.mask, self.settings)
        ranked: list[tuple[float, Neighbour, ImageRef, ImageRef]] = []
        for neighbour in candidates:
            mask_ref, print_ref = self._library_refs(neighbour)
            if mask_ref is None or print_ref is None:
                metrics.CONFIRMATIONS.labels("gate", "no_library_image").inc()
                continue
            try:
                score = coarse_score(self._coarse(neighbour.id, mask_ref), query_coarse, self.settings)
            except InputError:
                metrics.CONFIRMATIONS.labels("gate", "image_error").inc()
                continue
            ranked.append((score, neighbour, mask_ref, print_ref))
        ranked.sort(key=lambda r: -r[0])
        for score, neighbour, mask_ref, print_ref in ranked[: self.settings.max_candidates]:
            try:
                library = Clip(self.load(mask_ref), self.load(print_ref),
                               process_of(neighbour.labels, self.settings.process_labels))
            except InputError:
                metrics.CONFIRMATIONS.labels("gate", "image_error").inc()
                continue
            found = confirm_pair(library, query, self.settings)
            if found is not None:
                found.details["coarse_ncc"] = round(score, 4)
                return Output(Topics.DUPLICATES, self.record(item, neighbour, found), item.result_id)
        return None

    @staticmethod
    def record(item: EmbeddedResult, neighbour: Neighbour, found: Confirmation) -> DuplicateRecord:
        return DuplicateRecord(
            result_id=item.result_id,
            duplicate_of=neighbour.id,
            method=found.method,
            distance=round(1.0 - neighbour.similarity, 6),
            stage=STAGE,
            labels=dict(item.labels),
            produced_at=item.produced_at,
            details={"similarity": round(neighbour.similarity, 6), "path": found.path,
                     "library_provisional": neighbour.provisional, **found.details},
        )
