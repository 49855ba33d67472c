"""Dedupe state: exact digests, band (multi-index) keys for near duplicates, verdicts.

One call, :meth:`DedupeStore.check_and_insert_batch`, decides a whole batch in
three pipelined round trips (Redis) — reads, candidate payloads, writes:

1. per item: its stored verdict (a redelivery gets the same answer back), the
   exact digest claimed with ``SET NX`` (the first result with these pixels
   owns the key; a racing replica loses atomically), and the members of every
   probed band set;
2. the payloads of the candidates within ``hamming_radius`` (nearest first, at
   most ``max_candidates`` per item), which the caller's ``verify`` confirms;
3. writes: each unique result's payload and band memberships, every verdict.

Keys (``prefix`` is the service name; every command touches one key, so Redis
Cluster never sees a cross-slot operation):

- ``<prefix>:x:{<digest>}``: string, the first result_id with these pixels;
- ``<prefix>:v:{<result_id>}``, ``<prefix>:e:{<result_id>}``: the verdict
  (JSON) and, for unique results, the verification payload; the hash tag puts
  both keys of a result in one slot;
- ``<prefix>:b:<namespace>:<band>:<value>``: set of
  ``<result_id>|<hash hex>|<unix seconds added>`` (the full hash travels with
  the member, so the Hamming check needs no extra read); ``namespace`` names
  the hash kind and banding, so a change of either never mixes with old keys.

Every key expires after ``ttl_seconds``. A band set's expiry is refreshed on
each add, so a busy set would keep old members forever: members carry their
insertion time, and a lookup that meets one older than the TTL removes it
(``SREM`` in the write round trip). Near-duplicate race: two replicas
that see two near duplicates of a new layout in the same instant both find no
candidate and both call theirs unique. The window is one batch's round trips;
the cost is an extra unique result downstream (never a false merge), so no Lua
lock is taken. Exact duplicates have no such window (``SET NX``).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from shared.errors import ConfigError, DependencyUnavailable
from shared.hashing import hamming_distance

Status = Literal["unique", "exact", "perceptual"]


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

    def member(self, now_seconds: float) -> str:
        """Band set member: result id, full hash (hex) and insertion time (unix seconds)."""
        return f"{self.result_id}|{self.perceptual:0{self.perceptual_bits // 4}x}|{int(now_seconds)}"


@dataclass(frozen=True)
class Candidate:
    """An earlier unique result that shares a probed band and lies within the radius."""

    result_id: str
    distance_bits: int
    payload: bytes


@dataclass(frozen=True)
class Verdict:
    result_id: str
    status: Status
    duplicate_of: str | None = None
    distance_bits: int = 0
    details: dict[str, Any] = field(default_factory=dict)
    replayed: bool = False  # the stored verdict of an earlier delivery

    def to_json(self) -> str:
        return json.dumps({"status": self.status, "duplicate_of": self.duplicate_of,
                           "distance_bits": self.distance_bits, "details": self.details})

    @classmethod
    def from_json(cls, result_id: str, text: str | bytes) -> Verdict:
        data = json.loads(text)
        return cls(result_id, data["status"], data.get("duplicate_of"), int(data.get("distance_bits", 0)),
                   dict(data.get("details") or {}), replayed=True)


Verifier = Callable[[DedupeItem, Candidate], "dict[str, Any] | None"]
"""Confirms a candidate: details of the match when it is a duplicate, None otherwise."""


class DedupeStore(Protocol):
    def check_and_insert_batch(self, items: Sequence[DedupeItem], verify: Verifier, *,
                               hamming_radius: int, max_candidates: int) -> list[Verdict]: ...


@dataclass
class _Lookup:
    stored: Verdict | None
    exact_owner: str | None
    members: list[tuple[str, int]]  # (result_id, hash value) from the probed band sets
    stale: list[tuple[str, str]] = field(default_factory=list)  # (band key, member) older than the TTL


def _read_members(key: str, raws: Any, now_seconds: float, ttl_seconds: float,
                  found: _Lookup) -> None:
    """Add the live members of one band set to ``found``; expired or unreadable ones are stale."""
    for raw in raws or ():
        text = raw.decode() if isinstance(raw, bytes) else str(raw)
        parts = text.split("|")
        try:
            rid, value, added = parts[0], int(parts[1], 16), float(parts[2])
        except (IndexError, ValueError):
            found.stale.append((key, text))
            continue
        if now_seconds - added > ttl_seconds:
            found.stale.append((key, text))
        else:
            found.members.append((rid, value))


class BandDedupeStore(ABC):
    """The decision logic, shared by every backend; backends supply three round trips."""

    def check_and_insert_batch(self, items: Sequence[DedupeItem], verify: Verifier, *,
                               hamming_radius: int, max_candidates: int) -> list[Verdict]:
        lookups = self._lookup(items)
        verdicts: list[Verdict | None] = [None] * len(items)
        store_candidates: list[list[tuple[int, str]]] = [[] for _ in items]
        for i, (item, found) in enumerate(zip(items, lookups, strict=True)):
            if found.stored is not None:
                verdicts[i] = replace(found.stored, result_id=item.result_id)
            elif found.exact_owner is not None and found.exact_owner != item.result_id:
                verdicts[i] = Verdict(item.result_id, "exact", found.exact_owner, 0)
            else:
                near = {rid: hamming_distance(item.perceptual, value) for rid, value in found.members
                        if rid != item.result_id}
                nearest = sorted((d, rid) for rid, d in near.items() if d <= hamming_radius)
                store_candidates[i] = nearest[:max_candidates]
        wanted = sorted({rid for nearest in store_candidates for _, rid in nearest})
        payloads = self._payloads(wanted) if wanted else {}

        batch_uniques: list[DedupeItem] = []
        for i, item in enumerate(items):
            if verdicts[i] is not None:
                continue
            ranked: list[tuple[int, str, bytes]] = [
                (d, rid, payloads[rid]) for d, rid in store_candidates[i] if rid in payloads]
            probes = set(item.probes)
            for other in batch_uniques:
                d = hamming_distance(item.perceptual, other.perceptual)
                if (other.result_id != item.result_id and d <= hamming_radius
                        and probes.intersection(enumerate(other.bands))):
                    ranked.append((d, other.result_id, other.payload))
            ranked.sort(key=lambda entry: (entry[0], entry[1]))
            verdict = Verdict(item.result_id, "unique")
            for d, rid, payload in ranked[:max_candidates]:
                details = verify(item, Candidate(rid, d, payload))
                if details is not None:
                    verdict = Verdict(item.result_id, "perceptual", rid, d, details)
                    break
            verdicts[i] = verdict
            if verdict.status == "unique":
                batch_uniques.append(item)
        decided = [v for v in verdicts if v is not None]
        fresh = [(item, v) for item, v in zip(items, decided, strict=True) if not v.replayed]
        stale = sorted({pair for found in lookups for pair in found.stale})
        self._commit(batch_uniques, fresh, stale)
        return decided

    @abstractmethod
    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        """Stored verdicts, exact digests claimed in order (SET NX), probed band members."""

    @abstractmethod
    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        """Payloads of the given unique results that still exist."""

    @abstractmethod
    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, str]]) -> None:
        """Store unique results' payloads and band members and every new verdict; drop stale members."""


def check_prefix(prefix: str) -> str:
    if not prefix or any(c in prefix for c in "{}| \t\r\n"):
        raise ConfigError(f"invalid dedupe key prefix {prefix!r} (non-empty, no braces, '|' or spaces)")
    return prefix


class InMemoryDedupeStore(BandDedupeStore):
    """The same semantics in process memory (with expiry), for tests and single-process runs."""

    def __init__(self, ttl_seconds: float = 7 * 86400, clock: Callable[[], float] = time.time) -> None:
        self.ttl_seconds = ttl_seconds
        self.clock = clock
        self.wall_clock = clock
        self._strings: dict[str, tuple[float, str | bytes]] = {}
        self._sets: dict[str, tuple[float, set[str]]] = {}

    def _get(self, key: str) -> str | bytes | None:
        entry = self._strings.get(key)
        if entry is None or entry[0] <= self.clock():
            self._strings.pop(key, None)
            return None
        return entry[1]

    def _set(self, key: str, value: str | bytes) -> None:
        self._strings[key] = (self.clock() + self.ttl_seconds, value)

    def _members(self, key: str) -> set[str]:
        entry = self._sets.get(key)
        if entry is None or entry[0] <= self.clock():
            self._sets.pop(key, None)
            return set()
        return entry[1]

    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        out = []
        for item in items:
            raw = self._get(f"v:{item.result_id}")
            stored = Verdict.from_json(item.result_id, raw) if raw is not None else None
            exact_key = f"x:{item.exact_digest}"
            owner = self._get(exact_key)
            if owner is None:
                self._set(exact_key, item.result_id)
                owner = item.result_id
            found = _Lookup(stored, str(owner), [])
            for band, value in sorted(set(item.probes)):
                key = f"b:{item.namespace}:{band}:{value:x}"
                _read_members(key, self._members(key), self.wall_clock(), self.ttl_seconds, found)
            out.append(found)
        return out

    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        found = {rid: self._get(f"e:{rid}") for rid in result_ids}
        return {rid: value for rid, value in found.items() if isinstance(value, bytes)}

    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, str]]) -> None:
        expires = self.clock() + self.ttl_seconds
        for key, member in stale:
            self._members(key).discard(member)
        for item in uniques:
            self._set(f"e:{item.result_id}", item.payload)
            for band, value in enumerate(item.bands):
                key = f"b:{item.namespace}:{band}:{value:x}"
                members = self._members(key)
                members.add(item.member(self.wall_clock()))
                self._sets[key] = (expires, members)
        for item, verdict in verdicts:
            self._set(f"v:{item.result_id}", verdict.to_json())


class RedisDedupeStore(BandDedupeStore):
    """Redis (or Redis Cluster) backend; Redis errors become ``DependencyUnavailable``.

    The client must return bytes (``decode_responses=False``): payloads are binary.
    """

    def __init__(self, redis_client: Any, prefix: str, ttl_seconds: int = 7 * 86400,
                 clock: Callable[[], float] = time.time) -> None:
        kwargs = getattr(getattr(redis_client, "connection_pool", None), "connection_kwargs", {})
        if isinstance(kwargs, dict) and kwargs.get("decode_responses"):
            raise ConfigError("the dedupe store needs a Redis client with decode_responses=False")
        if ttl_seconds <= 0:
            raise ConfigError(f"ttl_seconds must be positive, got {ttl_seconds}")
        self.redis = redis_client
        self.prefix = check_prefix(prefix)
        self.ttl_seconds = int(ttl_seconds)
        self.clock = clock  # wall clock of band member timestamps (shared by every replica)

    def _exact_key(self, digest: str) -> str:
        return f"{self.prefix}:x:{{{digest}}}"

    def _verdict_key(self, result_id: str) -> str:
        return f"{self.prefix}:v:{{{result_id}}}"

    def _entry_key(self, result_id: str) -> str:
        return f"{self.prefix}:e:{{{result_id}}}"

    def _band_key(self, namespace: str, band: int, value: int) -> str:
        return f"{self.prefix}:b:{namespace}:{band}:{value:x}"

    def _execute(self, build: Callable[[Any], None], what: str) -> list[Any]:
        import redis

        try:
            pipe = self.redis.pipeline(transaction=False)
            build(pipe)
            return list(pipe.execute())
        except redis.exceptions.RedisError as exc:
            raise DependencyUnavailable(f"redis {what} failed: {type(exc).__name__}: {exc}") from exc
        except OSError as exc:
            raise DependencyUnavailable(f"redis {what} failed: {exc}") from exc

    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        probes = [sorted(set(item.probes)) for item in items]

        def build(pipe: Any) -> None:
            for item, item_probes in zip(items, probes, strict=True):
                pipe.get(self._verdict_key(item.result_id))
                exact_key = self._exact_key(item.exact_digest)
                pipe.set(exact_key, item.result_id, nx=True, ex=self.ttl_seconds)
                pipe.get(exact_key)
                for band, value in item_probes:
                    pipe.smembers(self._band_key(item.namespace, band, value))

        now = self.clock()
        replies = self._execute(build, "lookup")
        out: list[_Lookup] = []
        cursor = 0
        for item, item_probes in zip(items, probes, strict=True):
            raw_verdict, _, owner = replies[cursor:cursor + 3]
            cursor += 3
            stored = Verdict.from_json(item.result_id, raw_verdict) if raw_verdict is not None else None
            owner_id = owner.decode() if isinstance(owner, bytes) else owner
            found = _Lookup(stored, owner_id, [])
            band_replies = replies[cursor:cursor + len(item_probes)]
            cursor += len(item_probes)
            for (band, value), reply in zip(item_probes, band_replies, strict=True):
                key = self._band_key(item.namespace, band, value)
                _read_members(key, reply, now, self.ttl_seconds, found)
            out.append(found)
        return out

    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        def build(pipe: Any) -> None:
            for rid in result_ids:
                pipe.get(self._entry_key(rid))

        replies = self._execute(build, "candidate read")
        pairs = zip(result_ids, replies, strict=True)
        return {rid: bytes(value) for rid, value in pairs if value is not None}

    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, str]]) -> None:
        if not uniques and not verdicts and not stale:
            return
        now = self.clock()

        def build(pipe: Any) -> None:
            for key, old in stale:
                pipe.srem(key, old)
            for item in uniques:
                pipe.set(self._entry_key(item.result_id), item.payload, ex=self.ttl_seconds)
                member = item.member(now)
                for band, value in enumerate(item.bands):
                    key = self._band_key(item.namespace, band, value)
                    pipe.sadd(key, member)
                    pipe.expire(key, self.ttl_seconds)
            for item, verdict in verdicts:
                pipe.set(self._verdict_key(item.result_id), verdict.to_json(), ex=self.ttl_seconds)

        self._execute(build, "write")
