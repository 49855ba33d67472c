"""Helpers for tests and benchmarks: quick results, producing and collecting topics.

:class:`InMemoryTopics` is an honest fake of a broker's partitioned logs for the calls a
:class:`~shared.kafka_io.TopicFollower` makes, so the follower's own logic (and what is
built on it) runs unchanged in unit tests.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from kafka import KafkaProducer, TopicPartition

from shared.contracts import Contract, SimResult
from shared.imageref import make_image_ref
from shared.kafka_io import make_reader


def random_manhattan(rng: np.random.Generator, size_px: int = 64, n_rects: int = 6) -> np.ndarray:
    image = np.zeros((size_px, size_px), np.float32)
    for _ in range(n_rects):
        x0, y0 = rng.integers(0, size_px - 8, 2)
        w, h = rng.integers(3, max(4, size_px // 3), 2)
        image[y0 : y0 + h, x0 : x0 + w] = 1.0
    return image


def make_result(
    result_id: str,
    rng: np.random.Generator | None = None,
    size_px: int = 64,
    labels: dict[str, Any] | None = None,
) -> SimResult:
    """A small result with a random Manhattan mask and a blurred copy as its print."""
    import cv2

    rng = rng or np.random.default_rng(abs(hash(result_id)) % (2**32))
    mask = random_manhattan(rng, size_px)
    simulated = (cv2.GaussianBlur(mask, (0, 0), 1.5) > 0.5).astype(np.float32)
    return SimResult(
        result_id=result_id,
        job_id="test",
        clip_id=result_id,
        nm_per_px=4.0,
        mask=make_image_ref(mask),
        simulated=make_image_ref(simulated),
        labels=labels or {},
        produced_at=datetime.now(UTC),
    )


def produce(bootstrap: str, topic: str, messages: Iterable[Contract | tuple[str, bytes]]) -> int:
    """Produce contracts (keyed by result_id) or raw (key, bytes) pairs; return the count."""
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    count = 0
    try:
        for message in messages:
            if isinstance(message, tuple):
                key, value = message
            else:
                key = str(getattr(message, "result_id", None) or getattr(message, "entry_id", ""))
                value = message.model_dump_json().encode()
            producer.send(topic, key=key.encode(), value=value, headers=[("result_id", key.encode())])
            count += 1
        producer.flush(timeout=60)
    finally:
        producer.close(timeout=5)
    return count


def collect(
    bootstrap: str,
    topics: Sequence[str],
    done: Callable[[list[Any]], bool],
    timeout_seconds: float = 60.0,
) -> list[Any]:
    """Read topics from the beginning (no group) until ``done(records)`` or the timeout."""
    consumer = make_reader(bootstrap)
    records: list[Any] = []
    try:
        tps = []
        for topic in topics:
            for partition in sorted(consumer.partitions_for_topic(topic) or []):
                tps.append(TopicPartition(topic, partition))
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        deadline = time.monotonic() + timeout_seconds
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            if done(records):
                break
    finally:
        consumer.close()
    return records


def embedded_result(
    result_id: str,
    vector: np.ndarray,
    model_version: str = "test-model",
    labels: dict[str, Any] | None = None,
) -> Any:
    """An EmbeddedResult around ``vector`` (normalised here), with small images."""
    from shared.contracts import EmbeddedResult, Hashes, Transform, Vector

    base = make_result(result_id, labels=labels)
    unit = np.asarray(vector, dtype=np.float32) / float(np.linalg.norm(vector))
    return EmbeddedResult(
        **base.model_dump(exclude={"schema_version"}),
        hashes=Hashes(exact="0" * 64),
        aligned_simulated=base.simulated,
        transform=Transform.identity(),
        embedding=Vector.from_array(unit),
        model_version=model_version,
    )


def library_entry(
    entry_id: str, vector: np.ndarray, model_version: str = "test-model", labels: dict[str, Any] | None = None
) -> Any:
    from shared.contracts import LibraryEntry, Vector

    unit = np.asarray(vector, dtype=np.float32) / float(np.linalg.norm(vector))
    return LibraryEntry(
        entry_id=entry_id, vector=Vector.from_array(unit), model_version=model_version, labels=labels or {}
    )


@dataclass(frozen=True)
class LogRecord:
    """One record of an in-memory log, with the fields of kafka-python's ``ConsumerRecord`` used here."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None


class InMemoryTopics:
    """Partitioned append-only logs; :meth:`consumer` reads them as a group-less consumer does.

    ``first_offsets`` sets a partition's first offset (records before it deleted), so
    seeking to the beginning and seeking to offset 0 differ, as on a broker. A position
    out of range (before the first offset or past the end) is reset to the first offset,
    as :func:`~shared.kafka_io.make_reader`'s consumers do (``auto_offset_reset="earliest"``).
    """

    def __init__(
        self, partitions: Mapping[str, int], first_offsets: Mapping[TopicPartition, int] | None = None
    ):
        self.logs: dict[TopicPartition, list[LogRecord]] = {
            TopicPartition(topic, p): [] for topic, count in partitions.items() for p in range(count)
        }
        self.first: dict[TopicPartition, int] = dict(first_offsets or {})

    def append(self, topic: str, value: bytes | None, partition: int = 0, key: bytes | None = None) -> int:
        """Append a record; returns its offset."""
        tp = TopicPartition(topic, partition)
        log = self.logs[tp]
        offset = self.first.get(tp, 0) + len(log)
        log.append(LogRecord(topic, partition, offset, key, value))
        return offset

    def consumer(self) -> InMemoryConsumer:
        return InMemoryConsumer(self)


class InMemoryConsumer:
    """The assign/seek/poll calls of a ``KafkaConsumer`` over :class:`InMemoryTopics`."""

    def __init__(self, topics: InMemoryTopics) -> None:
        self.topics = topics
        self.assigned: list[TopicPartition] = []
        self.positions: dict[TopicPartition, int] = {}
        self.closed = False

    def partitions_for_topic(self, topic: str) -> set[int] | None:
        found = {tp.partition for tp in self.topics.logs if tp.topic == topic}
        return found or None

    def assign(self, partitions: list[TopicPartition]) -> None:
        self.assigned = list(partitions)
        self.positions = {tp: self._first(tp) for tp in self.assigned}

    def _first(self, tp: TopicPartition) -> int:
        return self.topics.first.get(tp, 0)

    def _end(self, tp: TopicPartition) -> int:
        return self._first(tp) + len(self.topics.logs[tp])

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.positions[partition] = offset

    def seek_to_beginning(self, *partitions: TopicPartition) -> None:
        for tp in partitions or tuple(self.assigned):
            self.positions[tp] = self._first(tp)

    def beginning_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._first(tp) for tp in partitions}

    def end_offsets(self, partitions: list[TopicPartition]) -> dict[TopicPartition, int]:
        return {tp: self._end(tp) for tp in partitions}

    def position(self, partition: TopicPartition) -> int:
        return self.positions[partition]

    def poll(
        self, timeout_ms: int = 0, max_records: int | None = None
    ) -> dict[TopicPartition, list[LogRecord]]:
        budget = max_records if max_records is not None else 500
        out: dict[TopicPartition, list[LogRecord]] = {}
        for tp in self.assigned:
            if budget <= 0:
                break
            if not self._first(tp) <= self.positions[tp] <= self._end(tp):
                self.positions[tp] = self._first(tp)
            start = self.positions[tp] - self._first(tp)
            records = self.topics.logs[tp][start : start + budget]
            if records:
                out[tp] = records
                self.positions[tp] = records[-1].offset + 1
                budget -= len(records)
        return out

    def close(self) -> None:
        self.closed = True
