"""The dedupe store on Redis or Redis Cluster: three pipelined round trips per batch
(see :mod:`services.dedupe.store` for the keys, bounds and the decision logic).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

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
    check_prefix,
)
from shared.errors import ConfigError, DependencyUnavailable


class RedisDedupeStore(BandDedupeStore):
    """Redis (or Redis Cluster) backend; Redis errors become ``DependencyUnavailable``.

    The client must return bytes (``decode_responses=False``): payloads are binary.
    """

    def __init__(self, redis_client: Any, prefix: str, ttl_seconds: int = 7 * 86400,
                 clock: Callable[[], float] = time.time, *, band_max_members: int = BAND_MAX_MEMBERS_DEFAULT,
                 on_trimmed: Callable[[int], None] | None = None,
                 recent_pool: int = RECENT_POOL_DEFAULT) -> None:
        kwargs = getattr(getattr(redis_client, "connection_pool", None), "connection_kwargs", {})
        if isinstance(kwargs, dict) and kwargs.get("decode_responses"):
            raise ConfigError("the dedupe store needs a Redis client with decode_responses=False")
        _check_bounds(ttl_seconds, band_max_members)
        self.redis = redis_client
        self.prefix = check_prefix(prefix)
        self.ttl_seconds = int(ttl_seconds)
        self.band_max_members = int(band_max_members)
        self.on_trimmed = on_trimmed
        self.clock = clock
        self.recent_pool = max(0, int(recent_pool))

    def _exact_key(self, digest: str) -> str:
        return f"{self.prefix}:x:{{{digest}}}"

    def _verdict_key(self, result_id: str) -> str:
        return f"{self.prefix}:v:{{{result_id}}}"

    def _entry_key(self, result_id: str) -> str:
        return f"{self.prefix}:e:{{{result_id}}}"

    def _band_key(self, namespace: str, band: int, value: int) -> str:
        return f"{self.prefix}:bz:{namespace}:{band}:{value:x}"

    def _pool_key(self, namespace: str) -> str:
        return f"{self.prefix}:rp:{namespace}"

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
        # an item's own bands are among its probes (flip 0); added in case a caller's probes are not
        probes = [sorted(set(item.probes) | set(enumerate(item.bands))) for item in items]
        # the plain command with its arguments as bytes: redis-py's typed wrapper and its encoding of
        # integers cost a fifth more per command, and a lookup sends some fifty of them per result
        last = str(self.band_max_members - 1).encode()
        pooled = sorted({item.namespace for item in items if item.profile}) if self.recent_pool else []

        def build(pipe: Any) -> None:
            for namespace in pooled:
                pipe.execute_command("ZREVRANGE", self._pool_key(namespace), b"0",
                                     str(self.recent_pool - 1).encode())
            for item, item_probes in zip(items, probes, strict=True):
                pipe.get(self._verdict_key(item.result_id))
                exact_key = self._exact_key(item.exact_digest)
                pipe.set(exact_key, item.result_id, nx=True, ex=self.ttl_seconds)
                pipe.get(exact_key)
                for band, value in item_probes:
                    pipe.execute_command("ZREVRANGE", self._band_key(item.namespace, band, value), b"0", last)

        now = self.clock()
        replies = self._execute(build, "lookup")
        out: list[_Lookup] = []
        hash_bytes = {item.namespace: item.perceptual_bits // 8 for item in items}
        pools = {namespace: _read_pool(reply, now, self.ttl_seconds, hash_bytes[namespace])
                 for namespace, reply in zip(pooled, replies, strict=False)}
        cursor = len(pooled)
        for item, item_probes in zip(items, probes, strict=True):
            raw_verdict, _, owner = replies[cursor:cursor + 3]
            cursor += 3
            stored = Verdict.from_json(item.result_id, raw_verdict) if raw_verdict is not None else None
            owner_id = owner.decode() if isinstance(owner, bytes) else owner
            found = _Lookup(stored, owner_id, [])
            read: dict[tuple[int, int], tuple[float | None, int]] = {}
            band_replies = replies[cursor:cursor + len(item_probes)]
            for (band, value), reply in zip(item_probes, band_replies, strict=True):
                key = self._band_key(item.namespace, band, value)
                read[band, value] = _read_members(key, reply, now, self.ttl_seconds,
                                                  item.part_bytes, found, item.part_of(band))
            cursor += len(item_probes)
            found.own_bands = [read[band, value] for band, value in enumerate(item.bands)]
            found.recent = pools.get(item.namespace, []) if item.profile else []
            out.append(found)
        return out

    def _payloads(self, result_ids: Sequence[str]) -> dict[str, bytes]:
        def build(pipe: Any) -> None:
            for rid in result_ids:
                pipe.get(self._entry_key(rid))

        replies = self._execute(build, "candidate read")
        pairs = zip(result_ids, replies, strict=True)
        return {rid: bytes(value) for rid, value in pairs if value is not None}

    def _verdicts(self, result_ids: Sequence[str]) -> dict[str, Verdict]:
        def build(pipe: Any) -> None:
            for rid in result_ids:
                pipe.get(self._verdict_key(rid))

        replies = self._execute(build, "verdict read")
        return {rid: Verdict.from_json(rid, raw) for rid, raw in zip(result_ids, replies, strict=True)
                if raw is not None}

    def _commit(self, uniques: Sequence[DedupeItem], verdicts: Sequence[tuple[DedupeItem, Verdict]],
                stale: Sequence[tuple[str, bytes]], upkeep: _Upkeep, released: Sequence[str],
                now: float, late: Sequence[Verdict] = ()) -> _Written:
        if not uniques and not verdicts and not stale and not released and not late:
            return _Written(0, [])
        pooled = [item for item in uniques if item.profile] if self.recent_pool else []
        pool_keys = sorted({self._pool_key(item.namespace) for item in pooled})
        trims: list[int] = []  # reply positions of the trims
        score = str(int(now)).encode()

        def build(pipe: Any) -> None:
            for key, old in stale:
                pipe.zrem(key, old)
            for digest in released:
                pipe.delete(self._exact_key(digest))
            queued = len(stale) + len(released)
            for item in uniques:
                pipe.set(self._entry_key(item.result_id), item.payload, ex=self.ttl_seconds)
                queued += 1
                for band, value in enumerate(item.bands):
                    key = self._band_key(item.namespace, band, value)
                    pipe.execute_command("ZADD", key, score, item.member(now, band))  # as ZREVRANGE above
                    queued += 1
                    if (item.namespace, band, value) in upkeep.trim:
                        pipe.zremrangebyrank(key, 0, -self.band_max_members - 1)
                        trims.append(queued)
                        queued += 1
                    expires = upkeep.expire_seconds.get((item.namespace, band, value))
                    if expires is not None:
                        pipe.expire(key, expires)
                        queued += 1
            for item in pooled:
                pipe.execute_command("ZADD", self._pool_key(item.namespace), score, item.pool_member(now))
            for key in pool_keys:
                pipe.zremrangebyrank(key, 0, -self.recent_pool - 1)
                pipe.expire(key, int(BAND_TTL_FACTOR * self.ttl_seconds))
            for item, verdict in verdicts:
                key = self._verdict_key(item.result_id)
                pipe.set(key, verdict.to_json(), nx=True, ex=self.ttl_seconds)
                pipe.get(key)
            for verdict in late:  # after the verdicts, as their replies are counted from the end
                pipe.set(self._verdict_key(verdict.result_id), verdict.to_json(), ex=self.ttl_seconds)

        replies = self._execute(build, "write")
        trimmed = sum(int(replies[i] or 0) for i in trims)
        replies = replies[:len(replies) - len(late)]
        stored = replies[len(replies) - 2 * len(verdicts):][1::2] if verdicts else []
        return _Written(trimmed, list(stored))
