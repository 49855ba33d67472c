"""RedisDedupeStore against a real redis-server (started here on a free port)."""

from __future__ import annotations

import shutil
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import numpy as np
import pytest
import redis

from app.launcher import free_port, wait_for_port
from services.dedupe.core import DedupeCore, DedupeSettings
from services.dedupe.store import Candidate, DedupeItem, Verdict, _Lookup
from services.dedupe.store_redis import RedisDedupeStore
from shared.contracts import DuplicateRecord, SimResult, UniqueResult
from shared.errors import ConfigError, DependencyUnavailable, InputError
from shared.hashing import PROFILE_BYTES, split_bands
from shared.imageref import make_image_ref
from toolkit.litho import generate_layout, rasterize

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
TTL_SECONDS = 600


@pytest.fixture(scope="module")
def _redis_url() -> Iterator[str]:
    """A throwaway redis-server (no persistence) for this module; always stopped."""
    port = free_port()
    proc = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port("127.0.0.1", port, 10.0, proc)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def client(_redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(_redis_url)
    c.flushdb()
    yield c
    c.close()


def window(seed: int, family: str, shift_px: tuple[int, int] = (0, 0)) -> tuple[np.ndarray, np.ndarray]:
    layout = generate_layout(family, np.random.default_rng(seed))
    mask = rasterize(layout, (512.0 + 4.0 * shift_px[0], 512.0 + 4.0 * shift_px[1]), 256, 4.0)
    return mask, (mask > 0.5).astype(np.float32)


def result(result_id: str, images: tuple[np.ndarray, np.ndarray]) -> SimResult:
    return SimResult(result_id=result_id, nm_per_px=4.0, mask=make_image_ref(images[0]),
                     simulated=make_image_ref(images[1]), produced_at=datetime.now(UTC))


def make_core(client: redis.Redis, prefix: str = "dedupe") -> DedupeCore:
    return DedupeCore(RedisDedupeStore(client, prefix=prefix, ttl_seconds=TTL_SECONDS), DedupeSettings())


def kinds(outcomes: Sequence[object]) -> list[str | None]:
    return [o.duplicate_of if isinstance(o, DuplicateRecord) else None for o in outcomes]


def test_exact_near_and_distinct_in_one_batch(client: redis.Redis) -> None:
    core = make_core(client)
    a = window(1, "routing")
    batch = [result("a", a), result("a-copy", a), result("a-moved", window(1, "routing", (12, -9))),
             result("b", window(2, "routing"))]
    outcomes = core.process_batch(batch)
    assert kinds(outcomes) == [None, "a", "a", None]
    assert isinstance(outcomes[1], DuplicateRecord) and outcomes[1].method == "exact"
    assert isinstance(outcomes[2], DuplicateRecord) and outcomes[2].method == "perceptual"
    assert outcomes[2].details["shift_px"] == [12, -9]


def test_keys_carry_the_prefix_and_expire(client: redis.Redis) -> None:
    make_core(client, prefix="svc").process_batch([result("k1", window(3, "sram")),
                                                   result("k2", window(3, "sram", (4, 4)))])
    keys = [k.decode() for k in client.scan_iter("*")]
    assert keys and all(k.startswith("svc:") for k in keys)
    kinds_seen = {k.split(":")[1] for k in keys}
    assert kinds_seen == {"x", "v", "e", "bz", "rp"}  # rp: the newest results, ranked by profile
    for key in keys:  # band sets and the recent pool: twice the TTL when set, so each member lives its TTL
        limit = 2 * TTL_SECONDS if key.split(":")[1] in ("bz", "rp") else TTL_SECONDS
        assert 0 < client.ttl(key) <= limit, key
    for key in keys:  # at most one hash tag, and only around one result id or digest
        assert key.count("{") == key.count("}") <= 1


def test_redelivery_is_idempotent_across_replicas(client: redis.Redis) -> None:
    first, second = make_core(client), make_core(client)
    original, moved = result("o", window(4, "contacts")), result("m", window(4, "contacts", (-7, 15)))
    assert kinds(first.process_batch([original, moved])) == [None, "o"]
    replay = second.process_batch([moved, original])
    assert kinds(replay) == ["o", None]
    assert isinstance(replay[0], DuplicateRecord) and replay[0].details.get("replayed") is True


def test_racing_replicas_agree_on_exact_duplicates(_redis_url: str, client: redis.Redis) -> None:
    """Two replicas submit the same pixels at the same instant: SET NX lets exactly one win."""
    cores = [make_core(redis.Redis.from_url(_redis_url)) for _ in range(2)]
    rounds = [window(seed, "shapes") for seed in range(50, 58)]
    barrier = threading.Barrier(2)
    outcomes: dict[str, object] = {}

    def replica(k: int) -> None:
        for i, images in enumerate(rounds):
            barrier.wait()
            (outcomes[f"{i}-{k}"],) = cores[k].process_batch([result(f"r{i}-{k}", images)])

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    for i in range(len(rounds)):
        pair = [outcomes[f"{i}-0"], outcomes[f"{i}-1"]]
        uniques = [o for o in pair if isinstance(o, UniqueResult)]
        dups = [o for o in pair if isinstance(o, DuplicateRecord)]
        assert len(uniques) == 1 and len(dups) == 1
        assert dups[0].method == "exact" and dups[0].duplicate_of == uniques[0].result_id
        assert client.get("dedupe:x:{" + uniques[0].hashes.exact + "}") == uniques[0].result_id.encode()


def test_redis_down_is_a_dependency_error() -> None:
    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_connect_timeout=0.5, socket_timeout=0.5)
    core = make_core(dead)
    with pytest.raises(DependencyUnavailable):
        core.process_batch([result("x", window(6, "grating"))])


def test_decoded_responses_are_refused(_redis_url: str) -> None:
    with pytest.raises(ConfigError):
        RedisDedupeStore(redis.Redis.from_url(_redis_url, decode_responses=True), prefix="dedupe")
    with pytest.raises(ConfigError):
        RedisDedupeStore(redis.Redis.from_url(_redis_url), prefix="bad{prefix}")


def test_members_older_than_the_ttl_are_removed_when_met(client: redis.Redis) -> None:
    now = [1_000_000.0]
    store = RedisDedupeStore(client, prefix="stale", ttl_seconds=60, clock=lambda: now[0])
    value = int.from_bytes(np.random.default_rng(0).bytes(32), "big")

    def item(rid: str, v: int) -> DedupeItem:
        bands = tuple(split_bands(v, 256, 16))
        return DedupeItem(rid, f"digest-{rid}", v, 256, "t", bands, tuple(enumerate(bands)), rid.encode())

    def never(i: DedupeItem, c: Candidate) -> dict[str, object] | None:
        return None

    store.check_and_insert_batch([item("a", value)], never, hamming_radius=8, max_candidates=4)
    now[0] += 40.0
    store.check_and_insert_batch([item("b", value ^ 1)], never, hamming_radius=8, max_candidates=4)
    now[0] += 40.0  # "a" is older than the TTL; the band sets live on (Redis' own clock barely moved)
    key = "stale:bz:t:0:" + format(split_bands(value, 256, 16)[0], "x")
    assert any(m[36:] == b"a" for m in client.zrange(key, 0, -1))
    store.check_and_insert_batch([item("c", value ^ 3)], never, hamming_radius=8, max_candidates=4)
    members = {m[36:] for m in client.zrange(key, 0, -1)}
    assert b"a" not in members and b"b" in members


def synthetic(rid: str, v: int, digest: str | None = None) -> DedupeItem:
    bands = tuple(split_bands(v, 256, 16))
    return DedupeItem(rid, digest or f"digest-{rid}", v, 256, "t", bands, tuple(enumerate(bands)),
                      rid.encode())


def test_a_reused_result_id_is_refused_and_a_redelivery_replays(client: redis.Redis) -> None:
    core = make_core(client)
    first, other = window(7, "routing"), window(8, "contacts")
    assert isinstance(core.process_batch([result("job", first)])[0], UniqueResult)
    stored = client.get("dedupe:v:{job}")
    (reused,) = make_core(client).process_batch([result("job", other)])  # another replica
    assert isinstance(reused, InputError) and reused.reason == "result_id_reused"
    assert client.get("dedupe:v:{job}") == stored
    (again,) = make_core(client).process_batch([result("job", first)])
    assert isinstance(again, UniqueResult)
    (owner,) = core.process_batch([result("job-2", other)])  # the refused pixels' claim was dropped
    assert isinstance(owner, UniqueResult)


def test_verdicts_are_written_once(client: redis.Redis) -> None:
    """A replica that loses the race on a result id answers with the verdict already stored."""
    item = synthetic("raced", 9 << 90)
    rival = Verdict("raced", "exact", "elder", 0, exact_digest=item.exact_digest).to_json()

    class Racing(RedisDedupeStore):
        def _lookup(self, items: Sequence[DedupeItem]) -> list[_Lookup]:
            found = super()._lookup(items)
            client.set("race:v:{raced}", rival)
            return found

    store = Racing(client, prefix="race", ttl_seconds=TTL_SECONDS)
    (verdict,) = store.check_and_insert_batch([item], lambda i, c: None, hamming_radius=8, max_candidates=4)
    assert (verdict.status, verdict.duplicate_of, verdict.replayed) == ("exact", "elder", True)
    assert client.get("race:v:{raced}") == rival.encode()


def test_band_sets_stay_bounded_and_expiry_is_written_once_per_ttl_window(client: redis.Redis) -> None:
    now = [600.0 * 5000]  # the start of a TTL window
    trimmed: list[int] = []
    store = RedisDedupeStore(client, prefix="busy", ttl_seconds=TTL_SECONDS, clock=lambda: now[0],
                             band_max_members=16, on_trimmed=trimmed.append)
    value = int.from_bytes(np.random.default_rng(5).bytes(32), "big")
    key = "busy:bz:t:0:" + format(split_bands(value, 256, 16)[0], "x")

    def add(*items: DedupeItem) -> None:
        store.check_and_insert_batch(list(items), lambda i, c: None, hamming_radius=0, max_candidates=1)

    for start in range(0, 200, 20):  # 200 results sharing 15 of 16 bands, in batches of 20
        now[0] += 1.0
        add(*(synthetic(f"m{k:03d}", value ^ k) for k in range(start, start + 20)))
    assert client.zcard(key) == 16
    assert sum(trimmed) == 15 * (200 - 16)
    last_batch = {f"m{k:03d}".encode() for k in range(180, 200)}  # added at one time: the newest
    assert {m[36:] for m in client.zrange(key, 0, -1)} <= last_batch
    assert 2 * TTL_SECONDS - 20 <= client.ttl(key) <= 2 * TTL_SECONDS  # the end of the next window
    client.expire(key, 5 * TTL_SECONDS)  # marks whether the next add writes the expiry again
    now[0] += 100.0
    add(synthetic("same-window", value ^ 1000))
    assert client.ttl(key) > 2 * TTL_SECONDS  # not written again within the window
    now[0] += TTL_SECONDS
    add(synthetic("next-window", value ^ 1001))
    assert TTL_SECONDS < client.ttl(key) <= 2 * TTL_SECONDS


def test_the_recent_pool_finds_what_no_band_does_and_keeps_only_the_newest(client: redis.Redis) -> None:
    # radius 0: only a copy with the very same hash is a hash candidate; a moved one is left to the profile
    settings = DedupeSettings(hamming_radius=0)
    now = [time.time()]
    store = RedisDedupeStore(client, prefix="pool", ttl_seconds=TTL_SECONDS, recent_pool=3,
                             clock=lambda: now[0])
    core = DedupeCore(store, settings)
    assert kinds(core.process_batch([result("o", window(5, "routing"))])) == [None]
    now[0] += 1
    found = core.process_batch([result("m", window(5, "routing", (9, -6)))])
    assert kinds(found) == ["o"]
    assert isinstance(found[0], DuplicateRecord) and found[0].details["found_by"] == "profile"
    now[0] += 1
    others = [result(f"d{i}", window(20 + i, "sram")) for i in range(3)]
    assert kinds(core.process_batch(others)) == [None] * 3
    pool = client.zrange("pool:rp:" + settings.namespace(), 0, -1)
    head = 4 + 512 // 8 + PROFILE_BYTES  # time added, both hashes, the profile
    assert sorted(m[head:] for m in pool) == [b"d0", b"d1", b"d2"]
    now[0] += 1
    # the original and its copy have left the pool: a third window of it is unique again
    assert kinds(core.process_batch([result("m2", window(5, "routing", (-8, 7)))])) == [None]


def _opposite_copies() -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    """Two windows moved 14 px either way (each showing the other a whole new feature beyond 16 px) and
    the window between them."""
    from shared.imaging import to_uint8
    from shared.verification import strip_features

    for seed in range(40):
        left, right = window(seed, "routing", (-14, 0)), window(seed, "routing", (14, 0))
        if strip_features(to_uint8(right[0]), to_uint8(left[0]), (-28, 0), None, 16).total_px > 50:
            return left, right, window(seed, "routing")
    raise AssertionError("no layout whose copies show each other new content")


def test_a_late_duplicate_is_stored_over_the_unique_verdict_and_repeated_on_redelivery(
    client: redis.Redis,
) -> None:
    left, right, middle = _opposite_copies()
    core = make_core(client)
    assert kinds(core.process_batch([result("left", left)]) + core.process_batch([result("right", right)])) \
        == [None, None]
    (found,) = make_core(client).decide_batch([result("middle", middle)])  # another replica
    assert isinstance(found.outcome, DuplicateRecord)
    (late,) = found.late
    assert late.record.duplicate_of == "middle" and late.record.details["late"] is True
    other = late.record.result_id
    assert {other, found.outcome.duplicate_of} == {"left", "right"}
    raw = client.get(f"dedupe:v:{{{other}}}")
    assert isinstance(raw, bytes)
    stored = Verdict.from_json(other, raw)
    assert stored.status == "perceptual" and stored.duplicate_of == "middle"
    (again,) = core.decide_batch([result("middle", middle)])  # a redelivery: the same late record
    assert [d.record.result_id for d in again.late] == [other]
    assert kinds(core.process_batch([result(other, left if other == "left" else right)])) == ["middle"]
