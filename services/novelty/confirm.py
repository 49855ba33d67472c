"""Hybrid duplicate confirmation: an embedding neighbour first, then hashes, then local descriptors.

The dedupe stage misses re-simulations whose window moved further than its hash
bands reach, or whose print changed with another dose or focus. The encoder
still places such a result near its library entry, but a cosine similarity
cannot say "this is the same result". So the ``candidate_pool`` nearest entries
above a similarity gate (calibrated per model by ``lithowatch calibrate``,
:mod:`toolkit.calibration.near_identity`; ``near_identity_similarity`` is the
fallback) are ranked by a coarse cross-correlation of the masks
(:func:`coarse_score`) and the best ``max_candidates`` checked on pixels with
:mod:`shared.verification`. The gate never confirms; the pixels do:

1. **exact**: the same canonical pixels (:func:`shared.hashing.exact_digest`);
2. **hash path** (:func:`register`, :func:`hash_path`): a tied shift of the
   translation search where the masks agree pixel for pixel on the overlap and
   the prints pass :func:`shared.verification.judge_prints` (``print_edge_band_px``
   > 0: one topology, differences only near both prints' edges). Between results
   whose labels name different process conditions (``process_labels``),
   marginal features may vanish or appear (``marginal_width_fraction``), and
   with ``across_process = "mask_only"`` the print's change is recorded but
   refuses nothing. The spectral hashes of the mask overlaps must then agree
   within ``mask_hash_radius_bits`` (the prints' pHash is only recorded);
3. **descriptor path** (when the hash path refuses):
   :func:`shared.verification.register_by_descriptors`, then the prints as above.

Either path's shift is refused when another one hides a difference in its blind
spot (:func:`shared.verification.blind_spot_conflict`). A confirmed pair becomes
a :class:`DuplicateRecord` of the library entry (``embedding+hash`` or
``embedding+descriptors``) with what was measured. Anything else is scored as
usual: a failed confirmation, or an unloadable image, never loses a result.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from services.novelty import NAME as STAGE
from services.novelty.confirm_settings import ConfirmSettings
from shared import metrics, verification
from shared.contracts import DuplicateRecord, EmbeddedResult, ImageRef, Neighbour
from shared.errors import ImageError, InputError
from shared.hashing import exact_digest
from shared.imaging import to_uint8
from shared.index import LibraryState
from shared.verification import PixelTolerances

ImageLoadFn = Callable[[ImageRef], np.ndarray]
Path_ = Literal["exact", "hash", "descriptors"]


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


# -- ranking the candidates -------------------------------------------------------------------


def coarse_mask(mask: np.ndarray, settings: ConfirmSettings) -> np.ndarray:
    """The mask downsampled by ``coarse_scale`` (float32), what :func:`coarse_score` compares."""
    return verification.downsample_mask(mask, settings.coarse_scale)


def coarse_score(library_coarse: np.ndarray, query_coarse: np.ndarray, settings: ConfirmSettings) -> float:
    """Peak normalised cross-correlation of the query's central coarse mask over the entry's."""
    return verification.coarse_ncc(library_coarse, query_coarse, settings.max_shift_px, settings.coarse_scale)


# -- what the pixel checks allow for a pair ----------------------------------------------------


def other_process(library: Clip, query: Clip) -> bool:
    """Whether both results name their process condition and the two differ."""
    return library.process is not None and query.process is not None and library.process != query.process


def tolerances(library: Clip, query: Clip, settings: ConfirmSettings) -> PixelTolerances:
    """The pixel checks' limits for this pair: marginal features are forgiven (``marginal_width_fraction``)
    only when the pair's process conditions differ."""
    marginal = settings.marginal_width_fraction if other_process(library, query) else 0.0
    return settings.pixel_tolerances(marginal)


# -- the two paths -----------------------------------------------------------------------------


def register(library: Clip, query: Clip, settings: ConfirmSettings) -> dict[str, Any] | None:
    """The smallest shift at which the masks agree on the overlap and the prints pass (details), or None.

    Under ``across_process = "mask_only"`` and other process conditions, when no
    shift's prints pass, the smallest shift with agreeing masks, marked
    ``print_refused_across_process``."""
    overridden = settings.across_process == "mask_only" and other_process(library, query)
    fallback: dict[str, Any] | None = None  # another process condition: the print's change recorded
    for match in verification.shifted_matches(library.mask_u8, library.print_binary, query.mask_u8,
                                              query.print_binary, tolerances(library, query, settings)):
        if match.prints.accepted:
            return match.details()
        if overridden and fallback is None:  # kept unless a later shift's prints agree as well
            fallback = {**match.details(), "print_refused_across_process": True}
    return fallback


def _blind_spot(library: Clip, query: Clip, shift: tuple[int, int], settings: ConfirmSettings
                ) -> list[int] | None:
    """A registration that sees more of the pair and disagrees only where ``shift`` did not look."""
    found = verification.blind_spot_conflict(library.mask_u8, library.print_binary, query.mask_u8,
                                             query.print_binary, shift, tolerances(library, query, settings))
    if found is None:
        return None
    metrics.CONFIRMATIONS.labels("gate", "blind_spot").inc()
    return [found[0], found[1]]


def hash_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """Register the masks by translation (:func:`register`), then compare the hashes of the overlaps."""
    match = register(library, query, settings)
    if match is None:
        return False, {"registered": False}
    dx, dy = match["shift_px"]
    overlap = round(verification.overlap_fraction(library.mask.shape, dx, dy), 4)
    details: dict[str, Any] = {"registered": True, **match, "overlap_fraction": overlap}
    if overlap < settings.min_overlap_fraction:
        return False, details
    in_lib, in_query = verification.overlap_windows(library.mask.shape, dx, dy)
    details["mask_hash_bits"] = verification.mask_hash_bits(library.mask[in_lib], query.mask[in_query])
    details["print_hash_bits"] = verification.print_hash_bits(library.print_binary[in_lib],
                                                              query.print_binary[in_query])
    if details["mask_hash_bits"] > settings.mask_hash_radius_bits:
        return False, details
    hidden = _blind_spot(library, query, (dx, dy), settings)
    if hidden is not None:
        details["blind_spot_shift_px"] = hidden
        return False, details
    return True, details


def descriptor_path(library: Clip, query: Clip, settings: ConfirmSettings) -> tuple[bool, dict[str, Any]]:
    """Register the masks by keypoints (ORB, RANSAC translation), then judge the prints there."""
    found = verification.register_by_descriptors(library.mask_u8, query.mask_u8, settings.descriptor_params())
    details = found.details
    if found.shift_px is None:
        return False, details
    in_lib, in_query = verification.overlap_windows(library.mask.shape, *found.shift_px)
    verdict = verification.judge_windows(library.mask_u8, library.print_binary, query.print_binary, in_lib,
                                         in_query, tolerances(library, query, settings))
    details.update(verdict.details())
    if not verdict.accepted:
        return False, details
    hidden = _blind_spot(library, query, found.shift_px, settings)
    if hidden is not None:
        details["blind_spot_shift_px"] = hidden
        return False, details
    details["print_hash_bits"] = verification.print_hash_bits(library.print_binary[in_lib],
                                                              query.print_binary[in_query])
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
        if settings.near_identity_similarity is not None:
            gate = None  # the setting, not the thresholds file
        return cls(loader, ConfirmSettings.from_service(settings), library, gate)

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
    ) -> DuplicateRecord | None:
        """The duplicate record of the library entry this result re-simulates, or None."""
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
    ) -> DuplicateRecord | None:
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
                return self.record(item, neighbour, found)
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
