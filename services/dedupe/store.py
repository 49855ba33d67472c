"""Dedupe state: exact digests, band (multi-index) keys for near duplicates, verdicts.

One call, :meth:`DedupeStore.check_and_insert_batch`, decides a whole batch in
three pipelined round trips (Redis) — reads, candidate payloads, writes:

1. per item: its stored verdict (a redelivery gets the same answer back), the
   exact digest claimed with ``SET NX`` (the first result with these pixels
   owns the key; a racing replica loses atomically), and the newest members of
   every probed band set, with the times they were added;
2. the payloads of the candidates within ``hamming_radius`` (nearest first, at
   most ``max_candidates`` per item), which the caller's ``verify`` confirms;
3. writes: the payload and band memberships (see Bounds) of each unique result
   and of each near duplicate (a re-simulation whose window moved one way is
   kept, so one moved the other way, or one arriving before its original,
   finds the member of its layout nearest to it), every verdict with ``SET NX``
   followed by a read of what is stored.

Verdicts: a verdict records the exact digest of the pixels it was made for. A
redelivery (same ``result_id``, same pixels) gets the stored verdict back; the
same ``result_id`` with other pixels gets status ``reused`` (the core dead-letters
it as ``result_id_reused``) and its provisional claim on the exact digest is
dropped. Verdicts are written with ``SET NX``: of two replicas racing on one
``result_id`` the first write stays and the other replica answers with it. The
loser may already have added band members (it judged the result unique); they
name a result whose pixels are stored, so they never cause a false merge. A
verdict stored before verdicts carried a digest is replayed as it is.

Keys (``prefix`` is the service name; every command touches one key, so Redis
Cluster never sees a cross-slot operation):

- ``<prefix>:x:{<digest>}``: string, the first result_id with these pixels;
- ``<prefix>:v:{<result_id>}``, ``<prefix>:e:{<result_id>}``: the verdict
  (JSON) and, for unique results and near duplicates, the verification payload; the hash tag puts
  both keys of a result in one slot;
- ``<prefix>:bz:<namespace>:<band>:<value>``: sorted set of members scored by
  the unix second they were added; a member is the hash the band was cut from
  (big-endian bytes; an item with two hashes puts each in its own bands' sets),
  that second (4 bytes, so reads need no scores) and the result id: the Hamming
  check needs no extra read, and a short member keeps a small set in Redis'
  compact encoding. ``namespace`` names the hash kind and banding, so a change
  of either never mixes with old keys. (Band sets were plain sets under
  ``<prefix>:b:`` before they were bounded; those expire on their own and are
  no longer read.)
- ``<prefix>:rp:<namespace>``: the recent pool, a sorted set of the newest
  ``recent_pool`` unique results and near duplicates (scored by the second
  added; a member is that second, both hashes, the row and column profile and
  the result id). Read whole in the lookup round trip (one read per namespace
  and batch); when none of a result's hash candidates is a duplicate, the
  ``profile_candidates`` members nearest it by profile are verified too (their
  payloads come in the candidate round trip). Trimmed to ``recent_pool`` and
  given twice the TTL on every add; one key per namespace, so on Redis Cluster
  every replica writes that one slot.

Bounds: a lookup reads at most the newest ``band_max_members`` of each probed
band set (``ZREVRANGE``), and an add that may take a set over that many
trims it to the newest (``ZREMRANGEBYRANK``, sent only when the lookup read
the set full), so neither reads nor memory grow with a busy band value; trimmed
members are counted (``on_trimmed``). A member older than ``ttl_seconds`` is
skipped when read and removed (``ZREM`` in the write round trip). Expiry: time is
cut into windows of one TTL, and an add gives a set the end of the next window
(one to two TTLs away) only when the lookup found it empty or its newest member
from an earlier window. Every member so lives at least its TTL, and a set's
expiry is written at most once per window instead of on every add.

Every other key expires after ``ttl_seconds``. Near-duplicate race: two replicas
that see two near duplicates of a new layout in the same instant both find no
candidate and both call theirs unique. The window is one batch's round trips;
the cost is an extra unique result downstream (never a false merge), so no Lua
lock is taken. Exact duplicates have no such window (``SET NX``).
"""

from __future__ import annotations

import json
import math
import struct
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

import numpy as np

from shared.errors import ConfigError
from shared.hashing import PROFILE_BYTES, hamming_distance, profile_distances

Status = Literal["unique", "exact", "perceptual", "reused"]
BAND_MAX_MEMBERS_DEFAULT = 256
BAND_TTL_FACTOR = 2  # a band set's expiry, in TTLs, when refreshed
RECENT_POOL_DEFAULT = 1024  # newest results per namespace ranked by profile when no hash candidate verifies
BRIDGE_CHAIN_HOPS = 4  # links of a duplicate chain followed before a bridge is made
_ADDED = struct.Struct(">I")  # the time a band member was added, inside the member


@dataclass(frozen=True)
class DedupeItem:
    """What the store needs of one result: its digests, band keys and verification payload."""

    result_id: str
    exact_digest: str
    perceptual: int
    perceptual_bits: int
    namespace: str
    bands: tuple[int, ...]  # exact band values, inserted for unique results
    probes: tuple[tuple[int, int], ...]  # (band, value) looked up
    payload: bytes
    # hashes concatenated in ``perceptual`` (each ``perceptual_bits // parts`` bits, the first most
    # significant), with ``len(bands) // parts`` bands each: a band set's members carry the part of
    # the hash its band was cut from, and a distance is the smallest over the parts
    parts: int = 1
    # row and column profile (``shared.hashing.profile_signature``); empty: not in the recent pool
    profile: bytes = b""
    # what a late duplicate record of this result needs of it (JSON: the farm's ids, produced_at, small
    # labels), kept with its verdict; empty: nothing kept
    origin: str = ""

    @property
    def part_bytes(self) -> int:
        return self.perceptual_bits // self.parts // 8

    def part_of(self, band: int) -> int:
        """Which hash a band (an index into ``bands``, or a probe's band) was cut from."""
        return min(band // max(len(self.bands) // self.parts, 1), self.parts - 1)

    def part_value(self, part: int) -> int:
        width = self.perceptual_bits // self.parts
        return (self.perceptual >> ((self.parts - 1 - part) * width)) & ((1 << width) - 1)

    def distance_bits(self, value: int) -> int:
        """Hamming distance to another item's whole ``perceptual`` value: the smallest over the parts."""
        if self.parts == 1:
            return hamming_distance(self.perceptual, value)
        width = self.perceptual_bits // self.parts
        mask = (1 << width) - 1
        return min(hamming_distance((self.perceptual >> (k * width)) & mask, (value >> (k * width)) & mask)
                   for k in range(self.parts))

    def member(self, now_seconds: float, band: int = 0) -> bytes:
        """Member of the set of one of this item's bands: that band's hash (big-endian bytes), the
        time added (unix seconds, 4 bytes big-endian, also its score) and the result id. Short (under
        Redis' 64-byte limit for a 256-bit hash and an id of up to 28 bytes), so that Redis keeps a
        small set in its compact encoding; the time inside spares reading scores back."""
        return (self.part_value(self.part_of(band)).to_bytes(self.part_bytes, "big")
                + _ADDED.pack(min(max(0, int(now_seconds)), 0xFFFFFFFF)) + self.result_id.encode())

    def pool_member(self, now_seconds: float) -> bytes:
        """Member of the recent pool: the time added (4 bytes), the whole ``perceptual`` value, the
        profile and the result id."""
        return (_ADDED.pack(min(max(0, int(now_seconds)), 0xFFFFFFFF))
                + self.perceptual.to_bytes(self.perceptual_bits // 8, "big") + self.profile
                + self.result_id.encode())


@dataclass(frozen=True)
class Candidate:
    """An earlier unique result that shares a probed band and lies within the radius."""

    result_id: str
    distance_bits: int
    payload: bytes
    via: str = "hash"  # how it was found: "hash" (a shared band) or "profile" (the recent pool)
    bridge: bool = False  # verified for a bridge, after the result matched another candidate


@dataclass(frozen=True)
class Verdict:
    result_id: str
    status: Status
    duplicate_of: str | None = None
    distance_bits: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False  # the stored verdict of an earlier delivery
    exact_digest: str | None = None  # of the pixels the verdict was made for (None: stored before digests)
    origin: str = ""  # the result's :attr:`DedupeItem.origin`, kept for a late duplicate record
    # earlier unique results this one showed to be windows of its own layout (see ``bridge_candidates``):
    # their new verdicts, duplicates of this result, decided *late*; kept here so a redelivery repeats them
    late: tuple[Verdict, ...] = ()

    def _doc(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"status": self.status, "duplicate_of": self.duplicate_of,
                               "distance_bits": self.distance_bits, "details": self.details,
                               "exact_digest": self.exact_digest}
        if self.origin:
            doc["origin"] = self.origin
        if self.late:
            doc["late"] = [{"result_id": v.result_id, **v._doc()} for v in self.late]
        return doc

    def to_json(self) -> str:
        return json.dumps(self._doc())

    @classmethod
    def _from_doc(cls, result_id: str, data: dict[str, Any]) -> Verdict:
        digest = data.get("exact_digest")
        origin = data.get("origin")
        late = tuple(cls._from_doc(str(doc["result_id"]), doc) for doc in data.get("late") or ()
                     if isinstance(doc, dict) and isinstance(doc.get("result_id"), str))
        return cls(result_id, data["status"], data.get("duplicate_of"), int(data.get("distance_bits", 0)),
                   dict(data.get("details") or {}), replayed=True,
                   exact_digest=digest if isinstance(digest, str) else None,
                   origin=origin if isinstance(origin, str) else "", late=late)

    @classmethod
    def from_json(cls, result_id: str, text: str | bytes) -> Verdict:
        return cls._from_doc(result_id, json.loads(text))

    def answer_for(self, item: DedupeItem) -> Verdict:
        """This stored verdict answering ``item``: replayed for the same pixels, ``reused`` for others."""
        if self.exact_digest is not None and self.exact_digest != item.exact_digest:
            return Verdict(item.result_id, "reused", details={"decided_exact_digest": self.exact_digest},
                           exact_digest=item.exact_digest)
        return replace(self, result_id=item.result_id, replayed=True)


Verifier = Callable[[DedupeItem, Candidate], "dict[str, Any] | None"]
"""Confirms a candidate: details of the match when it is a duplicate, None otherwise."""

Ranker = Callable[[DedupeItem, Sequence[Candidate]], Sequence[float]]
"""Orders candidates before they are verified: one key per candidate, the smallest likeliest to match;
``math.inf`` for one that cannot match (it is not verified)."""


class DedupeStore(Protocol):
    def check_and_insert_batch(self, items: Sequence[DedupeItem], verify: Verifier, *,
                               hamming_radius: int, max_candidates: int,
                               profile_candidates: int = 0, bridge_candidates: int = 0,
                               profile_shortlist: int = 0, rank: Ranker | None = None) -> list[Verdict]: ...


@dataclass
class _Lookup:
    stored: Verdict | None
    exact_owner: str | None
    members: list[tuple[str, int, int]]  # (result_id, hash part, its value) from the probed band sets
    stale: list[tuple[str, bytes]] = field(default_factory=list)  # (band key, member) older than the TTL
    # per own band set (aligned with ``DedupeItem.bands``): newest score read (None: empty), members read
    own_bands: list[tuple[float | None, int]] = field(default_factory=list)
    # the newest results of the item's namespace: (result_id, perceptual value, profile)
    recent: list[tuple[str, int, bytes]] = field(default_factory=list)


@dataclass(frozen=True)
class _Upkeep:
    """What adding a batch's unique results does to their band sets, beside the adds."""

    trim: frozenset[tuple[str, int, int]]  # (namespace, band, value) that may now hold too many members
    expire_seconds: dict[tuple[str, int, int], int]  # sets whose expiry is refreshed, to this many seconds


@dataclass(frozen=True)
class _Written:
    """What the write round trip reports: members trimmed, and each verdict as stored after SET NX."""

    trimmed: int
    stored: list[str | bytes | None]


def _read_members(key: str, raws: Any, now_seconds: float, ttl_seconds: float, hash_bytes: int,
                  found: _Lookup, part: int = 0) -> tuple[float | None, int]:
    """Add the live members of one band set (of hash ``part``) to ``found``; expired or unreadable ones
    are stale. Returns the newest time added and the number of members read."""
    newest: float | None = None
    count = 0
    rid_at = hash_bytes + _ADDED.size
    for raw in raws or ():
        count += 1
        member = bytes(raw) if not isinstance(raw, str) else raw.encode()
        if len(member) <= rid_at:
            found.stale.append((key, member))
            continue
        (added,) = _ADDED.unpack_from(member, hash_bytes)
        newest = added if newest is None else max(newest, added)
        if now_seconds - added > ttl_seconds:
            found.stale.append((key, member))
            continue
        try:
            found.members.append((member[rid_at:].decode(), part, int.from_bytes(member[:hash_bytes], "big")))
        except UnicodeDecodeError:
            found.stale.append((key, member))
    return newest, count


def _read_pool(raws: Any, now_seconds: float, ttl_seconds: float,
               hash_bytes: int) -> list[tuple[str, int, bytes]]:
    """The live, readable members of a recent pool (see :meth:`DedupeItem.pool_member`)."""
    out: list[tuple[str, int, bytes]] = []
    head = _ADDED.size + hash_bytes + PROFILE_BYTES
    for raw in raws or ():
        member = bytes(raw) if not isinstance(raw, str) else raw.encode()
        if len(member) <= head:
            continue
        (added,) = _ADDED.unpack_from(member, 0)
        if now_seconds - added > ttl_seconds:
            continue
        try:
            rid = member[head:].decode()
        except UnicodeDecodeError:
            continue
        value = int.from_bytes(member[_ADDED.size:_ADDED.size + hash_bytes], "big")
        out.append((rid, value, member[_ADDED.size + hash_bytes:head]))
    return out


def _in_order(item: DedupeItem, candidates: list[Candidate], rank: Ranker | None) -> list[Candidate]:
    """``candidates`` in ``rank``'s order (ties keep their order), less those it says cannot match; as
    they are without one."""
    if rank is None or not candidates:
        return candidates
    keys = rank(item, candidates)
    return [candidates[k] for k in sorted(range(len(candidates)), key=lambda k: keys[k])
            if keys[k] != math.inf]


class BandDedupeStore(ABC):
    """The decision logic, shared by every backend; backends supply three round trips."""

    ttl_seconds: float
    band_max_members: int
    clock: Callable[[], float]  # wall clock of band member scores (shared by every replica)
    on_trimmed: Callable[[int], None] | None = None  # told how many band members an add trimmed
    recent_pool: int = RECENT_POOL_DEFAULT  # newest results kept per namespace for the profile fallback

    def check_and_insert_batch(self, items: Sequence[DedupeItem], verify: Verifier, *,
                               hamming_radius: int, max_candidates: int,
                               profile_candidates: int = 0, bridge_candidates: int = 0,
                               profile_shortlist: int = 0, rank: Ranker | None = None) -> list[Verdict]:
        """Verdicts for a batch. A result none of whose ``max_candidates`` nearest hash candidates is a
        duplicate is verified, besides, against the ``profile_candidates`` results nearest by profile
        (:func:`shared.hashing.profile_distances`) among the store's newest ``recent_pool`` of its
        namespace and the batch's earlier results: a sparse clip whose window move brought in or took
        out much of what it shows, so that neither hash found it. With ``rank``, the
        ``profile_shortlist`` nearest by profile (at least ``profile_candidates``) are read and the
        ``profile_candidates`` that ``rank`` puts first are verified.

        Bridges (``bridge_candidates`` > 0): a duplicate is verified against up to that many more of
        its hash candidates after the one it matched, and as many of those nearest by profile
        (:attr:`Candidate.bridge`), in ``rank``'s order where given. One that matches too and was
        judged unique is a window of the same layout that arrived before the result linking the two
        (two re-simulations moved opposite ways, both before their original, show each other new
        content): it becomes a duplicate of this result. An earlier result of the same batch is
        decided so before anything is produced; one decided in an earlier batch gets a *late* verdict
        (stored over its unique one and returned in this result's :attr:`Verdict.late`, for a late
        duplicate record)."""
        lookups = self._lookup(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        store_candidates: list[list[tuple[int, str]]] = [[] for _ in items]
        profile_options: list[list[tuple[float, str, int]]] = [[] for _ in items]
        digest_in_batch: dict[str, str] = {}
        for i, (item, found) in enumerate(zip(items, lookups, strict=True)):
            earlier = digest_in_batch.setdefault(item.result_id, item.exact_digest)
            if found.stored is not None:
                verdicts[i] = found.stored.answer_for(item)
            elif earlier != item.exact_digest:  # one result id, two contents, in one batch
                verdicts[i] = Verdict(item.result_id, "reused", details={"decided_exact_digest": earlier},
                                      exact_digest=item.exact_digest)
            elif found.exact_owner is not None and found.exact_owner != item.result_id:
                verdicts[i] = Verdict(item.result_id, "exact", found.exact_owner, 0)
            else:
                near: dict[str, int] = {}
                for rid, part, value in found.members:
                    if rid != item.result_id:
                        d = hamming_distance(item.part_value(part), value)
                        near[rid] = min(d, near.get(rid, d))
                nearest = sorted((d, rid) for rid, d in near.items() if d <= hamming_radius)
                store_candidates[i] = nearest[:max_candidates]
                if profile_candidates > 0 and item.profile:
                    shortlist = max(profile_candidates, profile_shortlist if rank is not None else 0)
                    profile_options[i] = self._by_profile(item, found.recent, store_candidates[i], shortlist)
        wanted = sorted({rid for nearest in store_candidates for _, rid in nearest}
                        | {rid for options in profile_options for _, rid, _ in options})
        payloads = self._payloads(wanted) if wanted else {}

        batch_uniques: list[DedupeItem] = []
        unique_indices: list[int] = []
        bridged: dict[int, list[Verdict]] = {}  # item index -> candidates it also matched, as its duplicates
        for i, item in enumerate(items):
            if verdicts[i] is not None:
                continue
            ranked: list[tuple[int, str, bytes]] = [
                (d, rid, payloads[rid]) for d, rid in store_candidates[i] if rid in payloads]
            probes = set(item.probes)
            for other in batch_uniques:
                d = item.distance_bits(other.perceptual)
                if (other.result_id != item.result_id and d <= hamming_radius
                        and probes.intersection(enumerate(other.bands))):
                    ranked.append((d, other.result_id, other.payload))
            ranked.sort(key=lambda entry: (entry[0], entry[1]))
            verdict = Verdict(item.result_id, "unique")
            matched_at = len(ranked)
            for k, (d, rid, payload) in enumerate(ranked[:max_candidates]):
                details = verify(item, Candidate(rid, d, payload))
                if details is not None:
                    verdict = Verdict(item.result_id, "perceptual", rid, d, details)
                    matched_at = k
                    break
            if verdict.status == "unique" and profile_candidates > 0 and item.profile:
                tried = {rid for _, rid, _ in ranked[:max_candidates]}
                verdict = self._verify_by_profile(item, verify, profile_options[i], payloads, batch_uniques,
                                                  tried, profile_candidates, rank) or verdict
            if verdict.status == "perceptual" and bridge_candidates > 0:
                seen = {rid for _, rid, _ in ranked[:matched_at + 1]} | {verdict.duplicate_of or ""}
                later = self._bridge_candidates(item, ranked[matched_at + 1:], profile_options[i], payloads,
                                                batch_uniques, lookups[i].recent, seen, rank)
                links = self._bridges(item, verify, later[:bridge_candidates])
                if links:  # the chain reads in _resolve_bridges are for results that bridge something
                    bridged[i] = links
            verdicts[i] = verdict
            if verdict.status in ("unique", "perceptual"):  # a re-simulation is kept to match later ones
                batch_uniques.append(item)
                unique_indices.append(i)
        self._resolve_bridges(items, verdicts, bridged)
        decided = [v if v.replayed or v.status == "reused"
                   else replace(v, exact_digest=item.exact_digest, origin=item.origin)
                   for item, v in zip(items, filter(None, verdicts), strict=True)]
        fresh = [i for i, v in enumerate(decided) if not v.replayed and v.status != "reused"]
        # a reused id's claim on its pixels' digest (made by the lookup) would name a result decided
        # for other pixels: dropped
        released = sorted({item.exact_digest for item, v, found in zip(items, decided, lookups, strict=True)
                           if v.status == "reused" and found.exact_owner == item.result_id})
        stale = sorted({pair for found in lookups for pair in found.stale})
        now = self.clock()
        upkeep = self._upkeep([(items[i], lookups[i]) for i in unique_indices], now)
        new_verdicts = [(items[i], decided[i]) for i in fresh]
        written = self._commit(batch_uniques, new_verdicts, stale, upkeep, released, now,
                               [v for i in fresh for v in decided[i].late])
        if written.trimmed and self.on_trimmed is not None:
            self.on_trimmed(written.trimmed)
        for i, raw in zip(fresh, written.stored, strict=True):
            if raw is None:
                continue
            text = raw.decode() if isinstance(raw, bytes) else raw
            if text != decided[i].to_json():  # another delivery's verdict was there first: it stands
                decided[i] = Verdict.from_json(items[i].result_id, text).answer_for(items[i])
        return decided

    def _bridge_candidates(self, item: DedupeItem, hash_left: Sequence[tuple[int, str, bytes]],
                           options: list[tuple[float, str, int]], payloads: dict[str, bytes],
                           batch_uniques: Sequence[DedupeItem], recent: list[tuple[str, int, bytes]],
                           seen: set[str], rank: Ranker | None = None) -> list[Candidate]:
        """The candidates a duplicate has not tried (its hash candidates after the one it matched, those
        nearest by profile), in ``rank``'s order where given, else nearest by profile first: a window
        moved the other way shares little of its hash with this one, and its profile ranks it better
        than the hash distance does (but rows of contacts along the rails look alike by either)."""
        by_profile = self._by_profile_ranked(item, options, payloads, batch_uniques, seen, bridge=True)
        profiles = {rid: profile for rid, _, profile in recent if len(profile) == len(item.profile)}
        listed = {c.result_id for _, c in by_profile}
        left = [(d, rid, payload) for d, rid, payload in hash_left if rid not in seen and rid not in listed]
        known = [entry for entry in left if entry[1] in profiles]
        ranked = list(by_profile)
        if known:
            distances = profile_distances(item.profile, [profiles[rid] for _, rid, _ in known])
            ranked += [(float(distances[j]), Candidate(rid, d, payload, bridge=True))
                       for j, (d, rid, payload) in enumerate(known)]
        ranked.sort(key=lambda entry: (entry[0], entry[1].result_id))
        found = [c for _, c in ranked] + [Candidate(rid, d, payload, bridge=True)
                                          for d, rid, payload in left if rid not in profiles]
        return _in_order(item, found, rank)

    @staticmethod
    def _bridges(item: DedupeItem, verify: Verifier, candidates: Sequence[Candidate]) -> list[Verdict]:
        """The ``candidates`` that ``item`` matches too, each as a verdict making it a duplicate of ``item``
        (the pixels checked are the same pair)."""
        found = []
        for candidate in candidates:
            details = verify(item, candidate)
            if details is not None:
                found.append(Verdict(candidate.result_id, "perceptual", item.result_id,
                                     candidate.distance_bits, {**details, "bridged_by": item.result_id}))
        return found

    def _resolve_bridges(self, items: Sequence[DedupeItem], verdicts: list[Verdict | None],
                         bridged: dict[int, list[Verdict]]) -> None:
        """Turn the bridged candidates that were judged unique into duplicates: one of this batch in
        ``verdicts`` (nothing is produced yet), an earlier batch's in the bridging result's
        :attr:`Verdict.late` (its stored verdict must say unique). A candidate on the chain of what the
        bridging result duplicates (``duplicate_of`` followed through stored verdicts) is left alone:
        it is already that layout's first result, and a link to it would close a loop."""
        if not bridged:
            return
        position = {item.result_id: k for k, item in enumerate(items)}
        known: dict[str, Verdict | None] = {}

        def fetch(result_ids: set[str]) -> None:
            wanted = sorted(rid for rid in result_ids if rid not in position and rid not in known)
            if wanted:
                found = self._verdicts(wanted)
                known.update({rid: found.get(rid) for rid in wanted})

        def verdict_of(rid: str) -> Verdict | None:
            k = position.get(rid)
            return verdicts[k] if k is not None else known.get(rid)

        fetch({v.result_id for found in bridged.values() for v in found})
        chains: dict[int, list[str]] = {}
        for i in bridged:
            first = verdicts[i]
            chains[i] = [first.duplicate_of] if first is not None and first.duplicate_of is not None else []
        for _ in range(BRIDGE_CHAIN_HOPS):  # one read per hop, for every bridging result at once
            fetch({chain[-1] for chain in chains.values() if chain})
            for chain in chains.values():
                link = verdict_of(chain[-1]) if chain else None
                if link is not None and link.duplicate_of is not None and link.duplicate_of not in chain:
                    chain.append(link.duplicate_of)
        done: set[str] = set()
        for i in sorted(bridged):
            end = verdict_of(chains[i][-1]) if chains[i] else None
            if end is not None and end.duplicate_of is not None:
                continue  # a chain longer than the hops followed: no bridge rather than a possible loop
            late: list[Verdict] = []
            for verdict in bridged[i]:
                rid = verdict.result_id
                if rid in done or rid in chains[i]:
                    continue
                k = position.get(rid)
                current = verdict_of(rid)
                if current is None or current.status != "unique":
                    continue
                if k is not None:
                    if k < i and not current.replayed:
                        verdicts[k] = verdict
                        done.add(rid)
                    continue
                late.append(replace(verdict, details={**verdict.details, "late": True},
                                    exact_digest=current.exact_digest, origin=current.origin))
                done.add(rid)
            current_i = verdicts[i]
            if late and current_i is not None:
                verdicts[i] = replace(current_i, late=tuple(late))

    @staticmethod
    def _by_profile(item: DedupeItem, recent: list[tuple[str, int, bytes]], nearest: list[tuple[int, str]],
                    limit: int) -> list[tuple[float, str, int]]:
        """(profile distance, result id, hash distance) of the ``limit`` pool members nearest ``item`` by
        profile, leaving out the hash candidates already chosen."""
        chosen = {rid for _, rid in nearest} | {item.result_id}
        pool = [(rid, value, profile) for rid, value, profile in recent
                if rid not in chosen and len(profile) == len(item.profile)]
        if not pool:
            return []
        distances = profile_distances(item.profile, [profile for _, _, profile in pool])
        order = np.argsort(distances, kind="stable")[:limit]
        return [(float(distances[j]), pool[j][0], item.distance_bits(pool[j][1])) for j in order]

    @staticmethod
    def _by_profile_ranked(item: DedupeItem, options: list[tuple[float, str, int]],
                           payloads: dict[str, bytes], batch_uniques: Sequence[DedupeItem], skip: set[str],
                           bridge: bool = False) -> list[tuple[float, Candidate]]:
        """The stored results in ``options`` and the batch's earlier ones, nearest by profile first, as
        (profile distance, candidate found by profile), leaving out those in ``skip``."""
        ranked = [(d, rid, bits, payloads[rid]) for d, rid, bits in options
                  if rid in payloads and rid not in skip]
        batch = [o for o in batch_uniques if o.result_id not in skip and o.result_id != item.result_id
                 and len(o.profile) == len(item.profile)]
        if batch:
            distances = profile_distances(item.profile, [o.profile for o in batch])
            ranked += [(float(distances[j]), o.result_id, item.distance_bits(o.perceptual), o.payload)
                       for j, o in enumerate(batch)]
        ranked.sort(key=lambda entry: (entry[0], entry[1]))
        return [(d, Candidate(rid, bits, payload, via="profile", bridge=bridge))
                for d, rid, bits, payload in ranked]

    def _verify_by_profile(self, item: DedupeItem, verify: Verifier, options: list[tuple[float, str, int]],
                           payloads: dict[str, bytes], batch_uniques: Sequence[DedupeItem], tried: set[str],
                           limit: int, rank: Ranker | None = None) -> Verdict | None:
        """The first of the ``limit`` results nearest by profile (stored ones and the batch's earlier ones),
        or of the ``limit`` that ``rank`` puts first among them all, that ``verify`` confirms, as a
        verdict; None when none does."""
        nearest = [c for _, c in self._by_profile_ranked(item, options, payloads, batch_uniques, tried)]
        for candidate in _in_order(item, nearest, rank)[:limit]:
            details = verify(item, candidate)
            if details is not None:
                return Verdict(item.result_id, "perceptual", candidate.result_id, candidate.distance_bits,
                               details)
        return None

    def _upkeep(self, uniques: Sequence[tuple[DedupeItem, _Lookup]], now: float) -> _Upkeep:
        """Which band sets to trim and which to give a new expiry, from what the lookup read.

        Trim: a set read full (or filled by this batch) may go over ``band_max_members``.
        Expiry: time is cut into windows of one TTL; a set gets the end of the window after
        the current one (between one and two TTLs away) when it is empty or its newest member
        was added in an earlier window. So every member lives at least its TTL, and a set's
        expiry is written at most once per window however often it is added to.
        """
        ttl = self.ttl_seconds
        window = int(now // ttl)
        deadline_seconds = max(1, int((window + BAND_TTL_FACTOR) * ttl - now))
        read: dict[tuple[str, int, int], int] = {}
        adds: dict[tuple[str, int, int], int] = {}
        expire: dict[tuple[str, int, int], int] = {}
        for item, found in uniques:
            for (band, value), (newest, count) in zip(enumerate(item.bands), found.own_bands, strict=True):
                key = (item.namespace, band, value)
                read[key] = max(read.get(key, 0), count)
                adds[key] = adds.get(key, 0) + 1
                if newest is None or int(newest // ttl) < window:
                    expire[key] = deadline_seconds
        trim = frozenset(key for key, n in adds.items() if read[key] + n > self.band_max_members)
        return _Upkeep(trim, expire)

    @abstractmethod
    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        """Stored verdicts, exact digests claimed in order (SET NX), the newest ``band_max_members``
        members of each probed band set, and what was read of each item's own band sets."""

    @abstractmethod
    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        """Payloads of the given unique results that still exist."""

    @abstractmethod
    def _verdicts(self, result_ids: Sequence[str]) -> dict[str, Verdict]:
        """The stored verdicts of the given results that have one."""

    @abstractmethod
    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, bytes]], upkeep: _Upkeep, released: Sequence[str],
                now: float, late: Sequence[Verdict] = ()) -> _Written:
        """Store unique results' payloads and band members (scored ``now``; the sets in ``upkeep``
        trimmed to their newest ``band_max_members`` or given a new expiry), every new verdict with
        SET NX (reporting what is stored after it), then the ``late`` verdicts over the stored ones of
        their results; drop stale members and the exact-digest claims in ``released``."""


def check_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "{}| \t\r\n"):
        raise ConfigError(f"invalid dedupe key prefix {prefix!r} (non-empty, no braces, '|' or spaces)")
    return prefix


def _check_bounds(ttl_seconds: float, band_max_members: int) -> None:
    if ttl_seconds <= 0:
        raise ConfigError(f"ttl_seconds must be positive, got {ttl_seconds}")
    if band_max_members < 1:
        raise ConfigError(f"band_max_members must be at least 1, got {band_max_members}")
