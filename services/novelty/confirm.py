"""Hybrid duplicate confirmation: an embedding neighbour first, then hashes, then local descriptors.

The dedupe stage misses re-simulations whose window moved further than its hash
bands reach, or whose print changed with another dose or focus. The encoder
still places such a result right next to its library entry, but a cosine
similarity cannot say "this is the same result". So when the nearest library
neighbour is nearly identical (similarity >= ``near_identity_similarity``), the
pair is checked on pixels:

1. **exact**: the same canonical pixels (:func:`shared.hashing.exact_digest`);
2. **hash path**: the result's mask is registered to the neighbour's mask by a
   translation search (:func:`services.dedupe.core.verify_shifted_match`, which
   also requires the masks to agree pixel for pixel on the overlap, so a mask
   defect is never merged), then the shift-robust spectral hash of the two mask
   overlaps and the pHash of the two binarised print overlaps must agree within
   ``mask_hash_radius_bits`` and ``print_hash_radius_bits`` (dose or focus moves
   print edges a little; a bridge or a missing feature moves the pHash a lot);
3. **descriptor path** (only when the hashes disagree or the masks cannot be
   registered by the translation search): ORB keypoints on both masks, a ratio
   test, a RANSAC similarity transform that must be a near-pure translation with
   at least ``min_inliers`` inliers, and, at that translation, masks that agree
   on the overlap up to slivers one pixel wide.

A confirmed pair becomes a :class:`DuplicateRecord` of the library entry
(``embedding+hash`` or ``embedding+descriptors``), with the similarity, the
shift, the hash distances or the inliers, and (capped) matched keypoint
coordinates for the explanation panel. Anything else is scored as usual: a
failed confirmation, or an image that cannot be loaded, never loses a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import cv2
import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from services.dedupe.core import DedupeSettings, verify_shifted_match
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


class ConfirmSettings(BaseModel):
    """Tunables of the confirmation (defaults measured with ``bench/hybrid_bench.py``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    near_identity_similarity: float = Field(0.97, ge=0.0, le=1.0)  # cosine gate on the neighbour
    max_candidates: int = Field(2, ge=1, le=10)  # neighbours above the gate that are checked
    max_shift_px: int = Field(56, ge=0, le=120)  # translation the registration searches
    min_overlap_fraction: float = Field(0.35, gt=0.0, le=1.0)  # of the clip area, after the shift
    mask_mismatch_max_px: int = Field(4, ge=0)  # mask pixels that may differ on the overlap
    mask_hash_radius_bits: int = Field(24, ge=0, le=256)  # spectral hash of the mask overlaps
    print_hash_radius_bits: int = Field(12, ge=0, le=64)  # pHash of the binarised print overlaps
    orb_features: int = Field(800, ge=50, le=5000)
    ratio_test: float = Field(0.8, gt=0.0, lt=1.0)
    ransac_threshold_px: float = Field(2.0, gt=0.0)
    min_inliers: int = Field(15, ge=4)
    max_scale_error: float = Field(0.02, ge=0.0)
    max_rotation_deg: float = Field(1.0, ge=0.0)
    descriptor_mask_mismatch_max_px: int = Field(8, ge=0)  # after dropping 1 px slivers
    max_panel_points: int = Field(40, ge=0, le=500)  # matched keypoints kept in the record


@dataclass(frozen=True)
class Clip:
    """A (mask, print) pair as the confirmation compares it: float [0, 1], one shape."""

    mask: np.ndarray
    printed: np.ndarray
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


def _overlap(shape: tuple[int, int], dx: int, dy: int) -> tuple[tuple[slice, slice], tuple[slice, slice]]:
    """Windows of ``a`` and ``b`` that see the same layout when ``b[y, x] == a[y + dy, x + dx]``."""
    h, w = shape
    in_a = (slice(max(0, dy), h + min(0, dy)), slice(max(0, dx), w + min(0, dx)))
    in_b = (slice(max(0, -dy), h + min(0, -dy)), slice(max(0, -dx), w + min(0, -dx)))
    return in_a, in_b


def _phash(binary: np.ndarray) -> int:
    digest = cv2.img_hash.pHash(binary.astype(np.uint8) * 255)
    return int.from_bytes(bytes(digest.ravel().tolist()), "big")


def _overlap_fraction(shape: tuple[int, int], dx: int, dy: int) -> float:
    h, w = shape
    return max(0, h - abs(dy)) * max(0, w - abs(dx)) / float(h * w)


# -- the hash path -----------------------------------------------------------------------------


def hash_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """Register the masks by translation, then compare the hashes of the overlaps."""
    dedupe = DedupeSettings(
        verify_max_shift_px=min(settings.max_shift_px, 96),
        mask_mismatch_max_px=settings.mask_mismatch_max_px,
        print_mismatch_max_px=library.mask.size,  # prints are judged by their hash below
    )
    match = verify_shifted_match(library.mask_u8, library.print_binary, query.mask_u8, query.print_binary, dedupe)
    if match is None:
        return False, {"registered": False}
    dx, dy = match["shift_px"]
    details: dict[str, Any] = {"registered": True, "shift_px": [dx, dy],
                               "mask_mismatch_px": match["mask_mismatch_px"],
                               "overlap_fraction": round(_overlap_fraction(library.mask.shape, dx, dy), 4)}
    if details["overlap_fraction"] < settings.min_overlap_fraction:
        return False, details
    in_lib, in_query = _overlap(library.mask.shape, dx, dy)
    mask_bits = hamming_distance(spectral_hash(library.mask[in_lib]).value, spectral_hash(query.mask[in_query]).value)
    print_bits = hamming_distance(_phash(library.print_binary[in_lib]), _phash(query.print_binary[in_query]))
    details.update(mask_hash_bits=mask_bits, print_hash_bits=print_bits)
    agreed = mask_bits <= settings.mask_hash_radius_bits and print_bits <= settings.print_hash_radius_bits
    return agreed, details


# -- the descriptor path -----------------------------------------------------------------------


def _sliver_free_mismatch(a_u8: np.ndarray, b_u8: np.ndarray) -> int:
    """Mask pixels that differ (> 2 levels), after dropping slivers one pixel wide (sub-pixel edges)."""
    diff = (np.abs(a_u8.astype(np.int16) - b_u8.astype(np.int16)) > 2).astype(np.uint8)
    if diff.any():
        diff = cv2.morphologyEx(diff, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    return int(np.count_nonzero(diff))


def descriptor_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """ORB keypoints on the masks, ratio test, RANSAC translation, then the masks at that translation."""
    orb = cv2.ORB_create(nfeatures=settings.orb_features, fastThreshold=10, edgeThreshold=15, patchSize=15)
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
    src = np.float32([kp_query[m.queryIdx].pt for m in good])
    dst = np.float32([kp_lib[m.trainIdx].pt for m in good])
    matrix, inlier_mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=settings.ransac_threshold_px, maxIters=2000,
        confidence=0.995,
    )
    if matrix is None or inlier_mask is None:
        return False, details
    inliers = inlier_mask.ravel().astype(bool)
    scale = float(np.hypot(matrix[0, 0], matrix[1, 0]))
    rotation_deg = float(np.degrees(np.arctan2(matrix[1, 0], matrix[0, 0])))
    dx, dy = int(round(float(matrix[0, 2]))), int(round(float(matrix[1, 2])))
    details.update(inliers=int(inliers.sum()), scale=round(scale, 4), rotation_deg=round(rotation_deg, 3),
                   shift_px=[dx, dy], overlap_fraction=round(_overlap_fraction(library.mask.shape, dx, dy), 4))
    cap = settings.max_panel_points
    details["points_result"] = [[round(float(x), 1), round(float(y), 1)] for x, y in src[inliers][:cap]]
    details["points_library"] = [[round(float(x), 1), round(float(y), 1)] for x, y in dst[inliers][:cap]]
    if (details["inliers"] < settings.min_inliers or abs(scale - 1.0) > settings.max_scale_error
            or abs(rotation_deg) > settings.max_rotation_deg
            or details["overlap_fraction"] < settings.min_overlap_fraction):
        return False, details
    # query (x, y) maps to library (x + dx, y + dy): query[y, x] == library[y + dy, x + dx]
    in_lib, in_query = _overlap(library.mask.shape, dx, dy)
    mismatch = _sliver_free_mismatch(library.mask_u8[in_lib], query.mask_u8[in_query])
    details["mask_mismatch_px"] = mismatch
    return mismatch <= settings.descriptor_mask_mismatch_max_px, details


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
        return Confirmation("hash", details)
    if library.mask.shape != query.mask.shape:
        return None
    agreed, found = descriptor_path(library, query, settings)
    metrics.CONFIRMATIONS.labels("descriptors", "confirmed" if agreed else "rejected").inc()
    if agreed:
        return Confirmation("descriptors", {**found, "hash_path": details})
    return None


class HybridConfirmer:
    """The novelty core's ``confirm`` hook (see the module docstring)."""

    def __init__(self, load: ImageLoadFn, settings: ConfirmSettings | None = None,
                 library: Callable[[], LibraryState | None] | None = None) -> None:
        self.load = load
        self.settings = settings or ConfirmSettings()
        self._library = library
        self.last_seconds = 0.0

    @classmethod
    def from_settings(cls, settings: Any, library: Callable[[], LibraryState | None]) -> HybridConfirmer:
        """Built from the novelty service's settings (blob root, image limit, similarity gate)."""
        from shared.blobstore import LocalBlobStore
        from shared.imageref import ImageLoader

        loader = ImageLoader(LocalBlobStore(settings.blob_root), settings.max_image_pixels)
        confirm = ConfirmSettings(near_identity_similarity=settings.near_identity_similarity)
        return cls(loader, confirm, library)

    def _library_refs(self, neighbour: Neighbour) -> tuple[ImageRef | None, ImageRef | None]:
        if neighbour.mask is not None and neighbour.simulated is not None:
            return neighbour.mask, neighbour.simulated
        state = self._library() if self._library is not None else None
        item = state.get(neighbour.id) if state is not None else None
        return (item.mask, item.simulated) if item is not None else (None, None)

    def candidates(self, neighbours: Sequence[Neighbour]) -> list[Neighbour]:
        gate = self.settings.near_identity_similarity
        return [n for n in neighbours if n.similarity >= gate][: self.settings.max_candidates]

    def __call__(self, item: EmbeddedResult, vector: np.ndarray, neighbours: list[Neighbour]) -> Output | None:
        del vector  # the neighbours already carry the similarity
        started = time.perf_counter()
        try:
            return self._confirm(item, neighbours)
        finally:
            self.last_seconds = time.perf_counter() - started

    def _confirm(self, item: EmbeddedResult, neighbours: list[Neighbour]) -> Output | None:
        candidates = self.candidates(neighbours)
        if not candidates:
            metrics.CONFIRMATIONS.labels("gate", "below_similarity").inc()
            return None
        try:
            query = Clip(self.load(item.mask), self.load(item.aligned_simulated))
        except InputError:
            metrics.CONFIRMATIONS.labels("gate", "image_error").inc()
            return None
        for neighbour in candidates:
            mask_ref, print_ref = self._library_refs(neighbour)
            if mask_ref is None or print_ref is None:
                metrics.CONFIRMATIONS.labels("gate", "no_library_image").inc()
                continue
            try:
                library = Clip(self.load(mask_ref), self.load(print_ref))
            except InputError:
                metrics.CONFIRMATIONS.labels("gate", "image_error").inc()
                continue
            found = confirm_pair(library, query, self.settings)
            if found is not None:
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
