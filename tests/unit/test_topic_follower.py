"""TopicFollower over in-memory logs, and the group-less reader it is built on."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaConnectionError

from shared import kafka_io
from shared.errors import ConfigError, DependencyUnavailable
from shared.kafka_io import TopicFollower, make_reader
from shared.settings import CommonSettings
from shared.testing import InMemoryConsumer, InMemoryTopics

TOPIC = "t"


def topics_with(counts: dict[int, int], first: dict[int, int] | None = None) -> InMemoryTopics:
    topics = InMemoryTopics(
        {TOPIC: len(counts)}, {TopicPartition(TOPIC, p): o for p, o in (first or {}).items()}
    )
    for partition, count in counts.items():
        for i in range(count):
            topics.append(TOPIC, f"p{partition}-{i}".encode(), partition=partition)
    return topics


def offsets_read(batches: list[list[Any]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for batch in batches:
        for record in batch:
            out.setdefault(record.partition, []).append(record.offset)
    return out


def test_catch_up_reads_every_partition_from_the_beginning_then_poll_reads_what_arrives() -> None:
    topics = topics_with({0: 5, 1: 0, 2: 3})
    follower = TopicFollower(topics.consumer(), TOPIC)
    assert [tp.partition for tp in follower.partitions] == [0, 1, 2]
    follower.seek()
    read = offsets_read(list(follower.catch_up(timeout_seconds=5, max_records=2)))
    assert read == {0: [0, 1, 2, 3, 4], 2: [0, 1, 2]}
    assert follower.poll() == []
    topics.append(TOPIC, b"late", partition=1)
    assert [(r.partition, r.offset, r.value) for r in follower.poll()] == [(1, 0, b"late")]


def test_catch_up_stops_at_the_end_offsets_as_of_its_start() -> None:
    topics = topics_with({0: 3})
    follower = TopicFollower(topics.consumer(), TOPIC)
    follower.seek()
    batches = follower.catch_up(timeout_seconds=5, max_records=1)
    first = next(batches)
    topics.append(TOPIC, b"written during the catch-up")
    rest = list(batches)
    assert offsets_read([first, *rest]) == {0: [0, 1, 2]}
    assert [r.offset for r in follower.poll()] == [3]


def test_seek_continues_stored_offsets_and_starts_other_partitions_at_their_beginning() -> None:
    topics = topics_with({0: 6, 1: 4, 2: 5}, first={2: 3})  # partition 2's first 3 records are gone
    follower = TopicFollower(topics.consumer(), TOPIC)
    assert follower.watermarks() == {0: (0, 6), 1: (0, 4), 2: (3, 8)}
    follower.seek({0: 4, 1: 4})
    read = offsets_read(list(follower.catch_up(timeout_seconds=5)))
    assert read == {0: [4, 5], 2: [3, 4, 5, 6, 7]}


def test_a_missing_topic_is_a_config_error_and_a_stuck_read_times_out() -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        TopicFollower(InMemoryTopics({"other": 1}).consumer(), TOPIC)

    class Stuck(InMemoryConsumer):
        def poll(
            self, timeout_ms: int = 0, max_records: int | None = None
        ) -> dict[TopicPartition, list[Any]]:
            return {}

    follower = TopicFollower(Stuck(topics_with({0: 2})), TOPIC)
    follower.seek()
    with pytest.raises(DependencyUnavailable, match="did not finish"):
        list(follower.catch_up(timeout_seconds=0.05, poll_timeout_ms=1))


def test_follower_closes_its_consumer() -> None:
    consumer = topics_with({0: 1}).consumer()
    with TopicFollower(consumer, TOPIC) as follower:
        follower.seek()
    assert consumer.closed


def test_make_reader_builds_a_groupless_consumer_without_auto_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, Any]] = []

    def fake_consumer(**options: Any) -> str:
        built.append(options)
        return "consumer"

    monkeypatch.setattr(kafka_io, "KafkaConsumer", fake_consumer)
    settings = CommonSettings(kafka_bootstrap="a:9092, b:9092", kafka_max_message_bytes=8 << 20)
    assert make_reader(settings) == "consumer"
    assert make_reader("c:9092", consumer_timeout_ms=5) == "consumer"
    from_settings, from_address = built
    for options in built:
        assert options["group_id"] is None and options["enable_auto_commit"] is False
        assert options["auto_offset_reset"] == "earliest"
    assert from_settings["bootstrap_servers"] == ["a:9092", "b:9092"]
    assert from_settings["max_partition_fetch_bytes"] == 8 << 20
    assert from_address["bootstrap_servers"] == ["c:9092"] and from_address["consumer_timeout_ms"] == 5

    def unreachable(**options: Any) -> None:
        raise KafkaConnectionError("no broker")

    monkeypatch.setattr(kafka_io, "KafkaConsumer", unreachable)
    with pytest.raises(DependencyUnavailable, match="not reachable"):
        make_reader("c:9092")
