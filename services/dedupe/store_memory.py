"""The dedupe store in process memory (with expiry): the same decision logic as Redis, for tests and
single-process runs (see :mod:`services.dedupe.store`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from services.dedupe.store import (
    BAND_MAX_MEMBERS_DEFAULT,
    BAND_TTL_FACTOR,
    RECENT_POOL_DEFAULT,
    BandDedupeStore,
    DedupeItem,
    Verdict,
    _check_bounds,
    _Lookup,
    _read_members,
    _read_pool,
    _Upkeep,
    _Written,
)


class InMemoryDedupeStore(BandDedupeStore):
    """The same semantics in process memory (with expiry), for tests and single-process runs."""

    def __init__(self, ttl_seconds: float = 7 * 86400, clock: Callable[[], float] = time.time, *,
                 band_max_members: int = BAND_MAX_MEMBERS_DEFAULT,
                 on_trimmed: Callable[[int], None] | None = None,
                 recent_pool: int = RECENT_POOL_DEFAULT) -> None:
        _check_bounds(ttl_seconds, band_max_members)
        self.recent_pool = max(0, int(recent_pool))
        self.ttl_seconds = ttl_seconds
        self.band_max_members = band_max_members
        self.on_trimmed = on_trimmed
        self.clock = clock
        self._strings: dict[str, tuple[float, str | bytes]] = {}
        self._zsets: dict[str, tuple[float, dict[bytes, float]]] = {}  # key -> (expires, member -> score)

    def _get(self, key: str) -> str | bytes | None:
        entry = self._strings.get(key)
        if entry is None or entry[0] <= self.clock():
            self._strings.pop(key, None)
            return None
        return entry[1]

    def _set(self, key: str, value: str | bytes) -> None:
        self._strings[key] = (self.clock() + self.ttl_seconds, value)

    def _set_nx(self, key: str, value: str | bytes) -> str | bytes:
        """SET NX then GET: what the key holds afterwards."""
        existing = self._get(key)
        if existing is None:
            self._set(key, value)
            return value
        return existing

    def _zset(self, key: str) -> dict[bytes, float]:
        entry = self._zsets.get(key)
        if entry is None or entry[0] <= self.clock() or not entry[1]:
            self._zsets.pop(key, None)
            return {}
        return entry[1]

    @staticmethod
    def _newest(members: dict[bytes, float], limit: int) -> list[tuple[bytes, float]]:
        """Redis' order: by score, ties by member; newest (highest rank) first."""
        return sorted(members.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)[:limit]

    @staticmethod
    def _band_key(namespace: str, band: int, value: int) -> str:
        return f"bz:{namespace}:{band}:{value:x}"

    def members(self, namespace: str, band: int, value: int) -> dict[bytes, float]:
        """The members of one band set with their scores (for tests)."""
        return dict(self._zset(self._band_key(namespace, band, value)))

    def expires_at(self, namespace: str, band: int, value: int) -> float | None:
        """When one band set expires (for tests); None when it does not exist."""
        key = self._band_key(namespace, band, value)
        return self._zsets[key][0] if self._zset(key) else None

    def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
        out = []
        now = self.clock()
        pools: dict[str, list[tuple[str, int, bytes]]] = {}
        for item in items:
            if self.recent_pool and item.profile and item.namespace not in pools:
                newest = [m for m, _ in self._newest(self._zset(f"rp:{item.namespace}"), self.recent_pool)]
                pools[item.namespace] = _read_pool(newest, now, self.ttl_seconds, item.perceptual_bits // 8)
            raw = self._get(f"v:{item.result_id}")
            stored = Verdict.from_json(item.result_id, raw) if raw is not None else None
            owner = self._set_nx(f"x:{item.exact_digest}", item.result_id)
            found = _Lookup(stored, owner.decode() if isinstance(owner, bytes) else owner, [])
            read: dict[tuple[int, int], tuple[float | None, int]] = {}
            for band, value in sorted(set(item.probes) | set(enumerate(item.bands))):
                key = self._band_key(item.namespace, band, value)
                newest = [m for m, _ in self._newest(self._zset(key), self.band_max_members)]
                read[band, value] = _read_members(key, newest, now, self.ttl_seconds,
                                                  item.part_bytes, found, item.part_of(band))
            found.own_bands = [read[band, value] for band, value in enumerate(item.bands)]
            found.recent = pools.get(item.namespace, []) if item.profile else []
            out.append(found)
        return out

    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        found = {rid: self._get(f"e:{rid}") for rid in result_ids}
        return {rid: value for rid, value in found.items() if isinstance(value, bytes)}

    def _verdicts(self, result_ids: Sequence[str]) -> dict[str, Verdict]:
        found = {rid: self._get(f"v:{rid}") for rid in result_ids}
        return {rid: Verdict.from_json(rid, raw) for rid, raw in found.items() if raw is not None}

    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, bytes]], upkeep: _Upkeep, released: Sequence[str],
                now: float, late: Sequence[Verdict] = ()) -> _Written:
        for key, member in stale:
            self._zset(key).pop(member, None)
        for digest in released:
            self._strings.pop(f"x:{digest}", None)
        trimmed = 0
        for item in uniques:
            self._set(f"e:{item.result_id}", item.payload)
            for band, value in enumerate(item.bands):
                key = self._band_key(item.namespace, band, value)
                members = self._zset(key)
                members[item.member(now, band)] = float(int(now))
                if (item.namespace, band, value) in upkeep.trim and len(members) > self.band_max_members:
                    keep = dict(self._newest(members, self.band_max_members))
                    trimmed += len(members) - len(keep)
                    members = keep
                expires = upkeep.expire_seconds.get((item.namespace, band, value))
                if expires is not None:
                    self._zsets[key] = (self.clock() + expires, members)
                elif key in self._zsets:
                    self._zsets[key] = (self._zsets[key][0], members)
                else:  # like a Redis key written without an expiry: the next window's add sets one
                    self._zsets[key] = (float("inf"), members)
        for item in uniques:
            if not (self.recent_pool and item.profile):
                continue
            key = f"rp:{item.namespace}"
            pool = self._zset(key)
            pool[item.pool_member(now)] = float(int(now))
            if len(pool) > self.recent_pool:
                pool = dict(self._newest(pool, self.recent_pool))
            self._zsets[key] = (self.clock() + BAND_TTL_FACTOR * self.ttl_seconds, pool)
        stored = [self._set_nx(f"v:{item.result_id}", verdict.to_json()) for item, verdict in verdicts]
        for verdict in late:
            self._set(f"v:{verdict.result_id}", verdict.to_json())
        return _Written(trimmed, list(stored))
