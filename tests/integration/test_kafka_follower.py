"""TopicFollower and read_to_end against the real broker: catch-up, live records, stored offsets."""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest

from app.launcher import EmbeddedStack
from services.novelty.library_feed import LibraryFeed
from shared.contracts import Topics
from shared.errors import ConfigError
from shared.index import IndexSettings
from shared.kafka_io import TopicFollower, ensure_topics, make_producer, read_to_end
from shared.settings import CommonSettings
from shared.testing import library_entry, produce

pytestmark = pytest.mark.integration

TOPIC = "lithowatch.test-follower"
PARTITIONS = 3


def settings_for(stack: EmbeddedStack) -> CommonSettings:
    return CommonSettings(kafka_bootstrap=stack.bootstrap)


def write(settings: CommonSettings, values: dict[int, list[bytes]]) -> None:
    """One record per batch: the embedded broker (Tansu) reports a partition's end offset as
    its last batch's base offset + 1, so only single-record batches give exact watermarks."""
    producer = make_producer(settings)
    try:
        for partition, items in values.items():
            for value in items:
                producer.send(TOPIC, value=value, partition=partition)
                producer.flush(timeout=30)
    finally:
        producer.close(timeout=5)


def by_partition(records: list[Any]) -> dict[int, list[tuple[int, bytes]]]:
    out: dict[int, list[tuple[int, bytes]]] = {}
    for record in records:
        out.setdefault(record.partition, []).append((record.offset, record.value))
    return out


def poll_until(follower: TopicFollower, count: int, timeout_seconds: float = 30.0) -> list[Any]:
    records: list[Any] = []
    deadline = time.monotonic() + timeout_seconds
    while len(records) < count and time.monotonic() < deadline:
        records.extend(follower.poll(timeout_ms=200))
    return records


def test_follower_catches_up_to_the_end_then_receives_live_records(stack: EmbeddedStack) -> None:
    settings = settings_for(stack)
    ensure_topics(settings, [TOPIC], partitions=PARTITIONS)
    before = {0: [b"a0", b"a1", b"a2"], 2: [b"c0"]}
    write(settings, before)
    with TopicFollower.open(settings, TOPIC) as follower:
        assert [tp.partition for tp in follower.partitions] == [0, 1, 2]
        assert follower.watermarks() == {0: (0, 3), 1: (0, 0), 2: (0, 1)}
        follower.seek()
        caught_up = [record for batch in follower.catch_up(timeout_seconds=30) for record in batch]
        assert by_partition(caught_up) == {
            partition: list(enumerate(values)) for partition, values in before.items()
        }
        write(settings, {1: [b"b0"], 2: [b"c1"]})
        live = poll_until(follower, 2)
        assert by_partition(live) == {1: [(0, b"b0")], 2: [(1, b"c1")]}


def test_follower_continues_from_stored_offsets(stack: EmbeddedStack) -> None:
    settings = settings_for(stack)
    ensure_topics(settings, [TOPIC], partitions=PARTITIONS)
    write(settings, {p: [f"{p}-{i}".encode() for i in range(4)] for p in range(PARTITIONS)})
    with TopicFollower.open(settings, TOPIC) as follower:
        follower.seek({0: 3, 1: 4})  # partition 1 fully read; partition 2 from its beginning
        read = by_partition([record for batch in follower.catch_up(timeout_seconds=30) for record in batch])
    assert read == {0: [(3, b"0-3")], 2: [(i, f"2-{i}".encode()) for i in range(4)]}


def test_read_to_end_reads_everything_written_before_the_call(stack: EmbeddedStack) -> None:
    settings = settings_for(stack)
    ensure_topics(settings, [TOPIC], partitions=PARTITIONS)
    write(settings, {0: [b"x", b"y"], 1: [b"z"]})
    assert sorted(record.value for record in read_to_end(settings, TOPIC, timeout_seconds=30)) == [
        b"x",
        b"y",
        b"z",
    ]
    with pytest.raises(ConfigError, match="does not exist"):
        list(read_to_end(settings, "lithowatch.no-such-topic", timeout_seconds=5))


def test_library_feed_follows_the_library_topic(stack: EmbeddedStack) -> None:
    rng = np.random.default_rng(0)
    produce(
        stack.bootstrap, Topics.LIBRARY, [library_entry(f"e{i}", rng.standard_normal(8)) for i in range(3)]
    )
    feed = LibraryFeed(settings_for(stack), "test-model", None, IndexSettings(kind="flat"))
    try:
        feed.start(catch_up_timeout_seconds=30)
        assert feed.state is not None and len(feed.state) == 3
        produce(stack.bootstrap, Topics.LIBRARY, [library_entry("e3", rng.standard_normal(8))])
        deadline = time.monotonic() + 30
        while "e3" not in feed.state and time.monotonic() < deadline:
            feed.poll(timeout_ms=200)
        assert "e3" in feed.state
    finally:
        feed.close()
