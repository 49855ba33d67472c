"""LibraryFeed over in-memory library logs: replay, live records, snapshots and refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from kafka import TopicPartition

from services.novelty.library_feed import LibraryFeed
from shared import metrics
from shared.contracts import LibraryEntry, Topics
from shared.errors import DependencyUnavailable
from shared.index import IndexSettings
from shared.kafka_io import TopicFollower
from shared.settings import CommonSettings
from shared.testing import InMemoryTopics, library_entry

MODEL = "test-model"
DIM = 8


def entry(entry_id: str, seed: int, model_version: str = MODEL) -> LibraryEntry:
    vector = np.random.default_rng(seed).standard_normal(DIM)
    result: LibraryEntry = library_entry(entry_id, vector, model_version=model_version)
    return result


def publish(topics: InMemoryTopics, record: LibraryEntry | bytes, partition: int = 0) -> int:
    value = record if isinstance(record, bytes) else record.model_dump_json().encode()
    return topics.append(Topics.LIBRARY, value, partition=partition)


class Feed:
    """A LibraryFeed reading ``topics`` (with ``topic_id`` as the topic's id) and what it applied."""

    def __init__(self, topics: InMemoryTopics, snapshot_dir: Path | None = None, topic_id: str = "id-1"):
        self.applied: list[str] = []
        self.feed = LibraryFeed(
            CommonSettings(kafka_bootstrap="unused:9092"),
            MODEL,
            snapshot_dir,
            IndexSettings(kind="flat"),
            snapshot_interval_seconds=3600,
            on_applied=lambda e: self.applied.append(e.entry_id),
            open_follower=lambda: TopicFollower(topics.consumer(), Topics.LIBRARY),
            read_topic_id=lambda: topic_id,
        )


def snapshot_refusals() -> float:
    return metrics.LIBRARY_EVENTS.labels("snapshot_refused")._value.get()


def library_topics(partitions: int = 2) -> InMemoryTopics:
    return InMemoryTopics({Topics.LIBRARY: partitions})


def test_start_replays_every_partition_then_poll_applies_live_records() -> None:
    topics = library_topics()
    for i in range(5):
        publish(topics, entry(f"e{i}", i), partition=i % 2)
    publish(topics, b"not json", partition=1)
    publish(topics, entry("other", 9, model_version="another-model"))
    reader = Feed(topics)
    reader.feed.start(catch_up_timeout_seconds=5)
    state = reader.feed.state
    assert state is not None and len(state) == 5 and state.dim == DIM
    assert sorted(reader.applied) == [f"e{i}" for i in range(5)]
    assert reader.feed.refused == 2
    assert reader.feed.topic is not None and reader.feed.topic.watermarks == {0: (0, 4), 1: (0, 3)}
    assert reader.feed.poll() == 0
    publish(topics, entry("e5", 5), partition=1)
    publish(topics, entry("e0", 0).model_copy(update={"op": "delete", "vector": None}))
    assert reader.feed.poll() == 2
    assert "e5" in state and "e0" not in state and len(state) == 5
    topics.append(Topics.LIBRARY, None, partition=1, key=b"e1")  # a tombstone: the null value
    assert reader.feed.poll() == 1
    assert "e1" not in state and len(state) == 4
    reader.feed.close()


def test_a_snapshot_is_continued_from_its_offsets(tmp_path: Path) -> None:
    topics = library_topics()
    for i in range(4):
        publish(topics, entry(f"e{i}", i), partition=i % 2)
    first = Feed(topics, tmp_path)
    first.feed.start(catch_up_timeout_seconds=5)
    first.feed.close()  # writes the snapshot
    publish(topics, entry("e4", 4), partition=0)
    publish(topics, entry("e5", 5), partition=1)
    second = Feed(topics, tmp_path)
    second.feed.start(catch_up_timeout_seconds=5)
    assert second.applied == ["e4", "e5"]  # the snapshot held the rest
    assert second.feed.state is not None and len(second.feed.state) == 6
    second.feed.close()


def test_a_snapshot_of_another_topic_incarnation_is_refused_and_the_topic_replayed(tmp_path: Path) -> None:
    topics = library_topics()
    for i in range(3):
        publish(topics, entry(f"e{i}", i))
    first = Feed(topics, tmp_path, topic_id="id-1")
    first.feed.start(catch_up_timeout_seconds=5)
    first.feed.close()
    refused_before = snapshot_refusals()
    recreated = library_topics()
    publish(recreated, entry("fresh", 7))
    second = Feed(recreated, tmp_path, topic_id="id-2")
    second.feed.start(catch_up_timeout_seconds=5)
    assert snapshot_refusals() == refused_before + 1
    assert second.applied == ["fresh"]
    assert second.feed.state is not None and list(second.feed.state.next_offsets.items()) == [(0, 1)]
    second.feed.close()


def test_a_missing_library_topic_is_waited_for() -> None:
    reader = Feed(InMemoryTopics({"something-else": 1}))
    with pytest.raises(DependencyUnavailable, match="does not exist"):
        reader.feed.start(catch_up_timeout_seconds=1)


def test_records_deleted_before_the_stored_offsets_refuse_the_snapshot(tmp_path: Path) -> None:
    topics = library_topics(1)
    for i in range(3):
        publish(topics, entry(f"e{i}", i))
    first = Feed(topics, tmp_path)
    first.feed.start(catch_up_timeout_seconds=5)
    first.feed.close()
    truncated = InMemoryTopics({Topics.LIBRARY: 1}, {TopicPartition(Topics.LIBRARY, 0): 5})
    publish(truncated, entry("after", 8))
    second = Feed(truncated, tmp_path)
    second.feed.start(catch_up_timeout_seconds=5)
    assert second.applied == ["after"]
    second.feed.close()
