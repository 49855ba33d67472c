"""The dedupe stage's pure core: is this result a re-simulation of one seen before?

For each result: decode mask and print, compute the exact digest and the
shift-robust spectral hash of the mask (:mod:`shared.hashing`), then ask the
store. The store returns candidates (same pixels, or a hash within
``hamming_radius`` sharing a probed band); a perceptual candidate becomes a
duplicate only after :func:`shared.verification.verify_window_match` confirms it
on pixels (:meth:`DedupeSettings.tolerances`):

- every relative window shift up to ``verify_max_shift_px`` is scored over the
  whole overlap of the two windows (so a sparse clip, or contacts along the
  rails at the window's borders, registers as well as a dense one), and at the
  shift judged, at most ``mask_mismatch_max_px`` mask pixels may differ by more
  than ``mask_tolerance_levels`` (8-bit levels): the same layout seen through
  a window moved by whole pixels has identical mask pixels there, while two
  distinct layouts (even gratings of nearly the same pitch), or a layout with a
  mask defect, differ;
- new content is compared, not ignored (strict, the default): drawn features
  lying wholly in a strip outside the overlap, farther than
  ``resimulation_shift_px`` from it (beyond what a re-simulation's window move
  brings in) and not a repeat of what the other window shows, may number at
  most ``strip_new_max_px`` pixels; ``windows_are_duplicates`` turns this off
  for a farm that calls every window of one layout a duplicate. The record says
  how much was compared (``compared_fraction``: the overlap's share of the
  window; ``drawn_compared_fraction``: the smaller share of either clip's
  drawn pixels in it; ``strip_new_px``);
- the binarised prints, at that shift, may differ only in slivers at most
  ``2 * print_tolerance_px`` wide (edge placement from a few percent of dose
  or a little blur): at most ``print_mismatch_max_px`` pixels may survive a
  morphological opening of that size. This catches a print that changed with
  an identical mask (a focus or dose excursion that bridges or pinches); mask
  defects are already caught by the mask comparison.

Candidates that the hash does not order well (those found by row and column
profile, and a duplicate's bridge candidates: see
:meth:`DedupeStore.check_and_insert_batch`) are verified best first by a coarse
score of the two masks over their whole overlap
(:func:`shared.verification.coarse_overlap_mismatches`, 4 px blocks; about a
thirtieth of a pixel check), so the few verified are the likeliest
(``rank_by_overlap``, ``profile_shortlist``). A candidate scoring far above
what the blocks' phase alone costs a window of the query's layout moved by
whole pixels (:func:`shared.verification.coarse_phase_mismatch`) is not verified
at all (``coarse_gate``): most of the pixel checks of a result that has no
duplicate were of such candidates.

So the hash only needs recall; false merges are ruled out by the pixels. A
window moved by a fraction of a pixel changes the anti-aliased mask edges and
is not recognised (it stays unique: the safe side).

Per item the result is a :class:`UniqueResult`, a :class:`DuplicateRecord`, or
the :class:`InputError` that rejects it (the runtime sends those to the DLQ):
besides undecodable images, a ``result_id`` already decided for other pixels
(``result_id_reused``: a redelivery with the same pixels gets the stored verdict
back, a different result under a reused id must not).
"""

from __future__ import annotations

import json
import math
import struct
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from services.dedupe import NAME as STAGE
from services.dedupe.decoded import CoarseSums, payload_key
from services.dedupe.store import Candidate, DedupeItem, DedupeStore, Verdict
from shared.contracts import DuplicateRecord, Hashes, ImageRef, Labels, SimResult, UniqueResult
from shared.errors import ConfigError, ImageError, InputError
from shared.hashing import (
    band_probes,
    centred_spectral_hash,
    exact_digest,
    profile_signature,
    spectral_hash,
    split_bands,
)
from shared.imageref import ImageLoader
from shared.imaging import to_uint8
from shared.verification import (
    MASK_TOLERANCE_LEVELS,
    MAX_SHIFT_PX,
    CoarseMask,
    MaskSums,
    PixelTolerances,
    WindowMatch,
    coarse_overlap_mismatches,
    coarse_overlap_sums,
    coarse_phase_mismatch,
    search_reach,
    verify_window_match,
)

PAYLOAD_MAGIC = b"LWD1"
#: more candidates a duplicate is verified against for late duplicates (``DedupeSettings.bridge_candidates``)
BRIDGE_CANDIDATES_DEFAULT = 16
#: results nearest by profile read and ranked by overlap before the best are verified
#: (``DedupeSettings.profile_shortlist``)
PROFILE_SHORTLIST_DEFAULT = 48
#: a ranked candidate is verified only when its coarse score is at most this many times the query's
#: own at half a block's phase, plus ``DedupeSettings.coarse_gate_slack``
COARSE_GATE_FACTOR = 2.0
ImageLoadFn = Callable[[ImageRef], np.ndarray]
Outcome = UniqueResult | DuplicateRecord | InputError


class DedupeSettings(BaseModel):
    """Tunables of the dedupe core (radius and banding chosen from measured distributions)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    hash_kind: Literal["spectral-v1"] = "spectral-v1"
    hash_bits: Literal[128, 256] = 256
    n_bands: int = Field(16, ge=1, le=64)  # exact band matches guarantee lookups up to n_bands - 1 bits
    probe_flips_per_band: int = Field(2, ge=0, le=8)  # extra lookups per band, least reliable bits flipped
    hamming_radius: int = Field(64, ge=0)  # candidates farther than this are not verified
    max_candidates: int = Field(64, ge=1, le=64)  # nearest candidates verified per result (look-alikes)
    # when no hash candidate is a duplicate: this many of the store's newest results nearest by row and
    # column profile are verified too (sparse clips whose window move changed both hashes); 0: off
    profile_candidates: int = Field(12, ge=0, le=64)
    # bridge and profile candidates are verified in the order of a coarse score of the two masks over
    # their whole overlap (shared.verification.coarse_overlap_mismatches, 4 px blocks): rows of contacts along
    # the rails, alike by hash and by profile, are told apart; False: nearest by profile first
    rank_by_overlap: bool = True
    # with rank_by_overlap: this many results nearest by profile are read and ranked, and the
    # profile_candidates best verified (at least profile_candidates)
    profile_shortlist: int = Field(PROFILE_SHORTLIST_DEFAULT, ge=0, le=256)
    # with rank_by_overlap: a ranked candidate whose coarse score exceeds COARSE_GATE_FACTOR times what the
    # blocks' phase alone costs the query (shared.verification.coarse_phase_mismatch) plus coarse_gate_slack
    # is not verified (the true duplicates of the generated and SKY130 sets stay 0.12 or more below the
    # gate at the default: docs/dedupe.md, "The coarse gate")
    coarse_gate: bool = True
    coarse_gate_slack: float = Field(0.15, ge=0.0, le=1.0)
    verify_max_shift_px: int = Field(32, ge=0, le=MAX_SHIFT_PX)  # relative window shift searched
    mask_tolerance_levels: int = Field(MASK_TOLERANCE_LEVELS, ge=0, le=255)  # 8-bit levels of mask noise
    mask_mismatch_max_px: int = Field(4, ge=0)
    print_tolerance_px: int = Field(2, ge=0, le=8)
    print_mismatch_max_px: int = Field(4, ge=0)
    ttl_seconds: int = Field(7 * 86400, gt=0)  # how long a result is remembered
    # candidates are also looked up by the bands of the content-centred hash (sparse clips)
    centred_keys: bool = True
    # False (strict): a candidate whose strips outside the overlap hold drawn features that neither the
    # window move (up to resimulation_shift_px) nor a repeat of the layout explains is not a duplicate;
    # True: any window of one layout that agrees on the overlap is
    windows_are_duplicates: bool = False
    resimulation_shift_px: int = Field(16, ge=0, le=MAX_SHIFT_PX)  # a farm's largest window move
    strip_new_max_px: int = Field(4, ge=0)  # drawn pixels of unexplained features tolerated (strict)
    # a duplicate is verified against up to this many more of its candidates: an earlier result kept as
    # unique that it matches too becomes its (late) duplicate, see DedupeStore.check_and_insert_batch; 0: off
    bridge_candidates: int = Field(BRIDGE_CANDIDATES_DEFAULT, ge=0, le=64)
    # a bridge must compare at least this many mask pixels drawn in both clips: a window showing one
    # contact (256 px at 4 nm/px) agrees with any other lone contact, too little to link two results
    # that did not match each other
    bridge_min_matched_px: int = Field(400, ge=0)
    # a candidate found by profile alone (its hash unrelated) must compare at least this many mask pixels
    # drawn in both clips; 0: no floor. 256 (one contact at 4 nm/px) refuses a lone contact matched to a
    # lone contact of another layout, at a cost in recall (docs/dedupe.md, "Fewer false merges")
    profile_min_matched_px: int = Field(0, ge=0)
    # a candidate found by profile alone that compares fewer mask pixels drawn in both clips than this, and
    # under a quarter of one clip's drawn pixels (the rest left to the window move), is refused: a corner
    # of a shape cut by the window's edge agrees with many; 0: off. 128 px: half a contact at 4 nm/px
    profile_thin_match_px: int = Field(128, ge=0)
    # every match, however it was found, must compare at least this many mask pixels drawn in both
    # clips; 0: no floor. Clips that show less are kept unique: a farm that would rather score a sparse
    # re-simulation again than merge two layouts that agree on a few contacts (docs/dedupe.md, "No
    # false merges: an evidence floor on every match")
    min_matched_px: int = Field(0, ge=0)
    # stored results' coarse masks for the ranking (about 26 KB a 256 px clip) are kept from batch to
    # batch, least recently used out past this budget (services.dedupe.decoded); 0: made again each batch
    coarse_cache_mib: int = Field(128, ge=0)

    def namespace(self) -> str:
        kind = f"{self.hash_kind}+centred" if self.centred_keys else self.hash_kind
        return f"{kind}.{self.hash_bits}.{self.n_bands}"

    def tolerances(self) -> PixelTolerances:
        """The pixel check's limits: the plain print check (no edge band, no topology)."""
        return PixelTolerances(
            max_shift_px=self.verify_max_shift_px, mask_mismatch_max_px=self.mask_mismatch_max_px,
            print_tolerance_px=self.print_tolerance_px, print_mismatch_max_px=self.print_mismatch_max_px,
            mask_tolerance_levels=self.mask_tolerance_levels,
        )


# -- verification payload: the 8-bit mask and the binarised print, zlib-compressed -------------


def encode_payload(mask_u8: np.ndarray, print_binary: np.ndarray) -> bytes:
    h, w = mask_u8.shape
    mask_z = zlib.compress(np.ascontiguousarray(mask_u8, dtype=np.uint8).tobytes(), 1)
    print_z = zlib.compress(np.packbits(print_binary.astype(bool)).tobytes(), 1)
    return PAYLOAD_MAGIC + struct.pack(">III", h, w, len(mask_z)) + mask_z + print_z


def _decoded_or_none(payload: bytes) -> tuple[np.ndarray, np.ndarray] | None:
    """A stored candidate's payload decoded; None when it cannot be (never a duplicate then: the pixel
    check cannot run)."""
    try:
        return decode_payload(payload)
    except ImageError:
        return None


def decode_payload(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    """(8-bit mask, boolean print) from :func:`encode_payload` bytes."""
    if not payload.startswith(PAYLOAD_MAGIC) or len(payload) < 16:
        raise ImageError("not a dedupe payload", reason="dedupe_payload")
    h, w, mask_len = struct.unpack(">III", payload[4:16])
    try:
        mask = np.frombuffer(zlib.decompress(payload[16:16 + mask_len]), dtype=np.uint8)
        bits = np.frombuffer(zlib.decompress(payload[16 + mask_len:]), dtype=np.uint8)
    except zlib.error as exc:
        raise ImageError(f"corrupt dedupe payload: {exc}", reason="dedupe_payload") from exc
    if mask.size != h * w or bits.size * 8 < h * w:
        raise ImageError("dedupe payload size does not match its shape", reason="dedupe_payload")
    return mask.reshape(h, w), np.unpackbits(bits)[: h * w].reshape(h, w).astype(bool)


# -- what a late duplicate record needs of a result, kept with its verdict -----------------------

ORIGIN_LABELS_MAX_BYTES = 1024  # labels larger than this (as JSON) are not kept


def _origin(result: SimResult) -> str:
    """The farm's ids, the time produced and (when small) the labels of a result, as JSON."""
    doc: dict[str, Any] = {"job_id": result.job_id, "clip_id": result.clip_id,
                           "produced_at": result.produced_at.isoformat()}
    labels = json.dumps(result.labels)
    if len(labels) <= ORIGIN_LABELS_MAX_BYTES:
        doc["labels"] = result.labels
    return json.dumps(doc)


_MOMENT = TypeAdapter(datetime)
_LABELS = TypeAdapter(Labels)


def _read_origin(text: str) -> dict[str, Any]:
    """What :func:`_origin` kept, validated field by field (a field that does not read is left out)."""
    try:
        doc = json.loads(text) if text else {}
    except ValueError:
        return {}
    if not isinstance(doc, dict):
        return {}
    out: dict[str, Any] = {name: doc[name] for name in ("job_id", "clip_id")
                           if isinstance(doc.get(name), str)}
    for name, adapter in (("produced_at", _MOMENT), ("labels", _LABELS)):
        try:
            if name in doc:
                out[name] = adapter.validate_python(doc[name])
        except ValidationError:
            pass
    return out


@dataclass(frozen=True)
class LateDuplicate:
    """A result kept as unique when it came, shown by a later one to be a window of that one's layout:
    its duplicate record, and the farm's ids kept of it (for its verdict)."""

    record: DuplicateRecord
    job_id: str = ""
    clip_id: str = ""


@dataclass(frozen=True)
class Decision:
    """One result's outcome, and the late duplicates its verdict brought (:meth:`DedupeCore.decide_batch`)."""

    outcome: Outcome
    late: list[LateDuplicate] = field(default_factory=list)


# -- the core ------------------------------------------------------------------------------------


def _gated(score: float, gate: float) -> float:
    """A candidate's rank key: its coarse score, or inf (not verified) above the gate."""
    return score if score <= gate else math.inf


class _Prepared:
    __slots__ = ("hashes", "item", "mask_u8", "print_binary", "result")

    def __init__(self, result: SimResult, item: DedupeItem, hashes: Hashes, mask_u8: np.ndarray,
                 print_binary: np.ndarray) -> None:
        self.result = result
        self.item = item
        self.hashes = hashes
        self.mask_u8 = mask_u8
        self.print_binary = print_binary


class DedupeCore:
    """Exact and near-duplicate detection over batches of :class:`SimResult`."""

    def __init__(self, store: DedupeStore, settings: DedupeSettings | None = None,
                 load_image: ImageLoadFn | None = None) -> None:
        self.store = store
        self.settings = settings or DedupeSettings()
        if self.settings.hash_bits % self.settings.n_bands:
            raise ConfigError(f"{self.settings.hash_bits} hash bits do not split into "
                              f"{self.settings.n_bands} bands")
        self.load_image: ImageLoadFn = load_image or ImageLoader()
        self.tolerances = self.settings.tolerances()
        s = self.settings
        self.strip_new_max_px = None if s.windows_are_duplicates else s.strip_new_max_px
        self.coarse = CoarseSums(s.coarse_cache_mib * 2**20)  # the ranking's, kept across batches

    def prepare(self, result: SimResult) -> _Prepared:
        """Decode and hash one result (raises InputError for undecodable or mismatched images)."""
        mask = self.load_image(result.mask)
        printed = self.load_image(result.simulated)
        if mask.shape != printed.shape:
            raise ImageError(f"mask {mask.shape} and print {printed.shape} differ in shape",
                             reason="shape_mismatch")
        s = self.settings
        digest = exact_digest(mask, printed)
        perceptual = spectral_hash(mask, s.hash_bits)
        mask_u8 = to_uint8(mask)
        print_binary = printed > 0.5
        value, bits, parts = perceptual.value, perceptual.bits, 1
        bands = split_bands(perceptual.value, perceptual.bits, s.n_bands)
        probes = band_probes(perceptual, s.n_bands, s.probe_flips_per_band)
        kinds = {perceptual.kind: perceptual.hex()}
        if s.centred_keys:  # a second hash in the same band sets: bands n_bands .. 2 n_bands - 1
            centred = centred_spectral_hash(mask, s.hash_bits)
            value, bits, parts = (value << centred.bits) | centred.value, bits + centred.bits, 2
            bands += split_bands(centred.value, centred.bits, s.n_bands)
            probes += [(s.n_bands + j, v) for j, v in band_probes(centred, s.n_bands, s.probe_flips_per_band)]
            kinds[centred.kind] = centred.hex()
        item = DedupeItem(
            result_id=result.result_id,
            exact_digest=digest,
            perceptual=value,
            perceptual_bits=bits,
            namespace=s.namespace(),
            bands=tuple(bands),
            probes=tuple(probes),
            payload=encode_payload(mask_u8, print_binary),
            parts=parts,
            profile=profile_signature(mask) if s.profile_candidates else b"",
            origin=_origin(result),
        )
        hashes = Hashes(exact=digest, perceptual=kinds)
        return _Prepared(result, item, hashes, mask_u8, print_binary)

    def process_batch(self, results: Sequence[SimResult]) -> list[Outcome]:
        """One outcome per result, in order. Store failures propagate (DependencyUnavailable)."""
        return [decision.outcome for decision in self.decide_batch(results)]

    def decide_batch(self, results: Sequence[SimResult]) -> list[Decision]:
        """One decision per result, in order: its outcome and the late duplicate records it brings
        (earlier results kept as unique that this one shows to be windows of its layout)."""
        prepared: list[_Prepared | InputError] = []
        for result in results:
            try:
                prepared.append(self.prepare(result))
            except InputError as exc:
                prepared.append(exc)
        ready = [p for p in prepared if isinstance(p, _Prepared)]
        queries = {id(p.item): p for p in ready}
        # Decoded once per batch, with what the shift search needs of each mask (see MaskSums): a result
        # is verified against many candidates, and a candidate against many results. The ranking's coarse
        # masks are kept from batch to batch (self.coarse).
        cache: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        sums: dict[str, MaskSums] = {}  # candidates' (by id), made when first verified
        query_sums: dict[int, MaskSums] = {}
        coarse: dict[str, CoarseMask | None] = {}  # candidates' coarse masks for ranking (by id)
        query_coarse: dict[int, CoarseMask] = {}
        gates: dict[int, float] = {}  # the queries' coarse gates (by id of the item)

        def sums_of(mask: np.ndarray) -> MaskSums:
            return MaskSums.of(mask, search_reach(mask.shape, self.tolerances))

        def arrays_of(candidate: Candidate) -> tuple[np.ndarray, np.ndarray] | None:
            if candidate.result_id not in cache:
                cache[candidate.result_id] = _decoded_or_none(candidate.payload)
            return cache[candidate.result_id]

        def coarse_of(mask: np.ndarray) -> CoarseMask:
            return coarse_overlap_sums(mask, search_reach(mask.shape, self.tolerances))

        def candidate_coarse(candidate: Candidate) -> CoarseMask | None:
            def make() -> CoarseMask | None:
                # decoded for the ranking alone, not held: of the dozens ranked, a few are verified
                arrays = (cache[candidate.result_id] if candidate.result_id in cache
                          else _decoded_or_none(candidate.payload))
                return None if arrays is None else coarse_of(arrays[0])
            if candidate.result_id not in coarse:  # held for the batch, whatever the cache keeps
                coarse[candidate.result_id] = self.coarse.get(
                    payload_key(candidate.result_id, candidate.payload), make)
            return coarse[candidate.result_id]

        def gate_of(item: DedupeItem) -> float:
            if id(item) not in gates:
                mask = queries[id(item)].mask_u8
                phase = coarse_phase_mismatch(mask, search_reach(mask.shape, self.tolerances),
                                              own=query_coarse[id(item)])
                gates[id(item)] = COARSE_GATE_FACTOR * phase + self.settings.coarse_gate_slack
            return gates[id(item)]

        def rank(item: DedupeItem, candidates: Sequence[Candidate]) -> list[float]:
            if id(item) not in query_coarse:
                query_coarse[id(item)] = coarse_of(queries[id(item)].mask_u8)
            theirs = [candidate_coarse(candidate) for candidate in candidates]
            decodable = [coarse for coarse in theirs if coarse is not None]
            scores = iter(coarse_overlap_mismatches(decodable, query_coarse[id(item)]).tolist())
            gate = gate_of(item) if self.settings.coarse_gate else math.inf
            # not verified (inf) when it cannot be decoded, or scores too far from the query to be a window
            # of its layout
            return [math.inf if coarse is None else _gated(next(scores), gate) for coarse in theirs]

        def verify(item: DedupeItem, candidate: Candidate) -> dict[str, Any] | None:
            query = queries[id(item)]
            arrays = arrays_of(candidate)
            if arrays is None:
                return None
            if candidate.result_id not in sums:
                sums[candidate.result_id] = sums_of(arrays[0])
            if id(item) not in query_sums:
                query_sums[id(item)] = sums_of(query.mask_u8)
            match = self.verify_pair(arrays[0], arrays[1], query.mask_u8, query.print_binary,
                                     via=candidate.via, bridge=candidate.bridge,
                                     sums=(sums[candidate.result_id], query_sums[id(item)]))
            if match is None:
                return None
            return {"hash_kind": self.settings.hash_kind, "hamming_bits": candidate.distance_bits,
                    "found_by": candidate.via, **match.details()}

        verdicts = self.store.check_and_insert_batch(
            [p.item for p in ready], verify,
            hamming_radius=self.settings.hamming_radius, max_candidates=self.settings.max_candidates,
            profile_candidates=self.settings.profile_candidates,
            bridge_candidates=self.settings.bridge_candidates,
            profile_shortlist=self.settings.profile_shortlist,
            rank=rank if self.settings.rank_by_overlap else None,
        ) if ready else []
        by_item = {id(p.item): v for p, v in zip(ready, verdicts, strict=True)}
        for stored in ready:  # stored now: candidates of later results, their coarse masks already made
            verdict = by_item[id(stored.item)]
            if verdict.status == "unique" and not verdict.replayed and id(stored.item) in query_coarse:
                self.coarse.put(payload_key(stored.item.result_id, stored.item.payload),
                                query_coarse[id(stored.item)])
        decisions: list[Decision] = []
        for p in prepared:
            if isinstance(p, InputError):
                decisions.append(Decision(p))
            else:
                verdict = by_item[id(p.item)]
                decisions.append(Decision(self._outcome(p, verdict),
                                          [self._late_record(v, p.result) for v in verdict.late]))
        return decisions

    def verify_pair(self, mask_a: np.ndarray, print_a: np.ndarray, mask_b: np.ndarray, print_b: np.ndarray,
                    *, via: str = "hash", bridge: bool = False,
                    sums: tuple[MaskSums | None, MaskSums | None] = (None, None)) -> WindowMatch | None:
        """The pixel check of result ``b`` against candidate ``a`` (8-bit masks, binary prints), as a
        candidate found ``via`` hash or profile, and as a bridge or not, with the evidence each needs."""
        s = self.settings
        # a candidate found by profile alone (its hash is unrelated) must register at one shift: a lone
        # rail agrees all along itself, and with everything else in the strips any two windows would do
        evidence_px = max(s.min_matched_px, s.bridge_min_matched_px if bridge else 0,
                          s.profile_min_matched_px if via == "profile" else 0)
        return verify_window_match(mask_a, print_a, mask_b, print_b, self.tolerances, self.strip_new_max_px,
                                   s.resimulation_shift_px, unique_shift=via == "profile",
                                   min_matched_drawn_px=evidence_px, sums=sums,
                                   thin_match_px=s.profile_thin_match_px if via == "profile" else 0)

    def _late_record(self, verdict: Verdict, found_by: SimResult) -> LateDuplicate:
        """The duplicate record of an earlier result ``found_by`` showed to be a window of its layout
        (``verdict``, one of its :attr:`Verdict.late`); the farm's ids and time from what was kept of it."""
        origin = _read_origin(verdict.origin)
        details = {**verdict.details, "exact_digest": verdict.exact_digest or ""}
        produced_at = origin.get("produced_at")
        if produced_at is None:
            produced_at = found_by.produced_at
            details["produced_at_unknown"] = True
        record = DuplicateRecord(
            result_id=verdict.result_id, duplicate_of=found_by.result_id, method="perceptual",
            distance=verdict.distance_bits / self.settings.hash_bits, stage=STAGE,
            labels=origin.get("labels", {}), produced_at=produced_at, details=details,
        )
        return LateDuplicate(record, origin.get("job_id", ""), origin.get("clip_id", ""))

    def _outcome(self, p: _Prepared, verdict: Verdict) -> Outcome:
        result = p.result
        if verdict.status == "reused":
            decided = str(verdict.details.get("decided_exact_digest", "?"))
            return InputError(
                f"result_id {result.result_id!r} was decided for other pixels (exact digest {decided[:16]}, "
                f"this one {p.hashes.exact[:16]}): a result id names one result", reason="result_id_reused")
        if verdict.status == "unique" or verdict.duplicate_of is None:
            return UniqueResult(**dict(result), hashes=p.hashes)
        distance = 0.0 if verdict.status == "exact" else verdict.distance_bits / self.settings.hash_bits
        details = {**verdict.details, "exact_digest": p.hashes.exact}
        if verdict.replayed:
            details["replayed"] = True
        if verdict.late:
            details["late_duplicates"] = [late.result_id for late in verdict.late]
        return DuplicateRecord(
            result_id=result.result_id, duplicate_of=verdict.duplicate_of, method=verdict.status,
            distance=distance, stage=STAGE, labels=dict(result.labels), produced_at=result.produced_at,
            details=details,
        )
